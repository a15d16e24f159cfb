"""The Node watch, kept out of kopf: every node heartbeats (a status write every ~20 s), so a 1,000-node cluster
sends ~50 Node events a second that change nothing the operator reads. kopf's per-event machinery cost more than
the rest of the operator at steady state (py-spy); here an event is parsed and projected to `NodeFacts` in the
watching thread and dropped there when the facts did not change, so only changes reach the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .kube import Kube
from .nodes import NodeFacts

log = logging.getLogger("gpu_operator")

NODES = "/api/v1/nodes"
WATCH_TIMEOUT_S = 300

Current = Callable[[str], NodeFacts | None]  # what the cache holds for a node
Deliver = Callable[[str, NodeFacts | None], object]  # a changed node (None: deleted), handed to the event loop


class NodeWatch:
    def __init__(self, kube: Kube, current: Current, deliver: Deliver):
        self.kube = kube
        self.current = current
        self.deliver = deliver
        self.stop = threading.Event()
        self._known: set[str] = set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="node-watch", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self.relist()
                rv = self.watch(rv)
            except Exception as exc:  # noqa: BLE001 - a broken watch is listed again
                log.warning("node watch failed, listing again: %s", exc)
                rv = None
                self.stop.wait(1)

    def relist(self) -> str:
        """Every node through `offer`, nodes no longer there as deleted; the list's resourceVersion."""
        query: dict[str, Any] = {"limit": 500}
        seen: set[str] = set()
        while True:
            page = self.kube.request("GET", NODES, query=query)
            for node in page.get("items") or []:
                seen.add(node["metadata"]["name"])
                self.offer(node)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            query["continue"] = meta["continue"]
        for name in self._known - seen:
            self.deliver(name, None)
        self._known = seen
        return str(meta.get("resourceVersion") or "")

    def watch(self, rv: str) -> str | None:
        """Events from `rv` until the server ends the watch: the version to go on from, or None to list again."""
        for event in self.kube.watch(NODES, rv, timeout_seconds=WATCH_TIMEOUT_S):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                log.info("node watch: %s; listing again", obj.get("message"))
                return None
            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
            if kind == "DELETED":
                name = obj["metadata"]["name"]
                self._known.discard(name)
                self.deliver(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._known.add(obj["metadata"]["name"])
                self.offer(obj)
            if self.stop.is_set():
                return rv
        return rv

    def offer(self, node: dict[str, Any]) -> None:
        facts = NodeFacts.from_node(node)
        cached = self.current(facts.name)
        if cached is not None and (cached == facts or facts.resource_version < cached.resource_version):
            return
        self.deliver(facts.name, facts)
