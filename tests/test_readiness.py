"""DaemonSet readiness (REFERENCE §2)."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import msgspec
import pytest

from gpu_operator import wire
from gpu_operator.nodes import NodeFacts
from gpu_operator.readiness import (
    KeptReadiness,
    NodeCounter,
    daemon_node_count,
    daemonset_ready,
    newest_revision_hash,
    pod_ready,
)
from support import load_policy, node, patch_node


def ds(strategy: str = "RollingUpdate", generation: int = 2, **status: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "nvidia-x", "generation": generation},
        "spec": {"updateStrategy": {"type": strategy}},
        "status": status,
    }


def pod(revision: str = "new", phase: str = "Running", ready: tuple[bool, ...] = (True,)) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": {"controller-revision-hash": revision}},
        "status": {"phase": phase, "containerStatuses": [{"name": f"c{i}", "ready": r} for i, r in enumerate(ready)]},
    }


def revision(number: int, hash_: str) -> dict[str, Any]:
    return {"metadata": {"name": f"r{number}", "labels": {"controller-revision-hash": hash_}}, "revision": number}


REVISIONS = [revision(1, "old"), revision(3, "new"), revision(2, "middle")]
SETTLED = {
    "desiredNumberScheduled": 3,
    "numberAvailable": 3,
    "updatedNumberScheduled": 3,
    "numberUnavailable": 0,
    "observedGeneration": 2,
}


# Common rules


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_nothing_scheduled_is_ready(strategy: str) -> None:
    assert daemonset_ready(ds(strategy, desiredNumberScheduled=0, observedGeneration=2)) == (True, "")


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_unobserved_generation_is_not_ready_whatever_the_strategy(strategy: str) -> None:
    """A new or changed DaemonSet whose status the controller has not written yet says nothing: not ready."""
    ready, reason = daemonset_ready(ds(strategy, desiredNumberScheduled=0, observedGeneration=1))
    assert not ready
    assert reason == "nvidia-x: waiting for the DaemonSet controller to observe the latest spec"
    fresh = {"metadata": {"name": "nvidia-x", "generation": 1}}
    assert daemonset_ready(fresh)[0] is False
    assert daemonset_ready(ds(strategy, **{**SETTLED, "observedGeneration": 1}), [pod()] * 3, REVISIONS)[0] is False


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_unavailable_pods_are_not_ready(strategy: str) -> None:
    ready, reason = daemonset_ready(ds(strategy, **{**SETTLED, "numberUnavailable": 1}), [pod()] * 3, REVISIONS)
    assert not ready
    assert reason == "nvidia-x: 1 of 3 pods unavailable"


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_a_daemonset_being_deleted_is_not_ready(strategy: str) -> None:
    """A DaemonSet deleted in the foreground (`kubectl delete --cascade=foreground`, Argo CD's prune) or with
    orphans keeps a deletionTimestamp while its pods go, and the controller writes no status for it any more
    (syncDaemonSet). Its last counts said every pod ready, and it read ready, every pod terminating, for as long
    as the deletion lasted; now it is not ready, and says why."""
    terminating = [pod() for _ in range(3)]
    for p in terminating:
        p["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    obj = ds(strategy, **SETTLED)
    obj["metadata"].update(deletionTimestamp="2026-12-01T00:00:00Z", finalizers=["foregroundDeletion"])
    assert daemonset_ready(obj, terminating, REVISIONS) == (False, "nvidia-x: being deleted; recreated once it is gone")


# RollingUpdate


def test_rolling_update_settled_is_ready() -> None:
    assert daemonset_ready(ds(**SETTLED)) == (True, "")


def test_rolling_update_is_the_default_strategy() -> None:
    obj = ds(**SETTLED)
    del obj["spec"]["updateStrategy"]
    assert daemonset_ready(obj) == (True, "")
    obj["status"]["observedGeneration"] = 1
    assert daemonset_ready(obj)[0] is False


def test_rolling_update_needs_the_new_generation_observed() -> None:
    ready, reason = daemonset_ready(ds(**{**SETTLED, "observedGeneration": 1}))
    assert not ready and "observe the latest spec" in reason
    assert daemonset_ready(ds(**{**SETTLED, "observedGeneration": 3}))[0], "a newer observed generation is fine"


@pytest.mark.parametrize(
    ("updated", "available"),
    [(2, 3), (3, 2), (0, 0), (4, 3)],
)
def test_rolling_update_needs_updated_desired_available_equal(updated: int, available: int) -> None:
    ready, reason = daemonset_ready(ds(**{**SETTLED, "updatedNumberScheduled": updated, "numberAvailable": available}))
    assert not ready
    assert reason == f"nvidia-x: {updated} updated, {available} available of 3"


def test_rolling_update_ignores_revisions() -> None:
    assert daemonset_ready(ds(**SETTLED), [pod("stale")], REVISIONS) == (True, "")


# OnDelete


def on_delete(**status: int) -> dict[str, Any]:
    return ds("OnDelete", **{**SETTLED, **status})


def test_on_delete_all_pods_current_and_ready() -> None:
    assert daemonset_ready(on_delete(), [pod(), pod(), pod(ready=(True, True))], REVISIONS) == (True, "")


def test_on_delete_waits_for_the_controller_to_count_every_pod_updated() -> None:
    """The driver DaemonSet (always OnDelete) after a driver version change: the controller has observed the new
    generation, made a new ControllerRevision and counts 0 of 3 pods updated, but the revision watch (a stream apart
    from the DaemonSets') has not brought that revision yet. The OnDelete rule read only the pods' hashes against
    the newest revision seen, so every old pod passed as current: ready, with no node on the new driver. Now it
    also needs the controller's count of pods updated, as upstream's NVIDIADriver rule (isDaemonSetReady), and as
    the same inputs under RollingUpdate."""
    old = [pod("old")] * 3
    seen = [revision(1, "old")]  # revision 3 ("new") exists, not seen yet
    lagging = {"updatedNumberScheduled": 0}
    assert daemonset_ready(ds("RollingUpdate", **{**SETTLED, **lagging}), old, seen)[0] is False
    assert daemonset_ready(on_delete(**lagging), old, seen) == (
        False, "nvidia-x: the DaemonSet controller counts 0 of 3 pods updated"
    )
    # Pods current and ready by their hashes, one the controller has not counted yet: not ready until it does.
    assert daemonset_ready(on_delete(updatedNumberScheduled=2), [pod()] * 3, REVISIONS)[0] is False
    assert daemonset_ready(on_delete(), [pod()] * 3, REVISIONS) == (True, "")
    # More counted updated than desired (a refused node's pod left out of desired, reconciler._fewer_desired).
    assert daemonset_ready(on_delete(desiredNumberScheduled=2), [pod()] * 3, REVISIONS) == (True, "")


def test_on_delete_stale_pod_is_not_ready() -> None:
    ready, reason = daemonset_ready(on_delete(), [pod(), pod("middle"), pod()], REVISIONS)
    assert not ready
    assert reason == "nvidia-x: 1 pod runs an old revision"


def test_on_delete_pod_without_revision_label_is_stale() -> None:
    unlabelled = pod()
    unlabelled["metadata"]["labels"] = {}
    assert daemonset_ready(on_delete(), [pod(), pod(), unlabelled], REVISIONS)[0] is False


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed", "Unknown"])
def test_on_delete_pod_not_running(phase: str) -> None:
    ready, reason = daemonset_ready(on_delete(), [placed("a"), placed("b", phase=phase), placed("c")], REVISIONS)
    assert not ready
    assert reason == "nvidia-x: 1 of 3 pods not ready (not ready on b)"


def test_on_delete_container_not_ready() -> None:
    ready, _ = daemonset_ready(on_delete(), [pod(), pod(ready=(True, False)), pod()], REVISIONS)
    assert not ready


def test_on_delete_missing_pods() -> None:
    ready, reason = daemonset_ready(on_delete(), [pod(), pod()], REVISIONS)
    assert not ready and reason == "nvidia-x: 2 of 3 pods exist"


def test_on_delete_without_revisions_is_not_ready() -> None:
    assert daemonset_ready(on_delete(), [pod()] * 3, [])[0] is False
    assert daemonset_ready(on_delete(), [pod()] * 3)[0] is False


def test_kept_readiness_walks_a_daemonsets_pods_again_only_when_its_inputs_are_other_objects() -> None:
    kept, three = KeptReadiness(), lambda spec: 3

    def check(obj: dict[str, Any], pods: list[dict[str, Any]], revisions: list[dict[str, Any]]) -> tuple[bool, str]:
        got = kept.daemonset_ready(obj, pods, revisions, (), three)
        assert got == daemonset_ready(obj, pods, revisions, (), count=three)  # what a fresh walk says
        return got

    obj, pods, revisions = on_delete(), [pod(), pod(), pod()], list(REVISIONS)
    assert check(obj, pods, revisions) == (True, "")
    pods[1] = pod("middle")  # changed in place, which the watch cache never does: the kept answer stands
    assert kept.daemonset_ready(obj, pods, revisions, (), three) == (True, "")
    assert check(obj, list(pods), revisions) == (False, "nvidia-x: 1 pod runs an old revision")  # new pods
    pods = [pod(), pod(), pod()]
    assert check(obj, pods, revisions) == (True, "")
    assert check(obj, pods, [revision(4, "newer"), *REVISIONS])[0] is False  # a newer revision
    assert check(obj, pods, revisions) == (True, "")
    assert check(on_delete(numberUnavailable=1), pods, revisions)[0] is False  # another DaemonSet object
    assert kept.daemonset_ready(obj, pods, revisions, (), lambda spec: 4) == (  # the node count is not kept
        False, "nvidia-x: 4 nodes should run its pod, the DaemonSet controller counts 3 so far"
    )


# Helpers


def test_newest_revision_is_the_highest_number_not_the_last() -> None:
    assert newest_revision_hash(REVISIONS) == "new"
    assert newest_revision_hash([revision(10, "ten"), revision(9, "nine")]) == "ten"
    assert newest_revision_hash([]) is None


def test_pod_ready() -> None:
    assert pod_ready(pod())
    assert not pod_ready(pod(ready=()))  # no container statuses yet
    assert not pod_ready(pod(phase="Pending"))
    assert not pod_ready({"metadata": {}})
    # A pod whose Ready condition is False (on a node gone NotReady) is not ready, whatever its containers say.
    down = pod()
    down["status"]["conditions"] = [{"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "False"}]
    assert not pod_ready(down)
    down["status"]["conditions"][1]["status"] = "True"
    assert pod_ready(down)


def test_unavailable_pods_name_their_nodes() -> None:
    ds = {"metadata": {"name": "nvidia-x", "generation": 1},
          "spec": {"updateStrategy": {"type": "RollingUpdate"}},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 8, "numberUnavailable": 7}}  # fmt: skip
    ready = {"phase": "Running", "containerStatuses": [{"ready": True}]}
    waiting = {"phase": "Pending", "containerStatuses": []}
    pods = [{"metadata": {"name": f"p{i}"}, "node": f"n{i}", "status": waiting} for i in range(7)]
    pods.append({"metadata": {"name": "ok"}, "node": "n9", "status": ready})
    ok, reason = daemonset_ready(ds, pods)
    assert not ok
    assert reason == "nvidia-x: 7 of 8 pods unavailable (not ready on n0, n1, n2, n3, n4 and 2 more)"


def _waiting_pod(node: str, reason: str, init: str = "", restarts: int = 7) -> dict[str, Any]:
    """An operand pod as observe.project_pod keeps it: its container waits with `reason` (kept by _container_status),
    having restarted `restarts` times, its last run crashed (exit code 1), and its init container with `init`."""
    waits = [{"name": "ctr", "ready": False, "restartCount": restarts,
              **({"state": {"waiting": {"reason": reason}}} if reason else {}),
              **({"lastTerminated": ("Error", 1)} if restarts else {})}]  # fmt: skip
    status: dict[str, Any] = {"phase": "Pending" if reason == "ImagePullBackOff" else "Running",
                              "containerStatuses": waits}  # fmt: skip
    if init:
        status["initContainerStatuses"] = [{"name": "init", "ready": False, "restartCount": 3,
                                            "state": {"waiting": {"reason": init}}}]  # fmt: skip
    return {
        "metadata": {"name": f"nvidia-driver-daemonset-{node}", "labels": {"controller-revision-hash": "new"}},
        "node": node, "owner": "nvidia-driver-daemonset", "status": status, "ready": False,
    }  # fmt: skip


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "CrashLoopBackOff"])
def test_a_daemonset_not_ready_names_why_its_pods_wait(reason: str) -> None:
    """README (top): the operator "reports honestly which operand is not ready and why". A driver pod that cannot
    pull its image (a mistyped driver.version) or crash-loops is the commonest reason a state stays notReady, and the
    pod projection keeps the container's waiting reason (observe._container_status): the message said only
    "2 of 2 pods unavailable (not ready on a, b)". Review readiness #1."""
    driver = {
        "metadata": {"name": "nvidia-driver-daemonset", "generation": 2},
        "spec": {"updateStrategy": {"type": "OnDelete"}},
        "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberUnavailable": 2,
                   "updatedNumberScheduled": 2, "observedGeneration": 2},
    }  # fmt: skip
    revisions = [{"metadata": {"labels": {"controller-revision-hash": "new"}}, "revision": 1}]
    ready, why = daemonset_ready(driver, [_waiting_pod("a", reason), _waiting_pod("b", reason)], revisions)
    assert (ready, why) == (False, f"nvidia-driver-daemonset: 2 of 2 pods unavailable ({reason} on a, b)")


def test_the_nodes_named_are_grouped_by_why_their_pods_wait_in_a_stable_order() -> None:
    """The first five nodes by name, as before, grouped by their pods' waiting reason (init containers first;
    ErrImagePull, which the kubelet alternates with ImagePullBackOff on each retry, as ImagePullBackOff); the groups
    sorted by reason, the nodes whose pods do not wait last, with the count of the rest. The same pods in any order
    say the same, so a pass over unchanged pods writes no new message."""
    unready = [
        _waiting_pod("n0", "ErrImagePull"), _waiting_pod("n1", "ImagePullBackOff"), _waiting_pod("n2", "", restarts=0),
        _waiting_pod("n3", "PodInitializing", init="CrashLoopBackOff"), _waiting_pod("n4", "CrashLoopBackOff"),
        *(_waiting_pod(f"n{i}", "CrashLoopBackOff") for i in range(5, 9)),
    ]  # fmt: skip
    status = {"observedGeneration": 2, "desiredNumberScheduled": 9, "currentNumberScheduled": 9,
              "numberUnavailable": 9}  # fmt: skip
    why = ("nvidia-x: 9 of 9 pods unavailable (CrashLoopBackOff on n3, n4; ImagePullBackOff on n0, n1; "
           "not ready on n2 and 4 more)")  # fmt: skip
    assert daemonset_ready(ds(**status), unready, unready=unready) == (False, why)
    for seed in range(5):
        shuffled = random.Random(seed).sample(unready, len(unready))
        assert daemonset_ready(ds(**status), shuffled, unready=shuffled) == (False, why)
    # Every node named waits: the rest are counted apart. Of two pods on a node, the first reason by name.
    waits = [_waiting_pod(f"n{i}", "CrashLoopBackOff") for i in range(7)] + [_waiting_pod("n1", "Xy")]
    why = "nvidia-x: 9 of 9 pods unavailable (CrashLoopBackOff on n0, n1, n2, n3, n4; 2 more not ready)"
    assert daemonset_ready(ds(**status), waits, unready=waits) == (False, why)
    # A reason is cut to a bounded length.
    long = [_waiting_pod("n0", "X" * 300)]
    why = f"nvidia-x: 9 of 9 pods unavailable ({'X' * 61}... on n0)"
    assert daemonset_ready(ds(**status), long, unready=long) == (False, why)


def test_unavailable_pods_not_created_yet_are_counted_apart() -> None:
    """How many of the desired pods do not exist yet: by the controller's count or the pods given, whichever
    counts more (either can lag the other); an unready pod on no node yet is counted, not named."""
    ds = {"metadata": {"name": "nvidia-x", "generation": 1},
          "spec": {"updateStrategy": {"type": "RollingUpdate"}},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 5, "currentNumberScheduled": 1,
                     "numberUnavailable": 4}}  # fmt: skip
    pods = [placed("n0", ready=(False,)), placed("n1", ready=(False,)), placed("n2")]
    why = "nvidia-x: 4 of 5 pods unavailable (2 not created yet; not ready on n0, n1)"
    assert daemonset_ready(ds, pods) == (False, why)
    pods.append(placed("", ready=(False,)))  # created, not bound yet
    why = "nvidia-x: 4 of 5 pods unavailable (1 not created yet; 1 not scheduled yet; not ready on n0, n1)"
    assert daemonset_ready(ds, pods) == (False, why)
    pods[0]["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"  # going: no longer named as not ready
    assert "(1 not created yet; 1 not scheduled yet; not ready on n1)" in daemonset_ready(ds, pods)[1]
    assert daemonset_ready(ds) == (False, "nvidia-x: 4 of 5 pods unavailable (4 not created yet)")  # the count's
    ds["status"].update(currentNumberScheduled=4)  # the count ahead of the pods given
    assert daemonset_ready(ds, pods[:3])[1] == "nvidia-x: 4 of 5 pods unavailable (1 not created yet; not ready on n1)"
    ds["status"].update(currentNumberScheduled=5)  # all created, none ready, pods not given
    assert daemonset_ready(ds) == (False, "nvidia-x: 4 of 5 pods unavailable")


@pytest.mark.parametrize("leaving", ["running", "deleting"])
def test_a_pod_on_a_node_the_daemonset_left_does_not_hide_one_not_created(leaving: str) -> None:
    """The DaemonSet wants n1, n2, n3; n3's pod cannot be created (a ResourceQuota, an admission webhook:
    FailedCreate), and n4, which the DaemonSet no longer wants, still has its pod: tainted NoSchedule for
    maintenance (which evicts nothing), or being deleted (its deploy label switched off). The controller counts
    n4's pod misscheduled, not created for a desired node, but the larger of its count and the pods seen was taken,
    n4's included: the message dropped "1 not created yet", the one hint at why a pod is missing. Now the pods seen
    count only while the controller counts none misscheduled."""
    counts = {"desiredNumberScheduled": 3, "currentNumberScheduled": 2, "numberReady": 2, "numberAvailable": 2,
              "numberUnavailable": 1, "updatedNumberScheduled": 2, "numberMisscheduled": 1, "observedGeneration": 2}
    pods = [placed("n1"), placed("n2"), placed("n4")]
    if leaving == "deleting":
        pods[2]["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    assert daemonset_ready(ds(**counts), pods, REVISIONS) == (
        False, "nvidia-x: 1 of 3 pods unavailable (1 not created yet)"
    )


@pytest.mark.parametrize(
    ("strategy", "status", "pods", "why", "named"),
    [
        ("RollingUpdate", {"numberUnavailable": 1}, ["new", "new", "-"], "1 of 3 pods unavailable", True),
        ("OnDelete", {}, ["new", "new", "-"], "1 of 3 pods not ready", True),
        ("RollingUpdate", {}, ["new", "new", "-"], "1 of 3 pods not ready", True),  # the counts say ready, a pod not
        ("RollingUpdate", {"updatedNumberScheduled": 2}, ["new", "new", "-"], "2 updated, 3 available of 3", False),
        ("OnDelete", {}, ["new", "-"], "2 of 3 pods exist", False),
        ("OnDelete", {}, ["new", "old", "-"], "1 pod runs an old revision", False),
    ],
    ids=["unavailable", "on-delete-not-ready", "pod-not-ready", "counts", "missing", "old-revision"],
)
def test_reasons_of_pods_not_ready_name_their_nodes_and_the_others_do_not(
    strategy: str, status: dict[str, int], pods: list[str], why: str, named: bool
) -> None:
    """Whether the reason named the unready pods' nodes was decided by its wording (`why.endswith(" not
    ready")`): a reason reworded would silently drop the nodes. Now each reason says whether it does."""
    placed_pods = [placed(f"n{i}", "new" if r == "-" else r, ready=(r != "-",)) for i, r in enumerate(pods)]
    unready = [p for p in placed_pods if not p["ready"]]
    ready, reason = daemonset_ready(ds(strategy, **{**SETTLED, **status}), placed_pods, REVISIONS, unready=unready)
    where = f" (not ready on n{len(pods) - 1})" if named else ""
    assert not ready and reason == f"nvidia-x: {why}{where}"


# The pods say it before the controller counts them


def placed(node: str, revision: str = "new", **kw: Any) -> dict[str, Any]:
    """A pod projection as the runtime keeps it: bound to `node`, with its readiness worked out."""
    p = pod(revision, **kw)
    p["metadata"]["name"] = f"p-{node}"
    p["node"] = node
    p["ready"] = pod_ready(p)
    return p


LAGGING = {**SETTLED, "numberAvailable": 1, "numberUnavailable": 2}  # the controller has counted 1 of 3


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_own_pods_all_ready_at_the_newest_revision_are_ready_before_the_count(strategy: str) -> None:
    pods = [placed("a"), placed("b"), placed("c")]
    assert daemonset_ready(ds(strategy, **LAGGING), pods, REVISIONS) == (True, "")
    # Without the pods the counts decide, as upstream.
    assert daemonset_ready(ds(strategy, **LAGGING))[0] is False


def _broken(pods: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    if how == "one not ready":
        pods[1] = placed("b", ready=(True, False))
    elif how == "one at an old revision":
        pods[1] = placed("b", revision="middle")
    elif how == "one deleting":
        pods[1]["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    elif how == "two on one node":
        pods[1] = placed("a")
    elif how == "one not bound":
        pods[1] = placed("")
    elif how == "one missing":
        del pods[1]
    elif how == "one extra":
        pods.append(placed("d"))
    return pods


@pytest.mark.parametrize(
    "how",
    ["one not ready", "one at an old revision", "one deleting", "two on one node", "one not bound", "one missing",
     "one extra"],
)  # fmt: skip
@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_pods_that_do_not_all_say_ready_leave_it_to_the_counts(strategy: str, how: str) -> None:
    pods = _broken([placed("a"), placed("b"), placed("c")], how)
    ready, reason = daemonset_ready(ds(strategy, **LAGGING), pods, REVISIONS)
    assert not ready
    assert reason.startswith("nvidia-x: 2 of 3 pods unavailable")


def test_pods_do_not_decide_while_the_counts_say_some_are_of_an_older_spec() -> None:
    """A revision the operator has not seen yet: its old pods look current to it, the counts know better."""
    pods = [placed("a", revision="old"), placed("b", revision="old"), placed("c", revision="old")]
    older = [revision(1, "old")]  # the operator's revision cache lags the controller's new revision
    assert daemonset_ready(ds(**{**LAGGING, "updatedNumberScheduled": 0}), pods, older)[0] is False
    current = [placed(n) for n in "abc"]
    assert daemonset_ready(ds(**{**LAGGING, "updatedNumberScheduled": 2}), current, REVISIONS)[0] is False


def test_pods_do_not_decide_without_the_revisions_or_with_min_ready_seconds() -> None:
    pods = [placed("a"), placed("b"), placed("c")]
    assert daemonset_ready(ds(**LAGGING), pods, [])[0] is False
    slow = ds(**LAGGING)
    slow["spec"]["minReadySeconds"] = 10
    assert daemonset_ready(slow, pods, REVISIONS)[0] is False


def test_the_unready_pods_kept_by_the_runtime_name_the_nodes_and_hold_the_pods_verdict() -> None:
    pods = [placed("a"), placed("b", ready=(False,)), placed("c", ready=(False,))]
    ready, reason = daemonset_ready(ds(**LAGGING), pods, REVISIONS, unready=[pods[2]])
    assert not ready and reason == "nvidia-x: 2 of 3 pods unavailable (not ready on c)"  # the list given, not a scan
    # An empty list given lets the pods decide, and they still must each be ready.
    assert daemonset_ready(ds(**LAGGING), pods, REVISIONS, unready=[])[0] is False
    current = [placed("a"), placed("b"), placed("c")]
    assert daemonset_ready(ds(**LAGGING), current, REVISIONS, unready=[]) == (True, "")
    assert daemonset_ready(ds(**LAGGING), current, REVISIONS, unready=[current[0]])[0] is False


def test_the_pod_index_keeps_each_daemonsets_unready_pods() -> None:
    from gpu_operator.observe import PodIndex

    pods = {f"p{i}": {**placed(f"n{i}", ready=(i % 2 == 0,)), "owner": "ds-a" if i < 4 else "ds-b"} for i in range(6)}
    leaving = pods["p1"]
    leaving["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    index = PodIndex.of(pods)
    assert {o: [p["node"] for p in ps] for o, ps in index.unready_by_owner.items()} == {"ds-a": ["n3"], "ds-b": ["n5"]}


# Counts the controller has not brought up to date with the nodes' labels


VALIDATOR = {"nvidia.com/gpu.deploy.operator-validator": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def templated(spec: dict[str, Any], **status: int) -> dict[str, Any]:
    out = ds(**status)
    out["spec"]["template"] = {"spec": spec}
    return out


def labelled(name: str, taints: tuple[tuple[str, str, str], ...] = ()) -> NodeFacts:
    return NodeFacts(name=name, labels=dict(VALIDATOR), taints=taints)


def test_a_daemonset_counted_before_its_nodes_were_labelled_is_not_ready() -> None:
    """The operator creates its DaemonSets before it labels the nodes: a controller that has not seen the labels
    yet says 0 (or 2) of 0 (or 2), which by the counts alone is ready."""
    spec = {"nodeSelector": VALIDATOR, "tolerations": [GPU_TOLERATION]}
    nodes = [labelled("a"), labelled("b"), labelled("c"), NodeFacts(name="cpu")]
    empty = templated(spec, desiredNumberScheduled=0, observedGeneration=2)
    assert daemonset_ready(empty) == (True, "")  # without the nodes: the counts alone
    assert daemonset_ready(empty, nodes=nodes) == (
        False,
        "nvidia-x: 3 nodes should run its pod, the DaemonSet controller counts 0 so far",
    )
    assert daemonset_ready(empty, nodes=nodes[:1]) == (
        False,
        "nvidia-x: 1 node should run its pod, the DaemonSet controller counts 0 so far",
    )
    two = templated(spec, **{**SETTLED, "desiredNumberScheduled": 2, "numberAvailable": 2, "updatedNumberScheduled": 2})
    assert daemonset_ready(two, nodes=nodes)[0] is False
    assert daemonset_ready(templated(spec, **SETTLED), nodes=nodes) == (True, "")
    # More counted than the operator sees (a node whose labels reach the operator later): the counts decide.
    assert daemonset_ready(templated(spec, **SETTLED), nodes=nodes[:2]) == (True, "")


def test_nodes_the_controller_would_not_count_are_not_expected() -> None:
    """Taints not tolerated keep a node out; the controller's own tolerations (cordon, NotReady, pressure) and
    the pod's do not; a required node affinity narrows the nodes."""
    spec = {"nodeSelector": VALIDATOR, "tolerations": [GPU_TOLERATION]}
    nodes = [
        labelled("tainted", (("dedicated", "infra", "NoSchedule"),)),
        labelled("evicting", (("dedicated", "", "NoExecute"),)),
        labelled("cordoned", (("node.kubernetes.io/unschedulable", "", "NoSchedule"),)),
        labelled("not-ready", (("node.kubernetes.io/not-ready", "", "NoExecute"),)),
        labelled("gpu-taint", (("nvidia.com/gpu", "present", "NoSchedule"),)),
        labelled("network", (("node.kubernetes.io/network-unavailable", "", "NoSchedule"),)),
    ]
    assert daemon_node_count(spec, nodes) == 3  # cordoned, not-ready, gpu-taint
    assert daemon_node_count({**spec, "hostNetwork": True}, nodes) == 4
    everything = {**spec, "tolerations": [{"operator": "Exists"}]}
    assert daemon_node_count(everything, nodes) == 6
    infra = {**spec, "tolerations": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]}
    assert daemon_node_count(infra, nodes) == 3  # tainted, cordoned, not-ready

    def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
        required = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}
        return {"nodeSelector": VALIDATOR, "affinity": {"nodeAffinity": required}}

    pool = [
        NodeFacts(name="u22", labels={**VALIDATOR, "feature.node.kubernetes.io/system-os_release.VERSION_ID": "22"}),
        NodeFacts(name="u24", labels={**VALIDATOR, "feature.node.kubernetes.io/system-os_release.VERSION_ID": "24"}),
        NodeFacts(name="bare", labels=dict(VALIDATOR)),
    ]
    key = "feature.node.kubernetes.io/system-os_release.VERSION_ID"
    assert daemon_node_count(affinity({"matchExpressions": [{"key": key, "operator": "In", "values": ["22"]}]}),
                             pool) == 1  # fmt: skip
    assert daemon_node_count(affinity({"matchExpressions": [{"key": key, "operator": "NotIn", "values": ["22"]}]}),
                             pool) == 2  # fmt: skip
    assert daemon_node_count(affinity({"matchExpressions": [{"key": key, "operator": "DoesNotExist"}]}), pool) == 1
    assert daemon_node_count(affinity({"matchExpressions": [{"key": key, "operator": "Gt", "values": ["23"]}]}),
                             pool) == 1  # fmt: skip
    assert daemon_node_count(affinity({"matchFields": [{"key": "metadata.name", "operator": "In",
                                                        "values": ["bare", "u24"]}]}), pool) == 2  # fmt: skip
    # Terms are ORed; an empty term matches nothing.
    either = affinity({"matchExpressions": [{"key": key, "operator": "In", "values": ["22"]}]},
                      {"matchExpressions": [{"key": key, "operator": "In", "values": ["24"]}]})  # fmt: skip
    assert daemon_node_count(either, pool) == 2
    assert daemon_node_count(affinity({}), pool) == 0


def test_a_pod_on_a_node_gone_not_ready_holds_its_daemonset_not_ready_whatever_the_strategy() -> None:
    """A node gone NotReady gets the node lifecycle controller's `not-ready:NoSchedule` taint, which daemon pods
    do not tolerate (only its NoExecute): the controller leaves the node out of desiredNumberScheduled and counts
    its pod misscheduled, so every count says ready, and the operator's node count agrees. An OnDelete DaemonSet's
    pod walk caught the unready pod (saying "1 of 2 pods not ready", of 3 pods, naming no node); a RollingUpdate
    one, every operand but the driver, never looked at it and read ready. Now the unready pods the runtime keeps
    hold both not ready, naming the node."""
    not_ready = (("node.kubernetes.io/not-ready", "", "NoSchedule"), ("node.kubernetes.io/not-ready", "", "NoExecute"))
    nodes = [labelled("a"), labelled("b"), labelled("c", not_ready)]
    pods = [placed("a"), placed("b"), placed("c", ready=(False,))]  # c's Ready condition False (MarkPodsNotReady)
    counts = {**SETTLED, "desiredNumberScheduled": 2, "numberAvailable": 2, "updatedNumberScheduled": 2,
              "numberMisscheduled": 1}  # fmt: skip
    spec = {"nodeSelector": VALIDATOR, "tolerations": [GPU_TOLERATION]}
    for strategy in ("RollingUpdate", "OnDelete"):
        obj = templated(spec, **counts)
        obj["spec"]["updateStrategy"]["type"] = strategy
        assert daemonset_ready(obj, pods, REVISIONS, unready=[pods[2]], nodes=nodes) == (
            False,
            "nvidia-x: 1 of 3 pods not ready (not ready on c)",
        ), strategy
    # A single GPU node gone NotReady: the controller counts 0 of 0, and its pod still holds the DaemonSet.
    alone = templated(spec, **{**counts, **dict.fromkeys(("desiredNumberScheduled", "numberAvailable",
                                                            "updatedNumberScheduled"), 0)})  # fmt: skip
    assert daemonset_ready(alone, pods[2:], REVISIONS, unready=pods[2:], nodes=nodes[2:]) == (
        False,
        "nvidia-x: 1 of 1 pods not ready (not ready on c)",
    )


@pytest.mark.parametrize("strategy", ["RollingUpdate", "OnDelete"])
def test_a_terminating_pod_on_a_dead_node_does_not_hold_a_daemonset_of_either_strategy(strategy: str) -> None:
    """On a node whose kubelet is gone, a pod the DaemonSet controller deletes (the admin set
    gpu.deploy.operands=false to take the node out) stays Terminating for good. A pod being deleted holds nothing
    (is_unready), but the OnDelete pod walk still counted it: the driver's DaemonSet stayed notReady for good,
    "1 of 3 pods not ready" naming no node, while a RollingUpdate one read ready. Upstream's walk reads the
    containers' ready flags, which a dead node leaves True: ready."""
    dead = placed("dead", ready=(False,))
    dead["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    pods = [placed("a"), placed("b"), dead]
    counts = {**SETTLED, "desiredNumberScheduled": 2, "numberAvailable": 2, "updatedNumberScheduled": 2}
    assert daemonset_ready(ds(strategy, **counts), pods, REVISIONS) == (True, "")
    # Still counted against the revision: a terminating pod of an old revision holds an OnDelete DaemonSet.
    old = placed("dead", revision="middle")
    old["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    if strategy == "OnDelete":
        assert daemonset_ready(ds(strategy, **counts), [*pods[:2], old], REVISIONS) == (
            False,
            "nvidia-x: 1 pod runs an old revision",
        )


def test_the_node_counter_kept_pass_by_pass_counts_as_daemon_node_count() -> None:
    """NodeCounter looks again only at nodes whose facts changed: over nodes coming, going, relabelled and
    tainted, pass after pass, each count is daemon_node_count's over the same nodes, also for a template first
    asked mid-way and for one asked again after others pushed it out; and so is the count of the nodes a filter
    takes that at least one of the templates should run on."""

    def odd(n: NodeFacts) -> bool:
        return int(n.name[1:]) % 2 == 1

    def even(n: NodeFacts) -> bool:
        return not odd(n)

    rng = random.Random(7)
    key = "feature.node.kubernetes.io/system-os_release.VERSION_ID"
    specs = [
        {"nodeSelector": VALIDATOR},
        {"nodeSelector": VALIDATOR, "tolerations": [GPU_TOLERATION]},
        {"nodeSelector": VALIDATOR, "hostNetwork": True, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": key, "operator": "In", "values": ["22"]}]}]}}}},
        {"nodeSelector": {"e2e.example/not-kept": "x"}},
    ]  # fmt: skip
    taints = [(), (("nvidia.com/gpu", "present", "NoSchedule"),), (("dedicated", "", "NoSchedule"),),
              (("node.kubernetes.io/network-unavailable", "", "NoSchedule"),)]  # fmt: skip

    def made(name: str) -> NodeFacts:
        labels = {key: rng.choice(["22", "24"])}
        if rng.random() < 0.8:
            labels.update(VALIDATOR)
        return NodeFacts(name=name, labels=labels, taints=rng.choice(taints))

    counter = NodeCounter()
    counter.KEEP = 2  # type: ignore[misc]  # templates pushed out and asked again
    nodes = {f"n{i}": made(f"n{i}") for i in range(30)}
    for step in range(60):
        for _ in range(rng.randint(0, 6)):
            name = f"n{rng.randint(0, 40)}"
            if name in nodes and rng.random() < 0.3:
                del nodes[name]
            else:
                nodes[name] = made(name)
        count = counter.over(dict(nodes))
        asked = specs[: 2 + step // 20] if step < 40 else rng.sample(specs, 3)
        for spec in asked:
            assert count(spec) == daemon_node_count(spec, list(nodes.values())), (step, spec)
        admit = odd if step % 10 < 5 else even
        running = [n for n in nodes.values() if admit(n) and any(daemon_node_count(s, [n]) for s in asked)]
        assert counter.running_any(asked, admit) == len(running), step  # the ready message's count
    assert count(specs[3]) == 0 and len(nodes) > 20


def test_a_selector_on_a_label_the_operator_does_not_keep_errs_low() -> None:
    """NodeFacts drops NFD's labels it has no use for: a selector naming one cannot be judged and counts no
    node, so readiness falls back to the controller's counts rather than waiting forever."""
    dropped = "feature.node.kubernetes.io/cpu-model.vendor_id"
    node_ = NodeFacts.from_node({"metadata": {"name": "n", "labels": {**VALIDATOR, dropped: "Intel"}}})
    assert dropped not in node_.labels
    assert daemon_node_count({"nodeSelector": {**VALIDATOR, dropped: "Intel"}}, [node_]) == 0
    expression = {"key": dropped, "operator": "NotIn", "values": ["AMD"]}
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expression]}]}}}}  # fmt: skip
    assert daemon_node_count(spec, [node_]) == 0


def test_node_facts_keep_the_taints_that_keep_pods_off() -> None:
    raw = {
        "metadata": {"name": "n"},
        "spec": {"taints": [
            {"key": "a", "value": "x", "effect": "NoSchedule"},
            {"key": "b", "effect": "NoExecute"},
            {"key": "c", "effect": "PreferNoSchedule"},
        ]},
    }  # fmt: skip
    assert NodeFacts.from_node(raw).taints == (("a", "x", "NoSchedule"), ("b", "", "NoExecute"))
    wired = msgspec.json.decode(json.dumps(raw).encode(), type=wire.Node)
    assert NodeFacts.from_wire(wired) == NodeFacts.from_node(raw)


class _Cluster:
    """Nodes patched as the API server merges a patch; each DaemonSet applied answered with a status that counts
    `scheduled` pods, all ready and current; anything else a pass writes (its status, events) taken as sent."""

    def __init__(self, nodes: list[dict[str, Any]], scheduled: int):
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.scheduled = scheduled
        self.rv = 100

    def writes(self) -> int:
        return 0

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] != "DaemonSet":
            return obj
        return {**obj, "metadata": {**obj["metadata"], "generation": 1}, "status": _counted(self.scheduled)}

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        if kind != "Node":
            return patch
        self.rv += 1
        return patch_node(self.nodes[name], patch, self.rv)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: a[0] if a and isinstance(a[0], dict) else {}


def _counted(n: int) -> dict[str, Any]:
    counts = ("desiredNumberScheduled", "currentNumberScheduled", "numberReady", "updatedNumberScheduled",
              "numberAvailable")
    return {"observedGeneration": 1, **dict.fromkeys(counts, n)}


def _recording(scheduled: int) -> tuple[dict[str, Any], _Cluster, Any, list[dict[str, Any]]]:
    """The sample policy, a two-node _Cluster, a Reconciler on it, and the statuses its passes write."""
    from gpu_operator.reconciler import Reconciler

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    cluster = _Cluster([node("n1"), node("n2")], scheduled=scheduled)
    r = Reconciler(cluster, "gpu-operator")  # type: ignore[arg-type]
    written: list[dict[str, Any]] = []
    write = r.status.write

    def recording(policy: dict[str, Any], status: dict[str, Any], quiet: bool = False) -> bool:
        written.append(status)
        return write(policy, status, quiet)

    r.status.write = recording
    return pol, cluster, r, written


def _first_pass() -> tuple[Any, ...]:
    """_recording's cluster after a first pass: (policy, cluster, reconciler, statuses written, owned objects,
    DaemonSets by name, the driver DaemonSet's name)."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written = _recording(2)
    first = r.reconcile(_snap(cluster, pol, {}, {}, {}))
    owned = {key_of(o): o for o in first.applied}
    daemonsets = {o["metadata"]["name"]: o for o in first.applied if o["kind"] == "DaemonSet"}
    [driver] = [name for name in daemonsets if name.startswith("nvidia-driver-daemonset")]
    return pol, cluster, r, written, owned, daemonsets, driver


def _driver_unavailable(unavailable: int) -> tuple[Any, ...]:
    """_recording's cluster after a first pass, its driver DaemonSet with `unavailable` of its 2 pods unavailable:
    (policy, cluster, reconciler, statuses written, owned objects, DaemonSets by name, the driver's name, each
    DaemonSet's one revision h1)."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written, owned, daemonsets, driver = _first_pass()
    key = key_of(daemonsets[driver])
    counts = {"numberAvailable": 2 - unavailable, "numberUnavailable": unavailable}
    owned[key] = {**owned[key], "status": {**owned[key]["status"], **counts}}
    revisions = {f"{d}-h1": {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1, "owner": d}
                 for d in daemonsets}  # fmt: skip
    return pol, cluster, r, written, owned, daemonsets, driver, revisions


def _snap(cluster: _Cluster, pol: dict[str, Any], owned: dict[Any, dict[str, Any]], pods: dict[str, dict[str, Any]],
          revisions: dict[str, Any]) -> Any:
    """A pass's snapshot of `cluster`'s nodes, the policy and these objects."""
    from gpu_operator.observe import Snapshot

    nodes = {n: NodeFacts.from_node(copy.deepcopy(cluster.nodes[n])) for n in cluster.nodes}
    return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=owned, pods=pods, revisions=revisions)


def _ready_pod(ds: dict[str, Any], on: str, deleting: bool = False) -> dict[str, Any]:
    """The projection of DaemonSet `ds`'s ready pod on node `on`, at revision h1 (being deleted with `deleting`)."""
    name = ds["metadata"]["name"]
    labels = {**ds["spec"]["template"]["metadata"]["labels"], "controller-revision-hash": "h1"}
    meta: dict[str, Any] = {"name": f"{name}-{on}", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "node": on, "owner": name, "ready": True,
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True}]}}  # fmt: skip


def test_a_pass_counts_the_nodes_it_labels_itself_before_it_calls_a_daemonset_ready() -> None:
    # The snapshot still holds a node's labels from before the pass's own patch: a node labelled just now must
    # have its pod too before the DaemonSet is ready, though the controller's count matches the snapshot.
    from gpu_operator.observe import Snapshot, key_of

    pol, cluster, r, written = _recording(1)

    def toolkit(names: list[str], owned: dict[Any, dict[str, Any]]) -> tuple[Any, tuple[str, str]]:
        nodes = {n: NodeFacts.from_node(copy.deepcopy(cluster.nodes[n])) for n in names}
        out = r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=owned, pods={}, revisions={}))
        [state] = [s for s in written[-1]["states"] if s["name"] == "state-container-toolkit"]
        return out, (state["state"], state["message"])

    first, verdict = toolkit(["n1"], {})
    assert [n.name for n in first.nodes] == ["n1"] and verdict == ("ready", "")  # n1 labelled and counted
    owned = {key_of(o): o for o in first.applied}
    second, verdict = toolkit(["n1", "n2"], owned)
    assert [n.name for n in second.nodes] == ["n2"] and not second.applied  # n2 labelled; no object changed
    expected = "nvidia-container-toolkit-daemonset: 2 nodes should run its pod, the DaemonSet controller counts 1"
    assert verdict[0] == "notReady" and verdict[1].startswith(expected), verdict
    recounted = {k: {**o, "status": _counted(2)} if o["kind"] == "DaemonSet" else o for k, o in owned.items()}
    _, verdict = toolkit(["n1", "n2"], recounted)
    assert verdict == ("ready", "")  # once the controller counts n2 too


def test_a_pass_does_not_call_a_state_ready_while_its_daemonset_is_being_deleted() -> None:
    """The same through a pass: with the device plugin's DaemonSet being deleted in the foreground, its status
    frozen at all ready and both its pods terminating, the ClusterPolicy read ready (state-device-plugin ready)."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written = _recording(2)
    first = r.reconcile(_snap(cluster, pol, {}, {}, {}))
    owned = {key_of(o): o for o in first.applied}
    daemonsets = {o["metadata"]["name"]: o for o in first.applied if o["kind"] == "DaemonSet"}
    pods = {f"{d}-{n}": _ready_pod(daemonsets[d], n) for d in daemonsets for n in cluster.nodes}
    revisions = {f"{d}-h1": {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1, "owner": d}
                 for d in daemonsets}  # fmt: skip
    assert r.reconcile(_snap(cluster, pol, owned, pods, revisions)).ready and written[-1]["state"] == "ready"

    plugin = "nvidia-device-plugin-daemonset"
    key = key_of(daemonsets[plugin])
    meta = {**owned[key]["metadata"], "deletionTimestamp": "2026-12-01T00:00:00Z", "finalizers": ["foregroundDeletion"]}
    deleting = {**owned, key: {**owned[key], "metadata": meta}}  # the status as the controller left it
    going = {**pods, **{f"{plugin}-{n}": _ready_pod(daemonsets[plugin], n, deleting=True) for n in cluster.nodes}}
    r.reconcile(_snap(cluster, pol, deleting, going, revisions))
    [state] = [s for s in written[-1]["states"] if s["name"] == "state-device-plugin"]
    assert written[-1]["state"] == "notReady"
    assert (state["state"], state["message"]) == ("notReady", f"{plugin}: being deleted; recreated once it is gone")


def test_after_a_driver_version_change_no_pass_calls_the_policy_ready_while_every_driver_pod_is_old() -> None:
    """The same through a pass. The driver goes from 595.91.07 to 610.57.04 and the pass applies the new driver
    DaemonSet (OnDelete). The controller then makes ControllerRevision 2 and writes the DaemonSet's status (the
    generation observed, 0 of 2 pods updated), and the runtime wakes a pass at once on that status (OnDelete
    restarts nothing, so no pod is unready and nothing debounces it) before the revision watch brings revision 2.
    That pass wrote state-driver ready and the ClusterPolicy Ready (a 'state ready' Event; `kubectl wait
    --for=condition=Ready` returned) with both nodes on the old driver, and the next pass notReady again."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written, owned, daemonsets, driver = _first_pass()
    assert daemonsets[driver]["spec"]["updateStrategy"]["type"] == "OnDelete"

    def revision_of(ds: str, number: int, hash_: str) -> dict[str, Any]:
        return {"metadata": {"labels": {"controller-revision-hash": hash_}}, "revision": number, "owner": ds}

    pods = {f"{d}-{n}": _ready_pod(daemonsets[d], n) for d in daemonsets for n in cluster.nodes}
    revisions = {f"{d}-h1": revision_of(d, 1, "h1") for d in daemonsets}
    assert r.reconcile(_snap(cluster, pol, owned, pods, revisions)).ready and written[-1]["state"] == "ready"

    pol = copy.deepcopy(pol)
    pol["spec"]["driver"]["version"] = "610.57.04"
    pol["metadata"].update(generation=2, resourceVersion="2")
    changed = r.reconcile(_snap(cluster, pol, owned, pods, revisions))
    [new] = [o for o in changed.applied if o["kind"] == "DaemonSet" and o["metadata"]["name"] == driver]
    assert written[-1]["state"] == "notReady"  # applied just now
    observed = {**new, "status": {**_counted(2), "observedGeneration": new["metadata"]["generation"],
                                  "updatedNumberScheduled": 0}}  # fmt: skip
    owned = {**owned, key_of(new): observed}

    def driver_state() -> tuple[str, str, str]:
        [state] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
        return written[-1]["state"], state["state"], state["message"]

    out = r.reconcile(_snap(cluster, pol, owned, pods, revisions))  # the pass the status woke: no revision 2 yet
    assert not out.applied
    assert driver_state() == ("notReady", "notReady", f"{driver}: the DaemonSet controller counts 0 of 2 pods updated")
    r.reconcile(_snap(cluster, pol, owned, pods, {**revisions, f"{driver}-h2": revision_of(driver, 2, "h2")}))
    assert driver_state() == ("notReady", "notReady", f"{driver}: 2 pods run an old revision")


def test_with_autoUpgrade_off_an_out_of_date_driver_says_only_deleting_its_pods_replaces_them() -> None:
    """With driver.upgradePolicy.autoUpgrade false a driver change leaves every driver pod at the old revision
    (OnDelete, no upgrade runs) until someone deletes them, and the ClusterPolicy read "N pods run an old revision"
    for good: the words of a rollout under way, with no hint that it waits for the admin. Now the state-driver
    message says that autoUpgrade is off, names the nodes, and that deleting the pods updates them; the same pass
    after pass (nothing written again). Under autoUpgrade the message stays as it was (the test above)."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written = _recording(2)
    pol["spec"]["driver"]["upgradePolicy"]["autoUpgrade"] = False
    first = r.reconcile(_snap(cluster, pol, {}, {}, {}))
    owned = {key_of(o): {**o, "status": _counted(2)} if o["kind"] == "DaemonSet" else o for o in first.applied}
    sets = {o["metadata"]["name"]: o for o in first.applied if o["kind"] == "DaemonSet"}
    pods = {f"{d}-{n}": _ready_pod(sets[d], n) for d in sets for n in cluster.nodes}
    revisions = {f"{d}-h1": {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1, "owner": d}
                 for d in sets}  # fmt: skip
    driver = next(d for d in sets if d.startswith("nvidia-driver-daemonset"))
    revisions[f"{driver}-h2"] = {"metadata": {"labels": {"controller-revision-hash": "h2"}}, "revision": 2,
                                 "owner": driver}  # fmt: skip  (the new template: every pod is out of date)
    messages = []
    for _ in range(2):
        r.reconcile(_snap(cluster, pol, owned, pods, revisions))
        [state] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
        assert state["state"] == "notReady"
        messages.append(state["message"])
    assert messages[0] == messages[1] == (
        f"{driver}: 2 pods run an old revision; autoUpgrade is off: nothing replaces the out-of-date driver pods "
        "on n1, n2; delete them to update"
    )


def test_a_pass_over_pods_that_wait_names_why_and_says_it_the_same_way_pass_after_pass() -> None:
    """Review readiness #1 through a pass: the driver state's message groups its nodes by why their pods wait, and
    passes over the same pods, listed in another order, with the kubelet's next pull retry (ErrImagePull after
    ImagePullBackOff), compute the same status, so they write nothing."""
    from gpu_operator.status import status_changed

    pol, cluster, r, written, owned, daemonsets, driver, revisions = _driver_unavailable(2)

    def waiting(on: str, reason: str, init: str = "") -> dict[str, Any]:
        p = _ready_pod(daemonsets[driver], on)
        p["ready"] = False
        p["status"] = _waiting_pod(on, reason, init)["status"]
        return p

    def driver_message(pods: dict[str, dict[str, Any]]) -> str:
        r.reconcile(_snap(cluster, pol, owned, pods, revisions))
        [state] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
        return str(state["message"])

    others = {f"{d}-{n}": _ready_pod(daemonsets[d], n) for d in daemonsets if d != driver for n in cluster.nodes}
    crash, pull = waiting("n1", "PodInitializing", init="CrashLoopBackOff"), waiting("n2", "ImagePullBackOff")
    expected = f"{driver}: 2 of 2 pods unavailable (CrashLoopBackOff on n1; ImagePullBackOff on n2)"
    assert driver_message({**others, crash["metadata"]["name"]: crash, pull["metadata"]["name"]: pull}) == expected
    before = written[-1]
    pull = waiting("n2", "ErrImagePull")
    assert driver_message({pull["metadata"]["name"]: pull, crash["metadata"]["name"]: crash, **others}) == expected
    assert not status_changed(before, written[-1])


@pytest.mark.parametrize("then", ["RunContainerError", "PostStartHookError", ""])
def test_each_moment_of_one_crash_loop_gives_the_same_message_and_writes_nothing(then: str) -> None:
    """Review diffR #1, #2: a driver container in a crash loop waits CrashLoopBackOff while it backs off; right after
    each start attempt the kubelet says why the start failed (RunContainerError, PostStartHookError), and a container
    that starts and fails later runs between back-offs (no waiting reason; not ready, restartCount 7, its last run
    ended with exit code 1). Each such pass flipped the state's message ("RunContainerError on n1", "not ready on
    n1") and wrote the ClusterPolicy's status, the cluster unchanged. Now a container running again after a crash
    counts as CrashLoopBackOff: one loop, one message."""
    from gpu_operator.status import status_changed

    pol, cluster, r, written, owned, daemonsets, driver, revisions = _driver_unavailable(1)
    others = {f"{d}-{n}": _ready_pod(daemonsets[d], n) for d in daemonsets for n in cluster.nodes}

    def message(reason: str) -> str:
        p = _ready_pod(daemonsets[driver], "n1")
        p["ready"] = False
        p["status"] = _waiting_pod("n1", reason)["status"]  # restartCount 7, Running
        r.reconcile(_snap(cluster, pol, owned, {**others, p["metadata"]["name"]: p}, revisions))
        [s] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
        return str(s["message"])

    assert message("CrashLoopBackOff") == f"{driver}: 1 of 2 pods unavailable (CrashLoopBackOff on n1)"
    before = written[-1]
    assert message(then) == f"{driver}: 1 of 2 pods unavailable (CrashLoopBackOff on n1)"
    assert not status_changed(before, written[-1])


def _rebooted_pod(ds: dict[str, Any], on: str, where: str, restarts: int) -> dict[str, Any]:
    """The API's pod of DaemonSet `ds` on node `on` as the kubelet reports it while it starts (again) after a node
    reboot: the container that runs (`where`: the main container, or an init container that waits for the driver)
    is running and not ready, restarted `restarts` times (the kubelet counts the pre-reboot container: lastState
    terminated, reason Unknown, exit code 255), then projected as the operator keeps it."""
    from gpu_operator.observe import project_pod

    labels = {**ds["spec"]["template"]["metadata"]["labels"], "controller-revision-hash": "h1"}
    last = {"terminated": {"exitCode": 255, "reason": "Unknown", "startedAt": "2026-12-01T00:00:00Z",
                           "finishedAt": "2026-12-01T10:00:00Z"}} if restarts else {}  # fmt: skip
    running = {"name": "ctr", "ready": False, "started": True, "restartCount": restarts,
               "state": {"running": {"startedAt": "2026-12-01T10:02:00Z"}}, "lastState": last}  # fmt: skip
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    if where == "main":
        status["containerStatuses"] = [running]
    else:
        status["phase"] = "Pending"
        status["initContainerStatuses"] = [{**running, "name": "driver-validation"}]
        status["containerStatuses"] = [{"name": "ctr", "ready": False, "restartCount": restarts,
                                        "state": {"waiting": {"reason": "PodInitializing"}}}]  # fmt: skip
    raw = {
        "metadata": {"name": f"{ds['metadata']['name']}-{on}", "labels": labels,
                     "ownerReferences": [{"kind": "DaemonSet", "name": ds["metadata"]["name"], "uid": "ds-uid"}]},
        "spec": {"nodeName": on},
        "status": status,
    }  # fmt: skip
    projected = project_pod(wire.convert(raw, wire.Pod))
    projected["owner"] = ds["metadata"]["name"]
    projected["metadata"].pop("ownerUid", None)  # as the other pods of these passes (_ready_pod)
    return projected


@pytest.mark.parametrize("where", ["main", "init"])
def test_a_pod_restarted_by_a_node_reboot_is_not_called_a_crash_loop(where: str) -> None:
    """Review diffS #1: every container not ready that had restarted read "CrashLoopBackOff". After a node reboot
    the kubelet starts each pod's containers again and counts the container that ran before the reboot (restartCount
    1, lastState.terminated reason Unknown): the driver container then runs its install (minutes, not ready until
    its startup probe passes) and the other operands' init containers wait for the driver. Nothing crashes, yet the
    state's message said "CrashLoopBackOff on <node>" for the whole start. Now such a pod reads as the same pod
    starting for the first time; only a container whose last run crashed is a crash loop."""

    pol, cluster, r, written, owned, daemonsets, driver, revisions = _driver_unavailable(1)
    others = {f"{d}-{n}": _ready_pod(daemonsets[d], n) for d in daemonsets for n in cluster.nodes}

    def message(restarts: int) -> str:
        p = _rebooted_pod(daemonsets[driver], "n1", where, restarts)
        r.reconcile(_snap(cluster, pol, copy.deepcopy(owned), {**others, p["metadata"]["name"]: p}, revisions))
        [s] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
        return str(s["message"])

    fresh = message(0)
    assert fresh.endswith("on n1)") and "CrashLoopBackOff" not in fresh, fresh
    assert message(1) == fresh


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (("Error", 1), "CrashLoopBackOff"),
        (("OOMKilled", 137), "CrashLoopBackOff"),
        (("Unknown", 255), ""),  # lost to a node reboot
        (("Completed", 0), ""),
        (("", 0), ""),
        (("Error", None), ""),  # no exit code: nothing says it crashed
        (None, ""),  # no last run kept
    ],
)
def test_a_running_container_counts_as_a_crash_loop_only_after_its_last_run_crashed(
    last: tuple[str, Any] | None, expected: str
) -> None:
    from gpu_operator.readiness import waiting_reason

    pod = _waiting_pod("n1", "", restarts=3)
    [ctr] = pod["status"]["containerStatuses"]
    ctr.pop("lastTerminated")
    if last is not None:
        ctr["lastTerminated"] = last
    assert waiting_reason(pod) == expected


def test_a_daemonset_whose_state_label_another_writer_changed_is_still_judged() -> None:
    """A state's DaemonSet whose live copy lacked that state's label nvidia.com/gpu-operator.state (`kubectl label ds
    ... nvidia.com/gpu-operator.state-`, a policy engine rewriting labels) was skipped: the state read ready whatever
    its pods did. Here a webhook strips the label from every write of the device plugin's DaemonSet, which counts 1 of
    2 pods unavailable, its pod on n2 not ready: state-device-plugin and the ClusterPolicy read ready. Now each
    DaemonSet the state rendered is judged, whatever its labels."""
    from gpu_operator.observe import Snapshot, key_of
    from gpu_operator.states.base import STATE_LABEL

    pol, cluster, r, written = _recording(2)

    def snapshot(owned: dict[Any, dict[str, Any]], pods: dict[str, dict[str, Any]], revisions: dict[str, Any]) -> Any:
        nodes = {n: NodeFacts.from_node(copy.deepcopy(cluster.nodes[n])) for n in cluster.nodes}
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=owned, pods=pods, revisions=revisions)

    first = r.reconcile(snapshot({}, {}, {}))
    owned = {key_of(o): o for o in first.applied}
    daemonsets = {o["metadata"]["name"]: o for o in first.applied if o["kind"] == "DaemonSet"}

    def projection(ds: str, on: str, ready: bool = True) -> dict[str, Any]:
        labels = {**daemonsets[ds]["spec"]["template"]["metadata"]["labels"], "controller-revision-hash": "h1"}
        return {"metadata": {"name": f"{ds}-{on}", "labels": labels}, "node": on, "owner": ds, "ready": ready,
                "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": ready}]}}  # fmt: skip

    pods = {f"{d}-{n}": projection(d, n) for d in daemonsets for n in cluster.nodes}
    revisions = {f"{d}-h1": {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1, "owner": d}
                 for d in daemonsets}  # fmt: skip
    assert r.reconcile(snapshot(owned, pods, revisions)).ready

    plugin = "nvidia-device-plugin-daemonset"
    key = key_of(daemonsets[plugin])
    stripped = copy.deepcopy(owned[key])
    del stripped["metadata"]["labels"][STATE_LABEL]
    stripped["status"] = {**_counted(2), "numberAvailable": 1, "numberUnavailable": 1, "numberReady": 1}
    apply = cluster.apply
    cluster.apply = lambda obj: stripped if key_of(obj) == key else apply(obj)  # type: ignore[method-assign]
    r.reconcile(snapshot({**owned, key: stripped}, {**pods, f"{plugin}-n2": projection(plugin, "n2", False)},
                         revisions))  # fmt: skip
    [state] = [s for s in written[-1]["states"] if s["name"] == "state-device-plugin"]
    assert (state["state"], state["message"]) == ("notReady", f"{plugin}: 1 of 2 pods unavailable (not ready on n2)")
    assert written[-1]["state"] == "notReady"


def test_a_pod_turning_ready_while_a_pass_runs_is_in_that_pass_status() -> None:
    # A pass whose status would be ready but for a DaemonSet not ready yet asks what the watches brought since its
    # snapshot (Reconciler.newer): the device plugin's last pod turned ready meanwhile, before the controller
    # counted it, and the pass writes ready; without that look it writes notReady and the next pass writes ready.
    from gpu_operator.observe import Newer, PodIndex, Snapshot, key_of

    pol, cluster, r, written = _recording(2)
    asked: list[int] = []
    later: list[Newer | None] = [None]

    def newer() -> Newer | None:
        asked.append(1)
        return later[0]

    r.newer = newer

    def snapshot(owned: dict[Any, dict[str, Any]], pods: dict[str, dict[str, Any]], revisions: dict[str, Any]) -> Any:
        nodes = {n: NodeFacts.from_node(copy.deepcopy(cluster.nodes[n])) for n in cluster.nodes}
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=owned, pods=pods, revisions=revisions)

    first = r.reconcile(snapshot({}, {}, {}))
    assert first.ready is False and not asked  # objects applied just now: not ready for that reason too
    owned = {key_of(o): o for o in first.applied}
    daemonsets = [o for o in first.applied if o["kind"] == "DaemonSet"]
    plugin = "nvidia-device-plugin-daemonset"
    assert plugin in {d["metadata"]["name"] for d in daemonsets}

    def projection(ds: str, on: str, ready: bool) -> dict[str, Any]:
        labels = {**daemonsets_by_name[ds]["spec"]["template"]["metadata"]["labels"], "controller-revision-hash": "h1"}
        return {"metadata": {"name": f"{ds}-{on}", "labels": labels}, "node": on, "owner": ds, "ready": ready,
                "status": {}}  # fmt: skip

    daemonsets_by_name = {d["metadata"]["name"]: d for d in daemonsets}
    pods = {f"{d}-{n}": projection(d, n, True) for d in daemonsets_by_name for n in cluster.nodes}
    revisions = {f"{d}-h1": {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1, "owner": d}
                 for d in daemonsets_by_name}  # fmt: skip
    key = key_of(daemonsets_by_name[plugin])
    # The controller has not counted the last pod yet: 1 of 2 available, and in the snapshot the pod is not ready.
    lagging = {**owned, key: {**owned[key], "status": {**_counted(2), "numberAvailable": 1, "numberUnavailable": 1}}}
    unready = {**pods, f"{plugin}-n2": projection(plugin, "n2", False)}

    def plugin_state() -> tuple[str, str]:
        [state] = [s for s in written[-1]["states"] if s["name"] == "state-device-plugin"]
        return state["state"], state["message"]

    out = r.reconcile(snapshot(lagging, unready, revisions))  # nothing newer: notReady
    assert (out.ready, written[-1]["state"], len(asked)) == (False, "notReady", 1)
    assert plugin_state() == ("notReady", f"{plugin}: 1 of 2 pods unavailable (not ready on n2)")
    later[0] = Newer(lagging, revisions, PodIndex.of(pods))  # the pod's status came while the pass ran
    out = r.reconcile(snapshot(lagging, unready, revisions))
    assert (out.ready, written[-1]["state"], len(asked)) == (True, "ready", 2)
    assert plugin_state() == ("ready", "")
    r.newer = None  # the same pass without the look
    out = r.reconcile(snapshot(lagging, unready, revisions))
    assert (out.ready, written[-1]["state"]) == (False, "notReady")
    r.newer = newer
    # A pass that writes something (here a node's label the pass puts back) is not ready for that too: it does
    # not ask (nor did the first pass, which applied the objects).
    del cluster.nodes["n2"]["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"]
    del asked[:]
    out = r.reconcile(snapshot(lagging, unready, revisions))
    assert [n.name for n in out.nodes] == ["n2"] and out.ready is False and not asked


def test_a_daemonset_made_again_under_its_name_is_judged_by_its_own_pods_and_revisions() -> None:
    """The driver DaemonSet deleted and made again under the same name (driver switched off and on, the
    ClusterPolicy re-created): until the garbage collector deletes the old one's pods and ControllerRevisions (its
    revision 3 here, newer by number than the new one's 1), they were the new one's by name. The new DaemonSet, all
    its pods ready at its only revision, read "2 pods run an old revision": the old one's revision counted as its
    newest, and the old one's pods as its own. Now pods and revisions go by the owner's uid."""
    from gpu_operator.observe import key_of

    pol, cluster, r, written, owned, daemonsets, driver = _first_pass()
    assert daemonsets[driver]["spec"]["updateStrategy"]["type"] == "OnDelete"

    def pod_of(ds: str, on: str, uid: str, hash_: str) -> dict[str, Any]:
        pod = _ready_pod(daemonsets[ds], on)
        labels = {**pod["metadata"]["labels"], "controller-revision-hash": hash_}
        return {**pod, "metadata": {**pod["metadata"], "name": f"{uid}-{on}", "labels": labels, "ownerUid": uid}}

    def revision_of(ds: str, uid: str, number: int, hash_: str) -> dict[str, Any]:
        return {"metadata": {"labels": {"controller-revision-hash": hash_}, "ownerUid": uid}, "revision": number,
                "owner": ds}  # fmt: skip

    def hash_of(ds: str) -> str:
        return "h3" if ds == driver else "h1"

    owned = {k: {**o, "metadata": {**o["metadata"], "uid": f"{k[2]}-old"}} if k[0] == "DaemonSet" else o
             for k, o in owned.items()}  # fmt: skip
    pods = {f"{d}-old-{n}": pod_of(d, n, f"{d}-old", hash_of(d)) for d in daemonsets for n in cluster.nodes}
    revisions = {f"{d}-old": revision_of(d, f"{d}-old", 3 if d == driver else 1, hash_of(d)) for d in daemonsets}
    assert r.reconcile(_snap(cluster, pol, owned, pods, revisions)).ready

    key = key_of(daemonsets[driver])
    again = {**owned, key: {**owned[key], "metadata": {**owned[key]["metadata"], "uid": f"{driver}-new"}}}
    pods.update({f"{driver}-new-{n}": pod_of(driver, n, f"{driver}-new", "n1") for n in cluster.nodes})
    revisions[f"{driver}-new"] = revision_of(driver, f"{driver}-new", 1, "n1")
    r.reconcile(_snap(cluster, pol, again, pods, revisions))
    [state] = [s for s in written[-1]["states"] if s["name"] == "state-driver"]
    assert (written[-1]["state"], state["state"]) == ("ready", "ready"), state
