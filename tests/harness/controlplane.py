"""A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for tests.

Thin, stdlib-only wrapper around ``hack/kube/build.sh`` and ``hack/kube/cluster.sh``; all
component flags live in cluster.sh so tests and ``make dev-cluster`` run the same thing.

Typical pytest use::

    @pytest.fixture(scope="session")
    def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
        ensure_built()  # first run compiles Kubernetes (~10 min), then cached
        cp = start(tmp_path_factory.mktemp("kube"))
        try:
            yield cp
        finally:
            cp.stop()  # by pid; also registered with atexit

The API server binds 0.0.0.0 and its serving cert carries the IP SANs in
``extra_sans`` (default 169.254.77.1), so a test that puts 169.254.77.1 on a veth end in the
root namespace can reach it from a node netns; ``cp.kubeconfig_for(...)`` writes a kubeconfig
pointing there.
"""

from __future__ import annotations

import atexit
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "DEFAULT_EXTRA_SANS",
    "ControlPlane",
    "ControlPlaneError",
    "ensure_built",
    "start",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_HACK_DIR = REPO_ROOT / "hack" / "kube"
BUILD_SH = KUBE_HACK_DIR / "build.sh"
CLUSTER_SH = KUBE_HACK_DIR / "cluster.sh"

DEFAULT_EXTRA_SANS: tuple[str, ...] = ("169.254.77.1",)

# Stop order: dependants first.
COMPONENTS: tuple[str, ...] = ("kube-controller-manager", "kube-apiserver", "etcd")
_MARKER = ".bridgeport-cluster"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or stopped."""


def ensure_built(timeout: float = 3600.0) -> Path:
    """Build (or reuse the cached) kube-apiserver, kube-controller-manager and kubectl.

    Progress from build.sh goes to this process's stderr. Returns the bin dir.
    """
    proc = subprocess.run(
        [str(BUILD_SH)],
        stdout=subprocess.PIPE,
        stderr=None,  # inherit: "building kube-apiserver ..." progress stays visible
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SH} failed with exit code {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ControlPlaneError(f"{BUILD_SH} printed no bin dir")
    bin_dir = Path(lines[-1])
    for name in ("kube-apiserver", "kube-controller-manager", "kubectl"):
        if not os.access(bin_dir / name, os.X_OK):
            raise ControlPlaneError(f"{bin_dir / name} is missing after build")
    return bin_dir


def _free_port(pair: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (with ``pair``: port and port+1 both free)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        if port < 65535 and _port_free(port + 1):
            return port
    raise ControlPlaneError("could not find a free port pair")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read_pid(run_dir: Path, name: str) -> int | None:
    """Pid of component ``name`` if it is alive and still that binary (guards pid reuse)."""
    try:
        pid = int((run_dir / f"{name}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if name.encode() not in cmdline:
        return None
    return pid


def stop(run_dir: Path, *, remove: bool = True) -> None:
    """Stop a control plane (``cluster.sh down``: by pid, even if start() failed halfway).

    Deletes the network namespace if cluster.sh created it, and the run dir if ``remove``.
    Safe to call repeatedly.
    """
    run_dir = Path(run_dir)
    if not (run_dir / _MARKER).exists():
        return  # nothing started, or not ours
    _run_cluster_sh(
        "down",
        run_dir=run_dir,
        extra_env={} if remove else {"BRIDGEPORT_KEEP_RUN": "1"},
        timeout=120.0,
    )


class ControlPlane:
    """A running control plane started by :func:`start`."""

    def __init__(
        self, run_dir: Path, bin_dir: Path, apiserver_port: int, netns: str | None
    ) -> None:
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.apiserver_port = apiserver_port
        self.netns = netns

    # -- paths ---------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig, server https://127.0.0.1:<port>."""
        return self.run_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "pki" / "ca.crt"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def log_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.log"

    def pids(self) -> dict[str, int]:
        """Live component pids by name (missing entries are not running)."""
        found: dict[str, int] = {}
        for name in COMPONENTS:
            pid = _read_pid(self.run_dir, name)
            if pid is not None:
                found[name] = pid
        return found

    def kubeconfig_for(self, server: str, path: Path | None = None) -> Path:
        """Write a copy of the admin kubeconfig that talks to ``server``.

        E.g. ``cp.kubeconfig_for(f"https://169.254.77.1:{cp.apiserver_port}")`` for an agent
        in a node netns; the IP must be one of the serving cert's SANs (``extra_sans``).
        """
        host = server.rsplit("//", maxsplit=1)[-1].replace(":", "_").replace("/", "_")
        target = path or self.run_dir / f"admin-{host}.kubeconfig"
        lines = self.kubeconfig.read_text().splitlines()
        out = [f"    server: {server}" if ln.startswith("    server: ") else ln for ln in lines]
        target.write_text("\n".join(out) + "\n")
        target.chmod(0o600)
        return target

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching-version kubectl as cluster admin; raises on failure if ``check``."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    # -- health --------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """True iff GET /readyz as admin returns 200 ``ok``."""
        pki = self.run_dir / "pki"
        if self.netns:
            proc = subprocess.run(
                [
                    "ip", "netns", "exec", self.netns,
                    "curl", "-sS", "--fail", "--max-time", "5",
                    "--cacert", str(pki / "ca.crt"),
                    "--cert", str(pki / "admin.crt"), "--key", str(pki / "admin.key"),
                    f"{self.server}/readyz",
                ],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            return proc.returncode == 0 and proc.stdout.strip() == "ok"
        try:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as r:
                body = r.read().decode(errors="replace").strip()
                return int(r.status) == 200 and body == "ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until /readyz is ok; raise with the API server's log tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if "kube-apiserver" not in self.pids():
                raise ControlPlaneError(
                    "kube-apiserver is not running\n" + self.log_tail("kube-apiserver")
                )
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"kube-apiserver not ready after {timeout:.0f}s\n"
                    + self.log_tail("kube-apiserver")
                )
            time.sleep(0.5)

    def log_tail(self, component: str, lines: int = 40) -> str:
        try:
            text = self.log_file(component).read_text(errors="replace")
        except OSError:
            return f"(no log for {component})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"---- last {lines} lines of {self.log_file(component)} ----\n{tail}"

    # -- lifecycle -----------------------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver; etcd (data) and controller-manager keep running."""
        _run_cluster_sh("stop-apiserver", run_dir=self.run_dir)

    def start_apiserver(self, timeout: float = 120.0) -> None:
        """Start kube-apiserver again with the same flags, certs and etcd; wait for /readyz."""
        _run_cluster_sh("start-apiserver", run_dir=self.run_dir, timeout=timeout + 30.0)
        self.wait_ready(timeout)

    def pause_apiserver(self, seconds: float) -> None:
        """API server outage of ``seconds`` (then restarted and ready again)."""
        self.stop_apiserver()
        time.sleep(seconds)
        self.start_apiserver()

    def stop(self, *, remove: bool = True) -> None:
        """Stop everything by pid; remove the run dir unless ``remove=False`` (keeps logs)."""
        stop(self.run_dir, remove=remove)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f", netns={self.netns!r}" if self.netns else ""
        return f"ControlPlane(server={self.server!r}, run_dir={str(self.run_dir)!r}{where})"


def _run_cluster_sh(
    command: str,
    *,
    run_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    timeout: float = 300.0,
) -> None:
    env = dict(os.environ)
    env.update(extra_env or {})
    env["BRIDGEPORT_RUN"] = str(run_dir)
    proc = subprocess.run(
        [str(CLUSTER_SH), command, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"cluster.sh {command} failed ({proc.returncode}):\n{proc.stderr.strip()}"
        )


def start(
    run_dir: Path,
    *,
    apiserver_port: int | None = None,
    etcd_port: int | None = None,
    kcm_port: int | None = None,
    netns: str | None = None,
    extra_sans: Sequence[str] = DEFAULT_EXTRA_SANS,
    bin_dir: Path | None = None,
    timeout: float = 180.0,
) -> ControlPlane:
    """Start a fresh control plane in ``run_dir`` (must be absent, empty or a stale cluster).

    Ports default to free ones, so a session cluster never clashes with ``make dev-cluster``.
    With ``netns``, everything runs inside that network namespace (created if absent).
    Returns once /readyz is ok and the controller-manager has created default/default SA.
    On failure, whatever was started is stopped (the run dir with logs is kept).
    """
    run_dir = Path(run_dir).resolve()
    bin_dir = bin_dir or ensure_built()
    port = apiserver_port or _free_port()
    env = {
        "BRIDGEPORT_KUBE_BIN": str(bin_dir),
        "BRIDGEPORT_APISERVER_PORT": str(port),
        "BRIDGEPORT_ETCD_PORT": str(etcd_port or _free_port(pair=True)),
        "BRIDGEPORT_KCM_PORT": str(kcm_port or _free_port()),
        "BRIDGEPORT_APISERVER_EXTRA_SANS": ",".join(extra_sans),
        "BRIDGEPORT_READY_TIMEOUT": str(int(timeout)),
    }
    cp = ControlPlane(run_dir, bin_dir, port, netns)
    atexit.register(stop, run_dir)
    try:
        _run_cluster_sh(
            "up",
            run_dir=run_dir,
            extra_env=env,
            args=["--netns", netns] if netns else [],
            timeout=timeout * 3 + 60.0,
        )
        cp.wait_ready(timeout)
    except BaseException:
        stop(run_dir, remove=False)
        raise
    return cp
