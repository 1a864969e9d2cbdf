"""A refused transaction is reported with the line nft cites (libnftables alone cites the
wrong one for a buffer), and the script around it, numbered, for the log; nothing applied."""

from __future__ import annotations

import json
import sys

import pytest

from tests.netns import netns

pytestmark = pytest.mark.root

PROBE = """
import json
from bridgeport.adapters.nft import Nft, NftError
from bridgeport.core import ruleset
from bridgeport.core.plan import NodePlan

good = ruleset.render(NodePlan("n"))[0]
chains = (*good.chains, ruleset.Chain("broken", ("ip saddr 192.0.2.1 bogus",)))
bad = ruleset.Table(good.family, good.lookups, chains, good.elements)
nft = Nft()
try:
    nft.apply([bad], full=True)
except NftError as exc:
    print(json.dumps({"message": str(exc), "context": exc.context,
                      "table": nft.list_table("ip")}))
"""


def test_refusal_cites_the_line() -> None:
    with netns("bpne") as node:
        out = json.loads(node.run([sys.executable, "-c", PROBE]).stdout)
    assert out["table"] is None  # all or nothing
    assert out["message"].startswith("line ")
    assert "syntax error" in out["message"]
    line = int(out["message"].split()[1].rstrip(":"))
    marked = [ln for ln in out["context"].splitlines() if ln[6:7] == ">"]
    assert marked == [f"{line:6d}> \t\tip saddr 192.0.2.1 bogus"]
