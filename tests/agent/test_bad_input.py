"""Bad input never freezes, bloats or breaks the standalone source (issue 11, cases 1-6 and 8).

Scenarios: an alias bomb in a field gives a short error, not megabytes; deep nesting, an
oversized file and an alias bomb are each one clear error naming the file and the limit;
`kind: List` with non-list items is an error for that file; a failure never advances the
directory signature, so fixing the file is noticed; a symlink loop and a FIFO are errors for
that entry while the rest applies, and the FIFO is never opened for a blocking read; only
changed files are re-read; stale temporary state files are removed at start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from bridgeport.adapters import dirsource, statefile
from bridgeport.adapters.dirsource import DirSource
from bridgeport.core import specs
from tests.builders import API

NET = {
    "apiVersion": API,
    "kind": "BridgeNetwork",
    "metadata": {"name": "n"},
    "spec": {"subnet": "10.0.0.0/24"},
}
# A 479-byte-class alias bomb: each level doubles the expansion of the previous ten times.
BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""


def _snapshot(path: Path) -> tuple[list[specs.ParseResult], list[str]]:
    src = DirSource(path)
    src.refresh()
    snap = src.snapshot()
    assert snap is not None
    return list(snap.resources), list(snap.errors)


def _names(resources: list[specs.ParseResult]) -> list[str]:
    return sorted(r.meta.ref.name for r in resources if not isinstance(r, specs.InvalidResource))


def _invalid_messages(resources: list[specs.ParseResult]) -> list[str]:
    return [r.message for r in resources if isinstance(r, specs.InvalidResource)]


def test_whole_values_are_never_quoted() -> None:
    """Case 1: a huge value in spec.hostPort is quoted by a short prefix only."""
    pub = {
        "apiVersion": API,
        "kind": "PortPublication",
        "metadata": {"name": "web"},
        "spec": {
            "hostPort": [["x" * 1000] * 1000] * 100,
            "target": {"address": "y" * 100_000, "port": 80},
        },
    }
    result = specs.parse(pub)
    assert isinstance(result, specs.InvalidResource)
    assert "spec.hostPort" in result.message and "spec.target.address" in result.message
    assert len(result.message) < 500, len(result.message)


def test_many_unknown_fields_are_summarised() -> None:
    """Ten thousand unknown fields: a bounded list of errors, the rest counted."""
    doc = {
        **NET,
        "spec": {"subnet": "10.0.0.0/24", **{f"k{i}" + "z" * 300: i for i in range(10_000)}},
    }
    result = specs.parse(doc)
    assert isinstance(result, specs.InvalidResource)
    assert len(result.message) < 3000 and "more" in result.message


def test_alias_bomb_in_a_field(tmp_path: Path) -> None:
    """Case 1 through the source: the bomb is rejected by its expansion, short message."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    (tmp_path / "bomb.yaml").write_text(
        "apiVersion: bridgeport.io/v1alpha1\nkind: PortPublication\nmetadata: {name: p}\n"
        "spec:\n  target: {address: 10.0.0.2, port: 80}\n  junk:\n"
        + "".join(f"    {line}\n" for line in BOMB.splitlines())
        + "  hostPort: *f\n"
    )
    resources, errors = _snapshot(tmp_path)
    assert _names(resources) == ["n"]
    text = json.dumps([*errors, *_invalid_messages(resources)])
    assert len(text) < 1000, len(text)
    assert "bomb.yaml" in text and "alias" in text


def test_billion_laughs_is_one_error_naming_the_limit(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    lines = ['l0: &l0 "lol"'] + [
        f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)
    ]
    (tmp_path / "lol.yaml").write_text("\n".join(lines) + "\n")
    resources, errors = _snapshot(tmp_path)
    assert _names(resources) == ["n"]
    assert len(errors) == 1 and errors[0].startswith("lol.yaml:")
    assert f"{dirsource.MAX_NODES:,}" in errors[0]


@pytest.mark.parametrize(
    "suffix,text",
    [
        (".yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
        (".json", "[" * 100_000 + "]" * 100_000),
        (".yaml", "- " * 3000 + "x\n"),
    ],
)
def test_deep_nesting_is_one_error(tmp_path: Path, suffix: str, text: str) -> None:
    """Case 2: deep nesting is an error naming the file and the depth limit."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    (tmp_path / f"deep{suffix}").write_text(text)
    resources, errors = _snapshot(tmp_path)
    assert _names(resources) == ["n"]
    assert len(errors) == 1 and errors[0].startswith(f"deep{suffix}:")
    assert f"{dirsource.MAX_DEPTH} levels" in errors[0]


def test_oversized_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    with (tmp_path / "big.yaml").open("w") as f:
        f.truncate(dirsource.MAX_FILE_BYTES + 1)
    resources, errors = _snapshot(tmp_path)
    assert _names(resources) == ["n"]
    assert errors == [f"big.yaml: larger than the {dirsource.MAX_FILE_BYTES:,}-byte limit, skipped"]


@pytest.mark.parametrize("items", ["5", "{a: 1}", "[1, [2], x]", "'text'"])
def test_list_with_bad_items(tmp_path: Path, items: str) -> None:
    """Case 3: `kind: List` whose items are not a list of objects: errors, no exception."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    (tmp_path / "list.yaml").write_text(f"kind: List\nitems: {items}\n")
    resources, errors = _snapshot(tmp_path)
    assert _names(resources) == ["n"]
    messages = [*errors, *_invalid_messages(resources)]
    assert messages and all("list.yaml" in m for m in messages), messages


def test_failure_does_not_hide_later_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases 2/3: whatever goes wrong reading one file, the others still apply, and a later
    change is noticed (the signature never moves past a failure)."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(NET | {"metadata": {"name": "o"}}))
    real = specs.parse

    def explode(doc: object) -> specs.ParseResult:
        if isinstance(doc, dict) and doc.get("metadata", {}).get("name") == "o":
            raise TypeError("unexpected")
        return real(doc)

    monkeypatch.setattr(specs, "parse", explode)
    src = DirSource(tmp_path)
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None and _names(list(snap.resources)) == ["n"]
    assert len(snap.errors) == 1 and snap.errors[0].startswith("odd.yaml:")
    monkeypatch.setattr(specs, "parse", real)
    other = NET | {"metadata": {"name": "m"}, "spec": {"subnet": "10.1.0.0/24"}}
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(other))
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None and _names(list(snap.resources)) == ["m", "n"]


def test_symlink_loop_is_one_error(tmp_path: Path) -> None:
    """Case 4: a symlink loop is an error for that entry; the rest applies and changes count."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    os.symlink("loop-b.yaml", tmp_path / "loop-a.yaml")
    os.symlink("loop-a.yaml", tmp_path / "loop-b.yaml")
    src = DirSource(tmp_path)
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None and _names(list(snap.resources)) == ["n"]
    assert [e.split(":")[0] for e in snap.errors] == ["loop-a.yaml", "loop-b.yaml"]
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET | {"metadata": {"name": "n2"}}))
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None and _names(list(snap.resources)) == ["n2"]


@pytest.mark.timeout(30)
def test_fifo_is_never_read(tmp_path: Path) -> None:
    """Case 5: a FIFO named x.yaml is skipped as not a regular file (a read would block)."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    os.mkfifo(tmp_path / "x.yaml")
    os.symlink("x.yaml", tmp_path / "link.yaml")
    resources, errors = _snapshot(tmp_path)  # would block forever if the FIFO were opened
    assert _names(resources) == ["n"]
    assert errors == [
        "link.yaml: not a regular file, skipped",
        "x.yaml: not a regular file, skipped",
    ]


def test_only_changed_files_are_reread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 6: a change to one file re-reads that file alone."""
    for i in range(5):
        doc = NET | {"metadata": {"name": f"n{i}"}, "spec": {"subnet": f"10.{i}.0.0/24"}}
        (tmp_path / f"f{i}.yaml").write_text(yaml.safe_dump(doc))
    src = DirSource(tmp_path)
    assert src.refresh()
    reads: list[str] = []
    real = dirsource.read_file

    def counting(path: Path) -> bytes:
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(dirsource, "read_file", counting)
    doc = NET | {"metadata": {"name": "changed"}, "spec": {"subnet": "10.9.0.0/24"}}
    (tmp_path / "f3.yaml").write_text(yaml.safe_dump(doc))
    assert src.refresh()
    assert reads == ["f3.yaml"]
    snap = src.snapshot()
    assert snap is not None
    assert _names(list(snap.resources)) == ["changed", "n0", "n1", "n2", "n4"]
    (tmp_path / "f1.yaml").unlink()
    assert src.refresh() and reads == ["f3.yaml"]
    snap = src.snapshot()
    assert snap is not None and _names(list(snap.resources)) == ["changed", "n0", "n2", "n4"]


def test_run_reads_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 5/6: the watch reads and parses in a worker thread, never on the loop."""
    import asyncio
    import threading

    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    threads: list[str] = []
    real = dirsource.read_file

    def spy(path: Path) -> bytes:
        threads.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(dirsource, "read_file", spy)
    src = DirSource(tmp_path, poll_interval=0.01)

    async def first_change() -> None:
        changed = asyncio.Event()
        task = asyncio.create_task(src.run(changed.set))
        try:
            await asyncio.wait_for(changed.wait(), 30)
        finally:
            task.cancel()

    asyncio.run(first_change())
    assert threads and threading.main_thread().name not in threads


def test_stale_temporary_state_files_are_removed(tmp_path: Path) -> None:
    """Case 8: .state.json.* left by a kill -9 mid-write are removed; nothing else is."""
    state = tmp_path / "state.json"
    (tmp_path / ".state.json.k2j3h4g5").write_text("{")
    (tmp_path / ".state.json.abcdefgh").write_text("")
    (tmp_path / ".other.json.abcdefgh").write_text("keep")
    (tmp_path / "state.json.bak").write_text("keep")
    statefile.write_atomic(state, {"a": 1})
    assert statefile.remove_temporaries(state) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.json.abcdefgh",
        "state.json",
        "state.json.bak",
    ]
