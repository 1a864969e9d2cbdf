"""Run inside a throwaway netns: drive real link changes past bridgeport's PortWatch and print,
as JSON, {step: whether any of its netlink messages was judged worth a reconcile}.

Each step ends with a barrier (a bridge added and deleted): netlink delivers messages in
order, so once the barrier's message is seen every message of the step has been judged.
"""

import json
import subprocess
import sys
import threading
from typing import Any

from bridgeport.adapters.portwatch import LinkEvent, PortWatch


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True)


def main() -> int:
    sh("ip link add bp-a type bridge")
    sh("ip link add v0 type veth peer name v1")
    watch = PortWatch()
    watch.expect({"bp-a": True})
    judged: list[tuple[str | None, bool]] = []
    seen = threading.Condition()
    original = watch.filter.relevant

    def relevant(event: LinkEvent) -> bool:
        result = original(event)
        with seen:
            judged.append((event.name, result))
            seen.notify_all()
        return result

    watch.filter.relevant = relevant  # type: ignore[method-assign]
    threading.Thread(target=watch.run, args=(lambda: None,), daemon=True).start()
    steps: dict[str, Any] = {}

    def barrier(name: str, timeout: float) -> bool:
        with seen:
            start = len(judged)
        sh(f"ip link add {name} type bridge")
        sh(f"ip link del {name}")
        with seen:
            return seen.wait_for(lambda: any(n == name for n, _ in judged[start:]), timeout)

    # Subscribed once a barrier's message comes through.
    if not any(barrier(f"start{i}", 0.2) for i in range(100)):
        raise SystemExit("the watch never saw a link message")

    def step(name: str, *cmds: str) -> None:
        with seen:
            start = len(judged)
        for cmd in cmds:
            sh(cmd)
        if not barrier(f"bar{len(steps)}", 10):
            raise SystemExit(f"no barrier message after {name}")
        with seen:
            steps[name] = any(r for _, r in judged[start:])

    step("join", "ip link set v0 master bp-a")
    step("ours", "ip link set v0 type bridge_slave hairpin on isolated on")
    step("ours again", "ip link set v0 type bridge_slave hairpin on isolated on")
    step("carrier", "ip link set v1 up", "ip link set v0 up", "ip link set bp-a up")
    step("bridge mtu", "ip link set bp-a mtu 1400")
    step("hairpin off", "ip link set v0 type bridge_slave hairpin off")
    step("restored", "ip link set v0 type bridge_slave hairpin on")
    step("isolated off", "bridge link set dev v0 isolated off")
    step("restored again", "bridge link set dev v0 isolated on")
    step("leave", "ip link set v0 nomaster")
    step("rejoin", "ip link set v0 master bp-a")
    step("bridge deleted", "ip link del bp-a")
    json.dump(steps, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
