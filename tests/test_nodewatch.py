"""The Node watch outside kopf: only changes of what the operator reads reach the cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gpu_operator.nodes import NodeFacts
from gpu_operator.nodewatch import NodeWatch
from support import node


def versioned(name: str, rv: int, **kw: Any) -> dict[str, Any]:
    body = node(name, **kw)
    body["metadata"]["resourceVersion"] = str(rv)
    return body


class Api:
    def __init__(self, listed: list[dict[str, Any]], events: list[dict[str, Any]]):
        self.listed = listed
        self.events = events

    def request(self, method: str, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"items": self.listed, "metadata": {"resourceVersion": "10"}}

    def watch(self, path: str, rv: str, timeout_seconds: int = 30) -> Iterator[dict[str, Any]]:
        yield from self.events


def test_heartbeats_are_dropped_changes_and_deletions_delivered() -> None:
    cache: dict[str, NodeFacts] = {}
    delivered: list[tuple[str, bool]] = []

    def deliver(name: str, facts: NodeFacts | None) -> None:
        delivered.append((name, facts is not None))
        if facts is None:
            cache.pop(name, None)
        else:
            cache[name] = facts

    api = Api(
        [versioned("a", 5), versioned("b", 6)],
        [
            {"type": "MODIFIED", "object": versioned("a", 11)},  # a heartbeat: same facts
            {"type": "MODIFIED", "object": versioned("a", 12, labels={"nvidia.com/gpu.present": "true"})},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
            {"type": "DELETED", "object": versioned("b", 14)},
        ],
    )
    watch = NodeWatch(api, cache.get, deliver)  # type: ignore[arg-type]
    assert watch.relist() == "10"
    assert watch.watch("10") == "14"  # where the next watch goes on from
    assert delivered == [("a", True), ("b", True), ("a", True), ("b", False)]
    assert cache["a"].labels["nvidia.com/gpu.present"] == "true"

    api.listed = [versioned("c", 20)]  # listed again after a broken watch: a is gone
    delivered.clear()
    watch.relist()
    assert delivered == [("c", True), ("a", False)]
