"""DaemonSet readiness (pure), following upstream's rules for RollingUpdate and OnDelete DaemonSets."""

from __future__ import annotations

from typing import Any

REVISION_HASH = "controller-revision-hash"


def newest_revision_hash(revisions: list[dict[str, Any]]) -> str | None:
    """The `controller-revision-hash` label of the highest-numbered ControllerRevision."""
    if not revisions:
        return None
    newest = max(revisions, key=lambda r: int(r.get("revision", 0)))
    return (newest.get("metadata", {}).get("labels") or {}).get(REVISION_HASH)


def pod_ready(pod: dict[str, Any]) -> bool:
    ready = pod.get("ready")
    if ready is not None:  # a projection (observe.project_pod) carries the answer
        return bool(ready)
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    containers = status.get("containerStatuses") or []
    return bool(containers) and all(c.get("ready") for c in containers)


def _where(pods: list[dict[str, Any]] | None, most: int = 5) -> str:
    """ " (not ready on a, b and 3 more)" from pod projections that carry their node; "" when unknown."""
    nodes = sorted({p.get("node") or "?" for p in pods or [] if not pod_ready(p)})
    if not nodes:
        return ""
    more = f" and {len(nodes) - most} more" if len(nodes) > most else ""
    return f" (not ready on {', '.join(nodes[:most])}{more})"


def daemonset_ready(
    ds: dict[str, Any],
    pods: list[dict[str, Any]] | None = None,
    revisions: list[dict[str, Any]] | None = None,
) -> tuple[bool, str]:
    """(ready, reason when not). `pods` and `revisions` are the DaemonSet's own, needed for OnDelete."""
    name = ds.get("metadata", {}).get("name", "?")
    status = ds.get("status") or {}
    # A new or changed DaemonSet whose status the controller has not written yet says nothing: not ready.
    if status.get("observedGeneration", 0) < ds.get("metadata", {}).get("generation", 0):
        return False, f"{name}: waiting for the DaemonSet controller to observe the latest spec"
    desired = status.get("desiredNumberScheduled", 0)
    if desired == 0:
        return True, ""
    unavailable = status.get("numberUnavailable", 0)
    if unavailable:
        return False, f"{name}: {unavailable} of {desired} pods unavailable{_where(pods)}"
    strategy = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "OnDelete":
        newest = newest_revision_hash(revisions or [])
        pods = pods or []
        if len(pods) < desired:
            return False, f"{name}: {len(pods)} of {desired} pods exist"
        stale = [p for p in pods if (p["metadata"].get("labels") or {}).get(REVISION_HASH) != newest]
        if newest is None or stale:
            return False, f"{name}: {len(stale) if newest else len(pods)} pods run an old revision"
        not_ready = [p for p in pods if not pod_ready(p)]
        if not_ready:
            return False, f"{name}: {len(not_ready)} of {desired} pods not ready"
        return True, ""
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    if not updated == desired == available:
        return False, f"{name}: {updated} updated, {available} available of {desired}"
    return True, ""
