"""Shared e2e set-up for modules that run their own cluster: fake GPU nodes, the node simulator and the operator
under the sample policy, and the driver pods as tests look at them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster, ensure_binaries
from e2e.cluster.nodes import create_nodes
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube

DRIVER_PODS = "nvidia.com/gpu-operator.state=state-driver"


class Env:
    def __init__(self, cluster: LocalCluster, admin: Kube, sim: NodeSimulator, op: OperatorProcess):
        self.cluster, self.admin, self.sim, self.op = cluster, admin, sim, op


@contextmanager
def own_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    nodes: list[dict[str, Any]],
    prepare: Callable[[Kube], None] | None = None,
    policy: dict[str, Any] | None = None,
    **simulator: Any,
) -> Iterator[Env]:
    """A cluster of its own with `nodes`, the simulator (`simulator`: its options) and the operator, `policy`
    (default: the sample ClusterPolicy) created; `prepare(admin)` runs after the nodes, before the operator."""
    cluster = LocalCluster(tmp_path_factory.mktemp(f"{name}-cluster"), binaries=ensure_binaries())
    cluster.up()
    try:
        admin = Kube.connect(str(cluster.kubeconfig))
        create_nodes(admin.client, nodes)
        if prepare is not None:
            prepare(admin)
        install_crds_and_rbac(admin)
        sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, **{"resync_seconds": 5, **simulator})
        sim.start()
        op = OperatorProcess(cluster, tmp_path_factory.mktemp(f"{name}-operator") / "operator.log").start()
        admin.create(policy or policy_from_sample())
        yield Env(cluster, admin, sim, op)
        op.stop()
        sim.stop()
    finally:
        cluster.down()


def driver_pods(admin: Kube) -> dict[str, dict[str, Any]]:
    """Node -> its live (not terminating) driver pod."""
    out = {}
    for pod in admin.list("Pod", NAMESPACE, label_selector=DRIVER_PODS):
        if not pod["metadata"].get("deletionTimestamp"):
            out[pod["spec"].get("nodeName", "")] = pod
    return out


def pod_ready(pod: dict[str, Any] | None) -> bool:
    """Running with every container ready."""
    if pod is None:
        return False
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return pod.get("status", {}).get("phase") == "Running" and bool(statuses) and all(c["ready"] for c in statuses)
