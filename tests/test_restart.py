"""A restarted operator (or a new leader) starts with empty memos: on a cluster the running one left steady, its
first pass writes nothing, posts no Event and takes no other decision (state kept in labels, annotations, status)."""

from __future__ import annotations

import copy
from typing import Any

from gpu_operator.nodes import NodeFacts
from gpu_operator.observe import Snapshot
from gpu_operator.reconciler import Reconciler
from support import load_policy, node
from test_apply import ApiServer, _pods_and_revisions

A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/mig.capable": "true",
        "nvidia.com/gpu.count": "8"}  # fmt: skip


class _Cluster(ApiServer):
    """ApiServer that also keeps the ClusterPolicy's status and finalizers, and the Events posted."""

    def __init__(self, policy: dict[str, Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.policy = policy
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[tuple[str, str]] = []

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        self.patches.append((kind, name))
        if kind != "ClusterPolicy":
            return super().merge_patch(kind, name, patch, *a, **k)
        self.rv += 1
        if k.get("sub") == "status":
            self.policy["status"] = {key: v for key, v in patch["status"].items() if v is not None}
        else:
            meta = {key: v for key, v in patch.get("metadata", {}).items() if key != "resourceVersion"}
            self.policy["metadata"].update(meta)
        self.policy["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.policy)

    def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        if obj.get("kind") == "Event":
            self.events.append((obj["involvedObject"]["name"], obj["reason"], obj["message"]))
        return obj

    def list(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return []


def test_a_restarted_operator_keeps_a_refused_mig_layout_held_and_says_nothing_again() -> None:
    policy = load_policy()
    policy["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    names = ["n1", "n2"]
    cluster = _Cluster(policy, scheduled=2)
    cluster.nodes = {
        "n1": node("n1", labels={**A100, "nvidia.com/mig.config": "all-1g.5gb"}),
        "n2": node("n2", labels={**A100, "nvidia.com/mig.config": "nonexistent"}),
    }

    def snapshot() -> Snapshot:
        pods, revisions = _pods_and_revisions(cluster, names)
        nodes = {n: NodeFacts.from_node(copy.deepcopy(cluster.nodes[n])) for n in names}
        return Snapshot(nodes=nodes, policies={"cluster-policy": copy.deepcopy(policy)}, owned=dict(cluster.objects),
                        pods=pods, revisions=revisions)  # fmt: skip

    running = Reconciler(cluster, "gpu-operator")  # type: ignore[arg-type]
    for _ in range(5):
        running.reconcile(snapshot())
    assert ("n2", "MIGConfigRefused", "MIG layout 'nonexistent' is not in the default layouts") in cluster.events
    assert cluster.nodes["n2"]["metadata"]["labels"]["nvidia.com/gpu.deploy.mig-manager"] == "paused-for-mig-change"
    cluster.events.clear()
    del cluster.patches[:], cluster.applies[:]

    restarted = Reconciler(cluster, "gpu-operator")  # type: ignore[arg-type]
    out = restarted.reconcile(snapshot())
    assert out.ready is True
    assert (cluster.patches, cluster.events, cluster.applies) == ([], [], [])
    assert cluster.nodes["n2"]["metadata"]["labels"]["nvidia.com/gpu.deploy.mig-manager"] == "paused-for-mig-change"
