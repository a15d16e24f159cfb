"""The operator's watch cache: the initial listing is merged with the events delivered while it ran."""

from __future__ import annotations

from typing import Any

from gpu_operator.observe import Snapshot
from gpu_operator.runtime import Operator
from support import facts


def policy(name: str, rv: int) -> dict[str, Any]:
    return {
        "apiVersion": "nvidia.com/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": name, "resourceVersion": str(rv)},
    }


def snapshot(**kw: Any) -> Snapshot:
    base: dict[str, Any] = {"nodes": {}, "policies": {}, "owned": {}, "pods": {}, "revisions": {}}
    return Snapshot(**{**base, **kw})


def test_a_policy_created_while_the_listing_ran_is_kept() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op._gone = set()
    op.on_policy("ADDED", policy("cluster-policy", 20))  # delivered by the watch during the listing
    op._merge(snapshot(nodes={"n1": facts("n1")}))  # listed before it existed
    assert set(op.policies) == {"cluster-policy"}
    assert set(op.nodes) == {"n1"}


def test_the_newer_of_event_and_listing_wins() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op._gone = set()
    op.on_policy("MODIFIED", policy("a", 20))
    op._merge(snapshot(policies={"a": policy("a", 10), "b": policy("b", 5)}))
    assert op.policies["a"]["metadata"]["resourceVersion"] == "20"
    assert op.policies["b"]["metadata"]["resourceVersion"] == "5"


def test_a_deletion_seen_during_the_listing_is_not_undone() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op._gone = set()
    op.on_policy("DELETED", policy("old", 9))
    op.on_node("DELETED", {"metadata": {"name": "gone-node"}})
    op._merge(snapshot(policies={"old": policy("old", 8)}, nodes={"gone-node": facts("gone-node")}))
    assert op.policies == {} and op.nodes == {}
    assert op._gone is None  # after the listing, deletions are plain deletions again
