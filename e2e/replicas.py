"""Operator replicas under leader election, for e2e/test_leader.py and e2e/bench/failover.py: the Lease as the
API server has it, and the operators' writes from the audit log, attributed to a replica by its User-Agent."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from typing import Any

from e2e.cluster.localcluster import OPERATOR_USER, WRITE_VERBS, LocalCluster, audit_time
from e2e.operator_process import NAMESPACE
from gpu_operator.kube import ApiError, Kube
from gpu_operator.leader import LEASE_NAME

LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE_NAME}"
_AGENT = re.compile(r"^gpu-operator/\S+ \((?P<identity>[^)]+)\)$")


def lease(admin: Kube) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = admin.request("GET", LEASE_PATH)
        return found
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def holder(admin: Kube) -> str:
    return ((lease(admin) or {}).get("spec") or {}).get("holderIdentity") or ""


def micro_time(value: str) -> float:
    """A Lease MicroTime as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def acquired(admin: Kube) -> tuple[str, float]:
    """The holder and when it acquired the Lease (its acquireTime)."""
    spec = (lease(admin) or {}).get("spec") or {}
    return spec.get("holderIdentity") or "", micro_time(spec["acquireTime"]) if spec.get("acquireTime") else 0.0


def identity_of(event: dict[str, Any]) -> str:
    """The replica that made an audited request ('?' when its User-Agent is not the operator's)."""
    m = _AGENT.match(event.get("userAgent") or "")
    return m.group("identity") if m else "?"


def operator_writes(cluster: LocalCluster, since: float, leases: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The operators' successful writes received at or after `since`, by replica; the Lease's own writes only
    with `leases`."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in cluster.audit_events():
        if e.get("user", {}).get("username") != OPERATOR_USER or e.get("verb") not in WRITE_VERBS:
            continue
        if audit_time(e) < since or (e.get("responseStatus") or {}).get("code", 0) >= 300:
            continue
        if (e.get("objectRef") or {}).get("resource") == "leases" and not leases:
            continue
        out[identity_of(e)].append(e)
    return dict(out)


def span(events: list[dict[str, Any]]) -> tuple[float, float]:
    times = [audit_time(e) for e in events]
    return min(times), max(times)
