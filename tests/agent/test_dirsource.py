"""The directory source: which files count, and what a bad one does.

Scenarios: multi-document YAML, JSON and `kind: List` files are read; dotfiles and other
suffixes are not; the agent's own state file in the same directory is ignored (reading it
back would trigger a sync per write, forever); an unreadable file is an error, not a crash;
an unchanged directory is not re-read. Changes are noticed through inotify with polling and
rescans an hour apart: a new file, an edited one, a ConfigMap-style `..data` symlink swap, the
directory removed and made again; a directory that does not exist yet is polled for; a removed
watch's leftover events leave the watch that replaced it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from bridgeport.adapters.dirsource import DirSource
from bridgeport.adapters.dirwatch import DirWatch
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


HOUR = 3600.0  # poll and rescan intervals that no test waits for: only inotify can wake
TIMEOUT = 30.0  # a bound on each wait, never a measurement


def names(src: DirSource) -> list[str] | None:
    snap = src.snapshot()
    return None if snap is None else sorted(r.meta.ref.name for r in snap.resources)  # type: ignore[union-attr]


def doc(name: str) -> str:
    return yaml.safe_dump({**NET, "metadata": {"name": name}})


def watched(src: DirSource, steps: list[tuple[Callable[[], None], list[str]]]) -> None:
    """Run the source; after each step, wait for the snapshot it should produce."""

    async def go() -> None:
        changes = asyncio.Queue[None]()
        task = asyncio.create_task(src.run(lambda: changes.put_nowait(None)))
        try:
            for step, expected in steps:
                step()
                while names(src) != expected:
                    await asyncio.wait_for(changes.get(), TIMEOUT)
        finally:
            task.cancel()

    asyncio.run(go())


def test_changes_wake_the_source_without_polling(tmp_path: Path) -> None:
    src = DirSource(tmp_path, poll_interval=HOUR, rescan_interval=HOUR)
    data = tmp_path / "..2026_12_01"

    def configmap_swap() -> None:  # kubelet: a new ..data dir, then rename a symlink over
        data.mkdir()
        (data / "c.yaml").write_text(doc("c2"))
        (tmp_path / "..data_tmp").symlink_to(data.name)
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")

    watched(
        src,
        [
            (lambda: (tmp_path / "a.yaml").write_text(doc("a")), ["a"]),
            (lambda: (tmp_path / "a.yaml").write_text(doc("b")), ["b"]),
            (lambda: (tmp_path / "c.yaml").symlink_to("..data/c.yaml"), ["b"]),  # dangling
            (configmap_swap, ["b", "c2"]),
            ((tmp_path / "a.yaml").unlink, ["c2"]),
        ],
    )


def test_directory_removed_and_made_again(tmp_path: Path) -> None:
    path = tmp_path / "res"
    path.mkdir()
    (path / "a.yaml").write_text(doc("a"))
    src = DirSource(path, poll_interval=HOUR, rescan_interval=HOUR)

    def remake() -> None:  # all before the source runs again: it must watch the new one
        shutil.rmtree(path)
        path.mkdir()
        (path / "b.yaml").write_text(doc("b"))

    watched(
        src,
        [
            (lambda: None, ["a"]),
            (remake, ["b"]),
            (lambda: (path / "c.yaml").write_text(doc("c")), ["b", "c"]),  # watched again
        ],
    )


def test_missing_directory_is_polled_for(tmp_path: Path) -> None:
    path = tmp_path / "later"
    src = DirSource(path, poll_interval=0.05, rescan_interval=HOUR)

    def make() -> None:
        path.mkdir()
        (path / "a.yaml").write_text(doc("a"))

    watched(
        src,
        [
            (lambda: None, []),
            (make, ["a"]),
            (lambda: (path / "a.yaml").write_text(doc("z")), ["z"]),
        ],
    )


def test_a_removed_watchs_events_leave_the_current_one(tmp_path: Path) -> None:
    """DELETE_SELF and IGNORED of a watch already replaced must not remove its replacement
    (the source would fall back to polling, or lose changes until the next rescan)."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    watch = DirWatch()
    try:
        assert watch.watch(str(old))
        watch.wd = -1
        assert watch.watch(str(new))  # the watch added since
        current = watch.wd
        old.rmdir()  # the first watch's DELETE_SELF and IGNORED are queued
        woken: list[None] = []
        watch.read(lambda: woken.append(None))
        assert woken and watch.wd == current
        (new / "a.yaml").write_text(doc("a"))
        woken.clear()
        watch.read(lambda: woken.append(None))
        assert woken, "the current watch still reports its directory's changes"
    finally:
        watch.close()
