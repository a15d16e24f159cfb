"""pre-delete hook of the gpu-operator chart: delete ClusterPolicies while the operator still runs, then take our
finalizer off any ClusterPolicy left.

The operator keeps a finalizer on each ClusterPolicy it acts on and, when one is deleted, removes the labels it put on
nodes before letting it go. Helm deletes the operator's Deployment before the ClusterPolicy, so without this hook the
ClusterPolicy would be left terminating for ever. A ClusterPolicy left after that (one the chart did not create, or
one that took over from a deleted one) keeps what it deployed, but our finalizer on it would keep it, and its CRD,
from being deleted once the operator is gone: the operator is stopped (a running one puts the finalizer back on its
next pass), then the finalizer is removed. With no ClusterPolicy left, a driver upgrade the operator did not let go
of (it was not running, or ran out of time) is let go here as it would have: the node's upgrade state label and
annotations (upgrade-enabled too) removed, the upgrade's own cordon lifted (not a failed upgrade's, nor one there
before). A node the operator's MIG gate cordoned, with no operator left to lift it, is uncordoned (unless the driver
upgrade of a ClusterPolicy left holds it). Settings (environment):

  CLUSTERPOLICIES   names to delete, comma separated, "*" for all, or empty for none (default: cluster-policy)
  TIMEOUT_SECONDS   how long to wait for the operator to clean up (default 120); after that our finalizers are
                    removed here, so the uninstall never hangs (node labels may then be left behind)
  OPERATOR          the operator's Deployment, <namespace>/<name> (default: none, and a ClusterPolicy left keeps our
                    finalizer): where a ClusterPolicy left has our finalizer, the Deployment is scaled to 0 and its
                    pods are waited for (at most 60 s) before the finalizer is removed
  DELETE_CRDS       CRD names to delete afterwards, comma separated (default: none)

Connects in-cluster, or with $KUBECONFIG. Runs with the operator image (it uses the operator's API client).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from gpu_operator.kube import ApiError, Kube
from gpu_operator.nodes import MIG_CORDONED, UPGRADE_ENABLED_ANNOTATION, NodeFacts
from gpu_operator.upgrade.model import IN_PROGRESS_STATES, STATE_LABEL, UpgradeNode
from gpu_operator.upgrade.orchestrate import left_behind
from gpu_operator.upgrade.planner import kept_cordoned

OUR_FINALIZERS = ("nvidia.com/gpu-operator-cleanup", "nvidia.com/gpu-operator-kopf")
STOP_SECONDS = 60.0  # the operator pod's grace period (30 s), and some


def say(msg: str) -> None:
    print(f"gpu-operator-cleanup: {msg}", flush=True)


def policies(kube: Kube, wanted: list[str]) -> list[dict]:
    try:
        found = kube.list("ClusterPolicy")
    except ApiError as exc:
        if exc.status == 404:  # the CRD is gone: nothing to do
            return []
        raise
    return [p for p in found if "*" in wanted or p["metadata"]["name"] in wanted]


def ours(policy: dict[str, Any]) -> bool:
    return any(f in OUR_FINALIZERS for f in policy["metadata"].get("finalizers") or [])


def drop_finalizers(kube: Kube, meta: dict[str, Any]) -> bool:
    """False where the API server refused: said in one line, and the uninstall goes on."""
    keep = [f for f in meta.get("finalizers") or [] if f not in OUR_FINALIZERS]
    try:
        kube.merge_patch("ClusterPolicy", meta["name"], {"metadata": {"finalizers": keep or None}})
    except ApiError as exc:
        if exc.status == 422:  # a value the CRD now refuses, on a server without validation ratcheting (1.29)
            say(f"clusterpolicy {meta['name']}: our finalizer could not be removed, the ClusterPolicy is invalid "
                f"under the current CRD ({exc.message}): fix that field, then remove the finalizer with kubectl")
            return False
        if exc.status != 404:
            raise
    return True


def stop_operator(kube: Kube, deployment: str) -> None:
    """Scale the operator's Deployment to 0 and wait for its pods to go, so that none puts our finalizer back."""
    namespace, name = deployment.split("/", 1)
    try:
        scale = kube.merge_patch("Deployment", name, {"spec": {"replicas": 0}}, namespace, "scale")
    except ApiError as exc:
        if exc.status == 404:  # no operator runs
            return
        raise
    say(f"deployment {deployment} scaled to 0, so that the operator puts no finalizer back")
    selector = (scale.get("status") or {}).get("selector")
    deadline = time.monotonic() + STOP_SECONDS
    while selector and kube.list("Pod", namespace, label_selector=selector):
        if time.monotonic() >= deadline:
            say(f"operator pods still there after {STOP_SECONDS:.0f}s: going on")
            return
        time.sleep(2)


def event(obj: dict[str, Any], etype: str, reason: str, message: str, *, durable: bool = False) -> None:
    """The driver upgrade's event on a node it lets go, said in the log (the hook posts no Events)."""
    say(f"node {obj['metadata']['name']}: {message}")


def release_nodes(kube: Kube, left: list[str]) -> None:
    """Only the operator moves a driver upgrade on and lifts the MIG gate's cordon, and it is stopped or about to be
    deleted. With no ClusterPolicy left (`left`: the names of those left) no upgrade can go on: each node's is let go
    as the operator does when the last one is deleted (planner.switched_off). With one left, a node its upgrade holds
    stays so: an operator installed again goes on with it, and the upgrade-enabled annotation stays (with none left
    it goes: k8s-driver-manager would leave eviction and drain to an upgrade no one runs). Then the MIG gate's
    cordons go."""
    nodes = [NodeFacts.from_node(n) for n in kube.list("Node")]
    failed = set() if left else left_behind(kube, "", nodes, event, "the last ClusterPolicy deleted")
    for node in nodes:
        if not left and node.annotations.get(UPGRADE_ENABLED_ANNOTATION) == "true":
            try:
                kube.merge_patch("Node", node.name, {"metadata": {"annotations": {UPGRADE_ENABLED_ANNOTATION: None}}})
            except ApiError as exc:
                if exc.status != 404:
                    raise
    for node in nodes:
        if MIG_CORDONED not in node.annotations:
            continue
        if node.name in failed:
            say(f"node {node.name}: left cordoned, its driver upgrade could not be let go; uncordon it with kubectl")
            continue
        if left and node.labels.get(STATE_LABEL) in IN_PROGRESS_STATES:
            say(f"node {node.name}: left cordoned for its driver upgrade, which an operator installed again goes on "
                f"with (ClusterPolicy {left[0]} stays); uncordon it with kubectl if none will be")
            continue
        uncordon: dict[str, Any] = {"metadata": {"annotations": {MIG_CORDONED: None}}}
        upgrade = UpgradeNode(node.name, labels=node.labels, annotations=node.annotations,
                              unschedulable=node.unschedulable)  # fmt: skip
        if not kept_cordoned(upgrade):  # a failed upgrade's cordon is the admin's now
            uncordon["spec"] = {"unschedulable": None}
        try:
            kube.merge_patch("Node", node.name, uncordon)
        except ApiError as exc:
            if exc.status != 404:
                raise
            continue
        if "spec" in uncordon:
            say(f"node {node.name}: uncordoned (the operator had cordoned it for a MIG change)")


def main() -> int:
    wanted = [n.strip() for n in os.environ.get("CLUSTERPOLICIES", "cluster-policy").split(",") if n.strip()]
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "120"))
    operator = os.environ.get("OPERATOR", "").strip()
    crds = [n.strip() for n in os.environ.get("DELETE_CRDS", "").split(",") if n.strip()]
    kube = Kube.connect(None)

    for policy in policies(kube, wanted):
        name = policy["metadata"]["name"]
        if kube.delete("ClusterPolicy", name):
            say(f"clusterpolicy {name} deleted; waiting for the operator to clean up")

    deadline = time.monotonic() + timeout
    left = policies(kube, wanted)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = policies(kube, wanted)
    for policy in left:
        meta = policy["metadata"]
        say(f"clusterpolicy {meta['name']} still there after {timeout:.0f}s (is the operator running?): "
            "removing its finalizer; node labels may be left behind")
        drop_finalizers(kube, meta)

    if operator and any(ours(p) for p in policies(kube, ["*"])):
        stop_operator(kube, operator)
        for policy in policies(kube, ["*"]):
            if ours(policy) and drop_finalizers(kube, policy["metadata"]):
                say(f"clusterpolicy {policy['metadata']['name']}: our finalizer removed, so that it can be deleted "
                    "with no operator running")
    release_nodes(kube, [p["metadata"]["name"] for p in policies(kube, ["*"])
                         if not p["metadata"].get("deletionTimestamp")])  # fmt: skip

    for crd in crds:
        if kube.delete("CustomResourceDefinition", crd):
            say(f"customresourcedefinition {crd} deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
