"""The directory source: which files count, and what a bad one does.

Scenarios: multi-document YAML, JSON and `kind: List` files are read; dotfiles and other
suffixes are not; the agent's own state file in the same directory is ignored (reading it
back would trigger a sync per write, forever); an unreadable file is an error, not a crash;
an unchanged directory is not re-read.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bridgeport.adapters.dirsource import DirSource
from tests.builders import network

NET = network("n", "10.0.0.0/24")


def test_reads_every_manifest_form(tmp_path: Path) -> None:
    """YAML multi-doc, JSON and List files all contribute; others are skipped."""
    other = {**NET, "metadata": {"name": "m"}, "spec": {"subnet": "10.1.0.0/24"}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([NET, other]))
    (tmp_path / "b.json").write_text(
        json.dumps(
            {
                "kind": "List",
                "items": [{**NET, "metadata": {"name": "l"}, "spec": {"subnet": "10.2.0.0/24"}}],
            }
        )
    )
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "notes.txt").write_text("not a manifest")
    src = DirSource(tmp_path)
    assert src.refresh()
    snap = src.snapshot()
    assert snap is not None and not snap.errors
    assert sorted(r.meta.ref.name for r in snap.resources) == ["l", "m", "n"]  # type: ignore[union-attr]


def test_state_file_in_the_directory_is_ignored(tmp_path: Path) -> None:
    """The agent's state file is never read back as a resource."""
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(NET))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"node": "x", "resources": []}))
    src = DirSource(tmp_path, ignore=[state])
    src.refresh()
    snap = src.snapshot()
    assert snap is not None and not snap.errors and len(snap.resources) == 1
    state.write_text(json.dumps({"node": "x", "resources": [], "lastSync": "later"}))
    assert not src.refresh()  # a state write is not a change


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    """Broken YAML becomes an error line naming the file; the other files still count."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(NET))
    (tmp_path / "bad.yaml").write_text("kind: [\n")
    src = DirSource(tmp_path)
    src.refresh()
    snap = src.snapshot()
    assert snap is not None and len(snap.resources) == 1
    assert snap.errors[0].startswith("bad.yaml: unreadable, skipped:")
