"""The operator's watch cache: the initial listing is merged with the events delivered while it ran."""

from __future__ import annotations

import asyncio
import copy
import errno
import http.client
import json
import socket
import threading
from dataclasses import replace
from typing import Any

import pytest

from gpu_operator import runtime, wire
from gpu_operator.apply import Applier
from gpu_operator.events import EventRecorder
from gpu_operator.kube import ApiError, Kube
from gpu_operator.nodes import kept_labels
from gpu_operator.observe import Newer, Snapshot
from gpu_operator.reconciler import Outcome
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


def daemonset(name: str, rv: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "gpu-operator", "resourceVersion": str(rv)},
    }


def listed(op: Operator, resource: str, *names: str) -> None:
    for name in names:
        op.on_listing(resource, None, ("gpu-operator", name))


def test_a_second_listing_of_a_resource_is_a_relisting() -> None:
    """kopf lists again after 410 Gone (type None events) and sends no deletion for what went away meanwhile."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    listed(op, "daemonsets", "a", "b")  # the first listing
    assert not op.relist
    op.on_listing("daemonsets", "MODIFIED", ("gpu-operator", "a"))  # streaming
    listed(op, "daemonsets", "a")
    assert op.relist and op.wake.is_set()
    # Back to back, with no event in between: a name seen twice starts the next listing.
    op.relist = False
    listed(op, "pods", "p1", "p2")
    listed(op, "pods", "p2")
    assert op.relist
    # An empty first listing, then streaming, then a listing.
    op.relist = False
    op.on_listing("configmaps", "ADDED", ("gpu-operator", "c"))
    listed(op, "configmaps", "c")
    assert op.relist


def test_a_relisting_drops_what_went_away_and_keeps_what_events_brought() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    gone, kept, new = daemonset("gone", 5), daemonset("kept", 6), daemonset("new", 30)
    for ds in (gone, kept):
        op.on_owned("ADDED", ds)
    op.nodes["n1"] = facts("n1")
    op._gone, op._touched = set(), set()
    op.on_owned("ADDED", new)  # delivered by a watch while our listing ran, which missed it
    op._merge(snapshot(owned={("DaemonSet", "gpu-operator", "kept"): kept}), prune=True)
    assert {k[-1] for k in op.owned} == {"kept", "new"}
    assert set(op.nodes) == {"n1"}  # nodes are relisted by NodeWatch, not here
    assert op._gone is None and op._touched is None


def _driver(name: str, uid: str, rv: int) -> dict[str, Any]:
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
            "metadata": {"name": name, "uid": uid, "resourceVersion": str(rv), "generation": 1},
            "spec": {"driverType": "gpu"}}  # fmt: skip


class ListingKube:
    """Answers each list with the objects `listed` has for its path."""

    def __init__(self) -> None:
        self.listed: dict[str, list[dict[str, Any]]] = {}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in self.listed.get(path, [])]
        return kw["decode"](json.dumps({"metadata": {"resourceVersion": "900"}, "items": items}).encode())


@pytest.mark.parametrize("then", [[], [_driver("gpu-a100", "u2", 900)]], ids=["none-left", "another-name"])
def test_an_nvidiadriver_deleted_while_the_watch_was_down_is_dropped_by_the_relisting(
    then: list[dict[str, Any]],
) -> None:
    """kopf watched ClusterPolicies and NVIDIADrivers. After 410 Gone it lists again (events of type None) without
    deletions for what went away, and on_listing told a relisting only by a name of the previous listing, or by
    any listing once the watch had streamed. Quiet for hours, their watches had streamed nothing, so a relisting
    of only new names read as more of the first listing, and one of no name called no handler at all (kopf drops
    the end of a listing): the deleted NVIDIADriver stayed cached, its driver DaemonSet rendered, until a restart.
    They have watches of their own now, whose listings deliver what they lack as deleted."""
    kube = ListingKube()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    watches = {w.name: w for w in op.own_watches(lambda handler: handler, lambda handler: handler)}
    kube.listed["/apis/nvidia.com/v1alpha1/nvidiadrivers"] = [_driver("default", "u1", 10)]
    kube.listed["/apis/nvidia.com/v1/clusterpolicies"] = [policy("cluster-policy", 10)]
    for name in ("nvidiadriver-watch", "clusterpolicy-watch"):
        watches[name].relist()
    assert set(op.nvidia_drivers) == {"default"} and set(op.policies) == {"cluster-policy"}
    assert op.nvidia_drivers["default"]["kind"] == "NVIDIADriver"  # as a watch event has it
    # (the watches end in 410 Gone; "default" and the ClusterPolicy are deleted meanwhile)
    kube.listed["/apis/nvidia.com/v1alpha1/nvidiadrivers"] = then
    kube.listed["/apis/nvidia.com/v1/clusterpolicies"] = []
    for name in ("nvidiadriver-watch", "clusterpolicy-watch"):
        watches[name].relist()
    assert set(op.nvidia_drivers) == {d["metadata"]["name"] for d in then} and op.policies == {}
    kopf_watched = {h.selector.group for h in runtime.build_registry(op)._watching.get_all_handlers()}
    assert "nvidia.com" not in kopf_watched


def test_an_nvidiadriver_its_watch_delivered_while_a_relisting_ran_is_kept() -> None:
    """A relisting of ours (kopf relisted a ConfigMap or an operand kind) drops what its listing lacks and no event
    brought meanwhile. on_policy noted what its watch delivered, on_nvidia_driver did not: an NVIDIADriver created
    while the listing ran was dropped, and nothing brought it back until it changed (its watch delivers changes
    only), while passes drove its nodes without it and pruned its driver DaemonSet."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op._gone, op._touched = set(), set()  # sync(prune=True) under way
    runtime._as_event(op.on_nvidia_driver)("pool-b", _driver("pool-b", "u1", 40))  # from nvidiadriver-watch
    op._merge(snapshot(), prune=True)  # listed before it was created
    assert set(op.nvidia_drivers) == {"pool-b"}


def pod(name: str, node: str, ready: bool, owner: str = "nvidia-device-plugin-daemonset") -> dict[str, Any]:
    """A pod projection (observe.pod_projection's shape)."""
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
        "node": node,
        "owner": owner,
        "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 0}]},
    }


def test_during_a_rollout_pod_changes_are_paced_and_the_last_pod_turning_ready_is_not() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.on_pod("a", pod("a", "n1", ready=False))  # the first pod of a rollout: nothing is paced yet
    assert op.urgent.is_set()
    op.urgent.clear()
    op.wake.clear()
    op.on_pod("b", pod("b", "n2", ready=False))
    assert op.wake.is_set() and not op.urgent.is_set()  # paced: a is still rolling out
    op.wake.clear()
    op.on_pod("a", pod("a", "n1", ready=True))
    assert op.wake.is_set() and not op.urgent.is_set()  # paced: b is still rolling out
    assert op.unready == {"b"} and op.pods_on == {"n1": {"a"}, "n2": {"b"}}
    op.on_pod("b", pod("b", "n2", ready=True))
    assert op.urgent.is_set() and op.unready == set()  # the status may turn ready: at once
    op.urgent.clear()
    op.on_pod("b", None)
    assert op.urgent.is_set() and op.pods_on == {"n1": {"a"}}  # with none rolling out, nothing is paced


def test_during_a_rollout_a_daemonset_status_change_is_paced_and_a_spec_change_is_not() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.on_pod("a", pod("a", "n1", ready=False))
    ds = {**daemonset("nvidia-device-plugin-daemonset", 10)}
    ds["metadata"] = {**ds["metadata"], "generation": 1}
    op.on_owned("ADDED", ds)
    op.urgent.clear()
    op.wake.clear()
    op.causes.clear()
    op.on_owned("MODIFIED", {**ds, "metadata": {**ds["metadata"], "resourceVersion": "11"}, "status": {"x": 1}})
    assert op.wake.is_set() and not op.urgent.is_set() and op.causes == {"owned"}  # paced, not dropped
    op.on_owned("MODIFIED", {**ds, "metadata": {**ds["metadata"], "resourceVersion": "12", "generation": 2}})
    assert op.urgent.is_set()


def test_a_daemonset_count_that_may_turn_the_status_ready_skips_the_debounce() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    ds = {**daemonset("nvidia-device-plugin-daemonset", 10)}
    ds["metadata"] = {**ds["metadata"], "generation": 1}
    op.on_owned("ADDED", ds)
    op.prompt.clear()

    def counted(rv: int) -> None:
        op.on_owned("MODIFIED", {**ds, "metadata": {**ds["metadata"], "resourceVersion": str(rv)}, "status": {"n": rv}})

    counted(11)
    assert not op.prompt.is_set()  # the status is ready (or not known yet): the debounce coalesces as usual
    op.not_ready = True
    op.on_pod("a", pod("a", "n1", ready=False))
    counted(12)
    assert not op.prompt.is_set()  # a pod still rolls out: paced
    op.on_pod("a", pod("a", "n1", ready=True))
    op.prompt.clear()  # (the pod turning ready set it too: test_the_last_pod_turning_ready_skips_the_debounce)
    counted(13)
    assert op.prompt.is_set() and op.urgent.is_set()  # none rolls out: this count may be the last one awaited


def test_the_last_pod_turning_ready_skips_the_debounce() -> None:
    """Its DaemonSet's pods may say the status is ready before the controller counts them."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.not_ready = True
    op.on_pod("dp-1", pod("dp-1", "n1", ready=False))
    op.on_pod("gfd-1", pod("gfd-1", "n1", ready=False, owner="gpu-feature-discovery"))
    op.prompt.clear()
    op.on_pod("dp-1", pod("dp-1", "n1", ready=True))
    assert not op.prompt.is_set()  # gfd-1 still rolls out
    op.on_pod("gfd-1", pod("gfd-1", "n1", ready=True))
    assert op.prompt.is_set() and op.urgent.is_set()
    op.prompt.clear()
    op.not_ready = False
    op.on_pod("dp-1", pod("dp-1", "n1", ready=False))
    op.on_pod("dp-1", pod("dp-1", "n1", ready=True))
    assert not op.prompt.is_set()  # the status was ready already: the debounce coalesces as usual


def test_a_pass_asks_what_came_since_its_snapshot_once_every_pod_is_ready() -> None:
    """Operator.newer, asked in a pass's thread: copied on the event loop, only once no operand pod is left not
    ready and something came since the snapshot."""

    async def scenario() -> list[Any]:
        op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
        op.event_loop = asyncio.get_running_loop()
        op.on_pod("a", pod("a", "n1", ready=True))
        op.on_pod("b", pod("b", "n2", ready=False))
        op.snapshot()
        seen: list[Any] = [await asyncio.to_thread(op.newer)]  # nothing came since the snapshot
        op.on_pod("c", pod("c", "n3", ready=False))
        seen.append(await asyncio.to_thread(op.newer))  # a pod came, and b and c are not ready
        op.on_pod("b", pod("b", "n2", ready=True))
        op.on_pod("c", pod("c", "n3", ready=True))
        ds = {**daemonset("nvidia-device-plugin-daemonset", 10), "status": {"numberReady": 3}}
        op.on_owned("MODIFIED", ds)
        seen.append(await asyncio.to_thread(op.newer))  # every pod is ready now
        op.snapshot()
        seen.append(await asyncio.to_thread(op.newer))  # a later pass's snapshot has them
        return seen

    none, still_unready, later, again = asyncio.run(scenario())
    assert none is None and still_unready is None and again is None
    assert isinstance(later, Newer)
    assert [(p["metadata"]["name"], p["node"]) for p in later.pod_index.by_owner["nvidia-device-plugin-daemonset"]] \
        == [("a", "n1"), ("b", "n2"), ("c", "n3")]
    assert later.pod_index.unready_by_owner == {}
    assert later.owned[("DaemonSet", "gpu-operator", "nvidia-device-plugin-daemonset")]["status"] == {"numberReady": 3}


def test_a_pass_does_not_wait_long_for_a_closed_event_loop() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    loop.close()
    op.event_loop = loop
    op.on_pod("a", pod("a", "n1", ready=True))
    assert op.newer() is None


def test_the_daemonset_watch_feeds_the_owned_cache() -> None:
    """Our DaemonSets come from their own watch (nodewatch.Watch), by name; None when deleted."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    key = ("DaemonSet", "gpu-operator", "nvidia-driver-daemonset")
    listed_item = {"metadata": {"name": "nvidia-driver-daemonset", "namespace": "gpu-operator", "resourceVersion": "7"}}
    body = wire.daemonset_dict(wire.convert(listed_item, wire.DaemonSet))  # a listing's item carries no kind
    assert body["kind"] == "DaemonSet" and body["apiVersion"] == "apps/v1"
    op.on_daemonset("nvidia-driver-daemonset", body)
    assert op.owned[key] == body and op.daemonset("nvidia-driver-daemonset") == body and op.urgent.is_set()
    op.urgent.clear()
    older = wire.daemonset_dict(
        wire.convert({**listed_item, "metadata": {**listed_item["metadata"], "resourceVersion": "6"}}, wire.DaemonSet)
    )
    op.on_daemonset("nvidia-driver-daemonset", older)
    assert op.owned[key]["metadata"]["resourceVersion"] == "7"  # an older version does not replace the cached one
    op.on_daemonset("nvidia-driver-daemonset", None)
    assert key not in op.owned and op.urgent.is_set()  # deleted (by someone else): a pass at once


def test_an_object_that_loses_our_label_leaves_the_owned_cache() -> None:
    """kopf filters labels after its watch, so the operand kinds' events reach us unfiltered: an object of ours
    whose label someone removed is no longer ours (prune must not delete it), and others' objects are ignored."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    ours = {"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "gpu-operator", "resourceVersion": "3",
                                              "labels": {"app.kubernetes.io/managed-by": "gpu-operator"}}}
    key = ("ConfigMap", "gpu-operator", "cm")
    op.on_operand_kind("ADDED", ours)
    assert key in op.owned
    theirs = {"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "gpu-operator", "resourceVersion": "4",
                                                "labels": {"team": "x"}}}
    op.on_operand_kind("MODIFIED", theirs)
    assert key not in op.owned
    op.on_operand_kind("ADDED", {**theirs, "metadata": {**theirs["metadata"], "name": "other"}})
    assert ("ConfigMap", "gpu-operator", "other") not in op.owned


def test_the_gap_between_passes_grows_with_their_cost_up_to_a_cap() -> None:
    from gpu_operator.runtime import DEBOUNCE_S, MAX_GAP_S, pass_gap

    assert pass_gap(0.004) < DEBOUNCE_S  # a small cluster: the debounce alone decides
    assert pass_gap(0.025) == pytest.approx(1.5)
    assert pass_gap(5.0) == MAX_GAP_S


def test_a_daemonsets_last_pod_turning_ready_is_not_paced_while_another_daemonset_rolls_out() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.on_pod("dp-1", pod("dp-1", "n1", ready=False))
    op.on_pod("dp-2", pod("dp-2", "n2", ready=False))
    op.on_pod("gfd-1", pod("gfd-1", "n1", ready=False, owner="gpu-feature-discovery"))
    op.urgent.clear()
    op.on_pod("dp-1", pod("dp-1", "n1", ready=True))
    assert not op.urgent.is_set()  # dp-2 still rolls out
    op.on_pod("dp-2", pod("dp-2", "n2", ready=True))
    assert op.urgent.is_set() and op.unready == {"gfd-1"}  # the device plugin's state may be ready now
    op.urgent.clear()
    leaving = pod("gfd-1", "n1", ready=False, owner="gpu-feature-discovery")
    leaving["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    op.on_pod("gfd-1", leaving)
    assert op.unready == set() and op.urgent.is_set()  # a pod being deleted does not hold a rollout open


def test_a_pod_turning_ready_on_a_node_mid_upgrade_is_not_paced() -> None:
    from dataclasses import replace

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.nodes["n1"] = replace(facts("n1"), labels={"nvidia.com/gpu-driver-upgrade-state": "pod-restart-required"})
    op.nodes["n2"] = replace(facts("n2"), labels={"nvidia.com/gpu-driver-upgrade-state": "upgrade-done"})
    for name, node in (("drv-1", "n1"), ("drv-2", "n2"), ("drv-3", "n2")):
        op.on_pod(name, pod(name, node, ready=False, owner="nvidia-driver-daemonset"))
    op.urgent.clear()
    op.on_pod("drv-2", pod("drv-2", "n2", ready=True, owner="nvidia-driver-daemonset"))
    assert not op.urgent.is_set()  # n2 is not upgrading, and drv-1 and drv-3 still roll out
    op.on_pod("drv-1", pod("drv-1", "n1", ready=True, owner="nvidia-driver-daemonset"))
    assert op.urgent.is_set()  # n1 waits for its new driver pod: its next step goes at once
    op.urgent.clear()
    op.on_pod("drv-1", None)
    assert not op.urgent.is_set()  # a deletion is not a pod turning ready


def test_a_node_change_is_urgent_only_while_the_status_waits_and_nothing_rolls_out() -> None:
    from dataclasses import replace

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.on_node_facts("n1", facts("n1"))
    op.urgent.clear()
    op.wake.clear()
    op.causes.clear()
    changed = replace(facts("n1"), labels={**facts("n1").labels, "nvidia.com/mig.config.state": "success"})
    op.on_node_facts("n1", changed)
    # the status is ready (or not known yet): paced, not dropped
    assert op.wake.is_set() and not op.urgent.is_set() and op.causes == {"node"}
    op.not_ready = True
    op.on_pod("a", pod("a", "n1", ready=False))
    op.urgent.clear()
    op.wake.clear()
    op.on_node_facts("n1", replace(changed, labels={**changed.labels, "x": "1"}))
    assert op.wake.is_set() and not op.urgent.is_set()  # a pod still rolls out: paced
    op.on_pod("a", pod("a", "n1", ready=True))
    op.urgent.clear()
    op.on_node_facts("n1", replace(changed, labels={**changed.labels, "x": "2"}))
    assert op.urgent.is_set()  # this change may be all the status waits for


def test_a_mig_layout_asked_for_wakes_a_pass_at_once_even_on_a_ready_status() -> None:
    """A node's new nvidia.com/mig.config value is acted on by mig-manager at once; only a full pass gates it
    (pauses mig-manager for a layout refused or waiting on GPU pods). We paced it like any node label change on a
    ready status, so that pass came up to MAX_GAP_S later, after a real mig-manager had already acted."""
    from dataclasses import replace

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    mig = replace(facts("n1"), labels={**facts("n1").labels, "nvidia.com/mig.config": "all-disabled"})
    op.on_node_facts("n1", mig)
    op.urgent.clear()
    op.wake.clear()
    op.causes.clear()
    layout = replace(mig, labels={**mig.labels, "nvidia.com/mig.config": "all-1g.10gb"})
    op.on_node_facts("n1", layout)
    assert op.wake.is_set() and op.urgent.is_set() and op.causes == {"node"}
    op.urgent.clear()
    op.wake.clear()
    op.on_node_facts("n1", replace(layout, labels={**layout.labels, "nvidia.com/mig.config.state": "pending"}))
    assert op.wake.is_set() and not op.urgent.is_set()  # the same layout: mig-manager's report is paced


def test_a_deleted_node_wakes_the_loop_at_once_and_an_unknown_ones_deletion_does_not() -> None:
    """A cached node's deletion starts a pass at once (the status, the metrics and the upgrade's counts drop it);
    the deletion of a node not cached has nothing for a pass to do."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.on_node_facts("n1", facts("n1"))
    op.wake.clear()
    op.urgent.clear()
    op.causes.clear()
    op.on_node_facts("n1", None)
    assert "n1" not in op.nodes
    assert op.wake.is_set() and op.urgent.is_set() and "node" in op.causes
    op.wake.clear()
    op.urgent.clear()
    op.causes.clear()
    op.on_node_facts("never-seen", None)
    assert not op.wake.is_set() and not op.causes


def test_a_new_or_changed_policy_spec_skips_the_debounce_and_a_status_update_starts_no_pass() -> None:
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    first = {**policy("cluster-policy", 10), "metadata": {**policy("cluster-policy", 10)["metadata"], "generation": 1}}
    op.on_policy("ADDED", first)
    assert op.prompt.is_set() and op.urgent.is_set()
    op.prompt.clear()
    status = {**first, "metadata": {**first["metadata"], "resourceVersion": "11"}, "status": {"state": "notReady"}}
    op.urgent.clear()
    op.wake.clear()
    op.on_policy("MODIFIED", status)  # our own status write: same generation, and no pass for it
    assert not op.prompt.is_set() and not op.wake.is_set()
    assert op.policies["cluster-policy"]["status"] == {"state": "notReady"}  # the cache has it all the same
    deleting = {**status, "metadata": {**status["metadata"], "resourceVersion": "12", "deletionTimestamp": "now"}}
    op.on_policy("MODIFIED", deleting)  # metadata changed: a pass
    assert op.urgent.is_set() and not op.prompt.is_set()
    edited = {**deleting, "metadata": {**deleting["metadata"], "resourceVersion": "13", "generation": 2}}
    op.on_policy("MODIFIED", edited)
    assert op.prompt.is_set()


def test_an_nvidiadrivers_status_update_starts_no_pass_and_its_spec_change_does() -> None:
    # Each pass that writes an NVIDIADriver's status would otherwise start another (2 NVIDIADrivers on 1,000 nodes:
    # among the causes of 312 of a rollout's 337 passes).
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    meta = {"name": "pool-b", "resourceVersion": "10", "generation": 1}
    first = {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": meta, "spec": {"version": "1"}}
    op.on_nvidia_driver("ADDED", first)
    assert op.urgent.is_set()
    op.urgent.clear()
    op.wake.clear()
    status = {**first, "metadata": {**meta, "resourceVersion": "11"}, "status": {"state": "notReady"}}
    op.on_nvidia_driver("MODIFIED", status)
    assert not op.wake.is_set() and op.nvidia_drivers["pool-b"]["status"] == {"state": "notReady"}  # cached
    edited = {**status, "metadata": {**meta, "resourceVersion": "12", "generation": 2}, "spec": {"version": "2"}}
    op.on_nvidia_driver("MODIFIED", edited)
    assert op.urgent.is_set()
    op.urgent.clear()
    op.on_nvidia_driver("DELETED", edited)
    assert op.urgent.is_set() and "pool-b" not in op.nvidia_drivers


def _by_name(index: Any) -> tuple[dict[Any, list[str]], ...]:
    """A PodIndex as names (sorted): what it holds, not the order it found it in."""
    return (
        {(n, s): sorted(p["metadata"]["name"] for p in v) for s, on in index.by_state.items() for n, v in on.items()},
        {k: sorted(p["metadata"]["name"] for p in v) for k, v in index.by_owner.items()},
        {k: sorted(p["metadata"]["name"] for p in v) for k, v in index.unready_by_owner.items()},
    )


@pytest.mark.parametrize("seed", range(20))
def test_the_pod_index_kept_between_passes_is_the_one_built_from_the_pods(seed: int) -> None:
    import random

    from gpu_operator.observe import PodIndex
    from gpu_operator.states.base import STATE_LABEL

    rng = random.Random(seed)
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    for step in range(300):
        name = f"p{rng.randint(0, 25)}"
        if rng.random() < 0.2:
            op.on_pod(name, None)
        else:
            owner = rng.choice(["nvidia-driver-daemonset", "nvidia-device-plugin-daemonset"])
            body = pod(name, rng.choice(["", "n1", "n2", "n3"]), ready=rng.random() < 0.5, owner=owner)
            body["metadata"]["labels"][STATE_LABEL] = rng.choice(["state-driver", "state-device-plugin"])
            if rng.random() < 0.2:
                body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            # The DaemonSet made again under its name (another uid), or one adopting the pod (uid from none).
            body["metadata"]["ownerUid"] = rng.choice(["", f"{owner}-1", f"{owner}-2"])
            op.on_pod(name, body)
        if step % 50 == 49:  # a relisting rebuilds it
            op._merge(snapshot(pods=dict(op.pods)))
        assert _by_name(op.snapshot().pod_index) == _by_name(PodIndex.of(op.pods)), f"step {step}"


def test_an_owners_pods_are_the_same_object_in_each_snapshot_until_one_of_them_changes() -> None:
    # A pass keeps what it worked out from a DaemonSet's pods (readiness.KeptReadiness) while they are one object.
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    dp, gfd = "nvidia-device-plugin-daemonset", "gpu-feature-discovery"
    op.on_pod("a", pod("a", "n1", ready=True))
    op.on_pod("b", pod("b", "n1", ready=True, owner=gfd))
    first = op.snapshot().pod_index.by_owner
    second = op.snapshot().pod_index.by_owner
    assert second[dp] is first[dp] and second[gfd] is first[gfd]
    op.on_pod("a", pod("a", "n1", ready=False))  # one of the device plugin's pods changed
    third = op.snapshot().pod_index.by_owner
    assert third[dp] is not first[dp] and third[gfd] is first[gfd]
    assert [p["status"]["containerStatuses"][0]["ready"] for p in third[dp]] == [False]
    op.on_pod("c", pod("c", "n2", ready=True, owner=gfd))  # one came
    fourth = op.snapshot().pod_index.by_owner
    assert fourth[dp] is third[dp] and [p["metadata"]["name"] for p in fourth[gfd]] == ["b", "c"]
    op.on_pod("b", None)  # one went
    assert [p["metadata"]["name"] for p in op.snapshot().pod_index.by_owner[gfd]] == ["c"]
    op._merge(snapshot(pods=dict(op.pods)))  # a relisting rebuilds every one
    fifth = op.snapshot().pod_index.by_owner
    assert fifth[dp] is not third[dp] and [p["metadata"]["name"] for p in fifth[dp]] == ["a"]


def test_the_inbox_hands_deliveries_to_the_loop_in_order_and_in_batches() -> None:
    import threading

    from gpu_operator.runtime import Inbox

    got: list[tuple[str, Any]] = []
    drains: list[int] = []

    def handler(name: str, value: Any) -> None:
        if name == "bad":
            raise ValueError("a handler's bug")
        got.append((name, value))

    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        real = inbox.drain

        def counted() -> None:
            drains.append(len(inbox.queue))
            real()

        inbox.drain = counted  # type: ignore[method-assign]
        deliver = inbox.deliverer(handler)
        # The loop is busy (blocked here) while a thread delivers: all of it waits for one drain.
        def send() -> None:
            for i in range(100):
                deliver(str(i), i)
            deliver("bad", 0)
            deliver("last", 1)

        sent = threading.Thread(target=send)
        sent.start()
        sent.join()
        await asyncio.sleep(0.05)
        # Another delivery after that drain schedules a drain of its own.
        threading.Thread(target=deliver, args=("later", 2)).start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(got) == 102:
                break

    asyncio.run(main())
    assert got == [(str(i), i) for i in range(100)] + [("last", 1), ("later", 2)]  # the failing one did not stop it
    assert drains == [102, 1]


def test_a_gathering_inbox_hands_a_stream_of_deliveries_to_the_loop_in_one_drain() -> None:
    import threading

    from gpu_operator.runtime import Inbox

    got: list[str] = []
    drains: list[int] = []
    seen_early: list[list[str]] = []

    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop(), gather_s=1.0)
        real = inbox.drain

        def counted() -> None:
            drains.append(len(inbox.queue))
            real()

        inbox.drain = counted  # type: ignore[method-assign]
        deliver = inbox.deliverer(lambda name, _value: got.append(name))

        def send(name: str) -> None:
            t = threading.Thread(target=deliver, args=(name, None))
            t.start()
            t.join()

        send("a")
        await asyncio.sleep(0.05)  # the loop ran: the drain is due, not done
        seen_early.append(list(got))
        send("b")
        for _ in range(300):
            await asyncio.sleep(0.01)
            if got:
                break
        await asyncio.sleep(0.05)
        send("c")  # after a drain, a delivery schedules the next one
        for _ in range(300):
            await asyncio.sleep(0.01)
            if len(got) == 3:
                break

    asyncio.run(main())
    assert seen_early == [[]]
    assert got == ["a", "b", "c"]
    assert drains == [2, 1]


def test_a_pass_drops_a_node_only_while_its_move_between_passes_is_newer_than_what_the_pass_saw() -> None:
    from dataclasses import replace

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    moved = op.reconciler.moved  # what a pass asks of each node before writing it
    assert moved is not None
    seen = replace(facts("n1"), resource_version=40)
    assert not moved(seen)  # never moved between passes
    op.moves.begin("n1")
    assert op.moves.in_flight("n1")
    assert moved(seen) and moved(replace(seen, resource_version=10**12))  # in flight: whatever the pass saw
    op.moves.done("n1", 50)
    assert not op.moves.in_flight("n1")
    assert moved(seen)  # the pass saw the node before the move: its plan is stale
    assert not moved(replace(seen, resource_version=50)) and not moved(replace(seen, resource_version=51))
    assert not moved(replace(facts("n2"), resource_version=1))  # another node
    op.moves.begin("n1")
    op.moves.forget("n1")  # the move's write failed: the pass takes the node on
    assert not moved(seen)
    op.moves.done("n1", 50)
    op.on_node("DELETED", {"metadata": {"name": "n1"}})
    assert not moved(seen)  # forgotten with the node


def _driver_pod_turns_ready(op: Operator, owner: str) -> bool:
    """A driver pod of its DaemonSet's new revision on n1, not Ready and then Ready: whether that started a move of
    n1 (none starts while the pod is not Ready)."""
    op.on_revision("r2", {"metadata": {"name": "r2", "labels": {"controller-revision-hash": "new"}},
                          "owner": owner, "revision": 2})  # fmt: skip
    driver = pod("drv", "n1", ready=False, owner=owner)
    driver["metadata"]["labels"] = {"nvidia.com/gpu-operator.state": "state-driver", "controller-revision-hash": "new"}
    op.on_pod("drv", driver)
    assert not op.moves.in_flight("n1")
    op.on_pod("drv", {**driver, "status": pod("drv", "n1", ready=True)["status"]})
    return op.moves.in_flight("n1")


def test_a_driver_pod_turning_ready_mid_upgrade_starts_a_move_that_the_pass_sees_in_flight() -> None:
    from dataclasses import replace

    from gpu_operator.api import ClusterPolicySpec
    from gpu_operator.reconciler import Labelling

    async def scenario() -> None:
        op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]  # every write fails
        spec = ClusterPolicySpec.model_validate({"driver": {"upgradePolicy": {"autoUpgrade": True}}})
        op.policies["p"] = {"metadata": {"name": "p", "uid": "u", "generation": 1}}
        op.reconciler.labelling = Labelling("p", "u", 1, spec)
        op.leading.set()
        op.task = asyncio.ensure_future(asyncio.sleep(0))
        labels = {"nvidia.com/gpu.deploy.driver": "true", "nvidia.com/gpu-driver-upgrade-state": "pod-restart-required"}
        seen = replace(facts("n1", labels=labels), resource_version=40)
        op.nodes["n1"] = seen
        assert _driver_pod_turns_ready(op, "nvidia-driver-daemonset")
        assert op.reconciler.moved is not None and op.reconciler.moved(seen)
        await asyncio.gather(*op._labelling)  # the write fails (no API server): the next pass takes the node on
        assert not op.moves.in_flight("n1") and not op.reconciler.moved(seen)
        op._label_pool.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize(("since", "moves"), [("nothing", True), ("generation", False), ("unrouted", False)])
def test_under_nvidiadrivers_a_driver_pod_turning_ready_moves_its_node_by_its_nvidiadrivers_policy(
    since: str, moves: bool
) -> None:
    # As with the ClusterPolicy's driver, by the spec of the NVIDIADriver that drives the node as the last pass had
    # it; not once an NVIDIADriver changed since that pass (generation), nor for a node no NVIDIADriver drives.
    from dataclasses import replace

    from gpu_operator.api import ClusterPolicySpec
    from gpu_operator.nvidiadriver import NVIDIADriver
    from gpu_operator.reconciler import Labelling, generations
    from gpu_operator.render import driver_routing

    async def scenario() -> bool:
        op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]  # every write fails
        # The ClusterPolicy's own driver upgrades nothing by itself: the NVIDIADriver's policy (autoUpgrade by
        # upstream's default) is the one followed.
        spec = ClusterPolicySpec.model_validate({"driver": {"useNvidiaDriverCRD": True}})
        selector = {"pool": "a"} if since != "unrouted" else {"pool": "z"}
        driver = {"metadata": {"name": "pool-a", "generation": 1}, "spec": {"nodeSelector": selector}}
        op.nvidia_drivers["pool-a"] = driver
        op.policies["p"] = {"metadata": {"name": "p", "uid": "u", "generation": 1}}
        labels = {"pool": "a", "nvidia.com/gpu.deploy.driver": "true", "nvidia.com/gpu-operator.driver.owner": "pool-a",
                  "nvidia.com/gpu-driver-upgrade-state": "pod-restart-required"}  # fmt: skip
        seen = replace(facts("n1", labels=labels), resource_version=40)
        routing = driver_routing([seen], spec, [NVIDIADriver.from_object(driver)])
        op.reconciler.labelling = Labelling("p", "u", 1, spec, routing, generations(op.nvidia_drivers))
        if since == "generation":
            op.nvidia_drivers["pool-a"] = {**driver, "metadata": {"name": "pool-a", "generation": 2}}
        op.leading.set()
        op.task = asyncio.ensure_future(asyncio.sleep(0))
        op.nodes["n1"] = seen
        started = _driver_pod_turns_ready(op, "nvidia-driver-daemonset-pool-a")
        await asyncio.gather(*op._labelling)  # the write fails (no API server): the next pass takes the node on
        op._label_pool.shutdown()
        return started

    assert asyncio.run(scenario()) is moves


def test_the_pod_index_names_the_nodes_with_a_pod_of_a_state() -> None:
    from gpu_operator.observe import PodIndex
    from gpu_operator.states.base import STATE_LABEL

    def projected(name: str, node: str, state: str, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {STATE_LABEL: state}}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "node": node, "owner": f"ds-{state}", "status": {}}

    pods = [projected("a", "n1", "state-mig-manager"), projected("b", "n2", "state-mig-manager", deleting=True),
            projected("c", "n3", "state-mig-manager", deleting=True), projected("d", "n3", "state-mig-manager"),
            projected("e", "", "state-mig-manager"), projected("f", "n4", "state-driver")]  # fmt: skip
    index = PodIndex.of({p["metadata"]["name"]: p for p in pods})
    assert index.nodes_with("state-mig-manager") == {"n1", "n2", "n3"}  # a pod not scheduled yet names no node
    assert index.nodes_with("state-mig-manager", live=True) == {"n1", "n3"}
    assert index.nodes_with("state-driver") == {"n4"} and index.nodes_with("state-device-plugin") == set()


def test_each_resource_has_one_kopf_handler() -> None:
    """Two handlers on one resource would note each listed object twice, and the second note reads as a
    relisting (a re-read of the whole cluster at every start): ConfigMaps, users' and ours, share one."""
    from collections import Counter

    from gpu_operator.runtime import build_registry

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    handlers = build_registry(op)._watching.get_all_handlers()
    counts = Counter((h.selector.group, h.selector.version, h.selector.any_name) for h in handlers)
    assert counts[("", "v1", "configmaps")] == 1
    assert [key for key, n in counts.items() if n > 1] == []
    op.on_config_map_event("ADDED", {"kind": "ConfigMap", "metadata": {
        "name": "default-mig-parted-config", "namespace": "gpu-operator", "resourceVersion": "2",
        "labels": {"app.kubernetes.io/managed-by": "gpu-operator"}}, "data": {"config.yaml": "x"}})
    assert ("ConfigMap", "gpu-operator", "default-mig-parted-config") in op.owned
    assert "default-mig-parted-config" in op.config_maps


class CountingKube:
    """Answers every list with nothing, and counts them by kind."""

    def __init__(self) -> None:
        self.lists: list[str] = []

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.lists.append(kind)
        return []

    def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        return iter(self.list(kind))


def test_nodefeatures_are_listed_again_only_while_a_gpu_node_has_none_read_and_no_identifying_label() -> None:
    import time

    kube = CountingKube()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    op.api_groups = frozenset({"nfd.k8s-sigs.io"})

    def relisted() -> bool:
        kube.lists.clear()
        op._features_listed = time.monotonic() - 60
        asyncio.run(op.refresh_node_features())
        return kube.lists == ["NodeFeature"]

    # A vm-passthrough node (or one without GFD, or whose driver is refused) never gets GFD's labels.
    op.nodes = {"vm-1": facts("vm-1")}
    op.node_features = {"vm-1": ("2330",)}  # its NodeFeature named an H100
    assert not op.unidentified() and not relisted()  # so the run loop waits RESYNC_S, not NODE_FEATURE_RELIST_S
    op.node_features = {"vm-1": ("ffff",)}  # a device the matrix does not know: a NodeFeature read again says so too
    assert not op.unidentified() and not relisted()
    op.node_features = {}  # a GPU node none was read for: it may have one now
    assert op.unidentified() and relisted()
    op.node_features = {}
    op.nodes = {"vm-1": facts("vm-1", pci_label="feature.node.kubernetes.io/pci-0302_10de_2330.present")}
    assert not op.unidentified() and not relisted()  # its NFD label names its GPU


def test_nodefeatures_are_not_listed_again_within_the_relist_interval() -> None:
    """While a GPU node is unidentified NodeFeatures are listed at most every NODE_FEATURE_RELIST_S, not on every
    turn of the run loop."""
    kube = CountingKube()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    op.api_groups = frozenset({"nfd.k8s-sigs.io"})
    op.nodes = {"vm-1": facts("vm-1")}  # no GFD label, no NodeFeature read
    op._features_listed = 0.0
    asyncio.run(op.refresh_node_features())
    assert kube.lists == ["NodeFeature"] and op.unidentified()
    asyncio.run(op.refresh_node_features())
    asyncio.run(op.refresh_node_features())
    assert kube.lists == ["NodeFeature"]


def node_feature(node: str, device: str) -> dict[str, Any]:
    """NFD's NodeFeature of a node with one NVIDIA GPU of that PCI device ID."""
    return {
        "kind": "NodeFeature",
        "metadata": {"name": f"{node}-x7k2p", "namespace": "node-feature-discovery",
                     "labels": {"nfd.node.kubernetes.io/node-name": node}},
        "spec": {"features": {"instances": {"pci.device": {"elements": [
            {"attributes": {"vendor": "10de", "class": "0302", "device": device}}]}}}},
    }  # fmt: skip


class ThreadedKube:
    """Answers a list with `listed`, in the thread asking; `meanwhile` (if set) runs on the event loop first, as
    the watch events handled while a listing runs."""

    def __init__(self, listed: list[dict[str, Any]], groups: frozenset[str] = frozenset()) -> None:
        self.listed = listed
        self.groups = groups
        self.lists: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.meanwhile: Any = None

    def api_groups(self) -> frozenset[str]:
        return self.groups

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.lists.append(kind)
        if self.meanwhile is not None:
            assert self.loop is not None and threading.current_thread() is not threading.main_thread()
            handled = threading.Event()
            self.loop.call_soon_threadsafe(lambda: (self.meanwhile(), handled.set()))
            assert handled.wait(5), "the event loop is blocked while the listing runs"
        return copy.deepcopy(self.listed)

    def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        return iter(self.list(kind))


class PagedKube:
    """The client's own paging (Kube.each) over NodeFeature pages of `size`; keeps each request's query."""

    each, _pages = Kube.each, Kube._pages

    def __init__(self, listed: list[dict[str, Any]], size: int = 2, refused: int = 0) -> None:
        self.listed, self.size, self.refused = listed, size, refused
        self.queries: list[dict[str, Any]] = []

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("GET", "/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures")
        self.queries.append(dict(query or {}))
        if self.refused:
            raise ApiError(self.refused, '{"message": "no"}', f"{method} {path}")
        start = int((query or {}).get("continue") or 0)
        cont = start + self.size if start + self.size < len(self.listed) else None
        return {"metadata": {"continue": str(cont)} if cont else {},
                "items": copy.deepcopy(self.listed[start:start + self.size])}  # fmt: skip


def test_nodefeatures_are_read_a_page_at_a_time_and_refusals_read_as_none() -> None:
    """node_features listed every NodeFeature whole at once (kube.list): real NFD ones hold every feature of their
    node, tens of KB each, so at 5,000 GPU nodes hundreds of MB were held together. Now they are read a page at a
    time (kube.each, pages of 100), keeping only node -> device IDs; a 403 or 404 still reads as none."""
    from gpu_operator.observe import node_features

    groups = frozenset({"nfd.k8s-sigs.io"})
    kube = PagedKube([node_feature("n1", "2330"), node_feature("n2", "20b5"), node_feature("n3", "2330"),
                      node_feature("n1", "1db4"), node_feature("n4", "ffff")])  # fmt: skip
    assert node_features(kube, groups) == {  # type: ignore[arg-type]
        "n1": ("1db4", "2330"), "n2": ("20b5",), "n3": ("2330",), "n4": ("ffff",)}
    assert [q.get("continue") for q in kube.queries] == [None, "2", "4"]
    assert {q["limit"] for q in kube.queries} == {100}
    for status in (403, 404):
        assert node_features(PagedKube([], refused=status), groups) == {}  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        node_features(PagedKube([], refused=500), groups)  # type: ignore[arg-type]
    assert node_features(PagedKube([node_feature("n1", "2330")]), frozenset()) == {}  # type: ignore[arg-type]


def test_a_node_with_nodefeature_devices_is_the_same_object_in_each_snapshot_until_it_or_its_devices_change() -> None:
    """What a pass keeps per node (nodes.ByNode, KeptRouting, the render key, NodeFacts' cached GPU facts) is worked
    out again only for a node whose NodeFacts object is not the one the last pass saw. The snapshot filled in the
    NodeFeature devices (node_features, read at start-up) as a new object for every node that had some, on every
    pass: with NFD's NodeFeature API (on by default since NFD 0.14) nothing per GPU node was kept, and a settled pass
    took about twice the CPU. Now the cache holds the nodes with their devices, made again only when the node or its
    devices change."""
    kube = ThreadedKube([node_feature("n1", "2330"), node_feature("n2", "20b5"), node_feature("n3", "2330")])
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    op._gone = set()
    listed = {"n1": replace(facts("n1"), pci_devices=("2330",)), "n2": replace(facts("n2"), pci_devices=("2331",)),
              "n3": facts("n3")}  # the start-up listing: n1's and n2's NodeFeatures name an H100 each, n3 has none
    op._merge(snapshot(nodes=listed, api_groups=frozenset({"nfd.k8s-sigs.io"})))
    first = op.snapshot().nodes["n1"]
    assert first.pci_devices == ("2330",) and first.identity.known  # worked out by the first pass
    assert op.snapshot().nodes["n1"] is first  # nothing changed since

    op.on_node_facts("n1", facts("n1", labels={"example.com/rack": "r2"}))  # the watch's facts (no devices)
    second = op.snapshot().nodes["n1"]
    assert second is not first and second.pci_devices == ("2330",) and "identity" in second.__dict__  # inherited

    op._features_listed = 0.0
    asyncio.run(op.refresh_node_features())  # n3 is unidentified: listed again, n2 is an A100 after all
    assert kube.lists == ["NodeFeature"]
    snap = op.snapshot()
    assert snap.nodes["n1"] is second
    assert snap.nodes["n2"].pci_devices == ("20b5",) and snap.nodes["n3"].pci_devices == ("2330",)
    assert op.snapshot().nodes["n3"] is snap.nodes["n3"]


def test_nodefeatures_are_listed_in_a_thread_and_taken_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop ran refresh_node_features in a worker thread, where unidentified() walked the node cache the event
    loop changes as nodes join and leave: a node event handled mid-walk (the GIL switches threads every 0.5 ms in the
    operator, debug.tune_threads; a walk over thousands of nodes takes longer) ended it with "RuntimeError:
    dictionary changed size during iteration", logged as "listing NodeFeatures failed": no NodeFeature was read
    while GPU nodes joined, when it matters. Now it decides on the event loop and only the listing runs in a
    thread; a node deleted while it runs keeps no devices (another machine may join under its name)."""
    kube = ThreadedKube([node_feature("gpu-1", "2330"), node_feature("gpu-2", "2330")])
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    op.api_groups = frozenset({"nfd.k8s-sigs.io"})
    op.nodes = {"gpu-1": facts("gpu-1"), "gpu-2": facts("gpu-2")}  # GPU nodes no label or NodeFeature identifies yet
    walked: set[threading.Thread] = set()
    real = runtime.identify

    def identify(*args: Any) -> Any:
        walked.add(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(runtime, "identify", identify)

    def meanwhile() -> None:
        op.on_node_facts("gpu-3", facts("gpu-3"))  # a node joins
        op.on_node_facts("gpu-2", None)  # and one leaves

    async def main() -> None:
        kube.loop, kube.meanwhile = asyncio.get_running_loop(), meanwhile
        await op.refresh_node_features()

    asyncio.run(main())
    assert kube.lists == ["NodeFeature"] and walked == {threading.main_thread()}
    assert op.node_features == {"gpu-1": ("2330",)}
    assert op.nodes["gpu-1"].pci_devices == ("2330",) and set(op.nodes) == {"gpu-1", "gpu-3"}


NFD = frozenset({"nfd.k8s-sigs.io"})


def feature_event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def other_feature(node: str, device: str) -> dict[str, Any]:
    """A second NodeFeature of a node (a custom one, in another namespace), naming one more GPU."""
    obj = node_feature(node, device)
    obj["metadata"].update(name=f"{node}-extra", namespace="default")
    return obj


class FeatureApi:
    """NodeFeatures listed and watched as the API server serves them (`refuse_watch`: its watch is refused, as a
    ClusterRole granting only `list` refuses it); node patches answered as test_apply.Client does. Records the
    NodeFeature requests: "list" (the watch's listing), "watch", "each" (the operator's own listing)."""

    def __init__(self, listed: list[dict[str, Any]], refuse_watch: bool = False) -> None:
        from test_apply import Client

        self.client = Client()
        self.listed = listed
        self.events: list[dict[str, Any]] = []
        self.refuse_watch = refuse_watch
        self.requests: list[str] = []
        self.meta: dict[str, dict[str, dict[str, str]]] = {}  # node -> the labels, annotations patches gave it

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        return self.client.calls

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *args: Any) -> dict[str, Any]:
        """Answered with the labels and annotations of every patch so far (test_apply.Client's: this one's)."""
        meta = self.meta.setdefault(name, {"labels": {}, "annotations": {}})
        for part in meta:
            meta[part] = {k: v for k, v in {**meta[part], **(patch["metadata"].get(part) or {})}.items() if v}
        return self.client.merge_patch(kind, name, {"metadata": copy.deepcopy(meta)}, *args)

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, decode: Any = json.loads,
                **_: Any) -> Any:  # fmt: skip
        assert (method, path) == ("GET", "/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures")
        self.requests.append("list")
        return decode(json.dumps({"metadata": {"resourceVersion": "10"}, "items": self.listed}).encode())

    def watch(self, path: str, rv: str, timeout_seconds: int = 30, parse: Any = json.loads, **_: Any) -> Any:
        assert path == "/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures"
        self.requests.append("watch")
        if self.refuse_watch:
            raise ApiError(403, '{"message": "cannot watch resource \\"nodefeatures\\""}', f"GET {path}")
        events, self.events = self.events, []
        for event in events:
            yield parse(json.dumps(event).encode())

    def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        assert kind == "NodeFeature"
        self.requests.append("each")
        return iter(copy.deepcopy(self.listed))


async def _watching(api: FeatureApi, monkeypatch: pytest.MonkeyPatch) -> Operator:
    """An operator in a running event loop whose last pass labelled by the sample spec, its NodeFeature watch
    started (its thread not: the test runs its listing and watch) and delivering to it at once."""
    from test_apply import _labelling_operator

    monkeypatch.setattr(runtime.Watch, "start", lambda self: None)
    op = _labelling_operator(api)  # type: ignore[arg-type]
    op.api_groups = NFD
    op.own_watches(lambda handler: handler, lambda handler: handler)
    await op.refresh_node_features()
    assert op.feature_watch is not None and api.requests == []
    return op


def test_a_node_whose_nodefeature_came_first_is_labelled_once_with_its_mig_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NodeFeatures were not watched, only listed again (all of them) at most every NODE_FEATURE_RELIST_S while a
    GPU node was unidentified: a node joining with NFD's plain pci-10de label was labelled without its GPU known
    (no MIG labels, no version-matrix verdict), and a second patch followed the next listing (1.7 node patches per
    joining node in operator_scale --node-features). Now they are watched: NFD's worker writes a node's NodeFeature
    as it starts, so the node is identified when it is first seen, and labelled with one patch."""
    from gpu_operator import mig
    from gpu_operator.nodes import MIG_CONFIG, deploy_label
    from support import node

    api = FeatureApi([node_feature("join-1", "2330")])  # an H100 80GB: MIG-capable

    async def scenario() -> Operator:
        op = await _watching(api, monkeypatch)
        assert op.feature_watch is not None
        op.feature_watch.relist()
        op.on_node("ADDED", node("join-1"))
        await asyncio.gather(*op._labelling)
        return op

    op = asyncio.run(scenario())
    assert api.calls == [("patch", "Node", "join-1")]
    got = op.nodes["join-1"]
    assert got.pci_devices == ("2330",) and got.labels.get(MIG_CONFIG) == "all-disabled"
    assert got.labels.get(mig.APPROVED) == "all-disabled" and got.labels.get(deploy_label("mig-manager")) == "true"
    assert api.requests == ["list"]  # the watch's own listing; nothing listed again


def test_a_nodefeature_after_its_node_identifies_that_node_only_and_a_deleted_one_takes_its_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The NodeFeature watch's events change the devices of the nodes they name, and only theirs: a new
    NodeFeature identifies its node (labelled at once, a pass woken), one changing nothing read wakes nothing, two
    for one node are merged, and a deleted one leaves its node none of its devices."""
    from support import node

    api = FeatureApi([])

    async def scenario() -> Operator:
        op = await _watching(api, monkeypatch)
        watch = op.feature_watch
        assert watch is not None
        rv = watch.relist()
        for name in ("gpu-1", "gpu-2"):
            op.on_node("ADDED", node(name))
        await asyncio.gather(*op._labelling)
        before = dict(op.nodes)
        api.calls.clear()
        op.wake.clear()

        api.events = [feature_event("ADDED", node_feature("gpu-1", "2330"))]
        rv = watch.watch(rv) or rv
        await asyncio.gather(*op._labelling)
        assert api.calls == [("patch", "Node", "gpu-1")] and op.wake.is_set()
        assert op.nodes["gpu-1"].pci_devices == ("2330",) and op.nodes["gpu-1"].is_mig_capable
        assert op.nodes["gpu-2"] is before["gpu-2"]

        api.calls.clear()
        op.wake.clear()
        same = node_feature("gpu-1", "2330")
        same["spec"]["features"]["instances"]["cpu.model"] = {"elements": [{"attributes": {"family": "6"}}]}
        api.events = [feature_event("MODIFIED", same)]
        rv = watch.watch(rv) or rv
        assert not op.wake.is_set() and api.calls == []  # nothing the operator reads changed

        api.events = [feature_event("ADDED", other_feature("gpu-1", "20b5"))]  # a second one for gpu-1
        rv = watch.watch(rv) or rv
        assert op.node_features == {"gpu-1": ("20b5", "2330")} and op.nodes["gpu-1"].pci_devices == ("20b5", "2330")

        api.events = [feature_event("DELETED", node_feature("gpu-1", "2330"))]
        rv = watch.watch(rv) or rv
        assert op.node_features == {"gpu-1": ("20b5",)} and op.nodes["gpu-1"].pci_devices == ("20b5",)
        api.events = [feature_event("DELETED", other_feature("gpu-1", "20b5"))]
        watch.watch(rv)
        assert op.node_features == {} and op.nodes["gpu-1"].pci_devices == ()
        await asyncio.gather(*op._labelling)
        return op

    op = asyncio.run(scenario())
    assert api.requests.count("list") == 1 and "each" not in api.requests
    assert op._features == {} and op._features_of == {}  # nothing kept of the deleted NodeFeatures


def test_a_node_deleted_and_registered_again_has_its_nodefeatures_devices_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleting a node dropped what the NodeFeature watch held of its NodeFeatures ("a new node of that name is
    another machine"), though the NodeFeatures stay until they are deleted (by nfd-gc, where it runs, or with their
    nfd-worker pod). A node registered again under its name with the same hardware (kubelet after `kubectl delete
    node`) got no devices: nfd-worker does not write an unchanged NodeFeature, so no event came until the watch
    listed again (a 410). Now the projection is kept by NodeFeature, and only its DELETED event removes it."""
    from support import node

    api = FeatureApi([node_feature("gpu-1", "2330")])

    async def scenario() -> Operator:
        op = await _watching(api, monkeypatch)
        watch = op.feature_watch
        assert watch is not None
        rv = watch.relist()
        op.on_node("ADDED", node("gpu-1"))
        await asyncio.gather(*op._labelling)
        assert op.nodes["gpu-1"].pci_devices == ("2330",)

        op.on_node("DELETED", node("gpu-1"))
        op.on_node("ADDED", node("gpu-1"))  # registered again: its NodeFeature is unchanged, no event
        await asyncio.gather(*op._labelling)
        assert op.nodes["gpu-1"].pci_devices == ("2330",) and op.nodes["gpu-1"].is_mig_capable

        op.on_node("DELETED", node("gpu-1"))
        api.events = [feature_event("DELETED", node_feature("gpu-1", "2330"))]  # nfd-gc's, for the gone node
        watch.watch(rv)
        return op

    op = asyncio.run(scenario())
    assert op.nodes == {} and op.node_features == {} and op._features == {} and op._features_of == {}


def test_the_nodefeature_watchs_listing_replaces_the_start_up_listings_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start-up listing's devices stand until the watch lists the NodeFeatures itself: a node whose NodeFeature
    went away in between loses them then, one whose NodeFeature is there keeps them without a change. While the
    watch runs, an unidentified GPU node lists nothing again, and a relisting of the cluster leaves the devices to
    the watch. A deleted node's NodeFeatures are kept until they change or go."""
    api = FeatureApi([node_feature("n1", "2330")])
    monkeypatch.setattr(runtime.Watch, "start", lambda self: None)
    op = Operator(kube=api, namespace="gpu-operator")  # type: ignore[arg-type]
    listed = {"n1": replace(facts("n1"), pci_devices=("2330",)), "n2": replace(facts("n2"), pci_devices=("20b5",)),
              "n3": facts("n3")}  # fmt: skip
    op._gone = set()
    op._merge(snapshot(nodes=listed, api_groups=NFD))
    op.own_watches(lambda handler: handler, lambda handler: handler)
    asyncio.run(op.refresh_node_features())
    n1 = op.nodes["n1"]
    assert op.feature_watch is not None and op.unidentified()  # n3: no label, no NodeFeature
    op.feature_watch.relist()
    assert op.node_features == {"n1": ("2330",)} and op.nodes["n1"] is n1 and op.nodes["n2"].pci_devices == ()
    op._features_listed = 0.0
    for _ in range(3):
        asyncio.run(op.refresh_node_features())
    op._merge(snapshot(nodes={**listed, "n3": replace(facts("n3"), pci_devices=("2330",))}, api_groups=NFD),
              prune=True)  # fmt: skip
    assert api.requests == ["list"] and op.nodes["n3"].pci_devices == ()

    op.on_node_facts("n1", None)  # deleted, and another machine joins under its name
    op.on_node_facts("n1", facts("n1"))
    assert op.nodes["n1"].pci_devices == ("2330",)  # the NodeFeature there, until NFD's worker writes it anew
    api.events = [feature_event("MODIFIED", node_feature("n1", "20b5"))]
    op.feature_watch.watch("10")
    assert op.nodes["n1"].pci_devices == ("20b5",)


def test_nodefeatures_are_listed_again_where_watching_them_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the RBAC grants `list` on NodeFeatures but not `watch` (the ClusterRole before the watch), the watch
    ends at its 403, says so, and the NodeFeatures are listed again as before: at most every
    NODE_FEATURE_RELIST_S while a GPU node is unidentified."""
    import logging

    api = FeatureApi([node_feature("gpu-1", "2330")], refuse_watch=True)
    op = asyncio.run(_watching(api, monkeypatch))
    op.task = None  # (no pass ran: nothing is labelled between passes)
    op.nodes = {"gpu-1": facts("gpu-1"), "gpu-2": facts("gpu-2")}
    watch = op.feature_watch
    assert watch is not None
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        watch.run()  # lists, is refused the watch, and ends
    assert api.requests == ["list", "watch"] and op.feature_watch is None
    assert [r.getMessage() for r in caplog.records if "NodeFeatures" in r.getMessage()] == [
        "watching NodeFeatures was refused (GET /apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures: 403 cannot watch "
        'resource "nodefeatures"): they are listed again instead, at most every 10 s while a GPU node is '
        "unidentified (grant `watch` on nodefeatures.nfd.k8s-sigs.io)"]
    assert op.nodes["gpu-1"].pci_devices == ("2330",) and op.unidentified()  # gpu-2 has none
    api.listed.append(node_feature("gpu-2", "20b5"))
    op._features_listed = 0.0
    asyncio.run(op.refresh_node_features())
    asyncio.run(op.refresh_node_features())
    assert api.requests == ["list", "watch", "each"] and op.feature_watch is None
    assert op.nodes["gpu-2"].pci_devices == ("20b5",) and not op.unidentified()


def test_a_refused_nodefeature_listing_is_told_as_one_not_as_a_refused_watch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ClusterRole without `list` on nodefeatures: the NodeFeature watch's own listing is refused. The operator
    logged "watching NodeFeatures was refused ...: they are listed again instead ... (grant `watch` on
    nodefeatures.nfd.k8s-sigs.io)": they were not listed (observe.node_features reads that 403 as none), and
    granting `watch` fixed nothing. Now the message says the listing was refused and names both verbs."""
    import logging

    class NoListApi(FeatureApi):
        def request(self, method: str, path: str, *a: Any, **k: Any) -> Any:
            self.requests.append("list")
            raise ApiError(403, '{"message": "cannot list resource \\"nodefeatures\\""}', f"GET {path}")

    api = NoListApi([node_feature("gpu-1", "2330")])
    op = asyncio.run(_watching(api, monkeypatch))
    op.task = None
    watch = op.feature_watch
    assert watch is not None
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        watch.run()  # its listing is refused: it ends
    assert api.requests == ["list"] and op.feature_watch is None
    assert [r.getMessage() for r in caplog.records if "NodeFeatures" in r.getMessage()] == [
        "listing NodeFeatures was refused (GET /apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures: 403 cannot list "
        'resource "nodefeatures"): GPUs are identified by their labels alone (grant `list` and `watch` on '
        "nodefeatures.nfd.k8s-sigs.io)"]


def test_a_relisting_lists_no_nodefeatures_while_their_watch_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relisting of the cluster (sync(prune=True), after a kopf watch's 410) listed every NodeFeature again (each
    holds every feature of its node) while the NodeFeature watch ran, and then left what it read unused (the watch
    keeps the devices). Now it lists none while the watch runs; where watching them is refused it still does. A node
    that listing brings gets the watch's devices."""
    from support import node

    class Listing(CountingKube):
        nodes: list[dict[str, Any]] = []

        def api_groups(self) -> frozenset[str]:
            return NFD

        def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
            return iter(copy.deepcopy(self.nodes) if kind == "Node" else self.list(kind))

    monkeypatch.setattr(runtime.Watch, "start", lambda self: None)
    kube = Listing()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    asyncio.run(op.sync())
    assert "NodeFeature" in kube.lists  # the start-up listing
    op.own_watches(lambda handler: handler, lambda handler: handler)
    asyncio.run(op.refresh_node_features())
    assert op.feature_watch is not None
    op.on_node_feature(op._feature_watches, "nfd/gpu-1", ("gpu-1", ("2330",)))  # before its node is seen

    kube.lists.clear()
    kube.nodes = [node("gpu-1")]
    asyncio.run(op.sync(prune=True))
    assert "NodeFeature" not in kube.lists and op.nodes["gpu-1"].pci_devices == ("2330",)

    op._feature_watch_refused(op._feature_watches, ApiError(403, "{}", "GET nodefeatures"))
    op._gone = set()
    op._merge(snapshot(nodes={"gpu-1": facts("gpu-1")}, api_groups=NFD), prune=True, features=False)
    assert op.nodes["gpu-1"].pci_devices == ("2330",)  # a listing begun while they were watched keeps them
    asyncio.run(op.sync(prune=True))
    assert "NodeFeature" in kube.lists


def test_a_kind_just_served_is_listed_in_a_thread_and_merged_on_the_event_loop_newer_events_kept() -> None:
    """refresh_discovery ran in a worker thread and put the owned objects of a kind just served into the cache as
    listed, with no version check: a watch event of one (kopf starts that watch once the CRD appears) handled on
    the event loop meanwhile was overwritten by the older listing, and one deleted meanwhile came back. Now only
    the API calls run in a thread; the listing is merged on the event loop (the newer wins, a deletion stays)."""
    def monitor(name: str, rv: int) -> dict[str, Any]:
        return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                "metadata": {"name": name, "namespace": "gpu-operator", "resourceVersion": str(rv),
                             "labels": {"app.kubernetes.io/managed-by": "gpu-operator"}}}  # fmt: skip

    groups = frozenset({"monitoring.coreos.com/servicemonitors"})
    kube = ThreadedKube([monitor("dcgm-exporter", 10), monitor("node-status-exporter", 10)], groups)
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]

    def meanwhile() -> None:
        op.on_owned("MODIFIED", monitor("dcgm-exporter", 20))
        op.on_owned("DELETED", monitor("node-status-exporter", 21))

    async def main() -> None:
        kube.loop, kube.meanwhile = asyncio.get_running_loop(), meanwhile
        await op.refresh_discovery()

    asyncio.run(main())
    assert kube.lists == ["ServiceMonitor"] and op.api_groups == groups
    assert list(op.owned) == [("ServiceMonitor", "gpu-operator", "dcgm-exporter")]
    assert op.owned[("ServiceMonitor", "gpu-operator", "dcgm-exporter")]["metadata"]["resourceVersion"] == "20"


def test_nodes_are_read_again_before_a_pass_once_an_nvidiadriver_selects_on_an_nfd_label_they_lack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpu_operator import nodes
    from gpu_operator.nvidiadriver import NVIDIADriver, assign
    from support import node

    monkeypatch.setattr(nodes, "_kept", frozenset())
    major = "feature.node.kubernetes.io/system-os_release.VERSION_ID.major"
    listed: list[str] = []

    class Kube:
        fail = False

        def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
            listed.append(kind)
            if self.fail:
                raise OSError("connection refused")
            op.on_node_facts("gone", None)  # deleted while the listing runs (the watch said so)
            return iter([node("rhel-1", os=("rhel", "9.4"), labels={major: "9"}), node("gone")])

    kube = Kube()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]
    # As the node watch projected them before any NVIDIADriver named the label.
    op.nodes = {"rhel-1": facts("rhel-1", os=("rhel", "9.4"), labels={major: "9"}), "gone": facts("gone")}
    assert major not in op.nodes["rhel-1"].labels
    assert asyncio.run(op.read_kept_labels()) and listed == []  # nothing to read again
    rhel9 = {"metadata": {"name": "rhel9", "resourceVersion": "1"}, "spec": {"nodeSelector": {major: "9"}}}
    op.on_nvidia_driver("ADDED", rhel9)
    kube.fail = True
    assert not asyncio.run(op.read_kept_labels()) and op.labels_read == frozenset()  # the pass waits
    kube.fail = False
    assert asyncio.run(op.read_kept_labels()) and listed == ["Node", "Node"]
    assert op.nodes["rhel-1"].labels[major] == "9" and "gone" not in op.nodes and op.labels_read == {major}
    drivers = [NVIDIADriver.from_object({"metadata": {"name": "default"}, "spec": {"default": True}}),
               NVIDIADriver.from_object(rhel9)]  # fmt: skip
    assert assign(op.nodes.values(), drivers).owner == {"rhel-1": "rhel9"}
    assert asyncio.run(op.read_kept_labels()) and len(listed) == 2  # read once


@pytest.mark.parametrize("pooled", [False, True])
def test_the_listing_keeps_the_nfd_labels_the_nvidiadrivers_it_lists_select_on(
    monkeypatch: pytest.MonkeyPatch, pooled: bool
) -> None:
    """observe() (the operator's start, doctor, render --from-cluster) reads the NVIDIADrivers before it projects the
    nodes, so the labels their selectors name are there to route on."""
    from concurrent.futures import ThreadPoolExecutor

    from gpu_operator import nodes
    from gpu_operator.observe import observe
    from support import node

    monkeypatch.setattr(nodes, "_kept", frozenset())
    major = "feature.node.kubernetes.io/system-os_release.VERSION_ID.major"
    driver = {"metadata": {"name": "rhel9"}, "spec": {"nodeSelector": {major: "9"}}}

    class Kube:
        def api_groups(self) -> frozenset[str]:
            return frozenset()

        def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            return [copy.deepcopy(driver)] if kind == "NVIDIADriver" else []

        def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
            return iter([node("rhel-1", os=("rhel", "9.4"), labels={major: "9"})] if kind == "Node" else [])

    with ThreadPoolExecutor(1) as pool:  # one worker: the NVIDIADrivers' listing must come before the nodes'
        snap = observe(Kube(), "gpu-operator", pool=pool if pooled else None)  # type: ignore[arg-type]
    assert snap.nodes["rhel-1"].labels[major] == "9" and set(snap.nvidia_drivers) == {"rhel9"}


def test_a_late_deletion_of_a_predecessor_keeps_its_same_named_successor() -> None:
    """kopf runs each object's events in its own worker (by uid): a ClusterPolicy deleted and created again
    under its name can deliver the old one's DELETED after the new one's ADDED. The successor stays cached (it
    was dropped, so the re-created policy never got its status: e2e/test_operator's hand-back timed out)."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    old = {"metadata": {"name": "cluster-policy", "uid": "old", "resourceVersion": "10"}}
    new = {"metadata": {"name": "cluster-policy", "uid": "new", "resourceVersion": "12"}}
    op.on_policy("ADDED", new)
    op.on_policy("DELETED", old)
    assert op.policies["cluster-policy"]["metadata"]["uid"] == "new"
    op.on_policy("DELETED", new)
    assert op.policies == {}
    op.on_nvidia_driver("ADDED", new)
    op.on_nvidia_driver("DELETED", old)
    assert "cluster-policy" in op.nvidia_drivers
    labels = {"app.kubernetes.io/managed-by": "gpu-operator"}
    cm = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "gpu-operator", "labels": labels}}
    op.on_config_map_event("ADDED", {**cm, "metadata": {**cm["metadata"], "uid": "new", "resourceVersion": "5"}})
    op.on_config_map_event("DELETED", {**cm, "metadata": {**cm["metadata"], "uid": "old", "resourceVersion": "4"}})
    assert "c" in op.config_maps and ("ConfigMap", "gpu-operator", "c") in op.owned
    op.on_config_map_event("DELETED", {**cm, "metadata": {**cm["metadata"], "uid": "new", "resourceVersion": "6"}})
    assert "c" not in op.config_maps and ("ConfigMap", "gpu-operator", "c") not in op.owned


def test_a_late_update_of_a_deleted_configmap_does_not_replace_its_successor() -> None:
    """The same for a predecessor's last update handled after its successor's creation: the ConfigMap cache took
    whatever came last (ClusterPolicies, NVIDIADrivers and our objects keep the newer by resourceVersion), so the
    old data replaced the new and the old uid was recorded; the old object's deletion then removed the name, and
    the operator rendered without a ConfigMap that exists (a repoConfig, say) until it changed again."""
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]

    def config_map(uid: str, rv: int, data: dict[str, str]) -> dict[str, Any]:
        meta = {"name": "repo-config", "namespace": "gpu-operator", "uid": uid, "resourceVersion": str(rv)}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    op.on_config_map_event("ADDED", config_map("old", 10, {"a.list": "old"}))
    op.on_config_map_event("ADDED", config_map("new", 30, {"b.list": "new"}))  # the successor's worker first
    op.on_config_map_event("MODIFIED", config_map("old", 20, {"a.list": "edited"}))  # the predecessor's, late
    assert op.config_data.get("repo-config") == {"b.list": "new"}
    op.on_config_map_event("DELETED", config_map("old", 21, {"a.list": "edited"}))
    assert op.config_maps.get("repo-config") == ("b.list",)


class _DeletingReconciler:
    """A pass that patches node n1 and updates DaemonSet ds (answers at resourceVersion 6) while both are deleted
    (resourceVersion 7): their watches' deletions reach the event loop before the pass ends, as they do when the
    deletion comes a moment after the write."""

    labelling = None
    moved = None
    newer = None

    def __init__(self, op: Operator, loop: asyncio.AbstractEventLoop) -> None:
        self.op, self.loop, self.passes = op, loop, 0
        self.done = asyncio.Event()
        self.applier = Applier(None)  # type: ignore[arg-type]  # a node's deletion makes both forget it
        self.events = EventRecorder(None)  # type: ignore[arg-type]

    def reconcile(self, snap: Snapshot) -> Outcome:
        self.passes += 1
        if self.passes > 1:
            self.loop.call_soon_threadsafe(self.done.set)
            return Outcome(ready=True)
        node_answer = replace(facts("n1", labels={"nvidia.com/gpu.deploy.driver": "true"}), resource_version=6)
        ds_answer = {**daemonset("ds", 6), "metadata": {**daemonset("ds", 6)["metadata"], "uid": "ds-uid"}}
        deleted = threading.Event()

        def deletions() -> None:
            self.op.on_node_facts("n1", None)  # the node watch: DELETED n1 (resourceVersion 7)
            self.op.on_daemonset("ds", None)  # the DaemonSet watch: DELETED ds (resourceVersion 7)
            deleted.set()

        self.loop.call_soon_threadsafe(deletions)
        assert deleted.wait(5)
        self.loop.call_soon_threadsafe(self.done.set)
        return Outcome(ready=True, applied=[ds_answer], nodes=[node_answer])


def test_a_write_answer_applied_after_a_deletion_does_not_bring_the_deleted_object_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Operator.loop applies a pass's answers (outcome.applied, outcome.nodes) to the caches when the pass ends,
    and _patch_node/_advance_node do the same with theirs: an object deleted after the write was answered, whose
    deletion the event loop had handled already, was put back, and no event took it out again (the watches had
    forgotten it; a phantom DaemonSet equal to what is rendered is never created again, a phantom node counts in
    the status and toward maxUnavailable). A node answer now only updates a cached node, and an answer of an
    object deleted since the pass's snapshot is dropped."""
    ds = {**daemonset("ds", 5), "metadata": {**daemonset("ds", 5)["metadata"], "uid": "ds-uid"}}
    before = snapshot(nodes={"n1": replace(facts("n1"), resource_version=5)},
                      owned={("DaemonSet", "gpu-operator", "ds"): ds})  # fmt: skip
    monkeypatch.setattr(runtime, "observe", lambda kube, namespace, **_: before)
    monkeypatch.setattr(runtime, "warm_up", lambda: None)

    async def scenario() -> Operator:
        op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
        op.labels_read = kept_labels()
        op.event_loop = asyncio.get_running_loop()
        fake = _DeletingReconciler(op, op.event_loop)
        op.reconciler = fake  # type: ignore[assignment]
        op.task = asyncio.ensure_future(op.loop())
        await asyncio.wait_for(fake.done.wait(), 10)
        await asyncio.sleep(0.05)  # the loop applies the pass's outcome
        op.task.cancel()
        op._label_pool.shutdown()
        return op

    op = asyncio.run(scenario())
    assert "n1" not in op.nodes and ("DaemonSet", "gpu-operator", "ds") not in op.owned
    assert op._deleted is None  # kept only while a pass runs

    # A DaemonSet the pass's apply created again after the deletion (another uid) is taken.
    op._deleted = {("DaemonSet", "gpu-operator", "ds"): ds}
    assert op._late({**ds, "metadata": {**ds["metadata"], "resourceVersion": "6"}})
    assert not op._late({**ds, "metadata": {**ds["metadata"], "uid": "successor", "resourceVersion": "8"}})


class _FailingReconciler:
    """Passes that go as `outcomes` says (an Outcome, or an exception raised), recording the failures in a row."""

    labelling = None
    moved = None
    newer = None

    def __init__(self, op: Operator, loop: asyncio.AbstractEventLoop, outcomes: list[Outcome | Exception]) -> None:
        self.op, self.loop, self.outcomes = op, loop, outcomes
        self.streaks: list[int] = []  # op.failures as each pass began
        self.done = asyncio.Event()

    def reconcile(self, snap: Snapshot) -> Outcome:
        self.streaks.append(self.op.failures)
        if not self.outcomes:
            self.loop.call_soon_threadsafe(self.done.set)
            return Outcome(ready=True)
        result = self.outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_failed_passes_are_retried_with_a_backoff_that_a_pass_that_succeeds_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass that failed (an exception, or the API server refusing its writes: a webhook refusing every apply,
    RBAC missing) was tried again after a fixed 5 s however often it failed in a row: a lasting failure cost a full
    pass and its API calls every 5 s for ever. Upstream's controller-runtime requeues a reconcile that returns an
    error with a backoff per item. Now 5 s doubling up to 5 min, until a pass succeeds."""
    from gpu_operator.runtime import FAILED_RETRY_MAX_S, failed_retry

    assert [failed_retry(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert failed_retry(10_000) == FAILED_RETRY_MAX_S

    waits: list[float] = []
    monkeypatch.setattr(runtime, "failed_retry", lambda n: waits.append(failed_retry(n)) or 0.01)
    monkeypatch.setattr(runtime, "DEBOUNCE_S", 0.0)
    monkeypatch.setattr(runtime, "observe", lambda kube, namespace, **_: snapshot())
    monkeypatch.setattr(runtime, "warm_up", lambda: None)
    refused = Outcome(ready=False, error=True)
    not_ready = Outcome(ready=False)  # pods still rolling out: no failure, the ordinary 5 s recheck
    outcomes: list[Outcome | Exception] = [refused, RuntimeError("boom"), refused, not_ready, refused, not_ready]

    async def scenario() -> _FailingReconciler:
        op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
        op.labels_read = kept_labels()
        loop = asyncio.get_running_loop()
        fake = _FailingReconciler(op, loop, outcomes)
        op.reconciler = fake  # type: ignore[assignment]
        op.task = asyncio.ensure_future(op.loop())

        async def wake_on_not_ready() -> None:  # not_ready's recheck is 5 s: a watch event wakes the pass instead
            while not fake.done.is_set():
                await asyncio.sleep(0.02)
                op.wake_now("pod")

        waker = asyncio.ensure_future(wake_on_not_ready())
        await asyncio.wait_for(fake.done.wait(), 10)
        op.task.cancel()
        waker.cancel()
        op._label_pool.shutdown()
        return fake

    fake = asyncio.run(scenario())
    assert fake.streaks == [0, 1, 2, 3, 0, 1, 0]
    assert waits == [5, 10, 20, 5]


# --- the metrics and /healthz endpoints ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _status(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_metrics_are_served_on_ipv4_and_ipv6_and_on_ipv4_alone_where_the_pod_has_no_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upstream serves its metrics on ":8080" (Go: IPv4 and IPv6). Ours bound 0.0.0.0, IPv4 only, so on an IPv6
    single-stack cluster Prometheus could not scrape the pod."""
    from gpu_operator import metrics

    port = _free_port()
    metrics.serve(port)
    assert _status("127.0.0.1", port, "/metrics") == _status("::1", port, "/metrics") == 200

    def no_ipv6(*_: Any, **__: Any) -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(metrics, "make_server", no_ipv6)  # as socket(AF_INET6) fails with IPv6 off in the kernel
    port = _free_port()
    metrics.serve(port)
    assert _status("127.0.0.1", port, "/metrics") == 200


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_healthz_is_served_on_ipv4_and_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's liveness and readiness probes GET /healthz on the pod IP. It was kopf's liveness endpoint at
    http://0.0.0.0:<port>, IPv4 only (and kopf binds its URL's one host: [::] is IPv6 only under asyncio), so on
    an IPv6 single-stack cluster the probes failed and the kubelet restarted the operator forever."""
    import kopf

    from gpu_operator import debug, metrics, runtime
    from support import EchoKube

    seen: dict[str, Any] = {}
    monkeypatch.setattr(runtime.Kube, "connect", staticmethod(lambda *_a, **_k: EchoKube()))
    monkeypatch.setattr(runtime, "Operator", lambda *a, **k: object())
    monkeypatch.setattr(runtime, "build_registry", lambda op: kopf.OperatorRegistry())
    monkeypatch.setattr(runtime, "identity", lambda: "me")
    monkeypatch.setattr(runtime.gc, "freeze", lambda: None)
    monkeypatch.setattr(metrics, "serve", lambda port: None)
    for name in ("install", "tune_malloc", "tune_threads"):
        monkeypatch.setattr(debug, name, lambda: None)
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    port = _free_port()
    runtime.run(None, "gpu-operator", metrics_port=0, health_port=port)
    assert seen.get("liveness_endpoint") is None
    (startup,) = seen["registry"]._activities.get_all_handlers()  # build_registry's are left out here

    async def probe() -> list[int]:
        await startup.fn()
        return [await asyncio.to_thread(_status, host, port, "/healthz") for host in ("127.0.0.1", "::1")]

    assert asyncio.run(probe()) == [200, 200]


def test_kopf_logging_in_again_gets_the_token_file_read_now(tmp_path: Any) -> None:
    """kopf logs in again after a 401 (and gives up on credentials it found invalid), but the login handler handed
    it the token the operator's client had loaded: from a kubeconfig's tokenFile, the one read at start for good,
    so once it expired kopf's watches failed to log in until a restart. Now the handler reads the file again."""
    from gpu_operator.kube import Kube

    token = tmp_path / "token"
    token.write_text("old")
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    op = Operator(Kube.connect(str(config)), "gpu-operator")
    (login,) = [
        h for h in runtime.build_registry(op)._activities.get_all_handlers()
        if h.activity == "authentication"
    ]  # fmt: skip
    first = login.fn()
    assert (first.scheme, first.token, first.server) == ("Bearer", "old", "https://127.0.0.1:6443")
    token.write_text("new")
    assert login.fn().token == "new"


def test_a_passes_profile_that_cannot_be_written_does_not_fail_the_pass(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With GPU_OPERATOR_PROFILE_PASSES=1, debug.profiled wrote passes.prof into GPU_OPERATOR_DEBUG_DIR in its
    `finally`: a directory that is missing or not writable raised there, replacing the pass's outcome with an
    OSError, so every profiled pass failed (the heap report beside it catches its errors: "a debug aid must not
    stop the operator"); now the pass's result comes back and the failure is one line on stderr (review cli2 #4)."""
    import cProfile

    from gpu_operator import debug

    monkeypatch.setenv(debug.DEBUG_DIR, str(tmp_path / "missing"))
    monkeypatch.setattr(debug, "_passes", cProfile.Profile())
    monkeypatch.setattr(debug, "_dumped", [float("-inf")])
    assert debug.profiled(lambda: 7) == 7
    assert "passes profile not written" in capsys.readouterr().err


class DriversRefusingKube(CountingKube):
    """Lists nothing, but NVIDIADrivers while `refusing` (403: a ClusterRole without `list` on nvidiadrivers, as
    the previous chart's); their watch's request refused the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = True
        self.drivers: list[dict[str, Any]] = []

    def api_groups(self) -> frozenset[str]:
        return frozenset({"apps", "nvidia.com"})

    def _refuse(self, path: str) -> None:
        raise ApiError(403, '{"message": "nvidiadrivers.nvidia.com is forbidden: cannot list resource '
                       '\\"nvidiadrivers\\""}', f"GET {path}")  # fmt: skip

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if kind == "NVIDIADriver":
            if self.refusing:
                self._refuse("/apis/nvidia.com/v1alpha1/nvidiadrivers")
            return copy.deepcopy(self.drivers)
        return super().list(kind)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self._refuse(path)


def test_a_refused_nvidiadriver_listing_neither_stalls_the_operator_nor_empties_its_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Since NVIDIADrivers' 403 raised in observe(), Operator.sync retried it for good ("listing the cluster failed,
    retrying in 5s"): under the previous chart's ClusterRole (e2e test_helm_lifecycle) no pass ever ran. Now the
    listing goes on and the snapshot carries the refusal (a pass under useNvidiaDriverCRD fails on it, without it
    the NVIDIADrivers drive nothing); one warning names the permission. A relisting that is refused keeps the
    NVIDIADrivers cached (not pruned as gone); before each pass they are listed again until that works."""
    kube = DriversRefusingKube()
    op = Operator(kube=kube, namespace="gpu-operator")  # type: ignore[arg-type]

    async def sync(prune: bool = False) -> None:
        await asyncio.wait_for(op.sync(prune), timeout=3)

    asyncio.run(sync())
    assert op.snapshot().nvidia_drivers_refused is not None and op.nvidia_drivers == {}

    def warned() -> list[str]:
        return [m for r in caplog.records if r.levelname == "WARNING" and "NVIDIADrivers" in (m := r.getMessage())]

    assert len(warned()) == 1 and "grants `list` and `watch` on nvidiadrivers.nvidia.com" in warned()[0], warned()
    runtime._as_event(op.on_nvidia_driver)("all", _driver("all", "u1", 10))  # (cached from before)
    asyncio.run(sync(prune=True))
    assert set(op.nvidia_drivers) == {"all"}  # not known to be gone
    asyncio.run(op.refresh_nvidia_drivers())
    assert op.nvidia_drivers_refused is not None and len(warned()) == 1
    kube.refusing = False
    kube.drivers = [_driver("other", "u2", 20)]
    asyncio.run(op.refresh_nvidia_drivers())
    assert op.snapshot().nvidia_drivers_refused is None and set(op.nvidia_drivers) == {"other"}


def test_a_refused_nvidiadriver_watch_listing_is_known_to_the_next_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVIDIADriver watch, refused (403), logged "trying again every 30 s" and kept the cache: nothing told a
    pass under useNvidiaDriverCRD that the NVIDIADrivers were no longer known (a ClusterRole that lost `list` on
    nvidiadrivers while the operator ran: `helm rollback` to the previous chart). Now the snapshot carries it."""
    from gpu_operator import nodewatch

    monkeypatch.setattr(nodewatch, "UNSERVED_RETRY_S", 0.01)
    op = Operator(kube=DriversRefusingKube(), namespace="gpu-operator")  # type: ignore[arg-type]
    watch = {w.name: w for w in op.own_watches(lambda handler: handler, lambda handler: handler)}["nvidiadriver-watch"]
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    thread.join(0.3)
    watch.stop.set()
    thread.join(2)
    assert op.snapshot().nvidia_drivers_refused is not None
