"""The fast path between passes (Operator._label) decides a node's labels as a full pass does.

Each case settles a cluster with full passes, lets one node event reach the fast path, then runs a full pass: it
must undo nothing the fast path wrote, a joining node must need no second patch, and the node must end as a full
pass alone would leave it."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from gpu_operator.nodes import NodeFacts, kept_labels
from gpu_operator.observe import Snapshot
from gpu_operator.runtime import Operator
from support import deep_merge, load_policy, node
from test_apply import _pods_and_revisions
from test_restart import _Cluster


class Cluster(_Cluster):
    """test_restart's cluster (the ClusterPolicy kept, Events recorded) that also records every Node patch."""

    def __init__(self, policy: dict[str, Any], **kw: Any) -> None:
        super().__init__(policy, **kw)
        self.node_patches: list[tuple[str, dict[str, Any]]] = []
        self.drivers: dict[str, dict[str, Any]] = {}

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if kind == "Node":
            self.node_patches.append((name, copy.deepcopy(patch)))
        elif kind != "ClusterPolicy":
            return patch
        return super().merge_patch(kind, name, patch, *a, **k)

    def snapshot(self, pods_on: list[str] | None = None) -> Snapshot:
        names = list(self.nodes) if pods_on is None else pods_on
        pods, revisions = _pods_and_revisions(self, names)
        nodes = {n: NodeFacts.from_node(copy.deepcopy(b)) for n, b in self.nodes.items()}
        return Snapshot(nodes=nodes, policies={"cluster-policy": copy.deepcopy(self.policy)},
                        owned=dict(self.objects), pods=pods, revisions=revisions,
                        nvidia_drivers=copy.deepcopy(self.drivers))  # fmt: skip


def nvidia_driver(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
            "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "5",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"driverType": "gpu", "repository": "nvcr.io/nvidia", "image": "driver", "version": "595.91.07",
                     **spec}}  # fmt: skip


def _policy(spec_overlay: dict[str, Any] | None) -> dict[str, Any]:
    policy = load_policy()
    if spec_overlay:
        policy["spec"] = deep_merge(policy["spec"], spec_overlay)
    policy["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    return policy


def _steady(op: Operator, cluster: Cluster, pods_on: list[str]) -> None:
    for _ in range(6):
        op.reconciler.reconcile(cluster.snapshot(pods_on))
        if not cluster.node_patches:
            break
        cluster.node_patches.clear()
    else:
        raise AssertionError("the cluster did not settle")
    assert op.reconciler.labelling is not None


def fast_then_full(
    spec: dict[str, Any] | None, before: dict[str, dict[str, Any]], changed: Any,
    pods_on: list[str] | None = None, name: str = "", drivers: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]], dict[str, str], dict[str, str]]:
    """Settle `before` with full passes; then `changed` (a Node object) arrives: the fast path labels it; a full pass
    follows. Also a second cluster where only the full pass sees the change. Returns (fast-path patches, the full
    pass's patches after it, the node's labels after fast+full, the node's labels after the full pass alone)."""
    pods = list(before) if pods_on is None else pods_on
    if not callable(changed):
        name = changed["metadata"]["name"]

    async def scenario() -> tuple[Any, ...]:
        cluster = Cluster(_policy(spec), scheduled=len(pods))
        cluster.nodes = copy.deepcopy(before)
        cluster.drivers = copy.deepcopy(drivers or {})
        op = Operator(kube=cluster, namespace="gpu-operator")  # type: ignore[arg-type]
        op.task = asyncio.current_task()
        op.labels_read = kept_labels()
        _steady(op, cluster, pods)
        op._gone = set()
        op._merge(cluster.snapshot(pods))
        op.policies = {"cluster-policy": copy.deepcopy(cluster.policy)}
        op.nvidia_drivers = copy.deepcopy(cluster.drivers)
        cluster.rv += 1
        if callable(changed):  # a change to the settled node's labels (NFD's, the admin's)
            body = copy.deepcopy(cluster.nodes[name])
            body["metadata"]["labels"] = changed(dict(body["metadata"]["labels"]))
        else:
            body = copy.deepcopy(changed)
        body["metadata"]["resourceVersion"] = str(cluster.rv)
        if name in cluster.nodes:  # the admin's (or NFD's) change reaches the server, then the watch
            cluster.nodes[name]["metadata"]["labels"] = copy.deepcopy(body["metadata"]["labels"])
            cluster.nodes[name]["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
        else:
            cluster.nodes[name] = copy.deepcopy(body)
        reference = copy.deepcopy(cluster.nodes)
        op.on_node("MODIFIED", body)
        await asyncio.gather(*op._labelling)
        fast = list(cluster.node_patches)
        cluster.node_patches.clear()
        op.reconciler.reconcile(cluster.snapshot(pods))
        full = [p for p in cluster.node_patches if p[0] == name]
        after = dict(cluster.nodes[name]["metadata"]["labels"])
        op._label_pool.shutdown()

        # The same change seen by a full pass alone.
        alone = Cluster(_policy(spec), scheduled=len(pods))
        alone.nodes = copy.deepcopy(before)
        alone.drivers = copy.deepcopy(drivers or {})
        ref = Operator(kube=alone, namespace="gpu-operator")  # type: ignore[arg-type]
        ref.labels_read = kept_labels()
        _steady(ref, alone, pods)
        alone.nodes = reference
        ref.reconciler.reconcile(alone.snapshot(pods))
        ref._label_pool.shutdown()
        return fast, full, after, dict(alone.nodes[name]["metadata"]["labels"])

    return asyncio.run(scenario())


# --- the cases ---

H100 = {"feature.node.kubernetes.io/pci-0302_10de_2330.present": "true"}
V100 = {"feature.node.kubernetes.io/pci-0302_10de_1db1.present": "true"}
PCI_LABEL = "feature.node.kubernetes.io/pci-10de.present"
KERNEL_LABEL = "feature.node.kubernetes.io/kernel-version.full"
SANDBOX = {"sandboxWorkloads": {"enabled": True}}
CRD = {"driver": {"useNvidiaDriverCRD": True}}
DRIVERS = {"default": nvidia_driver("default", default=True),
           "pool-b": nvidia_driver("pool-b", nodeSelector={"pool": "b"})}  # fmt: skip


def _put(extra: dict[str, str]) -> Any:
    return lambda labels: {**labels, **extra}


def _without(*keys: str) -> Any:
    return lambda labels: {k: v for k, v in labels.items() if k not in keys}


CASES: dict[str, tuple[Any, ...]] = {
    # name: (spec overlay, nodes before, the change, keyword arguments)
    "join-nfd": (None, {"n1": node("n1")}, node("j1"), {"pods_on": ["n1"]}),
    "join-h100-mig": (None, {"n1": node("n1")}, node("j1", labels=H100), {"pods_on": ["n1"]}),
    "join-v100-refused": (None, {"n1": node("n1")}, node("v1", labels=V100), {"pods_on": ["n1"]}),
    "join-opted-out": (None, {"n1": node("n1")}, node("o1", labels={"nvidia.com/gpu.deploy.operands": "false"}),
                       {"pods_on": ["n1"]}),
    "join-one-opt-out": (None, {"n1": node("n1")}, node("o1", labels={"nvidia.com/gpu.deploy.device-plugin": "false"}),
                         {"pods_on": ["n1"]}),
    "join-precompiled": ({"driver": {"usePrecompiled": True}}, {"n1": node("n1")}, node("p1", kernel="6.8.0-1-generic"),
                         {"pods_on": ["n1"]}),
    "join-sandbox-vgpu": (SANDBOX, {"n1": node("n1")},
                          node("s1", labels={"nvidia.com/gpu.workload.config": "vm-vgpu"}), {"pods_on": ["n1"]}),
    "join-crd-selected": (CRD, {"n1": node("n1")}, node("j1", labels={"pool": "b"}),
                          {"pods_on": ["n1"], "drivers": DRIVERS}),
    "gpu-lost": (None, {"n1": node("n1", labels=H100)}, _without(PCI_LABEL, *H100), {"name": "n1"}),
    "admin-opt-out": (None, {"n1": node("n1")}, _put({"nvidia.com/gpu.deploy.driver": "false"}), {"name": "n1"}),
    "operands-false": (None, {"n1": node("n1")}, _put({"nvidia.com/gpu.deploy.operands": "false"}), {"name": "n1"}),
    "workload-changed": (SANDBOX, {"n1": node("n1")}, _put({"nvidia.com/gpu.workload.config": "vm-passthrough"}),
                         {"name": "n1"}),
    "kernel-changed": ({"driver": {"usePrecompiled": True}}, {"n1": node("n1"), "n2": node("n2")},
                       _put({KERNEL_LABEL: "5.15.0-200-generic"}), {"name": "n1"}),
    "crd-move-no-pod": (CRD, {"n1": node("n1"), "n2": node("n2")}, _put({"pool": "b"}),
                        {"name": "n2", "pods_on": ["n1"], "drivers": DRIVERS}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_labels_a_node_as_the_full_pass_does(case: str) -> None:
    """Operator._label labels a changed or joining node between passes by the last pass's spec; the full pass that
    follows must not find anything of the fast path's to undo, and the node must end as a full pass alone leaves it
    (REFERENCE.md §3: deploy labels, gpu.present, opt-outs kept, workload config)."""
    spec, before, change, kw = CASES[case]
    fast, full, after, alone = fast_then_full(spec, before, change, **kw)
    undone = [k for _, p in full for k, v in (p.get("metadata") or {}).get("labels", {}).items()
              if k in {kk for _, fp in fast for kk in fp["metadata"].get("labels", {})}]  # fmt: skip
    assert undone == [], f"the full pass rewrote what the fast path wrote: {full}"
    if not callable(change):  # a join: the fast path's one patch is all the node needs (issue 14)
        assert full == [], f"the full pass still had to label the joining node: {full}"
    assert after == alone
