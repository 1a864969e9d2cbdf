"""The list-watch's sequencing (kube/listwatch.py) against a scripted server: the requests it
makes and what its sink receives. tests/kube/test_agent_source.py runs it against the real API
server; this covers the orders a real server produces rarely.

Scenarios:
- pages follow the continue token; the watch starts from the listing's resourceVersion
- a BOOKMARK advances the resourceVersion the next watch resumes from
- an ERROR 410 event, and an HTTP 410 on a continue token, list again from the start
- a failure backs off and resumes the watch from the last resourceVersion (no relist)
- relist() interrupts and lists again
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from bridgeport.kube.listwatch import ListWatch, Timing

TIMING = Timing(page=2, watch_timeout=(1, 1), backoff=(0.01,))


class Response:
    def __init__(self, data: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""
        self.lines = lines or []

    def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
        text = "".join(json.dumps(e) + "\n" for e in self.lines).encode()
        for i in range(0, len(text), 7):  # events split across chunks
            yield text[i : i + 7]

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Server:
    """Answers requests from a script; records them; stops the list-watch when done."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.lw: ListWatch | None = None

    def __call__(self, **kwargs: Any) -> Any:
        kwargs.pop("_preload_content")
        kwargs.pop("_request_timeout")
        self.requests.append(kwargs)
        if not self.script:
            assert self.lw is not None
            self.lw.stop()
            raise OSError("end of script")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class Sink:
    def __init__(self) -> None:
        self.log: list[str] = []

    def begin(self) -> None:
        self.log.append("begin")

    def put(self, obj: Mapping[str, Any]) -> None:
        self.log.append(f"put {obj['metadata']['name']}")

    def delete(self, obj: Mapping[str, Any]) -> None:
        self.log.append(f"delete {obj['metadata']['name']}")

    def end(self) -> None:
        self.log.append("end")


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def page(*names: str, rv: str = "10", token: str = "") -> Response:
    return Response(
        {
            "items": [obj(n, rv) for n in names],
            "metadata": {"resourceVersion": rv, "continue": token},
        }
    )


def watch(*events: tuple[str, dict[str, Any]]) -> Response:
    return Response(lines=[{"type": t, "object": o} for t, o in events])


def run(script: list[Any]) -> tuple[Server, Sink]:
    server, sink = Server(script), Sink()
    lw = ListWatch("test", server, sink, TIMING)
    server.lw = lw
    thread = threading.Thread(target=lw.run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return server, sink


def calls(server: Server) -> list[str]:
    out = []
    for r in server.requests:
        if r.get("watch"):
            out.append(f"watch@{r['resource_version']}")
        else:
            out.append(f"list+{r['_continue']}" if "_continue" in r else "list")
    return out


def test_pages_then_watch_from_the_listing_with_bookmarks() -> None:
    server, sink = run(
        [
            page("a", "b", token="t1"),
            page("c", rv="10"),
            watch(
                ("ADDED", obj("d", "11")),
                ("BOOKMARK", obj("", "15")),
                ("DELETED", obj("a", "16")),
                ("BOOKMARK", obj("", "20")),
            ),
            watch(("MODIFIED", obj("d", "21"))),
        ]
    )
    assert calls(server)[:4] == ["list", "list+t1", "watch@10", "watch@20"]
    assert calls(server)[4] == "watch@21"
    assert sink.log == ["begin", "put a", "put b", "put c", "end", "put d", "delete a", "put d"]


def test_410_lists_again_from_the_start() -> None:
    server, sink = run(
        [
            page("a", token="t1"),
            ApiException(status=410, reason="Expired"),  # continue expired
            page("a", "b", rv="12"),
            watch(("ADDED", obj("c", "13")), ("ERROR", {"code": 410, "message": "too old"})),
            page("a", rv="30"),
            watch(),
        ]
    )
    assert calls(server)[:6] == ["list", "list+t1", "list", "watch@12", "list", "watch@30"]
    assert sink.log == [
        "begin",
        "put a",
        "begin",
        "put a",
        "put b",
        "end",
        "put c",
        "begin",
        "put a",
        "end",
    ]


def test_failures_back_off_and_resume_from_the_last_version() -> None:
    server, sink = run(
        [
            page("a", rv="5"),
            watch(("ADDED", obj("b", "6"))),
            OSError("connection refused"),
            ApiException(status=500, reason="boom"),
            watch(("ERROR", {"code": 500, "message": "internal"})),
            watch(("MODIFIED", obj("b", "7"))),
        ]
    )
    assert calls(server)[:6] == ["list", "watch@5", "watch@6", "watch@6", "watch@6", "watch@6"]
    assert sink.log.count("begin") == 1
    assert sink.log[-1] == "put b"


def test_relist_on_request() -> None:
    server, sink = (
        Server(
            [page("a", rv="5"), watch(("ADDED", obj("b", "6"))), page("a", "b", rv="9"), watch()]
        ),
        Sink(),
    )
    lw = ListWatch("test", server, sink, TIMING)
    server.lw = lw
    lw.relist()  # before it starts: the first round lists anyway, then once more
    original = server.__call__

    def call(**kwargs: Any) -> Any:
        if kwargs.get("watch") and kwargs["resource_version"] == "6":
            lw.relist()
        return original(**kwargs)

    lw.call = call
    thread = threading.Thread(target=lw.run, daemon=True)
    thread.start()
    thread.join(30)
    assert calls(server)[:4] == ["list", "watch@5", "watch@6", "list"]
    assert sink.log[:5] == ["begin", "put a", "end", "put b", "begin"]
