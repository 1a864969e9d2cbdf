"""Run inside a scratch network namespace: time plan/render/apply for N publications.

Prints one JSON object. Used by bench/dataplane.py; not a test.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time

from bridgeport.adapters import facts as node_facts
from bridgeport.adapters.nft import Nft
from bridgeport.core import planner, ruleset, specs
from bridgeport.core.incremental import IncrementalPlanner, IncrementalRenderer
from bridgeport.core.specs import API_VERSION as API


def docs(n: int, target_port: int = 80) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [
        {
            "apiVersion": API,
            "kind": "BridgeNetwork",
            "metadata": {"name": "scale"},
            "spec": {"subnet": "10.78.0.0/16", "bridge": "bp-scale"},
        }
    ]
    for i in range(n):
        out.append(
            {
                "apiVersion": API,
                "kind": "PortPublication",
                "metadata": {"name": f"p{i}", "namespace": "bench"},
                "spec": {
                    "hostPort": 20000 + i,
                    "loopback": "Never",
                    "target": {
                        "address": str(ipaddress.IPv4Address("10.78.0.2") + i),
                        "port": target_port,
                    },
                },
            }
        )
    return out


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kw)
    return result, (time.perf_counter() - start) * 1000


def main() -> None:
    n = int(sys.argv[1])
    nft = Nft()
    raw = docs(n)
    resources, parse_ms = timed(lambda: [specs.parse(d) for d in raw])
    facts, facts_ms = timed(node_facts.gather, "bench", {})
    plan, plan_ms = timed(planner.plan, resources, facts)
    tables, render_ms = timed(ruleset.render, plan)
    commands, apply_ms = timed(nft.apply, tables, full=True)

    # One publication changes its target: the steady-state path (diff, small transaction).
    raw[1]["spec"]["target"]["port"] = 81  # type: ignore[index]
    changed = specs.parse(raw[1])
    resources2 = [changed if i == 1 else r for i, r in enumerate(resources)]
    plan2, plan2_ms = timed(planner.plan, resources2, facts)
    tables2, render2_ms = timed(ruleset.render, plan2)
    diff_cmds, diff_ms = timed(
        lambda: [ruleset.diff(a, b) for a, b in zip(tables, tables2, strict=True)]
    )
    commands2, apply2_ms = timed(nft.apply, tables2)
    # And once more: libnftables fills its cache on the first change after a full load.
    raw[2]["spec"]["target"]["port"] = 82  # type: ignore[index]
    resources3 = [specs.parse(raw[2]) if i == 2 else r for i, r in enumerate(resources2)]
    tables3 = ruleset.render(planner.plan(resources3, facts))
    _, steady_ms = timed(nft.apply, tables3)
    # The incremental layer (what the agent runs): a full plan, then one change among n.
    inc, rend = IncrementalPlanner(), IncrementalRenderer()
    plan_i, inc_full_plan_ms = timed(inc.plan, resources3, facts)
    tables_i, inc_full_render_ms = timed(rend.render, plan_i, inc.delta)
    _, inc_full_apply_ms = timed(nft.apply, tables_i, full=True)
    # The first change after a full load pays for libnftables' cache (it frees the load's):
    # one real change first (applying the same tables again runs no command at all).
    raw[4]["spec"]["target"]["port"] = 84  # type: ignore[index]
    warm = [specs.parse(raw[4]) if i == 4 else r for i, r in enumerate(resources3)]
    nft.apply(rend.render(inc.plan(warm, facts), inc.delta))
    raw[3]["spec"]["target"]["port"] = 83  # type: ignore[index]
    resources4 = [specs.parse(raw[3]) if i == 3 else r for i, r in enumerate(warm)]
    plan_c, inc_plan_ms = timed(inc.plan, resources4, facts)
    tables_c, inc_render_ms = timed(rend.render, plan_c, inc.delta)
    inc_commands, inc_apply_ms = timed(nft.apply, tables_c)
    _, digest_ms = timed(ruleset.digest, tables_c)
    print(
        json.dumps(
            {
                "inc_full_ms": inc_full_plan_ms + inc_full_render_ms + inc_full_apply_ms,
                "inc_change_plan_ms": inc_plan_ms,
                "inc_change_render_ms": inc_render_ms,
                "inc_change_apply_ms": inc_apply_ms,
                "inc_change_commands": inc_commands,
                "digest_ms": digest_ms,
                "publications": n,
                "parse_ms": parse_ms,
                "facts_ms": facts_ms,
                "plan_ms": plan_ms,
                "render_ms": render_ms,
                "apply_full_ms": apply_ms,
                "full_commands": commands,
                "change_plan_ms": plan2_ms,
                "change_render_ms": render2_ms,
                "change_diff_ms": diff_ms,
                "change_apply_ms": apply2_ms,
                "change_commands": commands2,
                "steady_apply_ms": steady_ms,
                "change_diff": [c for cmds in diff_cmds if cmds for c in cmds],
            }
        )
    )
    nft.delete_tables(ruleset.FAMILIES)


if __name__ == "__main__":
    main()
