"""Prometheus metrics (prefix gpu_operator_), names as upstream's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()


def _g(name: str, doc: str) -> Gauge:
    return Gauge(f"gpu_operator_{name}", doc, registry=REGISTRY)


gpu_nodes_total = _g("gpu_nodes_total", "Number of nodes with GPUs")
reconciliation_status = _g(
    "reconciliation_status", "1 ready, 0 not ready, -1 no ClusterPolicy, -2 reconciliation error"
)
reconciliation_total = Counter("gpu_operator_reconciliation", "Reconciliations of the ClusterPolicy", registry=REGISTRY)
# Ours: the CPU the passes' own thread spent (the process's CPU less this is the watches' and the event loop's).
reconciliation_cpu_seconds_total = Counter(
    "gpu_operator_reconciliation_cpu_seconds", "CPU time spent in reconcile passes (their thread)", registry=REGISTRY
)
# Ours: what the passes were started by (a pass started by changes of several kinds counts once for each).
reconciliation_triggers_total = Counter(
    "gpu_operator_reconciliation_triggers",
    "Reconcile passes by the kind of change that started them (timer: none, a periodic recheck)",
    ["source"],
    registry=REGISTRY,
)
reconciliation_failed_total = Counter(
    "gpu_operator_reconciliation_failed", "Failed reconciliations of the ClusterPolicy", registry=REGISTRY
)
reconciliation_last_success_ts_seconds = _g(
    "reconciliation_last_success_ts_seconds", "Time of the last successful reconciliation"
)
reconciliation_has_nfd_labels = _g("reconciliation_has_nfd_labels", "1 when some node has NFD labels")
driver_auto_upgrade_enabled = _g("driver_auto_upgrade_enabled", "1 when driver.upgradePolicy.autoUpgrade is on")
nodes_upgrades_in_progress = _g("nodes_upgrades_in_progress", "Nodes whose driver upgrade is in progress")
nodes_upgrades_done = _g("nodes_upgrades_done", "Nodes whose driver is up to date")
nodes_upgrades_failed = _g("nodes_upgrades_failed", "Nodes whose driver upgrade failed")
nodes_upgrades_available = _g("nodes_upgrades_available", "Upgrade slots free now")
nodes_upgrades_pending = _g("nodes_upgrades_pending", "Nodes waiting for an upgrade slot")
leader = _g("leader", "1 while this replica holds the leader Lease (or runs without leader election), else 0")


def serve(port: int) -> None:
    if port:
        start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
