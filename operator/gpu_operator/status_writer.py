"""Writing a ClusterPolicy's status: only when it changed (timestamps aside), and an Event when its state does."""

from __future__ import annotations

from typing import Any

from .events import EventRecorder
from .kube import Kube
from .status import status_changed


class StatusWriter:
    def __init__(self, kube: Kube, events: EventRecorder):
        self.kube = kube
        self.events = events

    def write(self, policy: dict[str, Any], status: dict[str, Any], quiet: bool = False) -> None:
        old = policy.get("status")
        if not status_changed(old, status):
            return
        name = policy["metadata"]["name"]
        # A merge patch keeps keys it does not name: drop the ones the new status no longer has (status.upgrade).
        gone = {k: None for k in (old or {}) if k not in status}
        self.kube.merge_patch("ClusterPolicy", name, {"status": {**gone, **status}}, sub="status")
        if (old or {}).get("state") != status["state"] and not quiet:
            ready: dict[str, Any] = next((c for c in status["conditions"] if c["type"] == "Ready"), {})
            etype = "Normal" if status["state"] in ("ready", "disabled") else "Warning"
            reason = ready.get("reason", "StateChanged")
            self.events(policy, etype, reason, f"state {status['state']}: {ready.get('message', '')}")
