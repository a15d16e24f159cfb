"""The Node watch outside kopf: only changes of what the operator reads reach the cache."""

from __future__ import annotations

import json
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

    def watch(
        self, path: str, rv: str, timeout_seconds: int = 30, parse: Any = json.loads
    ) -> Iterator[dict[str, Any]]:
        """The events as the API server sends them: one compact JSON line each, through `parse`."""
        self.parsed = 0
        for event in self.events:
            found = parse(json.dumps(event, separators=(",", ":")).encode())
            if found is not None:
                self.parsed += 1
                yield found


class Cache:
    """The operator's node cache as the watch feeds it, and what was delivered: (name, not deleted)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeFacts] = {}
        self.delivered: list[tuple[str, bool]] = []

    def deliver(self, name: str, facts: NodeFacts | None) -> None:
        self.delivered.append((name, facts is not None))
        if facts is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = facts


def test_heartbeats_are_dropped_changes_and_deletions_delivered() -> None:
    cache = Cache()
    delivered = cache.delivered

    api = Api(
        [versioned("a", 5), versioned("b", 6)],
        [
            {"type": "MODIFIED", "object": versioned("a", 11)},  # a heartbeat: same facts
            {"type": "MODIFIED", "object": versioned("a", 12, labels={"nvidia.com/gpu.present": "true"})},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
            {"type": "DELETED", "object": versioned("b", 14)},
        ],
    )
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    assert watch.relist() == "10"
    assert watch.watch("10") == "14"  # where the next watch goes on from
    assert delivered == [("a", True), ("b", True), ("a", True), ("b", False)]
    assert cache.nodes["a"].labels["nvidia.com/gpu.present"] == "true"

    api.listed = [versioned("c", 20)]  # listed again after a broken watch: a is gone
    delivered.clear()
    watch.relist()
    assert delivered == [("c", True), ("a", False)]


def heartbeat(name: str, rv: int, beat: str, **kw: Any) -> dict[str, Any]:
    """A node as the API server writes it after a status heartbeat at `beat`."""
    body = versioned(name, rv, **kw)
    body = {"kind": "Node", "apiVersion": "v1", **body}
    body["metadata"] = {"name": name, **{k: v for k, v in body["metadata"].items() if k != "name"}}
    body["metadata"]["managedFields"] = [{"manager": "kwok", "operation": "Update", "time": beat}]
    body.setdefault("status", {})["conditions"] = [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": beat, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    ]
    return body


def test_a_heartbeat_line_is_skipped_unparsed_and_its_version_still_counts() -> None:
    cache = Cache()
    delivered = cache.delivered

    not_ready = heartbeat("a", 14, "2026-01-01T00:01:00Z")
    not_ready["status"]["conditions"][0]["status"] = "False"
    api = Api([], [
        {"type": "MODIFIED", "object": heartbeat("a", 11, "2026-01-01T00:00:20Z")},
        {"type": "MODIFIED", "object": heartbeat("a", 12, "2026-01-01T00:00:40Z")},  # only the beat: skipped
        {"type": "MODIFIED", "object": heartbeat("b", 13, "2026-01-01T00:00:41Z")},  # another node: parsed
        {"type": "MODIFIED", "object": not_ready},  # readiness changed: parsed
        {"type": "MODIFIED", "object": heartbeat("a", 15, "2026-01-01T00:01:20Z", labels={"x": "y"})},  # a label
        {"type": "MODIFIED", "object": heartbeat("a", 16, "2026-01-01T00:01:40Z", labels={"x": "y"})},  # skipped
        {"type": "DELETED", "object": heartbeat("a", 17, "2026-01-01T00:01:40Z", labels={"x": "y"})},
    ])  # fmt: skip
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    assert watch.watch("10") == "17"
    assert api.parsed == 5
    assert delivered == [("a", True), ("b", True), ("a", True), ("a", True), ("a", False)]
    api.events = [{"type": "MODIFIED", "object": heartbeat("a", 18, "2026-01-01T00:02:00Z", labels={"x": "y"})}]
    watch.watch("17")
    assert api.parsed == 1  # after a deletion the name's next line is parsed again
    api.events = [
        {"type": "MODIFIED", "object": heartbeat("a", rv, f"2026-01-01T00:0{rv - 16}:00Z", labels={"x": "y"})}
        for rv in (19, 20)
    ]
    assert watch.watch("18") == "20"  # the version to go on from is read from skipped lines too
    assert api.parsed == 0
