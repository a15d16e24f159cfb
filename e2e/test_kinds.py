"""End-to-end: an optional kind (ServiceMonitor) follows its API without an operator restart, and objects of it
that are no longer wanted are pruned after a restart (the kind used to be neither watched nor listed).

The module installs a minimal ServiceMonitor CRD mid-test and removes it at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, delete_policies, install_crds_and_rbac, policy_from_sample
from gpu_operator.kube import Kube

CRD_NAME = "servicemonitors.monitoring.coreos.com"
# Just enough of the Prometheus operator's CRD for the API server to serve the kind.
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors",
                  "singular": "servicemonitor"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


def _remove_crd(admin: Kube) -> None:
    admin.delete("CustomResourceDefinition", CRD_NAME)
    wait_for(lambda: admin.get("CustomResourceDefinition", CRD_NAME) is None, 60, message="ServiceMonitor CRD gone")


@pytest.fixture(scope="module")
def setup(cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    install_crds_and_rbac(admin)
    _remove_crd(admin)
    delete_policies(admin, leftover=True)
    log = tmp_path_factory.mktemp("operator-kinds") / "operator.log"
    overrides: dict[str, Any] = {
        "operator.metrics": {"serviceMonitor": {"enabled": True}},
        "dcgmExporter.serviceMonitor": {"enabled": True, "interval": "15s"},
    }
    policy = policy_from_sample(**overrides)
    admin.create(policy)
    ops: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(cluster, log).start()
        ops.append(op)
        return op

    try:
        yield start
    finally:
        for policy in admin.list("ClusterPolicy"):
            admin.delete("ClusterPolicy", policy["metadata"]["name"])
        if ops and ops[-1].proc is None:
            ops[-1].start()  # let the operator remove its finalizer
        wait_for(lambda: not admin.list("ClusterPolicy"), 60, message="ClusterPolicies deleted")
        for op in ops:
            op.stop()
        _remove_crd(admin)


def monitors(admin: Kube) -> set[str]:
    if admin.get("CustomResourceDefinition", CRD_NAME) is None:
        return set()
    return {m["metadata"]["name"] for m in admin.list("ServiceMonitor", NAMESPACE)}


def test_service_monitors_follow_their_api_and_are_pruned_after_a_restart(setup: Any, admin: Kube) -> None:
    op = setup()
    # The operator works without the monitoring API: the metrics Service is there, no ServiceMonitor.
    wait_for(lambda: admin.get("Service", "gpu-operator", NAMESPACE), 60, message="operator metrics Service")
    assert op.proc is not None
    pid = op.proc.pid

    # Installing the Prometheus operator's CRD while the operator runs brings the ServiceMonitors, no restart.
    admin.apply(SERVICE_MONITOR_CRD)
    admin.wait_established(CRD_NAME)
    try:
        wait_for(
            lambda: monitors(admin) == {"gpu-operator", "nvidia-dcgm-exporter"}, 60, message="both ServiceMonitors"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{op.log_tail()}") from None
    assert op.proc is not None and op.proc.pid == pid and op.proc.poll() is None

    sm = admin.get("ServiceMonitor", "nvidia-dcgm-exporter", NAMESPACE)
    assert sm is not None and sm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpu-operator"

    # A ServiceMonitor no longer wanted while the operator was down is pruned when it comes back.
    op.stop()
    off = {"spec": {"dcgmExporter": {"serviceMonitor": {"enabled": False}}}}
    admin.merge_patch("ClusterPolicy", "cluster-policy", off)
    op = setup()
    try:
        wait_for(lambda: monitors(admin) == {"gpu-operator"}, 60, message="dcgm-exporter's ServiceMonitor pruned")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{op.log_tail()}") from None
