"""Watches kept out of kopf, for the kinds with many objects: Nodes and operand Pods.

Every node heartbeats (a status write every ~20 s), so a 1,000-node cluster sends ~50 Node events a second that
change nothing the operator reads, and the operand pods of 1,000 nodes are ~8,000 objects of ~50 KB each once
parsed. kopf's per-event machinery cost more than the rest of the operator at steady state (py-spy) and kept
per-object state for each pod; here an event is parsed and projected in the watching thread (the whole object
dropped there) and dropped when the projection did not change, so only changes reach the event loop. Node and pod
events are decoded into typed Structs that read only the fields projected (wire.py).

ClusterPolicies and NVIDIADrivers are watched here too, for their listings: after 410 Gone kopf lists a resource
again without saying what went away, nor when the listing ends; a listing here delivers what it lacks as deleted.
NFD's NodeFeatures (every namespace) are watched here too, each kept as its node and NVIDIA PCI device IDs.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

from .kube import ApiError, Kube, list_pages, page_continue
from .nodes import NodeFacts
from .wire import Codec, Event, Node, Page

log = logging.getLogger("gpu_operator")

NODES = "/api/v1/nodes"
WATCH_TIMEOUT_S = 300
UNSERVED_RETRY_S = 30  # how often a collection the API server does not serve (a CRD not installed) is tried
# After a failure (a listing or watch that failed, an ERROR event but 410 Expired, a watch the server ended within
# SHORT_WATCH_S with no event) the next try waits RETRY_S, doubling up to RETRY_MAX_S until a watch brings an event,
# as client-go's reflector backs off. An expiry is listed again at once, unless the try before failed too.
RETRY_S = 0.8
RETRY_MAX_S = 30.0
SHORT_WATCH_S = 1.0
RESET_S = 120.0  # no wait for that long: the API server is taken as healthy, the next wait is RETRY_S (client-go)

T = TypeVar("T")
Current = Callable[[str], T | None]  # what the cache holds for an object, by name
Deliver = Callable[[str, T | None], object]  # a changed object (None: deleted), handed to the event loop
Names = Callable[[], Iterable[str]]  # the names the cache holds


class Watch(Generic[T]):
    """List, then watch, one collection in a thread; each object projected there, only changes delivered.

    A projection equal to the cached one is dropped only when it is also what this watch last delivered: deliveries
    reach the cache later (runtime.Inbox), and one still on its way there may change the entry.
    `stale(new, cached)`: whether a projection is older than the cached one (it is then dropped too).
    `same(new, cached)`: whether a projection equals the cached one (by default ==).
    `summary`: what is kept of each object delivered, to compare the next with (by default the projection).
    `names`: the names the cache holds (called in the watch's thread: it must copy them at once, `tuple(d)`). A
    listing then also delivers as deleted what the cache holds and the listing lacks, not only what this watch
    delivered: the cache also holds what the operator's own start-up listing brought.
    `namespaced`: objects are named "namespace/name" (a collection across namespaces). `limit`: a list page's size.
    `denied`: called (in the watch's thread) when the API server refuses it (403), with the error and whether it
    was the listing that was refused (else the watch); the watch then ends instead of trying again.
    `refused`: called (in the watch's thread) on each refused (403) listing, which is tried again as usual."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        project: Callable[[Any], T],
        current: Current[T],
        deliver: Deliver[T],
        *,
        label_selector: str | None = None,
        stale: Callable[[T, T], bool] | None = None,
        same: Callable[[T, T], bool] | None = None,
        name: str = "watch",
        volatile: re.Pattern[bytes] | None = None,
        codec: Codec[Any] | None = None,
        summary: Callable[[T], object] | None = None,
        names: Names | None = None,
        namespaced: bool = False,
        limit: int = 500,
        denied: Callable[[ApiError, bool], object] | None = None,
        refused: Callable[[ApiError], object] | None = None,
    ):
        self.kube = kube
        self.path = path
        self.project = project
        self.current = current
        self.deliver = deliver
        self.names = names
        self.limit = limit
        self.denied = denied
        self.refused = refused
        self.query: dict[str, Any] = {"labelSelector": label_selector} if label_selector else {}
        self.stale = stale
        self.same = same
        self.name = name
        self.stop = threading.Event()
        self._known: set[str] = set()
        self.summary = summary
        self._last: dict[str, object] = {}  # object name -> the summary of what was last delivered for it
        # `volatile`: the fields of an event line that change without anything this watch projects changing (a
        # heartbeat's times). A line equal to the object's last one once they are taken out is skipped unparsed.
        self.volatile = volatile
        self._digests: dict[bytes, int] = {}  # object name -> digest of its last line without the volatile fields
        self._rv = ""
        self._heard = 0  # events read but ERRORs, heartbeat lines skipped unparsed too
        # `codec`: the list pages and events are decoded into its Structs (wire.py), and `project` takes one;
        # without one they are parsed into dicts. How a page, an event and an object are read is chosen here once.
        self.codec = codec
        typed = codec is not None
        self._decode_page: Callable[[bytes], Any] = codec.decode_page if codec is not None else json.loads
        self._decode_event: Callable[[bytes], Any] = codec.decode_event if codec is not None else json.loads
        self._page: Callable[[Any], tuple[list[Any], str | None, str | None]] = _struct_page if typed else _dict_page
        self._continue: Callable[[Any], str | None] = _struct_continue if typed else page_continue
        self._event: Callable[[Any], tuple[str | None, Any]] = _struct_event if typed else _dict_event
        self._head: Callable[[Any], tuple[str, str | None, str | None]] = _struct_head if typed else _dict_head
        if namespaced:
            assert not typed
            self._head = _dict_namespaced_head

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        rv: str | None = None
        unserved = False
        failures = 0  # tries in a row that failed or whose watch brought no event
        waited = time.monotonic()  # when the last wait ended
        while not self.stop.is_set():
            heard = self._heard
            try:
                if rv is None:
                    rv = self.relist()
                    unserved = False
                started = time.monotonic()
                rv = self.watch(rv)
            except Exception as exc:  # noqa: BLE001 - a broken watch is listed again
                listing, rv = rv is None, None  # (rv is None still: the listing failed)
                if isinstance(exc, ApiError) and exc.status == 403 and self.denied is not None:
                    self.denied(exc, listing)
                    return
                if isinstance(exc, ApiError) and exc.status in (403, 404):  # not served (a CRD not installed) or denied
                    if exc.status == 403 and listing and self.refused is not None:
                        self.refused(exc)
                    if not unserved:
                        log.warning("%s: %s; trying again every %d s", self.name, exc, UNSERVED_RETRY_S)
                    unserved = True
                    self.stop.wait(UNSERVED_RETRY_S)
                    continue
                log.warning("%s failed, listing again: %s", self.name, exc)
                if self._heard > heard:  # it broke after it had worked
                    failures = 0
            else:
                if self._heard > heard or time.monotonic() - started >= SHORT_WATCH_S:
                    failures = 0
                    continue
                if rv is not None:
                    log.info("%s: the watch ended at once with no event", self.name)
                elif not failures:  # expired (410) at once: listed again at once, the first time in a row
                    failures = 1
                    continue
            if time.monotonic() - waited >= RESET_S:  # a quiet watch that worked for minutes, then broke
                failures = 0
            failures += 1
            self.stop.wait(min(RETRY_S * 2 ** min(failures - 1, 8), RETRY_MAX_S))
            waited = time.monotonic()

    def relist(self) -> str:
        """Every object offered, objects no longer there delivered as deleted; the list's resourceVersion."""
        seen: set[str] = set()
        rv = None
        pages = list_pages(self.kube.request, self.path, self.query, self.limit, self._decode_page, self._continue)
        for again, page in pages:
            if again:  # a continue token expired: this page is the whole collection, listed again
                seen = set()
            items, rv, _ = self._page(page)
            for i in range(len(items)):
                obj, items[i] = items[i], None  # each whole object is dropped as soon as it is projected
                name = self._head(obj)[0]
                seen.add(name)
                self._offer(name, self.project(obj))
        gone = self._known - seen
        if self.names is not None:
            gone.update(name for name in self.names() if name not in seen)
        for name in gone:
            self._last.pop(name, None)
            self.deliver(name, None)
        self._known = seen
        self._digests.clear()
        return str(rv or "")

    def watch(self, rv: str) -> str | None:
        """Events from `rv` until the server ends the watch: the version to go on from, or None to list again."""
        self._rv = rv
        parse = self._parse if self.volatile is not None else self._decode_event
        for event in self.kube.watch(self.path, rv, timeout_seconds=WATCH_TIMEOUT_S, parse=parse, **self.query):
            kind, obj = self._event(event)
            name, version, message = self._head(obj)
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else getattr(obj, "code", None)
                if code != 410:  # not Expired: listed again after a wait, as a failed watch is
                    raise ApiError(code or 500, json.dumps({"message": message}), f"WATCH {self.path}")
                log.info("%s: %s; listing again", self.name, message)
                return None
            self._heard += 1
            self._rv = version or self._rv
            if not name:  # a bookmark
                pass
            elif kind == "DELETED":
                self._known.discard(name)
                self._digests.pop(name.encode(), None)
                self._last.pop(name, None)
                self.deliver(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._known.add(name)
                self._offer(name, self.project(obj))
            if self.stop.is_set():
                return self._rv
        return self._rv

    def _parse(self, line: bytes) -> Any:
        """The event of a line, or None (skipped) when only its volatile fields changed since the object's last."""
        assert self.volatile is not None
        named = _NAME.search(line, 0, 512)
        if named is not None:
            digest = hash(self.volatile.sub(b"", line))
            if self._digests.get(named.group(1)) == digest:
                self._heard += 1
                version = _VERSION.search(line)
                if version is not None:
                    self._rv = version.group(1).decode()
                return None
            self._digests[named.group(1)] = digest
        return self._decode_event(line)

    def _offer(self, name: str, new: T) -> None:
        summary = new if self.summary is None else self.summary(new)
        cached = self.current(name)
        if cached is not None:
            if self.stale is not None and self.stale(new, cached):
                return
            # Unchanged only when the cache holds it and no delivery still on its way there changes it.
            same = cached == new if self.same is None else self.same(new, cached)
            if same and self._last.get(name) == summary:
                return
        self._last[name] = summary
        self.deliver(name, new)


# How a watch reads a list page (its items, resourceVersion and continue token), an event (its type and object)
# and an object (its name, resourceVersion and, in an ERROR event's Status, message): parsed dicts or wire.py's
# Structs (a Page, an Event, and a Struct with `metadata` and `message`, as wire.Pod and wire.Node are).
def _dict_page(page: dict[str, Any]) -> tuple[list[Any], str | None, str | None]:
    meta = page.get("metadata") or {}
    return page.pop("items", None) or [], meta.get("resourceVersion"), meta.get("continue")


def _dict_event(event: dict[str, Any]) -> tuple[str | None, Any]:
    return event.get("type"), event.get("object") or {}


def _dict_head(obj: dict[str, Any]) -> tuple[str, str | None, str | None]:
    meta = obj.get("metadata") or {}
    return meta.get("name", ""), meta.get("resourceVersion"), obj.get("message")


def _dict_namespaced_head(obj: dict[str, Any]) -> tuple[str, str | None, str | None]:
    name, version, message = _dict_head(obj)
    namespace = (obj.get("metadata") or {}).get("namespace")
    return (f"{namespace}/{name}" if name and namespace else name), version, message


def _struct_page(page: Page[Any]) -> tuple[list[Any], str | None, str | None]:
    return page.items or [], page.metadata.resourceVersion, page.metadata.next


def _struct_continue(page: Page[Any]) -> str | None:
    return page.metadata.next


def _struct_event(event: Event[Any]) -> tuple[str | None, Any]:
    return event.type, event.object


def _struct_head(obj: Any) -> tuple[str, str | None, str | None]:
    if obj is None:
        return "", None, None
    return obj.metadata.name, obj.metadata.resourceVersion, obj.message


def _older(new: NodeFacts, cached: NodeFacts) -> bool:
    return new.resource_version < cached.resource_version


_COMPARED = tuple(f.name for f in fields(NodeFacts) if f.compare)
_READ = attrgetter(*(f for f in _COMPARED if f != "pci_devices"))


def _same(new: NodeFacts, cached: NodeFacts) -> bool:
    """Equal but for the PCI devices: the cache fills those in from NFD's NodeFeatures, the watch never reads them."""
    return bool(_READ(new) == _READ(cached))


def _digest(facts: NodeFacts) -> int:
    """A hash of what NodeFacts' equality compares (the same labels in another order only cost a delivery). Kept per
    node instead of the facts: the cache replaces those with the answers to the operator's own writes, and 5,000
    nodes' facts would be held twice."""
    return hash(tuple(tuple(v.items()) if isinstance(v, dict) else v for v in map(facts.__getattribute__, _COMPARED)))


# A watch event line starts {"type":"...","object":{"kind":"...","apiVersion":"...","metadata":{"name":"...",
# "uid":"...","resourceVersion":"..." (the API server writes the fields in that order).
_NAME = re.compile(rb'"metadata":\{"name":"([^"]+)"')
_VERSION = re.compile(rb'"resourceVersion":"([0-9]+)"')
# What a node heartbeat changes: the conditions' heartbeat times, the writer's managedFields time and the version.
NODE_VOLATILE = re.compile(rb'"(?:lastHeartbeatTime|time|resourceVersion)":"[^"]*"')


class NodeWatch(Watch[NodeFacts]):
    def __init__(
        self, kube: Kube, current: Current[NodeFacts], deliver: Deliver[NodeFacts], names: Names | None = None
    ):
        super().__init__(kube, NODES, NodeFacts.from_wire, current, deliver, stale=_older, same=_same,
                         name="node-watch", volatile=NODE_VOLATILE, codec=Codec(Node), summary=_digest,
                         names=names)  # fmt: skip
