"""MIG layout gating (gpu_operator.mig) and `gpu-operator mig layouts`."""

from __future__ import annotations

from typing import Any

import pytest

from gpu_operator import mig, mig_layouts, mig_pass
from gpu_operator.api import parse_spec
from gpu_operator.cli import main
from gpu_operator.kube import ApiError
from gpu_operator.nodes import (
    GPU_PCI_LABELS,
    MIG_CONFIG,
    MIG_CONFIG_STATE,
    NodeFacts,
    apply_patch,
    deploy_label,
    desired_labels,
)
from gpu_operator.observe import Snapshot
from gpu_operator.upgrade import INITIAL_UNSCHEDULABLE_ANNOTATION, Annotate, Cordon, SetState, plan
from gpu_operator.upgrade.model import DRAIN_SKIP_LABEL, WorkloadPod
from gpu_operator.upgrade.model import STATE_LABEL as UPGRADE_STATE
from test_upgrade_planner import make_node, policy

SPEC = parse_spec({})
EVICT = parse_spec({"driver": {"upgradePolicy": {"drain": {"enable": True}}}})
H100 = "NVIDIA-H100-80GB-HBM3"
MANAGER = mig.MANAGER_LABEL
PLUGIN = deploy_label("device-plugin")
MIG_CORDONED = "nvidia.com/gpu-operator.mig-cordoned"  # the annotation marking the gate's cordon (nodes.py)


def node(layout: str = "all-1g.10gb", approved: str | None = "all-disabled", **extra: str) -> NodeFacts:
    labels = {
        GPU_PCI_LABELS[0]: "true",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/gpu.product": H100,
        MIG_CONFIG: layout,
        MIG_CONFIG_STATE: "success",
        MANAGER: "true",
        PLUGIN: "true",
        **({mig.APPROVED: approved} if approved else {}),
        **extra,
    }
    return NodeFacts("n1", labels=labels)


GPU_POD = WorkloadPod("team", "train", "n1", uses_gpu=True)
DS_POD = WorkloadPod("gpu-operator", "plugin", "n1", uses_gpu=True, is_daemonset_pod=True, deploy_selector=(PLUGIN,))


def decide(n: NodeFacts, spec=SPEC, pods=(), managers=frozenset({"n1"}), layouts=None) -> mig.Decision:  # type: ignore[no-untyped-def]
    return mig.decide([n], spec, layouts=layouts, pods={"n1": list(pods)}, managers=managers)


@pytest.mark.parametrize(
    ("product", "gpu"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
        ("NVIDIA-A100-SXM4-80GB", "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
        ("NVIDIA-A100-SXM4-40GB", "A100 40GB, A800 40GB"),
        ("NVIDIA-H100-NVL", "H100 NVL, H800 NVL"),
        ("NVIDIA-H800-NVL", "H100 NVL, H800 NVL"),  # not the H800 80GB: it has the NVL's 94 GB
        ("NVIDIA-H200", "H200 141GB"),
        ("NVIDIA-H200-NVL", "H200 NVL"),
        ("NVIDIA-GH200-480GB", "H100 96GB, PG506 96GB, GH200 96GB, H20"),
        ("NVIDIA-B200", "B200"),
        ("NVIDIA-GB200", "GB200"),
    ],
)
def test_gpu_of_product(product: str, gpu: str) -> None:
    found = mig.gpu_of_product(product)
    assert found is not None and found.name == gpu


def test_a_gpu_without_mig_is_not_found() -> None:
    assert mig.gpu_of_product("NVIDIA-L4") is None
    assert mig.gpu_of_product("") is None


def test_a_valid_change_without_gpu_pods_is_let_through() -> None:
    d = decide(node(), pods=[DS_POD])
    assert d.patches == {"n1": {mig.APPROVED: "all-1g.10gb"}}
    assert not d.events and not d.refused and not d.waiting


def test_first_sight_takes_the_current_layout_as_let_through() -> None:
    d = decide(node("all-balanced", approved=None), pods=[GPU_POD])
    assert d.patches == {"n1": {mig.APPROVED: "all-balanced"}}


def test_an_unknown_layout_is_refused_and_mig_manager_held() -> None:
    d = decide(node("all-1g.18gb"))  # an H200 profile
    why = "is not valid for H100 80GB, H800 80GB, A100 80GB, A800 80GB (the default layouts)"
    assert d.refused == [("n1", "all-1g.18gb", why)]
    assert d.patches == {"n1": {MANAGER: mig.PAUSED}}  # the state label and operands are left alone
    assert [(e.type, e.reason) for e in d.events] == [("Warning", mig.EVENT_REFUSED)]
    cond = mig.condition(d, 3, [], "t0")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == "LayoutRefused"
    assert "n1" in cond["message"] and "all-1g.18gb" in cond["message"] and "H100 80GB" in cond["message"]


def test_a_waiting_change_relabelled_to_a_refused_layout_ends_failed_not_pending() -> None:
    """While GPU pods hold a change the gate writes mig.config.state=pending itself and holds mig-manager. A relabel
    to a refused layout (a typo) then left that `pending` for good: mig-manager stays held and nothing moves the
    state, so the state label (and the doctor's MIGChangeInProgress) said a change was under way while the condition
    said LayoutRefused. mig-manager ends a layout it refuses `failed` (reconfigure.go validateMigConfig); now so does
    the gate."""
    waiting = decide(node(), pods=[GPU_POD])
    assert waiting.patches["n1"][MIG_CONFIG_STATE] == "pending"
    labels = apply_patch(node().labels, waiting.patches["n1"])
    typo = NodeFacts("n1", labels={**labels, MIG_CONFIG: "all-1g.10gbb"})
    d = decide(typo, pods=[GPU_POD], managers=frozenset())
    assert d.refused == [("n1", "all-1g.10gbb", "is not in the default layouts")]
    assert d.patches == {"n1": {MIG_CONFIG_STATE: "failed"}}


def test_a_waiting_change_withdrawn_by_removing_the_label_does_not_stay_pending() -> None:
    """With migManager.config.default "" the admin may withdraw a waiting change by removing nvidia.com/mig.config.
    The gate then released mig-manager but left the `pending` it had written itself: mig-manager, started with no
    label, runs no reconfigure (mig-parted's SyncableMigConfig.Set("") does not wake Get), so the node said a change
    was under way for good and stayed among the MIG pass's busy nodes. Now the gate removes its `pending`: nothing
    was applied and nothing is asked for."""
    spec = parse_spec({"migManager": {"config": {"default": ""}}})
    waits = decide(node(), spec, pods=[GPU_POD])
    assert waits.patches["n1"] == {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}
    labels = apply_patch(node().labels, waits.patches["n1"])
    del labels[MIG_CONFIG]  # kubectl label node n1 nvidia.com/mig.config-
    withdrawn = NodeFacts("n1", labels=labels)
    assert mig.busy(withdrawn, spec, None)
    d = decide(withdrawn, spec, pods=[GPU_POD], managers=frozenset())
    assert d.patches == {"n1": {MANAGER: "true", MIG_CONFIG_STATE: None}} and not d.waiting
    assert not mig.busy(NodeFacts("n1", labels=apply_patch(labels, d.patches["n1"])), spec, None)


def test_a_pending_mig_manager_wrote_is_kept_when_the_label_goes_mid_change() -> None:
    """The gate removed any mig.config.state=pending once no layout was asked for, taking it for its own wait's. But
    mig-manager writes `pending` too, before it pauses the operands (mig-parted pkg/mig/reconfigure/reconfigure.go
    Run: setNodeLabel(pending), then shutdownKubernetesGPUClients), and that label write wakes a pass at once: a label
    removed in that moment had the gate delete mig-manager's `pending`, and the next pass, finding operands paused
    with no change under way, restored them while mig-parted was still reconfiguring the GPUs. The gate's wait holds
    mig-manager; mig-manager's own run is not held: now only a held `pending` is removed."""
    spec = parse_spec({"migManager": {"config": {"default": ""}}})
    # mig-manager (not held) has just started the change the gate let through; the admin removes the label
    labels = {k: v for k, v in node(approved="all-1g.10gb").labels.items() if k != MIG_CONFIG}
    running = NodeFacts("n1", labels={**labels, MIG_CONFIG_STATE: "pending"})
    assert decide(running, spec).patches == {}
    # then mig-manager pauses the operands: left to finish
    paused = NodeFacts("n1", labels={**running.labels, PLUGIN: mig.PAUSED})
    assert decide(paused, spec).patches == {}


def test_a_pending_let_through_then_withdrawn_before_mig_manager_runs_is_removed() -> None:
    """Once only a held `pending` was removed, the gate's own outlived its hold: let through (mig-manager released,
    the `pending` left for it to end), then withdrawn (label removed, config.default "") before the new mig-manager
    pod read the label, it stayed for good, since a pod started with no label never runs a change (mig-parted
    cmd/nvidia-mig-manager/main.go: SyncableMigConfig.Set("") does not wake Get), and the node stayed busy. Now it
    is removed also while no live mig-manager pod is on the node."""
    spec = parse_spec({"migManager": {"config": {"default": ""}}})
    waits = decide(node(), spec, pods=[GPU_POD])
    assert waits.patches["n1"] == {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}
    held = NodeFacts("n1", labels=apply_patch(node().labels, waits.patches["n1"]))
    through = decide(held, spec, managers=frozenset())  # the GPU pods are gone
    labels = apply_patch(held.labels, through.patches["n1"])
    assert labels[MANAGER] == "true" and labels[MIG_CONFIG_STATE] == "pending"
    del labels[MIG_CONFIG]  # withdrawn before the new mig-manager pod exists
    withdrawn = NodeFacts("n1", labels=labels)
    d = decide(withdrawn, spec, managers=frozenset())
    assert d.patches == {"n1": {MIG_CONFIG_STATE: None}}
    assert not mig.busy(NodeFacts("n1", labels=apply_patch(labels, d.patches["n1"])), spec, None)


def _after_passes(n: NodeFacts, spec: Any, passes: int = 1) -> dict[str, str]:
    """The node's labels after `passes` labelling passes each followed by a MIG pass (as the reconciler runs them;
    a pass's node write wakes the next)."""
    labels = dict(n.labels)
    for _ in range(passes):
        labels = apply_patch(labels, desired_labels(NodeFacts("n1", labels=labels), spec))
        after = NodeFacts("n1", labels=labels)
        d = mig.decide([after], spec, layouts=None, pods={}, managers=frozenset()) if mig.busy(after, spec, None) \
            else mig.Decision()  # fmt: skip
        labels = apply_patch(labels, d.patches.get("n1", {}))
    return labels


def _held_wait() -> NodeFacts:
    waits = decide(node(), pods=[GPU_POD])
    assert waits.patches["n1"] == {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}
    return NodeFacts("n1", labels=apply_patch(node().labels, waits.patches["n1"]))


def test_a_waiting_change_on_a_node_that_loses_mig_capability_does_not_stay_pending_and_held() -> None:
    """After a wait (mig-manager held, the gate's `pending`) the GPU is replaced by one without MIG (GFD:
    mig.capable=false, an L40S). `_is_quiet` called the unmanaged node quiet, so `decide` never saw it again, and
    desired_labels removed only a mig-manager label of `true`: `pending` and the hold stayed for good (doctor:
    a MIG change forever). Now the MIG pass removes its wait's `pending`, then the labelling pass the hold."""
    lost = NodeFacts("n1", labels={**_held_wait().labels, "nvidia.com/mig.capable": "false",
                                   "nvidia.com/gpu.product": "NVIDIA-L40S"})  # fmt: skip
    assert mig.busy(lost, SPEC, None)
    labels = _after_passes(lost, SPEC)
    assert MIG_CONFIG_STATE not in labels and labels[MANAGER] == mig.PAUSED, labels
    labels = _after_passes(NodeFacts("n1", labels=labels), SPEC)
    assert MANAGER not in labels and MIG_CONFIG_STATE not in labels, labels
    assert not mig.busy(NodeFacts("n1", labels=labels), SPEC, None)
    # mig-manager's own `pending` (its operands paused) is not the gate's: restored and ended `failed` instead.
    mid = NodeFacts("n1", labels={**lost.labels, MANAGER: "true", PLUGIN: mig.PAUSED})
    assert _after_passes(mid, SPEC)[MIG_CONFIG_STATE] == "failed"


def test_a_waiting_change_does_not_stay_pending_once_mig_manager_is_disabled() -> None:
    """Same hold, then migManager.enabled=false: no mig-manager runs there, and the gate (checking only while it is
    enabled) left its own `pending`, so the node said a change was under way for as long as mig-manager stayed off.
    Now the `pending` goes; the hold stays, so re-enabling mig-manager checks the change again."""
    off = parse_spec({"migManager": {"enabled": False}})
    labels = _after_passes(_held_wait(), off, passes=2)
    assert MIG_CONFIG_STATE not in labels and labels[MANAGER] == mig.PAUSED, labels
    assert not mig.busy(NodeFacts("n1", labels=labels), off, None)
    d = decide(NodeFacts("n1", labels=labels), pods=[GPU_POD], managers=frozenset())  # enabled again
    assert d.waiting and d.patches["n1"] == {MIG_CONFIG_STATE: "pending"}, d.patches


def test_a_held_refusal_writes_nothing_more_and_its_event_repeats_word_for_word() -> None:
    first = decide(node("nope"))
    again = decide(node("nope", **{MANAGER: mig.PAUSED}), managers=frozenset())
    assert again.patches == {} and again.events == first.events  # the recorder drops a repeat


def test_a_change_waits_while_gpu_pods_run() -> None:
    d = decide(node(), pods=[GPU_POD, DS_POD])
    assert d.patches == {"n1": {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}}
    assert d.waiting and "team/train" in d.waiting[0][2] and not d.evict
    assert [e.reason for e in d.events] == [mig.EVENT_WAITING]
    cond = mig.condition(d, 1, [], "t0")
    assert cond is not None and cond["reason"] == "WaitingForGPUWorkloads" and "team/train" in cond["message"]


def test_the_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    """lastTransitionTime moves only when the status does (moving on every pass, it would write the status each
    pass). The other condition tests give no previous condition, so they did not see that."""
    waiting = mig.condition(decide(node(), pods=[GPU_POD]), 1, [], "t0")
    assert waiting is not None and waiting["status"] == "False"
    refused = mig.condition(decide(node("nope")), 2, [waiting], "t1")  # still False, for another reason
    assert refused is not None and refused["reason"] == "LayoutRefused" and refused["lastTransitionTime"] == "t0"
    accepted = mig.condition(decide(node()), 3, [refused], "t2")
    assert accepted is not None and accepted["status"] == "True" and accepted["lastTransitionTime"] == "t2"
    again = mig.condition(decide(node()), 4, [accepted], "t3")
    assert again is not None and again["lastTransitionTime"] == "t2" and again["observedGeneration"] == 4


def test_an_empty_default_with_no_layout_label_asks_for_nothing() -> None:
    # Upstream's CRD allows config.default "": no mig.config is seeded and mig-manager has nothing to apply.
    spec = parse_spec({"migManager": {"config": {"default": ""}}})
    bare = NodeFacts("n1", labels={k: v for k, v in node().labels.items() if k != MIG_CONFIG})
    assert mig.changes_requested([bare], spec) == []
    d = decide(bare, spec, pods=[GPU_POD])
    assert (d.refused, d.patches, d.events, d.waiting) == ([], {}, [], [])
    # A hold left from before is released.
    held = NodeFacts("n1", labels={**bare.labels, MANAGER: mig.PAUSED})
    assert decide(held, spec).patches == {"n1": {MANAGER: "true"}}
    # A label set by the admin is checked as ever.
    assert [r[:2] for r in decide(node("nope"), spec).refused] == [("n1", "nope")]


def test_a_finished_gpu_pod_does_not_hold_a_change() -> None:
    done = WorkloadPod("team", "old", "n1", uses_gpu=True, phase="Succeeded")
    assert decide(node(), pods=[done]).patches == {"n1": {mig.APPROVED: "all-1g.10gb"}}


def test_eviction_when_the_policy_allows_it() -> None:
    d = decide(node(), EVICT, pods=[GPU_POD])
    assert d.evict == {"n1": (("team", "train"),)}
    assert "evicting" in d.waiting[0][2]


def test_eviction_follows_drain_rules_for_pods_without_a_controller_and_with_emptydir() -> None:
    # As the upgrade's drain: a bare pod needs drain.force, emptyDir storage drain.deleteEmptyDir; else none goes.
    bare = WorkloadPod("team", "notebook", "n1", uses_gpu=True, controlled=False)
    scratch = WorkloadPod("team", "scratch", "n1", uses_gpu=True, has_emptydir=True)
    rules = [
        (bare, "no controller (nothing would recreate it) and driver.upgradePolicy.drain.force is false"),
        (scratch, "emptyDir storage and driver.upgradePolicy.drain.deleteEmptyDir is false"),
    ]
    for pod, rule in rules:
        d = decide(node(), EVICT, pods=[GPU_POD, pod])
        assert d.evict == {} and d.patches == {"n1": {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}}
        assert f"pod {pod.ref} " in d.waiting[0][2] and rule in d.waiting[0][2]
    both = parse_spec({"driver": {"upgradePolicy": {"drain": {"enable": True, "force": True, "deleteEmptyDir": True}}}})
    d = decide(node(), both, pods=[GPU_POD, bare, scratch])
    assert d.evict == {"n1": (("team", "train"), ("team", "notebook"), ("team", "scratch"))}


def test_eviction_keeps_to_drains_pod_selector_and_skip_label() -> None:
    """The gate evicted every GPU pod under driver.upgradePolicy.drain, ignoring drain.podSelector and the label
    nvidia.com/gpu-driver-upgrade-drain.skip=true, which upstream's drain (drain_manager.go PodSelector, with
    `...drain.skip!=true` appended) and our upgrade's (planner.drain) keep to: a workload the admin had left out of
    the operator's drain was evicted for a MIG change. Now such a pod, like a DaemonSet's, is never evicted and
    holds the change; the others are evicted as before."""
    spec = parse_spec({"driver": {"upgradePolicy": {"drain": {"enable": True, "podSelector": "tier=batch"}}}})
    serving = WorkloadPod("team", "serving", "n1", uses_gpu=True, labels={"tier": "serving"})
    d = decide(node(), spec, pods=[serving])
    assert d.evict == {} and d.cordon == []
    assert d.patches == {"n1": {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}}
    assert d.waiting[0][2] == "1 GPU pod(s) running: team/serving (never evicted: team/serving not selected by " \
        f"driver.upgradePolicy.drain.podSelector 'tier=batch' or labelled {DRAIN_SKIP_LABEL}=true)"  # fmt: skip
    batch = WorkloadPod("team", "batch", "n1", uses_gpu=True, labels={"tier": "batch"})
    d = decide(node(), spec, pods=[serving, batch])
    assert d.evict == {"n1": (("team", "batch"),)} and d.cordon == ["n1"]
    assert "never evicted: team/serving" in d.waiting[0][2]

    pinned = WorkloadPod("team", "pinned", "n1", uses_gpu=True, labels={DRAIN_SKIP_LABEL: "true"})
    d = decide(node(), EVICT, pods=[pinned])
    assert d.evict == {} and d.cordon == [] and d.waiting[0][2].endswith(f"labelled {DRAIN_SKIP_LABEL}=true)")

    invalid = parse_spec({"driver": {"upgradePolicy": {"drain": {"enable": True, "podSelector": "tier in (a"}}}})
    d = decide(node(), invalid, pods=[batch])
    assert d.evict == {} and d.cordon == [] and "drain.podSelector is invalid" in d.waiting[0][2]


def test_a_gpu_pod_of_a_daemonset_mig_manager_does_not_stop_holds_the_change_and_is_never_evicted() -> None:
    """Every DaemonSet pod was left out of the wait. mig-manager (mig-parted pkg/mig/reconfigure) stops only the
    DaemonSet pods selecting on a deploy label it pauses (the operands, GPU clients on nvidia.com/gpu.deploy.client)
    and host services: a user's DaemonSet or static pod asking for a GPU kept it through the change, which then
    failed or ran under it. Now such a pod holds the change; like kubectl drain, it is never evicted."""
    client = WorkloadPod("mon", "probe", "n1", uses_gpu=True, is_daemonset_pod=True,
                         deploy_selector=(deploy_label("client"),))  # fmt: skip
    assert decide(node(), pods=[DS_POD, client]).patches == {"n1": {mig.APPROVED: "all-1g.10gb"}}
    user_ds = WorkloadPod("mon", "gpu-burn", "n1", uses_gpu=True, is_daemonset_pod=True)
    static = WorkloadPod("kube-system", "inference-n1", "n1", uses_gpu=True, is_daemonset_pod=True, controlled=False)
    for pod in (user_ds, static):
        for spec in (SPEC, EVICT):
            d = decide(node(), spec, pods=[DS_POD, pod])
            assert d.patches == {"n1": {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}} and d.evict == {}
            assert d.waiting[0][2] == f"1 GPU pod(s) running: {pod.ref} (DaemonSet or static pods, never evicted)"
    d = decide(node(), EVICT, pods=[GPU_POD, user_ds])
    assert d.evict == {"n1": (("team", "train"),)}
    assert d.waiting[0][2] == "evicting 1 GPU pod(s): team/train; 1 DaemonSet or static GPU pod(s), never evicted: " \
        "mon/gpu-burn"  # fmt: skip
    projected = WorkloadPod.from_pod({
        "metadata": {"namespace": "gpu-operator", "name": "plugin",
                     "ownerReferences": [{"kind": "DaemonSet", "name": "plugin-ds", "controller": True}]},
        "spec": {"nodeName": "n1", "nodeSelector": {PLUGIN: "true", "kubernetes.io/os": "linux"},
                 "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
        "status": {"phase": "Running"},
    })  # fmt: skip
    assert projected.deploy_selector == (PLUGIN,) and decide(node(), pods=[projected]).patches == {
        "n1": {mig.APPROVED: "all-1g.10gb"}
    }


def test_the_hold_is_released_once_the_pods_are_gone() -> None:
    held = node(**{MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"})
    assert decide(held, managers=frozenset()).patches == {"n1": {mig.APPROVED: "all-1g.10gb", MANAGER: "true"}}


def test_a_revert_to_the_approved_layout_releases_the_hold() -> None:
    held = node("all-disabled", **{MANAGER: mig.PAUSED})
    assert decide(held, managers=frozenset()).patches == {"n1": {MANAGER: "true"}}


def test_mig_manager_mid_change_is_left_alone() -> None:
    busy = node("all-3g.40gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "pending", PLUGIN: mig.PAUSED})
    assert decide(busy, pods=[GPU_POD]).patches == {}


def test_paused_operands_are_restored_when_the_change_is_over() -> None:
    over = node("all-1g.10gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "success", PLUGIN: mig.PAUSED})
    d = decide(over)
    assert d.patches == {"n1": {PLUGIN: "true"}}
    assert [e.reason for e in d.events] == [mig.EVENT_RESTORED]


def test_paused_operands_are_restored_and_the_change_failed_when_mig_manager_is_gone() -> None:
    cut = node("all-1g.10gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "pending", PLUGIN: mig.PAUSED})
    off = parse_spec({"migManager": {"enabled": False}})
    d = decide(cut, off, managers=frozenset())
    assert d.patches == {"n1": {PLUGIN: "true", MIG_CONFIG_STATE: "failed"}}
    assert "gone" in d.events[0].message
    assert mig.condition(d, 1, [], "t") is None  # no MIG node managed


def test_paused_operands_wait_for_a_mig_manager_that_is_coming_back() -> None:
    rebooting = node("all-1g.10gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "rebooting", PLUGIN: mig.PAUSED})
    assert decide(rebooting, managers=frozenset()).patches == {}


def test_a_user_opt_out_of_mig_manager_is_not_gated() -> None:
    assert decide(node("nope", **{MANAGER: "false"})).patches == {}


def test_unknown_gpu_is_not_judged_but_a_name_in_no_config_is_refused() -> None:
    """A layout is judged against the node's GPU only once the GPU is known, but a name no config has needs no GPU:
    mig-manager fails it (assert --valid-config: selected mig-config not present). That check once waited for the
    GPU too, so a typo on a MIG-capable GPU missing from the table went unreported, `MIGConfig` True."""
    n = node("all-3g.40gb")
    n.labels.pop("nvidia.com/gpu.product")
    assert decide(n).patches == {}
    for product in ("", "NVIDIA-RTX-PRO-5000-Blackwell"):
        typo = node("all-1g.10gbb", **{"nvidia.com/gpu.product": product})
        d = decide(typo)
        assert d.refused == [("n1", "all-1g.10gbb", "is not in the default layouts")]
        assert d.patches == {"n1": {MANAGER: mig.PAUSED}}


def test_a_layout_mig_manager_builds_from_an_unknown_gpu_is_left_to_it() -> None:
    """Without a ConfigMap of the user's, mig-manager (v0.14 on, setupMigConfig) builds each node's layouts from its
    GPUs: all-disabled, all-enabled, all-balanced and all-<profile> for each profile NVML reports; the default
    layouts are only its fallback. A name missing from the default table was refused on a GPU the table does not
    know (a new model, or a profile the table lacks), so mig-manager was held from a layout it would apply."""
    new = node("all-1g.32gb", **{"nvidia.com/gpu.product": "NVIDIA-RTX-PRO-5000-Blackwell"})
    assert decide(new).refused == [] and decide(new).patches == {}
    # On a GPU the table knows, or with the user's ConfigMap (the only one mig-manager then reads), it is refused.
    assert decide(node("all-1g.32gb")).refused == [("n1", "all-1g.32gb", "is not in the default layouts")]
    spec = parse_spec({"migManager": {"config": {"name": "custom-mig-config"}}})
    custom = decide(new, spec=spec, layouts=mig.parse_config(CUSTOM))
    assert custom.refused == [("n1", "all-1g.32gb", "is not in ConfigMap custom-mig-config")]


def test_a_layout_mig_manager_builds_from_an_h200_nvl_is_let_through() -> None:
    """Without migManager.config.name (the API's and the chart's default) mig-manager builds the node's layouts from
    its GPU: all-<profile> for every profile NVML lists (mig-parted pkg/mig/builder buildMigConfigSpec), the H200
    NVL's 1g.35gb too. The gate (and `mig layouts`, and the doctor's fix) judged them by the default ConfigMap, whose
    all-1g.35gb leaves the H200 NVL out (`not_in_defaults`, as upstream's): the layout was refused and mig-manager
    held, though it would apply it. With the default ConfigMap named, mig-manager reads only that: refused."""
    nvl = node("all-1g.35gb", **{"nvidia.com/gpu.product": "NVIDIA-H200-NVL"})
    d = decide(nvl)
    assert d.refused == [] and d.patches == {"n1": {mig.APPROVED: "all-1g.35gb"}}
    gpu = mig.gpu_of_node(nvl)
    assert gpu is not None and "all-1g.35gb" in mig.valid_layouts(gpu, mig.node_layouts(gpu, None))
    spec = parse_spec({"migManager": {"config": {"name": "default-mig-parted-config"}}})
    fixed = decide(nvl, spec=spec, layouts=mig_layouts.default_layouts())
    assert fixed.refused == [("n1", "all-1g.35gb", "is not valid for H200 NVL (ConfigMap default-mig-parted-config)")]
    for g in mig_layouts.gpus():  # every layout mig-manager builds passes the gate's name check and fits its GPU
        built = mig_layouts.generated_layouts(g)
        assert set(built) <= set(mig_layouts.default_layouts()) and mig.valid_layouts(g, built) == list(built), g.name


CUSTOM = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  team-a:
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
  too-many:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 3}
"""


def test_a_users_config_replaces_the_default_layouts() -> None:
    layouts = mig.parse_config(CUSTOM)
    assert decide(node("team-a"), layouts=layouts).patches == {"n1": {mig.APPROVED: "team-a"}}
    assert decide(node("too-many"), layouts=layouts).refused  # more than the GPU holds
    assert decide(node("all-1g.10gb"), layouts=layouts).refused  # not in the user's config


@pytest.mark.parametrize("text", ["{", "version: v1", "mig-configs: {a: 1}", "mig-configs: {a: [{devices: all}]}"])
def test_a_broken_config_is_an_error(text: str) -> None:
    with pytest.raises(mig.ConfigError):
        mig.parse_config(text)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("version: v1\n", "", "version: must be v1, not missing"),
        ("version: v1\n", "version: v2\n", "version: must be v1, not 'v2'"),
        ("version: v1\n", "version: v1\nmig-config: {}\n", "mig-config: unexpected field"),
        ("      devices: all\n      mig-enabled: true", "      mig-enabled: true",
         "mig-configs.team-a[0]: missing required field devices"),
        ("devices: all\n      mig-enabled: true", "devices: [0, one]\n      mig-enabled: true",
         "mig-configs.team-a[0].devices: must be all or a list of GPU indices"),
        ('      mig-devices: {"3g.40gb": 2}\n', "",
         "mig-configs.team-a[0]: mig-devices is required when mig-enabled is true"),
        ("mig-enabled: true", 'mig-enabled: "false"', "mig-configs.team-a[0].mig-enabled: must be true or false"),
        ('{"3g.40gb": 2}', '{"3g.40gb": 0}', "mig-configs.team-a[0].mig-devices: all counts are 0"),
        ('{"3g.40gb": 2}', '{"3g.40gb": null}', "mig-configs.team-a[0].mig-devices: all counts are 0"),  # null: 0
        ('{"3g.40gb": 2}', '{"3g.40gb": two}', "mig-configs.team-a[0].mig-devices.3g.40gb: the count must be"),
        ('{"3g.40gb": 2}', '{"3g.40gb": [2]}', "mig-configs.team-a[0].mig-devices.3g.40gb: the count must be"),
        ('{"3g.40gb": 2}', '{"3g.40gb": -1}', "mig-configs.team-a[0].mig-devices.3g.40gb: the count must be"),
        ('{"3g.40gb": 2}', '{"3g40gb": 2}', "mig-configs.team-a[0].mig-devices.3g40gb: not a MIG profile name"),
        ('{"3g.40gb": 2}', '{"1g.10gb+me-x": 2}', "mig-configs.team-a[0].mig-devices.1g.10gb+me-x: not a MIG"),
        ("      mig-enabled: false\n", "      mig-enabled: false\n      mig-devices: {1g.10gb: 1}\n",
         "mig-configs.all-disabled[0].mig-devices: must be empty when mig-enabled is false"),
        ("      mig-enabled: true", "      mig-enable: true\n      mig-enabled: true",
         "mig-configs.team-a[0].mig-enable: unexpected field"),
        ('device-filter: ["0x233010DE"]', "device-filter: 5", "mig-configs.team-a[0].device-filter: must be a"),
        ('device-filter: ["0x233010DE"]', "device-filter: [0x233010DE]",  # unquoted: a YAML number
         "mig-configs.team-a[0].device-filter: must be a"),
        ("  team-a:\n", "  team-a: []\n  team-b:\n", "mig-configs.team-a: must be a list of at least one entry"),
    ],
)
def test_a_config_mig_parted_refuses_is_a_config_error_naming_the_key_and_the_rule(
    old: str, new: str, error: str
) -> None:
    """mig-parted (api/spec/v1/spec.go) refuses the whole file for each of these, and mig-manager then fails every
    layout. The check was looser: some were taken as valid (missing version or devices, a string "false", counts all
    0, an unknown field), and a bad count or device filter raised a bare ValueError that ended every pass."""
    text = CUSTOM.replace(old, new, 1)
    assert text != CUSTOM
    with pytest.raises(mig.ConfigError) as err:
        mig.parse_config(text)
    assert str(err.value).startswith(error), str(err.value)


def test_what_mig_parted_accepts_is_accepted() -> None:
    """Go's decoder takes null as false or 0 and YAML's 2.0 as 2; an empty device filter selects every GPU."""
    text = CUSTOM.replace("device-filter: [\"0x233010DE\"]", "device-filter: null").replace(
        '{"3g.40gb": 2}', '{"3g.40gb": 2.0, "1g.10gb": null, "1c.3g.40gb": 0}'
    )
    text += "  two-off:\n    - {devices: [0, 1], mig-enabled: null, mig-devices: {}}\n"
    layouts = mig.parse_config(text)
    assert layouts["team-a"] == (mig_layouts.LayoutEntry(True, {"3g.40gb": 2}),)
    assert layouts["two-off"] == (mig_layouts.LayoutEntry(False, {}, devices=(0, 1)),)



@pytest.mark.parametrize("value", ["233010DE", "0x233010DE:16A110DE", "0x1233010DE", "", "0xZZ", "0x1:0x2:0x3"])
def test_a_device_filter_mig_parted_cannot_read_is_a_config_error(value: str) -> None:
    """mig-parted reads a device filter with Go's strconv.ParseUint(s, 0, 32) (pkg/types/device.go
    NewDeviceIDFromString) and ignores a failure (api/spec/v1/helpers.go MatchesDeviceFilter): without `0x` the
    value is decimal, `233010DE` fails, and the filter selects no GPU. mig-manager then walks no GPU and reports
    success with MIG off. The operator read `233010DE` as 0x233010DE and let the layout through as valid."""
    text = CUSTOM.replace('["0x233010DE"]', f'["0x20B010DE", "{value}"]')
    with pytest.raises(mig.ConfigError) as err:
        mig.parse_config(text)
    assert str(err.value).startswith(f"mig-configs.team-a[0].device-filter: {value!r} is not a device ID in hex "
                                     "with 0x (as 0x233010DE"), str(err.value)
    spec = parse_spec({"migManager": {"config": {"name": "custom-mig-config"}}})
    with pytest.raises(mig.ConfigError, match="ConfigMap custom-mig-config key config.yaml: mig-configs.team-a"):
        mig_pass._layouts(spec, {"custom-mig-config": {"config.yaml": text}})


def test_a_device_filter_is_read_as_mig_parted_reads_it() -> None:
    """0x or 0X, any case of hex digits, leading zeros, and a `:<subsystem ID>` (which only narrows the model)."""
    for value in ("0X233010de", "0x0000233010DE", "0x233010DE:0x16A110DE"):
        layouts = mig.parse_config(CUSTOM.replace('["0x233010DE"]', f'["{value}"]'))
        assert layouts["team-a"][0].device_filter == ("0x233010DE",), value


def test_every_entry_that_selects_the_gpu_must_fit_it() -> None:
    """mig-parted applies every entry whose device filter selects a GPU (assert.WalkSelectedMigConfigForEachGPU);
    an unfiltered entry with an A100 40GB profile fails on an H100 although a later entry fits it. The check took
    the first entry that fitted and let such a layout through."""
    text = """
version: v1
mig-configs:
  mixed-fleet:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  halves-then-quarters:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
    - device-filter: "0x233010DE"
      devices: [4, 5, 6, 7]
      mig-enabled: true
      mig-devices: {"2g.20gb": 3}
"""
    layouts = mig.parse_config(text)
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    assert mig.layout_entries(gpu, "mixed-fleet", layouts) is None
    assert [r[1] for r in decide(node("mixed-fleet"), layouts=layouts).refused] == ["mixed-fleet"]
    # Both entries select an H100 and fit it: GPUs 4-7 end with the second's devices.
    entries = mig.layout_entries(gpu, "halves-then-quarters", layouts)
    assert entries is not None and len(entries) == 2
    assert mig.advertised(entries, 8, "mixed") == {"nvidia.com/mig-3g.40gb": 8, "nvidia.com/mig-2g.20gb": 12}
    assert mig.advertised(entries, 8, "single") == {}  # two profiles on the node
    assert mig.advertised(entries, 4, "single") == {"nvidia.com/gpu": 8}


@pytest.mark.parametrize(
    "devices",
    [{"1g.10gb": 7, "7g.80gb": 1}, {"4g.40gb": 1, "3g.40gb": 2}, {"3g.40gb": 2, "1g.10gb": 1}],
    ids=["7x1g+7g", "4g+2x3g", "2x3g+1g"],
)
def test_a_combination_beyond_the_gpus_slices_is_not_valid(devices: dict[str, int]) -> None:
    """An H100 80GB has 7 compute and 8 memory slices: these need 14 or 10 compute, or 9 memory slices, so
    mig-parted's SetMigConfig fails once the operands are paused. Each profile was checked alone against its own
    maximum, and these were let through."""
    layouts = {"combo": (mig_layouts.LayoutEntry(True, devices),)}
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    assert mig.layout_entries(gpu, "combo", layouts) is None
    fits = {"combo": (mig_layouts.LayoutEntry(True, {"4g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}),)}
    assert mig.layout_entries(gpu, "combo", fits) is not None


# mig-parted matches a config's profile names by meaning (go-nvlib MigProfileInfo.Matches; mig-parted
# pkg/mig/config/config.go resolveMigProfileOnDevice), and creates compute-instance profiles, several to one GPU
# instance (pkg/types/mig_profile.go "1c.2g.10gb", the reuseGI loop of SetMigConfig).
SPELLINGS = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  explicit-c:
    - devices: all
      mig-enabled: true
      mig-devices: {"1c.1g.10gb": 4, "01g.10gb": 3}
  compute-instances:
    - devices: all
      mig-enabled: true
      mig-devices: {"1c.2g.20gb": 6}
  shared-3g:
    - devices: all
      mig-enabled: true
      mig-devices: {"1c.3g.40gb": 3, "2c.3g.40gb": 1}
  too-many-2g:
    - devices: all
      mig-enabled: true
      mig-devices: {"1c.2g.20gb": 7}
  too-many-3g:
    - devices: all
      mig-enabled: true
      mig-devices: {"2c.3g.40gb": 3}
"""
CUSTOM_SPEC = parse_spec({"migManager": {"config": {"name": "custom-mig-config"}}})


def test_a_profile_spelled_with_its_compute_slices_is_not_refused() -> None:
    """`1c.1g.10gb` is mig-parted's 1g.10gb (C == G; leading zeros are read as numbers too): mig-manager applies
    `explicit-c` on an H100. The operator compared profile names as strings against its table, refused the layout
    as "not valid for H100 80GB" and held mig-manager off the node, so the layout was never applied."""
    layouts = mig.parse_config(SPELLINGS)
    assert layouts["explicit-c"][0].mig_devices == {"1g.10gb": 7}
    d = decide(node("explicit-c"), spec=CUSTOM_SPEC, layouts=layouts)
    assert d.refused == []
    assert d.patches == {"n1": {mig.APPROVED: "explicit-c"}}


def test_a_compute_instance_profile_is_not_refused() -> None:
    """A 2g GPU instance with one 1-slice compute instance (`1c.2g.20gb`) is a profile NVML lists on an H100 and
    mig-parted creates. Under the single strategy the device plugin advertises it as nvidia.com/gpu
    (AddMIGResource("*", "gpu"), k8s-device-plugin internal/rm/rm.go). The operator refused it as "not valid for
    H100" and held mig-manager. Compute instances count as the GPU instances they fill (two 1c to a 2g, three 1c or
    one 2c and a 1c to a 3g)."""
    spec = parse_spec({"mig": {"strategy": "single"}, "migManager": {"config": {"name": "custom-mig-config"}}})
    layouts = mig.parse_config(SPELLINGS)
    for layout in ("compute-instances", "shared-3g"):  # both fit an H100
        assert decide(node(layout), spec=CUSTOM_SPEC, layouts=layouts).refused == [], layout
    assert decide(node("compute-instances"), spec=spec, layouts=layouts).refused == []
    # Two kinds of MIG device on a node: the single strategy's plugin fails on it (its own refusal)
    ((_, _, why),) = decide(node("shared-3g"), spec=spec, layouts=layouts).refused
    assert why.startswith("has MIG devices of 2 profiles (1c.3g.40gb, 2c.3g.40gb): the device plugin's single")
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    entries = mig.layout_entries(gpu, "compute-instances", layouts)
    assert entries is not None and mig.advertised(entries, 8, "single") == {"nvidia.com/gpu": 48}
    # 7 x 1c.2g needs 4 2g instances (an H100 has 3); 3 x 2c.3g needs 3 3g instances (it has 2).
    for layout in ("too-many-2g", "too-many-3g"):
        why = f"is not valid for {gpu.name} (ConfigMap custom-mig-config)"
        assert decide(node(layout), spec=spec, layouts=layouts).refused == [("n1", layout, why)]


def test_a_compute_instance_profile_is_refused_under_the_mixed_strategy() -> None:
    """The mixed strategy names a resource only for C == G profiles and the plugin fails on a MIG device no resource
    matches (k8s-device-plugin internal/rm/device_map.go buildMigDeviceMap): the refusal says so."""
    spec = parse_spec({"mig": {"strategy": "mixed"}, "migManager": {"config": {"name": "custom-mig-config"}}})
    d = decide(node("shared-3g"), spec=spec, layouts=mig.parse_config(SPELLINGS))
    assert [(n, lay) for n, lay, _ in d.refused] == [("n1", "shared-3g")]
    assert d.refused[0][2].startswith("has compute-instance profiles (1c.3g.40gb, 2c.3g.40gb): the device plugin's")
    assert decide(node("explicit-c"), spec=spec, layouts=mig.parse_config(SPELLINGS)).refused == []
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    entries = mig.layout_entries(gpu, "shared-3g", mig.parse_config(SPELLINGS))
    assert entries is not None and mig.advertised(entries, 8, "mixed") == {}  # the plugin fails: nothing


SINGLE_CASES = """
version: v1
mig-configs:
  half-and-half:
    - devices: [0, 1, 2, 3]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [4, 5, 6, 7]
      mig-enabled: false
  one-gpu-other:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
    - devices: [0]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  overridden:
    - devices: all
      mig-enabled: false
    - devices: all
      mig-enabled: true
      mig-devices: {"2g.20gb": 3}
"""


def test_a_multi_profile_layout_under_the_single_strategy_is_refused() -> None:
    """Under mig.strategy single (the Helm chart's default) the device plugin refuses MIG devices of more than one
    profile on a node, a MIG-enabled GPU with none, and MIG-enabled GPUs beside MIG-disabled ones ("invalid MIG
    configuration", as the project's own model says: e2e/advertise.py, and mig.advertised gives {}); GFD labels the
    node `<model>-MIG-INVALID`. The gate refused compute-instance layouts under mixed for that reason, yet let
    `all-balanced` (REFERENCE §4's example layout) through under single: the node then advertised no GPU at all and
    MIGConfig said LayoutsAccepted. Now refused, naming the strategy, like the mixed-strategy case."""
    single = parse_spec({"mig": {"strategy": "single"}})
    d = decide(node("all-balanced"), spec=single)
    assert [(n, lay) for n, lay, _ in d.refused] == [("n1", "all-balanced")], d.patches
    assert d.patches == {"n1": {mig.MANAGER_LABEL: mig.PAUSED}}
    assert d.refused[0][2] == (
        "has MIG devices of 3 profiles (1g.10gb, 2g.20gb, 3g.40gb): the device plugin's single strategy needs one "
        "profile on every GPU of a node and fails otherwise (mig.strategy mixed advertises each profile as its own "
        "resource)"
    )
    assert decide(node("all-enabled"), spec=single).refused[0][2].startswith("enables MIG with no MIG devices: ")
    for layout in ("all-1g.10gb", "all-disabled"):
        assert decide(node(layout), spec=single).refused == [], layout
    for spec in (SPEC, parse_spec({"mig": {"strategy": "mixed"}})):
        assert decide(node("all-balanced"), spec=spec).refused == []
    # Each GPU as the last entry that selects it leaves it.
    custom = parse_spec({"mig": {"strategy": "single"}, "migManager": {"config": {"name": "custom-mig-config"}}})
    layouts = mig.parse_config(SINGLE_CASES)
    refused = {lay: why.split(":")[0] for lay in layouts for _, lay, why in
               decide(node(lay), spec=custom, layouts=layouts).refused}  # fmt: skip
    assert refused == {"half-and-half": "enables MIG on some GPUs and not on others",
                       "one-gpu-other": "has MIG devices of 2 profiles (1g.10gb, 3g.40gb)",
                       "overridden": "turns MIG both on and off on its GPUs"}  # fmt: skip
    # What the gate refuses is what advertises nothing under single, for every default layout on every GPU
    for gpu in mig_layouts.gpus():
        for name in mig.valid_layouts(gpu):
            entries = mig.layout_entries(gpu, name)
            assert entries is not None
            fails = mig.advertised(entries, 8, "single") == {}
            assert bool(mig.single_strategy_problem(entries)) == fails, (gpu.name, name)
    # A node's layout let through under mixed is refused once the strategy is single (checked again as a config)
    quiet = node("all-balanced", approved="all-balanced")
    assert mig.busy(quiet, single, None) and decide(quiet, spec=single).refused
    assert not mig.busy(quiet, SPEC, None)


def test_the_single_strategy_refusal_applies_only_with_the_device_plugin_enabled() -> None:
    """The single-strategy refusal exists because the *device plugin* fails on such a layout. With
    `devicePlugin.enabled: false` (e.g. GPUs handed out by NVIDIA's DRA driver) no plugin runs and nothing fails on
    `all-balanced`, yet under the chart's default `mig.strategy: single` the gate refused it and held mig-manager
    (and refused again a layout let through before). Now let through."""
    spec = parse_spec({"mig": {"strategy": "single"}, "devicePlugin": {"enabled": False}})
    d = decide(node("all-balanced"), spec=spec)
    assert d.refused == [], d.refused
    assert d.patches == {"n1": {mig.APPROVED: "all-balanced"}}
    quiet = node("all-balanced", approved="all-balanced")
    assert not mig.busy(quiet, spec, None)
    assert mig.busy(quiet, parse_spec({"mig": {"strategy": "single"}}), None)


INDEXED_CASES = SINGLE_CASES + """\
  every-index:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [0, 1, 2, 3, 4, 5, 6, 7]
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
"""


def test_the_single_strategy_check_of_an_index_named_layout_uses_the_nodes_gpu_count() -> None:
    """single_strategy_problem judged a layout naming GPUs by index as if the node had every named index and, with
    an `all` entry, one more GPU, whatever GFD's `nvidia.com/gpu.count` said: `every-index` on an 8-GPU node (no GPU
    left to the `all` entry) and `half-and-half` on a 4-GPU node (no GPU 4-7) were refused with "enables MIG on
    some GPUs and not on others" although mig.advertised says they work. Now the node's GPUs 0..count-1 are judged
    when the count is known; unknown, the conservative slots as before."""
    spec = parse_spec({"mig": {"strategy": "single"}, "migManager": {"config": {"name": "custom-mig-config"}}})
    layouts = mig.parse_config(INDEXED_CASES)
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None

    def on(layout: str, gpus: int | None) -> NodeFacts:
        n = node(layout)
        return NodeFacts(n.name, labels={**n.labels, **({"nvidia.com/gpu.count": str(gpus)} if gpus else {})})

    for layout, gpus in (("every-index", 8), ("half-and-half", 4)):
        entries = mig.layout_entries(gpu, layout, layouts)
        assert entries is not None
        assert mig.advertised(entries, gpus, "single") != {}, "precondition: the project's own model says it works"
        assert decide(on(layout, gpus), spec=spec, layouts=layouts).refused == [], layout
    # on an 8-GPU node half-and-half does fail under single; with no count known both are refused, as before
    for layout, gpus, why in (
        ("half-and-half", 8, "enables MIG on some GPUs and not on others"),
        ("half-and-half", None, "enables MIG on some GPUs and not on others"),
        ("every-index", None, "has MIG devices of 2 profiles (1g.10gb, 3g.40gb)"),
    ):
        refused = decide(on(layout, gpus), spec=spec, layouts=layouts).refused
        assert [w.split(":")[0] for _, _, w in refused] == [why], (layout, gpus)


class FakeKube:
    """Answers the MIG pass: no pods; keeps the node patches. The user's ConfigMap comes from the snapshot."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        raise AssertionError(f"read {kind} {name}: the snapshot has it")

    def list(self, kind: str, **_: Any) -> list[dict[str, Any]]:
        return []

    def merge_patch(self, kind: str, name: str, body: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.patches.append((name, body))
        return body


def run_pass(nodes: list[NodeFacts], config: str | None = CUSTOM) -> tuple[mig.Decision, list[NodeFacts]]:
    spec = parse_spec({"migManager": {"config": {"name": "custom-mig-config"}}})
    data = {} if config is None else {"custom-mig-config": {"config.yaml": config}}
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={}, config_data=data)
    decision, after, _ = mig_pass.run(FakeKube(), "gpu-operator", spec, snap, nodes, lambda *a: None)  # type: ignore[arg-type]
    return decision, after


class DrainKube(FakeKube):
    """Answers the MIG pass with the node's pods, as the API lists them; records node patches and evictions in
    order."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        super().__init__()
        self.pods = pods
        self.calls: list[tuple[str, str, Any]] = []

    def list(self, kind: str, **_: Any) -> list[dict[str, Any]]:
        return list(self.pods) if kind == "Pod" else []

    def merge_patch(self, kind: str, name: str, body: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.calls.append(("patch", name, body))
        return body

    def evict(self, name: str, namespace: str) -> None:
        self.calls.append(("evict", f"{namespace}/{name}", None))


def replica(name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": name,
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "train-7d9", "controller": True}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip


def test_a_mig_change_that_evicts_cordons_the_node_first() -> None:
    """With driver.upgradePolicy.drain.enable the MIG pass evicted the GPU pods that held a change but never
    cordoned the node (kubectl drain and the driver upgrade cordon before they evict). The ReplicaSet's replacement
    was then free to land on the same node, whose GPUs the eviction had just freed (the device plugin still
    advertises them: mig-manager is held), so the next pass found a GPU pod again and evicted it again: the change
    looped instead of going ahead. Now the node is cordoned first, marked in the cluster as the gate's cordon."""
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    kube = DrainKube([replica("train-7d9-a")])
    decision, _, _ = mig_pass.run(kube, "gpu-operator", EVICT, snap, [node()], lambda *a: None)  # type: ignore[arg-type]
    assert decision.evict == {"n1": (("team", "train-7d9-a"),)}
    evicted = next(i for i, c in enumerate(kube.calls) if c[0] == "evict")
    cordon = {"metadata": {"annotations": {MIG_CORDONED: "true"}}, "spec": {"unschedulable": True}}
    assert ("patch", "n1", cordon) in kube.calls[:evicted], kube.calls


class DraKube(DrainKube):
    """n1 runs a pod holding a GPU through a ResourceClaim the NVIDIA DRA driver allocated (it requests no
    nvidia.com/* resource); resource.k8s.io/v1 is served."""

    def __init__(self) -> None:
        pod = {
            "metadata": {"namespace": "team", "name": "dra-train",
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "dra-train-5f", "controller": True}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"claims": [{"name": "gpu"}]}}],
                     "resourceClaims": [{"name": "gpu", "resourceClaimName": "dra-train-gpu"}]},
            "status": {"phase": "Running"},
        }  # fmt: skip
        super().__init__([pod])

    def request(self, method: str, path: str, *_: Any, **__: Any) -> dict[str, Any]:
        if path == "/apis/resource.k8s.io":
            return {"kind": "APIGroup", "versions": [{"groupVersion": "resource.k8s.io/v1", "version": "v1"}]}
        if path == "/apis/resource.k8s.io/v1/namespaces/team/resourceclaims/dra-train-gpu":
            result = {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0"}
            return {"metadata": {"namespace": "team", "name": "dra-train-gpu"},
                    "status": {"allocation": {"devices": {"results": [result]}}}}  # fmt: skip
        raise AssertionError(f"unexpected {method} {path}")


def test_a_mig_change_waits_for_a_pod_holding_the_gpu_through_a_dra_claim() -> None:
    """The gate found GPU workloads with WorkloadPod.from_pod alone (nvidia.com/gpu* or nvidia.com/mig-* requests):
    a pod holding a GPU through a ResourceClaim allocated by gpu.nvidia.com (the NVIDIA DRA driver) was not seen, the
    change was let through and mig-manager reconfigured a GPU in use (mig-parted fails on a busy GPU: `failed`).
    Now the gate counts such pods as the driver upgrade does (GpuClaims): the change waits naming the pod, and with
    drain.enable the pod is evicted."""
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    decision, _, _ = mig_pass.run(DraKube(), "gpu-operator", SPEC, snap, [node()], lambda *a: None)  # type: ignore[arg-type]
    assert decision.waiting and "team/dra-train" in decision.waiting[0][2], (decision.waiting, decision.patches)
    assert decision.patches["n1"] == {MANAGER: mig.PAUSED, MIG_CONFIG_STATE: "pending"}, decision.patches
    decision, _, _ = mig_pass.run(DraKube(), "gpu-operator", EVICT, snap, [node()], lambda *a: None)  # type: ignore[arg-type]
    assert decision.evict == {"n1": (("team", "dra-train"),)}


def gate_cordoned(layout: str = "all-1g.10gb", approved: str = "all-disabled", **labels: str) -> NodeFacts:
    """node(), cordoned by the gate (as the Node reads back: the mark is kept in its facts)."""
    obj = {"metadata": {"name": "n1", "labels": node(layout, approved, **labels).labels,
                        "annotations": {MIG_CORDONED: "true", "someone/else": "x"}},
           "spec": {"unschedulable": True}}  # fmt: skip
    return NodeFacts.from_node(obj)


def test_the_gates_cordon_stays_while_the_change_waits_or_is_under_way_and_goes_after() -> None:
    """The gate's cordon is read back from the node (a restarted operator finds it): kept while the change waits or
    mig-manager applies it, lifted once it is over, refused, or no longer the gate's to check (mig-manager off);
    left alone while the driver upgrade holds the node (its state machine cordons and uncordons it)."""
    assert gate_cordoned().annotations == {MIG_CORDONED: "true"}
    waits = decide(gate_cordoned(), EVICT, pods=[GPU_POD])
    assert waits.evict and (waits.cordon, waits.uncordon) == ([], [])  # cordoned already
    let_through = decide(gate_cordoned(**{MIG_CONFIG_STATE: "pending"}), EVICT)  # mig-manager applies it next
    assert let_through.patches["n1"][mig.APPROVED] == "all-1g.10gb" and let_through.uncordon == []
    assert decide(gate_cordoned(approved="all-1g.10gb", **{MIG_CONFIG_STATE: "rebooting"}), EVICT).uncordon == []
    for over in ("success", "failed"):
        assert decide(gate_cordoned(approved="all-1g.10gb", **{MIG_CONFIG_STATE: over}), EVICT).uncordon == ["n1"]
    assert decide(gate_cordoned("nope", **{MIG_CONFIG_STATE: "pending"}), EVICT).uncordon == ["n1"]  # refused
    off = parse_spec({"migManager": {"enabled": False}})
    assert decide(gate_cordoned(**{MIG_CONFIG_STATE: "pending"}), off).uncordon == ["n1"]
    held = gate_cordoned(approved="all-1g.10gb", **{UPGRADE_STATE: "drain-required"})
    assert decide(held, EVICT).uncordon == []
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    kube = FakeKube()
    mig_pass.run(kube, "gpu-operator", EVICT, snap, [gate_cordoned(approved="all-1g.10gb")], lambda *a: None)  # type: ignore[arg-type]
    uncordon = {"metadata": {"annotations": {MIG_CORDONED: None}}, "spec": {"unschedulable": None}}
    assert kube.patches == [("n1", uncordon)]


def _gate_pass(kube: FakeKube, n: NodeFacts) -> tuple[mig.Decision, NodeFacts]:
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    decision, (after,), _ = mig_pass.run(kube, "gpu-operator", EVICT, snap, [n], lambda *a: None)  # type: ignore[arg-type]
    return decision, after


class FailingKube(FakeKube):
    def merge_patch(self, kind: str, name: str, body: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        raise ApiError(500, "boom", f"patch {kind} {name}")


def test_the_gates_cordon_goes_when_the_node_is_no_longer_a_gpu_node() -> None:
    """`decide` looks only at busy nodes, and `busy` needed a GPU: a node the gate had cordoned for an eviction whose
    NFD GPU label then went (a GPU removed or fallen off the bus) was never looked at again and kept the cordon and
    its marker until an uninstall. Now a gate-cordoned node is busy until its cordon goes, as when mig-manager is
    disabled or the node's workload changes."""
    labels = {k: v for k, v in node(approved="all-1g.10gb").labels.items() if k != GPU_PCI_LABELS[0]}
    gone = NodeFacts.from_node({"metadata": {"name": "n1", "labels": labels, "annotations": {MIG_CORDONED: "true"}},
                                "spec": {"unschedulable": True}})  # fmt: skip
    assert not gone.has_gpu and mig.busy(gone, EVICT, None)
    d = decide(gone, EVICT)
    assert d.uncordon == ["n1"] and d.patches == {}
    assert not mig.busy(NodeFacts.from_node({"metadata": {"name": "n1", "labels": labels}}), EVICT, None)


def test_the_nodes_the_mig_pass_hands_on_are_as_its_cordons_leave_them() -> None:
    """The reconciler hands the MIG pass's nodes to the driver upgrade's planner in the same pass. They carried only
    the pass's label patches: a node whose gate cordon the pass had just lifted still read cordoned and marked as
    the gate's, and one it had just cordoned read schedulable. Now they read as the pass's writes left them; a node
    whose write failed reads as it was."""
    done = gate_cordoned(approved="all-1g.10gb", **{UPGRADE_STATE: "upgrade-done"})
    decision, after = _gate_pass(FakeKube(), done)
    assert decision.uncordon == ["n1"]
    assert not after.unschedulable and MIG_CORDONED not in after.annotations
    assert after.labels == done.labels
    decision, after = _gate_pass(DrainKube([replica("train-7d9-a")]), node())
    assert decision.cordon == ["n1"]
    assert after.unschedulable and after.annotations == {MIG_CORDONED: "true"}
    assert after.labels[MANAGER] == mig.PAUSED  # its label patch applied as before
    _, after = _gate_pass(FailingKube(), done)
    assert after == done


def test_the_gates_failed_writes_are_logged_as_the_mig_gates(caplog: pytest.LogCaptureFixture) -> None:
    """The MIG gate's cordons and evictions go through the driver upgrade's Executor, whose log lines all said
    "upgrade:": a failed uncordon of the gate, or an eviction of its drain a PodDisruptionBudget blocked, read as the
    driver upgrade's. Now they say "MIG:"."""
    import logging

    class Blocked(DrainKube):
        def evict(self, name: str, namespace: str) -> None:
            raise ApiError(429, '{"message": "disruption budget"}', f"POST {namespace}/{name}/eviction")

    with caplog.at_level(logging.INFO, logger="gpu_operator"):
        _gate_pass(FailingKube(), gate_cordoned(approved="all-1g.10gb"))
        _gate_pass(Blocked([replica("train-7d9-a")]), node())
    assert [r.getMessage() for r in caplog.records if " failed" in r.getMessage() or "blocked" in r.getMessage()] == [
        "MIG: patching node n1 failed: patch Node n1: 500 boom",
        "MIG: eviction of team/train-7d9-a blocked: disruption budget"]  # fmt: skip


def test_an_upgrade_starting_in_the_pass_the_gate_uncordons_the_node_cordons_it() -> None:
    """A gate-cordoned node whose MIG change ended in the pass its driver upgrade got a slot: the planner read the
    cordon the gate had just lifted as one from before the upgrade, recorded the node as initially unschedulable and
    wrote no Cordon of its own, so the upgrade drained the node and restarted its driver while it was schedulable.
    Now the planner sees the node uncordoned and cordons it itself."""
    _, after = _gate_pass(FakeKube(), gate_cordoned(approved="all-1g.10gb", **{UPGRADE_STATE: "upgrade-done"}))
    upgrade = make_node(labels=after.labels, annotations=after.annotations, unschedulable=after.unschedulable)
    p = plan([upgrade], [], policy(), 10_000.0)
    assert "cordon-required" in [a.state for a in p.actions if isinstance(a, SetState)]  # the upgrade starts now
    assert Cordon("n1") in p.actions
    assert not any(isinstance(a, Annotate) and a.key == INITIAL_UNSCHEDULABLE_ANNOTATION for a in p.actions)


def test_a_cordon_not_the_gates_is_never_lifted_and_an_upgrading_node_is_not_cordoned() -> None:
    """A node cordoned already (by the admin, or by the driver upgrade) is evicted without a cordon of the gate's,
    so nothing of the gate's lifts it; nor does the gate cordon a node the driver upgrade holds."""
    theirs = NodeFacts("n1", labels=node().labels, unschedulable=True)
    d = decide(theirs, EVICT, pods=[GPU_POD])
    assert d.evict and (d.cordon, d.uncordon) == ([], [])
    done = NodeFacts("n1", labels=node(approved="all-1g.10gb").labels, unschedulable=True)
    assert decide(done, EVICT).uncordon == [] and not mig.busy(done, EVICT, None)
    upgrading = NodeFacts("n1", labels={**node().labels, UPGRADE_STATE: "wait-for-jobs-required"})
    d = decide(upgrading, EVICT, pods=[GPU_POD])
    assert d.evict and d.cordon == []
    assert decide(node(), EVICT, pods=[GPU_POD]).cordon == ["n1"]


def test_a_refusal_or_wait_the_status_names_gets_no_event_again() -> None:
    """The MIGLayoutRefused / waiting events were deduplicated only in memory (the event recorder's): every restart
    and leader hand-over posted them again, though the MIGConfig condition names each node, layout and why. Now one
    the previous condition names is not posted again; a new reason is."""
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={})
    posted: list[str] = []
    decision, _, _ = mig_pass.run(FakeKube(), "gpu-operator", SPEC, snap, [node("nope")],  # type: ignore[arg-type]
                                  lambda ref, etype, reason, message: posted.append(reason))  # fmt: skip
    assert posted == [mig.EVENT_REFUSED]
    said = mig.condition(decision, 1, [], "t0")
    assert said is not None
    held = node("nope", **{MANAGER: mig.PAUSED})
    mig_pass.run(FakeKube(), "gpu-operator", SPEC, snap, [held],  # type: ignore[arg-type]
                 lambda ref, etype, reason, message: posted.append(reason), previous=[said])  # fmt: skip
    assert posted == [mig.EVENT_REFUSED], "restarted: the status says it already"

    waits = decide(node(), pods=[GPU_POD])
    said = mig.condition(waits, 1, [], "t0")
    assert said is not None and mig.unsaid(waits.events, [said]) == []
    other = decide(node(), pods=[WorkloadPod("team", "eval", "n1", uses_gpu=True)])
    assert [e.reason for e in mig.unsaid(other.events, [said])] == [mig.EVENT_WAITING]  # another pod: said anew


def test_a_condition_naming_many_nodes_names_whole_entries_and_how_many_more() -> None:
    """The MIGConfig message was cut at 2,000 characters wherever that fell (with 100 nodes waiting, after
    "node gpu-node-021: layout 'all-1g.10"), saying nothing of the nodes left out, where every other condition
    naming nodes says "and N more". Now it names whole entries and then how many more. The nodes it names get no
    Event again from a restarted operator (the half-written one did); those past the cut do, as with DriverRefused
    and InvalidWorkloadConfig past the nodes they name."""
    waiting = [(f"gpu-node-{i:03d}", "all-1g.10gb", f"2 GPU pods run on the node (default/train-{i})")
               for i in range(100)]  # fmt: skip
    events = [mig.NodeEvent(n, "Normal", mig.EVENT_WAITING, "", said=mig._said(n, lay, f"waits: {why}"))
              for n, lay, why in waiting]  # fmt: skip
    condition = mig.condition(mig.Decision(managed=100, waiting=waiting, events=events), 1, [], "t0")
    assert condition is not None
    message = condition["message"]
    entries = message.split("; ")
    named = len(entries) - 1
    assert len(message) <= mig.MESSAGE_LIMIT and 0 < named < 100
    assert entries[:named] == [e.said for e in events[:named]]
    assert entries[-1] == f"and {100 - named} more"
    assert mig.unsaid(events, [condition]) == events[named:]


def test_a_node_seen_first_is_judged_by_the_users_config() -> None:
    """A node with no approved label yet (a new node, or every node after install): the pass read the user's
    ConfigMap only for nodes asking for a change, so a first sight was judged by the default table: `team-a` refused
    and held for good, while `all-1g.10gb`, absent from the user's config (the only one mig-manager reads), was let
    through."""
    decision, after = run_pass([node("team-a", approved=None)])
    assert decision.refused == []
    assert after[0].labels[MANAGER] == "true" and after[0].labels[mig.APPROVED] == "team-a"
    decision, after = run_pass([node("all-1g.10gb", approved=None)])
    assert decision.refused == [("n1", "all-1g.10gb", "is not in ConfigMap custom-mig-config")]
    assert after[0].labels[MANAGER] == mig.PAUSED and mig.APPROVED not in after[0].labels


def test_a_users_config_that_cannot_be_read_refuses_the_layout_and_says_why() -> None:
    """A malformed count once raised out of the pass (every pass, until the ConfigMap was fixed); an unreadable
    config was reported as a layout "not valid for <GPU>". mig-manager refuses the whole file: the layout is refused
    with the reason, key path and rule."""
    bad = CUSTOM.replace('{"3g.40gb": 2}', '{"3g.40gb": two}')
    decision, _ = run_pass([node("team-a")], bad)
    ((_, layout, why),) = decision.refused
    assert layout == "team-a"
    assert why == (
        "cannot be applied: ConfigMap custom-mig-config key config.yaml: mig-configs.team-a[0].mig-devices.3g.40gb: "
        "the count must be a whole number >= 0, not 'two'"
    )
    cond = mig.condition(decision, 1, [], "t0")
    assert cond is not None and cond["reason"] == "LayoutRefused" and why in cond["message"]
    decision, _ = run_pass([node("team-a")], None)
    assert decision.refused[0][2] == "cannot be applied: ConfigMap custom-mig-config not found (migManager.config.name)"


# The user's ConfigMap after a switch of migManager.config.name: it has no `all-disabled`, the layout the operator
# seeds (config.default's default) and so the one most nodes carry, let through long ago.
WITHOUT_DISABLED = CUSTOM.replace("  all-disabled:\n    - devices: all\n      mig-enabled: false\n", "")


def test_a_config_switch_that_drops_a_nodes_applied_layout_is_reported() -> None:
    """Switching migManager.config.name (or editing the ConfigMap) changes the mig-manager DaemonSet's pod template,
    and the new pod reconfigures to the node's current nvidia.com/mig.config on start: a layout the new config does
    not have is failed by mig-manager (state `failed`). The gate looked only at layouts that differ from the one it
    let through, so such a node stayed quiet and MIGConfig said True/LayoutsAccepted. Now a let-through layout is
    checked against the config mig-manager reads now, also by a pass that keeps its busy nodes (MigKept): refused,
    mig-manager held; released once the config has it again; a layout still valid is left alone."""
    quiet = node("all-disabled", approved="all-disabled")
    decision, after = run_pass([quiet], WITHOUT_DISABLED)
    cond = mig.condition(decision, 1, [], "t0")
    assert cond is not None and cond["reason"] == "LayoutRefused", cond["message"]
    assert decision.refused == [("n1", "all-disabled", "is not in ConfigMap custom-mig-config")]
    assert after[0].labels[MANAGER] == mig.PAUSED and after[0].labels[MIG_CONFIG_STATE] == "success"
    decision, after = run_pass([node("team-a", approved="team-a")], WITHOUT_DISABLED)
    assert decision.refused == [] and decision.patches == {}  # still valid: left alone
    decision, _ = run_pass([quiet], CUSTOM.replace("  all-disabled:\n", "  all-disabled-renamed:\n"))
    assert decision.refused == [("n1", "all-disabled", "is not in ConfigMap custom-mig-config")]  # an edit too

    spec = parse_spec({"migManager": {"config": {"name": "custom-mig-config"}}})
    kept = mig_pass.MigKept()

    def kept_pass(nodes: list[NodeFacts], config: str) -> tuple[mig.Decision, list[NodeFacts]]:
        snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={},
                        config_data={"custom-mig-config": {"config.yaml": config}})
        decision, after, _ = mig_pass.run(FakeKube(), "gpu-operator", spec, snap, nodes, lambda *a: None, kept=kept)  # type: ignore[arg-type]
        return decision, after

    decision, after = kept_pass([quiet], CUSTOM)
    assert decision.refused == [] and decision.patches == {} and after == [quiet]  # quiet: not even decided on
    decision, after = kept_pass([quiet], WITHOUT_DISABLED)
    assert decision.refused == [("n1", "all-disabled", "is not in ConfigMap custom-mig-config")]
    assert decision.patches == {"n1": {MANAGER: mig.PAUSED}}
    decision, _ = kept_pass(after, WITHOUT_DISABLED)
    assert decision.refused and decision.patches == {}  # held: nothing more written
    decision, after = kept_pass(after, CUSTOM)  # the config has it again: released
    assert decision.refused == [] and decision.patches == {"n1": {MANAGER: "true"}}
    assert mig.condition(decision, 1, [], "t0")["reason"] == "LayoutsAccepted"  # type: ignore[index]


def test_what_a_layout_advertises() -> None:
    """Per strategy, what the device plugin advertises once a layout is applied (`mig layouts` prints it); a GPU no
    entry of the layout selects keeps what it has and is not counted."""
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    two = mig.parse_config("version: v1\nmig-configs:\n  two:\n  - devices: [0, 1]\n    mig-enabled: true\n"
                           "    mig-devices:\n      1g.10gb: 7\n")  # fmt: skip

    def adv(layout: str, strategy: str) -> dict[str, int]:
        entries = mig.layout_entries(gpu, layout, two if layout == "two" else None)
        assert entries is not None
        return mig.advertised(entries, 8, strategy)

    assert adv("all-1g.10gb", "mixed") == {"nvidia.com/mig-1g.10gb": 56}
    assert adv("all-1g.10gb", "single") == {"nvidia.com/gpu": 56}
    assert adv("all-balanced", "mixed") == {
        "nvidia.com/mig-1g.10gb": 16,
        "nvidia.com/mig-2g.20gb": 8,
        "nvidia.com/mig-3g.40gb": 8,
    }
    assert adv("all-balanced", "single") == {}
    assert adv("all-disabled", "mixed") == adv("all-disabled", "single") == {"nvidia.com/gpu": 8}
    assert adv("two", "mixed") == {"nvidia.com/mig-1g.10gb": 14}  # GPUs 2-7 not selected
    assert adv("two", "single") == {"nvidia.com/gpu": 14}
    # The device plugin's name: "+" becomes "." (nvidia.com/mig-1g.10gb+me is no valid resource name).
    assert adv("all-1g.10gb.me", "mixed") == {"nvidia.com/mig-1g.10gb.me": 8}


def test_cli_lists_layouts_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mig", "layouts", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "H100 80GB, H800 80GB, A100 80GB, A800 80GB [offline]: per GPU" in out
    h100 = out.split("H100 80GB, H800 80GB")[1].split("\nH100 NVL")[0]
    assert "  all-1g.10gb\n    mixed:  nvidia.com/mig-1g.10gb=7\n    single: nvidia.com/gpu=7" in h100
    assert "all-1g.18gb" not in h100


def test_cli_node_needs_the_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mig", "layouts", "--offline", "--node", "n1"]) == 2
    assert "--node" in capsys.readouterr().err


MODE_CASES = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  h100-split:
    - devices: all
      mig-enabled: false
    - device-filter: ["0x233010DE", "0x233110DE", "0x232210DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  gpu0-whole:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [0]
      mig-enabled: false
  apart:
    - devices: [0, 1, 2, 3]
      mig-enabled: false
    - devices: [4, 5, 6, 7]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
"""


def test_a_layout_whose_entries_disagree_on_mig_enabled_for_a_gpu_is_refused() -> None:
    """mig-parted applies a layout in two walks over its entries (apply/mode.go ApplyMigMode, then apply/config.go
    ApplyMigConfig): the mode walk leaves each GPU as the last selecting entry says, the config walk visits every
    selecting entry again and fails one whose mig-enabled is not the GPU's mode ("MIG mode is currently enabled, but
    the configuration specifies it should be disabled"). The gate let such a layout through ("MIG off everywhere,
    then 1g.10gb on the H100s", or "all split, then GPU 0 whole"); mig-manager then failed it. Now refused, naming the
    GPU; entries on different GPUs may still differ."""
    custom = {"migManager": {"config": {"name": "custom-mig-config"}}}
    layouts = mig.parse_config(MODE_CASES)

    def on(layout: str, spec: Any) -> mig.Decision:
        n = node(layout)
        n = NodeFacts(n.name, labels={**n.labels, "nvidia.com/gpu.count": "8"})
        return decide(n, spec=spec, layouts=layouts)

    single = parse_spec(custom)
    d = on("h100-split", single)
    assert d.refused == [("n1", "h100-split", "turns MIG both on and off on GPU 0: mig-parted sets the mode its last "
                          "entry for a GPU asks for, then fails the entries that ask for the other (mig-enabled)")]
    assert d.patches == {"n1": {MANAGER: mig.PAUSED}}
    mixed = parse_spec({**custom, "mig": {"strategy": "mixed"}})
    assert [(n, lay) for n, lay, _ in on("gpu0-whole", mixed).refused] == [("n1", "gpu0-whole")]
    assert on("apart", mixed).refused == []
    assert on("apart", mixed).patches == {"n1": {mig.APPROVED: "apart"}}
    # No default or generated layout mixes modes on a GPU
    for gpu in mig_layouts.gpus():
        for table in (mig_layouts.default_layouts(), mig_layouts.generated_layouts(gpu)):
            for name in mig.valid_layouts(gpu, table):
                entries = mig.layout_entries(gpu, name, table)
                assert entries is not None and mig.mode_conflict(entries) == "", (gpu.name, name)


CUSTOM_MIXED = {"migManager": {"config": {"name": "custom-mig-config"}}, "mig": {"strategy": "mixed"}}


def _mig_layouts_on(monkeypatch: Any, nodes: list[dict[str, Any]], spec: dict[str, Any], config: str = "") -> None:
    """`mig layouts` reads these nodes, one ClusterPolicy with `spec`, and `config` as its custom config's
    config.yaml (a stand-in for the cluster's reads)."""
    from gpu_operator.kube import Kube

    policy = {"metadata": {"name": "p", "creationTimestamp": "t"}, "spec": spec}

    class Fake:
        def list(self, kind: str) -> list[dict[str, Any]]:
            return {"Node": nodes, "ClusterPolicy": [policy]}[kind]

        def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
            return {"data": {"config.yaml": config}}

    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: Fake()))


def test_cli_names_a_layout_mig_parted_fails(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    """`mig layouts` printed what a layout whose entries disagree on mig-enabled would advertise; mig-parted fails
    it, so it says so instead."""
    nodes = [{"metadata": {"name": "n1", "labels": {**node("all-disabled").labels, "nvidia.com/gpu.count": "8"}}}]
    _mig_layouts_on(monkeypatch, nodes, CUSTOM_MIXED, MODE_CASES)
    assert main(["mig", "layouts"]) == 0
    out = capsys.readouterr().out
    assert "  gpu0-whole\n    refused: turns MIG both on and off on GPU 0 (mig-parted fails it)\n" in out
    assert "  apart\n    mixed:  nvidia.com/gpu=4, nvidia.com/mig-1g.10gb=28\n" in out


def _held(layout: str, layouts: mig.Layouts | None = None) -> tuple[mig_layouts.LayoutEntry, ...]:
    gpu = mig.gpu_of_product(H100)
    assert gpu is not None
    entries = mig.layout_entries(gpu, layout, layouts)
    assert entries is not None
    return entries


GPU1_WHOLE = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  gpu1-whole:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [1]
      mig-enabled: false
"""


@pytest.mark.parametrize("counts", [("4", "8"), (None,)], ids=["differing-gpu-counts", "unknown-gpu-count"])
def test_mig_layouts_says_refused_for_a_mode_conflict_the_gate_refuses_on_those_nodes(
    counts: tuple[str | None, ...], capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """The gate (mig._refusal) checks GPUs 0..count-1, or with the count unknown every index an entry names, so it
    refuses `gpu1-whole` (GPU 1: MIG on by `all`, off by `[1]`) on each of these nodes. `mig layouts` checked
    mode_conflict with gpus=1 whenever the nodes of a model differed in GPU count or one's count was unknown, i.e.
    GPU 0 only, and printed what the layout would advertise instead of `refused` (README: "`mig layouts` says
    `refused` for such a layout"). Now it checks each count the nodes have, as the gate does."""
    nodes = [{"metadata": {"name": f"n{i}", "labels": {"nvidia.com/gpu.product": H100, "nvidia.com/mig.capable": "true",
                                                       **({"nvidia.com/gpu.count": c} if c else {})}}}
             for i, c in enumerate(counts)]  # fmt: skip
    layouts = mig.parse_config(GPU1_WHOLE)
    for n in nodes:  # the gate refuses it on every one of them
        facts = NodeFacts.from_node(n)
        gpu = mig.gpu_of_node(facts)
        assert gpu is not None
        entries = mig.layout_entries(gpu, "gpu1-whole", layouts)
        assert entries is not None
        assert mig.mode_conflict(entries, mig.physical_gpus(facts.labels)) == "turns MIG both on and off on GPU 1"

    _mig_layouts_on(monkeypatch, nodes, CUSTOM_MIXED, GPU1_WHOLE)
    assert main(["mig", "layouts"]) == 0
    out = capsys.readouterr().out
    assert "  gpu1-whole\n    refused: turns MIG both on and off on GPU 1 (mig-parted fails it)\n" in out, out
    assert "  all-disabled\n    mixed:  nvidia.com/gpu=" in out, out


def test_mig_layouts_says_a_node_gpu_count_is_not_known_rather_than_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Under mig.strategy single GFD's gpu.count counts MIG devices, read back only through the layout a node holds
    in state success (physical_gpus: else not known). `mig layouts` printed an unknown count as `(1 GPUs)`, so an
    8-GPU H100 node whose last change failed (GFD: 56 x 1g.10gb) was said to have 1 GPU; now it says the count is
    not known."""
    labels = {"nvidia.com/gpu.product": f"{H100}-MIG-1g.10gb", "nvidia.com/gpu.count": "56",
              "nvidia.com/mig.capable": "true", "nvidia.com/mig.config": "all-1g.10gb"}  # fmt: skip
    nodes = [{"metadata": {"name": "n0", "labels": {**labels, "nvidia.com/mig.config.state": "failed"}}},
             {"metadata": {"name": "n1", "labels": {**labels, "nvidia.com/mig.config.state": "success"}}}]

    _mig_layouts_on(monkeypatch, nodes, {"mig": {"strategy": "single"}})
    assert main(["mig", "layouts"]) == 0
    out = capsys.readouterr().out
    assert "[n0 (GPU count not known), n1 (8 GPUs)]: per GPU\n" in out, out.splitlines()[1]


def test_physical_gpus_from_gfd_labels_under_each_strategy() -> None:
    h100 = "NVIDIA-H100-80GB-HBM3"
    assert mig.physical_gpus({"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": h100}) == 8
    single = {"nvidia.com/gpu.count": "56", "nvidia.com/gpu.product": h100 + "-MIG-1g.10gb"}
    assert mig.physical_gpus(single, _held("all-1g.10gb")) == 8
    assert mig.physical_gpus(single) is None  # the layout held is not known: nor how many devices each GPU has
    assert mig.physical_gpus(single, _held("all-3g.40gb")) is None  # GFD's labels are not of that layout
    three_g = {"nvidia.com/gpu.count": "16", "nvidia.com/gpu.product": h100 + "-MIG-3g.40gb"}
    assert mig.physical_gpus(three_g, _held("all-3g.40gb")) == 8
    assert mig.physical_gpus({"nvidia.com/gpu.product": h100}) is None


def test_physical_gpus_of_a_time_sliced_single_strategy_node() -> None:
    """With time-slicing GFD's product is `<model>-MIG-<profile>-SHARED` (k8s-device-plugin internal/lm/resource.go
    getProductName puts SHARED after the MIG parts) and gpu.count still counts MIG devices. The profile was read as
    `1g.10gb-SHARED`, so the count was unknown and `gpu-operator mig layouts` showed the node with 1 GPU."""
    labels = {"nvidia.com/gpu.count": "56", "nvidia.com/gpu.product": H100 + "-MIG-1g.10gb-SHARED"}
    assert mig.physical_gpus(labels, _held("all-1g.10gb")) == 8


def test_physical_gpus_of_a_single_strategy_node_with_a_profile_with_attributes() -> None:
    """The device plugin names a profile's attributes after a dot (k8s-device-plugin nvml-mig-device.go GetName:
    1g.10gb+me is 1g.10gb.me in the product label); the profile was looked up as `1g.10gb.me` and the GPU count was
    unknown."""
    config = "version: v1\nmig-configs: {me: [{devices: all, mig-enabled: true, mig-devices: {1g.10gb+me: 1}}]}"
    held = _held("me", mig.parse_config(config))
    labels = {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": H100 + "-MIG-1g.10gb.me"}
    assert mig.physical_gpus(labels, held) == 8
    shared = {"nvidia.com/gpu.count": "8", "nvidia.com/gpu.product": H100 + "-MIG-1g.10gb.me-SHARED"}
    assert mig.physical_gpus(shared, held) == 8


PARTLY_FILLED = """
version: v1
mig-configs:
  three-small:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 3}
  half-and-half:
    - devices: [0, 1, 2, 3]
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - devices: [4, 5, 6, 7]
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
"""


def test_physical_gpus_reads_a_partly_filled_single_layout_by_the_layout_held() -> None:
    """Under mig.strategy single GFD's nvidia.com/gpu.count is the number of MIG devices on the node (mig-strategy.go
    newMigStrategySingleLabeler: one migResource for nvidia.com/gpu, count++ per MIG device), not GPUs x the
    profile's maximum. An 8-GPU H100 node laid out with a custom `three-small` (3 x 1g.10gb per GPU) carries
    gpu.count=24: physical_gpus answered 24 // 7 = 3, so the single-strategy check of the next layout judged only GPUs
    0-2, and `half-and-half` (1g.10gb on GPUs 0-3, 3g.40gb on 4-7: two profiles, the device plugin fails) was let
    through. Now the count is read by the layout the node holds (8), or not known (the conservative slots)."""
    layouts = mig.parse_config(PARTLY_FILLED)
    labels = {"nvidia.com/gpu.product": f"{H100}-MIG-1g.10gb", "nvidia.com/gpu.count": "24"}
    assert mig.physical_gpus(labels, _held("three-small", layouts)) == 8
    assert mig.physical_gpus(labels) is None
    spec = parse_spec({"mig": {"strategy": "single"}, "migManager": {"config": {"name": "custom-mig-config"}}})
    for approved in ("three-small", None):
        n = node("half-and-half", approved=approved, **labels)
        refused = decide(n, spec=spec, layouts=layouts).refused
        assert [why.split(":")[0] for _, _, why in refused] == ["has MIG devices of 2 profiles (1g.10gb, 3g.40gb)"]


def test_a_decision_over_many_nodes_is_each_nodes_own_decision() -> None:
    """decide walks the nodes once: what it decides for each node, and how many it manages, are what it decides
    for that node alone."""
    variants = [
        node(),  # a layout asked for, not let through
        node("all-1g.10gb", "all-1g.10gb"),  # quiet
        node("all-1g.10gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "success", PLUGIN: mig.PAUSED}),  # restore
        node("all-1g.10gb", "all-1g.10gb", **{MIG_CONFIG_STATE: "pending", PLUGIN: mig.PAUSED}),  # mid-change
        node(**{MANAGER: "false"}),  # opted out
        NodeFacts("n1", labels={"nvidia.com/gpu.product": H100}),  # no GPU label
    ]
    nodes = [NodeFacts(f"n{i}", labels=v.labels) for i, v in enumerate(variants)]
    pods = {n.name: [GPU_POD] for n in nodes}
    off = parse_spec({"migManager": {"enabled": False}})
    for spec, managers in ((SPEC, frozenset({"n0", "n2"})), (off, frozenset())):
        whole = mig.decide(nodes, spec, layouts=None, pods=pods, managers=managers)
        alone = [mig.decide([n], spec, layouts=None, pods=pods, managers=managers) for n in nodes]
        assert whole.patches == {k: v for d in alone for k, v in d.patches.items()}
        assert sorted(whole.events, key=repr) == sorted((e for d in alone for e in d.events), key=repr)
        assert whole.managed == sum(d.managed for d in alone) == (4 if spec is SPEC else 0)
        asked = mig.changes_requested(nodes, spec)
        assert asked == [n.name for n in nodes if mig.changes_requested([n], spec)] == (["n0"] if spec is SPEC else [])
        # What the pass keeps by node (mig_pass.MigKept): deciding over the busy nodes alone decides the same.
        busy = [n for n in nodes if mig.busy(n, spec, None)]
        assert [n.name for n in busy] == (["n0", "n2", "n3"] if spec is SPEC else ["n2", "n3"])  # paused ones
        some = mig.decide(busy, spec, layouts=None, pods=pods, managers=managers)
        assert (some.patches, some.events, mig.changes_requested(busy, spec)) == (whole.patches, whole.events, asked)
        assert sum(mig.managed(n, spec) for n in nodes) == whole.managed


def test_a_broken_users_config_is_reported_while_no_node_asks_for_a_layout() -> None:
    """The user's ConfigMap was read only while some node's layout was checked: with every node's layout let through
    already, a config mig-parted refuses left `MIGConfig` True ("every requested MIG layout is valid"), though
    mig-manager fails the next change. It is reported whenever MIG manager is enabled, from the snapshot (no reads)."""
    bad = CUSTOM.replace('{"3g.40gb": 2}', '{"3g.40gb": two}')
    quiet = node("team-a", approved="team-a")
    why = ("ConfigMap custom-mig-config key config.yaml: mig-configs.team-a[0].mig-devices.3g.40gb: the count must be "
           "a whole number >= 0, not 'two'")
    for nodes in ([quiet], []):
        decision, after = run_pass(nodes, bad)
        assert decision.refused == [] and after == nodes  # nothing asked: nothing refused, no node touched
        cond = mig.condition(decision, 1, [], "t0")
        assert cond is not None and cond["status"] == "False" and cond["reason"] == "ConfigInvalid"
        assert why in cond["message"]
    decision, _ = run_pass([quiet], None)
    cond = mig.condition(decision, 1, [], "t0")
    assert cond is not None and "ConfigMap custom-mig-config not found (migManager.config.name)" in cond["message"]
    decision, _ = run_pass([quiet])  # a good config: accepted as before
    assert mig.condition(decision, 1, [], "t0")["reason"] == "LayoutsAccepted"  # type: ignore[index]
    off = parse_spec({"migManager": {"enabled": False, "config": {"name": "custom-mig-config"}}})
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={},
                    config_data={"custom-mig-config": {"config.yaml": bad}})
    decision, _, _ = mig_pass.run(FakeKube(), "gpu-operator", off, snap, [quiet], lambda *a: None)  # type: ignore[arg-type]
    assert mig.condition(decision, 1, [], "t0") is None  # no mig-manager: nothing reads the config


def test_with_the_default_config_map_named_mig_manager_reads_only_its_layouts() -> None:
    """`migManager.config.name: default-mig-parted-config` set: upstream's mig-manager reads that ConfigMap (the
    operator's default layouts) as its config (CONFIG_FILE) and builds no layouts from the hardware. We took the name
    as unset, so a name it would build on a GPU the table does not know was let through, and mig-manager failed it."""
    spec = parse_spec({"migManager": {"config": {"name": "default-mig-parted-config"}}})
    snap = Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={}, config_data={})  # ours: not read back
    new = node("all-1g.32gb", **{"nvidia.com/gpu.product": "NVIDIA-RTX-PRO-5000-Blackwell"})
    decision, _, _ = mig_pass.run(FakeKube(), "gpu-operator", spec, snap, [new], lambda *a: None)  # type: ignore[arg-type]
    assert decision.refused == [("n1", "all-1g.32gb", "is not in ConfigMap default-mig-parted-config")]
    decision, _, _ = mig_pass.run(FakeKube(), "gpu-operator", spec, snap, [node()], lambda *a: None)  # type: ignore[arg-type]
    assert decision.refused == [] and not decision.config_error
    unset, _, _ = mig_pass.run(FakeKube(), "gpu-operator", SPEC, snap, [new], lambda *a: None)  # type: ignore[arg-type]
    assert unset.refused == []  # unset: mig-manager builds it from the hardware
