"""ClusterPolicy status: the singleton rule (and the handover to the next policy), reasons, Ready/Error conditions
and change detection."""

from __future__ import annotations

import copy
import itertools
import json
import logging
from typing import Any

import pytest

from gpu_operator.api import ClusterPolicyStatus
from gpu_operator.events import EventRecorder
from gpu_operator.kube import ApiError
from gpu_operator.status import StateResult, active_policy, ignored_status, policy_status, status_changed
from support import EchoKube, PostingKube, policy_object

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
T2 = "2026-01-01T00:10:00Z"


def policy(name: str, created: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = T2
    return {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": meta}


# Singleton


def test_oldest_policy_is_active() -> None:
    policies = [policy("b", "2026-01-02T00:00:00Z"), policy("a", "2026-01-03T00:00:00Z"), policy("c", T0)]
    assert active_policy(policies) == "c"


def test_name_breaks_a_creation_tie() -> None:
    assert active_policy([policy("zeta", T0), policy("alpha", T0), policy("mid", T0)]) == "alpha"


def test_of_policies_created_in_the_same_second_the_acted_on_one_stays_active() -> None:
    """creationTimestamp is whole seconds: a policy re-created in the second its hand-over ended (e2e/test_operator
    hands cluster-policy over to second-policy and creates it again) won the tie by name and took the operands back;
    the one whose status says it is acted on keeps them, and only then the name decides."""
    acting = {**policy("second-policy", T0), "status": {"state": "ready"}}
    new = policy("cluster-policy", T0)
    assert active_policy([new, acting]) == "second-policy"
    assert active_policy([{**new, "status": {"state": "ignored"}}, acting]) == "second-policy"
    assert active_policy([policy("cluster-policy", T0), {**acting, "status": {"state": "ignored"}}]) == "cluster-policy"
    assert active_policy([{**policy("older", "2025-12-31T23:59:59Z")}, acting]) == "older"  # age comes first


def test_deleting_policy_is_skipped() -> None:
    assert active_policy([policy("old", T0, deleting=True), policy("new", T1)]) == "new"
    assert active_policy([policy("old", T0, deleting=True)]) is None


def test_no_policy() -> None:
    assert active_policy([]) is None


def test_a_deleted_active_policy_is_let_go_only_once_the_next_one_owns_its_objects() -> None:
    """A (active) is deleted while B exists. Were A's finalizer removed while objects still had A as their only
    owner, the garbage collector could delete them (every DaemonSet, the driver's too) before B's pass re-owns
    them. A is let go by the pass after, which sees them owned by B; one already being deleted does not hold A."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot, key_of
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts

    def released(kube: RecordingKube) -> bool:
        return any(verb == "merge_patch" and what[:2] == ("ClusterPolicy", "cluster-policy")
                   and CLEANUP_FINALIZER not in what[2]["metadata"].get("finalizers", [CLEANUP_FINALIZER])
                   for verb, what in kube.calls)  # fmt: skip

    def applied(kube: RecordingKube, uid: str) -> dict[Any, dict[str, Any]]:
        return {key_of(o): o for verb, o in kube.calls if verb == "apply"
                and [r["uid"] for r in o["metadata"]["ownerReferences"]] == [uid]}  # fmt: skip

    a = policy_object()
    a["metadata"].update(uid="uid-a", finalizers=[CLEANUP_FINALIZER])
    b = policy_object()
    b["metadata"].update(name="new-policy", uid="uid-b", creationTimestamp=T1)
    nodes = {"gpu-1": facts("gpu-1")}
    kube = RecordingKube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": a}, owned={}, pods={}, revisions={}))
    owned = applied(kube, "uid-a")
    assert len(owned) > 20 and any(k[0] == "DaemonSet" for k in owned)

    a["metadata"]["deletionTimestamp"] = T2
    policies = {"cluster-policy": a, "new-policy": b}
    kube.calls.clear()
    r.reconcile(Snapshot(nodes=nodes, policies=policies, owned=owned, pods={}, revisions={}))
    assert not released(kube), "A let go while its objects still had it as their only owner"
    reowned = applied(kube, "uid-b")
    assert set(reowned) == set(owned), "B's pass re-owns every object"

    # The next pass sees them owned by B (and one of A's being deleted meanwhile): A is let go.
    terminating = copy.deepcopy(next(iter(owned.values())))
    terminating["metadata"].update(name="gone", deletionTimestamp=T2)
    kube.calls.clear()
    r.reconcile(Snapshot(nodes=nodes, policies=policies, owned={**reowned, key_of(terminating): terminating},
                         pods={}, revisions={}))  # fmt: skip
    assert released(kube)


def test_our_finalizer_is_added_without_dropping_one_another_controller_added_since_the_pass_read_the_policy() -> None:
    """Our finalizer was added by a merge patch of the whole finalizers list as the pass read it, with no
    precondition: a merge patch replaces lists, so a finalizer another controller (a backup's, say) added since was
    removed, and its clean-up never ran. Upstream's EnsureFinalizer patches with MergeFromWithOptimisticLock. Now
    the patch carries the resourceVersion it was decided on: the API server refuses a stale one (409), the pass
    goes on and the next, soon after, adds it to the list as it is then."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import ServerKube, facts

    seen = policy_object()  # the pass's view: no finalizer yet
    live = copy.deepcopy(seen)
    live["metadata"].update(finalizers=["backup.example.com/protect"], resourceVersion="2")
    kube = ServerKube({("ClusterPolicy", "cluster-policy"): live})
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    nodes = {"gpu-1": facts("gpu-1")}
    out = r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": seen}, owned={}, pods={}, revisions={}))
    now = kube.objects[("ClusterPolicy", "cluster-policy")]
    assert now["metadata"]["finalizers"] == ["backup.example.com/protect"]
    assert out.busy, "the next pass comes soon"
    assert any(verb == "apply" for verb, _ in kube.calls), "the pass went on"
    assert not kube.statuses, "its status, decided on the same stale read, is refused too"
    r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": copy.deepcopy(now)}, owned={}, pods={},
                         revisions={}))  # fmt: skip
    finalizers = kube.objects[("ClusterPolicy", "cluster-policy")]["metadata"]["finalizers"]
    assert finalizers == ["backup.example.com/protect", CLEANUP_FINALIZER]
    assert kube.statuses, "written on the object as it is now, after our finalizer patch (its answer's version)"


@pytest.mark.parametrize("refused", [404, 403])
def test_a_failed_write_on_another_clusterpolicy_does_not_cut_the_active_policys_pass(refused: int) -> None:
    """The `ignored` status of a ClusterPolicy that is not the active one, and the finalizer patch that lets a deleted
    one go, were written before the try that turns an ApiError into a failed pass with a status. One of them gone
    since the snapshot (404: a second policy gets no finalizer of ours; ours removed by hand) or refused (a 403, a
    webhook) left reconcile() with the ApiError: the active ClusterPolicy went without its pass and its status for as
    long as that lasted, and the runtime logged a traceback. Now each is logged and the pass goes on; a refusal is
    tried again soon."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts

    class Refusing(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "ClusterPolicy" and name != "cluster-policy":
                path = f"PATCH /apis/nvidia.com/v1/clusterpolicies/{name}"
                raise ApiError(refused, json.dumps({"message": f'clusterpolicies.nvidia.com "{name}" refused'}), path)
            return super().merge_patch(kind, name, patch, *a, **k)

    active, second, deleted = policy_object(), policy_object(), policy_object()
    second["metadata"].update(name="second", uid="u2", creationTimestamp="2026-02-01T00:00:00Z")
    deleted["metadata"].update(name="deleted", uid="u3", creationTimestamp="2026-02-01T00:00:00Z",
                               deletionTimestamp="2026-02-02T00:00:00Z", finalizers=[CLEANUP_FINALIZER])  # fmt: skip
    nodes = {"gpu-1": facts("gpu-1")}
    for others in ({"second": second}, {"deleted": deleted}):
        kube = Refusing()
        out = Reconciler(kube, "gpu-operator").reconcile(Snapshot(  # type: ignore[arg-type]
            nodes=nodes, policies={"cluster-policy": active, **others}, owned={}, pods={}, revisions={}))  # fmt: skip
        assert ("ClusterPolicy", "cluster-policy") in kube.statuses, f"the active policy's pass was cut ({others})"
        assert out.busy == (refused != 404), out.busy


def test_a_deleted_policy_already_gone_is_let_go_quietly_and_the_one_taking_over_is_reconciled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A (active) is deleted while B exists: the operator hands over, and letting A go is a merge patch of its
    finalizers. When A is already gone (the uninstall hook's timeout took our finalizer off, or the pass's view of A
    is older than its removal) the patch answers 404. That escaped the pass before the active policy's part (B had
    no status, no node labelled, the pass counted failed); since ac868d5 the pass goes on, but a policy already gone
    was still logged as a warning ("deleted ClusterPolicy not let go") and ended cleanup_deleted, so another deleted
    policy of the same pass waited for the next. A gone object needs no finalizer removed: it is let go."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot, key_of
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts

    class GoneA(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "ClusterPolicy" and name == "cluster-policy" and "finalizers" in patch.get("metadata", {}):
                raise ApiError(404, '{"message": "clusterpolicies.nvidia.com \\"cluster-policy\\" not found"}',
                               f"PATCH {kind} {name}", "NotFound")  # fmt: skip
            return super().merge_patch(kind, name, patch, *a, **k)

    a = policy_object()
    a["metadata"].update(uid="uid-a", finalizers=[CLEANUP_FINALIZER], deletionTimestamp=T2)
    b = policy_object()
    b["metadata"].update(name="new-policy", uid="uid-b", creationTimestamp=T1, finalizers=[CLEANUP_FINALIZER])
    nodes = {"gpu-1": facts("gpu-1")}
    # Every object already owned by B (a previous pass re-owned them): A holds nothing back.
    first = RecordingKube()
    Reconciler(first, "gpu-operator").reconcile(  # type: ignore[arg-type]
        Snapshot(nodes=nodes, policies={"new-policy": b}, owned={}, pods={}, revisions={})
    )
    owned = {key_of(o): o for verb, o in first.calls if verb == "apply"}
    assert owned

    kube = GoneA()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    policies = {"cluster-policy": a, "new-policy": b}
    with caplog.at_level("INFO", logger="gpu_operator"):
        out = r.reconcile(Snapshot(nodes=nodes, policies=policies, owned=owned, pods={}, revisions={}))
    assert ("ClusterPolicy", "new-policy") in kube.statuses, "the policy taking over is reconciled"
    assert out.ready is not None and not out.busy
    assert not [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert any("gone already" in rec.getMessage() for rec in caplog.records)

    # Two deleted at once, none left: the one already gone does not hold back the other's letting go.
    c = policy_object()
    c["metadata"].update(name="other", uid="uid-c", finalizers=[CLEANUP_FINALIZER], deletionTimestamp=T2)
    kube = GoneA()
    Reconciler(kube, "gpu-operator").reconcile(  # type: ignore[arg-type]
        Snapshot(nodes=nodes, policies={"cluster-policy": a, "other": c}, owned={}, pods={}, revisions={})
    )
    let_go = [what[1] for verb, what in kube.calls if verb == "merge_patch" and what[0] == "ClusterPolicy"]
    assert let_go == ["other"], let_go


def test_a_policy_deleted_before_it_got_our_finalizer_does_not_fail_the_pass(caplog: pytest.LogCaptureFixture) -> None:
    """A ClusterPolicy deleted before the operator's first pass added its finalizer (`kubectl apply` then `kubectl
    delete` at once, `helm uninstall` right after `helm install`, a GitOps replace) is gone without our clean-up: the
    pass that still has it in its snapshot adds the finalizer, which the API server answers 404. That 404 raised out
    of ensure_finalizer and failed the whole pass: `reconcile failed: ... not found` and `status not written`
    warnings, gpu_operator_reconciliation_failed_total counted, reconciliation_status -2, the failed-pass backoff, and
    the NVIDIADrivers' status saying "reconcile failed: ... not found". An object gone since it was read is no failure
    (a status write and the finalizer's removal take its 404 as done; controller-runtime reconcilers ignore NotFound):
    the pass ends with nothing written, and the next (its DELETED event's, or 5 s on) finds no active policy."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts

    class GoneKube(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "ClusterPolicy":
                raise ApiError(404, '{"message": "clusterpolicies.nvidia.com \\"cluster-policy\\" not found"}',
                               "PATCH ClusterPolicy cluster-policy", "NotFound")  # fmt: skip
            return super().merge_patch(kind, name, patch, *a, **k)

    kube = GoneKube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="gpu_operator"):
        out = r.reconcile(Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": policy_object()},
                                   owned={}, pods={}, revisions={}))  # fmt: skip
    assert not out.error and not out.failed, "a ClusterPolicy gone since the snapshot failed the pass"
    assert out.busy, "the next pass comes soon"
    assert not [c for c in kube.calls if c[0] != "merge_patch"], "nothing applied for a policy that is gone"
    assert r.labelling is None
    assert not [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert any("deleted before it had our finalizer" in rec.getMessage() for rec in caplog.records)


def test_a_deleted_policy_is_let_go_without_putting_back_a_finalizer_its_owner_removed_since() -> None:
    """Letting a deleted policy go wrote the finalizers list as the pass read it without ours, with no
    precondition: a finalizer its owner removed since was put back (the API server refuses that on an object being
    deleted, so the pass failed). Now the patch carries the resourceVersion: refused with 409, the next pass, soon
    after, lets the policy go."""
    from gpu_operator.apply import Applier
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.observe import Snapshot
    from support import ServerKube

    seen = policy_object()
    seen["metadata"].update(finalizers=[CLEANUP_FINALIZER, "backup.example.com/protect"], deletionTimestamp=T2)
    live = copy.deepcopy(seen)
    live["metadata"].update(finalizers=[CLEANUP_FINALIZER], resourceVersion="2")
    kube = ServerKube({("ClusterPolicy", "cluster-policy"): live})
    lifecycle = Lifecycle(kube, "gpu-operator", Applier(kube))  # type: ignore[arg-type]

    def let_go(policy: dict[str, Any]) -> bool:
        return lifecycle.cleanup_deleted(Snapshot(nodes={}, policies={"cluster-policy": copy.deepcopy(policy)},
                                                  owned={}, pods={}, revisions={}))  # fmt: skip

    assert not let_go(seen)
    assert kube.objects[("ClusterPolicy", "cluster-policy")]["metadata"]["finalizers"] == [CLEANUP_FINALIZER]
    assert let_go(kube.objects[("ClusterPolicy", "cluster-policy")])
    assert kube.objects[("ClusterPolicy", "cluster-policy")]["metadata"]["finalizers"] == []


# Reasons

READY = [StateResult("state-driver", "ready"), StateResult("state-dcgm", "disabled")]


def status(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "generation": 4,
        "namespace": "gpu-operator",
        "results": READY,
        "gpu_nodes": 3,
        "has_nfd": True,
        "previous": None,
        "now": T0,
    }
    args.update(kwargs)
    return policy_status(**args)


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st["conditions"]}


# A condition another controller puts on the status.
FOREIGN_CONDITION = {"type": "example.com/Audited", "status": "True", "reason": "PolicyChecked",
                     "message": "checked by the audit controller", "lastTransitionTime": T0}  # fmt: skip


def test_psa_labels_the_namespace_privileged_for_enforce_audit_and_warn() -> None:
    """Upstream (state_manager.go setPodSecurityLabelsForNamespace, podSecurityModes) sets all three pod-security
    labels to privileged. Ours set enforce alone, so where admission defaults audit or warn to baseline or
    restricted, every operand DaemonSet apply drew warnings and the audit log filled with violations."""
    from gpu_operator.lifecycle import Lifecycle

    patches: list[dict[str, Any]] = []

    class Kube(EchoKube):
        def get(self, kind: str, name: str, *_: Any, **__: Any) -> dict[str, Any]:
            return {"metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            patches.append(patch)
            return patch

    Lifecycle(Kube(), "gpu-operator", None).ensure_namespace(True)  # type: ignore[arg-type]
    assert patches == [{"metadata": {"labels": {f"pod-security.kubernetes.io/{mode}": "privileged"
                                                for mode in ("enforce", "audit", "warn")}}}]  # fmt: skip


def test_psa_labels_removed_from_the_namespace_are_put_back_once_operand_pods_go_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With psa.enabled the operand namespace must carry pod-security.kubernetes.io/{enforce,audit,warn}=privileged:
    the operands are privileged, and under a cluster default of baseline or restricted a new operand pod is refused
    without them. The namespace was read once per process and setting, so labels removed afterwards (a GitOps tool
    that prunes labels it did not write, an admin) stayed off until a restart, and every operand pod created
    meanwhile was refused. Upstream sets them on every reconcile (state_manager.go init). Now, while a DaemonSet of
    ours lacks pods, a pass reads the namespace again (at most every NAMESPACE_RECHECK_S) and puts them back; with
    every pod there (steady state) nothing is read."""
    import gpu_operator.lifecycle as lifecycle_mod
    from gpu_operator.lifecycle import NAMESPACE_RECHECK_S, PSA_LABELS, Lifecycle

    labels: dict[str, str] = dict(PSA_LABELS)
    gets: list[str] = []
    patches: list[dict[str, Any]] = []

    class Kube:
        def get(self, kind: str, name: str, *_: Any, **__: Any) -> dict[str, Any]:
            gets.append(name)
            return {"metadata": {"name": name, "labels": dict(labels)}}

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            patches.append(patch)
            labels.update(patch["metadata"]["labels"])
            return patch

    clock = [1000.0]
    monkeypatch.setattr(lifecycle_mod, "monotonic", lambda: clock[0])
    lifecycle = Lifecycle(Kube(), "gpu-operator", None)  # type: ignore[arg-type]
    lifecycle.ensure_namespace(True)  # first pass: the labels are there, nothing written
    assert (gets, patches) == (["gpu-operator"], [])
    labels.clear()  # removed by someone else between passes
    clock[0] += 10 * NAMESPACE_RECHECK_S
    lifecycle.ensure_namespace(True, pods_missing=False)  # steady state: no read
    assert (len(gets), patches) == (1, [])
    lifecycle.ensure_namespace(True, pods_missing=True)  # an operand pod refused: read again, labels put back
    assert (len(gets), patches) == (2, [{"metadata": {"labels": PSA_LABELS}}])
    clock[0] += NAMESPACE_RECHECK_S / 2
    lifecycle.ensure_namespace(True, pods_missing=True)  # not before NAMESPACE_RECHECK_S
    assert len(gets) == 2
    clock[0] += NAMESPACE_RECHECK_S
    lifecycle.ensure_namespace(True, pods_missing=True)  # still missing (pods not made yet): read, nothing to write
    assert (len(gets), len(patches)) == (3, 1)
    lifecycle.ensure_namespace(False, pods_missing=True)  # psa switched off: read once for the new setting, no labels
    clock[0] += 10 * NAMESPACE_RECHECK_S
    lifecycle.ensure_namespace(False, pods_missing=True)
    assert (len(gets), len(patches)) == (4, 1)


def test_a_pass_reads_the_namespace_again_only_while_a_daemonset_of_ours_lacks_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pass hands ensure_namespace what its snapshot's DaemonSets say: with every pod there nothing is read."""
    import gpu_operator.lifecycle as lifecycle_mod
    from gpu_operator.lifecycle import NAMESPACE_RECHECK_S, PSA_LABELS
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts, policy_object

    labels: dict[str, str] = {}

    class Kube(RecordingKube):
        def get(self, kind: str, name: str, *_: Any, **__: Any) -> dict[str, Any] | None:
            if kind != "Namespace":
                return None
            self._note("get", (kind, name))
            return {"metadata": {"name": name, "labels": dict(labels)}}

    clock = [1000.0]
    monkeypatch.setattr(lifecycle_mod, "monotonic", lambda: clock[0])
    pol = policy_object()
    pol["spec"]["psa"] = {"enabled": True}
    kube = Kube()
    reconciler = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]

    def namespace_reads(desired: int, current: int) -> int:
        clock[0] += NAMESPACE_RECHECK_S
        ds = {"kind": "DaemonSet", "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "gpu-operator"},
              "status": {"desiredNumberScheduled": desired, "currentNumberScheduled": current}}  # fmt: skip
        snap = Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": pol},
                        owned={("DaemonSet", "gpu-operator", "nvidia-device-plugin-daemonset"): ds}, pods={},
                        revisions={})  # fmt: skip
        reconciler.reconcile(snap)
        return sum(verb == "get" for verb, _ in kube.calls)

    assert namespace_reads(1, 1) == 1  # the first pass reads it (and labels it)
    assert [c for c in kube.calls if c[0] == "merge_patch" and c[1][0] == "Namespace"] == [
        ("merge_patch", ("Namespace", "gpu-operator", {"metadata": {"labels": PSA_LABELS}}))]  # fmt: skip
    assert namespace_reads(1, 1) == 1, "steady state: not read"
    assert namespace_reads(1, 0) == 2, "a pod missing: read again"


def test_pods_missing_is_a_daemonset_of_ours_on_fewer_nodes_than_it_should_be() -> None:
    """What makes a pass read the namespace again with psa.enabled (Lifecycle.ensure_namespace): a DaemonSet of ours
    whose status counts fewer nodes with a pod than nodes that should run one (an operand pod refused by admission
    leaves its node without one)."""
    from gpu_operator.lifecycle import pods_missing

    def ds(namespace: str, desired: int, current: int) -> dict[str, Any]:
        return {"kind": "DaemonSet", "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": namespace},
                "status": {"desiredNumberScheduled": desired, "currentNumberScheduled": current,
                           "numberReady": 0}}  # fmt: skip

    def owned(*objs: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}

    assert not pods_missing({}, "gpu-operator")
    assert not pods_missing(owned(ds("gpu-operator", 3, 3)), "gpu-operator"), "pods not ready yet, none missing"
    assert pods_missing(owned(ds("gpu-operator", 3, 2)), "gpu-operator")
    assert not pods_missing(owned(ds("elsewhere", 3, 2)), "gpu-operator")
    assert not pods_missing(owned({"kind": "DaemonSet", "metadata": {"name": "new", "namespace": "gpu-operator"}}),
                            "gpu-operator"), "no status yet"  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "state", "reason"),
    [
        ({}, "ready", "Reconciled"),
        ({"gpu_nodes": 0}, "ready", "NoGPUNodes"),
        ({"has_nfd": False}, "notReady", "NFDLabelsMissing"),
        ({"has_nfd": False, "gpu_nodes": 0}, "notReady", "NFDLabelsMissing"),
        ({"error": "boom"}, "notReady", "ReconcileFailed"),
        ({"error": "boom", "has_nfd": False}, "notReady", "ReconcileFailed"),
        (
            {
                "results": [
                    StateResult("state-driver", "ready"),
                    StateResult("state-device-plugin", "notReady", "1 of 3"),
                ]
            },
            "notReady",
            "OperandNotReady",
        ),
        (
            {"results": [StateResult("state-driver", "notReady", "x"), StateResult("state-device-plugin", "notReady")]},
            "notReady",
            "DriverNotReady",
        ),
        ({"settling": True}, "notReady", "OperandNotReady"),
    ],
)
def test_state_and_reason(kwargs: dict[str, Any], state: str, reason: str) -> None:
    st = status(**kwargs)
    assert st["state"] == state
    conds = conditions(st)
    assert conds["Ready"]["reason"] == reason
    assert conds["Error"]["reason"] == (reason if state == "notReady" else "Ready")


def test_messages_name_what_is_wrong() -> None:
    st = status(
        results=[
            StateResult("state-driver", "notReady", "nvidia-driver-daemonset-ubuntu22.04: 1 of 2 pods not ready"),
            StateResult("state-dcgm-exporter", "notReady"),
        ]
    )
    message = conditions(st)["Ready"]["message"]
    assert message == "state-driver: nvidia-driver-daemonset-ubuntu22.04: 1 of 2 pods not ready; state-dcgm-exporter"
    assert conditions(status(error="apply failed: forbidden"))["Error"]["message"] == "apply failed: forbidden"
    assert "NFD" in conditions(status(has_nfd=False))["Ready"]["message"]
    assert "3 GPU nodes" in conditions(status())["Ready"]["message"]


def test_an_unfinished_nvidiadriver_upgrade_is_said_with_upstreams_words_after_the_operands() -> None:
    from gpu_operator.status import UPGRADE_INCOMPLETE

    nodes = [f"n{i}" for i in range(7)]
    st = status(upgrading=nodes)
    assert (st["state"], conditions(st)["Ready"]["reason"]) == ("notReady", "OperandNotReady")
    message = f"{UPGRADE_INCOMPLETE}: n0, n1, n2, n3, n4 and 2 more"
    assert conditions(st)["Ready"]["message"] == "ClusterPolicy is not ready; " + message
    assert conditions(status(upgrading=["n0"], settling=True))["Ready"]["message"].endswith(": n0")  # not SETTLING
    driver = status(upgrading=nodes, results=[StateResult("state-driver", "notReady", "1 of 2 pods not ready")])
    assert conditions(driver)["Ready"]["reason"] == "DriverNotReady"
    assert conditions(driver)["Ready"]["message"] == "state-driver: 1 of 2 pods not ready; " + message
    assert conditions(status(upgrading=nodes, error="boom"))["Ready"]["reason"] == "ReconcileFailed"
    assert status(upgrading=nodes, gpu_nodes=0)["state"] == "ready"  # NoGPUNodes, as with operands not ready


def test_a_message_cut_to_its_limit_keeps_whole_entries_and_says_how_many_more() -> None:
    from gpu_operator.status import whole_entries

    parts = ["aaaaa", "bbbbb", "ccccc"]
    assert whole_entries(parts, 19) == "aaaaa; bbbbb; ccccc"  # fits: as it is
    assert whole_entries(parts, 18) == "aaaaa; and 2 more"  # "aaaaa; bbbbb; and 1 more" would not fit
    assert whole_entries([*parts, "ddddd"], 24) == "aaaaa; bbbbb; and 2 more"
    assert whole_entries(["a" * 50, "b"], 20) == "a" * 5 + "...; and 1 more"  # the first, cut, rather than none
    assert whole_entries(["a" * 50], 20) == "a" * 17 + "..."


def test_no_gpu_nodes_hides_not_ready_operands() -> None:
    st = status(gpu_nodes=0, results=[StateResult("state-driver", "notReady")])
    assert st["state"] == "ready" and conditions(st)["Ready"]["reason"] == "NoGPUNodes"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"gpu_nodes": 0}, {"has_nfd": False}, {"error": "x"}, {"results": [StateResult("s", "notReady")]}],
)
def test_ready_and_error_always_opposite(kwargs: dict[str, Any]) -> None:
    conds = conditions(status(**kwargs))
    assert {conds["Ready"]["status"], conds["Error"]["status"]} == {"True", "False"}
    assert (conds["Ready"]["status"] == "True") == (status(**kwargs)["state"] == "ready")


@pytest.mark.parametrize("kwargs", [{}, {"gpu_nodes": 0}])
def test_error_false_is_upstreams_ready_reason_with_no_message(kwargs: dict[str, Any]) -> None:
    """Upstream's clusterPolicyUpdater (internal/conditions/clusterpolicy.go, updateConditions) writes Error
    {False, reason Ready} with no message whenever Ready is True, as our NVIDIADriver status does. The
    ClusterPolicy's Error False carried Ready's reason and message instead ("Reconciled", "all operands ready on 3
    GPU nodes"; "NoGPUNodes"), so a check written against upstream's Error reason read another value."""
    error = conditions(status(**kwargs))["Error"]
    assert (error["status"], error["reason"], error["message"]) == ("False", "Ready", "")


def test_observed_generation_on_status_and_every_condition() -> None:
    st = status(generation=7)
    assert st["observedGeneration"] == 7
    assert [c["observedGeneration"] for c in st["conditions"]] == [7, 7]


def test_status_carries_namespace_and_per_state_results() -> None:
    st = status(results=[StateResult("state-driver", "notReady", "why"), StateResult("state-dcgm", "disabled")])
    assert st["namespace"] == "gpu-operator"
    assert st["states"] == [
        {"name": "state-driver", "state": "notReady", "message": "why"},
        {"name": "state-dcgm", "state": "disabled", "message": ""},
    ]


def test_status_fits_the_crd_status_schema() -> None:
    """The status model is what the CRD's status schema is generated from: nothing written may be pruned."""
    for st in (
        status(),
        status(error="x"),
        ignored_status(generation=1, namespace="ns", active="a", previous=None, now=T0),
        status(unsupported=FIELDS),
        status(unsupported=[]),
        status(error="invalid spec: x", error_reason="InvalidSpec"),
        status(extra={"upgrade": {"total": 2, "inProgress": 1, "done": 1, "failed": 0, "pending": 0, "available": 0,
                                  "waiting": [{"node": "n1", "state": "drain-required", "reason": "draining"}]}}),
    ):  # fmt: skip
        model = ClusterPolicyStatus.model_validate(st)
        assert model.model_dump(by_alias=True, exclude_unset=True) == st


# Transitions


def test_last_transition_time_kept_while_status_value_holds() -> None:
    first = status(now=T0)
    second = status(now=T1, previous=first, results=[StateResult("state-driver", "ready", "different message")])
    assert [c["lastTransitionTime"] for c in second["conditions"]] == [T0, T0]
    not_ready = status(now=T1, previous=first, has_nfd=False)
    assert [c["lastTransitionTime"] for c in not_ready["conditions"]] == [T1, T1]


def test_reason_change_without_status_change_keeps_the_time() -> None:
    first = status(now=T0, has_nfd=False)
    second = status(now=T1, previous=first, error="boom")
    assert conditions(second)["Ready"]["reason"] == "ReconcileFailed"
    assert conditions(second)["Ready"]["lastTransitionTime"] == T0


def test_previous_condition_without_time_gets_now() -> None:
    previous = {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}]}
    st = status(now=T1, previous=previous)
    assert conditions(st)["Ready"]["lastTransitionTime"] == T1
    assert conditions(st)["Error"]["lastTransitionTime"] == T1


def test_status_changed_ignores_timestamps() -> None:
    first = status(now=T0)
    again = status(now=T1)  # same content, a fresh transition time
    assert first["conditions"][0]["lastTransitionTime"] != again["conditions"][0]["lastTransitionTime"]
    assert not status_changed(first, again)
    assert status_changed(first, status(now=T1, generation=5))
    assert status_changed(first, status(now=T1, gpu_nodes=0))
    assert status_changed(first, status(now=T1, results=[StateResult("state-driver", "notReady")]))
    assert status_changed(None, first)
    assert status_changed({}, first)


def test_steady_state_writes_nothing() -> None:
    """Recomputing the status from its own previous value gives an identical status: no write."""
    first = status(now=T0)
    second = status(now=T1, previous=first)
    assert second == first
    assert not status_changed(first, second)


# Fields set but not acted on

CA = "custom CA certificates are not mounted into the driver container yet"
VM = "VM-workload operands are not rendered yet"
FIELDS = [("spec.driver.certConfig.name", CA), ("spec.vfioManager.enabled", VM), ("spec.vgpuManager.enabled", VM)]


def test_unsupported_fields_condition_names_every_field_by_reason() -> None:
    cond = conditions(status(unsupported=FIELDS, generation=3))["UnsupportedFields"]
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "FieldsNotSupported", 3)
    assert cond["message"] == (
        f"set but not acted on by this operator: spec.driver.certConfig.name ({CA}); "
        f"spec.vfioManager.enabled, spec.vgpuManager.enabled ({VM})"
    )
    none = conditions(status(unsupported=[]))["UnsupportedFields"]
    assert (none["status"], none["reason"]) == ("False", "AllFieldsSupported")


def test_unsupported_fields_leave_the_state_and_ready_error_pair_alone() -> None:
    for kwargs in ({}, {"error": "boom"}, {"gpu_nodes": 0}, {"results": [StateResult("s", "notReady")]}):
        plain, reported = status(**kwargs), status(**kwargs, unsupported=FIELDS)
        assert reported["state"] == plain["state"]
        assert reported["conditions"][:2] == plain["conditions"]
        assert [c["type"] for c in reported["conditions"]] == ["Ready", "Error", "UnsupportedFields"]


def test_many_unsupported_fields_are_counted_not_all_named() -> None:
    many = [(f"spec.f{i}", VM) for i in range(100)]
    message = conditions(status(unsupported=many))["UnsupportedFields"]["message"]
    assert "spec.f39 (" in message and "spec.f40" not in message and message.endswith("; and 60 more")


def test_unsupported_fields_condition_transitions() -> None:
    first = status(now=T0, unsupported=FIELDS)
    same = status(now=T1, previous=first, unsupported=FIELDS)
    assert same == first and not status_changed(first, same)
    fewer = status(now=T1, previous=first, unsupported=FIELDS[:1])
    assert status_changed(first, fewer)
    assert conditions(fewer)["UnsupportedFields"]["lastTransitionTime"] == T0  # still True
    cleared = status(now=T2, previous=fewer, unsupported=[])
    assert conditions(cleared)["UnsupportedFields"]["lastTransitionTime"] == T2


def test_unsupported_fields_condition_when_the_spec_cannot_be_read() -> None:
    first = status(now=T0, unsupported=FIELDS)
    invalid = status(now=T1, previous=first, error="invalid spec: spec.mig.strategy: bad", error_reason="InvalidSpec")
    cond = conditions(invalid)["UnsupportedFields"]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("Unknown", "InvalidSpec", T1)
    # A failed pass that never read the spec keeps what the last one found.
    failed = status(now=T1, previous=first, error="apply failed")
    assert conditions(failed)["UnsupportedFields"] == conditions(first)["UnsupportedFields"]
    assert "UnsupportedFields" not in conditions(status(error="apply failed"))


# Ignored policies


def test_ignored_status() -> None:
    st = ignored_status(generation=2, namespace="gpu-operator", active="cluster-policy", previous=None, now=T0)
    assert st["state"] == "ignored"
    assert st["namespace"] == "gpu-operator"
    assert st["observedGeneration"] == 2
    assert st["states"] == []
    conds = conditions(st)
    assert conds["Ready"]["status"] == "False" and conds["Error"]["status"] == "True"
    assert conds["Ready"]["reason"] == conds["Error"]["reason"] == "Ignored"
    assert "cluster-policy" in conds["Ready"]["message"]
    assert [c["observedGeneration"] for c in st["conditions"]] == [2, 2]


def test_ignored_status_is_stable() -> None:
    first = ignored_status(generation=2, namespace="ns", active="a", previous=None, now=T0)
    second = ignored_status(generation=2, namespace="ns", active="a", previous=first, now=T1)
    assert second == first
    assert not status_changed(first, second)
    assert status_changed(first, ignored_status(generation=2, namespace="ns", active="b", previous=first, now=T1))


def test_the_ignored_status_does_not_call_a_policy_created_in_the_same_second_older() -> None:
    """REFERENCE §1: the active ClusterPolicy is the oldest by creationTimestamp, the name breaking a tie (after the
    one already acted on, active_policy). Of two policies created in the same second the ignored one's Ready message
    said "ClusterPolicy <active> is older and active", which is false: their Age columns are equal. Now it says the
    active one was created in the same second and is the one acted on; "is older" stays for one that is. Review
    readiness #2."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts

    active, second, later = policy_object(), policy_object(), policy_object()
    second["metadata"].update(name="z-second", uid="u2")  # the same creationTimestamp; the name loses the tie
    later["metadata"].update(name="a-later", uid="u3", creationTimestamp="2099-01-01T00:00:00Z")
    assert active["metadata"]["creationTimestamp"] == second["metadata"]["creationTimestamp"]
    kube = EchoKube()
    Reconciler(kube, "gpu-operator").reconcile(Snapshot(  # type: ignore[arg-type]
        nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": active, "z-second": second, "a-later": later},
        owned={}, pods={}, revisions={}))  # fmt: skip
    messages = {}
    for name in ("z-second", "a-later"):
        status = kube.statuses[("ClusterPolicy", name)]
        assert status["state"] == "ignored"
        messages[name] = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert messages == {
        "z-second": "ClusterPolicy cluster-policy was created in the same second and is the one acted on; only one "
                    "ClusterPolicy is used, so this one is ignored",
        "a-later": "ClusterPolicy cluster-policy is older and active; only one ClusterPolicy is used, so this one is "
                   "ignored",
    }  # fmt: skip


# Writing: progress at most every PROGRESS_INTERVAL_S, anything else at once


class _Recorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        self.patches.append(patch["status"])
        return {}

    def __call__(self, obj: dict[str, Any], etype: str, reason: str, message: str, changed: bool = False,
                 durable: bool = False) -> None:
        self.events.append((etype, reason))


def _rollout(ready_pods: int, ready: bool = False) -> dict[str, Any]:
    message = "" if ready else f"{ready_pods}/1000 driver pods ready"
    results = [StateResult("state-driver", "ready" if ready else "notReady", message)]
    return policy_status(generation=1, namespace="gpu-operator", results=results, gpu_nodes=1000, has_nfd=True,
                         previous=None, now=T0)  # fmt: skip


def test_progress_is_written_at_most_every_interval_and_a_state_change_at_once() -> None:
    from gpu_operator.status_writer import PROGRESS_INTERVAL_S, StatusWriter

    now = [0.0]
    rec = _Recorder()
    writer = StatusWriter(rec, rec, clock=lambda: now[0])  # type: ignore[arg-type]
    pol = policy("cluster-policy", T0)
    assert writer.write(pol, _rollout(10))  # the first write goes out
    pol["status"] = _rollout(10)
    now[0] = 1.0
    assert not writer.write(pol, _rollout(20)), "progress only, too soon: held back"
    assert writer.retry_in("cluster-policy") == PROGRESS_INTERVAL_S - 1.0, "the operator passes again then"
    assert writer.write(pol, _rollout(10)), "no change: nothing to hold"
    now[0] = PROGRESS_INTERVAL_S + 0.1
    assert writer.write(pol, _rollout(30))
    pol["status"] = _rollout(30)
    now[0] += 0.1
    assert writer.write(pol, _rollout(1000, ready=True)), "ready is a state change: at once"
    assert [p["state"] for p in rec.patches] == ["notReady", "notReady", "ready"]
    assert "30/1000" in rec.patches[1]["states"][0]["message"]
    assert rec.events[-1][0] == "Normal"


def test_notready_while_our_own_changes_settle_is_a_normal_event() -> None:
    """Switching a component off flipped a ready ClusterPolicy to notReady "changes applied; waiting to observe
    their effect" for one pass with a Warning Event: the admin's own change read as a warning."""
    from gpu_operator.status_writer import StatusWriter

    rec = _Recorder()
    writer = StatusWriter(rec, rec, clock=lambda: 0.0)  # type: ignore[arg-type]
    pol = policy("cluster-policy", T0)
    pol["status"] = _rollout(1, ready=True)
    results = [StateResult("state-driver", "ready", "")]
    settling = policy_status(generation=2, namespace="gpu-operator", results=results, gpu_nodes=1000, has_nfd=True,
                             previous=pol["status"], now=T0, settling=True)  # fmt: skip
    assert writer.write(pol, settling)
    assert rec.patches[-1]["state"] == "notReady" and rec.events[-1] == ("Normal", "OperandNotReady")
    pol["status"] = _rollout(1, ready=True)
    assert writer.write(pol, _rollout(10))
    assert rec.events[-1] == ("Warning", "DriverNotReady"), "an operand not ready is still a warning"


def test_an_operand_failing_after_a_settling_pass_gets_a_warning() -> None:
    """Events were posted only when status.state changed: after the settling pass (notReady, a Normal Event) an
    operand found not ready the pass after (a node joined, its labels patched; its driver cannot start) left the
    state notReady and posted nothing, so the episode's only Event was the Normal one."""
    from gpu_operator.status_writer import StatusWriter

    rec = _Recorder()
    writer = StatusWriter(rec, rec, clock=lambda: 0.0)  # type: ignore[arg-type]
    pol = policy("cluster-policy", T0)
    pol["status"] = _rollout(1, ready=True)
    settling = policy_status(generation=1, namespace="gpu-operator", results=[StateResult("state-driver", "ready")],
                             gpu_nodes=1000, has_nfd=True, previous=pol["status"], now=T0, settling=True)  # fmt: skip
    assert writer.write(pol, settling)
    pol["status"] = settling
    failing = policy_status(generation=1, namespace="gpu-operator", now=T0, gpu_nodes=1000, has_nfd=True,
                            results=[StateResult("state-driver", "notReady", "1 of 1001 pods unavailable")],
                            previous=settling)  # fmt: skip
    assert writer.write(pol, failing)
    assert rec.events == [("Normal", "OperandNotReady"), ("Warning", "DriverNotReady")]
    pol["status"] = failing
    assert writer.write(pol, _rollout(10)) is not None
    assert len(rec.events) == 2, "notReady to notReady after that: no Event"


def test_an_nvidiadrivers_progress_is_paced_on_its_own_and_posts_no_event() -> None:
    # Under NVIDIADrivers each pass of a rollout rewrote each one's status ("N of M driver pods ready"): 518 writes
    # in a 1,000-node rollout.
    from gpu_operator import nvidiadriver
    from gpu_operator.status_writer import PROGRESS_INTERVAL_S, StatusWriter

    now = [0.0]
    rec = _Recorder()
    kinds: list[str] = []
    patch = rec.merge_patch

    def merge_patch(kind: str, name: str, body: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        kinds.append(kind)
        return patch(kind, name, body, sub)

    rec.merge_patch = merge_patch  # type: ignore[method-assign]
    writer = StatusWriter(rec, rec, clock=lambda: now[0])  # type: ignore[arg-type]
    driver = nvidiadriver.NVIDIADriver.from_object({"metadata": {"name": "pool-b", "uid": "u", "generation": 1},
                                                    "spec": {}})  # fmt: skip
    found = nvidiadriver.assign([], [driver])

    def status(ready: bool, why: str = "") -> dict[str, Any]:
        return nvidiadriver.driver_status(driver, found, (ready, why), "gpu-operator", obj.get("status"), T0)

    obj: dict[str, Any] = {"metadata": {"name": "pool-b"}}
    assert writer.write(obj, status(False, "10 of 500 pods ready"), quiet=True, kind="NVIDIADriver")
    obj["status"] = status(False, "10 of 500 pods ready")
    now[0] = 1.0
    assert not writer.write(obj, status(False, "20 of 500 pods ready"), quiet=True, kind="NVIDIADriver")
    assert writer.retry_in("pool-b", "NVIDIADriver") == PROGRESS_INTERVAL_S - 1.0
    assert writer.retry_in("pool-b") == 0.0  # a ClusterPolicy of that name is paced apart
    assert writer.write(obj, status(True), quiet=True, kind="NVIDIADriver"), "ready is a state change: at once"
    assert kinds == ["NVIDIADriver", "NVIDIADriver"] and not rec.events
    assert rec.patches[-1]["state"] == "ready"


class _Events:
    """Creates Events (the first `refuse` of them refused, as API Priority and Fairness or a webhook may)."""

    def __init__(self, refuse: int = 0) -> None:
        self.created: list[dict[str, Any]] = []
        self.refuse = refuse

    def create(self, obj: dict[str, Any], retry: bool = True) -> dict[str, Any]:
        assert not retry, "a pass does not wait on a throttled API server for its Events"
        if self.refuse:
            self.refuse -= 1
            raise ApiError(429, '{"message": "Too many requests"}', "POST events")
        self.created.append(obj)
        return obj

    def merge_patch(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {}


class _EventStore:
    """Holds Events as the API server does: a create gets a name from its generateName; a merge patch of one by
    name changes it in place (404 when it is gone). Other merge patches (a status write) answer with the patch."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0
        self._names = itertools.count(1)

    def create(self, obj: dict[str, Any], retry: bool = True) -> dict[str, Any]:
        assert not retry, "a pass does not wait on a throttled API server for its Events"
        self.writes += 1
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["name"] = f"{meta['generateName']}{next(self._names)}"
        self.events[(meta["namespace"], meta["name"])] = obj
        return obj

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
                    sub: str | None = None, retry: bool = True) -> dict[str, Any]:  # fmt: skip
        if kind != "Event":
            return patch
        assert not retry, "a pass does not wait on a throttled API server for its Events"
        self.writes += 1
        if (namespace or "", name) not in self.events:
            raise ApiError(404, json.dumps({"message": f'events "{name}" not found'}), f"PATCH events {name}")
        self.events[(namespace or "", name)].update(patch)
        return self.events[(namespace or "", name)]

    def counts(self, reason: str) -> list[int]:
        return [e["count"] for e in self.events.values() if e["reason"] == reason]


def test_an_event_that_recurs_gets_its_count_bumped_not_a_new_event() -> None:
    """A cause that came back with the same reason and message (a ClusterPolicy flapping notReady/ready as an operand
    crash-loops: the status writer posts on every state change) was posted as a new Event each time, count 1: N
    flaps left N identical Events. client-go's EventCorrelator (upstream's recorder) patches the Event already there
    instead, so `kubectl get events` shows one line `x3`. Now a recurrence within SERIES_WINDOW_S of the last bumps
    its count and lastTimestamp, one write as the create was."""
    store = _EventStore()
    clock = [0.0]
    record = EventRecorder(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    pol = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "cluster-policy", "uid": "u"}}
    down = "state notReady: state-driver: nvidia-driver-daemonset: 1 of 1 pods unavailable"
    for _ in range(3):  # notReady, ready, notReady, ready ... as the status writer posts them (changed=True)
        clock[0] += 30
        record(pol, "Warning", "DriverNotReady", down, changed=True, durable=True)
        clock[0] += 30
        record(pol, "Normal", "Reconciled", "state ready: all operands ready on 1 GPU nodes", changed=True,
               durable=True)  # fmt: skip
    same = [e for e in store.events.values() if e["reason"] == "DriverNotReady" and e["message"] == down]
    assert [e["count"] for e in same] == [3], f"{len(same)} Events with counts {[e['count'] for e in same]}"
    assert store.counts("Reconciled") == [3] and store.writes == 6, "one write per post, as before"
    assert same[0]["firstTimestamp"] <= same[0]["lastTimestamp"]
    # Another message, type or object is another Event.
    record(pol, "Warning", "DriverNotReady", down + " on gpu-2", changed=True)
    record({**pol, "metadata": {"name": "cluster-policy", "uid": "u-2"}}, "Warning", "DriverNotReady", down,
           changed=True)  # fmt: skip
    assert sorted(store.counts("DriverNotReady")) == [1, 1, 3]


def test_an_event_recurring_after_the_window_or_once_expired_is_a_new_event() -> None:
    """The count is bumped only within SERIES_WINDOW_S of the last post (a recurrence later is a new Event), and a
    bump on an Event the API server has expired (404) creates a new one instead of losing it."""
    from gpu_operator.events import SERIES_WINDOW_S

    store = _EventStore()
    clock = [0.0]
    record = EventRecorder(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1", "uid": "n-1"}}
    record(node, "Warning", "MIGConfigRefused", "all-1g.18gb: not on this GPU", changed=True)
    clock[0] += SERIES_WINDOW_S
    record(node, "Warning", "MIGConfigRefused", "all-1g.18gb: not on this GPU", changed=True)
    assert store.counts("MIGConfigRefused") == [1, 1], "past the window: a new Event"
    store.events.clear()  # expired (the API server's --event-ttl)
    record(node, "Warning", "MIGConfigRefused", "all-1g.18gb: not on this GPU", changed=True)
    assert store.counts("MIGConfigRefused") == [1] and store.writes == 4, "the 404'd patch, then a create"
    record(node, "Warning", "MIGConfigRefused", "all-1g.18gb: not on this GPU", changed=True)
    assert store.counts("MIGConfigRefused") == [2]
    record.forget("Node", "gpu-1")  # the node is gone: what was posted on it too
    record(node, "Warning", "MIGConfigRefused", "all-1g.18gb: not on this GPU", changed=True)
    assert sorted(store.counts("MIGConfigRefused")) == [1, 2]


class _NoPatchEventStore(_EventStore):
    """An API server under a ClusterRole that grants events `create` but not `patch` (the one from before counts
    were bumped: an operator image upgraded without its chart/manifest, or a ClusterRole kept by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = 0

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
                    sub: str | None = None, retry: bool = True) -> dict[str, Any]:  # fmt: skip
        self.patches += 1
        raise ApiError(403, json.dumps({"message": f'events "{name}" is forbidden: cannot patch resource "events"'}),
                       f"PATCH events {name}")  # fmt: skip


def test_an_event_recurring_when_its_count_patch_is_forbidden_is_a_new_event(caplog: pytest.LogCaptureFixture) -> None:
    """Review diffR #3: the count bump fell back to a create only on 404, so under an events ClusterRole without
    `patch` the 403 dropped the recurrence (a ClusterPolicy notReady again 5 minutes on showed no Event for it, and
    the refusal held that Event back REFUSED_RETRY_S more). Now a forbidden patch creates a new Event, as before
    counts were bumped, says so once in the log, and no patch is tried again."""
    store = _NoPatchEventStore()
    clock = [0.0]
    record = EventRecorder(store, clock=lambda: clock[0])  # type: ignore[arg-type]
    pol = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "cluster-policy", "uid": "u"}}
    down = "state notReady: state-driver: nvidia-driver-daemonset: 1 of 1 pods unavailable"
    up = "state ready: all operands ready on 1 GPU nodes"
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        for _ in range(3):  # notReady, ready, notReady, ready ... each within the window of the last
            record(pol, "Warning", "DriverNotReady", down, changed=True, durable=True)
            clock[0] += 60
            record(pol, "Normal", "Reconciled", up, changed=True, durable=True)
            clock[0] += 240
    assert (store.counts("DriverNotReady"), store.counts("Reconciled")) == ([1, 1, 1], [1, 1, 1])
    assert store.patches == 1, "one patch forbidden, none tried after it"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "grant patch on events" in warnings[0], warnings


def test_an_event_the_api_server_refused_is_posted_again_after_a_while() -> None:
    """The recorder took an event for posted before the create was answered: one refused was never posted again
    while its message stayed the same (the ClusterPolicy's Warning for that cause lost for good). Then one refused
    was posted again on every pass (a quota on Events refusing it each time: a write per pass for good)."""
    from gpu_operator.events import REFUSED_RETRY_S

    kube = _Events(refuse=1)
    now = [0.0]
    record = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    pol = {**policy("cluster-policy", T0), "metadata": {"name": "cluster-policy", "uid": "u"}}
    for _ in range(3):  # refused, then not sent again in the passes that follow
        record(pol, "Warning", "DriverNotReady", "state notReady: driver not ready")
        now[0] += 10
    assert kube.refuse == 0 and not kube.created
    now[0] += REFUSED_RETRY_S
    for _ in range(3):
        record(pol, "Warning", "DriverNotReady", "state notReady: driver not ready")
    assert len(kube.created) == 1, "sent again after a while and posted, then a repeat dropped"


def test_a_refusal_on_an_object_does_not_hold_back_events_on_the_one_created_again_under_its_name() -> None:
    """The refusal back-off was kept by kind and name: an NVIDIADriver whose Warning was refused (a quota), deleted
    and created again with the same conflict, got no Warning for REFUSED_RETRY_S although it is another object."""
    kube = _Events(refuse=1)
    now = [0.0]
    record = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    first = {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": "d", "uid": "u-1"}}
    again = {**first, "metadata": {"name": "d", "uid": "u-2"}}
    record(first, "Warning", "Conflict", "node h-0 is selected by d and e")
    now[0] += 10
    record(first, "Warning", "Conflict", "node h-0 is selected by d and e")  # the same object: held back
    assert kube.refuse == 0 and not kube.created
    record(again, "Warning", "Conflict", "node h-0 is selected by d and e")
    assert [e["involvedObject"]["uid"] for e in kube.created] == ["u-2"]


def test_the_recorder_posts_on_an_object_created_again_under_the_same_name() -> None:
    """The recorder remembered the last message per kind and name, not per object: an NVIDIADriver deleted and
    created again under the same name with the same conflict got no Warning (its new, empty status differs, so the
    reconciler asks for it), and `kubectl describe` on it (events selected by the object's uid) showed none."""
    kube = _Events()
    record = EventRecorder(kube)  # type: ignore[arg-type]
    first = {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": "d", "uid": "u-1"}}
    again = {**first, "metadata": {"name": "d", "uid": "u-2"}}
    for obj in (first, again, again):
        record(obj, "Warning", "Conflict", "node h-0 is selected by d and e")
    assert [e["involvedObject"]["uid"] for e in kube.created] == ["u-1", "u-2"]
    # A reference without a uid (a Node's, by name) is the object last posted on.
    by_name = {"kind": "NVIDIADriver", "metadata": {"name": "d"}}
    record(by_name, "Warning", "Conflict", "node h-0 is selected by d and e")
    assert len(kube.created) == 2


def test_node_events_carry_a_uid_so_kubectl_describe_node_shows_them() -> None:
    """The Node references the passes build have a name only (reconciler.py's driver-compat and InvalidWorkloadConfig
    Warnings, upgrade/orchestrate.py's GPUDriverUpgrade Events, upgrade/adapter.py's with `"uid": None`): their
    Events went out with involvedObject.uid null. `kubectl describe node` selects a node's Events by uid, twice:
    the Node's uid (controllers) and its name (the kubelet's convention, k8s.io/kubectl describe.go); a null uid
    matches neither, so none showed there. Now a Node without a uid is posted with uid = its name, as the kubelet
    does; a Node's own uid is kept, and the name-as-uid is no uid for the dedup (posted once)."""
    kube = _Events()
    record = EventRecorder(kube)  # type: ignore[arg-type]
    by_name = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-7"}}  # as reconciler.py builds it
    none = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-7", "uid": None}}  # as adapter.py
    record(by_name, "Normal", "GPUDriverUpgrade", "wait-for-jobs-required: waiting for 2 pods")
    record(none, "Normal", "GPUDriverUpgrade", "wait-for-jobs-required: waiting for 2 pods")  # said already
    record(none, "Warning", "InvalidWorkloadConfig", "invalid nvidia.com/gpu.workload.config 'vm-passthru'")
    own = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-8", "uid": "node-uid-8"}}
    record(own, "Warning", "InvalidWorkloadConfig", "invalid nvidia.com/gpu.workload.config 'vm-passthru'")
    pol = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "cluster-policy"}}
    record(pol, "Warning", "DriverNotReady", "state notReady: driver not ready")  # not a Node: no name-as-uid
    assert [(e["involvedObject"]["name"], e["involvedObject"]["uid"]) for e in kube.created] == [
        ("gpu-node-7", "gpu-node-7"), ("gpu-node-7", "gpu-node-7"), ("gpu-node-8", "node-uid-8"),
        ("cluster-policy", None)]  # fmt: skip


def test_a_state_change_that_comes_back_gets_its_event_again() -> None:
    """The recorder dropped an event that said what the last one with its reason said, however long ago and
    whatever came between: notReady (DriverNotReady), ready, then the same notReady again posted the Warning only
    the first time (`kubectl describe clusterpolicy` showed no event for the second outage). The status writer
    posts only on a real state change, and that is posted (within SERIES_WINDOW_S: the first Event's count bumped)."""
    from gpu_operator.status_writer import StatusWriter

    def status(state: str, reason: str, message: str) -> dict[str, Any]:
        ready = {"type": "Ready", "status": "True" if state == "ready" else "False", "reason": reason,
                 "message": message}  # fmt: skip
        return {"state": state, "conditions": [ready]}

    kube = _EventStore()
    now = [0.0]
    record = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    writer = StatusWriter(kube, record, clock=lambda: now[0])  # type: ignore[arg-type]
    pol = {**policy("cluster-policy", T0), "metadata": {"name": "cluster-policy", "uid": "u"}}
    for s in (status("notReady", "DriverNotReady", "driver pods not ready on gpu-1"),
              status("ready", "Reconciled", "all operands ready"),
              status("notReady", "DriverNotReady", "driver pods not ready on gpu-1")):  # fmt: skip
        now[0] += 60
        writer.write(pol, s)
        writer.write({**pol, "status": s}, s)  # written: nothing changed, nothing posted
        pol = {**pol, "status": s}
    # the second outage is posted: the same Event as the first, its count bumped (client-go's correlator)
    assert kube.counts("DriverNotReady") == [2] and kube.counts("Reconciled") == [1] and kube.writes == 3


@pytest.mark.parametrize("invalid", [False, True], ids=["not-ready", "invalid-spec"])
def test_the_metric_says_what_the_status_says_before_the_status_is_written(invalid: bool) -> None:
    # Whoever reads the written status and then /metrics gets the same answer (a race seen in CI).
    from gpu_operator import metrics
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    if invalid:
        pol["spec"]["driver"]["enabled"] = "perhaps"
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    seen: list[tuple[str, float]] = []
    write = r.status.write

    def recording(policy: dict[str, Any], status: dict[str, Any], quiet: bool = False) -> bool:
        seen.append((status["state"], metrics.reconciliation_status._value.get()))
        return write(policy, status, quiet)

    r.status.write = recording  # type: ignore[method-assign]
    metrics.reconciliation_status.set(1)  # ready after an earlier pass
    out = r.reconcile(Snapshot(nodes={}, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={}))
    assert out.ready is False
    assert seen == [("notReady", 0.0)]


def test_the_clusterpolicys_status_is_written_before_the_nvidiadrivers() -> None:
    # At 5,000 nodes an NVIDIADriver's status patch took 0.3 s: written first, it held back the ready state.
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    pol["spec"]["driver"]["useNvidiaDriverCRD"] = True
    driver = {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
              "metadata": {"name": "default", "uid": "d1", "generation": 1, "resourceVersion": "2"},
              "spec": {"default": True}}  # fmt: skip
    kinds: list[str] = []

    class Kube(EchoKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            if "status" in patch:
                kinds.append(kind)
            return patch

    r = Reconciler(Kube(), "gpu-operator")  # type: ignore[arg-type]
    r.reconcile(Snapshot(nodes={}, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={},
                         nvidia_drivers={"default": driver}))  # fmt: skip
    assert kinds == ["ClusterPolicy", "NVIDIADriver"]


def _driver_pod(node: str, rev: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"drv-{node}", "labels": {"controller-revision-hash": rev,
                                                      "nvidia.com/gpu-operator.state": "state-driver"}},
        "node": node, "owner": "nvidia-driver-daemonset",
        "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True}]}, "ready": True,
    }  # fmt: skip


def test_refused_node_keeping_its_old_driver_does_not_hold_the_driver_state_not_ready() -> None:
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    ns = "gpu-operator"
    """A driver pod on a node the version matrix refuses is kept at its old revision on purpose and does not
    count. n3 is refused (version matrix) but keeps gpu.deploy.driver=true and its old driver pod, so the
    controller counts 3 desired, 0 unavailable. The two other nodes run the newest revision, ready."""
    ds = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "nvidia-driver-daemonset", "namespace": ns, "generation": 2,
                     "labels": {"nvidia.com/gpu-operator.state": "state-driver"}},
        "spec": {"updateStrategy": {"type": "OnDelete"}, "template": {"spec": {}}},
        "status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                   "numberAvailable": 3, "numberReady": 3, "updatedNumberScheduled": 2, "numberUnavailable": 0},
    }  # fmt: skip
    pods = {p["metadata"]["name"]: p for p in (_driver_pod("n1", "new"), _driver_pod("n2", "new"),
                                               _driver_pod("n3", "old"))}  # fmt: skip
    revisions = {
        f"r{i}": {"metadata": {"labels": {"controller-revision-hash": h}}, "revision": i,
                  "owner": "nvidia-driver-daemonset"}
        for i, h in ((1, "old"), (2, "new"))
    }  # fmt: skip
    key = ("DaemonSet", ns, "nvidia-driver-daemonset")
    snap = Snapshot(nodes={}, policies={}, owned={key: ds}, pods=pods, revisions=revisions)
    r = Reconciler(EchoKube(), ns)  # type: ignore[arg-type]
    result = r._daemonsets_ready("state-driver", {key}, {key: ds}, snap, snap.pod_index.by_owner, {"n3"},
                                 lambda spec: 3)  # fmt: skip
    assert result.state == "ready", result.message  # was "nvidia-driver-daemonset: 2 of 3 pods exist"
    # Not refused, n3's old pod holds the state (its upgrade is to come).
    result = r._daemonsets_ready("state-driver", {key}, {key: ds}, snap, snap.pod_index.by_owner, set(),
                                 lambda spec: 3)  # fmt: skip
    assert result.state == "notReady" and "1 pod runs an old revision" in result.message
    # Refused, with a pod of the rest missing: that still shows.
    del pods["drv-n2"]
    snap = Snapshot(nodes={}, policies={}, owned={key: ds}, pods=pods, revisions=revisions)
    result = r._daemonsets_ready("state-driver", {key}, {key: ds}, snap, snap.pod_index.by_owner, {"n3"},
                                 lambda spec: 3)  # fmt: skip
    assert result.state == "notReady" and "1 of 2 pods exist" in result.message


def test_a_desired_daemonset_that_does_not_exist_is_not_ready() -> None:
    """A state's DaemonSet missing from the cluster (its create refused, say) was skipped: the state counted as
    ready with no DaemonSet at all. Upstream's getSyncState: an object not found is not ready."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    key = ("DaemonSet", "gpu-operator", "nvidia-driver-daemonset-ubuntu22.04")
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    result = r._daemonsets_ready("state-driver", {key}, {}, snap, {}, set(), lambda spec: 1)
    assert (result.state, result.message) == ("notReady", "nvidia-driver-daemonset-ubuntu22.04: not created yet")


def test_a_pass_that_leaves_the_policy_not_ready_counts_as_failed_not_as_a_success() -> None:
    # Upstream's metrics: reconciliation_last_success_ts_seconds moves only when the policy is ready, and
    # reconciliation_failed counts every pass that is not (an alert "no success for N minutes" then fires).
    from gpu_operator import metrics
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts

    pol = policy_object()
    metrics.reconciliation_last_success_ts_seconds.set(0)
    failed = metrics.reconciliation_failed_total._value.get()
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    out = r.reconcile(Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": pol}, owned={}, pods={},
                               revisions={}))  # fmt: skip
    assert out.ready is False
    assert metrics.reconciliation_last_success_ts_seconds._value.get() == 0
    assert metrics.reconciliation_failed_total._value.get() == failed + 1
    assert not out.error, "operands rolling out are no error: the ordinary 5 s recheck, no backoff"


def test_a_pass_whose_writes_the_api_server_refuses_is_an_error_the_runtime_backs_off_from() -> None:
    """A refused apply (a webhook, a quota, RBAC) made the pass notReady like operands still rolling out, so the
    runtime tried again every 5 s for ever; upstream's step() returns the error and controller-runtime backs off.
    Now the pass says so (Outcome.error), and the runtime backs off (runtime.failed_retry)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts

    class Refusing(EchoKube):
        def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            if obj["kind"] == "DaemonSet":
                raise ApiError(403, '{"message": "admission webhook denied the request"}', "apply")
            return obj

    out = Reconciler(Refusing(), "gpu-operator").reconcile(  # type: ignore[arg-type]
        Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": policy_object()}, owned={}, pods={},
                 revisions={}))  # fmt: skip
    assert out.ready is False and out.error


def _settled_cluster(pol: dict[str, Any]) -> tuple[Any, Any]:
    """A two-node cluster whose operands all run ready (test_apply's API server) and a snapshot of it with `pol`."""
    from gpu_operator.nodes import NodeFacts
    from gpu_operator.observe import Snapshot
    from test_apply import ApiServer, _pods_and_revisions

    names = ["n1", "n2"]
    server = ApiServer(scheduled=2, nodes=tuple(names))

    def snapshot() -> Snapshot:
        pods, revisions = _pods_and_revisions(server, names)
        nodes = {n: NodeFacts.from_node(copy.deepcopy(server.nodes[n])) for n in names}
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=dict(server.objects), pods=pods,
                        revisions=revisions)  # fmt: skip

    return server, snapshot


@pytest.mark.parametrize("invalid", [False, True], ids=["not-ready", "invalid-spec"])
def test_a_failed_pass_whose_status_write_fails_too_counts_once(invalid: bool) -> None:
    """A pass that works out notReady (or an invalid spec) counts as failed before it writes the status; when that
    write raised an ApiError (a 403 after an RBAC edit, a 500) the handler counted the same pass again, and its own
    status write, refused the same way, left the pass for the runtime to count a third time (with a traceback for an
    ordinary API error): reconciliation_failed_total went up faster than reconciliation_total. Upstream counts each
    failed Reconcile once. Now once, and the handler's write that fails is logged."""
    from gpu_operator import metrics
    from gpu_operator.reconciler import Reconciler
    from support import load_policy

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    if invalid:
        pol["spec"]["driver"]["enabled"] = "perhaps"
    server, snapshot = _settled_cluster(pol)

    def refusing(kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if k.get("sub") == "status":
            raise ApiError(403, '{"message": "clusterpolicies/status is forbidden"}', f"PATCH {kind} {name}/status")
        return patch

    server.merge_patch = refusing  # type: ignore[method-assign]
    r = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    passes = metrics.reconciliation_total._value.get()
    failed = metrics.reconciliation_failed_total._value.get()
    out = r.reconcile(snapshot())  # the first pass creates everything: notReady; no ApiError for the runtime
    assert out.ready is False and metrics.reconciliation_status._value.get() == -2 and out.error
    assert metrics.reconciliation_total._value.get() == passes + 1
    assert metrics.reconciliation_failed_total._value.get() == failed + 1, "one failed pass counted more than once"


@pytest.mark.parametrize("invalid", [False, True], ids=["not-ready", "invalid-spec"])
def test_a_failed_pass_cut_by_an_unreachable_api_server_counts_once(
    invalid: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a status write that finds the API server unreachable (kube.Unreachable, an OSError: a restart of
    kube-apiserver, a connection reset): it left Reconciler.reconcile, whose handler caught ApiError only, and
    runtime.Operator.loop's `except Exception` counted the pass again, with a traceback for an ordinary connection
    error. Now the pass ends there: counted failed once, -2, an error for the runtime's backoff, one warning line, and
    no error status sent after it to a server that cannot be reached."""
    from gpu_operator import metrics
    from gpu_operator.kube import Unreachable
    from gpu_operator.reconciler import Reconciler
    from support import load_policy

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    if invalid:
        pol["spec"]["driver"]["enabled"] = "perhaps"
    server, snapshot = _settled_cluster(pol)
    sent: list[str] = []

    def unreachable(kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if k.get("sub") == "status":
            sent.append(name)
            raise Unreachable(f"PATCH https://10.0.0.1:6443/apis/nvidia.com/v1/{kind}/{name}/status: connection reset")
        return patch

    server.merge_patch = unreachable  # type: ignore[method-assign]
    r = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    passes = metrics.reconciliation_total._value.get()
    failed = metrics.reconciliation_failed_total._value.get()
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        out = r.reconcile(snapshot())  # raised nothing for the runtime to count again
    assert out.error and out.ready is False and metrics.reconciliation_status._value.get() == -2
    assert metrics.reconciliation_total._value.get() == passes + 1
    assert metrics.reconciliation_failed_total._value.get() == failed + 1, "one failed pass counted more than once"
    assert sent == ["cluster-policy"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("reconcile failed")] == [
        "reconcile failed: PATCH https://10.0.0.1:6443/apis/nvidia.com/v1/ClusterPolicy/cluster-policy/status: "
        "connection reset"
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_a_ready_pass_whose_status_write_fails_is_no_success() -> None:
    """reconciliation_last_success_ts_seconds was set as soon as the pass worked out ready, before the status
    write: when that write then failed (a 500, a 403, a webhook's 422) the handler made the pass a failed one (-2,
    counted) with the success timestamp at now. A write failing every pass refreshed it every pass, and the chart's
    GPUOperatorReconciliationFailing (-2 and no success for 5 minutes) never fired. Now the timestamp moves once the
    statuses are written."""
    from gpu_operator import metrics
    from gpu_operator.reconciler import Reconciler
    from support import load_policy

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    server, snapshot = _settled_cluster(pol)
    r = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    r.reconcile(snapshot())  # creates everything
    assert r.reconcile(snapshot()).ready is True
    metrics.reconciliation_last_success_ts_seconds.set(1000.0)  # the last success long ago
    merge_patch = server.merge_patch

    def refusing(kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if k.get("sub") == "status":
            raise ApiError(500, '{"message": "etcdserver: request timed out"}', f"PATCH {kind} {name}/status")
        return merge_patch(kind, name, patch, *a, **k)

    server.merge_patch = refusing  # type: ignore[method-assign]
    failed = metrics.reconciliation_failed_total._value.get()
    assert r.reconcile(snapshot()).ready is False
    assert metrics.reconciliation_status._value.get() == -2
    assert metrics.reconciliation_failed_total._value.get() == failed + 1
    assert metrics.reconciliation_last_success_ts_seconds._value.get() == 1000.0, "a failed pass moved it to now"


@pytest.mark.parametrize("kept_off", ["opted out", "tainted"])
def test_the_ready_message_counts_only_the_gpu_nodes_operands_run_on(kept_off: str) -> None:
    """The ready message counted every GPU node, also one where no operand runs: one the admin took out with
    nvidia.com/gpu.deploy.operands=false, or one whose taint the operand DaemonSets do not tolerate (a common way to
    reserve GPU nodes, dedicated=ml:NoSchedule; they tolerate nvidia.com/gpu and daemonsets.tolerations only). With
    two GPU nodes, one of them so, it said "all operands ready on 2 GPU nodes" though every operand DaemonSet runs on
    one node. Now it counts the GPU nodes, not opted out, that an enabled operand DaemonSet should run on."""
    from gpu_operator.nodes import DEPLOY_OPERANDS, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy, node
    from test_apply import ApiServer, _pods_and_revisions

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    server = ApiServer(scheduled=1, nodes=("n1",))  # every DaemonSet counts one pod
    if kept_off == "opted out":
        server.nodes["n2"] = node("n2", labels={DEPLOY_OPERANDS: "false"})
    else:
        server.nodes["n2"] = node("n2")
        server.nodes["n2"]["spec"] = {"taints": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]}

    def snapshot() -> Snapshot:
        pods, revisions = _pods_and_revisions(server, ["n1"])
        nodes = {n: NodeFacts.from_node(copy.deepcopy(obj)) for n, obj in server.nodes.items()}
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=dict(server.objects), pods=pods,
                        revisions=revisions)  # fmt: skip

    r = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    written: list[dict[str, Any]] = []
    write = r.status.write
    r.status.write = lambda p, s, quiet=False: written.append(s) or write(p, s, quiet)  # type: ignore[method-assign]
    r.reconcile(snapshot())  # creates everything
    assert r.reconcile(snapshot()).ready is True
    assert conditions(written[-1])["Ready"]["message"] == "all operands ready on 1 GPU nodes"


def test_with_the_clusterpolicy_gone_driver_auto_upgrade_and_the_upgrade_counts_drop_to_0() -> None:
    """Upstream (upgrade_controller.go Reconcile): with no ClusterPolicy, no NVIDIADriver upgrades either and
    driver_auto_upgrade_enabled is set to 0. Ours returned early and kept the deleted policy's 1 (and its node
    counts: an upgrade-failed count kept GPUOperatorDriverUpgradeFailed firing after an uninstall)."""
    from gpu_operator import metrics
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts

    pol = policy_object()
    assert pol["spec"]["driver"]["upgradePolicy"]["autoUpgrade"] is True
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    nodes = {"gpu-1": facts("gpu-1")}
    r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={}))
    assert metrics.driver_auto_upgrade_enabled._value.get() == 1
    metrics.nodes_upgrades_failed.set(1)
    r.reconcile(Snapshot(nodes=nodes, policies={}, owned={}, pods={}, revisions={}))
    assert metrics.reconciliation_status._value.get() == -1
    assert metrics.driver_auto_upgrade_enabled._value.get() == 0
    assert metrics.nodes_upgrades_failed._value.get() == 0


def test_a_transient_api_error_keeps_the_other_conditions_and_the_upgrade_status() -> None:
    """On an ApiError the pass rewrites the status from the previous one: the merge patch replaces the conditions
    list and StatusWriter drops keys the new status lacks, so what the pass did not get to (DriverRefused, the
    upgrade's progress) is carried over, not dropped (the next good pass would recreate a dropped condition with a
    new lastTransitionTime)."""
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.status import policy_status

    pol = policy_object()
    pol["metadata"]["finalizers"] = ["nvidia.com/gpu-operator-cleanup"]
    refused = {"type": "DriverRefused", "status": "True", "reason": "IncompatibleNodes",
               "message": "driver not rolled out to v100-a: architecture-dropped",
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}  # fmt: skip
    upgrade = {"total": 2, "inProgress": 0, "done": 1, "failed": 0, "pending": 1, "available": 1, "waiting": []}
    pol["status"] = policy_status(generation=1, namespace="gpu-operator", results=[], gpu_nodes=2, has_nfd=True,
                                  previous=None, now="2026-01-01T00:00:00Z", extra={"upgrade": upgrade},
                                  more_conditions=[refused])  # fmt: skip
    class Kube(EchoKube):
        def get(self, *a: Any, **k: Any) -> Any:
            raise ApiError(503, '{"message": "etcdserver: leader changed"}', "get Namespace")

    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    r.reconcile(Snapshot(nodes={}, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={}))
    written = kube.written
    assert written, "the failed pass writes a status"
    status = written[-1]
    assert status.get("upgrade") == upgrade, status.get("upgrade")
    assert any(c["type"] == "DriverRefused" for c in status["conditions"]), [c["type"] for c in status["conditions"]]


def _invalid_spec(pol: dict[str, Any]) -> None:
    """A spec the CRD schema takes but the operator refuses (InvalidSpec): repository without image and version."""
    pol["spec"]["driver"]["repository"] = "example.com/x"
    pol["spec"]["driver"].pop("image", None)
    pol["spec"]["driver"].pop("version", None)
    pol["metadata"]["generation"] += 1


def test_an_invalid_spec_keeps_the_conditions_and_upgrade_status_it_did_not_work_out() -> None:
    """An InvalidSpec pass acts on nothing: the nodes, their labels and the driver upgrade stay as the last good pass
    left them. Its status dropped every condition but Ready, Error and UnsupportedFields, and status.upgrade, where
    the failed-pass (ApiError) status carries them over for this very reason (test_a_transient_api_error_keeps_the_
    other_conditions_and_the_upgrade_status: "the next good pass would recreate a dropped condition with a new
    lastTransitionTime"). So a typo fixed a minute later moved InvalidWorkloadConfig's (and DriverRefused's)
    lastTransitionTime and posted the node Warning again, which is posted once per change (REFERENCE §1 conditions;
    §10 honest status). Expected: those conditions (with the observedGeneration they were worked out for) and
    status.upgrade kept while the spec is invalid, and no second Event once it is fixed. Now they are (review
    status #1)."""
    from gpu_operator.nodes import INVALID_WORKLOAD_REASON, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy, node

    spec = copy.deepcopy(load_policy()["spec"])
    spec["sandboxWorkloads"] = {"enabled": True}
    pol = policy_object(spec)
    obj = node("typo", labels={"nvidia.com/gpu.workload.config": "vm-passthru"})

    def snapshot() -> Snapshot:
        return Snapshot(nodes={"typo": NodeFacts.from_node(obj)}, policies={"cluster-policy": copy.deepcopy(pol)},
                        owned={}, pods={}, revisions={})  # fmt: skip

    kube = PostingKube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    r.reconcile(snapshot())
    assert kube.posted.count(INVALID_WORKLOAD_REASON) == 1
    upgrade = {"total": 1, "inProgress": 0, "done": 0, "failed": 1, "pending": 0, "available": 0, "waiting": []}
    pol["status"] = {**kube.statuses[("ClusterPolicy", "cluster-policy")], "upgrade": upgrade}
    before = {c["type"]: c for c in pol["status"]["conditions"]}
    assert "InvalidWorkloadConfig" in before

    good = copy.deepcopy(pol["spec"])
    _invalid_spec(pol)
    r.reconcile(snapshot())
    invalid = kube.statuses[("ClusterPolicy", "cluster-policy")]
    assert next(c for c in invalid["conditions"] if c["type"] == "Ready")["reason"] == "InvalidSpec"
    kept = {c["type"]: c for c in invalid["conditions"]}
    assert kept.get("InvalidWorkloadConfig") == before["InvalidWorkloadConfig"], sorted(kept)
    assert invalid.get("upgrade") == upgrade, invalid.get("upgrade")

    pol["status"] = invalid
    pol["spec"] = good
    pol["metadata"]["generation"] += 1
    r.reconcile(snapshot())
    assert kube.posted.count(INVALID_WORKLOAD_REASON) == 1, "the node's Warning posted again after the fix"


def test_a_pass_keeps_a_condition_another_writer_set_and_it_alone_makes_no_write() -> None:
    """The status was built from our own condition types alone and merge-patched whole (the list replaced): a
    condition another controller (an audit or GitOps health check) put on the ClusterPolicy's status was removed by
    the next pass that wrote the status, and, being there, made every pass write. Upstream sets its Ready and Error
    on the latest conditions (internal/conditions/clusterpolicy.go, meta.SetStatusCondition). Now a condition of a
    type we do not write is sent back as it is, and alone is no change to write."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.status_writer import StatusWriter
    from support import RecordingKube, facts

    pol = policy_object()
    pol["metadata"]["finalizers"] = [CLEANUP_FINALIZER]
    pol["status"] = status(previous=None)
    pol["status"]["conditions"].append(FOREIGN_CONDITION)
    snap = Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": pol}, owned={}, pods={},
                    revisions={})  # fmt: skip
    kube = RecordingKube()
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    written = kube.statuses[("ClusterPolicy", "cluster-policy")]
    assert FOREIGN_CONDITION in written["conditions"], [c["type"] for c in written["conditions"]]
    assert len({c["type"] for c in written["conditions"]}) == len(written["conditions"])

    ours = {**written, "conditions": [c for c in written["conditions"] if c != FOREIGN_CONDITION]}
    kube = RecordingKube()
    StatusWriter(kube, EventRecorder(kube)).write({**pol, "status": written}, ours)  # type: ignore[arg-type]
    assert not kube.statuses, "the other writer's condition alone is no change"


def test_a_condition_another_controller_set_after_the_snapshot_survives_our_status_write() -> None:
    """The other writers' conditions were sent back as the pass's snapshot had them, in a merge patch of the whole
    list with no resourceVersion: a condition another controller set (or changed) between the snapshot and our write
    was removed (or reverted) by it. Upstream's Status().Update carries the resourceVersion (a 409). Now the patch
    carries the snapshot's, or our own last write's answer where that is newer (the watch may not have brought it
    yet): a stale one is refused, False (the caller passes again soon), and written on the fresh object."""
    from gpu_operator.status_writer import PROGRESS_INTERVAL_S, StatusWriter
    from support import ServerKube

    ours = [{"type": "Ready", "status": "False", "reason": "OperandNotReady", "message": "m"},
            {"type": "Error", "status": "True", "reason": "OperandNotReady", "message": "m"}]  # fmt: skip
    snapshot = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy",
                "metadata": {"name": "cluster-policy", "resourceVersion": "5"},
                "status": {"state": "notReady", "conditions": ours}}  # fmt: skip
    theirs = {"type": "example.com/Audited", "status": "True", "reason": "Checked", "message": "by another controller"}
    live = copy.deepcopy(snapshot)
    live["metadata"]["resourceVersion"] = "6"  # the other controller wrote its condition after our snapshot
    live["status"]["conditions"] = [*ours, theirs]
    kube = ServerKube({("ClusterPolicy", "cluster-policy"): live})
    now = [0.0]
    writer = StatusWriter(kube, EventRecorder(kube), clock=lambda: now[0])  # type: ignore[arg-type]
    ready = {"state": "ready", "conditions": [
        {**c, "status": "True" if c["type"] == "Ready" else "False", "reason": "Reconciled"} for c in ours]}

    def conditions() -> list[dict[str, Any]]:
        return list(kube.objects[("ClusterPolicy", "cluster-policy")]["status"]["conditions"])

    assert writer.write(snapshot, ready, quiet=True) is False, "refused as stale: the caller passes again"
    assert theirs in conditions(), "another controller's condition was removed"
    assert writer.retry_in("cluster-policy") == PROGRESS_INTERVAL_S, "not at once: the watch brings the change"
    seen = copy.deepcopy(kube.objects[("ClusterPolicy", "cluster-policy")])  # what the watch brings
    assert writer.write(seen, ready, quiet=True) is True
    assert conditions() == [*ready["conditions"], theirs]
    # The next pass, before the watch brought our own write back (its snapshot is still `seen`): decided on our
    # write's answer, no 409.
    down = {"state": "notReady", "conditions": [{**c, "reason": "DriverNotReady"} for c in ours]}
    assert writer.write(seen, down, quiet=True) is True and conditions() == [*down["conditions"], theirs]
    latest = copy.deepcopy(kube.objects[("ClusterPolicy", "cluster-policy")])
    patches = len(kube.calls)
    assert writer.write(latest, down, quiet=True) is True and len(kube.calls) == patches, "steady: nothing written"


def test_a_pass_whose_snapshot_predates_our_own_status_write_does_not_write_it_again() -> None:
    """The writer decided "changed?" and "a new state: an Event" on the snapshot's status. A pass whose snapshot was
    taken before the watch brought back the previous pass's own write (the runtime skips the debounce when the last
    operand pod turns ready) worked out the same status again, saw the old state and wrote it a second time: a
    second "state ready" Event, and Ready/Error's lastTransitionTime moved to that pass's time though nothing
    transitioned. Upstream decides on the object it reads again. Now a snapshot older than our last write's answer
    is compared against what we wrote, whose unchanged conditions keep their lastTransitionTime."""
    from gpu_operator.status_writer import StatusWriter
    from support import ServerKube

    pol = policy_object()
    pol["status"] = policy_status(generation=1, namespace="gpu-operator", gpu_nodes=1, has_nfd=True, previous=None,
                                  results=[StateResult("state-driver", "notReady", "1 of 1 pods not ready")],
                                  now=T0)  # fmt: skip
    posted: list[str] = []

    class Kube(ServerKube):
        def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            posted.append(obj["reason"])
            return obj

    kube = Kube({("ClusterPolicy", "cluster-policy"): copy.deepcopy(pol)})
    writer = StatusWriter(kube, EventRecorder(kube))  # type: ignore[arg-type]

    def ready(at: str) -> dict[str, Any]:
        return policy_status(generation=1, namespace="gpu-operator", results=[StateResult("state-driver", "ready")],
                             gpu_nodes=1, has_nfd=True, previous=pol["status"], now=at)  # fmt: skip

    assert writer.write(copy.deepcopy(pol), ready(T1))
    assert writer.write(copy.deepcopy(pol), ready(T2))  # the same snapshot: the watch has not brought our write
    live = kube.objects[("ClusterPolicy", "cluster-policy")]["status"]
    assert posted == ["Reconciled"], posted
    assert {c["type"]: c["lastTransitionTime"] for c in live["conditions"]} == {"Ready": T1, "Error": T1}
    assert [verb for verb, _ in kube.calls].count("merge_patch") == 1


def test_a_node_event_whose_cause_went_away_is_posted_again_when_it_comes_back() -> None:
    """The recorder kept the last message per object and reason for good: a MIG layout refused, then changed to a
    valid one (the refusal over), then asked for again got its Warning only the first time (the same held for an
    upgrade wait, a driver refusal, a sharing warning that went away and came back). What a pass no longer asks for
    is over: said again when it comes back; asked for pass after pass, it is posted once."""
    from gpu_operator import mig
    from gpu_operator.nodes import MIG_CONFIG, MIG_CONFIG_STATE
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts, policy_object

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[dict[str, Any]] = []

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if obj["kind"] == "Event":
                self.events.append(obj)
            return obj

    def gpu_node(layout: str) -> Any:
        h100 = "NVIDIA-H100-80GB-HBM3"
        return facts("gpu-1", labels={"nvidia.com/mig.capable": "true", "nvidia.com/gpu.product": h100,
                                      MIG_CONFIG: layout, MIG_CONFIG_STATE: "success", mig.MANAGER_LABEL: "true",
                                      mig.APPROVED: "all-disabled"})  # fmt: skip

    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    pol = policy_object()
    for layout in ("nope", "nope", "all-disabled", "nope", "nope"):
        r.reconcile(Snapshot(nodes={"gpu-1": gpu_node(layout)}, policies={"cluster-policy": pol}, owned={}, pods={},
                             revisions={}))  # fmt: skip
    refused = [e["message"] for e in kube.events if e["reason"] == mig.EVENT_REFUSED]
    assert len(refused) == 2 and "nope" in refused[0] and refused[0] == refused[1], refused


def test_a_restarted_operator_posts_no_node_event_the_status_says_already() -> None:
    """A MIG layout refused and a node whose upgrade failed: their Warnings were deduplicated only in memory, so a
    restarted operator (or a new leader) posted them again on the same cluster, though the MIGConfig condition and
    status.upgrade.waiting say the same. Now a fresh reconciler over the status the running one wrote posts
    nothing."""
    from gpu_operator import mig
    from gpu_operator.nodes import MIG_CONFIG, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.upgrade.model import EVENT_REASON, FAILURE_REASON_ANNOTATION, STATE_LABEL
    from support import node

    Kube = PostingKube

    obj = node("gpu-1", labels={"nvidia.com/mig.capable": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                MIG_CONFIG: "nope", mig.MANAGER_LABEL: "true", mig.APPROVED: "all-disabled",
                                STATE_LABEL: "upgrade-failed"})  # fmt: skip
    obj["metadata"]["annotations"] = {FAILURE_REASON_ANNOTATION: "driver pod crash-looping"}
    pol = policy_object()

    def snapshot() -> Snapshot:
        return Snapshot(nodes={"gpu-1": NodeFacts.from_node(obj)}, policies={"cluster-policy": pol}, owned={},
                        pods={}, revisions={})  # fmt: skip

    kube = Kube()
    Reconciler(kube, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]
    assert {mig.EVENT_REFUSED, EVENT_REASON} <= set(kube.posted), kube.posted
    pol["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]  # as the watch brings it back
    again = Kube()
    Reconciler(again, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]
    assert again.posted == []


def test_an_invalid_workload_config_gets_a_warning_event_on_its_node_once() -> None:
    """A node whose nvidia.com/gpu.workload.config names no workload (`vm-passthru`) falls back to
    sandboxWorkloads.defaultWorkload, as upstream; nothing but a log line (upstream's only word) said so, so
    `kubectl describe node` showed nothing. Now each pass asks for a Warning Event on the node, which the recorder
    posts once while the value stays (and again for another value)."""
    from gpu_operator.nodes import INVALID_WORKLOAD_REASON, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy, node

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.posted: list[tuple[str, str, str, str]] = []

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            self.posted.append((obj["involvedObject"]["name"], obj["type"], obj["reason"], obj["message"]))
            return obj

    spec = copy.deepcopy(load_policy()["spec"])
    spec["sandboxWorkloads"] = {"enabled": True}
    pol = policy_object(spec)

    def snapshot(value: str) -> Snapshot:
        nodes = [node("typo", labels={"nvidia.com/gpu.workload.config": value}), node("fine")]
        return Snapshot(nodes={n["metadata"]["name"]: NodeFacts.from_node(n) for n in nodes},
                        policies={"cluster-policy": pol}, owned={}, pods={}, revisions={})  # fmt: skip

    def posted(kube: Kube) -> list[tuple[str, str, str, str]]:
        return [p for p in kube.posted if p[2] == INVALID_WORKLOAD_REASON]

    kube = Kube()
    r = Reconciler(kube, "gpu-operator")
    r.reconcile(snapshot("vm-passthru"))  # type: ignore[arg-type]
    assert posted(kube) == [("typo", "Warning", INVALID_WORKLOAD_REASON,
                             "invalid nvidia.com/gpu.workload.config 'vm-passthru' (not one of container, "
                             "vm-passthrough, vm-vgpu): the node gets sandboxWorkloads.defaultWorkload, container")]
    r.reconcile(snapshot("vm-passthru"))  # type: ignore[arg-type]
    assert len(posted(kube)) == 1  # said already
    r.reconcile(snapshot("vm-passthrough"))  # type: ignore[arg-type]
    r.reconcile(snapshot("vm-passthru"))  # type: ignore[arg-type]
    assert len(posted(kube)) == 2  # fixed, then back: said again


def test_the_invalid_workload_config_event_names_its_node_by_uid_as_kubectl_describe_node_asks() -> None:
    """`kubectl describe node X` lists only the Events whose involvedObject.uid is the Node's uid or (the kubelet's
    convention) its name. The InvalidWorkloadConfig Warning went out with no uid, though README says "the event lets
    `kubectl describe node` say why". Now it carries one kubectl matches."""
    from gpu_operator.nodes import INVALID_WORKLOAD_REASON, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import NAMESPACE, load_policy, node

    posted: list[dict[str, Any]] = []

    class Kube(EchoKube):
        def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            posted.append(obj)
            return obj

    spec = copy.deepcopy(load_policy()["spec"])
    spec["sandboxWorkloads"] = {"enabled": True}
    obj = node("typo", labels={"nvidia.com/gpu.workload.config": "vm-passthru"})
    obj["metadata"]["uid"] = "node-uid-1"
    snap = Snapshot(nodes={"typo": NodeFacts.from_node(obj)}, policies={"cluster-policy": policy_object(spec)},
                    owned={}, pods={}, revisions={})  # fmt: skip
    Reconciler(Kube(), NAMESPACE).reconcile(snap)  # type: ignore[arg-type]
    events = [e for e in posted if e["reason"] == INVALID_WORKLOAD_REASON]
    assert events, [e["reason"] for e in posted]
    involved = events[0]["involvedObject"]
    assert involved["kind"] == "Node" and involved["name"] == "typo"
    assert involved.get("uid") in ("node-uid-1", "typo"), f"involvedObject.uid {involved.get('uid')!r}"


def test_a_restarted_operator_posts_no_invalid_workload_config_event_again() -> None:
    """The InvalidWorkloadConfig Warning was asked for in every pass and deduplicated only in the EventRecorder's
    memory, so every restart of the operator (and every new leader) posted it again on every node whose
    gpu.workload.config was still invalid, where every other Event of the pass (DriverRefused, MIGConfig, upgrade,
    sharing) is read back from the status. Now the InvalidWorkloadConfig condition names the nodes and values, and a
    node gets the Event only for what the previous condition did not name (found by review diffB)."""
    from gpu_operator.nodes import INVALID_WORKLOAD_REASON, NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy, node

    Kube = PostingKube

    spec = copy.deepcopy(load_policy()["spec"])
    spec["sandboxWorkloads"] = {"enabled": True}
    pol = policy_object(spec)
    obj = node("typo", labels={"nvidia.com/gpu.workload.config": "vm-passthru"})

    def snapshot() -> Snapshot:
        return Snapshot(nodes={"typo": NodeFacts.from_node(obj)}, policies={"cluster-policy": pol}, owned={},
                        pods={}, revisions={})  # fmt: skip

    kube = Kube()
    Reconciler(kube, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]
    assert INVALID_WORKLOAD_REASON in kube.posted
    pol["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]  # as the watch brings it back
    cond = next(c for c in pol["status"]["conditions"] if c["type"] == "InvalidWorkloadConfig")
    assert (cond["status"], cond["reason"]) == ("True", "NoSuchWorkload"), cond
    assert cond["message"].endswith(": typo ('vm-passthru')"), cond["message"]
    again = Kube()
    Reconciler(again, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]
    assert INVALID_WORKLOAD_REASON not in again.posted, "posted again by the restarted operator"
    obj["metadata"]["labels"]["nvidia.com/gpu.workload.config"] = "vm-passthrouh"  # another value: said again
    Reconciler(again, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]
    assert again.posted.count(INVALID_WORKLOAD_REASON) == 1, again.posted


def test_an_event_post_that_finds_the_api_server_unreachable_does_not_cut_the_pass() -> None:
    """An Event create that could not connect (Unreachable) went out of the recorder and ended the pass where it
    stood (a MIG refusal's Warning, posted before the objects are applied: nothing applied, no status). Events are
    best-effort: the pass goes on, and no Event is tried for a while (not one connection attempt per Event)."""
    from gpu_operator import mig
    from gpu_operator.events import UNREACHABLE_RETRY_S
    from gpu_operator.kube import Unreachable
    from gpu_operator.nodes import MIG_CONFIG, MIG_CONFIG_STATE
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts, policy_object

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.tries = 0

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if obj["kind"] == "Event":
                self.tries += 1
                raise Unreachable("POST https://10.0.0.1/api/v1/namespaces/default/events: connection refused")
            return obj

    labels = {"nvidia.com/mig.capable": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", MIG_CONFIG: "nope",
              MIG_CONFIG_STATE: "success", mig.MANAGER_LABEL: "true", mig.APPROVED: "all-disabled"}  # fmt: skip
    nodes = {name: facts(name, labels=labels) for name in ("gpu-1", "gpu-2")}
    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    now = [0.0]
    r.events.clock = lambda: now[0]
    r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": policy_object()}, owned={}, pods={}, revisions={}))
    assert kube.statuses, "the pass went on to its status"
    assert kube.tries == 1, "one try, then none for a while"
    now[0] += UNREACHABLE_RETRY_S
    r.events({"kind": "Node", "metadata": {"name": "gpu-1"}}, "Warning", mig.EVENT_REFUSED, "MIG layout 'nope' ...")
    assert kube.tries == 2


def test_a_sharing_warning_whose_post_found_the_api_server_unreachable_is_posted_later() -> None:
    """An Event post that found the API server unreachable (one dropped pooled connection: Events go with
    retry=False, the status patch after it got through on a fresh one) was logged and dropped. The callers that ask
    once per change (the sharing check, an NVIDIADriver's conflict, compat's DriverRefused read from the status the
    pass writes) never ask again: the InvalidSharingConfig Warning was lost for good. Now the recorder keeps it and
    posts it at the first pass's end after UNREACHABLE_RETRY_S."""
    from gpu_operator import sharing
    from gpu_operator.kube import Unreachable
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts, load_policy

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[dict[str, Any]] = []
            self.unreachable = 1

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if obj["kind"] == "Event":
                if self.unreachable:
                    self.unreachable -= 1
                    raise Unreachable("POST https://10.0.0.1/api/v1/namespaces/default/events: Connection aborted.")
                self.events.append(obj)
            return obj

    spec = copy.deepcopy(load_policy()["spec"])
    spec.setdefault("devicePlugin", {})["config"] = {"name": "sharing", "default": "mps"}
    data = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 64}]}}"}  # 64 > 48: refused
    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    now = [0.0]
    r.events.clock = lambda: now[0]
    pol = policy_object(spec)
    for _ in range(3):
        r.reconcile(Snapshot(nodes={"n1": facts("n1")}, policies={"cluster-policy": pol}, owned={}, pods={},
                             revisions={}, config_maps={"sharing": ("mps",)},
                             config_data={"sharing": data}))  # fmt: skip
        pol = {**pol, "status": kube.statuses[("ClusterPolicy", "cluster-policy")]}
        now[0] += 60  # past UNREACHABLE_RETRY_S, the API server reachable again
    conditions = {c["type"]: c for c in pol["status"]["conditions"]}
    assert conditions[sharing.CONDITION]["status"] == "False"  # the refusal still holds
    assert [e["reason"] for e in kube.events if e["reason"] == sharing.REASON] == [sharing.REASON]


def test_an_owed_warning_of_a_pass_that_was_cut_is_not_posted_after_it_was_fixed() -> None:
    """An Event owed from an outage was posted at the first pass end after UNREACHABLE_RETRY_S "unless asked for
    again meanwhile". A caller that asks once per change (sharing, compat, MIG, upgrade: only while the status does
    not say it yet) never asks again once the problem is gone, so the InvalidSharingConfig Warning owed from a pass
    the outage cut (its status never said False) was posted after the pass that found the ConfigMap fixed. Now the
    Events owed in a pass that was cut are dropped when the next begins: that pass asks again if it still holds."""
    from gpu_operator import sharing
    from gpu_operator.kube import Unreachable
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import facts, load_policy

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.down = True
            self.events: list[dict[str, Any]] = []

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if self.down:
                raise Unreachable("POST https://10.0.0.1/api/v1/namespaces/default/events: connection refused")
            if obj["kind"] == "Event":
                self.events.append(obj)
            return obj

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if self.down:
                raise Unreachable(f"PATCH {kind} {name}: connection refused")
            return super().merge_patch(kind, name, patch, *a, **k)

    spec = copy.deepcopy(load_policy()["spec"])
    spec.setdefault("devicePlugin", {})["config"] = {"name": "sharing", "default": "mps"}
    bad = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 64}]}}"}  # 64 > 48: refused
    good = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"}
    pol = policy_object(spec)
    pol["metadata"]["finalizers"] = [CLEANUP_FINALIZER]
    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    now = [0.0]
    r.events.clock = lambda: now[0]

    def snap(data: dict[str, str]) -> Snapshot:
        return Snapshot(nodes={"n1": facts("n1")}, policies={"cluster-policy": pol}, owned={}, pods={},
                        revisions={}, config_maps={"sharing": ("mps",)}, config_data={"sharing": data})  # fmt: skip

    assert r.reconcile(snap(bad)).error  # the API server is down: the Warning is owed, the pass cut by its first write
    kube.down = False
    now[0] += 60  # the API server is back; the admin fixed the ConfigMap meanwhile
    r.reconcile(snap(good))
    conditions = {c["type"]: c for c in kube.statuses[("ClusterPolicy", "cluster-policy")]["conditions"]}
    assert conditions[sharing.CONDITION]["status"] == "True"
    assert [e["message"] for e in kube.events if e["reason"] == sharing.REASON] == []
    kube.down = True  # the same outage, and the refusal still holds when the API server is back: said then
    assert r.reconcile(snap(bad)).error
    kube.down = False
    now[0] += 60
    pol["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]  # as the watch brings it back
    r.reconcile(snap(bad))
    assert [e["reason"] for e in kube.events if e["reason"] == sharing.REASON] == [sharing.REASON]


def test_an_upgrade_event_owed_in_a_pass_cut_after_its_node_write_is_still_posted() -> None:
    """Events owed in a pass that was then cut were all dropped by the next pass_started, on the premise that the
    caller asks again if it still holds. The upgrade's node Events do not work that way: each says what a node write
    of that pass did (here a failed node let go and left cordoned for the admin) and is asked for once, after the
    write went through; the next pass sees the node moved on and never asks again, so the Warning was lost. Now they
    are durable: owed across a cut pass, posted at the first pass end after UNREACHABLE_RETRY_S."""
    from dataclasses import replace

    from gpu_operator.events import UNREACHABLE_RETRY_S
    from gpu_operator.kube import Unreachable
    from gpu_operator.upgrade.model import STATE_LABEL
    from gpu_operator.upgrade.orchestrate import left_behind
    from support import facts

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.down = True  # Events only: one dropped pooled connection (Events go with retry=False)
            self.events: list[dict[str, Any]] = []
            self.node_patches: list[str] = []

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if obj["kind"] == "Event":
                if self.down:
                    raise Unreachable("POST https://10.0.0.1/api/v1/namespaces/default/events: connection refused")
                self.events.append(obj)
            return obj

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "Node":
                self.node_patches.append(name)
            return super().merge_patch(kind, name, patch, *a, **k)

    kube = Kube()
    now = [0.0]
    recorder = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    failed = replace(facts("gpu-1", labels={STATE_LABEL: "upgrade-failed"}), unschedulable=True)
    recorder.pass_started()
    left_behind(kube, "gpu-operator", [failed], recorder, "its NVIDIADriver let go of the node")  # type: ignore[arg-type]
    assert kube.node_patches == ["gpu-1"]  # the state label is gone: no pass asks for the Event again
    # ... the pass's next write finds the API server unreachable: the pass is cut (no pass_done).
    kube.down = False
    now[0] += 2 * UNREACHABLE_RETRY_S
    recorder.pass_started()
    recorder.pass_done()
    assert [(e["involvedObject"]["name"], e["type"]) for e in kube.events] == [("gpu-1", "Warning")]


def test_events_owed_while_the_api_server_was_unreachable() -> None:
    """What the recorder keeps of the Events it could not post: only the last asked for each object and reason,
    none that a later ask said again, a later state made stale or whose object is gone, at most OWED_MAX, posted
    once at the end of the first pass after UNREACHABLE_RETRY_S (a steady cluster then writes nothing)."""
    from gpu_operator.events import OWED_MAX, UNREACHABLE_RETRY_S
    from gpu_operator.kube import Unreachable

    class Kube(_Events):
        unreachable = True

        def create(self, obj: dict[str, Any], retry: bool = True) -> dict[str, Any]:
            if self.unreachable:
                raise Unreachable("POST https://10.0.0.1/api/v1/namespaces/default/events: connection refused")
            return super().create(obj, retry)

    def node(name: str) -> dict[str, Any]:
        return {"kind": "Node", "metadata": {"name": name}}

    kube = Kube()
    now = [0.0]
    record = EventRecorder(kube, clock=lambda: now[0])  # type: ignore[arg-type]
    pol = {**policy("cluster-policy", T0), "metadata": {"name": "cluster-policy", "uid": "u"}}
    refused = "driver not rolled out to this node"
    for i in range(OWED_MAX):
        record(node(f"n{i}"), "Warning", "DriverRefused", refused)  # the first unreachable, the others held back
    record(pol, "Warning", "InvalidSharingConfig", "replicas 64 > 48")  # n0 dropped: the oldest
    record(pol, "Warning", "InvalidSharingConfig", "replicas 96 > 48")  # the later ask is what is owed
    record(pol, "Warning", "DriverNotReady", "state notReady: driver not ready", changed=True)  # n1 dropped
    record(pol, "Normal", "Reconciled", "state ready: all ready", changed=True)  # the notReady one is stale now
    record(node("gone"), "Warning", "DriverRefused", refused)  # n2 dropped
    record.forget("Node", "gone")
    record.pass_done()  # still within UNREACHABLE_RETRY_S: nothing tried
    assert not kube.created
    kube.unreachable = False
    now[0] += UNREACHABLE_RETRY_S
    record.pass_done()
    said = [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in kube.created]
    assert said == [(f"n{i}", "DriverRefused", refused) for i in range(3, OWED_MAX)] + [
        ("cluster-policy", "InvalidSharingConfig", "replicas 96 > 48"),
        ("cluster-policy", "Reconciled", "state ready: all ready"),
    ]
    for _ in range(2):
        record.pass_done()
    assert len(kube.created) == len(said), "posted once"


def _nvidiadriver_cluster(default: bool) -> tuple[Any, Any, Any, list[dict[str, Any]]]:
    """useNvidiaDriverCRD with one NVIDIADriver (autoUpgrade, waitForCompletion on app=train) driving two nodes whose
    operands all run ready: a non-default one selecting them (they carry its owner label) or the default (they carry
    none). (server, snapshot(), reconciler, the ClusterPolicy statuses written)."""
    from gpu_operator.nodes import NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import load_policy
    from test_apply import ApiServer, _pods_and_revisions

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1", creationTimestamp=T0)
    pol["spec"]["driver"]["useNvidiaDriverCRD"] = True
    spec: dict[str, Any] = {"repository": "nvcr.io/nvidia", "image": "driver", "version": "580.95.05",
                            "upgradePolicy": {"autoUpgrade": True, "maxParallelUpgrades": 1,
                                              "waitForCompletion": {"podSelector": "app=train"}}}  # fmt: skip
    spec.update({"default": True} if default else {"nodeSelector": {"pool": "a"}})
    drivers = {"pool-a": {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "spec": spec,
                          "metadata": {"name": "pool-a", "uid": "uid-a", "generation": 1, "resourceVersion": "3",
                                       "creationTimestamp": T0}}}  # fmt: skip
    written: list[dict[str, Any]] = []

    class Server(ApiServer):
        jobs: list[dict[str, Any]] = []

        def list(self, kind: str, *_: Any, **__: Any) -> list[dict[str, Any]]:
            return copy.deepcopy(self.jobs) if kind == "Pod" else []

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if k.get("sub") == "status" and kind == "ClusterPolicy":
                written.append(patch["status"])
            return super().merge_patch(kind, name, patch, *a, **k)

    names = ["n1", "n2"]
    server = Server(scheduled=2, nodes=tuple(names))
    for n in names:
        server.nodes[n]["metadata"]["labels"]["pool"] = "a"

    def snapshot() -> Snapshot:
        pods, revisions = _pods_and_revisions(server, names)
        nodes = {n: NodeFacts.from_node(copy.deepcopy(server.nodes[n])) for n in names}
        held = copy.deepcopy(pol)
        if written:
            held["status"] = written[-1]
        return Snapshot(nodes=nodes, policies={"cluster-policy": held}, owned=dict(server.objects), pods=pods,
                        revisions=revisions, nvidia_drivers=drivers)  # fmt: skip

    return server, snapshot, Reconciler(server, "gpu-operator"), written  # type: ignore[arg-type]


@pytest.mark.parametrize("default", [False, True])
def test_the_cluster_policy_is_not_ready_while_an_nvidiadriver_upgrade_is_unfinished(default: bool) -> None:
    """Upstream v26.7 (clusterpolicy_controller.go, nvidiaDriverUpgradeIncomplete) keeps the ClusterPolicy notReady
    (OperandNotReady, "NVIDIADriver upgrade has not completed; ...") while a node an NVIDIADriver owns, not labelled
    to skip upgrades, has an upgrade state other than upgrade-done or none. Ours looked at the operands alone: a node
    cordoned in wait-for-jobs-required, its driver pod still current, left it ready ("all operands ready"), so
    `kubectl wait --for=condition=Ready` passed mid-upgrade. The default NVIDIADriver's nodes, which carry no owner
    label here (upstream's do), count too. Neither state writes the status again pass after pass."""
    from gpu_operator.status import UPGRADE_INCOMPLETE
    from gpu_operator.upgrade.model import SKIP_LABEL, STATE_LABEL

    server, snapshot, r, written = _nvidiadriver_cluster(default)
    for _ in range(3):
        r.reconcile(snapshot())
    assert r.reconcile(snapshot()).ready is True
    n1 = server.nodes["n1"]
    assert ("nvidia.com/gpu-operator.driver.owner" in n1["metadata"]["labels"]) is not default
    settled = len(written)
    assert r.reconcile(snapshot()).ready is True and len(written) == settled  # steady: no write

    n1["metadata"]["labels"][STATE_LABEL] = "wait-for-jobs-required"
    n1.setdefault("spec", {})["unschedulable"] = True
    type(server).jobs = [{"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": "train-0", "namespace": "default", "labels": {"app": "train"}},
                          "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}]
    outs = [r.reconcile(snapshot()) for _ in range(3)]
    assert n1["metadata"]["labels"][STATE_LABEL] == "wait-for-jobs-required"  # still waiting for the job
    assert [o.ready for o in outs] == [False] * 3 and len(written) == settled + 1  # written once, then kept
    conds = conditions(written[-1])
    assert written[-1]["state"] == "notReady"
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "OperandNotReady")
    assert conds["Ready"]["message"] == f"ClusterPolicy is not ready; {UPGRADE_INCOMPLETE}: n1"
    assert (conds["Error"]["status"], conds["Error"]["reason"]) == ("True", "OperandNotReady")

    n1["metadata"]["labels"][SKIP_LABEL] = "true"  # upstream skips such a node
    assert r.reconcile(snapshot()).ready is True
    del n1["metadata"]["labels"][SKIP_LABEL]
    assert r.reconcile(snapshot()).ready is False

    n1["metadata"]["labels"][STATE_LABEL] = "upgrade-done"  # its upgrade ends
    n1["spec"]["unschedulable"] = False
    type(server).jobs = []
    assert r.reconcile(snapshot()).ready is True
    done = len(written)
    assert r.reconcile(snapshot()).ready is True and len(written) == done
