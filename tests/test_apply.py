"""The Applier's write order and its node patches, and the operator's single-node labelling between passes,
against a small in-memory stand-in for the client (no API server in unit tests)."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from gpu_operator import mig
from gpu_operator.apply import Applier
from gpu_operator.kube import ApiError
from gpu_operator.nodes import GPU_PRESENT, MIG_CONFIG, NodeFacts, apply_patch, deploy_label
from gpu_operator.observe import Snapshot, key_of
from gpu_operator.reconciler import Labelling
from gpu_operator.render import node_patches, plan
from gpu_operator.runtime import Operator
from gpu_operator.states.base import HASH_ANNOTATION, MANAGED_BY, OPERATOR_NAME, PART_OF, STATE_LABEL
from support import (
    RecordingKube,
    facts,
    load_policy,
    load_scenario,
    node,
    objects,
    patch_node,
    policy_object,
    render_all,
    sample_spec,
)


class Client:
    """Answers applies and merge patches as the API server would in the simplest case, and records them."""

    def __init__(self, refuse: str | None = None):
        self.calls: list[tuple[str, str, str]] = []  # verb, kind, name
        self.refuse = refuse
        self.rv = 100
        self.lock = threading.Lock()

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        if obj["metadata"]["name"] == self.refuse:
            raise ApiError(422, '{"message": "refused"}', "PATCH")
        return obj

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("patch", kind, name))
            self.rv += 1
            meta = patch["metadata"]
            body = node(name, labels={k: v for k, v in meta.get("labels", {}).items() if v is not None})
            body["metadata"]["annotations"] = {k: v for k, v in meta.get("annotations", {}).items() if v is not None}
            body["metadata"]["resourceVersion"] = str(self.rv)
            return body

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        with self.lock:
            self.calls.append(("delete", kind, name))
        return True


class Jitter(Client):
    """Answers after a random few milliseconds (seeded): requests finish out of order, as on a busy API server."""

    def __init__(self, seed: int):
        super().__init__()
        self.random = random.Random(seed)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            delay = self.random.uniform(0, 0.01)
        time.sleep(delay)
        return super().apply(obj)


@pytest.mark.parametrize("seed", range(5))
def test_each_object_is_applied_after_what_it_needs(seed: int) -> None:
    """A DaemonSet after every other object of its state and every RuntimeClass (its pods use them); a binding
    after the role it names (the API server refuses a binding to a role it does not know yet)."""
    plans = render_all(sample_spec())
    client = Jitter(seed)
    applied = Applier(client).apply_states(plans, {})  # type: ignore[arg-type]
    calls = [(kind, name) for verb, kind, name in client.calls if verb == "apply"]
    assert len(calls) == len(set(calls)) == sum(len(p.objects) for p in plans)
    assert sum(len(a.objects) for a in applied.values()) == len(calls)
    runtime_classes = [calls.index(c) for c in calls if c[0] == "RuntimeClass"]
    assert runtime_classes
    for p in plans:
        for ds in (o for o in p.objects if o["kind"] == "DaemonSet"):
            at = calls.index(("DaemonSet", ds["metadata"]["name"]))
            needs = [calls.index((o["kind"], o["metadata"]["name"])) for o in p.objects if o["kind"] != "DaemonSet"]
            assert needs and max(needs + runtime_classes) < at, ds["metadata"]["name"]
    bindings = [o for o in objects(plans) if o["kind"].endswith("RoleBinding")]
    assert bindings
    for binding in bindings:
        role = (binding["roleRef"]["kind"], binding["roleRef"]["name"])
        assert calls.index(role) < calls.index((binding["kind"], binding["metadata"]["name"]))


def test_objects_sent_ahead_are_not_sent_again() -> None:
    """A pass sends what needs no node before deciding the nodes; its full apply waits for those answers (a
    DaemonSet still after its state's objects) instead of sending them twice."""
    from gpu_operator.render import node_independent

    ctx = load_scenario("default").context()
    client = Jitter(7)
    applier = Applier(client)  # type: ignore[arg-type]
    ahead = applier.start(node_independent(ctx), {})
    assert ahead
    live: dict[Any, Any] = {}
    applied = applier.apply_states(plan(ctx), live, ahead)
    calls = [(kind, name) for verb, kind, name in client.calls if verb == "apply"]
    assert len(calls) == len(set(calls)) == len(objects(plan(ctx)))
    assert len(live) == len(calls) == sum(len(a.objects) for a in applied.values())


def test_a_binding_waits_for_its_role_even_when_the_role_is_slow() -> None:
    plans = render_all(sample_spec())
    role = next(o for o in objects(plans) if o["kind"] == "ClusterRole")

    class Slow(Client):
        def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
            if obj is role:
                time.sleep(0.3)
            return super().apply(obj)

    client = Slow()
    Applier(client, workers=8).apply_states(plans, {})  # type: ignore[arg-type]
    calls = [(kind, name) for verb, kind, name in client.calls if verb == "apply"]
    name = role["metadata"]["name"]
    bound = [b for b in objects(plans) if b["kind"] == "ClusterRoleBinding" and b["roleRef"]["name"] == name]
    assert bound and all(
        calls.index(("ClusterRole", role["metadata"]["name"])) < calls.index((b["kind"], b["metadata"]["name"]))
        for b in bound
    )


def test_an_unchanged_object_is_not_applied_and_a_refused_one_is_reported_for_its_state() -> None:
    plans = render_all(sample_spec())
    first = Applier(Client()).apply_states(plans, {})  # type: ignore[arg-type]
    live = {
        (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]): o
        for a in first.values()
        for o in a.objects
    }
    again = Client()
    Applier(again).apply_states(plans, dict(live))  # type: ignore[arg-type]
    assert again.calls == []

    ds = next(o for p in plans for o in p.objects if o["kind"] == "DaemonSet")
    state = next(p.state.name for p in plans if ds in p.objects)
    changed = {k: v for k, v in live.items() if v is not ds}
    stale = {**ds, "metadata": {**ds["metadata"], "annotations": {HASH_ANNOTATION: "old"}}}
    changed[("DaemonSet", ds["metadata"]["namespace"], ds["metadata"]["name"])] = stale
    refused = Client(refuse=ds["metadata"]["name"])
    out = Applier(refused).apply_states(plans, changed)  # type: ignore[arg-type]
    assert [c[2] for c in refused.calls] == [ds["metadata"]["name"]]
    assert out[state].failed == f"DaemonSet {ds['metadata']['name']}: refused"


def _terminating_service(name: str = "nvidia-dcgm-exporter", deleting: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "gpu-operator",
        "labels": {MANAGED_BY: OPERATOR_NAME, PART_OF: OPERATOR_NAME, STATE_LABEL: "state-dcgm-exporter"},
    }
    if deleting:  # a LoadBalancer Service waits for the cloud controller to release its load balancer
        meta["deletionTimestamp"] = "2026-02-01T00:00:00Z"
        meta["finalizers"] = ["service.kubernetes.io/load-balancer-cleanup"]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"type": "LoadBalancer"}}


def test_prune_leaves_an_object_already_being_deleted_to_finish() -> None:
    """Upstream's deleteStateRelatedObjects skips an object with a deletionTimestamp; a DELETE sent again on every
    pass (and reported as deleted) would keep the status 'waiting to observe' while a finalizer holds it."""
    from gpu_operator.observe import key_of
    from gpu_operator.states import all_states
    from support import RecordingKube

    going, stale = _terminating_service(), _terminating_service("old-exporter", deleting=False)
    kube = RecordingKube()
    states = frozenset(s.name for s in all_states())
    deleted = Applier(kube).prune({key_of(going): going, key_of(stale): stale}, set(), states)  # type: ignore[arg-type]
    assert deleted == [key_of(stale)]
    assert kube.calls == [("delete", ("Service", "gpu-operator", "old-exporter"))]


def test_prune_forgets_the_version_of_what_it_deleted() -> None:
    """The Applier kept the version it last applied of every object, pruned ones included, for as long as it ran
    (NVIDIADriver pools, kernel versions coming and going): now a pruned object's entry goes with it."""
    from gpu_operator.states import all_states

    old = _terminating_service("old-exporter", deleting=False)
    old["metadata"]["resourceVersion"] = "7"
    applier = Applier(Client())  # type: ignore[arg-type]
    applier._apply_one(old, {})
    assert key_of(old) in applier._versions
    states = frozenset(s.name for s in all_states())
    assert applier.prune({key_of(old): old}, set(), states) == [key_of(old)]
    assert key_of(old) not in applier._versions


def test_a_pass_over_an_unchanged_cluster_sends_no_delete_for_an_object_being_deleted() -> None:
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.observe import Snapshot, key_of
    from gpu_operator.reconciler import Reconciler
    from support import RecordingKube, facts, policy_object

    pol = policy_object()
    pol["spec"]["dcgmExporter"]["enabled"] = False
    pol["metadata"]["finalizers"] = [CLEANUP_FINALIZER]
    svc = _terminating_service()
    snap = Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": pol}, owned={key_of(svc): svc},
                    pods={}, revisions={})  # fmt: skip
    kube = RecordingKube()
    out = Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    assert not [c for c in kube.calls if c[0] == "delete"] and not out.deleted


def test_a_spec_changed_by_another_writer_is_applied_again_once() -> None:
    """Another field manager edits a DaemonSet's image and leaves our hash annotation: the generation tells."""
    plans = render_all(sample_spec())

    class Generations(Client):
        """Every apply leaves the object at the next generation."""

        generation = 0

        def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
            out = super().apply(obj)
            self.generation += 1
            return {**out, "metadata": {**out["metadata"], "generation": self.generation}}

    client = Generations()
    applier = Applier(client)  # type: ignore[arg-type]
    first = applier.apply_states(plans, {})  # type: ignore[arg-type]
    live = {
        (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]): o
        for a in first.values()
        for o in a.objects
    }
    client.calls.clear()
    applier.apply_states(plans, live)  # steady: nothing
    assert client.calls == []
    key, ds = next((k, o) for k, o in live.items() if o["kind"] == "DaemonSet")
    live[key] = {**ds, "metadata": {**ds["metadata"], "generation": client.generation + 1}}  # same hash, newer spec
    out = applier.apply_states(plans, live)
    assert client.calls == [("apply", "DaemonSet", ds["metadata"]["name"])]
    assert any(o["metadata"]["name"] == ds["metadata"]["name"] for a in out.values() for o in a.objects)
    # `live` now holds our apply's answer: nothing more to take back, no fight loop.
    client.calls.clear()
    applier.apply_states(plans, live)
    assert client.calls == []


def test_a_state_label_another_writer_removed_or_changed_is_applied_again() -> None:
    """`kubectl label ds ... nvidia.com/gpu-operator.state-` (or a policy engine rewriting that label) moves no
    generation and leaves our hash annotation: the label stayed as the other writer left it, for good, and prune,
    which finds our objects by it, left such a DaemonSet running once its state was switched off. Now the object is
    applied again, and our answer, which carries the label, is steady."""
    plans = render_all(sample_spec())
    client = Client()
    applier = Applier(client)  # type: ignore[arg-type]
    live = {key_of(o): o for a in applier.apply_states(plans, {}).values() for o in a.objects}  # type: ignore[arg-type]
    key, ds = next((k, o) for k, o in live.items() if o["kind"] == "DaemonSet")
    others = {k: v for k, v in ds["metadata"]["labels"].items() if k != STATE_LABEL}
    for labels in (others, {**others, STATE_LABEL: "state-sandbox-device-plugin"}):
        client.calls.clear()
        applier.apply_states(plans, {**live, key: {**ds, "metadata": {**ds["metadata"], "labels": labels}}})
        assert client.calls == [("apply", "DaemonSet", key[2])], labels
    client.calls.clear()
    applier.apply_states(plans, live)
    assert client.calls == []


def test_a_daemonset_another_writer_created_again_is_taken_back() -> None:
    """`kubectl replace --force -f edited.yaml` (or delete, then create from `kubectl get -o yaml` with the image
    edited) leaves a new DaemonSet at generation 1 that keeps our hash annotation. The Applier remembered the
    generation its last apply left by name alone (3 here) and took 1 for unchanged: the edited spec stayed until the
    operator restarted. Another uid now counts as not applied since we started, and the managedFields say who
    wrote last."""
    plans = render_all(sample_spec())

    class Generations(Client):
        """Every apply leaves its object at that object's next generation."""

        def __init__(self) -> None:
            super().__init__()
            self.generation: dict[str, int] = {}

        def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
            out = super().apply(obj)
            name = obj["metadata"]["name"]
            with self.lock:
                self.generation[name] = generation = self.generation.get(name, 0) + 1
            return {**out, "metadata": {**out["metadata"], "generation": generation, "uid": "uid-ours"}}

    client = Generations()
    applier = Applier(client)  # type: ignore[arg-type]
    live = {key_of(o): o for a in applier.apply_states(plans, {}).values() for o in a.objects}  # type: ignore[arg-type]
    key, ds = next((k, o) for k, o in live.items() if o["kind"] == "DaemonSet")
    for _ in range(2):  # two in-place edits taken back: our last apply left generation 3
        edited = {**ds, "metadata": {**ds["metadata"], "generation": client.generation[key[2]] + 1,
                                     "managedFields": [{"manager": "kubectl-edit", "operation": "Update",
                                                        "time": "2026-11-30T10:07:00Z"}]}}  # fmt: skip
        applier.apply_states(plans, {**live, key: edited})
    assert client.generation[key[2]] == 3
    client.calls.clear()
    replaced = copy.deepcopy(ds)
    replaced["metadata"].update(generation=1, uid="uid-admins", resourceVersion="900", managedFields=[
        {"manager": "gpu-operator", "operation": "Apply", "time": "2026-11-30T10:00:05Z"},
        {"manager": "kubectl-replace", "operation": "Update", "time": "2026-11-30T10:09:00Z"},
    ])  # fmt: skip
    replaced["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/edited:latest"
    applier.apply_states(plans, {**live, key: replaced})
    assert client.calls == [("apply", "DaemonSet", key[2])]
    # Our apply's answer is live again (our uid, generation 4): steady.
    client.calls.clear()
    applier.apply_states(plans, {**live, key: {**ds, "metadata": {**ds["metadata"], "generation": 4}}})
    assert client.calls == []


def test_after_a_restart_the_managed_fields_tell_a_foreign_write_from_ours() -> None:
    """An operator that has not applied an object since it started reads managedFields: another manager's spec
    write later than our apply is taken back; status writes and older foreign writes are not."""
    plans = render_all(sample_spec())
    ds = next(o for p in plans for o in p.objects if o["kind"] == "DaemonSet")
    key = ("DaemonSet", ds["metadata"]["namespace"], ds["metadata"]["name"])

    def live(*entries: tuple[str, str, str | None]) -> dict[str, Any]:
        fields = [{"manager": m, "operation": "Update" if m != "gpu-operator" else "Apply", "time": t}
                  | ({"subresource": sub} if sub else {}) for m, t, sub in entries]  # fmt: skip
        return {**ds, "metadata": {**ds["metadata"], "generation": 2, "managedFields": fields}}

    ours, later, earlier = "2026-11-30T10:00:05Z", "2026-11-30T10:00:09Z", "2026-11-30T10:00:01Z"
    for entries, applied in (
        ([("gpu-operator", ours, None), ("kube-controller-manager", later, "status")], False),
        ([("gpu-operator", ours, None), ("kubectl-edit", earlier, None)], False),
        ([("gpu-operator", ours, None), ("kubectl-edit", later, None)], True),
    ):
        client = Client()
        Applier(client).apply_states(plans, {**_live_of(plans), key: live(*entries)})  # type: ignore[arg-type]
        assert client.calls == ([("apply", "DaemonSet", ds["metadata"]["name"])] if applied else []), entries


class Versions(Client):
    """Answers an apply as the API server does: the object at the next resourceVersion, our managedFields entry."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = super().apply(obj)
        with self.lock:
            self.rv += 1
            rv = self.rv
        fields = [{"manager": "gpu-operator", "operation": "Apply", "time": "2026-11-30T10:00:05Z"}]
        return {**out, "metadata": {**out["metadata"], "resourceVersion": str(rv), "managedFields": fields}}


def _edited_by_hand(obj: dict[str, Any], rv: str) -> dict[str, Any]:
    """`obj` as `kubectl edit` leaves it: its data or rules changed, every annotation (our hash too) kept, a newer
    resourceVersion and a managedFields entry of its own later than ours."""
    out = copy.deepcopy(obj)
    if out["kind"] == "ConfigMap":
        out["data"] = {k: "# edited by hand\n" for k in out.get("data") or {"x": ""}}
    else:  # a permission taken away
        out["rules"] = out["rules"][:-1]
    out["metadata"]["resourceVersion"] = rv
    out["metadata"]["managedFields"] = [
        {"manager": "gpu-operator", "operation": "Apply", "time": "2026-11-30T10:00:05Z"},
        {"manager": "kubectl-edit", "operation": "Update", "time": "2026-11-30T10:07:00Z"},
    ]
    return out


@pytest.mark.parametrize(
    "kind, name", [("ConfigMap", "nvidia-container-toolkit-entrypoint"), ("ClusterRole", "nvidia-device-plugin")]
)
def test_an_object_without_a_generation_edited_by_another_writer_is_taken_back_once(kind: str, name: str) -> None:
    """A ConfigMap's data or a ClusterRole's rules edited by hand were never applied again, neither by a running
    operator nor after a restart: objects of kinds without metadata.generation were never taken for changed by
    others. Their resourceVersion stands in for it (a status write moves it too: another manager's managedFields
    entry newer than ours must say who wrote)."""
    plans = render_all(sample_spec())
    obj = next(o for p in plans for o in p.objects if o["kind"] == kind and o["metadata"]["name"] == name)
    key = (kind, obj["metadata"].get("namespace") or "", name)

    restarted = Client()  # not applied since it started; the edit came after our last apply
    edited = {**_live_of(plans), key: _edited_by_hand(obj, "500")}
    Applier(restarted).apply_states(plans, edited)  # type: ignore[arg-type]
    assert restarted.calls == [("apply", kind, name)]

    running = Versions()
    applier = Applier(running)  # type: ignore[arg-type]
    live = {key_of(o): o for a in applier.apply_states(plans, {}).values() for o in a.objects}
    running.calls.clear()
    applier.apply_states(plans, live)
    assert running.calls == [], "steady: nothing"
    status = copy.deepcopy(live[key])  # a write that moved the version, with no other manager's entry
    status["metadata"]["resourceVersion"] = "800"
    applier.apply_states(plans, {**live, key: status})
    assert running.calls == [], "a new version alone is not another writer's"
    live[key] = _edited_by_hand(live[key], "900")
    applier.apply_states(plans, live)
    assert running.calls == [("apply", kind, name)]
    running.calls.clear()
    applier.apply_states(plans, live)  # `live` holds our apply's answer: no fight
    assert running.calls == []


def _live_of(plans: Any) -> dict[Any, dict[str, Any]]:
    return {
        (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]): o for p in plans for o in p.objects
    }


OURS_AT = "2026-11-30T10:00:05Z"  # our last apply that changed the object
ROLLOUT_AT = "2026-11-30T10:07:00Z"  # `kubectl rollout restart` (or `kubectl annotate`, a GitOps tool's label...)


def _counted(n: int, generation: int) -> dict[str, Any]:
    counts = ("desiredNumberScheduled", "currentNumberScheduled", "numberReady", "updatedNumberScheduled",
              "numberAvailable")  # fmt: skip
    return {"observedGeneration": generation, **dict.fromkeys(counts, n)}


class ApiServer:
    """Answers server-side applies as the API server does: an apply that changes nothing is a no-op (the object as
    it was, same generation and resourceVersion, managedFields times untouched: kubernetes/kubernetes#81673,
    #88875); one that changes the object moves them on and stamps our managedFields entry. Every DaemonSet counts
    `scheduled` ready pods. Node patches are kept; everything else is taken as sent."""

    def __init__(self, scheduled: int = 2, nodes: tuple[str, ...] = ()):
        self.nodes = {n: node(n) for n in nodes}
        self.objects: dict[Any, dict[str, Any]] = {}
        self.applies: list[str] = []
        self.scheduled = scheduled
        self.rv = 100

    def writes(self) -> int:
        return 0

    def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.applies.append(f"{obj['kind']}/{obj['metadata']['name']}")
        key = key_of(obj)
        held = self.objects.get(key)
        if held is not None and held["metadata"].get("annotations", {}).get(HASH_ANNOTATION) == \
                obj["metadata"].get("annotations", {}).get(HASH_ANNOTATION):  # fmt: skip
            return held  # a no-op
        self.rv += 1
        generation = (held or {}).get("metadata", {}).get("generation", 0) + 1
        fields = [{"manager": "gpu-operator", "operation": "Apply", "time": OURS_AT}]
        out = {**obj, "metadata": {**obj["metadata"], "generation": generation, "resourceVersion": str(self.rv),
                                   "managedFields": fields}}  # fmt: skip
        if obj["kind"] == "DaemonSet":
            out["status"] = _counted(self.scheduled, generation)
        self.objects[key] = out
        return out

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        if kind != "Node":
            return patch
        self.rv += 1
        return patch_node(self.nodes.setdefault(name, node(name)), patch, self.rv)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: a[0] if a and isinstance(a[0], dict) else {}

    def rollout_restart(self, name: str) -> None:
        """`kubectl rollout restart ds/<name>`: another field manager stamps the pod template (generation + 1); our
        hash annotation stays, and the DaemonSet controller observes the new generation."""
        key = next(k for k in self.objects if k[0] == "DaemonSet" and k[2] == name)
        ds = copy.deepcopy(self.objects[key])
        meta = ds["metadata"]
        meta["generation"] += 1
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta["managedFields"] = [*meta["managedFields"],
                                 {"manager": "kubectl-rollout", "operation": "Update", "time": ROLLOUT_AT}]
        ds["spec"]["template"]["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = \
            ROLLOUT_AT
        ds["status"] = _counted(self.scheduled, meta["generation"])
        self.objects[key] = ds


def test_an_apply_the_api_server_answers_as_a_no_op_is_not_a_change() -> None:
    """After another manager's write that left our fields as they were (`kubectl rollout restart`), a restarted
    operator (or a new leader) cannot tell it from a new one: that manager's managedFields entry stays later than
    ours for good, as a no-op apply does not stamp ours. Each restart so applies the object once more; the API
    server skips it, yet its answer counted as applied, as though the object had changed. Now an answer with the
    resourceVersion the object had is no change."""
    plans = render_all(sample_spec())
    server = ApiServer()
    running = Applier(server)  # type: ignore[arg-type]
    running.apply_states(plans, {})
    plugin = "nvidia-device-plugin-daemonset"
    server.rollout_restart(plugin)
    again = running.apply_states(plans, dict(server.objects))  # the generation moved: taken back once
    assert server.applies[-1] == f"DaemonSet/{plugin}" and not [o for a in again.values() for o in a.objects]
    del server.applies[:]
    running.apply_states(plans, dict(server.objects))
    assert server.applies == [], "the running operator: steady"

    restarted = Applier(server)  # type: ignore[arg-type]  # same cluster, a new process
    after = restarted.apply_states(plans, dict(server.objects))
    assert server.applies == [f"DaemonSet/{plugin}"]  # managedFields cannot say the write is an old one
    assert not [o for a in after.values() for o in a.objects], "a no-op is no change"
    del server.applies[:]
    restarted.apply_states(plans, dict(server.objects))
    assert server.applies == [], "and steady from then on"


def _pods_and_revisions(server: ApiServer, nodes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every DaemonSet's pod on every node, ready and of its newest revision."""
    pods, revisions = {}, {}
    for key, ds in server.objects.items():
        if key[0] != "DaemonSet":
            continue
        name = key[2]
        labels = {**ds["spec"]["template"]["metadata"]["labels"], "controller-revision-hash": "h1"}
        for n in nodes:
            pods[f"{name}-{n}"] = {"metadata": {"name": f"{name}-{n}", "labels": labels}, "node": n, "owner": name,
                                   "ready": True, "status": {}}  # fmt: skip
        revisions[f"{name}-h1"] = {"metadata": {"labels": {"controller-revision-hash": "h1"}}, "revision": 1,
                                   "owner": name}  # fmt: skip
    return pods, revisions


def test_a_restarted_operator_keeps_a_ready_cluster_policy_ready() -> None:
    """The same snapshot of a settled cluster, a week after an admin's `kubectl rollout restart` of the device
    plugin: the running operator said ready; a restarted one (or a new leader) applied that DaemonSet again, took
    the no-op for a change and wrote notReady "changes applied; waiting to observe their effect" (a Warning Event,
    the failure metrics), then ready again a pass later: on every restart, for good. Now it says ready."""
    from gpu_operator.nodes import NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    names = ["n1", "n2"]
    server = ApiServer(scheduled=2, nodes=tuple(names))

    def snapshot() -> Snapshot:
        pods, revisions = _pods_and_revisions(server, names)
        nodes = {n: NodeFacts.from_node(copy.deepcopy(server.nodes[n])) for n in names}
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned=dict(server.objects), pods=pods,
                        revisions=revisions)  # fmt: skip

    running = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    running.reconcile(snapshot())  # creates everything
    server.rollout_restart("nvidia-device-plugin-daemonset")
    running.reconcile(snapshot())
    steady = running.reconcile(snapshot())
    assert steady.ready is True and not steady.applied

    restarted = Reconciler(server, "gpu-operator")  # type: ignore[arg-type]
    after = restarted.reconcile(snapshot())
    assert (after.ready, after.applied) == (True, [])


def test_a_patch_decided_on_a_view_older_than_our_own_write_is_not_sent_again() -> None:
    client = Client()
    applier = Applier(client)  # type: ignore[arg-type]
    patch = {"labels": {GPU_PRESENT: "true"}}
    [patched] = applier.patch_nodes({"n1": patch}, {"n1": 7})
    rv = patched.resource_version
    assert applier.patch_nodes({"n1": patch}, {"n1": 7}) == []  # an overlapping pass decided on version 7
    assert len(applier.patch_nodes({"n1": patch}, {"n1": rv})) == 1  # on a view with our write: sent
    assert len(applier.patch_nodes({"n1": {"labels": {GPU_PRESENT: "false"}}}, {"n1": 7})) == 1  # another patch
    assert len(applier.patch_nodes({"n1": patch})) == 1  # no versions given: always sent
    assert [c[0] for c in client.calls] == ["patch"] * 4


def test_the_applier_forgets_a_deleted_nodes_last_patch() -> None:
    """Applier._sent keeps, per node, the version and patch of our last node patch, and the event recorder the
    last message of each reason posted on it; nothing removed a node's entries once the node was deleted (only a
    failed patch did). With autoscaled node pools (a new node name per node) they grew by one entry per node ever
    labelled, for the life of the process."""

    class Kube(Client):
        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            return obj

    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    op.reconciler.applier = applier = Applier(Kube(), workers=1)  # type: ignore[arg-type]
    op.reconciler.events.kube = Kube()  # type: ignore[assignment]
    for i in range(3):
        name = f"ip-10-0-0-{i}"
        op.on_node_facts(name, facts(name))
        for answer in applier.patch_nodes({name: {"labels": {GPU_PRESENT: "true"}}}):
            op.on_node_facts(answer.name, answer)
        op.reconciler.events({"kind": "Node", "metadata": {"name": name}}, "Normal", "GPUOperatorUpgrade", "waits")
        op.on_node_facts(name, None)  # scaled down
    assert op.nodes == {}
    assert applier._sent == {}, f"state kept for {len(applier._sent)} deleted nodes"
    assert op.reconciler.events._last == {}


class _RefusingNode(RecordingKube):
    """An API server that refuses gpu-2's patch as invalid (422), as it does a label value it cannot take."""

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if kind == "Node" and name == "gpu-2":
            raise ApiError(422, json.dumps({"message": INVALID}), "PATCH")
        return super().merge_patch(kind, name, patch, *a, **k)


INVALID = 'Node "gpu-2" is invalid: metadata.labels: Invalid value'


def test_a_node_patch_refused_as_invalid_is_that_nodes_problem_not_the_passs() -> None:
    """A 422 on one node's label patch was re-raised by patch_nodes, so _reconcile_active stopped and every pass
    ended in "reconcile failed": no status, readiness or upgrade for the whole cluster, again on each pass. Now it
    is logged and named in the ClusterPolicy's status, and the rest of the pass goes on; other errors still raise."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    refused: dict[str, str] = {}
    patched = Applier(_RefusingNode()).patch_nodes(  # type: ignore[arg-type]
        {"gpu-1": {"labels": {GPU_PRESENT: "true"}}, "gpu-2": {"labels": {GPU_PRESENT: "true"}}}, refused=refused)
    assert [n.name for n in patched] == ["gpu-1"] and refused == {"gpu-2": INVALID}

    kube = _RefusingNode()
    snap = Snapshot(nodes={n.name: n for n in (facts("gpu-1"), facts("gpu-2"))},
                    policies={"cluster-policy": policy_object()}, owned={}, pods={}, revisions={})  # fmt: skip
    out = Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    assert [n.name for n in out.nodes] == ["gpu-1"]
    status = kube.statuses[("ClusterPolicy", "cluster-policy")]
    error = next(c for c in status["conditions"] if c["type"] == "Error")
    assert (error["reason"], error["message"]) == ("ReconcileFailed", f"node patch refused: gpu-2: {INVALID}")
    assert {s["name"] for s in status["states"]} >= {"state-driver", "state-device-plugin"}  # the pass went on

    class Down(Client):
        def merge_patch(self, *_: Any, **__: Any) -> dict[str, Any]:
            raise ApiError(503, '{"message": "unavailable"}', "PATCH")

    with pytest.raises(ApiError):
        Applier(Down()).patch_nodes({"gpu-1": {"labels": {GPU_PRESENT: "true"}}}, refused={})  # type: ignore[arg-type]


def _policy(generation: int) -> dict[str, Any]:
    return {
        "apiVersion": "nvidia.com/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "cluster-policy", "uid": "u1", "generation": generation, "resourceVersion": "5"},
    }


def _labelling_operator(client: Client, elected: bool = False) -> Operator:
    """An operator in a running event loop whose last pass labelled by the sample spec (policy generation 1)."""
    op = Operator(kube=client, namespace="gpu-operator", elected=elected)  # type: ignore[arg-type]
    op.task = asyncio.current_task()
    op.policies["cluster-policy"] = _policy(1)
    op.reconciler.labelling = Labelling("cluster-policy", "u1", 1, sample_spec())
    return op


def test_a_joining_node_is_labelled_at_once_with_one_patch_and_an_older_event_does_not_undo_it() -> None:
    async def scenario() -> tuple[Operator, Client]:
        client = Client()
        op = _labelling_operator(client)
        joined = node("join-1")
        joined["metadata"]["resourceVersion"] = "50"
        op.on_node("ADDED", joined)
        op.on_node("MODIFIED", joined)  # a second event before the answer: no second patch
        await asyncio.gather(*op._labelling)
        op.on_node("MODIFIED", joined)  # the watch's older event arrives after our patch's answer
        await asyncio.gather(*op._labelling)
        return op, client

    op, client = asyncio.run(scenario())
    assert client.calls == [("patch", "Node", "join-1")]
    facts = op.nodes["join-1"]
    assert facts.labels.get(GPU_PRESENT) == "true" and facts.deploys("driver")
    assert facts.labels.get("nvidia.com/gpu-driver-upgrade-state") == "upgrade-done"  # no driver pod yet
    assert op.wake.is_set()  # the full pass still follows


def test_a_follower_labels_nothing_until_it_leads() -> None:
    async def scenario() -> Client:
        client = Client()
        op = _labelling_operator(client, elected=True)
        joined = node("join-1")
        joined["metadata"]["resourceVersion"] = "50"
        op.on_node("ADDED", joined)
        await asyncio.gather(*op._labelling)
        assert client.calls == [] and "join-1" in op.nodes, "cached, not labelled"
        op.lead()  # the next joining node is labelled at once (join-1 by the full pass that lead() wakes)
        assert op.wake.is_set()
        other = node("join-2")
        other["metadata"]["resourceVersion"] = "51"
        op.on_node("ADDED", other)
        await asyncio.gather(*op._labelling)
        return client

    assert asyncio.run(scenario()).calls == [("patch", "Node", "join-2")]


@pytest.mark.parametrize(
    "labels",
    [
        {"nvidia.com/mig.capable": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},  # GFD's labels
        {"feature.node.kubernetes.io/pci-0302_10de_2330.present": "true"},  # before GFD: NFD's H100 80GB device ID
    ],
    ids=["gfd", "nfd-device-id"],
)
def test_a_joining_mig_capable_node_gets_its_layout_and_its_approval_in_its_first_patch(labels: dict[str, str]) -> None:
    async def scenario() -> tuple[Operator, Client]:
        client = Client()
        op = _labelling_operator(client)
        op.on_node("ADDED", node("join-1", labels=labels))
        await asyncio.gather(*op._labelling)
        return op, client

    op, client = asyncio.run(scenario())
    assert client.calls == [("patch", "Node", "join-1")]
    got = op.nodes["join-1"].labels
    assert got.get(MIG_CONFIG) == "all-disabled" and got.get(mig.APPROVED) == "all-disabled"
    assert got.get(deploy_label("mig-manager")) == "true" and got.get(deploy_label("driver")) == "true"


def test_no_labelling_between_passes_when_the_policy_changed_since_the_last_pass() -> None:
    async def scenario() -> Client:
        client = Client()
        op = Operator(kube=client, namespace="gpu-operator")  # type: ignore[arg-type]
        op.task = asyncio.current_task()
        op.policies["cluster-policy"] = _policy(2)  # a new generation the last pass did not see
        op.reconciler.labelling = Labelling("cluster-policy", "u1", 1, sample_spec())
        op.on_node("ADDED", node("join-1"))
        await asyncio.gather(*op._labelling)
        return client

    assert asyncio.run(scenario()).calls == []


# The labelling between passes against a full pass on the same node and policy: `_full_pass` runs the reconciler
# over a snapshot and merges every Node patch it sends (MIG pass included); `_between` runs Operator.on_node_facts
# with the node write recorded.


def _operator(spec: dict[str, Any] | None = None) -> Operator:
    op = Operator(kube=RecordingKube(), namespace="gpu-operator")  # type: ignore[arg-type]
    pol = policy_object(spec)
    op.policies[pol["metadata"]["name"]] = pol
    return op


def _full_pass(
    op: Operator, nodes: dict[str, NodeFacts], pods: dict[str, Any] | None = None, drivers: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """One full pass of op's reconciler over `nodes` (and op's cached ConfigMaps): its Node patches, merged."""
    kube = op.reconciler.kube
    before = len(kube.calls)
    snap = Snapshot(nodes=dict(nodes), policies=copy.deepcopy(op.policies), owned={}, pods=dict(pods or {}),
                    revisions={}, config_maps=dict(op.config_maps), config_data=dict(op.config_data),
                    nvidia_drivers=copy.deepcopy(drivers or {}))  # fmt: skip
    op.reconciler.reconcile(snap)
    out: dict[str, dict[str, Any]] = {}
    for verb, what in kube.calls[before:]:
        if verb == "merge_patch" and what[0] == "Node":
            meta = what[2].get("metadata") or {}
            got = out.setdefault(what[1], {})
            for part in ("labels", "annotations"):
                if meta.get(part):
                    got.setdefault(part, {}).update(meta[part])
    return out


def _between(op: Operator, node: NodeFacts) -> dict[str, Any]:
    """The patch op's labelling between passes sends for a change of `node` ({}: none)."""
    sent: list[dict[str, Any]] = []

    async def record(_: NodeFacts, patch: dict[str, Any]) -> None:
        sent.append(patch)

    async def scenario() -> None:
        op.task = asyncio.current_task()
        op._patch_node = record  # type: ignore[method-assign]
        op.on_node_facts(node.name, node)
        await asyncio.gather(*op._labelling)

    asyncio.run(scenario())
    assert len(sent) <= 1
    return sent[0] if sent else {}


def _patched(node: NodeFacts, patch: dict[str, Any] | None) -> NodeFacts:
    """`node` as `patch` leaves it (a newer resourceVersion)."""
    if not patch:
        return node
    obj = {"metadata": {"name": node.name, "resourceVersion": str(node.resource_version + 1),
                        "labels": apply_patch(node.labels, patch.get("labels") or {}),
                        "annotations": apply_patch(node.annotations, patch.get("annotations") or {})},
           "status": {"conditions": [{"type": "Ready", "status": "True"}],
                      "nodeInfo": {"containerRuntimeVersion": "containerd://1.7"}}}  # fmt: skip
    return NodeFacts.from_node(obj)


MIG_LAYOUTS = """version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  {name}:
    - devices: all
      mig-enabled: true
      mig-devices: {{"1g.5gb": 4}}
"""


@pytest.mark.parametrize(
    ("layouts", "mig_manager", "approved"),
    [
        (None, mig.PAUSED, None),  # the default layouts: custom-4x1g is not among them
        ("team-a", mig.PAUSED, None),  # the user's ConfigMap: nor among these
        ("custom-4x1g", "true", "custom-4x1g"),  # the user's ConfigMap names it: let through
    ],
    ids=["default-layouts", "not-in-users-config", "in-users-config"],
)
def test_a_joining_node_asking_for_a_mig_layout_gets_in_its_first_patch_what_the_pass_decides(
    layouts: str | None, mig_manager: str, approved: str | None
) -> None:
    """A MIG-capable node joining with a layout mig-manager's config lacks (a kubelet --node-labels naming the
    user's own layout, a typo) is refused by the pass, which holds mig-manager (deploy label paused-for-mig-change,
    README "MIG": "nothing on the node changes"). Between passes the labelling recorded only a first sight's
    approval, and of the default layouts only: it set gpu.deploy.mig-manager=true, so mig-manager started there
    and applied the refused layout until the next pass turned the label to paused. Now its first patch holds
    mig-manager as the pass does, or lets the layout through, by the config the pass reads."""
    spec = policy_object()["spec"]
    if layouts is not None:
        spec["migManager"]["config"] = {"name": "my-layouts", "default": "all-disabled"}

    def operator() -> Operator:
        op = _operator(spec)
        if layouts is not None:
            op.config_maps = {"my-layouts": ("config.yaml",)}
            op.config_data = {"my-layouts": {"config.yaml": MIG_LAYOUTS.format(name=layouts)}}
        return op

    a100 = {"nvidia.com/mig.capable": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}
    joined = facts("a100-1", labels={**a100, MIG_CONFIG: "custom-4x1g"})
    alone = _full_pass(operator(), {"a100-1": joined})["a100-1"]["labels"]  # what a pass alone does with the node
    assert (alone.get(deploy_label("mig-manager")), alone.get(mig.APPROVED)) == (mig_manager, approved)
    op = operator()
    _full_pass(op, {})  # the last pass (no nodes yet): the labelling between passes goes by its spec
    got = _between(op, joined)["labels"]
    assert (got.get(deploy_label("mig-manager")), got.get(mig.APPROVED)) == (mig_manager, approved)


def _nvd(name: str, **spec: Any) -> dict[str, Any]:
    meta = {"name": name, "uid": f"uid-{name}", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": meta, "spec": spec}


def test_between_passes_a_node_running_a_driver_is_not_moved_to_an_nvidiadriver_created_since_the_pass() -> None:
    """Under NVIDIADrivers a node running a driver pod is not moved to an NVIDIADriver whose DaemonSets cannot be
    rendered (render.driver_node_patches `unrendered`: its pod would be dropped with nothing to replace it). Between
    passes the labelling routed by the NVIDIADrivers cached now but asked the last pass's `unrendered`, worked out
    for the NVIDIADrivers that pass saw: a node there moved to an NVIDIADriver created since that names no version
    (image_problem), the default's DaemonSet dropped its driver pod, and the next pass left the label there. Now,
    while an NVIDIADriver is not at the generation the pass saw, the next pass labels the node."""
    from gpu_operator.nodes import kept_labels
    from gpu_operator.nvidiadriver import OWNER_LABEL

    spec = policy_object()["spec"]
    spec["driver"]["useNvidiaDriverCRD"] = True
    drivers = {"default": _nvd("default", default=True, image="nvcr.io/nvidia/driver:580.65.06"),
               "pool-a": _nvd("pool-a", nodeSelector={"pool": "a"}, image="nvcr.io/nvidia/driver:580.65.06")}
    pod = {"metadata": {"name": "drv", "labels": {STATE_LABEL: "state-driver"}}, "node": "gpu-1",
           "owner": "nvidia-driver-daemonset-ubuntu22.04", "status": {}}  # fmt: skip
    op = _operator(spec)
    op.nvidia_drivers = copy.deepcopy(drivers)
    op.on_pod("drv", pod)
    op.labels_read = kept_labels()  # ("pool" is kept: pool-a selects on it)
    running = facts("gpu-1", labels={"pool": "c"})
    for _ in range(2):  # the node settles under the default NVIDIADriver
        running = _patched(running, _full_pass(op, {"gpu-1": running}, {"drv": pod}, drivers).get("gpu-1"))
    assert OWNER_LABEL not in running.labels and running.deploys("driver")
    op.nodes["gpu-1"] = running
    # An NVIDIADriver for pool c, without upgrades, that names no version: it cannot render.
    broken = _nvd("pool-c", nodeSelector={"pool": "c"}, repository="nvcr.io/nvidia", image="driver",
                  upgradePolicy={"autoUpgrade": False})  # fmt: skip
    check = _operator(spec)
    check.on_pod("drv", pod)
    full = _full_pass(check, {"gpu-1": running}, {"drv": pod}, {**drivers, "pool-c": broken}).get("gpu-1") or {}
    assert OWNER_LABEL not in (full.get("labels") or {})  # a pass keeps the node with its running driver
    op.on_nvidia_driver("ADDED", broken)
    cordoned = replace(running, unschedulable=True, resource_version=running.resource_version + 1)
    assert OWNER_LABEL not in (_between(op, cordoned).get("labels") or {})


def test_between_passes_an_nvidiadriver_created_again_at_the_same_generation_is_not_the_one_the_pass_saw() -> None:
    """The labelling between passes waits for a pass while an NVIDIADriver is not as the pass saw it, compared by
    name and generation: one deleted and created again under the same name starts at generation 1 again, so a new
    spec passed for the old one. Here pool-c, selecting another pool when the pass ran, comes back selecting the
    node and naming no version (it cannot render): the node running its driver under the default NVIDIADriver was
    moved to it between passes and lost its driver pod. Now the uid is compared too."""
    from gpu_operator.nodes import kept_labels
    from gpu_operator.nvidiadriver import OWNER_LABEL

    spec = policy_object()["spec"]
    spec["driver"]["useNvidiaDriverCRD"] = True
    drivers = {"default": _nvd("default", default=True, image="nvcr.io/nvidia/driver:580.65.06"),
               "pool-c": _nvd("pool-c", nodeSelector={"pool": "x"}, image="nvcr.io/nvidia/driver:580.65.06")}
    pod = {"metadata": {"name": "drv", "labels": {STATE_LABEL: "state-driver"}}, "node": "gpu-1",
           "owner": "nvidia-driver-daemonset-ubuntu22.04", "status": {}}  # fmt: skip
    op = _operator(spec)
    op.nvidia_drivers = copy.deepcopy(drivers)
    op.on_pod("drv", pod)
    op.on_nvidia_driver("ADDED", drivers["pool-c"])  # ("pool" is kept: pool-c selects on it)
    op.labels_read = kept_labels()
    running = facts("gpu-1", labels={"pool": "c"})
    for _ in range(2):  # the node settles under the default NVIDIADriver
        running = _patched(running, _full_pass(op, {"gpu-1": running}, {"drv": pod}, drivers).get("gpu-1"))
    assert OWNER_LABEL not in running.labels and running.deploys("driver")
    op.nodes["gpu-1"] = running
    again = _nvd("pool-c", nodeSelector={"pool": "c"}, repository="nvcr.io/nvidia", image="driver",
                 upgradePolicy={"autoUpgrade": False})  # fmt: skip
    again["metadata"]["uid"] = "uid-pool-c-2"  # generation 1, as its predecessor's
    op.on_nvidia_driver("DELETED", drivers["pool-c"])
    op.on_nvidia_driver("ADDED", again)
    cordoned = replace(running, unschedulable=True, resource_version=running.resource_version + 1)
    assert OWNER_LABEL not in (_between(op, cordoned).get("labels") or {})


def test_between_passes_a_refused_node_keeps_a_driver_pod_that_carries_only_the_legacy_component_label() -> None:
    """A node the version matrix refuses keeps a driver pod of ours it already runs (compat.py). The pass finds
    driver pods by observe.node_state, which reads the component label where the state label is missing (pods
    started before it existed); the labelling between passes read the state label only, so there it labelled such
    a node refused-by-version-matrix and the driver DaemonSet dropped the running pod. Now it reads the same pod
    index as the pass."""
    from gpu_operator.nodes import DRIVER_REFUSED
    from gpu_operator.states.base import COMPONENT

    op = _operator()
    pod = {"metadata": {"name": "drv", "labels": {COMPONENT: "state-driver"}}, "node": "v100-1",
           "owner": "nvidia-driver-daemonset", "status": {}}  # fmt: skip
    op.on_pod("drv", pod)
    settled = facts("v100-1", pci_label="feature.node.kubernetes.io/pci-0302_10de_1db4.present")  # R595 refuses it
    for _ in range(2):
        settled = _patched(settled, _full_pass(op, {"v100-1": settled}, {"drv": pod}).get("v100-1"))
    assert settled.labels.get(deploy_label("driver")) == "true"  # the pass: it keeps its running driver
    op.nodes["v100-1"] = settled
    cordoned = replace(settled, unschedulable=True, resource_version=settled.resource_version + 1)
    assert (_between(op, cordoned).get("labels") or {}).get(deploy_label("driver")) != DRIVER_REFUSED


def _sample_raw() -> Any:
    return load_policy()["spec"]


def test_a_pass_decides_labels_only_for_nodes_that_changed(monkeypatch: Any) -> None:
    import gpu_operator.reconciler as reconciler
    from gpu_operator.nodes import NodeFacts

    decided: list[str] = []

    def counting(nodes: list[NodeFacts], spec: Any, refused: Any = ()) -> Any:
        decided.extend(n.name for n in nodes)
        return node_patches(nodes, spec, refused)

    monkeypatch.setattr(reconciler, "node_patches", counting)
    r = reconciler.Reconciler(Client(), "gpu-operator")  # type: ignore[arg-type]
    spec = sample_spec()
    nodes = [NodeFacts.from_node(node(f"n{i}")) for i in range(3)]
    first = r._node_patches(nodes, spec, frozenset())
    assert sorted(first) == ["n0", "n1", "n2"] and decided == ["n0", "n1", "n2"]
    changed = [nodes[0], NodeFacts.from_node(node("n1", labels={"x": "y"})), nodes[2]]
    assert r._node_patches(changed, spec, frozenset()) == first
    assert decided[3:] == ["n1"]
    r._node_patches(changed, spec, frozenset({"n2"}))  # a node refused since: decided again
    assert decided[4:] == ["n2"]
    first_spec, new = r._parse(_sample_raw(), False)
    again, new_again = r._parse(_sample_raw(), False)
    assert first_spec is again and (new, new_again) == (True, False)  # the same spec text is parsed once


def test_a_node_labelled_for_the_driver_without_a_driver_pod_gets_upgrade_done_in_the_same_patch() -> None:
    from gpu_operator.render import relabelled, upgrade_first_sight
    from gpu_operator.upgrade.model import DONE
    from gpu_operator.upgrade.model import STATE_LABEL as UPGRADE_STATE
    from support import facts

    spec = sample_spec()
    assert spec.driver.upgrade_policy.auto_upgrade
    fresh, running, stated, cpu = facts("fresh"), facts("running"), facts("stated"), facts("cpu", gpu=False)
    stated = facts("stated", labels={UPGRADE_STATE: "upgrade-required"})
    nodes = [fresh, running, stated, cpu]
    patches = node_patches(nodes, spec)
    assert {"fresh", "running", "stated", "cpu"} - set(patches) == {"cpu"}  # every GPU node gets its labels
    after = upgrade_first_sight(relabelled(nodes, patches), patches, spec, with_driver={"running"})
    assert after["fresh"]["labels"][UPGRADE_STATE] == DONE
    assert UPGRADE_STATE not in after["running"]["labels"]  # its pod decides (the planner)
    assert UPGRADE_STATE not in after["stated"]["labels"]  # mid-upgrade state kept
    assert UPGRADE_STATE not in patches["fresh"]["labels"]  # the memo's patches are not changed in place
    # A node not patched anyway gets no write of its own; without autoUpgrade nothing is added.
    assert upgrade_first_sight(relabelled(nodes, {}), {}, spec, with_driver=set()) == {}
    off = spec.model_copy(deep=True)
    off.driver.upgrade_policy.auto_upgrade = False
    assert upgrade_first_sight(relabelled(nodes, patches), patches, off, with_driver=set()) == patches


def test_with_sandbox_workloads_no_node_label_waits_for_the_clusterpolicys_upgrade() -> None:
    """With sandboxWorkloads.enabled the ClusterPolicy's driver is not upgraded by the operator (as upstream:
    upgrade.orchestrate lets every node go), but its node labels still waited for the planner under autoUpgrade:
    a node without a driver pod got upgrade-done (which the pass then removed again), and a precompiled node whose
    kernel changed under its driver pod kept its old kernel's driver-kernel label for a planner that never moves
    it. Now both are as with autoUpgrade off; and a node's move between passes (Labelling.upgrade_spec) too."""
    from gpu_operator.nodes import DRIVER_KERNEL
    from gpu_operator.render import driver_node_patches, driver_routing, relabelled, upgrade_first_sight
    from support import facts

    spec = sample_spec().model_copy(deep=True)
    spec.sandbox_workloads.enabled = True
    spec.driver.use_precompiled = True
    assert spec.driver.upgrade_policy.auto_upgrade
    fresh = facts("fresh")
    patches = node_patches([fresh], spec)
    assert upgrade_first_sight(relabelled([fresh], patches), patches, spec, with_driver=set()) == patches
    moved = facts("c1", kernel="6.8.0-60-generic", labels={DRIVER_KERNEL: "5.15.0-122-generic",
                                                         deploy_label("driver"): "true"})  # fmt: skip
    routing = driver_routing([moved], spec, [])
    held = driver_node_patches([moved], spec, routing, holding={"c1"})  # it runs a driver pod
    assert held["c1"]["labels"][DRIVER_KERNEL] == "6.8.0-60-generic"
    labelling = Labelling("cluster-policy", "uid", 1, spec)
    assert labelling.upgrade_spec("c1", {}) is None
    spec.sandbox_workloads.enabled = False
    assert labelling.upgrade_spec("c1", {}) is spec


def test_under_nvidiadrivers_a_node_gets_upgrade_done_in_its_first_patch_when_its_nvidiadriver_upgrades() -> None:
    # Each node's second patch in a 1,000-node rollout under two NVIDIADrivers (2,000 node patches until ready).
    from gpu_operator.nvidiadriver import NVIDIADriver
    from gpu_operator.render import driver_routing, relabelled, upgrade_first_sight
    from gpu_operator.upgrade.model import DONE
    from gpu_operator.upgrade.model import STATE_LABEL as UPGRADE_STATE
    from support import facts

    def nvd(name: str, **spec: Any) -> NVIDIADriver:
        return NVIDIADriver.from_object({"metadata": {"name": name, "uid": name}, "spec": spec})

    spec = sample_spec().model_copy(deep=True)
    spec.driver.use_nvidia_driver_crd = True
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"}), facts("c1", labels={"pool": "c"})]
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}, upgradePolicy={
        "autoUpgrade": False}), nvd("pool-c", nodeSelector={"pool": "c"})]  # fmt: skip
    routing = driver_routing(nodes, spec, drivers)
    patches = node_patches(nodes, spec)
    after = upgrade_first_sight(relabelled(nodes, patches), patches, spec, set(), routing)
    assert after["a1"]["labels"][UPGRADE_STATE] == DONE and after["c1"]["labels"][UPGRADE_STATE] == DONE
    assert UPGRADE_STATE not in after["b1"]["labels"]  # its NVIDIADriver leaves upgrades alone: so does the label
    assert upgrade_first_sight(relabelled(nodes, patches), patches, spec, set()) == patches  # no routing known


def test_a_deleted_nodes_nodefeature_devices_are_not_given_to_a_new_node_of_that_name() -> None:
    """The NodeFeature PCI devices cached per node (Operator.node_features: read at start, listed again only while
    some GPU node is unidentified) were kept when the node was deleted. A machine re-provisioned under the same name
    (bare-metal hostnames) with another GPU, before GFD labels it and with NFD's plain pci-10de label, was identified
    by the old machine's devices: here a V100 (last driver branch R580), so the R595 driver was refused on the new
    H100 (no driver, so no GFD labels ever), and as the name was cached it was never unidentified, so the
    NodeFeatures were not listed again. Now a node's devices go with it."""
    from gpu_operator.nodes import DRIVER_REFUSED

    op = _operator()
    op.node_features = {"gpu-7": ("1db4",)}  # the old gpu-7: a Tesla V100 PCIe, read from its NodeFeature
    op.nodes["gpu-7"] = old = facts("gpu-7")
    _full_pass(op, {"gpu-7": old})
    op.on_node_facts("gpu-7", None)  # the machine is deleted from the cluster...
    reborn = facts("gpu-7")  # ...and joins again as an H100 host
    assert (_between(op, reborn).get("labels") or {}).get(deploy_label("driver")) != DRIVER_REFUSED
    assert op.unidentified()  # its NodeFeature is listed again
