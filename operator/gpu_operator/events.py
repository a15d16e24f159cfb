"""Kubernetes Events, posted only when what they say changes, so a steady cluster writes none."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from .kube import ApiError, Kube

log = logging.getLogger("gpu_operator")

EVENT_SOURCE = "gpu-operator"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, kube: Kube):
        self.kube = kube
        # (kind, name) -> the uid of the object posted on, and reason -> its last message posted there
        self._last: dict[tuple[str, str], tuple[str | None, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, obj: dict[str, Any], etype: str, reason: str, message: str, changed: bool = False) -> None:
        """An Event on `obj`, unless the last one posted for it with this reason said the same. `changed`: the
        caller saw what the event says change (a state that came back after another): posted in any case."""
        meta = obj["metadata"]
        ref, uid = (obj["kind"], meta["name"]), meta.get("uid")
        with self._lock:
            if not changed and self._posted(ref, uid).get(reason) == message:
                return
        ns = meta.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj["kind"],
                "name": meta["name"],
                "uid": meta.get("uid"),
                **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        try:
            self.kube.create(body)
        except ApiError as exc:  # not posted: posted again next time
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)
            return
        with self._lock:
            posted = self._posted(ref, uid)
            posted[reason] = message
            self._last[ref] = (uid or self._last.get(ref, (None, {}))[0], posted)

    def _posted(self, ref: tuple[str, str], uid: str | None) -> dict[str, str]:
        """What was posted on the object of this kind and name (under the lock); nothing when the name is now
        another object's (deleted and created again: a new uid). A reference without a uid is the same object."""
        known, posted = self._last.get(ref, (None, {}))
        return {} if uid and known and uid != known else posted

    def forget(self, kind: str, name: str) -> None:
        """Drop what was posted on an object that is gone (node names churn in autoscaled pools)."""
        with self._lock:
            self._last.pop((kind, name), None)
