"""`gpu-operator doctor`: why GPU pods do not run and what in the stack is broken, from what the API shows.

Read-only: `gather` lists the cluster once (the operator's snapshot plus nodes, pods and events; the operand
pods only where their DaemonSet is not ready, see `reads`); `diagnose` is pure. Finding families: `pending`
(the scheduler's view), `workloads` (pods that run but misbehave), `stack` (the operands, upgrades, MIG, GPU
health).
"""

from __future__ import annotations

import json
from typing import Any

from . import pending, stack, workloads
from .model import ERROR, INFO, SEVERITY_ORDER, WARNING, Cluster, Evidence, Finding, exit_status, pod_ref
from .reads import gather

__all__ = ["Cluster", "Evidence", "Finding", "diagnose", "exit_status", "gather", "render_json", "render_text",
           "render_prometheus", "ERROR", "WARNING", "INFO"]  # fmt: skip


# Printed before the other findings of their severity: the cause of the rest.
FIRST = frozenset({"OperatorNotRunning"})


def _pod_matches(pod: dict[str, Any], namespace: str | None, name: str | None) -> bool:
    meta = pod.get("metadata") or {}
    if namespace and meta.get("namespace") != namespace:
        return False
    return not name or meta.get("name") == name


def _bound_to(pod: dict[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def diagnose(
    cluster: Cluster, *, namespace: str | None = None, pod: str | None = None, node: str | None = None
) -> list[Finding]:
    """Findings, most severe first. `namespace` limits the workload pods looked at, `pod` gives that pod's
    findings and the GPU stack's on its node, `node` keeps the findings that concern that node (and the pods bound
    to it)."""
    pods = [p for p in cluster.pods if _pod_matches(p, namespace, pod)]
    found = pending.findings(cluster, pods) + workloads.findings(cluster, pods)
    if not pod:
        found += workloads.refused_creations(cluster, namespace) + stack.findings(cluster)
    else:  # the stack's findings about that pod (an operand's) or the node it is bound to
        bound, refs = {_bound_to(p) for p in pods} - {""}, {pod_ref(p) for p in pods}
        found += [
            f for f in stack.findings(cluster)
            if bound & set(f.nodes) or f.object in refs or any(e.object in refs for e in f.evidence)
        ]  # fmt: skip
    if node:
        on_node = {pod_ref(p) for p in pods if _bound_to(p) == node}
        found = [f for f in found if node in f.nodes or f.object == f"Node {node}" or f.object in on_node]
    return sorted(found, key=lambda f: (SEVERITY_ORDER[f.severity], f.kind not in FIRST, f.kind, f.object))


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"status": exit_status(findings), "findings": [f.to_json() for f in findings]}, indent=2) + "\n"


def render_prometheus(findings: list[Finding]) -> str:
    """Findings counted by kind and severity, in Prometheus' text format (for node-exporter's textfile
    collector or a push from a CronJob): gpu_operator_doctor_findings and gpu_operator_doctor_status."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    by_kind = Gauge("gpu_operator_doctor_findings", "doctor's findings by kind and severity",
                    ["kind", "severity"], registry=registry)  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    for f in findings:
        counts[(f.kind, f.severity)] = counts.get((f.kind, f.severity), 0) + 1
    for (kind, severity), n in sorted(counts.items()):
        by_kind.labels(kind=kind, severity=severity).set(n)
    status = Gauge("gpu_operator_doctor_status", "doctor's exit status: 0 healthy, 1 warnings, 2 errors",
                   registry=registry)  # fmt: skip
    status.set(exit_status(findings))
    return generate_latest(registry).decode()


def render_text(findings: list[Finding]) -> str:
    if not findings:
        return "no findings: every GPU pod is placed and every operand is ready\n"
    out = []
    for f in findings:
        out.append(f"{f.severity.upper()} {f.kind}: {f.object}")
        out.append(f"  cause: {f.summary}")
        for e in f.evidence:
            where = f" {e.field}" if e.field else ""
            out.append(f"  seen:  {e.object}{where}: {e.message}")
        for line in f.details:
            out.append(f"    {line}")
        out.append(f"  fix:   {f.fix}")
        if f.fix_yaml:
            out.append("  corrected YAML:")
            out += [f"    {line}" for line in f.fix_yaml.rstrip().splitlines()]
        out.append("")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in (ERROR, WARNING, INFO)}
    out.append(f"{counts[ERROR]} errors, {counts[WARNING]} warnings, {counts[INFO]} notes")
    return "\n".join(out) + "\n"
