"""The Node watch outside kopf: only changes of what the operator reads reach the cache."""

from __future__ import annotations

import asyncio
import json
import logging
import types
from collections.abc import Iterator
from typing import Any

import pytest

from gpu_operator import nodewatch, wire
from gpu_operator.kube import ApiError
from gpu_operator.nodes import NodeFacts, deploy_label
from gpu_operator.nodewatch import NodeWatch
from gpu_operator.observe import Snapshot
from gpu_operator.runtime import Inbox, Operator
from support import NAMESPACE, facts, node


def versioned(name: str, rv: int, **kw: Any) -> dict[str, Any]:
    body = node(name, **kw)
    body["metadata"]["resourceVersion"] = str(rv)
    return body


def line(obj: Any) -> bytes:
    """JSON the way the API server writes it: compact, one line."""
    return json.dumps(obj, separators=(",", ":")).encode()


class Api:
    """Node list pages and watch lines as the API server sends them, through the decoders the watch passes."""

    def __init__(self, listed: list[dict[str, Any]], events: list[dict[str, Any]], page: int = 500):
        self.listed = listed
        self.events = events
        self.page = page  # items a list page holds
        self.queries: list[dict[str, Any]] = []
        self.watches = 0
        self.parsed = 0

    def request(
        self, method: str, path: str, query: dict[str, Any] | None = None, decode: Any = json.loads
    ) -> Any:
        query = dict(query or {})
        self.queries.append(query)
        start = int(query.get("continue") or 0)
        more = start + self.page < len(self.listed)
        meta = {"resourceVersion": "10", **({"continue": str(start + self.page)} if more else {})}
        return decode(line({"kind": "NodeList", "metadata": meta, "items": self.listed[start:start + self.page]}))

    def watch(self, path: str, rv: str, timeout_seconds: int = 30, parse: Any = json.loads) -> Iterator[Any]:
        """The events as the API server sends them: one compact JSON line each, through `parse`."""
        self.watches += 1
        self.parsed = 0
        for event in self.events:
            found = parse(line(event))
            if found is not None:
                assert isinstance(found, wire.Event) and isinstance(found.object, wire.Node)  # decoded typed
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
    assert cache.nodes["a"] == NodeFacts.from_node(versioned("a", 12, labels={"nvidia.com/gpu.present": "true"}))
    assert cache.nodes["a"].resource_version == 12

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
    assert cache.nodes["b"] == NodeFacts.from_node(heartbeat("b", 13, "2026-01-01T00:00:41Z"))
    api.events = [{"type": "MODIFIED", "object": heartbeat("a", 18, "2026-01-01T00:02:00Z", labels={"x": "y"})}]
    watch.watch("17")
    assert api.parsed == 1  # after a deletion the name's next line is parsed again
    api.events = [
        {"type": "MODIFIED", "object": heartbeat("a", rv, f"2026-01-01T00:0{rv - 16}:00Z", labels={"x": "y"})}
        for rv in (19, 20)
    ]
    assert watch.watch("18") == "20"  # the version to go on from is read from skipped lines too
    assert api.parsed == 0


def test_a_line_not_written_name_first_is_decoded_and_delivered() -> None:
    """The heartbeat digest needs the name at the line's start; a line without it is decoded as it is."""
    cache = Cache()
    body = heartbeat("a", 11, "2026-01-01T00:00:20Z")
    meta = body["metadata"]
    body["metadata"] = {"labels": meta.pop("labels"), **meta}  # the name not first (keys sorted, as kubectl's)
    api = Api([], [{"type": "MODIFIED", "object": body}] * 2)
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    assert watch.watch("10") == "11"
    assert api.parsed == 2  # neither skipped: the digest is not taken without the name
    assert cache.delivered == [("a", True)]  # the second dropped as unchanged once decoded
    assert cache.nodes["a"] == NodeFacts.from_node(body) and cache.nodes["a"].has_gpu


def test_a_node_that_differs_only_by_the_nodefeature_devices_the_cache_filled_in_is_not_delivered() -> None:
    """The operator's cache holds the nodes with their NodeFeature PCI devices filled in, which the watch never
    reads: compared with ==, every event of such a node that changed nothing the operator reads (an annotation it
    does not keep, say) would reach the event loop."""
    op = Operator(kube=None, namespace=NAMESPACE)  # type: ignore[arg-type]
    op.node_features = {"a": ("2330",)}  # its NodeFeature names an H100
    delivered: list[str] = []

    def deliver(name: str, facts: NodeFacts | None) -> None:
        delivered.append(name)
        op.on_node_facts(name, facts)

    annotated = versioned("a", 11)
    annotated["metadata"]["annotations"] = {"node.alpha.kubernetes.io/ttl": "0"}  # not kept
    api = Api([versioned("a", 5)], [
        {"type": "MODIFIED", "object": annotated},
        {"type": "MODIFIED", "object": versioned("a", 12, labels={"nvidia.com/gpu.present": "true"})},
    ])  # fmt: skip
    watch = NodeWatch(api, op.nodes.get, deliver)  # type: ignore[arg-type]
    watch.relist()
    assert delivered == ["a"] and op.nodes["a"].pci_devices == ("2330",)
    watch.watch("10")
    assert delivered == ["a", "a"]  # the label change only
    assert op.nodes["a"].pci_devices == ("2330",) and op.nodes["a"].labels["nvidia.com/gpu.present"] == "true"


def test_an_error_event_ends_the_watch_and_the_nodes_are_listed_again() -> None:
    cache = Cache()
    error = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": "too old resource version: 3 (4)", "reason": "Expired",
                                         "code": 410}}  # fmt: skip
    api = Api([versioned("a", 5)], [
        {"type": "ADDED", "object": versioned("b", 11)},
        error,
        {"type": "ADDED", "object": versioned("c", 12)},
    ])  # fmt: skip
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    assert watch.watch("3") is None  # None: list again
    assert cache.delivered == [("b", True)]  # nothing after the error

    # In the watch's thread: listed, watched until the error, listed again (b, not listed, is deleted).
    cache, api = Cache(), Api([versioned("a", 5)], [{"type": "ADDED", "object": versioned("b", 11)}, error])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]

    def request(*args: Any, **kwargs: Any) -> Any:
        if api.queries:  # the listing after the error: the last this test waits for
            api.events = []
            watch.stop.set()
        return Api.request(api, *args, **kwargs)

    def watched(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if api.watches >= 3:  # not listed again after the error: the test ends instead of watching forever
            watch.stop.set()
        return Api.watch(api, *args, **kwargs)

    api.request, api.watch = request, watched  # type: ignore[method-assign]
    watch.run()
    assert len(api.queries) == 2 and api.watches == 2
    assert cache.delivered == [("a", True), ("b", True), ("b", False)]


class Stop:
    """A watch's stop event that records the waits asked of it instead of sleeping; set after `waits` of them (or,
    should the watch never wait, after `tries` watches of `api`)."""

    def __init__(self, api: Api, waits: int, tries: int = 50) -> None:
        self.api, self.left, self.tries = api, waits, tries
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.left or self.api.watches >= self.tries

    def set(self) -> None:
        self.left = 0

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_a_watch_the_server_ends_at_once_is_watched_again_only_after_a_growing_wait() -> None:
    """A watch answered 200 whose stream ended at once with no event (a proxy or load balancer closing it, an API
    server going away) was sent again at once, for ever: thousands of WATCH requests a second from each watch
    thread (2,088 in a second on loopback). client-go's reflector takes a watch that lasted under a second with no
    event for a failure ("very short watch") and backs off, 800 ms doubling to 30 s. So does Watch.run now, going on
    from the version it had; an event resets the wait."""
    cache, api = Cache(), Api([versioned("a", 5)], [])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.stop = stop = Stop(api, waits=8)  # type: ignore[assignment]
    watch.run()
    assert api.watches == 8 and len(api.queries) == 1  # listed once: each watch goes on from the version
    assert stop.waits == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]

    watched = Api.watch

    def events_now_and_then(path: str, rv: str, **kwargs: Any) -> Iterator[Any]:
        api.events = [{"type": "MODIFIED", "object": versioned("a", 11)}] if api.watches == 2 else []
        return watched(api, path, rv, **kwargs)

    api = Api([versioned("a", 5)], [])
    api.watch = events_now_and_then  # type: ignore[method-assign]
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.stop = stop = Stop(api, waits=4)  # type: ignore[assignment]
    watch.run()
    assert stop.waits == [0.8, 1.6, 0.8, 1.6]  # the third watch brought an event


def test_a_watch_ended_by_an_error_event_other_than_expired_waits_before_listing_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A watch ended by an ERROR event other than 410 Expired (an InternalError: the API server failing the stream
    while lists work) was listed again and watched again at once, every time: the whole collection listed in a loop
    as fast as the API server answered (18 Node listings in 1.5 s on loopback). Now it is a failed watch: a warning
    naming the error, and a listing again after the growing wait. An expiry is still listed again at once, the first
    time in a row."""
    error = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": "an error on the server", "reason": "InternalError",
                                         "code": 500}}  # fmt: skip
    cache, api = Cache(), Api([versioned("a", 5)], [error])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.stop = stop = Stop(api, waits=3)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        watch.run()
    assert len(api.queries) == 3 and stop.waits == [0.8, 1.6, 3.2]
    assert caplog.messages[0] == "node-watch failed, listing again: WATCH /api/v1/nodes: 500 an error on the server"

    # 410 Expired at once: listed again at once; again at once after that, it is a failure too.
    expired = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                           "message": "too old resource version: 3 (4)", "reason": "Expired",
                                           "code": 410}}  # fmt: skip
    api = Api([versioned("a", 5)], [expired])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.stop = stop = Stop(api, waits=2)  # type: ignore[assignment]
    watch.run()
    assert len(api.queries) == 3 and stop.waits == [1.6, 3.2]


def test_a_watch_the_server_ends_goes_on_from_its_version_without_listing_again() -> None:
    """A watch the API server ends (its timeout, WATCH_TIMEOUT_S) is followed by another from the version it
    reached, not by a listing of the whole collection."""
    cache = Cache()
    api = Api([versioned("a", 5)], [{"type": "MODIFIED", "object": versioned("a", 11, labels={"x": "y"})}])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    asked: list[str] = []

    def watched(path: str, rv: str, **kwargs: Any) -> Iterator[Any]:
        asked.append(rv)
        if len(asked) >= 3:
            watch.stop.set()
        return Api.watch(api, path, rv, **kwargs)

    api.watch = watched  # type: ignore[method-assign]
    watch.run()
    assert len(api.queries) == 1  # listed once, at the start
    assert asked == ["10", "11", "11"]  # each watch from where the last ended
    assert cache.nodes["a"].labels.get("x") == "y"


def test_a_listing_over_pages_delivers_changes_and_deletions() -> None:
    cache = Cache()
    api = Api([versioned(n, 5 + i) for i, n in enumerate("abcde")], [], page=2)
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    assert watch.relist() == "10"
    assert [q.get("continue") for q in api.queries] == [None, "2", "4"]  # each page asked from where the last ended
    assert all(q["limit"] == 500 for q in api.queries)
    assert cache.delivered == [(n, True) for n in "abcde"]
    assert cache.nodes["c"] == NodeFacts.from_node(versioned("c", 7)) and cache.nodes["c"].resource_version == 7

    api.listed = [versioned("a", 5), versioned("c", 20, ready=False), versioned("e", 9), versioned("f", 21)]
    cache.delivered.clear()
    watch.relist()
    # a and e unchanged: not delivered; c changed, f new; b and d gone: deleted.
    assert sorted(cache.delivered) == [("b", False), ("c", True), ("d", False), ("f", True)]
    assert not cache.nodes["c"].ready

    api.listed = [versioned("a", 4, labels={"x": "y"})]  # older than the cached a: dropped
    cache.delivered.clear()
    watch.relist()
    assert sorted(cache.delivered) == [("c", False), ("e", False), ("f", False)]


class _ExpiringApi(Api):
    """Pages whose continue token the API server no longer takes (410 Expired: etcd compacted past the first page's
    version while the listing ran), as kube.Kube.request raises it."""

    def request(
        self, method: str, path: str, query: dict[str, Any] | None = None, decode: Any = json.loads
    ) -> Any:
        query = dict(query or {})
        if "limit" not in query:  # the whole collection in one answer
            self.queries.append(query)
            return decode(line({"kind": "List", "metadata": {"resourceVersion": "10"}, "items": self.listed}))
        if query.get("continue"):
            self.queries.append(query)
            raise ApiError(410, json.dumps({"message": "The provided continue parameter is too old"}), f"GET {path}")
        return super().request(method, path, query, decode)


def test_a_relisting_whose_continue_token_expired_lists_the_whole_collection_again() -> None:
    """A watch's relisting over pages whose continue token expired (410) raised, and `run` started the whole paged
    listing over after a back-off: on a large or slow cluster each try can expire the same way, and the cache is
    never listed. client-go's pager (FullListIfExpired, which the reflector uses) and kube.Kube's own paging list
    the collection again whole in one request instead, as the watches do now: every object, the list's version,
    and what the cache holds and that listing lacks delivered as deleted. Typed (nodes) and parsed pages alike."""
    cache = Cache()
    cache.nodes["gone"] = NodeFacts.from_node(versioned("gone", 3))
    api = _ExpiringApi([versioned(n, 5 + i) for i, n in enumerate("abcde")], [], page=2)
    watch = NodeWatch(api, cache.nodes.get, cache.deliver, names=lambda: tuple(cache.nodes))  # type: ignore[arg-type]
    assert watch.relist() == "10"
    assert api.queries == [{"limit": 500}, {"limit": 500, "continue": "2"}, {}]  # the last one whole, no limit
    assert sorted(cache.nodes) == list("abcde")
    assert ("gone", False) in cache.delivered and cache.delivered.count(("a", True)) == 1  # a: offered twice, same

    pods: dict[str, Any] = {}
    parsed = _ExpiringApi([{"metadata": {"name": f"p{i}", "resourceVersion": "7"}} for i in range(5)], [], page=2)
    plain: nodewatch.Watch[Any] = nodewatch.Watch(
        parsed, "/api/v1/namespaces/gpu-operator/pods", lambda o: o, pods.get,  # type: ignore[arg-type]
        lambda name, obj: pods.__setitem__(name, obj), limit=2,
    )  # fmt: skip
    assert plain.relist() == "10"
    assert sorted(pods) == [f"p{i}" for i in range(5)]


def test_a_change_undone_before_the_event_loop_takes_it_is_not_lost() -> None:
    """The watch judged each event against the event loop's cache, which its deliveries reach only later, through
    runtime.Inbox. Read back to back, a label set then taken off were both judged against the old entry: the second,
    equal to it, was dropped, the first then stored, and the cache kept a label the node no longer had (an opt-out
    of dcgm-exporter here: never set back to true, no exporter on the node) until the node changed again."""
    opt_out = deploy_label("dcgm-exporter")
    loop = asyncio.new_event_loop()
    try:
        op = Operator(kube=None, namespace=NAMESPACE)  # type: ignore[arg-type]
        op.on_node_facts("a", NodeFacts.from_node(versioned("a", 5)))
        api = Api([], [
            {"type": "MODIFIED", "object": versioned("a", 6, labels={opt_out: "false"})},
            {"type": "MODIFIED", "object": versioned("a", 7)},
        ])  # fmt: skip
        watch = NodeWatch(api, op.nodes.get, Inbox(loop).deliverer(op.on_node_facts))  # type: ignore[arg-type]
        watch.watch("5")  # both lines read before the loop takes the first
        loop.run_until_complete(asyncio.sleep(0))  # the loop drains the inbox
        assert opt_out not in op.nodes["a"].labels
        assert op.nodes["a"].resource_version == 7

        # Not against what it delivered alone either: the cache also takes the answers to the operator's writes.
        # One the watch missed (it was down), then undone: the listing after brings the node as it was delivered.
        op.on_node_facts("a", NodeFacts.from_node(versioned("a", 8, labels={opt_out: "true"})))
        api.listed, api.events = [versioned("a", 9)], []
        watch.relist()
        loop.run_until_complete(asyncio.sleep(0))
        assert opt_out not in op.nodes["a"].labels
    finally:
        loop.close()


def test_what_was_delivered_is_kept_as_a_digest_dropped_with_the_node() -> None:
    """Per node the watch keeps a hash of the facts it last delivered, not the facts (the cache holds those, or
    those of the operator's own writes: 5,000 nodes' would be held twice); a deleted or unlisted node's goes."""
    cache = Cache()
    api = Api([versioned("a", 5), versioned("b", 6)], [{"type": "DELETED", "object": versioned("b", 11)}])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.relist()
    assert sorted(watch._last) == ["a", "b"] and all(isinstance(v, int) for v in watch._last.values())
    watch.watch("10")
    assert sorted(watch._last) == ["a"]
    api.listed = []
    watch.relist()
    assert watch._last == {}


def test_a_line_equal_to_one_before_a_listing_is_a_change_after_it() -> None:
    """A listing replaces what the cache holds, so the heartbeat digests of the lines before it go: a label set,
    taken off while the watch was down (the listing brings the node without it) and set again is a change, not a
    heartbeat of the line before the listing."""
    cache = Cache()
    api = Api([], [{"type": "MODIFIED", "object": heartbeat("a", 11, "2026-01-01T00:00:20Z", labels={"x": "y"})}])
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.watch("10")
    assert cache.nodes["a"].labels.get("x") == "y"

    api.listed, api.events = [heartbeat("a", 12, "2026-01-01T00:00:40Z")], []
    watch.relist()
    assert "x" not in cache.nodes["a"].labels

    api.events = [{"type": "MODIFIED", "object": heartbeat("a", 13, "2026-01-01T00:01:00Z", labels={"x": "y"})}]
    assert watch.watch("12") == "13"
    assert api.parsed == 1
    assert cache.nodes["a"].labels.get("x") == "y"
    assert cache.delivered == [("a", True)] * 3


def test_a_listing_drops_what_the_cache_holds_and_it_lacks() -> None:
    """A listing delivered as deleted only the names the watch had delivered itself, not what the cache holds: a
    node the operator's start-up listing brought, deleted before the watch's own first listing, stayed cached (in
    every snapshot, counted in the status) through any number of relistings. The same for pods, revisions, our
    DaemonSets, ClusterPolicies and NVIDIADrivers."""

    class Kube:
        def request(self, method: str, path: str, **kw: Any) -> Any:
            return kw["decode"](b'{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"9"},"items":[]}')

    op = Operator(kube=Kube(), namespace=NAMESPACE)  # type: ignore[arg-type]
    pod = {"metadata": {"name": "p", "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
           "node": "gone", "owner": "ds", "status": {"phase": "Running"}}  # fmt: skip
    ds = {"kind": "DaemonSet", "metadata": {"name": "ds", "namespace": NAMESPACE, "uid": "u", "resourceVersion": "3"}}
    listed = Snapshot(
        nodes={"gone": facts("gone")},
        policies={"cluster-policy": {"kind": "ClusterPolicy", "metadata": {"name": "cluster-policy"}}},
        owned={("DaemonSet", NAMESPACE, "ds"): ds},
        pods={"p": pod},
        revisions={"ds-1": {"metadata": {"name": "ds-1"}}},
        nvidia_drivers={"default": {"kind": "NVIDIADriver", "metadata": {"name": "default"}}},
    )
    op._merge(listed)  # the start-up listing, before they were deleted
    watches = op.own_watches(lambda handler: handler, lambda handler: handler)
    for watch in watches:
        watch.relist()  # each watch's first listing: they are gone already
    assert (op.nodes, op.policies, op.owned, op.pods, op.revisions, op.nvidia_drivers) == ({}, {}, {}, {}, {}, {})
    assert op.pods_on == {} and op._by_owner == {}


def test_a_collection_not_served_is_tried_again_slowly_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """The NVIDIADriver watch where its CRD is not installed (the start-up listing reads none there): its listing
    is answered 404, tried again every UNSERVED_RETRY_S, with one warning, not one a second."""

    class Kube:
        def request(self, method: str, path: str, **kw: Any) -> Any:
            raise ApiError(404, '{"message": "the server could not find the requested resource"}', f"GET {path}")

    class Stop:
        def __init__(self) -> None:
            self.waits: list[float] = []

        def is_set(self) -> bool:
            return len(self.waits) >= 3

        def wait(self, seconds: float) -> None:
            self.waits.append(seconds)

    op = Operator(kube=Kube(), namespace=NAMESPACE)  # type: ignore[arg-type]
    [watch] = [w for w in op.own_watches(lambda h: h, lambda h: h) if w.name == "nvidiadriver-watch"]
    watch.stop = stop = Stop()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        watch.run()
    assert stop.waits == [nodewatch.UNSERVED_RETRY_S] * 3
    assert len(caplog.records) == 1 and "404" in caplog.records[0].getMessage()


def test_a_watch_across_namespaces_names_objects_by_namespace_and_a_refused_one_may_end() -> None:
    """NFD's NodeFeatures are watched across namespaces (runtime's NodeFeature watch): `namespaced` names each
    object "namespace/name", so two of one name in two namespaces are two objects, and a DELETED event takes only
    its own. With `denied`, a 403 ends the watch (its owner lists them instead) instead of trying again every
    UNSERVED_RETRY_S; `limit` sizes its list pages."""

    def feature(namespace: str, rv: int) -> dict[str, Any]:
        return {"metadata": {"name": "gpu-1", "namespace": namespace, "resourceVersion": str(rv)}}

    class Kube:
        def __init__(self) -> None:
            self.queries: list[dict[str, Any]] = []
            self.refuse = False

        def request(self, method: str, path: str, query: dict[str, Any], decode: Any) -> Any:
            self.queries.append(dict(query))
            return decode(line({"metadata": {"resourceVersion": "9"}, "items": [feature("nfd", 5), feature("ml", 6)]}))

        def watch(self, path: str, rv: str, timeout_seconds: int, parse: Any) -> Iterator[Any]:
            if self.refuse:
                raise ApiError(403, '{"message": "forbidden"}', f"GET {path}")
            yield parse(line({"type": "DELETED", "object": feature("ml", 10)}))

    kube = Kube()
    cache: dict[str, Any] = {}
    delivered: list[tuple[str, bool]] = []
    refused: list[int] = []

    def deliver(name: str, value: Any) -> None:
        delivered.append((name, value is not None))
        if value is None:
            cache.pop(name, None)
        else:
            cache[name] = value

    watch = nodewatch.Watch(kube, "/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures",  # type: ignore[arg-type]
                            lambda obj: obj["metadata"]["resourceVersion"], cache.get, deliver, namespaced=True,
                            limit=100, denied=lambda exc, listing: refused.append((exc.status, listing)))  # fmt: skip
    assert watch.watch(watch.relist()) == "10"
    assert delivered == [("nfd/gpu-1", True), ("ml/gpu-1", True), ("ml/gpu-1", False)] and cache == {"nfd/gpu-1": "5"}
    assert kube.queries == [{"limit": 100}]
    kube.refuse = True
    watch.run()  # lists, is refused, and ends: no wait to try again
    assert refused == [(403, False)] and len(kube.queries) == 2  # (the watch, not the listing, was refused)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_quiet_watch_that_worked_for_minutes_then_broke_does_not_keep_the_outage_backoff(monkeypatch: Any) -> None:
    """Was wrong: the streak was reset only by a watch that brought an event or ended normally. client-go's
    reflector backoff (NewExponentialBackoffManager(800ms, 30s, 2min, ...)) resets once it has not
    backed off for 2 minutes ("If we don't backoff for 2min, assume API server is healthy and we reset the
    backoff"). Watch.run resets its streak only when a watch brought an event or ended normally: after an outage
    (6 listings refused: the wait has grown to 25.6 s), a listing that works and a watch that stays open 5 minutes on
    a quiet kind (ClusterPolicies, NVIDIADrivers) and is then cut (a connection reset: an API server restarting,
    a load balancer's idle timeout) waits 30 s, not 0.8 s, before listing again, and so does every later cut while
    the kind stays quiet: the operator misses that kind's changes for up to 30 s each time."""
    clock = _Clock()
    monkeypatch.setattr(nodewatch, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    cache, api = Cache(), Api([versioned("a", 5)], [])
    refusals = 6
    listed = Api.request

    def request(*args: Any, **kwargs: Any) -> Any:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise ConnectionRefusedError("connection refused")
        return listed(api, *args, **kwargs)

    def quiet_then_reset(path: str, rv: str, **kwargs: Any) -> Iterator[Any]:
        api.watches += 1
        clock.now += 300.0  # open and quiet for five minutes
        raise ConnectionResetError("connection reset by peer")
        yield  # (a generator, as Kube.watch is)

    api.request = request  # type: ignore[method-assign]
    api.watch = quiet_then_reset  # type: ignore[method-assign]
    watch = NodeWatch(api, cache.nodes.get, cache.deliver)  # type: ignore[arg-type]
    watch.stop = stop = Stop(api, waits=7)  # type: ignore[assignment]
    watch.run()
    assert stop.waits[:6] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6]  # the outage
    assert stop.waits[6] == nodewatch.RETRY_S  # the watch had worked for 5 minutes: the backoff starts over
