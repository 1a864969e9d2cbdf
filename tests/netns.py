"""Throwaway network namespaces for tests: unique names per run, always cleaned up.

Tests only ever talk to addresses inside namespaces created here, or to 127.0.0.1.

A namespace lives on a *host*: this machine (host = ()), or a kind node reached through a
command prefix such as ("docker", "exec", "kind-worker"); the same tests run on both.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count()
TOOLS = Path(__file__).parent / "tools"
# Where tests/tools lives on a remote host (tests/e2e/kind.sh copies it there).
REMOTE_TOOLS = os.environ.get("BRIDGEPORT_E2E_TOOLS", "/bridgeport-tools")


def unique(prefix: str) -> str:
    """A short unique name (fits 15-char interface names): prefix + pid + counter."""
    return f"{prefix}{os.getpid() % 100000}{next(_counter)}"[:15]


def run(
    cmd: str | Sequence[str], check: bool = True, timeout: float = 30, **kw: object
) -> subprocess.CompletedProcess[str]:
    args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc  # type: ignore[no-any-return]


@dataclass
class Netns:
    name: str  # "" is the host's own namespace
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    host: tuple[str, ...] = ()

    def prefix(self) -> list[str]:
        return [*self.host, *(["ip", "netns", "exec", self.name] if self.name else [])]

    def run(
        self, cmd: str | Sequence[str], check: bool = True, timeout: float = 30, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        return run(self.prefix() + args, check=check, timeout=timeout, **kw)

    def popen(self, cmd: str | Sequence[str], **kw: object) -> subprocess.Popen[str]:
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.prefix() + args, text=True, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def python(
        self, script: str, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run([*self.interpreter(script), *args], timeout=timeout, check=check)

    def interpreter(self, script: str) -> list[str]:
        """How to run one of tests/tools on this namespace's host."""
        if self.host:
            return ["python3", f"{REMOTE_TOOLS}/{script}"]
        return [sys.executable, str(TOOLS / script)]

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def stop_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()


@contextlib.contextmanager
def netns(prefix: str, host: tuple[str, ...] = ()) -> Iterator[Netns]:
    ns = Netns(unique(prefix), host=host)
    run([*host, "ip", "netns", "add", ns.name])
    try:
        ns.run("ip link set lo up")
        yield ns
    finally:
        ns.stop_processes()
        run([*host, "ip", "netns", "del", ns.name], check=False)


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair with one end in each namespace (of one host), both up."""
    assert a.host == b.host, "a veth joins namespaces of one host"
    tmp_a, tmp_b = unique("va"), unique("vb")
    run([*a.host, "ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    for tmp, ns, name in ((tmp_a, a, a_if), (tmp_b, b, b_if)):
        if ns.name:
            run([*a.host, "ip", "link", "set", tmp, "netns", ns.name, "name", name])
        else:
            run([*a.host, "ip", "link", "set", tmp, "name", name])
    a.run(["ip", "link", "set", a_if, "up"])
    b.run(["ip", "link", "set", b_if, "up"])


def wait_for(
    predicate: object, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()  # type: ignore[operator]
            if last:
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
