"""Writing a ClusterPolicy's (or an NVIDIADriver's) status: only when it changed (timestamps aside), and an Event
when its state does (unless quiet).

A change of progress only (messages and counts, while pods come up on a thousand nodes) is written at most every
PROGRESS_INTERVAL_S per object; anything else (a state, a condition, a reason) at once.

A condition of a type we do not write (another controller's) is kept as the object has it: the merge patch
replaces the whole list, so it is sent back with ours, and it alone never makes a write."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import compat, mig, sharing
from .events import EventRecorder
from .kube import Kube
from .status import UNSUPPORTED_FIELDS, progress_only, status_changed

PROGRESS_INTERVAL_S = 3.0
# The condition types we write, by kind.
OWN_CONDITIONS = {
    "ClusterPolicy": frozenset(("Ready", "Error", UNSUPPORTED_FIELDS, compat.CONDITION, sharing.CONDITION,
                                mig.CONDITION)),
    "NVIDIADriver": frozenset(("Ready", "Error", UNSUPPORTED_FIELDS)),
}  # fmt: skip


class StatusWriter:
    def __init__(self, kube: Kube, events: EventRecorder, clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.events = events
        self.clock = clock
        self._written: dict[tuple[str, str], float] = {}  # (kind, name) -> when its status was last written

    def write(self, policy: dict[str, Any], status: dict[str, Any], quiet: bool = False,
              kind: str = "ClusterPolicy") -> bool:  # fmt: skip
        """Write `status` if it changed; False when a progress-only change was held back (the caller passes
        again soon, and writes it then). `quiet`: no Event for a new state (NVIDIADrivers' statuses are written so)."""
        old = policy.get("status")
        # Another controller's conditions: left out of the comparison, sent back as they are.
        mine = OWN_CONDITIONS[kind] | {c["type"] for c in status["conditions"]}
        theirs = [c for c in (old or {}).get("conditions") or [] if c.get("type") not in mine]
        if old and theirs:
            old = {**old, "conditions": [c for c in old["conditions"] if c.get("type") in mine]}
        if not status_changed(old, status):
            return True
        name = policy["metadata"]["name"]
        last = self._written.get((kind, name))
        if last is not None and self.clock() - last < PROGRESS_INTERVAL_S and progress_only(old, status):
            return False  # retry_in says when it may go
        self._written[(kind, name)] = self.clock()
        # A merge patch keeps keys it does not name: drop the ones the new status no longer has (status.upgrade).
        gone = {k: None for k in (old or {}) if k not in status}
        body = {**gone, **status, "conditions": status["conditions"] + theirs}
        self.kube.merge_patch(kind, name, {"status": body}, sub="status")
        if (old or {}).get("state") != status["state"] and not quiet:
            ready: dict[str, Any] = next((c for c in status["conditions"] if c["type"] == "Ready"), {})
            etype = "Normal" if status["state"] in ("ready", "disabled") else "Warning"
            reason = ready.get("reason", "StateChanged")
            self.events(policy, etype, reason, f"state {status['state']}: {ready.get('message', '')}", changed=True)
        return True

    def retry_in(self, name: str, kind: str = "ClusterPolicy") -> float:
        """Seconds until a progress change held back for the object `name` may be written."""
        last = self._written.get((kind, name))
        return 0.0 if last is None else max(0.0, last + PROGRESS_INTERVAL_S - self.clock())
