"""Fuzzing the input paths (issue 11): nothing raises, every error is bounded, good
resources are still planned.

Hypothesis generates documents of random structure, types and sizes (and YAML with anchors
and aliases, and raw bytes) and feeds them through specs.parse, the directory source and the
kube source's event-body parser, each next to a good resource that must stay Applied.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridgeport.adapters.dirsource import DirSource
from bridgeport.core import planner, specs
from bridgeport.core.plan import NodeFacts, State
from bridgeport.kube.source import parse_body
from tests.builders import API

GOOD = {
    "apiVersion": API,
    "kind": "BridgeNetwork",
    "metadata": {"name": "good"},
    "spec": {"subnet": "10.200.0.0/24"},
}
BN = {
    "apiVersion": API,
    "kind": "BridgeNetwork",
    "metadata": {"name": "n"},
    "spec": {
        "subnet": "10.0.0.0/24",
        "gateway": "10.0.0.1",
        "mtu": 1500,
        "nodeSelector": {
            "matchLabels": {"a": "b"},
            "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}],
        },
    },
}
PP = {
    "apiVersion": API,
    "kind": "PortPublication",
    "metadata": {"name": "p", "namespace": "default"},
    "spec": {
        "hostPort": 80,
        "hostPortEnd": 81,
        "protocol": "UDP",
        "hostIP": "192.0.2.1",
        "target": {"address": "10.0.0.2", "port": 8080},
        "network": "n",
    },
}
MAX_MESSAGE = 2000  # one resource's message: a few bounded errors
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**300),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.text(min_size=1000, max_size=5000),
    st.sampled_from(
        [
            "BridgeNetwork",
            "PortPublication",
            "List",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "TCP",
            "Never",
            "In",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.one_of(
                st.text(max_size=300),
                st.sampled_from(
                    ["kind", "spec", "metadata", "items", "name", "subnet", "hostPort", "target"]
                ),
            ),
            inner,
            max_size=5,
        ),
        # one object referenced many times: YAML writes it once with an anchor, then aliases
        st.builds(lambda x, n: [x] * n, inner, st.integers(0, 50)),
    ),
    max_leaves=40,
)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid document with one field (at any depth) replaced by a random value."""
    doc = json.loads(json.dumps(draw(st.sampled_from([BN, PP]))))
    node = doc
    while isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if draw(st.booleans()) or not isinstance(node[key], dict):
            node[key] = draw(values)
            break
        node = node[key]
    return doc


documents = st.one_of(
    values, mutated(), st.builds(lambda items: {"kind": "List", "items": items}, values)
)


def _bounded(result: specs.ParseResult) -> None:
    if isinstance(result, specs.InvalidResource):
        assert len(result.message) < MAX_MESSAGE, result.message[:300]


@FUZZ
@given(documents)
def test_parse_never_raises_and_errors_are_bounded(doc: Any) -> None:
    _bounded(specs.parse(doc))


@FUZZ
@given(documents, st.sampled_from(specs.KINDS))
def test_event_bodies_never_raise(body: Any, kind: str) -> None:
    if isinstance(body, dict):
        _bounded(parse_body(body, kind))


def _good_is_applied(resources: list[specs.ParseResult]) -> None:
    plan = planner.plan(resources, NodeFacts("n"))
    good = [o for o in plan.outcomes if o.ref.name == "good"]
    assert good and good[0].state is State.APPLIED, good


@FUZZ
@given(st.lists(documents, min_size=1, max_size=4), st.sampled_from([".yaml", ".json"]))
def test_directory_source_survives_anything(docs: list[Any], suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "a-good.yaml").write_text(yaml.safe_dump(GOOD))
        if suffix == ".json":
            (path / "fuzz.json").write_text(json.dumps(docs[0], default=str))
        else:
            (path / "fuzz.yaml").write_text(yaml.safe_dump_all(docs))
        _check(path)


@FUZZ
@given(st.binary(max_size=2000), st.text(max_size=2000))
def test_directory_source_survives_raw_bytes(data: bytes, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "a-good.yaml").write_text(yaml.safe_dump(GOOD))
        (path / "bytes.yaml").write_bytes(data)
        (path / "text.yaml").write_text(text)
        _check(path)


def _check(path: Path) -> None:
    src = DirSource(path)
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None
    for error in snap.errors:
        assert len(error) < MAX_MESSAGE, error[:300]
    for res in snap.resources:
        _bounded(res)
    _good_is_applied(list(snap.resources))
    # The state file's share of this input stays small whatever it was.
    assert (
        len(json.dumps([*snap.errors, *(getattr(r, "message", "") for r in snap.resources)]))
        < 200_000
    )
