"""End-to-end: the suite against a cluster the user already has (E2E_KUBECONFIG), tested on a second local cluster.

A second control plane stands for the user's cluster (its kwok stopped: a real cluster has none), holding a node
and a namespace of the user's. A few quick tests of the suite run against it in a child pytest with
E2E_KUBECONFIG; the test that reads the audit log is skipped there, naming why. Afterwards the user's cluster
has exactly the nodes, namespaces and cluster-scoped objects it had, and its audit log shows no write of the run
to anything the user had.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.existing import RUN_ENV, ExistingCluster
from e2e.cluster.localcluster import (
    ADMIN_USER,
    WRITE_VERBS,
    ClusterError,
    LocalCluster,
    audit_time,
    ensure_binaries,
)
from e2e.kube import Kube, wait_for
from gpu_operator.events import EVENT_SOURCE

pytestmark = pytest.mark.local_cluster_only("the module starts its own control plane (the 'existing' cluster)")

REPO = Path(__file__).resolve().parents[1]
SUBSET = [
    "e2e/test_cluster.py::test_fake_nodes_become_ready",
    "e2e/test_cluster.py::test_daemonset_runs_one_ready_pod_per_matching_node",
    "e2e/test_cluster.py::test_audit_log_records_writes_with_their_identity",
    "e2e/test_operator.py::test_policy_becomes_ready_with_every_enabled_operand",
]
USER_NODE = "users-node"
USER_NS = "users-namespace"
CLUSTER_SCOPED = {
    "nodes": "/api/v1/nodes",
    "namespaces": "/api/v1/namespaces",
    "customresourcedefinitions": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "clusterroles": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "clusterrolebindings": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "runtimeclasses": "/apis/node.k8s.io/v1/runtimeclasses",
}


@pytest.fixture(scope="module")
def users_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("users-cluster"), binaries=ensure_binaries())
    try:
        c.up()
        c.stop_component("kwok")
        yield c
    finally:
        c.down()


def names(kube: Kube) -> dict[str, set[str]]:
    return {kind: {o["metadata"]["name"] for o in kube.items(path)} for kind, path in CLUSTER_SCOPED.items()}


def test_suite_against_an_existing_cluster_touches_nothing_it_did_not_create(
    users_cluster: LocalCluster, tmp_path: Path
) -> None:
    kube = Kube.from_kubeconfig(users_cluster.kubeconfig)
    try:
        kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                      "metadata": {"name": USER_NODE, "labels": {"team": "a"}}})  # fmt: skip
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": USER_NS}})
        kube.create(f"/api/v1/namespaces/{USER_NS}/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mine"}, "data": {"a": "1"}})
        before = names(kube)
        start = time.time()
        env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
        env["E2E_KUBECONFIG"] = str(users_cluster.kubeconfig)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'run'}",
             *SUBSET],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        assert re.search(r"\b3 passed, 1 skipped\b", out), out[-3000:]
        assert "test_audit_log_records_writes_with_their_identity SKIPPED" in out, out[-3000:]
        assert re.search(r"SKIPPED \[1\] .*existing-cluster mode \(E2E_KUBECONFIG\): needs the API server's audit log",
                         out), out[-3000:]  # fmt: skip

        # Everything the run made is gone (namespaces take the namespace controller a moment).
        wait_for(lambda: names(kube) == before, 120, interval=1,
                 message="the user's cluster back to the objects it had")  # fmt: skip
        assert kube.get(f"/api/v1/nodes/{USER_NODE}")["metadata"]["labels"] == {"team": "a"}
        assert kube.get(f"/api/v1/namespaces/{USER_NS}/configmaps/mine")["data"] == {"a": "1"}

        # The run (the user's admin identity and the ServiceAccounts it used) wrote to nothing the user had.
        def touched_users(e: dict[str, Any]) -> bool:
            ref = e.get("objectRef") or {}
            resource, name, ns = ref.get("resource"), ref.get("name"), ref.get("namespace")
            if resource == "leases" and ns == "kube-node-lease":  # the heartbeat Lease of a node: the node's owner's
                return name in before["nodes"]
            return bool(ns in before["namespaces"] or (resource in CLUSTER_SCOPED and name in before[resource]))

        run_writes = [e for e in users_cluster.audit_events()
                      if audit_time(e) >= start and e.get("verb") in WRITE_VERBS
                      and (e["user"]["username"] == ADMIN_USER
                           or e["user"]["username"].startswith("system:serviceaccount:gpu-operator:"))]  # fmt: skip
        assert run_writes, "the run wrote nothing at all: the audit filter is wrong"
        # Events about the run's nodes and ClusterPolicy are created in `default` (cluster-scoped objects' Events
        # go there); they are new objects, and are deleted with what they are about.
        events = [e for e in run_writes if (e.get("objectRef") or {}).get("resource") == "events"]
        assert {e["verb"] for e in events} <= {"create", "patch", "delete"}
        bad = [f"{e['user']['username']} {e['verb']} {e.get('requestURI')}" for e in run_writes
               if touched_users(e) and e not in events]  # fmt: skip
        assert not bad, f"the run wrote to objects the user had: {bad}"
        # (The control plane's own Events about the deleted nodes, e.g. RemovingNode, come after the run's end.)
        ours = [e for e in kube.items("/api/v1/events") if (e.get("source") or {}).get("component") == EVENT_SOURCE]
        about = [(e["involvedObject"].get("kind"), e["involvedObject"].get("name"), e["metadata"]) for e in ours]
        left = [f"{meta['namespace']}/{meta['name']}" for kind, name, meta in about
                if kind == "ClusterPolicy" or (kind == "Node" and name not in before["nodes"])]  # fmt: skip
        assert not left, f"Events about the run's objects are left: {left}"
    finally:
        kube.close()


def test_refuses_a_cluster_where_it_would_act_on_what_it_did_not_create(
    users_cluster: LocalCluster, tmp_path: Path
) -> None:
    kube = Kube.from_kubeconfig(users_cluster.kubeconfig)
    try:
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "gpu-operator"}})  # fmt: skip
        # stock NFD's label (deviceLabelFields [class, vendor]), which the operator detects as upstream's chart's
        kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": "users-gpu-node", "labels": {"feature.node.kubernetes.io/pci-0302_10de.present": "true"}}})
        before = names(kube)
        run = ExistingCluster(users_cluster.kubeconfig, tmp_path / "run", binaries=ensure_binaries())
        with pytest.raises(ClusterError) as refused:
            run.up()
        run.down()
        message = str(refused.value)
        assert "namespaces gpu-operator exist" in message, message
        assert "nodes users-gpu-node carry NFD's NVIDIA GPU labels" in message, message
        assert not run.running() and names(kube) == before
    finally:
        kube.delete("/api/v1/namespaces/gpu-operator")
        kube.delete("/api/v1/nodes/users-gpu-node")
        kube.close()
