"""Writing a ClusterPolicy's (or an NVIDIADriver's) status: only when it changed (timestamps aside), and an Event
when its state does (unless quiet).

A change of progress only (messages and counts, while pods come up on a thousand nodes) is written at most every
PROGRESS_INTERVAL_S per object; anything else (a state, a condition, a reason) at once.

A condition of a type we do not write (another controller's) is kept as the object has it: the merge patch
replaces the whole list, so it is sent back with ours, and it alone never makes a write. The patch carries the
resourceVersion it was decided on (the snapshot's, or our own last write's answer where that is newer): one that
another controller changed since is refused (409) and written again, on what it has now, by a later pass. A snapshot
older than our own last write is compared against what we wrote, not against its status."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import compat, mig, sharing
from .events import EventRecorder
from .kube import ApiError, Kube
from .nodes import INVALID_WORKLOAD_CONDITION
from .status import SETTLING, UNSUPPORTED_FIELDS, progress_only, status_changed

PROGRESS_INTERVAL_S = 3.0
# The condition types we write, by kind.
OWN_CONDITIONS = {
    "ClusterPolicy": frozenset(("Ready", "Error", UNSUPPORTED_FIELDS, compat.CONDITION, sharing.CONDITION,
                                mig.CONDITION, INVALID_WORKLOAD_CONDITION)),
    "NVIDIADriver": frozenset(("Ready", "Error", UNSUPPORTED_FIELDS)),
}  # fmt: skip

log = logging.getLogger("gpu_operator")


class StatusWriter:
    def __init__(self, kube: Kube, events: EventRecorder, clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.events = events
        self.clock = clock
        self._written: dict[tuple[str, str], float] = {}  # (kind, name) -> when its status was last written
        self._refused: dict[tuple[str, str], float] = {}  # (kind, name) -> when a write was refused as stale (409)
        # (kind, name) -> the resourceVersion our last write to it answered with (the watch may not have it yet)
        self._versions: dict[tuple[str, str], str] = {}
        # (kind, name) -> the resourceVersion our last status write answered with, and the status it wrote
        self._wrote: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def write(self, policy: dict[str, Any], status: dict[str, Any], quiet: bool = False,
              kind: str = "ClusterPolicy") -> bool:  # fmt: skip
        """Write `status` if it changed; False when a progress-only change was held back, or the object changed
        since it was read (409) (the caller passes again soon, and writes it then). `quiet`: no Event for a new state
        (NVIDIADrivers' statuses are written so)."""
        old = policy.get("status")
        name = policy["metadata"]["name"]
        ours = self._wrote.get((kind, name))
        if ours is not None and _after(ours[0], policy["metadata"].get("resourceVersion")):
            # The watch has not brought our last write back yet: that write, not the snapshot, is what the object
            # has, so is what "changed" and "new state" are decided on, and a condition it has unchanged keeps its
            # lastTransitionTime from it.
            old = ours[1]
            status = {**status, "conditions": [_since(c, old) for c in status["conditions"]]}
        # Another controller's conditions: left out of the comparison, sent back as they are.
        mine = OWN_CONDITIONS[kind] | {c["type"] for c in status["conditions"]}
        theirs = [c for c in (old or {}).get("conditions") or [] if c.get("type") not in mine]
        if old and theirs:
            old = {**old, "conditions": [c for c in old["conditions"] if c.get("type") in mine]}
        if not status_changed(old, status):
            return True
        last = self._written.get((kind, name))
        if last is not None and self.clock() - last < PROGRESS_INTERVAL_S and progress_only(old, status):
            return False  # retry_in says when it may go
        # A merge patch keeps keys it does not name: drop the ones the new status no longer has (status.upgrade).
        gone = {k: None for k in (old or {}) if k not in status}
        body = {**gone, **status, "conditions": status["conditions"] + theirs}
        patch: dict[str, Any] = {"status": body}
        version = _newer(policy["metadata"].get("resourceVersion"), self._versions.get((kind, name)))
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            answer = self.kube.merge_patch(kind, name, patch, sub="status")
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.info("%s %s changed since it was read: its status is written on the next pass", kind, name)
            self._refused[(kind, name)] = self.clock()
            return False
        self._written[(kind, name)] = self.clock()
        self._refused.pop((kind, name), None)
        self.seen(kind, answer)
        version = ((answer or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            self._wrote[(kind, name)] = (version, {k: v for k, v in body.items() if v is not None})
        ready: dict[str, Any] = next((c for c in status["conditions"] if c["type"] == "Ready"), {})
        # notReady only while our own writes settle (an admin's change applied) is no warning; an operand not ready
        # after that is one, though the state stays notReady
        settled_badly = _ready_message(old) == SETTLING and ready.get("message") != SETTLING
        if ((old or {}).get("state") != status["state"] or settled_badly and status["state"] == "notReady") \
                and not quiet:
            etype = "Normal" if status["state"] in ("ready", "disabled") or ready.get("message") == SETTLING \
                else "Warning"
            reason = ready.get("reason", "StateChanged")
            message = f"state {status['state']}: {ready.get('message', '')}"
            self.events(policy, etype, reason, message, changed=True, durable=True)  # the written status says it
        return True

    def seen(self, kind: str, answer: dict[str, Any] | None) -> None:
        """Our write's answer: its resourceVersion, newer than the snapshot's until the watch brings it, is what the
        next status write is decided on (the finalizer's patch comes here too)."""
        meta = (answer or {}).get("metadata") or {}
        if meta.get("name") and meta.get("resourceVersion"):
            self._versions[(kind, meta["name"])] = meta["resourceVersion"]

    def retry_in(self, name: str, kind: str = "ClusterPolicy") -> float:
        """Seconds until a progress change held back for the object `name` may be written, or a write refused as
        stale tried again (the watch brings the object's change meanwhile)."""
        waits = [t + PROGRESS_INTERVAL_S - self.clock() for t in (self._written.get((kind, name)),
                                                                 self._refused.get((kind, name))) if t is not None]
        return max([0.0, *waits])


def _newer(a: str | None, b: str | None) -> str | None:
    """The newer of two resourceVersions (as etcd's, integers; `a` when they are not)."""
    if a and b and a.isdigit() and b.isdigit():
        return a if int(a) >= int(b) else b
    return a or None


def _after(a: str | None, b: str | None) -> bool:
    """Whether resourceVersion `a` is newer than `b` (False when either is not an integer, as etcd's are)."""
    return bool(a and b and a.isdigit() and b.isdigit() and int(a) > int(b))


def _since(condition: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """`condition` with the lastTransitionTime that the same condition in `old` has, if it has the same status."""
    before: dict[str, Any] = next((c for c in old.get("conditions") or [] if c.get("type") == condition["type"]), {})
    if before.get("status") == condition.get("status") and before.get("lastTransitionTime"):
        return {**condition, "lastTransitionTime": before["lastTransitionTime"]}
    return condition


def _ready_message(status: dict[str, Any] | None) -> str | None:
    return next((c.get("message") for c in (status or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
