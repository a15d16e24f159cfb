"""NVIDIADriver resources: node routing, conflicts, the derived driver spec, and what the driver state renders."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpu_operator import nvidiadriver, nvidiadriver_api
from gpu_operator.api import parse_spec
from gpu_operator.crd import nvidiadriver_crd
from gpu_operator.nodes import UPGRADE_ENABLED_ANNOTATION, NodeFacts
from gpu_operator.nvidiadriver import CONFLICT_VALUE, NVIDIADriver, assign
from gpu_operator.nvidiadriver_api import OWNER_LABEL
from support import EchoKube, container, daemonset, daemonsets, facts, load_policy, policy_object, render_all
from support import node as support_node


def nvd(name: str, **spec: Any) -> NVIDIADriver:
    return NVIDIADriver.from_object({"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": spec})


NODES = [
    facts("a1", labels={"pool": "a"}),
    facts("b1", labels={"pool": "b"}),
    facts("b2", labels={"pool": "b", "rack": "r7"}),
    facts("cpu", gpu=False, labels={"pool": "b"}),
]


def test_selected_nodes_go_to_their_driver_and_the_rest_to_the_default() -> None:
    found = assign(NODES, [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"})])
    assert found.owner == {"a1": "default", "b1": "pool-b", "b2": "pool-b"}  # no CPU node
    assert not found.conflicts and not found.problems
    assert found.owner_label("a1") is None and found.owner_label("b1") == "pool-b"


def test_without_a_default_unselected_nodes_get_no_driver() -> None:
    found = assign(NODES, [nvd("pool-b", nodeSelector={"pool": "b"})])
    assert found.owner == {"b1": "pool-b", "b2": "pool-b"}


def test_an_empty_node_selector_selects_every_gpu_node() -> None:
    assert assign(NODES, [nvd("all")]).owner == {"a1": "all", "b1": "all", "b2": "all"}


def test_overlapping_selectors_conflict_on_both_and_neither_takes_the_node() -> None:
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}),
               nvd("rack", nodeSelector={"rack": "r7"})]  # fmt: skip
    found = assign(NODES, drivers)
    assert found.conflicts == {"pool-b": ["b2"], "rack": ["b2"]}
    assert found.owner["b2"] == "default"  # neither takes it; the default keeps it (see below)
    assert found.nodes_of("pool-b") == ["b1"] and found.nodes_of("rack") == []
    message = nvidiadriver.conflict_message("pool-b", found)
    assert message == ("nodeSelector conflicts with NVIDIADriver rack on b2, which neither takes over: the default "
                       "default's driver stays there")  # fmt: skip
    found = assign(NODES, drivers[1:])
    assert nvidiadriver.conflict_message("rack", found) == (
        "nodeSelector conflicts with NVIDIADriver pool-b on b2, which neither takes over: no driver is deployed there"
    )


def test_a_conflict_keeps_the_driver_a_node_already_runs() -> None:
    """The conflict message said "no driver is deployed there by either" of the node that keeps pool-b's driver (its
    status counts it): an admin reading it would look for a missing driver. It says what each node keeps."""
    routed = facts("b2", labels={"pool": "b", "rack": "r7", OWNER_LABEL: "pool-b"})
    drivers = [nvd("pool-b", nodeSelector={"pool": "b"}), nvd("rack", nodeSelector={"rack": "r7"})]
    found = assign([routed], drivers)
    assert found.owner == {"b2": "pool-b"}
    assert found.conflicts == {"pool-b": ["b2"], "rack": ["b2"]}
    status = nvidiadriver.driver_status(drivers[0], found, (True, ""), "gpu-operator", None, "t")
    assert status["nodes"] == 1
    error = next(c for c in status["conditions"] if c["type"] == "Error")
    assert error["message"] == ("nodeSelector conflicts with NVIDIADriver rack on b2, which neither takes over: "
                                "pool-b's driver stays there")  # fmt: skip
    unlabelled = facts("b3", labels={"pool": "b", "rack": "r7"})
    found = assign([routed, unlabelled], drivers)
    assert nvidiadriver.conflict_message("rack", found) == (
        "nodeSelector conflicts with NVIDIADriver pool-b on b2, b3, which neither takes over: pool-b's driver stays "
        "on b2; no driver is deployed on b3"
    )


def test_a_conflict_keeps_the_driver_of_an_nvidiadriver_that_no_longer_selects_the_node() -> None:
    """A node driven by pool-a is relabelled so that pool-a no longer selects it and two others both do. It got the
    conflict marker as owner label, by which pool-a's DaemonSet deleted its running driver pod and no other took
    the node: no driver at all. Upstream's AssignOwners changes no owner label on a conflict; so here: the node
    keeps pool-a, and the conflict is still named on both."""
    node = facts("n1", labels={"pool": "b", "rack": "r7", OWNER_LABEL: "pool-a"})
    drivers = [nvd("pool-a", nodeSelector={"pool": "a"}), nvd("pool-b", nodeSelector={"pool": "b"}),
               nvd("rack-r7", nodeSelector={"rack": "r7"})]  # fmt: skip
    found = assign([node], drivers)
    assert found.owner == {"n1": "pool-a"} and found.owner_label("n1") == "pool-a"
    assert found.conflicts == {"pool-b": ["n1"], "rack-r7": ["n1"]}
    # pool-a deleted (not live): nothing to keep, the conflict marker.
    found = assign([node], drivers[1:])
    assert "n1" not in found.owner and found.owner_label("n1") == CONFLICT_VALUE


def test_of_two_defaults_the_oldest_stays_and_invalid_specs_drive_nothing() -> None:
    # The chart's default and an admin's own: the running one keeps its nodes (refusing both removed every driver).
    def made(name: str, when: str) -> NVIDIADriver:
        return NVIDIADriver.from_object({"metadata": {"name": name, "creationTimestamp": when},
                                         "spec": {"default": True}})  # fmt: skip

    drivers = [made("a-new", "2026-12-02T00:00:00Z"), made("z-old", "2026-12-01T00:00:00Z"),
               nvd("bad", driverType="cpu")]
    found = assign(NODES, drivers)
    assert found.default == "z-old" and set(found.owner.values()) == {"z-old"}
    assert set(found.problems) == {"a-new", "bad"} and "z-old, the oldest, stays the default" in found.problems["a-new"]
    assert "spec.driverType" in found.problems["bad"]
    spec = parse_spec(crd_policy())
    assert [g.name for g in nvidiadriver.groups(spec, drivers, found)] == ["z-old"]
    assert assign(NODES, [nvd("d2", default=True), nvd("d1", default=True)]).default == "d1"  # no time: by name


def test_a_conflict_on_a_node_the_default_drives_leaves_it_with_the_default() -> None:
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}), nvd("rack", nodeSelector={
        "rack": "r7"})]  # fmt: skip
    found = assign(NODES, drivers)
    assert found.owner["b2"] == "default" and found.owner_label("b2") is None  # its driver keeps running
    assert found.conflicts == {"pool-b": ["b2"], "rack": ["b2"]}
    # With no default, nothing to keep: the conflict marker.
    found = assign(NODES, drivers[1:])
    assert "b2" not in found.owner and found.owner_label("b2") == CONFLICT_VALUE


def _held_cluster() -> tuple[list[NodeFacts], Any, Any]:
    """Nodes each running a driver pod (but b5) of a DaemonSet of ours named after it, routed under a default,
    pool-b and rack: (the nodes, the snapshot, the routing)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.render import driver_routing
    from gpu_operator.states.base import STATE_LABEL as OPERAND_STATE_LABEL

    rack, b = {"pool": "b", "rack": "r7"}, {"pool": "b"}
    nodes = [
        facts("a1", labels={"pool": "a"}),  # the default's, as its label says
        facts("a2", labels={"pool": "a", OWNER_LABEL: "pool-b"}),  # moves from pool-b to the default
        facts("b1", labels=b),  # moves from the default to pool-b
        facts("b2", labels={**rack, OWNER_LABEL: "pool-b"}),  # a conflict: keeps pool-b, which its label names
        facts("b3", labels=rack),  # a conflict: the default keeps it
        facts("b4", labels={**rack, OWNER_LABEL: CONFLICT_VALUE}),  # a conflict on none's node: no owner
        facts("b5", labels=b),  # moves to pool-b, with no driver pod
    ]
    pods = {f"drv-{n.name}": {"metadata": {"name": f"drv-{n.name}", "labels": {OPERAND_STATE_LABEL: "state-driver"}},
                              "node": n.name, "owner": f"ds-{n.name}"} for n in nodes if n.name != "b5"}  # fmt: skip
    owned = {("DaemonSet", "gpu-operator", f"ds-{n.name}"): {} for n in nodes}
    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={}, owned=owned, pods=pods, revisions={})
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector=b), nvd("rack", nodeSelector={"rack": "r7"})]
    routing = driver_routing(nodes, parse_spec(crd_policy()), drivers)
    return nodes, snap, routing


def test_the_owner_label_held_for_a_move_is_the_assignments_owner_label() -> None:
    """The DaemonSets kept for a node whose owner label is held for a move (_held_daemonsets) are those of the
    nodes running a driver pod whose label is not the one Assignment.owner_label gives, for every node the
    assignment routes, conflicts included (a conflict on a node no live NVIDIADriver keeps is no move); that label
    is also the one the upgrade moves a node to (DriverGroup.upgrade_owner, UpgradeNode.owner_move)."""
    from gpu_operator.reconciler import _held_daemonsets

    nodes, snap, routing = _held_cluster()
    assignment = routing.assignment
    assert assignment.owner == {"a1": "default", "a2": "default", "b1": "pool-b", "b2": "pool-b", "b3": "default",
                                "b5": "pool-b"}  # fmt: skip
    for name in assignment.owner:
        group = routing.group_of(name)
        assert group is not None and group.upgrade_owner()[1] == (assignment.owner_label(name) or ""), name
    assert _held_daemonsets(nodes, assignment, snap, "gpu-operator") == {
        ("DaemonSet", "gpu-operator", "ds-a2"), ("DaemonSet", "gpu-operator", "ds-b1")}  # fmt: skip


def test_owner_label_move_names_the_label_a_routed_node_moves_to() -> None:
    """nvidiadriver.owner_label_move (a pure helper: which nodes _held_daemonsets looks at, kept per node): the
    owner label the assignment gives a routed node that carries another, else None."""
    nodes, _, routing = _held_cluster()
    moves = {n.name: nvidiadriver.owner_label_move(n, routing.assignment) for n in nodes}
    assert moves == {"a1": None, "a2": "", "b1": "pool-b", "b2": None, "b3": None, "b4": None, "b5": "pool-b"}


def test_held_daemonsets_kept_works_out_only_the_nodes_that_changed() -> None:
    """_held_daemonsets walked every node and compared its owner label with the assignment's each pass under
    NVIDIADrivers (at 5,000 nodes ~2 ms of a settled pass). With a ByNode of owner_label_move it works out again only
    the nodes whose facts are other objects (every node under another Assignment object), with the same answer."""
    from dataclasses import replace

    from gpu_operator.nodes import ByNode
    from gpu_operator.reconciler import _held_daemonsets

    nodes, snap, routing = _held_cluster()
    asked: list[str] = []

    def move(node: NodeFacts, assignment: Any) -> str | None:
        asked.append(node.name)
        return nvidiadriver.owner_label_move(node, assignment)

    kept: ByNode[str] = ByNode(move)

    def held(nodes: list[NodeFacts], assignment: Any) -> set[Any]:
        got = _held_daemonsets(nodes, assignment, snap, "gpu-operator", kept)
        assert got == _held_daemonsets(nodes, assignment, snap, "gpu-operator")  # what a fresh walk says
        return got

    both = {("DaemonSet", "gpu-operator", "ds-a2"), ("DaemonSet", "gpu-operator", "ds-b1")}
    assert held(nodes, routing.assignment) == both and len(asked) == len(nodes)
    asked.clear()
    assert held(nodes, routing.assignment) == both and asked == []
    moved = [replace(n, labels={**n.labels, OWNER_LABEL: "pool-b"}) if n.name == "b1" else n for n in nodes]
    assert held(moved, routing.assignment) == {("DaemonSet", "gpu-operator", "ds-a2")} and asked == ["b1"]
    asked.clear()
    assert held(moved, replace(routing.assignment)) == {("DaemonSet", "gpu-operator", "ds-a2")}
    assert sorted(asked) == sorted(n.name for n in nodes)


def test_vgpu_host_manager_is_refused_and_takes_no_node() -> None:
    found = assign(NODES, [nvd("host", driverType="vgpu-host-manager"), nvd("default", default=True)])
    assert set(found.owner.values()) == {"default"}
    assert "not supported" in found.problems["host"]
    status = nvidiadriver.driver_status(nvd("host", driverType="vgpu-host-manager"), found, None, "ns", None, "t")
    assert status["state"] == "notReady"


LONG_NAME = "gpu-driver-for-the-a100-and-h100-nodes-of-the-research-cluster-1"  # 64 characters: a valid object name


def test_an_nvidiadriver_whose_name_is_no_label_value_is_refused_and_takes_no_node() -> None:
    """The owner label (and its DaemonSets' nodeSelector) carries the NVIDIADriver's name, and a label value has at
    most 63 characters where an object name has 253. Such a name was routed nodes all the same: the API server
    refused their label patch (422), which failed every ClusterPolicy pass, and the NVIDIADriver never said why.
    Now it is refused like vgpu-host-manager, in its status and a Warning event; the default is exempt (it puts
    no owner label on its nodes)."""
    from gpu_operator.nodes import label_value_ok
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    assert len(LONG_NAME) > 63 and not label_value_ok(LONG_NAME)
    node = facts("x1", labels={"pool": "x"})
    found = assign([node], [nvd(LONG_NAME, nodeSelector={"pool": "x"}), nvd("default", default=True)])
    assert found.owner == {"x1": "default"} and nvidiadriver.owner_patch(node, found) == {}
    assert found.problems[LONG_NAME] == (f"name: 64 characters, more than the 63 of a label value, so it cannot be "
                                         f"the node label {OWNER_LABEL}; it takes no node (use a shorter name)")
    assert assign([node], [nvd(LONG_NAME, default=True)]).owner == {"x1": LONG_NAME}  # no label: the default is fine

    objs = drivers_objects((LONG_NAME, {"nodeSelector": {"pool": "x"}}))
    selectors = [d["spec"]["template"]["spec"]["nodeSelector"]
                 for d in daemonsets(render_all(parse_spec(crd_policy()), [node], nvidia_drivers=objs))]
    assert not [s for s in selectors if OWNER_LABEL in s]

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[dict[str, Any]] = []

        def create(self, body: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            self.events.append(body)
            return body

    kube = Kube()
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d} for d in objs}
    snap = Snapshot(nodes={"x1": node}, policies={"cluster-policy": policy_object(crd_policy())}, owned={}, pods={},
                    revisions={}, nvidia_drivers=drivers)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    error = next(c for c in kube.statuses[("NVIDIADriver", LONG_NAME)]["conditions"] if c["type"] == "Error")
    assert error["reason"] == "ReconcileFailed" and error["message"] == found.problems[LONG_NAME]
    assert [(e["type"], e["reason"], e["message"]) for e in kube.events
            if e["involvedObject"]["name"] == LONG_NAME] == [("Warning", "ReconcileFailed", error["message"])]


# NFD's system source publishes these next to VERSION_ID, which the operator reads itself (source/system/system.go).
VERSION_MAJOR = "feature.node.kubernetes.io/system-os_release.VERSION_ID.major"
CPU_VENDOR = "feature.node.kubernetes.io/cpu-model.vendor_id"


def test_a_selector_on_an_nfd_label_the_operator_does_not_read_selects_once_the_nvidiadrivers_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NodeFacts drop the NFD labels the operator does not read (memory at 5,000 nodes), so such a nodeSelector
    matched no node: its nodes fell to the default, or got no driver. Upstream matches every label of the Node
    (internal/nvidiadriver: labels.SelectorFromSet(selector).Matches(labels.Set(node.Labels)))."""
    from gpu_operator import nodes
    from gpu_operator.nvidiadriver import selector_keys
    from gpu_operator.readiness import daemon_node_count

    monkeypatch.setattr(nodes, "_kept", frozenset())  # the process's: none yet
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": CPU_VENDOR, "operator": "In", "values": ["AMD"]}]}]}}  # fmt: skip
    objects = [
        {"metadata": {"name": "default"}, "spec": {"default": True}},
        {"metadata": {"name": "rhel9"}, "spec": {"nodeSelector": {VERSION_MAJOR: "9", "pool": "a"}}},
        {"metadata": {"name": "amd"}, "spec": {"nodeSelector": {"pool": "b"}, "nodeAffinity": affinity}},
        {"metadata": {"name": "broken"}, "spec": {"nodeSelector": ["not", "a", "map"], "nodeAffinity": 3}},
    ]
    assert selector_keys(objects) == {VERSION_MAJOR, "pool", CPU_VENDOR}
    drivers = [NVIDIADriver.from_object(o) for o in objects[:2]]

    def rhel() -> NodeFacts:
        return facts("rhel-1", os=("rhel", "9.4"), labels={VERSION_MAJOR: "9", "pool": "a", CPU_VENDOR: "AMD"})

    assert assign([rhel()], drivers).owner == {"rhel-1": "default"}  # VERSION_ID.major is not kept ...
    assert nodes.keep_labels(selector_keys(objects)) and not nodes.keep_labels([VERSION_MAJOR, "pool"])
    assert nodes.kept_labels() == {VERSION_MAJOR, CPU_VENDOR}  # ("pool" is kept anyway: it is not NFD's)
    assert assign([rhel()], drivers).owner == {"rhel-1": "rhel9"}  # ... once the NVIDIADrivers are read, it is
    # The DaemonSet's count of the nodes its nodeAffinity places it on reads the label too (it read none).
    template = {"affinity": {"nodeAffinity": affinity}}
    assert daemon_node_count(template, [rhel(), facts("intel", labels={CPU_VENDOR: "Intel"})]) == 1
    avx = "feature.node.kubernetes.io/cpu-cpuid.AVX"
    assert avx not in facts(labels={avx: "true"}).labels  # NFD's other labels are still dropped


def test_owner_label_patch_sets_and_removes() -> None:
    found = assign(NODES, [nvd("pool-b", nodeSelector={"pool": "b"})])
    assert nvidiadriver.owner_patch(NODES[1], found) == {OWNER_LABEL: "pool-b"}
    routed = facts("b1", labels={"pool": "b", OWNER_LABEL: "pool-b"})
    assert nvidiadriver.owner_patch(routed, found) == {}
    assert nvidiadriver.owner_patch(routed, None) == {OWNER_LABEL: None}  # useNvidiaDriverCRD switched off


def crd_policy() -> dict[str, Any]:
    raw = copy.deepcopy(load_policy()["spec"])
    raw["driver"]["useNvidiaDriverCRD"] = True
    return raw


def disabled_driver() -> dict[str, Any]:
    raw = crd_policy()
    raw["driver"]["enabled"] = False
    return raw


def drivers_objects(*specs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"metadata": {"name": n, "uid": f"uid-{n}"}, "spec": s} for n, s in specs]


def test_default_nvidiadriver_renders_the_cluster_policy_driver_unchanged() -> None:
    """Switching useNvidiaDriverCRD on with a default NVIDIADriver of the same settings restarts nothing: the
    DaemonSets keep their names and pod templates (only their owner changes)."""
    raw = load_policy()["spec"]
    before = {d["metadata"]["name"]: d for d in daemonsets(render_all(parse_spec(raw))) if "driver-daemonset" in
              d["metadata"]["name"]}  # fmt: skip
    driver = raw["driver"]
    same = {k: driver[k] for k in ("repository", "image", "version", "imagePullPolicy", "startupProbe", "rdma",
                                   "manager", "kernelModuleType") if k in driver}  # fmt: skip
    same["upgradePolicy"] = driver.get("upgradePolicy", {})
    same["default"] = True
    after_plans = render_all(parse_spec(crd_policy()), nvidia_drivers=drivers_objects(("default", same)))
    after = {d["metadata"]["name"]: d for d in daemonsets(after_plans) if "driver-daemonset" in d["metadata"]["name"]}
    assert sorted(after) == sorted(before) and before
    for name, ds in after.items():
        assert ds["spec"]["template"] == before[name]["spec"]["template"], name
        assert ds["metadata"]["ownerReferences"][0]["kind"] == "NVIDIADriver"


def test_each_nvidiadriver_renders_its_own_pools_with_its_version() -> None:
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    objs = drivers_objects(("default", {"default": True}),
                           ("pool-b", {"repository": "nvcr.io/nvidia", "image": "driver", "version": "580.95.05",
                                       "nodeSelector": {"pool": "b"}}))  # fmt: skip
    plans = render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs)
    default = daemonset(plans, "nvidia-driver-daemonset-ubuntu22.04")
    mine = daemonset(plans, "nvidia-driver-daemonset-pool-b-ubuntu22.04")
    pod = mine["spec"]["template"]["spec"]
    assert pod["nodeSelector"][OWNER_LABEL] == "pool-b"
    assert pod["containers"][0]["image"] == "nvcr.io/nvidia/driver:580.95.05-ubuntu22.04"
    assert mine["metadata"]["ownerReferences"][0]["name"] == "pool-b"
    # The default now avoids nodes routed to another NVIDIADriver.
    affinity = default["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    term = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": OWNER_LABEL, "operator": "DoesNotExist"}]


def test_precompiled_nvidiadriver_tags_images_per_kernel() -> None:
    nodes = [facts("c1", kernel="5.15.0-122-generic", labels={"pool": "c"}),
             facts("c2", kernel="5.15.0-130-generic", labels={"pool": "c"})]  # fmt: skip
    objs = drivers_objects(("pool-c", {"repository": "nvcr.io/nvidia", "image": "driver", "version": "580",
                                       "usePrecompiled": True, "nodeSelector": {"pool": "c"}}))  # fmt: skip
    plans = render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs)
    images = sorted(
        ds["spec"]["template"]["spec"]["containers"][0]["image"]
        for ds in daemonsets(plans) if ds["metadata"]["labels"].get("nvidia.com/gpu-operator.state") == "state-driver"
    )  # fmt: skip
    assert images == ["nvcr.io/nvidia/driver:580-5.15.0-122-generic-ubuntu22.04",
                      "nvcr.io/nvidia/driver:580-5.15.0-130-generic-ubuntu22.04"]  # fmt: skip


def test_an_nvidiadrivers_images_fall_back_to_no_env_var_as_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRIVER_IMAGE, GDS_IMAGE and GDRCOPY_IMAGE on the operator name the ClusterPolicy's driver images when it names
    none (upstream's ImagePath, the OS tag still appended); upstream's NVIDIADriver GetImagePath passes no env name,
    so an NVIDIADriver's GDS sidecar naming no image keeps the default."""
    for name in ("DRIVER_IMAGE", "GDS_IMAGE", "GDRCOPY_IMAGE"):
        monkeypatch.setenv(name, f"mirror.local/{name.lower()}:v1")
    raw = copy.deepcopy(load_policy()["spec"])
    for key in ("repository", "image", "version"):
        raw["driver"].pop(key, None)
    raw["gds"] = {"enabled": True}
    ds = daemonset(render_all(parse_spec(raw)), "nvidia-driver-daemonset-ubuntu22.04")
    assert container(ds, "nvidia-driver-ctr")["image"] == "mirror.local/driver_image:v1-ubuntu22.04"
    assert container(ds, "nvidia-fs-ctr")["image"] == "mirror.local/gds_image:v1-ubuntu22.04"
    crd = crd_policy()
    crd["gds"] = {"enabled": True}
    objs = drivers_objects(("default", {"default": True, "gds": {"enabled": True}}))
    ds = daemonset(render_all(parse_spec(crd), nvidia_drivers=objs), "nvidia-driver-daemonset-ubuntu22.04")
    assert container(ds, "nvidia-driver-ctr")["image"].startswith("nvcr.io/nvidia/driver:")
    assert container(ds, "nvidia-fs-ctr")["image"].startswith("nvcr.io/nvidia/cloud-native/nvidia-fs:")


def test_nvidiadriver_args_follow_init() -> None:
    """Upstream's manifests/state-driver/0500_daemonset.yaml writes `init` and then the args (its golden
    internal/state/testdata/golden/driver-full-spec.yaml: [init, --foo, --bar]); nvidia-driver reads its first
    argument as the command, so args in its place crash-loop the driver. The ClusterPolicy's replace, as upstream."""
    objs = drivers_objects(("default", {"default": True, "args": ["--foo", "--bar"]}))
    ctr = container(daemonset(render_all(parse_spec(crd_policy()), [facts("a1")], nvidia_drivers=objs),
                              "nvidia-driver-daemonset-ubuntu22.04"), "nvidia-driver-ctr")  # fmt: skip
    assert (ctr["command"], ctr["args"]) == (["nvidia-driver"], ["init", "--foo", "--bar"])
    raw = copy.deepcopy(load_policy()["spec"])
    raw["driver"]["args"] = ["init", "--foo"]
    ctr = container(daemonset(render_all(parse_spec(raw), [facts("a1")]), "nvidia-driver-daemonset-ubuntu22.04"),
                    "nvidia-driver-ctr")  # fmt: skip
    assert ctr["args"] == ["init", "--foo"]


@pytest.mark.parametrize(("precompiled", "delay"), [(True, 5), (False, 60)])
def test_an_nvidiadriver_without_a_startup_probe_gets_upstreams_default(precompiled: bool, delay: int) -> None:
    """internal/state/driver.go getDefaultStartupProbe: 5 s before the first probe of a precompiled driver (it has
    nothing to build), else 60 s; not the ClusterPolicy's driver.startupProbe."""
    raw = crd_policy()
    raw["driver"]["startupProbe"] = {"initialDelaySeconds": 300, "failureThreshold": 7}
    objs = drivers_objects(("pool-c", {"repository": "nvcr.io/nvidia", "image": "driver", "version": "580",
                                       "usePrecompiled": precompiled, "nodeSelector": {"pool": "c"}}))  # fmt: skip
    plans = render_all(parse_spec(raw), [facts("c1", labels={"pool": "c"})], nvidia_drivers=objs)
    (ds,) = [d for d in daemonsets(plans) if "pool-c" in d["metadata"]["name"]]
    assert container(ds, "nvidia-driver-ctr")["startupProbe"] | {"exec": None} == {
        "exec": None, "initialDelaySeconds": delay, "timeoutSeconds": 60, "periodSeconds": 10, "successThreshold": 1,
        "failureThreshold": 120}  # fmt: skip


def test_precompiled_nvidiadriver_with_an_image_digest_is_refused() -> None:
    """api/nvidia/v1alpha1/nvidiadriver_types.go GetPrecompiledImagePath: "specifying image digest is not
    supported when precompiled is enabled". One digest would run one kernel's modules in every kernel's pool."""
    nodes = [facts("c1", kernel="5.15.0-122-generic", labels={"pool": "c"}),
             facts("c2", kernel="5.15.0-130-generic", labels={"pool": "c"})]  # fmt: skip
    for fields in ({"repository": "nvcr.io/nvidia", "image": "driver", "version": "sha256:" + "a" * 64},
                   {"image": "nvcr.io/nvidia/driver@sha256:" + "a" * 64}):
        objs = drivers_objects(("default", {"default": True}),
                               ("pool-c", {**fields, "usePrecompiled": True, "nodeSelector": {"pool": "c"}}))
        plans = render_all(parse_spec(crd_policy()), [*nodes, facts("a1")], nvidia_drivers=objs)
        driver_plan = next(p for p in plans if p.state.name == "state-driver")
        assert not any("pool-c" in d["metadata"]["name"] for d in daemonsets([driver_plan]))
        assert driver_plan.held["uid-pool-c"].startswith("NVIDIADriver pool-c: usePrecompiled: an image digest ")
        assert any(d["metadata"]["name"] == "nvidia-driver-daemonset-ubuntu22.04" for d in daemonsets([driver_plan]))


def test_precompiled_nvidiadriver_without_a_version_is_refused() -> None:
    """`version` is "NVIDIA Driver version (or just branch for precompiled drivers)"
    (api/nvidia/v1alpha1/nvidiadriver_types.go): precompiled images are published per branch,
    `<branch>-<kernel>-<os>`. Without a version the image was our default full version with the kernel appended
    (`595.91.07-5.15.0-122-generic-ubuntu22.04`), a tag that does not exist: ImagePullBackOff and no message.
    Upstream's GetPrecompiledImagePath has no default either."""
    nodes = [facts("c1", kernel="5.15.0-122-generic", labels={"pool": "c"})]
    for fields in ({}, {"repository": "nvcr.io/nvidia", "image": "driver"}):
        objs = drivers_objects(("default", {"default": True}),
                               ("pool-c", {**fields, "usePrecompiled": True, "nodeSelector": {"pool": "c"}}))
        plans = render_all(parse_spec(crd_policy()), [*nodes, facts("a1")], nvidia_drivers=objs)
        driver_plan = next(p for p in plans if p.state.name == "state-driver")
        assert not any("pool-c" in d["metadata"]["name"] for d in daemonsets([driver_plan]))
        assert driver_plan.held == {"uid-pool-c": "NVIDIADriver pool-c: version: usePrecompiled needs a driver branch "
                                                  "such as 580; precompiled images are tagged <branch>-<kernel>-<os>"}
        assert any(d["metadata"]["name"] == "nvidia-driver-daemonset-ubuntu22.04" for d in daemonsets([driver_plan]))
    objs = drivers_objects(("pool-c", {"image": "nvcr.io/nvidia/driver:580", "usePrecompiled": True}))  # tagged
    images = [container(d, "nvidia-driver-ctr")["image"]
              for d in daemonsets(render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs))
              if "nvidia-driver-daemonset" in d["metadata"]["name"]]  # fmt: skip
    assert images == ["nvcr.io/nvidia/driver:580-5.15.0-122-generic-ubuntu22.04"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"repository": "nvcr.io/nvidia", "image": "", "version": "580.95.05"},
         "image: set repository, image and version together (or image alone); missing image"),
        ({"image": "driver", "version": "580.95.05"},
         "image: set repository, image and version together (or image alone); missing repository"),
        ({"repository": "nvcr.io/nvidia", "image": "driver"},
         "image: set repository, image and version together (or image alone); missing version"),
        ({"image": ""}, "image: empty; name the driver image (or set repository, image and version together)"),
        ({"image": "nvcr.io/nvidia/driver:580.95.05", "version": "570.1"},
         "image: nvcr.io/nvidia/driver:580.95.05 has a tag or digest, and version 570.1 is set too; set one of them"),
    ],
)  # fmt: skip
def test_an_nvidiadriver_whose_image_fields_name_no_image_is_held(fields: dict[str, Any], problem: str) -> None:
    """Upstream's ImagePath takes `image` alone or repository, image and version together, else "invalid image
    specification" (ReconcileFailed), as the ClusterPolicy's driver section here. The NVIDIADriver's fields were
    guessed at instead: an empty image with a version ran nvcr.io/nvidia/driver:595.91.07 (the user's version
    dropped, while the version matrix and status went by 580.95.05), `driver` with no repository ran
    docker.io/library/driver privileged, and an empty image rendered `:595.91.07-ubuntu22.04` (InvalidImageName)."""
    objs = drivers_objects(("default", {"default": True}), ("pool-b", {**fields, "nodeSelector": {"pool": "b"}}))
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    driver_plan = next(p for p in render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs)
                       if p.state.name == "state-driver")  # fmt: skip
    assert driver_plan.held == {"uid-pool-b": f"NVIDIADriver pool-b: {problem}"}
    assert [d["metadata"]["name"] for d in daemonsets([driver_plan])] == ["nvidia-driver-daemonset-ubuntu22.04"]


def test_a_repository_with_an_image_that_names_its_registry_is_held() -> None:
    """`image` defaults (server side, as upstream) to nvcr.io/nvidia/driver: `repository: nvcr.io/nvidia` and
    `version`, the ClusterPolicy's way, rendered nvcr.io/nvidia/nvcr.io/nvidia/driver:<version>-<os> on every node
    (ImagePullBackOff) with no status message, as upstream's ImagePath does. image_problem already read the
    registry path in `image` (it takes image + version without repository), but let repository through with it."""
    spec = nvidiadriver_api.parse_spec({"repository": "nvcr.io/nvidia", "version": "580.95.05"})
    assert spec.image == "nvcr.io/nvidia/driver"
    assert nvidiadriver.image_problem(spec) == (
        "image: nvcr.io/nvidia/driver has a registry path, and repository nvcr.io/nvidia is set too; set image to "
        "the image name (driver) or drop repository")  # fmt: skip
    # The same registry twice, and a registry with a port as a path component (upstream's ref.New refuses it).
    for fields in ({"repository": "nvcr.io", "image": "nvcr.io/nvidia/driver"},
                   {"repository": "localhost/nv", "image": "localhost/driver"},
                   {"repository": "r.example", "image": "registry:5000/driver"}):  # fmt: skip
        held = nvidiadriver_api.parse_spec({"version": "580.95.05", **fields})
        assert nvidiadriver.image_problem(held) is not None, fields
    # A path under a repository: upstream's sample, an image under a project, and a mirror that keeps the source
    # registry in its paths (the next test).
    for fields in ({"repository": "nvcr.io/nvidia", "image": "driver"},
                   {"repository": "r.example", "image": "nv/driver"},
                   {"repository": "r.example", "image": "localhost/driver"},
                   {"repository": "registry.local", "image": "nvcr.io/nvidia/driver"}):  # fmt: skip
        assert nvidiadriver.image_problem(nvidiadriver_api.parse_spec({**fields, "version": "580.95.05"})) is None


def test_a_scoped_mirror_image_under_a_repository_is_rendered() -> None:
    """A mirror that keeps the source registry in its paths (`skopeo sync --scoped`: registry.local/nvcr.io/nvidia/
    driver) is written `repository: registry.local`, `image: nvcr.io/nvidia/driver`, and upstream's ImagePath
    renders repository/image:version, a valid reference. The registry-path hold took any `image` starting with a
    registry host under any `repository`, so this NVIDIADriver was held and its nodes got no driver; now only a
    `repository` on the image's own registry (a doubled path) is held."""
    objs = drivers_objects(("mirror", {"default": True, "repository": "registry.local",
                                       "image": "nvcr.io/nvidia/driver", "version": "580.95.05"}))  # fmt: skip
    plan = next(p for p in render_all(parse_spec(crd_policy()), [facts("a1")], nvidia_drivers=objs)
                if p.state.name == "state-driver")  # fmt: skip
    assert plan.held == {}
    images = [container(d, "nvidia-driver-ctr")["image"] for d in daemonsets([plan])
              if "nvidia-driver-daemonset" in d["metadata"]["name"]]  # fmt: skip
    assert images == ["registry.local/nvcr.io/nvidia/driver:580.95.05-ubuntu22.04"]


@pytest.mark.parametrize(
    "fields",
    [{}, {"image": "driver"}, {"image": "r.example/driver:580.95.05"}, {"version": "580.95.05"},
     {"image": "r.example/nv/driver", "version": "580.95.05"},
     {"repository": "r.example/nv", "image": "driver", "version": "sha256:" + "a" * 64}],
)  # fmt: skip
def test_image_fields_upstream_takes_and_ours_beyond_it_name_an_image(fields: dict[str, Any]) -> None:
    """`image` alone (our default version appended when it has no tag), all three, and beyond upstream `image`
    with its registry path and `version` (the default image with a version only, say)."""
    assert nvidiadriver.image_problem(nvidiadriver_api.parse_spec(fields)) is None


def test_an_empty_image_pull_policy_is_the_default() -> None:
    """Upstream's imagePullPolicy is a plain string and its template reads "" as IfNotPresent (`default
    "IfNotPresent"`); ours had an enum without "", so an upstream NVIDIADriver with `imagePullPolicy: ""` was
    refused, at admission and by the operator (the ClusterPolicy's and the manager's took it)."""
    enum = nvidiadriver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "imagePullPolicy"]["enum"]  # fmt: skip
    assert "" in enum
    objs = drivers_objects(("default", {"default": True, "imagePullPolicy": ""}))
    (ds,) = [d for d in daemonsets(render_all(parse_spec(crd_policy()), [facts("a1")], nvidia_drivers=objs))
             if "nvidia-driver-daemonset" in d["metadata"]["name"]]  # fmt: skip
    assert container(ds, "nvidia-driver-ctr")["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("sidecar", [
    {"gdrcopy": {"enabled": False, "repository": "nvcr.io/nvidia/cloud-native", "image": "gdrdrv", "version": ""}},
    {"gds": {"enabled": False, "repository": "nvcr.io/nvidia/cloud-native", "image": "nvidia-fs"}},
    {"gds": {"enabled": False, "version": "2.20.5"}},
])  # fmt: skip
def test_a_disabled_sidecar_with_partial_image_fields_is_no_invalid_spec(sidecar: dict[str, Any]) -> None:
    """Upstream's getGDSSpec/getGDRCopySpec (internal/state/driver.go) return nil unless the sidecar is enabled, so
    a disabled gds or gdrcopy section's image fields are never read (the CRD admits them). Ours refused the whole
    NVIDIADriver ("set repository, image and version together"): an upstream YAML drove no node. An enabled one
    still needs them together."""
    objs = drivers_objects(("default", {"default": True, **sidecar}))
    ds = daemonset(render_all(parse_spec(crd_policy()), [facts("a1")], nvidia_drivers=objs),
                   "nvidia-driver-daemonset-ubuntu22.04")  # fmt: skip
    assert [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]] == ["nvidia-driver-ctr"]
    (name, section), = sidecar.items()
    with pytest.raises(ValueError, match=f"spec.{name}: image: set repository, image and version together"):
        nvidiadriver_api.parse_spec({name: {**section, "enabled": True}})


def test_an_nvidiadriver_whose_secret_env_secret_is_missing_is_held() -> None:
    """controllers/nvidiadriver_controller.go: "ensure that the specified K8s secret actually exists in the
    operator namespace", else ReconcileFailed; its DaemonSets are left as they are."""
    objs = drivers_objects(("default", {"default": True}),
                           ("pool-b", {"nodeSelector": {"pool": "b"}, "secretEnv": "no-such-secret"}))
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    plans = render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs,
                       missing_secrets=frozenset({"no-such-secret"}))
    driver_plan = next(p for p in plans if p.state.name == "state-driver")
    assert driver_plan.held == {
        "uid-pool-b": "NVIDIADriver pool-b: Secret no-such-secret (secretEnv) not found in namespace gpu-operator"}
    assert [d["metadata"]["name"] for d in daemonsets([driver_plan])] == ["nvidia-driver-daemonset-ubuntu22.04"]


def test_an_nvidiadriver_whose_licensing_secret_is_missing_is_held() -> None:
    """Its licensingConfig.secretName is a Secret volume of its driver pods: read by name as secretEnv's, and a
    missing one holds that NVIDIADriver's DaemonSets only (beyond upstream, which mounts it unchecked)."""
    from gpu_operator.render import driver_routing
    from gpu_operator.states.driver import named_secrets

    objs = drivers_objects(("default", {"default": True}),
                           ("pool-b", {"nodeSelector": {"pool": "b"}, "licensingConfig": {"secretName": "gone"}}))
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    groups = driver_routing(nodes, parse_spec(crd_policy()), [NVIDIADriver.from_object(o) for o in objs]).groups
    assert named_secrets(parse_spec(crd_policy()), groups) == {"gone"}
    plans = render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objs, missing_secrets=frozenset({"gone"}))
    driver_plan = next(p for p in plans if p.state.name == "state-driver")
    assert driver_plan.held == {
        "uid-pool-b": "NVIDIADriver pool-b: Secret gone (licensingConfig.secretName) not found in namespace "
        "gpu-operator"}
    assert [d["metadata"]["name"] for d in daemonsets([driver_plan])] == ["nvidia-driver-daemonset-ubuntu22.04"]


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ({"repoConfig": {"name": "missing-cm"}}, "repoConfig.name"),
        ({"certConfig": {"name": "missing-cm"}}, "certConfig.name"),
        ({"kernelModuleConfig": {"name": "missing-cm"}}, "kernelModuleConfig.name"),
        ({"licensingConfig": {"name": "missing-cm"}}, "licensingConfig.name"),
    ],
)
def test_an_nvidiadriver_held_for_a_missing_config_map_is_told_its_own_field(field: dict[str, Any],
                                                                            path: str) -> None:
    """The hold named the ClusterPolicy's field (driver.repoConfig.configMapName, driver.certConfig.name,
    driver.kernelModuleConfig.name), which an NVIDIADriver does not have: its fields are repoConfig.name and so on
    (nvidiadriver_types.go), as secretEnv's hold already said."""
    objs = drivers_objects(("team-a", {"default": True, **field}))
    plans = render_all(parse_spec(crd_policy()), [facts("n1")], nvidia_drivers=objs, config_maps={})
    driver_plan = next(p for p in plans if p.state.name == "state-driver")
    assert driver_plan.held == {
        "uid-team-a": f"NVIDIADriver team-a: ConfigMap missing-cm ({path}) not found in namespace gpu-operator"}
    if path in ("repoConfig.name", "certConfig.name"):  # an OS without a repo (or certificate) directory
        plans = render_all(parse_spec(crd_policy()), [facts("n1", os=("flatcar", "3975"))], nvidia_drivers=objs,
                           config_maps={"missing-cm": ()})  # fmt: skip
        held = next(p for p in plans if p.state.name == "state-driver").held["uid-team-a"]
        assert held.startswith(f"NVIDIADriver team-a: {path}: not supported for the OS flatcar"), held


def test_a_pass_reads_only_the_named_secret_env_secrets() -> None:
    """The Secret is read by name (a Role's `get`), never listed: listing would read every Secret's data."""
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    class Kube(EchoKube):
        def __init__(self, present: set[str], denied: set[str] = frozenset()) -> None:  # type: ignore[assignment]
            super().__init__()
            self.present, self.denied, self.reads = present, denied, []

        def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            self.reads.append((kind, name, namespace))
            if kind == "Secret" and name in self.denied:
                raise ApiError(403, "forbidden", "GET secret", "Forbidden")
            return {} if kind != "Secret" or name in self.present else None

        def list(self, kind: str, *a: Any, **k: Any) -> list[dict[str, Any]]:
            assert kind != "Secret"
            return []

    policy = policy_object(crd_policy())
    objs = drivers_objects(("default", {"default": True, "secretEnv": "here"}),
                           ("pool-b", {"nodeSelector": {"pool": "b"}, "secretEnv": "gone"}))
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d} for d in objs}
    nodes = {n.name: n for n in (facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"}))}

    def state_driver(kube: Kube, reconciler: Reconciler | None = None) -> dict[str, Any]:
        snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy}, owned={}, pods={}, revisions={},
                        nvidia_drivers=drivers)  # fmt: skip
        (reconciler or Reconciler(kube, "gpu-operator")).reconcile(snap)  # type: ignore[arg-type]
        states = kube.statuses[("ClusterPolicy", "cluster-policy")]["states"]
        return next(st for st in states if st["name"] == "state-driver")

    kube = Kube({"here"})
    state = state_driver(kube)
    assert sorted(r for r in kube.reads if r[0] == "Secret") == [("Secret", "gone", "gpu-operator"),
                                                                 ("Secret", "here", "gpu-operator")]  # fmt: skip
    assert "Secret gone (secretEnv) not found" in state["message"] and "Secret here" not in state["message"]
    assert "secretEnv" not in state_driver(Kube({"here", "gone"}))["message"]
    # Not allowed to read it: not checked (rendered, as before there was a check).
    assert "secretEnv" not in state_driver(Kube({"here"}, denied={"gone"}))["message"]
    # A pass of a rollout reads again only the missing one; the one found is read again after SECRET_RECHECK_S.
    kube = Kube({"here"})
    reconciler = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    state_driver(kube, reconciler)
    state_driver(kube, reconciler)
    assert [r[1] for r in kube.reads if r[0] == "Secret"] == ["gone", "here", "gone"]


def test_node_patches_carry_the_owner_and_the_nvidiadrivers_auto_upgrade() -> None:
    from gpu_operator.render import driver_node_patches, driver_routing, kept_driver_patches

    spec = parse_spec(crd_policy())
    node = facts("b1", labels={"pool": "b", "nvidia.com/gpu.present": "true"})
    drivers = [nvd("pool-b", nodeSelector={"pool": "b"}, upgradePolicy={"autoUpgrade": False}),
               nvd("default", default=True)]  # fmt: skip
    kept, routes = kept_driver_patches(), nvidiadriver.KeptRouting()

    def patch() -> dict[str, Any]:
        routing = driver_routing([node], spec, drivers, routes)
        fresh = driver_node_patches([node], spec, driver_routing([node], spec, drivers))
        assert driver_node_patches([node], spec, routing, kept=kept) == fresh  # what a pass keeps: the same
        return fresh["b1"]

    assert patch() == {"labels": {OWNER_LABEL: "pool-b"}}  # autoUpgrade false and no annotation yet
    drivers[0] = nvd("pool-b", nodeSelector={"pool": "b"})  # upstream's default: autoUpgrade true
    assert patch() == {"labels": {OWNER_LABEL: "pool-b"}, "annotations": {UPGRADE_ENABLED_ANNOTATION: "true"}}
    node = facts("b1", labels={"pool": "b", "nvidia.com/gpu.present": "true", OWNER_LABEL: "pool-b"})
    assert patch() == {"annotations": {UPGRADE_ENABLED_ANNOTATION: "true"}}
    obj = support_node("b1", labels={"pool": "a", "nvidia.com/gpu.present": "true", OWNER_LABEL: "pool-b"})
    obj["metadata"]["annotations"] = {UPGRADE_ENABLED_ANNOTATION: "true"}
    node = NodeFacts.from_node(obj)
    assert patch() == {"labels": {OWNER_LABEL: None}}  # the default's now, whose autoUpgrade is on too
    drivers[1] = nvd("default", default=True, upgradePolicy={"autoUpgrade": False})
    assert patch() == {"labels": {OWNER_LABEL: None}, "annotations": {UPGRADE_ENABLED_ANNOTATION: None}}


def test_a_pass_gets_the_same_group_spec_while_neither_spec_changes() -> None:
    # What is worked out once per node and spec (verdicts, upgrade inputs) carries over between passes only while a
    # group's spec is the same object.
    spec = parse_spec(crd_policy())
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}, version="580.95.05")]
    kept: nvidiadriver.KeptSpecs = {}
    first = {g.name: g.spec for g in nvidiadriver.groups(spec, drivers, assign(NODES, drivers), kept)}
    again = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}, version="580.95.05")]
    second = {g.name: g.spec for g in nvidiadriver.groups(spec, again, assign(NODES, again), kept)}
    assert all(second[name] is first[name] for name in first)  # parsed anew, equal: the same objects
    again[1] = nvd("pool-b", nodeSelector={"pool": "b"}, version="580.105.08")
    third = {g.name: g.spec for g in nvidiadriver.groups(spec, again, assign(NODES, again), kept)}
    assert third["default"] is first["default"] and third["pool-b"] is not first["pool-b"]
    assert third["pool-b"].driver.version == "580.105.08"
    other = parse_spec(crd_policy())  # a new ClusterPolicy spec (the policy changed): every group's spec anew
    fourth = {g.name: g.spec for g in nvidiadriver.groups(other, again, assign(NODES, again), kept)}
    assert all(fourth[name] is not third[name] for name in third)
    assert nvidiadriver.groups(other, again, assign(NODES, again))[0].spec is not fourth["default"]  # no `kept`


def test_the_kept_group_specs_drop_a_deleted_nvidiadriver() -> None:
    """KeptRouting.specs (each NVIDIADriver's spec as a ClusterPolicy spec, kept between calls) kept an entry for
    every NVIDIADriver ever seen, deleted ones too, in the reconciler's and in the runtime's for joining nodes; now
    only those of the NVIDIADrivers grouped by the last call."""
    spec = parse_spec(crd_policy())
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]
    kept: nvidiadriver.KeptSpecs = {}
    nvidiadriver.groups(spec, drivers, assign(NODES, drivers), kept)
    assert set(kept) == {"default", "pool-b"}
    left = drivers[:1]  # pool-b deleted
    [group] = nvidiadriver.groups(spec, left, assign(NODES, left), kept)
    assert set(kept) == {"default"} and kept["default"][2] is group.spec


def test_a_kept_routing_is_the_same_object_while_it_stays_equal() -> None:
    # What a pass keeps per node under NVIDIADrivers (driver metadata, verdicts) is keyed on the routing object.
    from gpu_operator.render import driver_routing

    spec, kept = parse_spec(crd_policy()), nvidiadriver.KeptRouting()
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]
    first = driver_routing(NODES, spec, drivers, kept)
    again = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]
    assert driver_routing(list(NODES), spec, again, kept) is first
    moved = [facts("a1", labels={"pool": "b"}), *NODES[1:]]
    second = driver_routing(moved, spec, again, kept)
    assert second is not first and second.assignment is not None and second.assignment.owner["a1"] == "pool-b"
    assert second.spec_of("a1") is second.spec_of("b1") is not None and second.spec_of("cpu") is None
    assert driver_routing(moved, spec, again, kept) is second


def test_kept_routes_give_what_a_fresh_assign_gives_as_nodes_and_selectors_change() -> None:
    # A pass keeps each node's route (KeptRouting) and works it out again for the nodes that changed, or for all when
    # a nodeSelector changed: every step below must route as a fresh assign does.
    kept = nvidiadriver.KeptRouting()
    nodes = {n.name: n for n in NODES}
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}),
               nvd("rack", nodeSelector={"rack": "r7"})]  # fmt: skip

    def same() -> nvidiadriver.Assignment:
        got, fresh = assign(list(nodes.values()), drivers, kept), assign(list(nodes.values()), drivers)
        assert got == fresh
        return got

    assert same().conflicts == {"pool-b": ["b2"], "rack": ["b2"]}
    nodes["b2"] = facts("b2", labels={"pool": "b", "rack": "r7", OWNER_LABEL: "rack"})  # the node changed
    assert same().owner["b2"] == "rack"
    nodes["a1"] = facts("a1", labels={"pool": "b"})
    assert same().owner["a1"] == "pool-b"
    drivers[2] = nvd("rack", nodeSelector={"rack": "r9"})  # a selector changed: the same node objects
    found = same()
    assert found.owner["b2"] == "pool-b" and not found.conflicts
    drivers = drivers[:2]  # one NVIDIADriver gone
    del nodes["b1"]  # and a node
    assert same().owner == {"a1": "pool-b", "b2": "pool-b"}
    drivers[1] = nvd("pool-b", nodeSelector={"pool": "b"}, version="580.95.05")  # another spec, the same selector
    assert same().owner == {"a1": "pool-b", "b2": "pool-b"}


def test_a_kept_assignment_is_given_again_only_while_what_it_is_made_of_is_equal() -> None:
    # A pass keeps the assignment (and what is worked out from it once: each NVIDIADriver's nodes) while the routes,
    # the default and the problems are equal; a change of any of them with the same routes assigns anew.
    kept = nvidiadriver.KeptRouting()
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]

    def same() -> nvidiadriver.Assignment:
        got, fresh = assign(NODES, drivers, kept), assign(NODES, drivers)
        assert got == fresh
        assert all(got.nodes_of(d.name) == fresh.nodes_of(d.name) for d in drivers)
        return got

    first = same()
    assert first.nodes_of("default") == ["a1"] and first.node_set("pool-b") == {"b1", "b2"}
    drivers = [nvd("default", default=True), nvd("pool-b", nodeSelector={"pool": "b"}, version="580.95.05")]
    assert same() is first  # another spec, the same routes
    drivers = [nvd("pool-b", nodeSelector={"pool": "b"})]  # the default gone: a1 loses its driver
    second = same()
    assert second is not first and second.owner == {"b1": "pool-b", "b2": "pool-b"}
    drivers = [nvd("one", default=True), nvd("two", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]
    third = same()  # two defaults: the first by name stays (no creation times here), the same routes
    assert third is not second and set(third.problems) == {"two"}
    drivers = [nvd("one", default=True), nvd("pool-b", nodeSelector={"pool": "b"})]
    assert same().owner == {"a1": "one", "b1": "pool-b", "b2": "pool-b"}
    assert same().nodes_of("one") == ["a1"]


def test_nvidiadrivers_coming_and_going_leave_the_defaults_pod_template_alone() -> None:
    """The default's DaemonSets (and the ClusterPolicy's) always avoid owned nodes: a template that changed when a
    first non-default NVIDIADriver came (or the last went) made every default node's driver out of date, and the
    upgrade restarted the driver on all of them."""
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    spec = parse_spec(crd_policy())

    def templates(*drivers: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        plans = render_all(spec, nodes, nvidia_drivers=drivers_objects(*drivers))
        return {d["metadata"]["name"]: d["spec"]["template"] for d in daemonsets(plans)
                if d["metadata"]["name"].startswith("nvidia-driver-daemonset-ubuntu")}  # fmt: skip

    alone = templates(("default", {"default": True}))
    assert alone and alone == templates(("default", {"default": True}), ("pool-b", {"nodeSelector": {"pool": "b"}}))
    assert alone == templates(("default", {"default": True}), ("x", {"nodeSelector": {"pool": "b"}}),
                              ("y", {"nodeSelector": {"pool": "b"}}))  # a conflict: the same  # fmt: skip
    unowned = [{"matchExpressions": [{"key": OWNER_LABEL, "operator": "DoesNotExist"}]}]
    for template in alone.values():
        required = template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required["nodeSelectorTerms"] == unowned
    # The ClusterPolicy's own driver carries the same term, so switching useNvidiaDriverCRD on changes nothing.
    plans = render_all(parse_spec(load_policy()["spec"]), nodes)
    own = {d["metadata"]["name"]: d["spec"]["template"] for d in daemonsets(plans)
           if d["metadata"]["name"].startswith("nvidia-driver-daemonset-ubuntu")}  # fmt: skip
    assert own.keys() == alone.keys()
    assert all(own[name]["spec"]["affinity"] == alone[name]["spec"]["affinity"] for name in own)


CP_DS = "nvidia-driver-daemonset-ubuntu22.04"  # the ClusterPolicy's driver DaemonSet of the nodes below


class DeleteRecordingKube(EchoKube):
    """Records node patches, applies and deletes in order, a delete with its body (None: the client's default,
    Background, by which a DaemonSet's pods go with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.calls.append(("apply", copy.deepcopy(obj)))
        return obj

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if kind == "Node":
            self.calls.append(("node", (name, copy.deepcopy(patch))))
            return support_node(name)
        return super().merge_patch(kind, name, patch, *a, **k)

    def delete(self, kind: str, name: str, namespace: str | None = None, body: dict[str, Any] | None = None,
               *_: Any, **__: Any) -> bool:  # fmt: skip
        self.calls.append(("delete", (kind, name, body)))
        return True

    def deletes(self, name: str) -> list[tuple[int, dict[str, Any] | None]]:
        return [(i, what[2]) for i, (verb, what) in enumerate(self.calls) if verb == "delete" and what[:2] == (
            "DaemonSet", name)]  # fmt: skip

    def node_patches(self, key: str) -> dict[str, list[tuple[int, Any]]]:
        """Node -> (call number, value) of each patch of the label or spec field `key`."""
        out: dict[str, list[tuple[int, Any]]] = {}
        for i, (verb, what) in enumerate(self.calls):
            if verb == "node":
                name, patch = what
                for part in ((patch.get("metadata") or {}).get("labels") or {}, patch.get("spec") or {}):
                    if key in part:
                        out.setdefault(name, []).append((i, part[key]))
        return out


def _switch_pass(nodes: list[NodeFacts], policy: dict[str, Any], drivers: dict[str, dict[str, Any]],
                 owned: dict[Any, dict[str, Any]], pods: dict[str, dict[str, Any]] | None = None,
                 ) -> tuple[DeleteRecordingKube, dict[Any, Any]]:  # fmt: skip
    """One pass; the kube's record, and our objects as the pass leaves them."""
    from gpu_operator.observe import Snapshot, key_of
    from gpu_operator.reconciler import Reconciler

    kube = DeleteRecordingKube()
    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy_object(policy)},
                    owned=owned, pods=pods or {}, revisions={}, nvidia_drivers=drivers)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    gone = {("DaemonSet", "gpu-operator", what[1]) for verb, what in kube.calls if verb == "delete"}
    left = {k: o for k, o in owned.items() if k not in gone}
    left.update({key_of(o): o for verb, o in kube.calls if verb == "apply"})
    return kube, left


def _nvd_objects(**specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
                   "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1,
                                "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
            for name, spec in specs.items()}  # fmt: skip


def _orphans(nodes: list[str], pool: str = "ubuntu22.04") -> dict[str, dict[str, Any]]:
    """Driver pod projections whose DaemonSet was deleted with propagationPolicy Orphan (no owner any more)."""
    from gpu_operator.nodes import POOL_LABEL
    from gpu_operator.states.base import STATE_LABEL as OPERAND_STATE

    ready = [{"name": "nvidia-driver-ctr", "ready": True, "restartCount": 0}]
    return {f"drv-{n}": {"metadata": {"name": f"drv-{n}", "labels": {"controller-revision-hash": "h1",
                                                                     OPERAND_STATE: "state-driver", POOL_LABEL: pool}},
                         "node": n, "owner": "", "status": {"phase": "Running", "containerStatuses": ready},
                         "ready": True} for n in nodes}  # fmt: skip


def _cluster_policy_cluster() -> tuple[list[NodeFacts], dict[Any, dict[str, Any]]]:
    """Two GPU nodes and what a pass under the ClusterPolicy's own driver leaves in the cluster."""
    from gpu_operator.upgrade.model import STATE_LABEL

    nodes = [facts(n, labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"})
             for n in ("a1", "a2")]  # fmt: skip
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    assert ("DaemonSet", "gpu-operator", CP_DS) in owned
    return nodes, owned


def test_switching_to_non_default_nvidiadrivers_keeps_the_driver_pods_and_the_upgrade_replaces_them() -> None:
    """useNvidiaDriverCRD false -> true with an NVIDIADriver that is not the default (chart deployDefaultCR false,
    per-pool NVIDIADrivers): the ClusterPolicy's driver DaemonSet was deleted with the client's default propagation
    (Background), and the owner label went out before the delete (the old DaemonSet avoids owned nodes, so it
    dropped their pods itself): every node's driver pod went at once, with no cordon, no drain, no
    maxParallelUpgrades. Now, as upstream (state_manager.go: cleanupAllDriverDaemonSets with
    DeletePropagationOrphan), it is deleted with propagationPolicy Orphan before the owner labels, and the next pass
    takes a driver pod no DaemonSet owns (as labelNodesWithOrphanedDriverPods) through the upgrade state machine:
    upgrade-required, started within maxParallelUpgrades (1 here), its orphan deleted at pod restart."""
    from gpu_operator.api import DriverUpgradePolicySpec
    from gpu_operator.upgrade import STATE_LABEL, DeleteDriverPod, UpgradeNode, plan

    nodes, owned = _cluster_policy_cluster()
    drivers = _nvd_objects(all={"version": "580.95.05"})
    kube, left = _switch_pass(nodes, crd_policy(), drivers, owned)
    ((at, body),) = kube.deletes(CP_DS)
    assert body == {"propagationPolicy": "Orphan"}, f"deleted with {body or 'Background (the default)'}"
    owners = kube.node_patches(OWNER_LABEL)
    assert set(owners) == {"a1", "a2"} and min(i for ones in owners.values() for i, _ in ones) > at
    # The garbage collector took the pods' owner reference off: the next pass replaces them, in order.
    relabelled = [facts(n.name, labels={**n.labels, OWNER_LABEL: "all"}) for n in nodes]
    kube, _ = _switch_pass(relabelled, crd_policy(), drivers, left, _orphans(["a1", "a2"]))
    states = {n: [v for _, v in ones] for n, ones in kube.node_patches(STATE_LABEL).items()}
    assert states == {"a1": ["wait-for-jobs-required"], "a2": ["upgrade-required"]}, states
    assert list(kube.node_patches("unschedulable")) == ["a1"]  # maxParallelUpgrades 1
    assert not [c for c in kube.calls if c[0] == "delete"]  # the pods wait for their turn (pod deletion first)
    # At pod restart the orphan is deleted; the new DaemonSet's pod, Pending (podAntiAffinity) until then, starts.
    pod = _orphans(["a1"])["drv-a1"]
    node = UpgradeNode("a1", labels={STATE_LABEL: "pod-restart-required"}, unschedulable=True, driver_pod=pod,
                       orphaned=True)  # fmt: skip
    assert DeleteDriverPod("a1", "drv-a1") in plan([node], [], DriverUpgradePolicySpec(auto_upgrade=True), 0.0).actions


def test_an_nvidiadriver_whose_spec_turns_invalid_keeps_its_daemonsets_and_nodes() -> None:
    """An NVIDIADriver edited to a spec the API server admits but the operator refuses (requests above limits:
    the CRD has no such rule) was dropped from the routing: its DaemonSet deleted with Background propagation (every
    driver pod of it at once, no cordon or drain) and its nodes' owner label removed (handed to the default).
    Upstream changes nothing: the API server refuses the DaemonSet update (ReconcileFailed, the old DaemonSet stays)
    and AssignOwners moves no label; ours holds a ClusterPolicy with an invalid spec, and an NVIDIADriver whose
    DaemonSets cannot be rendered (PartialRender), the same way."""
    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true"}),
             facts("b1", labels={"nvidia.com/gpu.deploy.driver": "true", "pool": "b"})]  # fmt: skip
    good = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "b"}})
    _, owned = _switch_pass(nodes, crd_policy(), good, {})
    mine = "nvidia-driver-daemonset-x-ubuntu22.04"
    assert ("DaemonSet", "gpu-operator", mine) in owned
    nodes = [nodes[0], facts("b1", labels={**nodes[1].labels, OWNER_LABEL: "x"})]
    bad = copy.deepcopy(good)
    bad["x"]["spec"]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    bad["x"]["metadata"]["generation"] = 2
    kube, _ = _switch_pass(nodes, crd_policy(), bad, owned)
    assert kube.deletes(mine) == [], "its DaemonSet deleted (with every driver pod of it)"
    assert kube.node_patches(OWNER_LABEL) == {}, "its node handed to the default"
    status = kube.statuses[("NVIDIADriver", "x")]
    assert status["state"] == "notReady" and "spec.resources" in status["conditions"][0]["message"]
    assert status["nodes"] == 1  # b1 keeps its driver


def test_an_nvidiadriver_whose_spec_turns_invalid_keeps_its_nodes_upgrade_state() -> None:
    """Its nodes keep their owner label (above), but were left out of the assignment's owners, so the pass took them
    as nodes no NVIDIADriver drives and let their upgrade go: b1, cordoned mid-upgrade (drain-required), was
    uncordoned with its driver not replaced, and b2 lost its upgrade-done state, each with "its NVIDIADriver let go of
    the node". Upstream's upgrade controller (reconcileNVIDIADriverUpgrades) buckets nodes by their owner label and
    goes on whatever the NVIDIADriver controller's reconcile says; here nothing changes until the spec is fixed."""
    from dataclasses import replace

    from gpu_operator.upgrade.model import STATE_LABEL

    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}),
             facts("b1", labels={"nvidia.com/gpu.deploy.driver": "true", "pool": "b"}),
             facts("b2", labels={"nvidia.com/gpu.deploy.driver": "true", "pool": "b"})]  # fmt: skip
    good = _nvd_objects(default={"default": True},
                        x={"nodeSelector": {"pool": "b"}, "upgradePolicy": {"autoUpgrade": True}})  # fmt: skip
    _, owned = _switch_pass(nodes, crd_policy(), good, {})
    nodes = [nodes[0],
             replace(facts("b1", labels={**nodes[1].labels, OWNER_LABEL: "x", STATE_LABEL: "drain-required"}),
                     unschedulable=True),
             facts("b2", labels={**nodes[2].labels, OWNER_LABEL: "x", STATE_LABEL: "upgrade-done"})]  # fmt: skip
    bad = copy.deepcopy(good)
    bad["x"]["spec"]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    bad["x"]["metadata"]["generation"] = 2
    kube, _ = _switch_pass(nodes, crd_policy(), bad, owned)
    assert "b1" not in kube.node_patches("unschedulable"), "b1 uncordoned mid-upgrade though its driver is held"
    assert kube.node_patches(STATE_LABEL) == {}, "the held nodes' upgrade states were let go"
    assert kube.node_patches(OWNER_LABEL) == {}


def test_a_pass_that_sees_useNvidiaDriverCRD_before_the_default_nvidiadriver_restarts_no_driver_pod() -> None:
    """helm upgrade --set driver.nvidiaDriverCRD.enabled=true changes the ClusterPolicy and creates the default
    NVIDIADriver in one release; a pass that read the ClusterPolicy first (no NVIDIADriver yet) pruned every
    ClusterPolicy driver DaemonSet with Background propagation: every driver pod in the cluster deleted at once, to
    be recreated a pass later under the default's DaemonSets of the same names. Now they are orphaned, and the
    default's DaemonSet of the same name and selector adopts them (the same template: nothing restarts): the
    upgrade leaves an orphan of a pool a DaemonSet of ours serves alone."""
    from gpu_operator.upgrade.model import STATE_LABEL

    nodes, owned = _cluster_policy_cluster()
    kube, left = _switch_pass(nodes, crd_policy(), {}, owned)
    ((_, body),) = kube.deletes(CP_DS)
    assert body == {"propagationPolicy": "Orphan"}, f"deleted with {body or 'Background (the default)'}"
    assert ("DaemonSet", "gpu-operator", CP_DS) not in left
    # The next pass sees the default NVIDIADriver and the orphans: its DaemonSet of that name is created again.
    kube, _ = _switch_pass(nodes, crd_policy(), _nvd_objects(default={"default": True}), left, _orphans(["a1", "a2"]))
    assert [o["metadata"]["name"] for verb, o in kube.calls if verb == "apply" and o["kind"] == "DaemonSet"
            and o["metadata"]["name"] == CP_DS]  # fmt: skip
    assert not [c for c in kube.calls if c[0] == "delete"]
    assert not kube.node_patches("unschedulable")
    assert all(v != "upgrade-required" for ones in kube.node_patches(STATE_LABEL).values() for _, v in ones)


def test_an_orphan_on_a_node_its_pools_daemonset_does_not_run_on_is_replaced_by_the_upgrade() -> None:
    """As above, but the pass after the orphaning sees the default NVIDIADriver and a non-default one that takes a2
    of the same OS pool. An orphan counted as adopted by its pool label alone: the default's DaemonSet of that pool
    exists, so a2's orphan was not `orphaned` and the upgrade left a2 alone. But that DaemonSet avoids owned nodes:
    the DaemonSet controller adopts the orphan (its selector, app + pool, matches; adoption does not look at the
    node) and deletes it at once, with no cordon or drain. Now an orphan is adopted only by a DaemonSet of the
    NVIDIADriver that drives its node; any other goes through the upgrade (upstream:
    labelNodesWithOrphanedDriverPods)."""
    from gpu_operator.upgrade.model import STATE_LABEL

    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}),
             facts("a2", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done", "pool": "x"})]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    kube, left = _switch_pass(nodes, crd_policy(), {}, owned)  # no NVIDIADriver yet: orphaned
    assert [body for _, body in kube.deletes(CP_DS)] == [{"propagationPolicy": "Orphan"}]
    drivers = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "x"}})
    relabelled = [nodes[0], facts("a2", labels={**nodes[1].labels, OWNER_LABEL: "x"})]
    kube, left = _switch_pass(relabelled, crd_policy(), drivers, left, _orphans(["a1", "a2"]))
    assert ("DaemonSet", "gpu-operator", CP_DS) in left  # the default's, of the orphans' pool: it adopts them
    states = {n: [v for _, v in ones] for n, ones in kube.node_patches(STATE_LABEL).items()}
    assert "a1" not in states  # a1's orphan is adopted, and kept running there
    assert states.get("a2") in (["upgrade-required"], ["wait-for-jobs-required"]), states
    # From a2 without the owner label (x's autoUpgrade on): the label waits for the upgrade's pod restart, so the
    # default's DaemonSet, which adopts the orphan, keeps it running there meanwhile.
    kube, _ = _switch_pass(nodes, crd_policy(), drivers, left, _orphans(["a1", "a2"]))
    assert not kube.node_patches(OWNER_LABEL)
    assert [v for _, v in kube.node_patches(STATE_LABEL)["a2"]] == ["wait-for-jobs-required"]


def test_a_node_a_non_default_nvidiadriver_takes_from_the_default_moves_at_its_driver_pods_restart() -> None:
    """useNvidiaDriverCRD false -> true with the default NVIDIADriver and a non-default one that takes a2 of the same
    OS pool. The default renders the ClusterPolicy's DaemonSet name for that pool, so that DaemonSet is kept,
    re-owned by the default, and avoids owned nodes: a2 got its owner label in the same pass, with no upgrade state
    and no cordon, and the DaemonSet controller deleted its running driver pod at once (no cordon, no drain, no
    maxParallelUpgrades). Now, under the new NVIDIADriver's autoUpgrade, a node whose driver pod runs keeps its
    owner label: it goes through the upgrade as one whose driver is out of date, and its owner label moves in the
    patch before its driver pod's deletion, cordoned and drained by then (as a precompiled node's kernel pool)."""
    from dataclasses import replace

    from gpu_operator.api import DriverUpgradePolicySpec
    from gpu_operator.observe import Snapshot
    from gpu_operator.readiness import daemon_node_count
    from gpu_operator.upgrade import DeleteDriverPod, MoveOwner, UpgradeNode, plan
    from gpu_operator.upgrade.adapter import managed_nodes
    from gpu_operator.upgrade.model import STATE_LABEL

    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}),
             facts("a2", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done", "pool": "x"})]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    pods = {name: {**pod, "owner": CP_DS} for name, pod in _orphans(["a1", "a2"]).items()}  # running, CP_DS's
    drivers = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "x"}})
    kube, left = _switch_pass(nodes, crd_policy(), drivers, owned, pods)
    assert not kube.node_patches(OWNER_LABEL), "a2's owner label moved while its driver pod runs"
    kept = left[("DaemonSet", "gpu-operator", CP_DS)]  # the default's now
    assert daemon_node_count(kept["spec"]["template"]["spec"], [nodes[1]]) == 1  # still runs a2's pod
    states = {n: [v for _, v in ones] for n, ones in kube.node_patches(STATE_LABEL).items()}
    assert states == {"a2": ["wait-for-jobs-required"]}, states  # started: upgrade-required, cordoned, ...
    assert [v for _, v in kube.node_patches("unschedulable")["a2"]] == [True]
    # At pod restart (x's upgrade, by its spec) the owner label goes in the node's patch before the pod's deletion.
    restarting = replace(nodes[1], labels={**nodes[1].labels, STATE_LABEL: "pod-restart-required"})
    snap = Snapshot(nodes={"a2": restarting}, policies={}, owned=left, pods=pods, revisions={})
    (node,) = managed_nodes(parse_spec(load_policy()["spec"]), snap, owner=("uid-x", "x"))
    assert isinstance(node, UpgradeNode) and node.owner_move == "x"
    actions = plan([node], [], DriverUpgradePolicySpec(auto_upgrade=True), 0.0).actions
    moves = [a for a in actions if isinstance(a, MoveOwner | DeleteDriverPod)]
    assert moves == [MoveOwner("a2", "x"), DeleteDriverPod("a2", "drv-a2")]
    # Back to the default: the label is removed. Under x's autoUpgrade off the label moves at once (nothing upgrades).
    from gpu_operator.render import driver_node_patches, driver_routing
    from gpu_operator.upgrade.adapter import _merge

    patch: dict[str, Any] = {}
    assert _merge(patch, MoveOwner("a2", "")) and patch == {"metadata": {"labels": {OWNER_LABEL: None}}}
    off = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "x"}, "upgradePolicy": {
        "autoUpgrade": False}})  # fmt: skip
    routing = driver_routing(nodes, parse_spec(crd_policy()), [NVIDIADriver.from_object(o) for o in off.values()])
    assert driver_node_patches(nodes, parse_spec(crd_policy()), routing, {"a1", "a2"})["a2"]["labels"] == {
        OWNER_LABEL: "x"}  # fmt: skip


def test_switching_back_orphans_the_nvidiadrivers_daemonsets_and_switching_the_driver_off_deletes_them() -> None:
    """useNvidiaDriverCRD true -> false hands the driver back the same way: a non-default NVIDIADriver's DaemonSets
    are deleted with their pods left running, before the owner labels go (the ClusterPolicy's DaemonSet then takes
    the nodes, its pods Pending until the upgrade replaces the orphans). The ClusterPolicy's driver switched off
    (driver.enabled false) still deletes its DaemonSets with their pods: no driver is wanted."""
    nodes, owned = _cluster_policy_cluster()
    drivers = _nvd_objects(all={"version": "580.95.05"})
    _, left = _switch_pass(nodes, crd_policy(), drivers, owned)
    theirs = "nvidia-driver-daemonset-all-ubuntu22.04"
    assert ("DaemonSet", "gpu-operator", theirs) in left
    owned_nodes = [facts(n.name, labels={**n.labels, OWNER_LABEL: "all"}) for n in nodes]
    kube, _ = _switch_pass(owned_nodes, copy.deepcopy(load_policy()["spec"]), drivers, left)
    ((at, body),) = kube.deletes(theirs)
    assert body == {"propagationPolicy": "Orphan"}
    removed = kube.node_patches(OWNER_LABEL)
    assert set(removed) == {"a1", "a2"} and all(i > at and v is None for ones in removed.values() for i, v in ones)
    off = copy.deepcopy(load_policy()["spec"])
    off["driver"]["enabled"] = False
    kube, _ = _switch_pass(nodes, off, {}, owned)
    ((_, body),) = kube.deletes(CP_DS)
    assert body is None


def test_a_selector_on_gpu_present_matches_gpu_nodes_before_they_carry_the_label() -> None:
    drivers = [nvd("gpus", nodeSelector={"nvidia.com/gpu.present": "true", "pool": "b"})]
    assert assign(NODES, drivers).owner == {"b1": "gpus", "b2": "gpus"}  # not the CPU node of pool b
    unlabelled = [nvd("off", nodeSelector={"nvidia.com/gpu.present": "false"})]
    assert assign(NODES, unlabelled).owner == {}


@pytest.mark.parametrize(
    ("spec", "image"),
    [
        ({"version": "580.95.05"}, "nvcr.io/nvidia/driver:580.95.05"),
        ({"repository": "r.example/nv", "image": "driver", "version": "570.1"}, "r.example/nv/driver:570.1"),
        ({"image": "r.example/driver@sha256:abc"}, "r.example/driver@sha256:abc"),
    ],
)
def test_image_fields(spec: dict[str, Any], image: str) -> None:
    from gpu_operator import images

    derived = nvidiadriver.cluster_spec(parse_spec({}), nvd("x", **spec).spec)  # type: ignore[arg-type]
    assert images.resolve(derived.driver, "driver") == image


def test_status_reports_conflicts_and_readiness() -> None:
    drivers = [nvd("pool-b", nodeSelector={"pool": "b"}), nvd("rack", nodeSelector={"rack": "r7"})]
    found = assign(NODES, drivers)
    status = nvidiadriver.driver_status(drivers[0], found, (True, ""), "gpu-operator", None, "t0")
    assert status["state"] == "notReady" and status["conflictingNodes"] == ["b2"]
    error = next(c for c in status["conditions"] if c["type"] == "Error")
    assert error["status"] == "True" and error["reason"] == "ConflictingNodeSelector"
    alone = assign(NODES, drivers[:1])
    status = nvidiadriver.driver_status(drivers[0], alone, (True, ""), "gpu-operator", None, "t0")
    assert status["state"] == "ready" and status["nodes"] == 2
    # Driver pods not ready: Ready False and Error True together, as the ClusterPolicy's (and upstream's).
    waiting = nvidiadriver.driver_status(drivers[0], alone, (False, "1 of 2 pods unavailable"), "gpu-operator",
                                         status, "t1")  # fmt: skip
    conditions = {c["type"]: c for c in waiting["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Error"]["status"]) == ("False", "True")
    error = conditions["Error"]
    assert error["reason"] == "DriverNotReady" and error["message"] == "1 of 2 pods unavailable"
    off = nvidiadriver.driver_status(drivers[0], None, None, "gpu-operator", None, "t0")
    assert off["state"] == "disabled"
    said = {c["type"]: c["message"] for c in off["conditions"]}
    assert said["Ready"] == "useNvidiaDriverCRD is not enabled in ClusterPolicy"


def test_node_affinity_is_kept_and_the_default_adds_its_exclusion_to_every_term() -> None:
    terms = [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
             {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]  # fmt: skip
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    drivers = [nvd("default", default=True, nodeAffinity=affinity), nvd("pool-b", nodeSelector={"pool": "b"})]
    found = assign(NODES, drivers)
    default, pool_b = sorted(nvidiadriver.groups(parse_spec({}), drivers, found), key=lambda g: not g.default)
    got = default.node_affinity()
    assert got is not None
    for term in got["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]:
        assert term["matchExpressions"][-1] == {"key": OWNER_LABEL, "operator": "DoesNotExist"}
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == terms  # not changed
    assert pool_b.node_affinity() is None


def test_unsupported_fields_are_named_in_the_status() -> None:
    driver = nvd("x", podSecurityContext={"runAsUser": 0})
    status = nvidiadriver.driver_status(driver, assign(NODES, [driver]), (True, ""), "ns", None, "t")
    cond = next(c for c in status["conditions"] if c["type"] == "UnsupportedFields")
    assert cond["status"] == "True" and "podSecurityContext" in cond["message"]


def test_nvidiadriver_gds_and_gdrcopy_args_are_named_as_unsupported() -> None:
    """The ClusterPolicy names gds.args and gdrcopy.args in UnsupportedFields (not passed to the sidecars, which
    run their images' entrypoints; upstream ignores them too). An NVIDIADriver's sidecars are rendered by the same
    code, but its UnsupportedFields did not name them: the args were dropped without a word."""
    driver = nvd("x", gds={"enabled": True, "args": ["--a"]}, gdrcopy={"enabled": True, "args": ["--b"]})
    status = nvidiadriver.driver_status(driver, assign(NODES, [driver]), (True, ""), "ns", None, "t")
    cond = next(c for c in status["conditions"] if c["type"] == "UnsupportedFields")
    assert "gds.args: not passed to the nvidia-fs sidecar" in cond["message"]
    assert "gdrcopy.args: not passed to the gdrcopy sidecar" in cond["message"]
    off = nvd("y", gds={"enabled": False, "args": ["--a"]})  # a sidecar not loaded: its args do nothing upstream either
    assert nvidiadriver.unsupported_fields(off.spec) == []


def test_a_condition_another_writer_set_on_an_nvidiadriver_stays_and_alone_makes_no_write() -> None:
    """An NVIDIADriver's status was built from our Ready, Error and UnsupportedFields alone and merge-patched whole:
    a condition of another type that another controller set was removed, and, being there, made every pass write.
    Upstream sets its own on the latest conditions (internal/conditions/nvidiadriver.go, meta.SetStatusCondition).
    Now it is sent back as it is, and alone is no change to write."""
    from gpu_operator.status_writer import StatusWriter
    from support import ServerKube

    foreign = {"type": "example.com/Audited", "status": "True", "reason": "PolicyChecked",
               "message": "checked by the audit controller", "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    driver = NVIDIADriver.from_object({"metadata": {"name": "default", "uid": "u", "generation": 1}, "spec": {}})
    obj = {"metadata": {"name": "default", "resourceVersion": "1"},
           "status": {"state": "disabled", "conditions": [foreign]}}  # fmt: skip
    kube = ServerKube({("NVIDIADriver", "default"): copy.deepcopy(obj)})
    writer = StatusWriter(kube, lambda *a, **k: None)  # type: ignore[arg-type]
    status = nvidiadriver.driver_status(driver, None, None, "gpu-operator", obj["status"], "t0")
    writer.write(obj, status, quiet=True, kind="NVIDIADriver")
    live = kube.objects[("NVIDIADriver", "default")]
    assert foreign in live["status"]["conditions"], [c["type"] for c in live["status"]["conditions"]]
    assert writer.write(live, nvidiadriver.driver_status(driver, None, None, "gpu-operator", live["status"], "t1"),
                        quiet=True, kind="NVIDIADriver")  # fmt: skip
    assert len(kube.written) == 1, "the other writer's condition alone is no change"


def test_crd_has_printer_columns_and_rules() -> None:
    crd = nvidiadriver_crd()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Status", "Default", "Nodes", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any("default NVIDIADriver" in r["message"] for r in spec["x-kubernetes-validations"])
    assert spec["properties"]["driverType"]["enum"] == ["gpu", "vgpu", "vgpu-host-manager"]


def test_crd_defaults_driver_type_and_default_as_upstream() -> None:
    """Upstream's CRD defaults driverType to gpu and default to false. Ours had no schema default: a CEL transition
    rule runs only when the field is in the old and the new object, so an NVIDIADriver created without driverType
    (gpu) could be updated to vgpu-host-manager, or one with vgpu have the field removed, past driverType's
    `self == oldSelf`; and `kubectl get nvd` showed <none> in the Default column. These two alone: the models'
    other defaults are how the operator reads unset fields, not what the API server stores."""
    spec = nvidiadriver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    driver_type = spec["properties"]["driverType"]
    assert driver_type["default"] == "gpu"
    assert driver_type["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert spec["properties"]["default"]["default"] is False

    def defaults(node: dict[str, Any], path: str) -> list[str]:
        here = [path] if "default" in node else []
        children = [(f"{path}.{k}", v) for k, v in (node.get("properties") or {}).items()]
        children += [(f"{path}[]", node["items"])] if isinstance(node.get("items"), dict) else []
        return here + [p for child_path, child in children for p in defaults(child, child_path)]

    assert defaults(spec, "spec") == ["spec.default", "spec.driverType"]


# Precompiled pools follow the kernel through the upgrade state machine (nodes.DRIVER_KERNEL).


def test_driver_kernel_label_follows_the_kernel_unless_held() -> None:
    from gpu_operator.nodes import DRIVER_KERNEL, driver_kernel_patch

    deploy = {"nvidia.com/gpu.deploy.driver": "true"}
    fresh = facts("c1", kernel="5.15.0-122-generic", labels=deploy)
    assert driver_kernel_patch(fresh, precompiled=True, hold=True) == {DRIVER_KERNEL: "5.15.0-122-generic"}
    moved = facts("c1", kernel="6.8.0-60-generic", labels={**deploy, DRIVER_KERNEL: "5.15.0-122-generic"})
    assert driver_kernel_patch(moved, precompiled=True, hold=True) == {}  # the upgrade planner moves it
    assert driver_kernel_patch(moved, precompiled=True, hold=False) == {DRIVER_KERNEL: "6.8.0-60-generic"}
    assert driver_kernel_patch(moved, precompiled=False, hold=True) == {DRIVER_KERNEL: None}


def test_a_held_node_stays_in_its_old_kernels_pool() -> None:
    from gpu_operator.nodes import DRIVER_KERNEL
    from gpu_operator.render import driver_node_patches, driver_routing, kept_driver_patches, plan, relabelled
    from gpu_operator.states import RenderContext

    labels = {"pool": "c", DRIVER_KERNEL: "5.15.0-122-generic", "nvidia.com/gpu.deploy.driver": "true",
              "nvidia.com/gpu.present": "true", OWNER_LABEL: "pool-c"}  # fmt: skip
    held = facts("c1", kernel="6.8.0-60-generic", labels=labels)
    spec = parse_spec(crd_policy())
    drivers = [nvd("pool-c", repository="nvcr.io/nvidia", image="driver", version="580", usePrecompiled=True,
                   nodeSelector={"pool": "c"})]  # fmt: skip
    routing = driver_routing([held], spec, drivers)
    assert driver_node_patches([held], spec, routing, holding={"c1"}).get("c1", {}).get("labels", {}) == {}
    nodes = relabelled([held], driver_node_patches([held], spec, routing, holding={"c1"}))
    ctx = RenderContext(spec=spec, namespace="gpu-operator", nodes=tuple(nodes), nvidia_drivers=routing.groups)
    ds = daemonset(plan(ctx), "nvidia-driver-daemonset-pool-c-ubuntu22.04-5.15.0-122-generic")
    assert ds["spec"]["template"]["spec"]["nodeSelector"][DRIVER_KERNEL] == "5.15.0-122-generic"
    # Without a driver pod to keep (or without autoUpgrade) the node moves at once.
    moved = driver_node_patches([held], spec, routing)["c1"]["labels"]
    assert moved[DRIVER_KERNEL] == "6.8.0-60-generic"
    # What a pass keeps gives the same, held or not, and again once the NVIDIADriver's autoUpgrade is off.
    kept = kept_driver_patches()
    for holding in ({"c1"}, set(), {"c1"}):
        assert driver_node_patches([held], spec, routing, holding, kept) == driver_node_patches(
            [held], spec, routing, holding)  # fmt: skip
    drivers = [nvd("pool-c", repository="nvcr.io/nvidia", image="driver", version="580", usePrecompiled=True,
                   nodeSelector={"pool": "c"}, upgradePolicy={"autoUpgrade": False})]  # fmt: skip
    routing = driver_routing([held], spec, drivers)
    assert driver_node_patches([held], spec, routing, {"c1"}, kept)["c1"]["labels"][DRIVER_KERNEL] == "6.8.0-60-generic"


def test_planner_moves_a_node_to_its_new_kernels_pool_at_pod_restart() -> None:
    from gpu_operator.api import DriverUpgradePolicySpec
    from gpu_operator.upgrade import STATE_LABEL, DeleteDriverPod, MovePool, SetState, UpgradeNode, plan

    ready = [{"name": "x", "ready": True, "restartCount": 0}]
    pod = {"metadata": {"name": "drv-c1", "labels": {"controller-revision-hash": "r1"}},
           "status": {"phase": "Running", "containerStatuses": ready}}  # fmt: skip
    policy = DriverUpgradePolicySpec(auto_upgrade=True)
    done = UpgradeNode("c1", labels={STATE_LABEL: "upgrade-done"}, driver_pod=pod, driver_revision="r1",
                       pool_move="6.8.0-60-generic")  # fmt: skip
    first = plan([done], [], policy, 0.0)
    assert SetState("c1", "upgrade-required") in first.actions
    assert "kernel is now 6.8.0-60-generic" in next(a.message for a in first.actions if hasattr(a, "message"))
    restart = UpgradeNode("c1", labels={STATE_LABEL: "pod-restart-required"}, driver_pod=pod, driver_revision="r1",
                          unschedulable=True, pool_move="6.8.0-60-generic")  # fmt: skip
    actions = plan([restart], [], policy, 0.0).actions
    assert MovePool("c1", "6.8.0-60-generic") in actions
    assert actions.index(MovePool("c1", "6.8.0-60-generic")) < actions.index(DeleteDriverPod("c1", "drv-c1"))


def test_pool_move_is_read_from_the_labels() -> None:
    from gpu_operator.nodes import DRIVER_KERNEL
    from gpu_operator.upgrade.adapter import _pool_move

    assert _pool_move(facts("c1", kernel="6.8.0-60-generic", labels={DRIVER_KERNEL: "5.15.0-122-generic"})) == (
        "6.8.0-60-generic"
    )
    assert _pool_move(facts("c1", kernel="6.8.0-60-generic", labels={DRIVER_KERNEL: "6.8.0-60-generic"})) == ""
    assert _pool_move(facts("c1", kernel="6.8.0-60-generic")) == ""


@pytest.mark.parametrize(
    "upgrade_policy",
    [None, {"autoUpgrade": True, "maxParallelUpgrades": 2}, {"podDeletion": None}],
    ids=["no-upgradePolicy", "upgradePolicy-without-podDeletion", "podDeletion-null"],
)
def test_an_nvidiadriver_without_pod_deletion_gets_upstreams_default(upgrade_policy: dict[str, Any] | None) -> None:
    """Upstream's GetUpgradePolicyWithDefaults fills in podDeletion {force: false, timeoutSeconds: 300,
    deleteEmptyDir: false} wherever an NVIDIADriver leaves it out; ours left it None, so its upgrades evicted no GPU
    pod before the driver pod's deletion (nor does k8s-driver-manager, on a node with upgrades enabled)."""
    from gpu_operator.api import DrainSpec, PodDeletionSpec, WaitForCompletionSpec

    spec: dict[str, Any] = {"version": "580.95.05"}
    if upgrade_policy is not None:
        spec["upgradePolicy"] = upgrade_policy
    policy = nvidiadriver.cluster_spec(parse_spec(crd_policy()), nvd("x", **spec).spec).driver.upgrade_policy
    assert policy.auto_upgrade
    assert policy.pod_deletion == PodDeletionSpec(force=False, timeout_seconds=300, delete_empty_dir=False)
    # waitForCompletion's and drain's defaults are upstream's too.
    assert policy.wait_for_completion == WaitForCompletionSpec(pod_selector="", timeout_seconds=0)
    assert policy.drain == DrainSpec(enable=False, force=False, pod_selector="", timeout_seconds=300,
                                     delete_empty_dir=False)  # fmt: skip


def test_an_nvidiadrivers_default_policy_evicts_gpu_pods_before_its_driver_restarts() -> None:
    """A cordoned node of an NVIDIADriver with no upgradePolicy, a GPU job still running on it: upstream goes to
    pod-deletion-required and evicts the job; ours went on past it to the driver pod's deletion."""
    from gpu_operator.upgrade import STATE_LABEL, SetState, UpgradeNode, WorkloadPod, plan

    spec = nvidiadriver.cluster_spec(parse_spec(crd_policy()), nvd("x", version="580.95.05").spec)
    pod = {"metadata": {"name": "drv-n1", "labels": {"controller-revision-hash": "old"}},
           "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}]}}
    node = UpgradeNode("n1", labels={STATE_LABEL: "wait-for-jobs-required"}, unschedulable=True, driver_pod=pod,
                       driver_revision="new")  # fmt: skip
    job = WorkloadPod(namespace="default", name="train", node="n1", uses_gpu=True)
    moved = [a.state for a in plan([node], [job], spec.driver.upgrade_policy, 10_000.0).actions
             if isinstance(a, SetState)]  # fmt: skip
    assert moved[:1] == ["pod-deletion-required"], moved


def test_cluster_wide_limit_caps_the_starts_of_every_nvidiadriver() -> None:
    from gpu_operator.api import DriverUpgradePolicySpec
    from gpu_operator.upgrade import STATE_LABEL, Limit, UpgradeNode, plan

    ready = [{"name": "x", "ready": True, "restartCount": 0}]

    def node(name: str) -> UpgradeNode:
        pod = {"metadata": {"name": f"drv-{name}", "labels": {"controller-revision-hash": "old"}},
               "status": {"phase": "Running", "containerStatuses": ready}}  # fmt: skip
        return UpgradeNode(name, labels={STATE_LABEL: "upgrade-required"}, driver_pod=pod, driver_revision="new")

    a, b = [node("a1"), node("a2")], [node("b1"), node("b2")]
    own = DriverUpgradePolicySpec(auto_upgrade=True, max_parallel_upgrades=2, max_unavailable="100%")
    cluster = DriverUpgradePolicySpec(max_parallel_upgrades=3, max_unavailable="100%")
    limit = Limit.over(a + b, cluster, "all NVIDIADrivers")

    def starts(p: Any) -> list[str]:
        return list(p.started)

    first = plan(a, [], own, 0.0, limit=limit)
    assert starts(first) == ["a1", "a2"]
    limit = limit.after(2, 2)
    second = plan(b, [], own, 0.0, limit=limit)
    assert starts(second) == ["b1"]  # three at once in the cluster, although b's own policy allows two
    assert "across all NVIDIADrivers" in second.waiting["b2"]
    # The counts are those after the starts before it, in this plan and the one before (they said 0 and 0).
    assert "3 in progress and 3 of at most 4 nodes unavailable" in second.waiting["b2"]


UPGRADE_STATE, DEPLOY_DRIVER = "nvidia.com/gpu-driver-upgrade-state", "nvidia.com/gpu.deploy.driver"


def _upgrade_cluster(nvd_policy: dict[str, Any], **cp_upgrade: Any) -> Any:
    """Two NVIDIADrivers (pools a and b), two nodes each, every driver pod one revision behind its DaemonSet."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.states.base import STATE_LABEL as OPERAND_STATE_LABEL

    raw = crd_policy()
    raw["driver"]["upgradePolicy"].update(cp_upgrade)
    policy = policy_object(raw)
    nodes = {n: facts(n, labels={DEPLOY_DRIVER: "true", "pool": n[0], UPGRADE_STATE: "upgrade-done"})
             for n in ("a1", "a2", "b1", "b2")}  # fmt: skip
    ds = {p: f"nvidia-driver-daemonset-pool-{p}-ubuntu22.04" for p in "ab"}
    ready = {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}]}
    pods = {f"drv-{n}": {"metadata": {"name": f"drv-{n}", "labels": {"controller-revision-hash": "old",
                                                                     OPERAND_STATE_LABEL: "state-driver"}},
                         "node": n, "owner": ds[n[0]], "status": ready, "ready": True}
            for n in nodes}  # fmt: skip
    revisions = {f"r-{p}": {"metadata": {"labels": {"controller-revision-hash": "new"}}, "revision": 2, "owner": d}
                 for p, d in ds.items()}  # fmt: skip
    drivers = {f"pool-{p}": {"metadata": {"name": f"pool-{p}", "uid": f"uid-{p}"},
                             "spec": {"repository": "nvcr.io/nvidia", "image": "driver", "version": "580.95.05",
                                      "nodeSelector": {"pool": p}, "upgradePolicy": nvd_policy}}
               for p in "ab"}  # fmt: skip
    return Snapshot(nodes=nodes, policies={policy["metadata"]["name"]: policy}, owned={}, pods=pods,
                    revisions=revisions, nvidia_drivers=drivers)  # fmt: skip


def _upgrade_plan(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], snap: Any) -> str:
    """`gpu-operator upgrade plan`'s output on this snapshot."""
    import types

    import gpu_operator.observe
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    cluster = types.SimpleNamespace(list=lambda *a, **k: [])
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: cluster))
    monkeypatch.setattr(gpu_operator.observe, "observe", lambda kube, ns: snap)
    assert main(["upgrade", "plan"]) == 0
    return capsys.readouterr().out


def _orchestrate(snap: Any, kube: Any = None) -> tuple[Any, Any, Any, Any]:
    """One pass of the operator's NVIDIADriver orchestration on `snap`: (reconciler, spec, routing, its outcome)."""
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.render import driver_routing
    from support import RecordingKube

    spec = parse_spec(next(iter(snap.policies.values()))["spec"])
    routing = driver_routing(list(snap.nodes.values()), spec, [NVIDIADriver.from_object(o)
                                                               for o in snap.nvidia_drivers.values()])  # fmt: skip
    assert routing.assignment is not None
    r = Reconciler(kube if kube is not None else RecordingKube(), "gpu-operator")
    out = r._orchestrate_nvidia_drivers(spec, snap, dict(snap.nodes), routing.assignment, routing.groups, None)
    return r, spec, routing, out


def test_upgrade_plan_waves_agree_with_the_cluster_wide_limit_the_operator_applies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each NVIDIADriver lets 2 nodes upgrade at once, the ClusterPolicy's maxParallelUpgrades (which the operator
    and the command's own plan apply across all NVIDIADrivers) 1. The waves took each NVIDIADriver alone, promising
    a1+a2 and b1+b2 together while the same output said a2, b1 and b2 wait for a cluster-wide slot."""
    each = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}
    out = _upgrade_plan(monkeypatch, capsys, _upgrade_cluster(each))
    assert "a2 (upgrade-done): waiting for an upgrade slot" in out, out  # what the operator does: one at a time
    assert [line for line in out.splitlines() if line.startswith("wave ")] == [
        "wave 1: a1", "wave 2: a2", "wave 3: b1", "wave 4: b2"]  # fmt: skip
    # Within a limit of 3, the numbers are the cluster's: b1 goes with a1 and a2, b2 after them.
    each = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}
    out = _upgrade_plan(monkeypatch, capsys, _upgrade_cluster(each, maxParallelUpgrades=3, maxUnavailable="100%"))
    assert [line for line in out.splitlines() if line.startswith("wave ")] == [
        "wave 1: a1, a2", "wave 1: b1", "wave 2: b2"]  # fmt: skip


def test_a_cluster_wide_slot_wait_counts_the_upgrades_this_pass_started(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """a1 took the one cluster-wide slot in this pass; a2 waits, and its reason (status.upgrade.waiting, the node's
    event) said "0 in progress and 0 of at most 1 nodes unavailable": the reason was worked out before any start."""
    out = _upgrade_plan(monkeypatch, capsys, _upgrade_cluster({"autoUpgrade": True, "maxParallelUpgrades": 2,
                                                               "maxUnavailable": "100%"}))  # fmt: skip
    (line,) = [line for line in out.splitlines() if line.strip().startswith("a2 (")]
    assert "waiting for an upgrade slot: 1 in progress and 1 of at most 1 nodes unavailable across" in line, out


def test_the_clusterpolicys_cap_holds_the_nvidiadrivers_whatever_its_auto_upgrade() -> None:
    """Beyond upstream (README): the ClusterPolicy's maxParallelUpgrades (1 here) bounds all NVIDIADrivers together
    in the operator's own pass, with its autoUpgrade false too (that switch is about its own driver, the cap about
    how many nodes are down at once). Each NVIDIADriver alone would allow two."""
    from support import RecordingKube

    each = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}
    kube = RecordingKube()
    _orchestrate(_upgrade_cluster(each, autoUpgrade=False, maxParallelUpgrades=1, maxUnavailable="100%"), kube)
    patches = [what for verb, what in kube.calls if verb == "merge_patch"]
    cordoned = [name for kind, name, patch in patches if kind == "Node" and patch.get("spec", {}).get("unschedulable")]
    assert cordoned == ["a1"]  # started: the others wait for a slot


def test_upgrade_slots_free_are_within_the_clusterpolicys_cap_over_the_nvidiadrivers() -> None:
    """gpu_operator_nodes_upgrades_available ("upgrade slots free now") and status.upgrade.available added up each
    NVIDIADriver's own free slots, ignoring the ClusterPolicy's cap over all of them: with the cap 1 and 2 for each
    NVIDIADriver they said 4 on the first pass, and 3 once a1 took the one slot, while no node may start."""
    from gpu_operator import metrics

    each = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}
    snap = _upgrade_cluster(each, autoUpgrade=True, maxParallelUpgrades=1, maxUnavailable="100%")
    r, spec, routing, out = _orchestrate(snap)
    assert out.status is not None and out.status["available"] == 1
    assert metrics.nodes_upgrades_available._value.get() == 1
    # After that pass: a1 started (cordoned), the others wait for the cluster-wide slot.
    states = {"a1": "wait-for-jobs-required", "a2": "upgrade-required", "b1": "upgrade-required",
              "b2": "upgrade-required"}  # fmt: skip
    nodes = {}
    for name, f in snap.nodes.items():
        raw = support_node(name, labels={**f.labels, UPGRADE_STATE: states[name]})
        if name == "a1":
            raw["spec"] = {"unschedulable": True}
        nodes[name] = NodeFacts.from_node(raw)
    out = r._orchestrate_nvidia_drivers(spec, snap.with_nodes(nodes), dict(nodes), routing.assignment,
                                        routing.groups, None)  # fmt: skip
    assert out.status is not None and (out.status["inProgress"], out.status["pending"]) == (1, 3)
    assert out.status["available"] == 0
    assert metrics.nodes_upgrades_available._value.get() == 0, "slots free while the ClusterPolicy's cap is full"


def test_an_nvidiadriver_without_auto_upgrade_adds_no_upgrade_slots_or_counts() -> None:
    """pool-a's NVIDIADriver has autoUpgrade false (nothing upgrades there: its nodes' upgrade labels go), pool-b's
    true with maxParallelUpgrades 1; the ClusterPolicy's cap is unlimited. The upgrade gauges added up every
    NVIDIADriver's counts: done 4 and 3 slots free, while only pool-b's one slot could be taken; status.upgrade, whose
    other counts are pool-b's alone, said available 3 of total 2. Upstream (upgrade_controller.go
    reconcileNVIDIADriverUpgrades) skips an NVIDIADriver without autoUpgrade before counting it: done 2, available 1."""
    from gpu_operator import metrics

    snap = _upgrade_cluster({"autoUpgrade": True, "maxParallelUpgrades": 1, "maxUnavailable": "100%"},
                            autoUpgrade=True, maxParallelUpgrades=0, maxUnavailable="100%")  # fmt: skip
    snap.nvidia_drivers["pool-a"]["spec"]["upgradePolicy"] = {
        "autoUpgrade": False, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}  # fmt: skip
    _, _, _, out = _orchestrate(snap)
    assert out.status is not None and (out.status["total"], out.status["available"]) == (2, 1), out.status
    assert metrics.nodes_upgrades_available._value.get() == 1, "slots of an NVIDIADriver that upgrades nothing"
    assert metrics.nodes_upgrades_done._value.get() == 2, "nodes of an NVIDIADriver without autoUpgrade counted"


@pytest.mark.parametrize("cp_driver_off", [True, False])
def test_a_node_whose_nvidiadriver_is_deleted_mid_upgrade_is_let_go(cp_driver_off: bool) -> None:
    """NVIDIADriver pool-b is deleted while its node b1 is mid-upgrade (cordoned by it, pod-restart-required), and
    no other NVIDIADriver takes b1. No pass planned b1 any more: it stayed cordoned with its upgrade state for good.
    Now it is let go as when the ClusterPolicy's own driver is switched off mid-upgrade (`cp_driver_off`, the same
    node under driver.enabled false): uncordoned, state label removed, an event saying why."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.upgrade.model import STATE_LABEL
    from support import RecordingKube

    class Kube(RecordingKube):
        def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            self._note("create", obj)
            return obj

    raw = support_node("b1", labels={"pool": "b", OWNER_LABEL: "pool-b", STATE_LABEL: "pod-restart-required",
                                     "nvidia.com/gpu.deploy.driver": "true"})  # fmt: skip
    raw["spec"] = {"unschedulable": True}  # cordoned by the upgrade (no initial-state annotation)
    spec = copy.deepcopy(load_policy()["spec"]) if cp_driver_off else crd_policy()
    spec["driver"]["enabled"] = not cp_driver_off
    other = {"other": {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
                       "metadata": {"name": "other", "uid": "uid-other", "generation": 1},
                       "spec": {"nodeSelector": {"pool": "a"}}}}  # fmt: skip
    kube = Kube()
    snap = Snapshot(nodes={"b1": NodeFacts.from_node(raw)}, policies={"cluster-policy": policy_object(spec)},
                    owned={}, pods={}, revisions={}, nvidia_drivers={} if cp_driver_off else other)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    let_go = [patch for verb, what in kube.calls if verb == "merge_patch" and what[:2] == ("Node", "b1")
              for patch in [what[2]] if STATE_LABEL in (patch.get("metadata") or {}).get("labels", {})]  # fmt: skip
    assert let_go, "b1 stays cordoned in pod-restart-required with nothing to finish or undo its upgrade"
    # Under NVIDIADrivers its owner label goes in the same patch (the pass decides by it that b1 is let go).
    labels = {STATE_LABEL: None} if cp_driver_off else {STATE_LABEL: None, OWNER_LABEL: None}
    assert let_go == [{"metadata": {"labels": labels}, "spec": {"unschedulable": None}}]
    why = "the ClusterPolicy's driver was switched off" if cp_driver_off else "its NVIDIADriver let go of the node"
    events = [o["message"] for verb, o in kube.calls if verb == "create" and o["involvedObject"]["name"] == "b1"]
    assert events == [f"{why} in pod-restart-required: node uncordoned (the upgrade had cordoned it)"]


def test_the_switch_seen_before_the_default_nvidiadriver_lets_no_node_go_mid_upgrade() -> None:
    """The chart's path (helm upgrade with nvidiaDriverCRD.enabled: the ClusterPolicy changes first, the default
    NVIDIADriver comes a moment later) has a pass with useNvidiaDriverCRD and no NVIDIADriver at all. Every node with
    an upgrade state was let go there: a node the ClusterPolicy's upgrade had cordoned and drained was uncordoned
    mid-upgrade, and every upgrade-done node lost its state label (rewritten a pass later). The driver is handed
    over, not let go (its DaemonSets orphaned): now no node is let go while no NVIDIADriver is listed."""
    from dataclasses import replace

    from gpu_operator.upgrade.model import STATE_LABEL

    done = facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"})
    draining = replace(facts("a2", labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "drain-required"}),
                       unschedulable=True)  # fmt: skip
    nodes = [done, draining]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    kube, _ = _switch_pass(nodes, crd_policy(), {}, owned)  # the switch seen before the default NVIDIADriver
    assert [body for _, body in kube.deletes(CP_DS)] == [{"propagationPolicy": "Orphan"}]  # handed over
    assert "a2" not in kube.node_patches("unschedulable"), "a2 uncordoned mid-upgrade"
    assert not kube.node_patches(STATE_LABEL), kube.node_patches(STATE_LABEL)


class Walked(dict[str, NodeFacts]):
    """Nodes by name, counting the walks of their facts and the set operations on their names."""

    walks = sets = 0

    def values(self) -> Any:
        self.walks += 1
        return super().values()

    def items(self) -> Any:
        self.walks += 1
        return super().items()

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()

    def keys(self) -> Any:
        self.sets += 1
        return super().keys()


def test_the_let_go_walks_no_node_while_no_nvidiadriver_is_listed() -> None:
    """The let-go's scan (nodes mid-upgrade no NVIDIADriver drives) asked whether any NVIDIADriver is listed once
    per node, inside its walk: with none listed (when it lets none go) it still walked every node, every pass.
    Now it walks none then."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.render import driver_routing
    from support import RecordingKube

    nodes = {n: facts(n, labels={DEPLOY_DRIVER: "true", UPGRADE_STATE: "upgrade-done", OWNER_LABEL: "gone"})
             for n in ("a1", "a2")}  # fmt: skip
    raw = crd_policy()
    spec = parse_spec(raw)
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy_object(raw)}, owned={}, pods={}, revisions={},
                    nvidia_drivers={})  # fmt: skip
    routing = driver_routing(list(nodes.values()), spec, [])
    assert routing.assignment is not None
    kube = RecordingKube()
    walked = Walked(nodes)
    Reconciler(kube, "gpu-operator")._orchestrate_nvidia_drivers(  # type: ignore[arg-type]
        spec, snap, walked, routing.assignment, routing.groups, None
    )
    assert walked.walks == 0 and walked.sets == 0
    assert not [what for verb, what in kube.calls if verb == "merge_patch"]  # none let go


def test_the_let_go_looks_only_at_the_nodes_no_nvidiadriver_routes() -> None:
    """The let-go's scan walked every node of the cluster each pass under NVIDIADrivers (at 5,000 nodes ~2 ms of a
    settled pass), though only a node the assignment does not route can be let go. Now it looks at those alone (one
    set difference of the names), and walks the nodes only to keep their order when it lets one go."""
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.render import driver_routing
    from support import RecordingKube

    each = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "100%"}
    snap = _upgrade_cluster(each)
    spec = parse_spec(next(iter(snap.policies.values()))["spec"])
    drivers = [NVIDIADriver.from_object(o) for o in snap.nvidia_drivers.values()]
    routing = driver_routing(list(snap.nodes.values()), spec, drivers)
    assert routing.assignment is not None and set(routing.assignment.owner) == set(snap.nodes)  # all routed
    walked = Walked(snap.nodes)
    kube = RecordingKube()
    Reconciler(kube, "gpu-operator")._orchestrate_nvidia_drivers(  # type: ignore[arg-type]
        spec, snap, walked, routing.assignment, routing.groups, None
    )
    assert walked.walks == 0
    # b2 leaves pool-b mid-upgrade (no NVIDIADriver selects it): let go, the only one.
    nodes = {**snap.nodes, "b2": facts("b2", labels={DEPLOY_DRIVER: "true", "pool": "c", OWNER_LABEL: "pool-b",
                                                     UPGRADE_STATE: "pod-restart-required"})}  # fmt: skip
    snap = snap.with_nodes(nodes)
    routing = driver_routing(list(nodes.values()), spec, drivers)
    assert routing.assignment is not None
    kube = RecordingKube()
    Reconciler(kube, "gpu-operator")._orchestrate_nvidia_drivers(  # type: ignore[arg-type]
        spec, snap, dict(nodes), routing.assignment, routing.groups, None
    )
    let_go = [what[1] for verb, what in kube.calls if verb == "merge_patch" and what[0] == "Node"
              and (what[2].get("metadata") or {}).get("labels", {}).get(UPGRADE_STATE, "") is None]  # fmt: skip
    assert let_go == ["b2"]  # its state label removed (the others' upgrades go on)


def test_a_node_the_deleted_default_nvidiadriver_drove_keeps_its_upgrade_state() -> None:
    """Only a node whose owner label named the NVIDIADriver that let go of it is let go (upstream's upgrade skips a
    node without an owner label): one the default drove, the default deleted, keeps its state and its cordon."""
    from dataclasses import replace

    from gpu_operator.upgrade.model import STATE_LABEL

    restarting = replace(facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true",
                                             STATE_LABEL: "pod-restart-required"}), unschedulable=True)  # fmt: skip
    kube, _ = _switch_pass([restarting], crd_policy(), _nvd_objects(x={"nodeSelector": {"pool": "x"}}), {})
    assert "a1" not in kube.node_patches("unschedulable")
    assert not kube.node_patches(STATE_LABEL), kube.node_patches(STATE_LABEL)


@pytest.mark.parametrize("owner", ["pool-b", None], ids=["non-default", "default"])
def test_a_node_whose_driver_is_switched_off_mid_upgrade_is_let_go(owner: str | None) -> None:
    """b1, cordoned by its upgrade in pod-restart-required, gets nvidia.com/gpu.deploy.driver=false (by hand, or a
    VM workload). Its NVIDIADriver still takes it (routing reads the GPU), so the let-go, which looked only at nodes
    no NVIDIADriver takes, passed it by, and no plan held it (the upgrade reads the deploy label): it stayed
    cordoned in its state for good and the ClusterPolicy notReady. Now it is let go, as under the ClusterPolicy's
    own driver, over passes that apply the node patches; it keeps its owner label."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.upgrade.model import STATE_LABEL
    from support import RecordingKube, merge

    class Kube(RecordingKube):
        def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            self._note("create", obj)
            return obj

    def passes(raws: dict[str, dict[str, Any]], spec: dict[str, Any], drivers: dict[str, Any]) -> list[str]:
        """Events and ClusterPolicy status messages, in order."""
        said = []
        for _ in range(3):
            kube = Kube()
            snap = Snapshot(nodes={k: NodeFacts.from_node(v) for k, v in raws.items()},
                            policies={"cluster-policy": policy_object(spec)}, owned={}, pods={}, revisions={},
                            nvidia_drivers=drivers)  # fmt: skip
            Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
            for verb, what in kube.calls:
                if verb == "merge_patch" and what[0] == "Node" and what[1] in raws:
                    raws[what[1]] = merge(raws[what[1]], what[2])
                elif verb == "create" and what.get("kind") == "Event":
                    said.append(what["message"])
                elif verb == "merge_patch" and what[:2] == ("ClusterPolicy", "cluster-policy"):
                    said += [c["message"] for c in (what[2].get("status") or {}).get("conditions", [])]
        return said

    labels = {STATE_LABEL: "pod-restart-required", "nvidia.com/gpu.deploy.driver": "false"}
    raw = support_node("b1", labels=labels | ({"pool": "b", OWNER_LABEL: owner} if owner else {}))
    raw["spec"] = {"unschedulable": True}  # cordoned by the upgrade (no initial-state annotation)
    own = {"b1": support_node("b1", labels=labels)}
    own["b1"]["spec"] = {"unschedulable": True}
    cp = copy.deepcopy(load_policy()["spec"])
    cp["driver"].setdefault("upgradePolicy", {})["autoUpgrade"] = True
    passes(own, cp, {})  # the ClusterPolicy's own driver lets it go
    assert STATE_LABEL not in own["b1"]["metadata"]["labels"] and not own["b1"]["spec"].get("unschedulable")
    drivers = {name: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver",
                      "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1,
                                   "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
               for name, spec in {"pool-b": {"nodeSelector": {"pool": "b"}}, "default": {"default": True}}.items()}
    nodes = {"b1": raw}
    said = passes(nodes, crd_policy(), drivers)
    after = nodes["b1"]
    assert not after["spec"].get("unschedulable"), f"b1 left cordoned in {after['metadata']['labels'][STATE_LABEL]}"
    assert STATE_LABEL not in after["metadata"]["labels"]
    assert after["metadata"]["labels"].get(OWNER_LABEL) == owner  # still its NVIDIADriver's node
    why = "its NVIDIADriver's driver no longer goes to the node"
    assert said.count(f"{why} in pod-restart-required: node uncordoned (the upgrade had cordoned it)") == 1
    assert "NVIDIADriver upgrade has not completed" not in said[-1]  # the last pass's ClusterPolicy status


def test_one_nvidiadriver_that_cannot_render_holds_only_its_own_daemonsets() -> None:
    # usePrecompiled with GDS cannot render; upstream fails that NVIDIADriver alone (ReconcileFailed on it).
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]
    bad = {"nodeSelector": {"pool": "b"}, "usePrecompiled": True, "gds": {"enabled": True}}
    plans = render_all(parse_spec(crd_policy()), nodes,
                       nvidia_drivers=drivers_objects(("default", {"default": True}), ("pool-b", bad)))  # fmt: skip
    driver_plan = next(p for p in plans if p.state.name == "state-driver")
    assert driver_plan.problem is None
    names = {d["metadata"]["name"] for d in driver_plan.objects if d["kind"] == "DaemonSet"}
    assert "nvidia-driver-daemonset-ubuntu22.04" in names and not any("pool-b" in n for n in names)
    # Its own field name: it said driver.usePrecompiled, the ClusterPolicy's, which an NVIDIADriver has not.
    assert driver_plan.held == {"uid-pool-b": "NVIDIADriver pool-b: gds.enabled: not supported with precompiled "
                                              "drivers (usePrecompiled)"}, driver_plan.held  # fmt: skip


def test_the_clusterpolicys_precompiled_with_gds_does_not_hold_the_nvidiadrivers() -> None:
    """With NVIDIADrivers the ClusterPolicy's own driver is not rendered (upstream skips state-driver altogether,
    controllers/state_manager.go step()); each NVIDIADriver checks only its own usePrecompiled and gds. A leftover
    `driver.usePrecompiled: true` with `gds.enabled: true` on the ClusterPolicy was still checked while rendering
    the shared objects, and its problem left the whole state with no DaemonSet for any NVIDIADriver."""
    raw = crd_policy()
    raw["driver"]["usePrecompiled"] = True
    raw["gds"] = {"enabled": True}
    plans = render_all(parse_spec(raw), [facts("a1")], nvidia_drivers=drivers_objects(("default", {"default": True})))
    driver_plan = next(p for p in plans if p.state.name == "state-driver")
    assert driver_plan.problem is None, driver_plan.problem
    assert [d["metadata"]["name"] for d in daemonsets([driver_plan])] == ["nvidia-driver-daemonset-ubuntu22.04"]


def test_an_nvidiadriver_with_gds_from_2_17_5_needs_the_open_kernel_modules() -> None:
    """Upstream's NVIDIADriver controller refuses GDS whose version is 2.17.5 or later (or a digest) unless
    kernelModuleType is open (IsOpenKernelModulesRequired: "GPUDirect Storage driver '...' is only supported with
    NVIDIA OpenRM drivers"); it was rendered as given, and nvidia-fs then met the proprietary modules. Now that
    NVIDIADriver alone is held, naming the fields; an older GDS, or one without a version, renders (as upstream)."""
    nodes = [facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"})]

    def held(gds: dict[str, Any], module_type: str | None = None) -> dict[str, str]:
        image = {"repository": "nvcr.io/nvidia/cloud-native", "image": "nvidia-fs"} if gds else {}
        pool_b: dict[str, Any] = {"nodeSelector": {"pool": "b"}, "gds": {"enabled": True, **image, **gds}}
        if module_type:
            pool_b["kernelModuleType"] = module_type
        objects = drivers_objects(("default", {"default": True}), ("pool-b", pool_b))
        plans = render_all(parse_spec(crd_policy()), nodes, nvidia_drivers=objects)
        return next(p for p in plans if p.state.name == "state-driver").held

    for version in ("2.17.5", "v2.20.5", "2.29", "sha256:" + "a" * 64):
        for module_type in (None, "auto", "proprietary"):
            found = held({"version": version}, module_type)
            assert list(found) == ["uid-pool-b"], (version, module_type)
            assert found["uid-pool-b"].startswith(f"NVIDIADriver pool-b: gds.version {version}: ")
            assert "kernelModuleType: open" in found["uid-pool-b"]
        assert held({"version": version}, "open") == {}, version
    for version in ("2.16.1", "2.17.5-rc1", "", "latest"):  # below, a pre-release of it, unset, not semver
        # (unset: upstream's sidecar image then comes from the operator's env, not from this field)
        assert held({"version": version} if version else {}, "proprietary") == {}, version
    # Upstream's ClusterPolicy path does not check it.
    gds = {"enabled": True, "repository": "nvcr.io/nvidia/cloud-native", "image": "nvidia-fs", "version": "2.20.5"}
    plans = render_all(parse_spec({"driver": {"kernelModuleType": "proprietary"}, "gds": gds}), nodes)
    assert next(p for p in plans if p.state.name == "state-driver").problem is None


def test_with_the_clusterpolicy_driver_disabled_an_nvidiadriver_says_so() -> None:
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    kube = EchoKube()
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}))}  # fmt: skip
    snap = Snapshot(nodes={"a1": facts("a1")}, policies={"cluster-policy": policy_object(disabled_driver())},
                    owned={}, pods={}, revisions={}, nvidia_drivers=drivers)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    status = kube.statuses[("NVIDIADriver", "default")]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["state"] == "disabled"
    assert ready["message"] == "the ClusterPolicy's driver is disabled (driver.enabled: false)"


def test_an_invalid_clusterpolicy_spec_keeps_each_nvidiadrivers_node_count() -> None:
    """`kubectl get nvidiadrivers` shows Nodes (.status.nodes: the GPU nodes the NVIDIADriver drives, crd.py's
    printer column). While the ClusterPolicy's spec is invalid nothing is acted on: the owner labels and the
    NVIDIADriver's driver DaemonSets stay, its pods keep running on its nodes. Its status said Nodes 0 then (and no
    conflicting nodes), as if it drove none, where a pass cut short by an ApiError keeps them (failed_pass_status:
    "its nodes and conflicts, not worked out again, stay as they were"). Expected: notReady with the ClusterPolicy's
    error, its node count kept. Now it is (review status #2)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from test_status import _invalid_spec

    pol = policy_object(crd_policy())
    drivers = _nvd_objects(default={"default": True})
    nodes = {n: facts(n) for n in ("n1", "n2")}
    kube = EchoKube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]

    def snapshot() -> Snapshot:
        return Snapshot(nodes=nodes, policies={"cluster-policy": copy.deepcopy(pol)}, owned={}, pods={},
                        revisions={}, nvidia_drivers=copy.deepcopy(drivers))  # fmt: skip

    r.reconcile(snapshot())
    assert kube.statuses[("NVIDIADriver", "default")]["nodes"] == 2
    drivers["default"]["status"] = kube.statuses[("NVIDIADriver", "default")]
    pol["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]
    _invalid_spec(pol)
    r.reconcile(snapshot())
    status = kube.statuses[("NVIDIADriver", "default")]
    assert status["state"] == "notReady"
    assert "invalid spec" in next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert status["nodes"] == 2, f"Nodes column {status['nodes']} while its driver pods run on 2 nodes"


def test_a_pass_keeps_the_daemonsets_of_an_nvidiadriver_that_cannot_render_and_says_why() -> None:
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    kube = EchoKube()
    statuses = kube.statuses

    policy = policy_object(crd_policy())
    bad = {"nodeSelector": {"pool": "b"}, "usePrecompiled": True, "gds": {"enabled": True}}
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", bad))}  # fmt: skip
    kept = {"apiVersion": "apps/v1", "kind": "DaemonSet", "spec": {}, "status": {},
            "metadata": {"name": "nvidia-driver-daemonset-pool-b-ubuntu22.04", "namespace": "gpu-operator",
                         "labels": {"app.kubernetes.io/managed-by": "gpu-operator",
                                    "nvidia.com/gpu-operator.state": "state-driver"},
                         "ownerReferences": [{"kind": "NVIDIADriver", "name": "pool-b", "uid": "uid-pool-b"}]}}
    key = ("DaemonSet", "gpu-operator", kept["metadata"]["name"])
    nodes = {n.name: n for n in (facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"}))}
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy}, owned={key: kept}, pods={}, revisions={},
                    nvidia_drivers=drivers)  # fmt: skip
    out = Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    assert key not in out.deleted  # left as it is
    assert any(o["metadata"]["name"] == "nvidia-driver-daemonset-ubuntu22.04" for o in out.applied)  # the others go on
    state = next(st for st in statuses[("ClusterPolicy", "cluster-policy")]["states"] if st["name"] == "state-driver")
    assert state["state"] == "notReady" and state["message"].startswith("NVIDIADriver pool-b: ")
    mine = {c["type"]: c for c in statuses[("NVIDIADriver", "pool-b")]["conditions"]}
    assert mine["Ready"]["status"] == "False" and "precompiled" in mine["Ready"]["message"]
    other = {c["type"]: c for c in statuses[("NVIDIADriver", "default")]["conditions"]}
    assert "pool-b" not in other["Ready"]["message"]


def test_a_held_nvidiadriver_reads_reconcile_failed_not_driver_not_ready() -> None:
    """An NVIDIADriver whose spec cannot render (held: usePrecompiled with GDS, a missing secretEnv Secret) read
    reason DriverNotReady, as one waiting for its pods. Upstream refuses these in reconcile with ReconcileFailed
    (controllers/nvidiadriver_controller.go); DriverNotReady is only "Waiting for driver pod to be ready"."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    class Kube(EchoKube):
        def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            return None if kind == "Secret" else {}

    nodes = {n.name: n for n in (facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"}))}
    for bad in ({"nodeSelector": {"pool": "b"}, "usePrecompiled": True, "version": "580", "gds": {"enabled": True}},
                {"nodeSelector": {"pool": "b"}, "secretEnv": "no-such-secret"}):
        drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
                   for d in drivers_objects(("default", {"default": True}), ("pool-b", bad))}  # fmt: skip
        kube = Kube()
        snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy_object(crd_policy())}, owned={}, pods={},
                        revisions={}, nvidia_drivers=drivers)  # fmt: skip
        Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
        status = kube.statuses[("NVIDIADriver", "pool-b")]
        mine = {c["type"]: c for c in status["conditions"]}
        assert status["state"] == "notReady"
        assert (mine["Ready"]["status"], mine["Ready"]["reason"]) == ("False", "ReconcileFailed")
        assert (mine["Error"]["status"], mine["Error"]["reason"]) == ("True", "ReconcileFailed")
        assert mine["Error"]["message"].startswith("NVIDIADriver pool-b: ")
        other = {c["type"]: c for c in kube.statuses[("NVIDIADriver", "default")]["conditions"]}
        assert other["Ready"]["reason"] != "ReconcileFailed"


class _Refusing(EchoKube):
    """An API server whose admission (a policy engine, a quota) refuses the objects whose names start so."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        from gpu_operator.kube import ApiError

        if obj["metadata"]["name"].startswith(self.prefixes):
            raise ApiError(403, '{"message": "admission webhook denied the request: hostPID not allowed"}', "apply")
        return obj


def test_an_nvidiadriver_whose_objects_the_api_server_refuses_is_not_ready_and_says_why() -> None:
    """The ClusterPolicy said ReconcileFailed (state-driver: DaemonSet ...: denied) while the NVIDIADriver owning
    that DaemonSet said ready, "All resources have been successfully reconciled": a DaemonSet missing from the
    cluster was skipped, and the apply's failure never reached the NVIDIADriver. Upstream: ReconcileFailed, "Error
    syncing state ..."; a refused object shared by the NVIDIADrivers (the driver's service account) fails them all."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", {"nodeSelector": {"pool": "b"}}))}
    nodes = {n.name: n for n in (facts("a1", labels={"pool": "a"}), facts("b1", labels={"pool": "b"}))}

    def conditions(kube: EchoKube, name: str) -> dict[str, dict[str, Any]]:
        snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy_object(crd_policy())}, owned={}, pods={},
                        revisions={}, nvidia_drivers=drivers)  # fmt: skip
        Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
        return {c["type"]: c for c in kube.statuses[("NVIDIADriver", name)]["conditions"]}

    kube = _Refusing("nvidia-driver-daemonset-pool-b")
    mine = conditions(kube, "pool-b")
    assert mine["Ready"]["status"] == "False" and mine["Error"]["status"] == "True"
    assert mine["Error"]["reason"] == "ReconcileFailed"
    message = mine["Error"]["message"]
    assert message.startswith("apply failed: DaemonSet nvidia-driver-daemonset-pool-b-ubuntu22.04: ")
    assert "admission webhook denied" in message
    assert "denied" not in conditions(kube, "default")["Ready"]["message"]  # its own DaemonSet was created
    shared = conditions(_Refusing("nvidia-driver"), "default")["Error"]  # the service account too
    assert shared["reason"] == "ReconcileFailed" and "ServiceAccount nvidia-driver: " in shared["message"]


def test_a_pass_cut_short_by_an_api_error_marks_the_nvidiadrivers_it_did_not_reach() -> None:
    """A pass that an ApiError cut short (a 5xx mid-pass) wrote ReconcileFailed on the ClusterPolicy but left the
    NVIDIADrivers' statuses as they were: one read "ready", "All resources have been successfully reconciled",
    while no pass got through. Upstream writes ReconcileFailed with the error. Now notReady, ReconcileFailed,
    naming the error, written once (not again while the error is the same), the node counts kept; a status write
    that fails too does not fail the pass's answer."""
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    class Kube(EchoKube):
        def __init__(self, refuse_status: bool = False) -> None:
            super().__init__()
            self.refuse_status = refuse_status
            self.kinds: list[str] = []  # of the objects whose status was written

        def get(self, *a: Any, **k: Any) -> Any:
            raise ApiError(503, '{"message": "etcdserver: leader changed"}', "get Namespace")

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if self.refuse_status and kind == "NVIDIADriver":
                raise ApiError(500, '{"message": "etcdserver: request timed out"}', "patch NVIDIADriver status")
            self.kinds.append(kind)
            return super().merge_patch(kind, name, patch, *a, **k)

    def drivers() -> dict[str, dict[str, Any]]:
        out = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", {"nodeSelector": {"pool": "b"}}))}
        for obj in out.values():
            ready = nvidiadriver.driver_status(NVIDIADriver.from_object(obj), assign([], []), (True, ""),
                                               "gpu-operator", None, "2026-01-01T00:00:00Z")  # fmt: skip
            obj["status"] = {**ready, "nodes": 1}
        return out

    objs = drivers()
    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    for first in (True, False):
        kube.kinds.clear()
        snap = Snapshot(nodes={"a1": facts("a1", labels={"pool": "a"}), "b1": facts("b1", labels={"pool": "b"})},
                        policies={"cluster-policy": policy_object(crd_policy())}, owned={}, pods={}, revisions={},
                        nvidia_drivers=objs)  # fmt: skip
        assert r.reconcile(snap).ready is False
        assert kube.kinds.count("NVIDIADriver") == (2 if first else 0)  # written once
        for name in objs:
            objs[name]["status"] = kube.statuses[("NVIDIADriver", name)]
    for name in objs:
        status = objs[name]["status"]
        assert (status["state"], status["nodes"]) == ("notReady", 1), status
        error = next(c for c in status["conditions"] if c["type"] == "Error")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (error["status"], error["reason"], ready["status"], ready["reason"]) == (
            "True", "ReconcileFailed", "False", "ReconcileFailed")
        assert "503 etcdserver: leader changed" in error["message"]
    # The NVIDIADrivers' status writes fail too: the pass still answers (and the ClusterPolicy's is written).
    kube = Kube(refuse_status=True)
    snap = Snapshot(nodes={"a1": facts("a1")}, policies={"cluster-policy": policy_object(crd_policy())}, owned={},
                    pods={}, revisions={}, nvidia_drivers=drivers())  # fmt: skip
    assert Reconciler(kube, "gpu-operator").reconcile(snap).ready is False  # type: ignore[arg-type]
    assert ("ClusterPolicy", "cluster-policy") in kube.statuses and ("NVIDIADriver", "default") not in kube.statuses


def test_a_pass_cut_by_an_api_error_keeps_a_conflict_and_does_not_post_its_warning_again() -> None:
    """A pass an ApiError cut short (a 503 on the ClusterPolicy's finalizer patch) wrote ReconcileFailed on a
    conflicting NVIDIADriver too. The next full pass found its Error change back to the conflict and asked for the
    conflict's Warning again, which the recorder (asked for it once per change) had forgotten: the same Warning was
    posted again on every transient ApiError. Now a known failure (an Error True) is left as it was."""
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    class Kube(EchoKube):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[dict[str, Any]] = []
            self.fail = False

        def create(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            if obj["kind"] == "Event":
                self.events.append(obj)
            return obj

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if self.fail and kind == "ClusterPolicy" and k.get("sub") != "status":  # the pass's first write
                raise ApiError(503, '{"message": "etcdserver: leader changed"}', "patch ClusterPolicy")
            return super().merge_patch(kind, name, patch, *a, **k)

    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", {"nodeSelector": {"pool": "b"}}),
                                        ("rack", {"nodeSelector": {"rack": "r7"}}))}  # fmt: skip
    nodes = {n.name: n for n in (facts("a1", labels={"pool": "a"}), facts("b2", labels={"pool": "b", "rack": "r7"}))}
    kube = Kube()
    r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    pol = policy_object(crd_policy())
    for cut in (False, False, True, False, False):
        kube.fail = cut
        r.reconcile(Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={},
                             nvidia_drivers=drivers))  # fmt: skip
        pol = {**pol, "status": kube.statuses[("ClusterPolicy", "cluster-policy")]}
        for name, obj in drivers.items():
            obj["status"] = kube.statuses[("NVIDIADriver", name)]
        if cut:
            errors = {n: next(c for c in o["status"]["conditions"] if c["type"] == "Error")
                      for n, o in drivers.items()}  # fmt: skip
            assert errors["pool-b"]["reason"] == errors["rack"]["reason"] == nvidiadriver.CONFLICT_REASON
            assert errors["default"]["reason"] == "ReconcileFailed"  # no failure known: the pass's error
    posted = [(e["involvedObject"]["name"], e["reason"]) for e in kube.events
              if e["involvedObject"]["kind"] == "NVIDIADriver"]  # fmt: skip
    assert sorted(posted) == [("pool-b", nvidiadriver.EVENT_REASON), ("rack", nvidiadriver.EVENT_REASON)]

class GoneKube(EchoKube):
    """Answers 404 to a status patch of the NVIDIADrivers named in `gone` (deleted since the pass's snapshot)."""

    def __init__(self, *gone: str) -> None:
        super().__init__()
        self.gone = set(gone)

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        from gpu_operator.kube import ApiError

        if kind == "NVIDIADriver" and name in self.gone:
            raise ApiError(404, f'{{"message": "nvidiadrivers.nvidia.com \\"{name}\\" not found"}}',
                           f"PATCH {kind} {name}", "NotFound")  # fmt: skip
        return super().merge_patch(kind, name, patch, *a, **k)


@pytest.mark.parametrize("crd_mode", [True, False], ids=["nvidiadrivers", "switched-off"])
def test_an_nvidiadriver_deleted_since_the_snapshot_does_not_fail_the_pass(crd_mode: bool) -> None:
    """No finalizer holds an NVIDIADriver: one deleted between the pass's snapshot and its status write answers the
    patch with 404 (`helm upgrade --set driver.nvidiaDriverCRD.enabled=false` updates the ClusterPolicy, a pass
    starts at once, then helm deletes the default NVIDIADriver). That ApiError cut the whole pass: the ClusterPolicy
    was written again notReady, ReconcileFailed "PATCH NVIDIADriver ...: 404 ... not found" (a failed pass, backoff),
    and every NVIDIADriver after it notReady naming the other one's 404. Upstream's NVIDIADriver controller returns
    on NotFound; now the deleted one is passed over (its deletion brings the next pass)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    raw = crd_policy()
    raw["driver"]["useNvidiaDriverCRD"] = crd_mode
    specs = [("a-gone", {"default": True})] + ([("z-kept", {"nodeSelector": {"pool": "z"}})] if crd_mode else [])
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(*specs)}  # fmt: skip
    kube = GoneKube("a-gone")
    out = Reconciler(kube, "gpu-operator").reconcile(  # type: ignore[arg-type]
        Snapshot(nodes={}, policies={"cluster-policy": policy_object(raw)}, owned={}, pods={}, revisions={},
                 nvidia_drivers=drivers)  # fmt: skip
    )
    assert not out.error
    written = kube.statuses[("ClusterPolicy", "cluster-policy")]
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert ready["reason"] != "ReconcileFailed" and "not found" not in ready["message"], ready
    if crd_mode:
        kept = kube.statuses[("NVIDIADriver", "z-kept")]
        kept_ready = next(c for c in kept["conditions"] if c["type"] == "Ready")
        assert kept_ready["reason"] != "ReconcileFailed" and "a-gone" not in kept_ready["message"], kept_ready


@pytest.mark.parametrize("auto_upgrade", [False, True])
def test_an_nvidiadriver_without_autoUpgrade_says_only_deleting_its_out_of_date_driver_pods_replaces_them(
    auto_upgrade: bool,
) -> None:
    """An NVIDIADriver with autoUpgrade false whose driver pods run an old revision: nothing replaces them until
    they are deleted, which its status (and the ClusterPolicy's state-driver) now says, naming the nodes. Under
    autoUpgrade the upgrade replaces them: the message is the DaemonSet's alone."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.upgrade.model import STATE_LABEL
    from test_readiness import _counted, _ready_pod

    nodes = [facts(n, labels={"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done", OWNER_LABEL: "x"})
             for n in ("a1", "a2")]  # fmt: skip
    drivers = _nvd_objects(x={"version": "580.95.05", "upgradePolicy": {"autoUpgrade": auto_upgrade}})
    _, owned = _switch_pass(nodes, crd_policy(), drivers, {})
    ds = "nvidia-driver-daemonset-x-ubuntu22.04"
    owned = {k: {**o, "metadata": {**o["metadata"], "generation": 1}, "status": _counted(2)} if k[0] == "DaemonSet"
             else o for k, o in owned.items()}  # fmt: skip
    pods = {f"drv-{n.name}": _ready_pod(owned[("DaemonSet", "gpu-operator", ds)], n.name) for n in nodes}  # at h1
    revisions = {f"{ds}-h{i}": {"metadata": {"labels": {"controller-revision-hash": f"h{i}"}}, "revision": i,
                                "owner": ds} for i in (1, 2)}  # fmt: skip
    kube = EchoKube()
    Reconciler(kube, "gpu-operator").reconcile(Snapshot(  # type: ignore[arg-type]
        nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy_object(crd_policy())}, owned=owned,
        pods=pods, revisions=revisions, nvidia_drivers=drivers))  # fmt: skip
    [ready] = [c["message"] for c in kube.statuses[("NVIDIADriver", "x")]["conditions"] if c["type"] == "Ready"]
    [state] = [s["message"] for s in kube.statuses[("ClusterPolicy", "cluster-policy")]["states"]
               if s["name"] == "state-driver"]  # fmt: skip
    note = "autoUpgrade is off: nothing replaces the out-of-date driver pods on a1, a2; delete them to update"
    old = f"{ds}: 2 pods run an old revision"
    if auto_upgrade:
        assert (ready, state) == (old, old)
    else:
        assert (ready, state) == (f"{old}; {note}", f"{old}; NVIDIADriver x: {note}")


def test_an_nvidiadriver_is_not_ready_while_a_node_it_drives_fits_no_pool() -> None:
    """A GPU node NFD has not labelled with its OS (or, precompiled, its kernel) fits no pool: no DaemonSet runs a
    driver there. The ClusterPolicy's state-driver named it, but the NVIDIADriver that drives it (nodes: 1) said
    ready, "All resources have been successfully reconciled"."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    bare = support_node("a1", labels={"pool": "a"})
    for key in [k for k in bare["metadata"]["labels"] if "system-os_release" in k]:
        del bare["metadata"]["labels"][key]
    precompiled = {"nodeSelector": {"pool": "b"}, "repository": "nvcr.io/nvidia", "image": "driver", "version": "580",
                   "usePrecompiled": True}  # fmt: skip
    nodes = [NodeFacts.from_node(bare), facts("a2", labels={"pool": "a"}), facts("b1", kernel="", labels={"pool": "b"})]
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", precompiled))}  # fmt: skip
    kube = EchoKube()
    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy_object(crd_policy())},
                    owned={}, pods={}, revisions={}, nvidia_drivers=drivers)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    states = {s["name"]: s for s in kube.statuses[("ClusterPolicy", "cluster-policy")]["states"]}
    assert "no driver for a1: NFD labels os-release ID/VERSION_ID missing" in states["state-driver"]["message"]
    default = kube.statuses[("NVIDIADriver", "default")]
    ready = next(c for c in default["conditions"] if c["type"] == "Ready")
    assert (default["state"], default["nodes"]) == ("notReady", 2) and ready["reason"] == "DriverNotReady"
    assert ready["message"].endswith("no driver for a1: NFD labels os-release ID/VERSION_ID missing")
    pool_b = kube.statuses[("NVIDIADriver", "pool-b")]
    ready = next(c for c in pool_b["conditions"] if c["type"] == "Ready")
    assert pool_b["state"] == "notReady"
    assert ready["message"].endswith("no driver for b1: NFD labels os-release ID/VERSION_ID and kernel-version.full "
                                     "missing")  # fmt: skip


@pytest.mark.parametrize("policy_precompiled", [False, True])
def test_the_clusterpolicys_driver_state_pools_nodes_by_each_nvidiadrivers_precompiled(
    policy_precompiled: bool,
) -> None:
    """With useNvidiaDriverCRD the ClusterPolicy's state-driver named the nodes that fit no pool by the
    ClusterPolicy's own driver.usePrecompiled, not by the NVIDIADriver that drives them: a node without its kernel
    label under a precompiled NVIDIADriver went unnamed (the ClusterPolicy ready while that NVIDIADriver was not),
    and with the ClusterPolicy's usePrecompiled true one under a non-precompiled NVIDIADriver was named though its
    driver runs."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    raw = crd_policy()
    raw["driver"]["usePrecompiled"] = policy_precompiled
    raw["driver"]["version"] = "580"
    precompiled = {"nodeSelector": {"pool": "b"}, "repository": "nvcr.io/nvidia", "image": "driver", "version": "580",
                   "usePrecompiled": True}  # fmt: skip
    nodes = [facts("a1", kernel="", labels={"pool": "a"}), facts("b1", kernel="", labels={"pool": "b"})]
    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("default", {"default": True}), ("pool-b", precompiled))}  # fmt: skip
    kube = EchoKube()
    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy_object(raw)},
                    owned={}, pods={}, revisions={}, nvidia_drivers=drivers)  # fmt: skip
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    states = {s["name"]: s for s in kube.statuses[("ClusterPolicy", "cluster-policy")]["states"]}
    message = states["state-driver"]["message"]
    assert "no driver for b1: NFD labels os-release ID/VERSION_ID and kernel-version.full missing" in message
    assert "a1" not in message  # the default NVIDIADriver is not precompiled: a1 has its pool


def test_an_nvidiadriver_says_so_while_no_valid_clusterpolicy_is_active() -> None:
    """With the ClusterPolicy's spec invalid, or no ClusterPolicy at all, a pass returned before the NVIDIADrivers'
    statuses: a new one showed none, an old one kept its "ready" (nodes: 3) after the operator stopped acting on
    it. Now notReady, ReconcileFailed, naming why (upstream's when it cannot resolve the ClusterPolicy), written
    once. Its nodes stay while the spec is invalid (nothing is acted on: its DaemonSets keep running there), and are
    none once no ClusterPolicy is left (its DaemonSets are cleaned up)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    raw = crd_policy()
    raw["toolkit"] = {"repository": "registry.example.com/nvidia"}  # a repository without image and version
    invalid = policy_object(raw)
    driver = {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **drivers_objects(("default", {}))[0]}
    driver["status"] = {"state": "ready", "nodes": 3}
    kube = EchoKube()
    for policies, why, nodes in (
        ({"cluster-policy": invalid}, "ClusterPolicy cluster-policy: invalid spec: spec.toolkit", 3),
        ({}, "no active ClusterPolicy", 0),
    ):
        # A new reconciler each: a new message alone is progress, paced (StatusWriter), and this one is written at once.
        r = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
        for _ in range(2):
            kube.written.clear()
            snap = Snapshot(nodes={"a1": facts("a1")}, policies=policies, owned={}, pods={}, revisions={},
                            nvidia_drivers={"default": driver})  # fmt: skip
            r.reconcile(snap)
            driver["status"] = kube.statuses[("NVIDIADriver", "default")]
            invalid["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]
        assert not kube.written  # the second pass writes nothing
        status = driver["status"]
        assert (status["state"], status["nodes"]) == ("notReady", nodes)
        error = next(c for c in status["conditions"] if c["type"] == "Error")
        assert (error["status"], error["reason"]) == ("True", "ReconcileFailed")
        assert error["message"].startswith(why)


def test_an_nvidiadriver_deleted_since_the_snapshot_with_no_clusterpolicy_left_does_not_raise() -> None:
    """`helm uninstall` deletes the ClusterPolicy and the default NVIDIADriver together: a pass that finds no active
    ClusterPolicy writes each NVIDIADriver "no active ClusterPolicy", and the 404 of the one deleted since the
    snapshot left Reconciler.reconcile (outside the pass's ApiError handling): "reconcile pass failed" with a
    traceback, a failed pass. Now it is passed over."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler

    drivers = {d["metadata"]["name"]: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", **d}
               for d in drivers_objects(("a-gone", {"default": True}), ("z-kept", {"nodeSelector": {"pool": "z"}}))}
    kube = GoneKube("a-gone")
    Reconciler(kube, "gpu-operator").reconcile(  # type: ignore[arg-type]
        Snapshot(nodes={}, policies={}, owned={}, pods={}, revisions={}, nvidia_drivers=drivers)
    )
    assert kube.statuses[("NVIDIADriver", "z-kept")]["state"] == "notReady"


@pytest.mark.parametrize("value", [1.5, True, []])
def test_nvidiadriver_messages_name_the_field_not_pydantics_union_branches(value: Any) -> None:
    with pytest.raises(ValueError) as exc:
        nvidiadriver_api.parse_spec({"upgradePolicy": {"maxUnavailable": value}})
    assert ".int:" not in str(exc.value) and ".str:" not in str(exc.value)
    assert "spec.upgradePolicy.maxUnavailable:" in str(exc.value)
    with pytest.raises(ValueError, match=r"spec\.nodeSelectr: unknown field \(did you mean nodeSelector\?\)"):
        nvidiadriver_api.parse_spec({"nodeSelectr": {"a": "b"}})


@pytest.mark.parametrize("spec", [[], 0, False])
def test_an_nvidiadriver_spec_that_is_not_a_mapping_is_refused(spec: Any) -> None:
    """As a ClusterPolicy's: a falsy spec was read as `{}` (a driver of the defaults); only a null one is."""
    with pytest.raises(ValueError, match=r"^spec: Input should be a valid dictionary"):
        nvidiadriver_api.parse_spec(spec)
    assert nvidiadriver_api.parse_spec(None) == nvidiadriver_api.parse_spec({})


def test_a_malformed_node_affinity_is_refused_naming_the_field() -> None:
    """Upstream's CRD types nodeAffinity (corev1.NodeAffinity); a string where a NodeSelector goes crashed every
    pass in excluding_owned instead."""
    bad = {"requiredDuringSchedulingIgnoredDuringExecution": "oops"}
    with pytest.raises(ValueError, match=r"spec\.nodeAffinity\.requiredDuringSchedulingIgnoredDuringExecution"):
        nvidiadriver_api.parse_spec({"default": True, "nodeAffinity": bad})
    refused = NVIDIADriver.from_object({"metadata": {"name": "default", "uid": "u"},
                                        "spec": {"default": True, "nodeAffinity": bad}})
    assert refused.spec is None and "nodeAffinity" in (refused.problem or "")
    raw = copy.deepcopy(load_policy()["spec"])
    raw["driver"]["useNvidiaDriverCRD"] = True
    render_all(parse_spec(raw), nvidia_drivers=[{"metadata": {"name": "default", "uid": "u"},
                                                "spec": {"default": True, "nodeAffinity": bad}}])
    schema = nvidiadriver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    affinity = schema["properties"]["nodeAffinity"]
    assert "x-kubernetes-preserve-unknown-fields" not in affinity
    assert affinity["properties"]["requiredDuringSchedulingIgnoredDuringExecution"]["required"] == [
        "nodeSelectorTerms"
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"default": True, "nodeSelector": {"team": "x"}}, "default NVIDIADriver must not use nodeSelector"),
        ({"nodeSelector": {OWNER_LABEL: "team-a"}}, f"nodeSelector must not use the operator's label {OWNER_LABEL}"),
    ],
)
def test_the_crds_spec_rules_are_the_models_too(spec: dict[str, Any], message: str) -> None:
    """The CRD's spec-level CEL rules (nvidiadriver_api._SPEC_RULES) were not the model's, so `render --nodes` and a
    pass took what the API server refuses, with a meaning upstream never gives: a default with a nodeSelector took
    every GPU node, the unselected ones too. Upstream's ValidateNodeSelector refuses both in the controller."""
    with pytest.raises(ValueError, match=rf"^spec\.nodeSelector: {message}$"):
        nvidiadriver_api.parse_spec(spec)
    nodes = [facts("a1", labels={"team": "x"}), facts("b1", labels={"team": "y"})]
    found = assign(nodes, [nvd("team-a", **spec)])
    assert found.owner == {} and found.problems == {"team-a": f"invalid spec: spec.nodeSelector: {message}"}


def test_a_resource_quantity_the_api_server_refuses_is_refused_naming_the_field() -> None:
    """Upstream's NVIDIADriver CRD gives resources.limits/requests values the quantity pattern; ours did not, so
    `memory: 512MB` was taken and the driver DaemonSet carrying it refused (422) on every pass."""
    with pytest.raises(ValueError, match=r"spec\.resources\.limits\.memory: must be a quantity"):
        nvidiadriver_api.parse_spec({"driverType": "gpu", "resources": {"limits": {"memory": "512MB"}}})
    spec = nvidiadriver_api.parse_spec({"resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m"}}})
    assert spec.resources is not None and spec.resources.requests == {"cpu": "100m"}


def test_a_toleration_the_api_server_refuses_is_refused_naming_the_field() -> None:
    """An NVIDIADriver's tolerations go into its driver pods; it shares the ClusterPolicy's Toleration rules."""
    with pytest.raises(ValueError, match=r"^spec\.tolerations\[0\]\.effect: must be NoExecute when tolerationSeconds"):
        nvidiadriver_api.parse_spec({"tolerations": [{"key": "a", "operator": "Exists", "tolerationSeconds": 5}]})
    spec = nvidiadriver_api.parse_spec({"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute"}]})
    assert spec.tolerations[0].effect == "NoExecute"


def test_labels_the_api_server_refuses_are_refused_naming_the_field() -> None:
    """An NVIDIADriver's labels and annotations go on its DaemonSets and pods, as the ClusterPolicy's do."""
    with pytest.raises(ValueError, match=r"^spec\.labels\.team: String should match pattern"):
        nvidiadriver_api.parse_spec({"labels": {"team": "gpu team"}})
    with pytest.raises(ValueError, match=r'^spec\.annotations: annotation key "bad key" must be a name'):
        nvidiadriver_api.parse_spec({"annotations": {"bad key": "x"}})
    assert nvidiadriver_api.parse_spec({"labels": {"example.com/team": "gpu"}}).labels == {"example.com/team": "gpu"}


def _running(nodes: list[str]) -> dict[str, dict[str, Any]]:
    """Running driver pods of the ClusterPolicy's DaemonSet (the default NVIDIADriver's once re-owned)."""
    return {name: {**pod, "owner": CP_DS} for name, pod in _orphans(nodes).items()}


def test_a_node_is_not_moved_to_an_nvidiadriver_whose_daemonsets_cannot_render() -> None:
    """x takes a2 from the default, but x's spec cannot render (usePrecompiled with GDS: x alone is held, its
    status says so, it has no DaemonSet). The upgrade used to start on a2 at once (its driver pod 'of the
    NVIDIADriver the node moves away from'): cordoned, drained, its working driver pod deleted at pod restart, with
    no DaemonSet to replace it. Now nothing moves to x until its spec renders: a2 keeps its owner label and driver."""
    from gpu_operator.upgrade.model import STATE_LABEL

    base = {"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}
    nodes = [facts("a1", labels=dict(base)), facts("a2", labels={**base, "pool": "x"})]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    pods = _running(["a1", "a2"])
    bad = {"nodeSelector": {"pool": "x"}, "usePrecompiled": True, "gds": {"enabled": True}}
    drivers = _nvd_objects(default={"default": True}, x=bad)
    kube, left = _switch_pass(nodes, crd_policy(), drivers, owned, pods)
    assert not any("-x-" in k[2] for k in left if k[0] == "DaemonSet")  # x has no DaemonSet
    assert not kube.node_patches(OWNER_LABEL)
    assert "a2" not in kube.node_patches("unschedulable"), "a2 cordoned for a driver that cannot be deployed"
    assert not kube.node_patches(STATE_LABEL).get("a2"), kube.node_patches(STATE_LABEL)


def test_a_node_is_not_moved_to_an_nvidiadriver_that_cannot_render_with_autoupgrade_off() -> None:
    """As above with x's autoUpgrade off. The guard was in the upgrade alone and the node patch held the owner label
    only under autoUpgrade: a2's label moved to x at once, the default's DaemonSet dropped a2's running driver pod
    and x had no DaemonSet to replace it. Now which NVIDIADrivers cannot render is decided before the node patches:
    a2 keeps its owner label whatever x's autoUpgrade."""
    from gpu_operator.upgrade.model import STATE_LABEL

    base = {"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}
    nodes = [facts("a1", labels=dict(base)), facts("a2", labels={**base, "pool": "x"})]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    pods = _running(["a1", "a2"])
    bad = {"nodeSelector": {"pool": "x"}, "usePrecompiled": True, "gds": {"enabled": True},
           "upgradePolicy": {"autoUpgrade": False}}  # fmt: skip
    drivers = _nvd_objects(default={"default": True}, x=bad)
    kube, left = _switch_pass(nodes, crd_policy(), drivers, owned, pods)
    assert not any("-x-" in k[2] for k in left if k[0] == "DaemonSet")  # x has no DaemonSet
    assert not kube.node_patches(OWNER_LABEL).get("a2"), kube.node_patches(OWNER_LABEL)


def test_a_node_mid_upgrade_taken_by_an_nvidiadriver_that_cannot_render_is_let_go() -> None:
    """a2 is mid-upgrade under the default (drain-required, cordoned by the upgrade) when x, whose spec cannot
    render, takes it. a2 keeps its owner label, so x's upgrade leaves it out; the default's had no a2 (the
    assignment gives it to x) and the let-go skipped it (it has an NVIDIADriver): it stayed cordoned in
    drain-required, without a word, for as long as x could not render. Now it is let go: uncordoned, state removed."""
    from dataclasses import replace

    from gpu_operator.upgrade.model import STATE_LABEL

    base = {"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done"}
    nodes = [facts("a1", labels=dict(base)), facts("a2", labels={**base, "pool": "x"})]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    pods = _running(["a1", "a2"])
    nodes[1] = replace(facts("a2", labels={**base, "pool": "x", STATE_LABEL: "drain-required"}), unschedulable=True)
    bad = {"nodeSelector": {"pool": "x"}, "usePrecompiled": True, "gds": {"enabled": True}}
    drivers = _nvd_objects(default={"default": True}, x=bad)
    kube, _ = _switch_pass(nodes, crd_policy(), drivers, owned, pods)
    assert "a2" in kube.node_patches(STATE_LABEL) and "a2" in kube.node_patches("unschedulable")
    assert not kube.node_patches(OWNER_LABEL).get("a2"), "a2 keeps its owner label (and its driver)"


def test_a_node_whose_old_nvidiadriver_keeps_no_other_node_of_its_pool_keeps_its_driver_pod() -> None:
    """The hold keeps the owner labels of a1 and a2 so that the default's DaemonSet (of their pool) keeps running
    their driver pods until the upgrade cordons and drains each. The driver state renders an NVIDIADriver's pool
    DaemonSets from the nodes the assignment gives it: once x took every node of that pool, the default rendered no
    DaemonSet for it and the pass pruned it (propagation Background): every driver pod of the pool deleted at once,
    no cordon, no drain. Now a driver DaemonSet that runs the pod of a held node is kept until the node moved."""
    from gpu_operator.upgrade.model import STATE_LABEL

    base = {"nvidia.com/gpu.deploy.driver": "true", STATE_LABEL: "upgrade-done", "pool": "x"}
    nodes = [facts("a1", labels=dict(base)), facts("a2", labels=dict(base))]
    _, owned = _switch_pass(nodes, copy.deepcopy(load_policy()["spec"]), {}, {})
    pods = _running(["a1", "a2"])
    # useNvidiaDriverCRD with the default NVIDIADriver alone: the ClusterPolicy's DaemonSet is kept, re-owned.
    default = _nvd_objects(default={"default": True})
    kube, left = _switch_pass(nodes, crd_policy(), default, owned, pods)
    assert not kube.deletes(CP_DS)
    assert any(r.get("kind") == "NVIDIADriver"
               for r in left[("DaemonSet", "gpu-operator", CP_DS)]["metadata"]["ownerReferences"])  # fmt: skip
    # Then the admin adds NVIDIADriver x (autoUpgrade on) selecting the pool's nodes.
    drivers = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "x"}})
    kube, _ = _switch_pass(nodes, crd_policy(), drivers, left, pods)
    assert not kube.node_patches(OWNER_LABEL), "owner labels are held while the driver pods run"
    assert not kube.deletes(CP_DS), "the DaemonSet running a1's and a2's driver pods was deleted with them"
    # a1 moved (at its pod restart): the DaemonSet stays for a2's pod; once a2 moved too, it goes.
    moved = [facts(n.name, labels={**n.labels, OWNER_LABEL: "x"}) for n in nodes]
    kube, left = _switch_pass([moved[0], nodes[1]], crd_policy(), drivers, left, _running(["a2"]))
    assert not kube.deletes(CP_DS)
    kube, _ = _switch_pass(moved, crd_policy(), drivers, left, {})
    assert kube.deletes(CP_DS)


def test_a_held_node_leaving_a_precompiled_nvidiadriver_keeps_its_driver_kernel_label() -> None:
    """c1 runs NVIDIADriver pool-c's precompiled driver (DaemonSet nodeSelector: owner pool-c and driver-kernel
    5.15...) and moves to pool-b (not precompiled, autoUpgrade on). The hold keeps c1's owner label so that pool-c's
    DaemonSet keeps running c1's driver pod until the upgrade has cordoned and drained c1; but the same held patch
    removed c1's driver-kernel label (pool-b wants none), which pool-c's DaemonSet selects on too: the DaemonSet
    controller deleted c1's driver pod at once. Now the label change is held too, and moves with the owner label
    at pod restart (MoveOwner)."""
    from gpu_operator.nodes import DRIVER_KERNEL
    from gpu_operator.readiness import daemon_node_count
    from gpu_operator.render import driver_node_patches, driver_routing, plan, relabelled
    from gpu_operator.states import RenderContext
    from gpu_operator.upgrade import MoveOwner
    from gpu_operator.upgrade.adapter import _merge, upgrade_nodes

    common = {DRIVER_KERNEL: "5.15.0-122-generic", "nvidia.com/gpu.deploy.driver": "true",
              "nvidia.com/gpu.present": "true", OWNER_LABEL: "pool-c"}  # fmt: skip
    moving = facts("c1", kernel="5.15.0-122-generic", labels={**common, "pool": "b"})
    staying = facts("c2", kernel="5.15.0-122-generic", labels={**common, "pool": "c"})  # pool-c keeps its pool
    spec = parse_spec(crd_policy())
    drivers = [nvd("pool-c", repository="nvcr.io/nvidia", image="driver", version="580", usePrecompiled=True,
                   nodeSelector={"pool": "c"}),
               nvd("pool-b", repository="nvcr.io/nvidia", image="driver", version="580", nodeSelector={"pool": "b"})]
    nodes = [moving, staying]
    routing = driver_routing(nodes, spec, drivers)
    assert routing.assignment is not None and routing.assignment.owner == {"c1": "pool-b", "c2": "pool-c"}
    patches = driver_node_patches(nodes, spec, routing, holding={"c1", "c2"})
    after = relabelled(nodes, patches)
    ctx = RenderContext(spec=spec, namespace="gpu-operator", nodes=tuple(after), nvidia_drivers=routing.groups)
    ds = daemonset(plan(ctx), "nvidia-driver-daemonset-pool-c-ubuntu22.04-5.15.0-122-generic")
    assert after[0].labels.get(OWNER_LABEL) == "pool-c"  # held
    assert daemon_node_count(ds["spec"]["template"]["spec"], [after[0]]) == 1, (
        f"pool-c's DaemonSet drops c1 (and its running driver pod) at once: c1's patch {patches.get('c1')}"
    )
    # At pod restart the label goes with the owner label, in one patch.
    pods = {name: {**pod, "owner": "nvidia-driver-daemonset-pool-c"} for name, pod in _orphans(["c1"]).items()}
    (node,) = upgrade_nodes([after[0]], pods, {}, label="pool-b", precompiled=False)
    assert (node.owner_move, node.owner_kernel) == ("pool-b", "")
    patch: dict[str, Any] = {}
    assert _merge(patch, MoveOwner("c1", "pool-b", "")) and patch == {
        "metadata": {"labels": {OWNER_LABEL: "pool-b", DRIVER_KERNEL: None}}}  # fmt: skip


def test_a_node_let_go_whose_write_failed_is_let_go_by_a_later_pass() -> None:
    """NVIDIADriver pool-b is deleted while b1 is mid-upgrade (cordoned by it). The pass removed b1's owner label
    (its node patch) and only later let b1 go (left_behind), deciding that by the owner label: when that write
    failed (a 500; the Executor logs it and goes on) or the pass was cut between the two, no later pass let b1 go
    (cordoned in pod-restart-required for good). Now the owner label stays until the let-go's own patch removes it
    with the state label, so a later pass lets b1 go."""
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.upgrade.model import STATE_LABEL
    from support import RecordingKube

    class Kube(RecordingKube):
        fail = True

        def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            return obj

        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "Node" and self.fail and STATE_LABEL in (patch.get("metadata") or {}).get("labels", {}):
                raise ApiError(500, '{"message": "etcdserver: request timed out"}', f"PATCH Node {name}")
            return super().merge_patch(kind, name, patch, *a, **k)

    raw = support_node("b1", labels={"pool": "b", OWNER_LABEL: "pool-b", STATE_LABEL: "pod-restart-required",
                                     "nvidia.com/gpu.deploy.driver": "true"})  # fmt: skip
    raw["spec"] = {"unschedulable": True}  # cordoned by the upgrade
    other = _nvd_objects(other={"nodeSelector": {"pool": "a"}})  # pool-b is gone; other does not select b1

    def node_patches(fail: bool) -> list[dict[str, Any]]:
        kube = Kube()
        kube.fail = fail
        policies = {"cluster-policy": policy_object(crd_policy())}
        snap = Snapshot(nodes={"b1": NodeFacts.from_node(raw)}, policies=policies, owned={}, pods={}, revisions={},
                        nvidia_drivers=other)  # fmt: skip
        Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
        return [p for verb, (kind, _, p, *__) in [c for c in kube.calls if c[0] == "merge_patch"] if kind == "Node"]

    # The let-go write fails: nothing that went through took b1's owner label.
    assert not [p for p in node_patches(fail=True) if OWNER_LABEL in (p.get("metadata") or {}).get("labels", {})]
    let_go = [p for p in node_patches(fail=False) if STATE_LABEL in (p.get("metadata") or {}).get("labels", {})]
    assert let_go == [{"metadata": {"labels": {STATE_LABEL: None, OWNER_LABEL: None}}, "spec": {"unschedulable": None}}]


def test_a_node_let_go_for_a_conflict_keeps_its_conflict_label() -> None:
    """The let-go removes the owner label of a node no NVIDIADriver drives, but not the conflict marker that the
    pass writes on a node two NVIDIADrivers select (the default's DaemonSets avoid it by that label)."""
    from dataclasses import replace

    from gpu_operator.upgrade.model import STATE_LABEL

    b1 = replace(facts("b1", labels={"pool": "b", OWNER_LABEL: "pool-b", STATE_LABEL: "pod-restart-required",
                                     "nvidia.com/gpu.deploy.driver": "true"}), unschedulable=True)  # fmt: skip
    drivers = _nvd_objects(default={"default": True}, x={"nodeSelector": {"pool": "b"}},
                           y={"nodeSelector": {"pool": "b"}})  # fmt: skip
    kube, _ = _switch_pass([b1], crd_policy(), drivers, {})
    assert [v for _, v in kube.node_patches(OWNER_LABEL)["b1"]] == [CONFLICT_VALUE]
    assert [v for _, v in kube.node_patches(STATE_LABEL)["b1"]] == [None]  # let go


def test_the_joined_upgrade_waiting_list_keeps_the_first_50_by_name() -> None:
    """Under NVIDIADrivers each one's status.upgrade.waiting (at most 50) was joined as it came: 100 entries, out of
    name order, where the CRD says at most 50."""
    from gpu_operator.reconciler import _sum_upgrades

    def part(prefix: str) -> dict[str, Any]:
        waiting = [{"node": f"{prefix}{i:03d}", "state": "wait-for-jobs-required", "reason": "jobs"} for i in range(50)]
        return {"total": 60, "inProgress": 55, "done": 5, "failed": 0, "pending": 0, "available": 0,
                "waiting": waiting}  # fmt: skip

    joined = _sum_upgrades(part("z"), part("a"))
    assert joined is not None and joined["inProgress"] == 110
    assert [w["node"] for w in joined["waiting"]] == [f"a{i:03d}" for i in range(50)]


class _RefusedListKube:
    """observe()'s reads of a cluster whose answer to listing NVIDIADrivers is `status` (403: a ClusterRole from an
    older chart without `list` on nvidiadrivers; 404: the CRD not installed); every other listing answers with what
    the cluster holds."""

    def __init__(self, status: int, nodes: list[dict[str, Any]], policy: dict[str, Any],
                 owned: dict[Any, dict[str, Any]]):  # fmt: skip
        self.status, self.nodes, self.policy, self.owned = status, nodes, policy, owned

    def api_groups(self) -> frozenset[str]:
        return frozenset({"apps", "nvidia.com", "node.k8s.io", "rbac.authorization.k8s.io"})

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        from gpu_operator.kube import ApiError

        if kind == "NVIDIADriver":
            raise ApiError(self.status, '{"message": "nvidiadrivers.nvidia.com is forbidden: User \\"x\\" cannot list '
                           'resource \\"nvidiadrivers\\""}', "GET /apis/nvidia.com/v1alpha1/nvidiadrivers")  # fmt: skip
        if kind == "ClusterPolicy":
            return [copy.deepcopy(self.policy)]
        return [copy.deepcopy(o) for k, o in self.owned.items() if k[0] == kind]

    def each(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        return iter(copy.deepcopy(self.nodes) if kind == "Node" else [])


def _refused_pass(spec: dict[str, Any]) -> tuple[Any, DeleteRecordingKube]:
    """observe() of two nodes that NVIDIADriver `all` drives, NVIDIADrivers' listing refused (403), and one pass
    over it under a ClusterPolicy of `spec`: the snapshot, and the pass's record."""
    from gpu_operator.observe import observe
    from gpu_operator.reconciler import Reconciler

    labels = {"nvidia.com/gpu.deploy.driver": "true", OWNER_LABEL: "all"}
    nodes = [support_node(n, labels=labels) for n in ("a1", "a2")]
    _, owned = _switch_pass([facts(n, labels=labels) for n in ("a1", "a2")], crd_policy(),
                            _nvd_objects(all={"version": "580.95.05"}), {})  # fmt: skip
    assert ("DaemonSet", "gpu-operator", REFUSED_DS) in owned
    snap = observe(_RefusedListKube(403, nodes, policy_object(spec), owned), "gpu-operator")  # type: ignore[arg-type]
    kube = DeleteRecordingKube()
    Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
    return snap, kube


REFUSED_DS = "nvidia-driver-daemonset-all-ubuntu22.04"


def test_a_refused_nvidiadriver_listing_is_not_read_as_none() -> None:
    """useNvidiaDriverCRD with an NVIDIADriver `all` driving two nodes, and a ClusterRole without `list` on
    nvidiadrivers (one left from an older chart). observe.list_nvidia_drivers read the 403 as "no NVIDIADriver", and
    the pass that followed pruned `all`'s driver DaemonSet with Background propagation: every driver pod of that
    NVIDIADriver deleted at once, no cordon, no drain, from missing knowledge. Upstream registers its NVIDIADriver
    controller always (cmd/gpu-operator/main.go): a refused list stops its cache sync, nothing is deleted. Now the
    snapshot carries the refusal and a pass under useNvidiaDriverCRD fails on it, deleting nothing, its status
    naming the permission; only a 404 (no CRD) is none."""
    snap, kube = _refused_pass(crd_policy())
    assert snap.nvidia_drivers == {} and snap.nvidia_drivers_refused is not None
    assert not [what for verb, what in kube.calls if verb == "delete"]
    status = kube.statuses[("ClusterPolicy", "cluster-policy")]
    assert status["state"] == "notReady"
    error = next(c for c in status["conditions"] if c["type"] == "Error")
    assert 'cannot list resource "nvidiadrivers"' in error["message"], error
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import observe, require_nvidia_drivers

    with pytest.raises(ApiError) as refused:  # (the CLI's readers: upgrade plan, versions)
        require_nvidia_drivers(snap, True)
    assert refused.value.status == 403
    # What reading it as none led to: the NVIDIADriver's DaemonSet deleted with its pods.
    labels = {"nvidia.com/gpu.deploy.driver": "true", OWNER_LABEL: "all"}
    _, owned = _switch_pass([facts(n, labels=labels) for n in ("a1", "a2")], crd_policy(),
                            _nvd_objects(all={"version": "580.95.05"}), {})  # fmt: skip
    kube, _ = _switch_pass([facts(n, labels=labels) for n in ("a1", "a2")], crd_policy(), {}, owned)
    assert kube.deletes(REFUSED_DS) == [(0, None)]
    # No CRD (404): none, as before.
    nodes = [support_node(n, labels=labels) for n in ("a1", "a2")]
    snap = observe(_RefusedListKube(404, nodes, policy_object(crd_policy()), owned), "gpu-operator")  # type: ignore[arg-type]
    assert snap.nvidia_drivers == {} and snap.nvidia_drivers_refused is None


def test_without_use_nvidia_driver_crd_a_refused_nvidiadriver_listing_reads_as_none() -> None:
    """The previous chart (0.2.0) grants nothing on nvidiadrivers, and `helm upgrade` runs today's operator under
    it until the chart's new ClusterRole is in place (e2e test_helm_lifecycle). Since the 403 raised, the operator's
    start-up listing retried it for good and no pass ran: the ClusterPolicy never got ready. Without
    useNvidiaDriverCRD NVIDIADrivers drive nothing (upstream's NVIDIADriver controller skips a ClusterPolicy
    without it): the refusal reads as none and the pass goes on."""
    snap, kube = _refused_pass(load_policy()["spec"])
    assert snap.nvidia_drivers == {} and snap.nvidia_drivers_refused is not None
    from gpu_operator.observe import require_nvidia_drivers

    require_nvidia_drivers(snap, False)
    status = kube.statuses[("ClusterPolicy", "cluster-policy")]
    assert all(c.get("reason") != "ReconcileFailed" and "nvidiadrivers" not in c.get("message", "")
               for c in status["conditions"]), status  # (applied, waiting for the operands: a pass as usual)
    assert any(verb == "apply" and o["metadata"]["name"] == CP_DS for verb, o in kube.calls)


OLD_MANAGER = "nvcr.io/nvidia/cloud-native/k8s-driver-manager:v0.12.0"
NEW_MANAGER = "nvcr.io/nvidia/cloud-native/k8s-driver-manager:v0.13.0"
MANAGER_KEY = ("DaemonSet", "gpu-operator", CP_DS)


def _manager_of(ds: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "k8s-driver-manager")


def test_a_new_default_driver_manager_image_keeps_an_nvidiadrivers_unchanged_driver_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An NVIDIADriver whose `manager` names no image (upstream's sample has `manager: {}`) takes the operator's
    DRIVER_MANAGER_IMAGE. An operator upgrade that changed that default changed the pod template and
    DRIVER_CONFIG_DIGEST of every such NVIDIADriver's DaemonSets: every driver pod out of date and, under its
    autoUpgrade, every GPU node cordoned, drained and its driver reinstalled. Upstream (internal/state/driver.go
    handleDefaultImagesInObjects) renders it again with the k8s-driver-manager image its DaemonSet runs and keeps
    that image while nothing else changes ("This avoids triggering undesired driver upgrades when the operator
    itself is upgraded"); so do we, by the image our annotation records on the DaemonSet (the owned-object cache
    keeps no containers)."""
    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true"})]
    drivers = _nvd_objects(default={"default": True, "manager": {}})
    monkeypatch.setenv("DRIVER_MANAGER_IMAGE", OLD_MANAGER)
    _, owned = _switch_pass(nodes, crd_policy(), drivers, {})
    assert _manager_of(owned[MANAGER_KEY])["image"] == OLD_MANAGER
    cached = copy.deepcopy(owned)  # as the cache keeps a DaemonSet: no containers, init containers or volumes
    for key, obj in cached.items():
        if key[0] == "DaemonSet":
            for part in ("containers", "initContainers", "volumes"):
                obj["spec"]["template"]["spec"].pop(part, None)
    monkeypatch.setenv("DRIVER_MANAGER_IMAGE", NEW_MANAGER)  # the upgraded operator's env
    kube, _ = _switch_pass(nodes, crd_policy(), drivers, cached)
    applied = [o for verb, o in kube.calls if verb == "apply" and o["metadata"]["name"] == CP_DS]
    assert not applied, f"the operator upgrade changed the manager image: {_manager_of(applied[0])['image']}"
    # A change of the NVIDIADriver's spec takes the new default image with it (upstream: "Driver spec has changed,
    # updating k8s-driver-manager image as well").
    changed = _nvd_objects(default={"default": True, "manager": {}, "env": [{"name": "X", "value": "1"}]})
    _, left = _switch_pass(nodes, crd_policy(), changed, cached)
    assert _manager_of(left[MANAGER_KEY])["image"] == NEW_MANAGER


def test_the_first_operator_upgrade_onto_the_manager_image_annotation_keeps_the_running_manager_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kept k8s-driver-manager image was read only from our annotation, which no DaemonSet made by an operator
    from before it carries (and the re-render's hash included the annotation, so it never matched such a DaemonSet's):
    the upgrade onto this version with a new DRIVER_MANAGER_IMAGE still changed every such NVIDIADriver's driver pod
    template and DRIVER_CONFIG_DIGEST, and autoUpgrade reinstalled every node's driver. Upstream
    (handleDefaultImagesInObjects) reads the image the live DaemonSet's k8s-driver-manager runs. Now a DaemonSet
    without the annotation keeps the image of its newest ControllerRevision's k8s-driver-manager when the re-render
    without the annotation has its hash; only the annotation (and the hash) are written."""
    from gpu_operator.observe import Snapshot, key_of, revision_projection
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.states.base import HASH_ANNOTATION, object_hash
    from gpu_operator.states.driver import MANAGER_IMAGE_ANNOTATION

    nodes = [facts("a1", labels={"nvidia.com/gpu.deploy.driver": "true"})]
    drivers = _nvd_objects(default={"default": True, "manager": {}})

    def one_pass(owned: dict[Any, dict[str, Any]], revisions: dict[str, dict[str, Any]]) -> DeleteRecordingKube:
        kube = DeleteRecordingKube()
        snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy_object(crd_policy())},
                        owned=owned, pods={}, revisions=revisions, nvidia_drivers=drivers)  # fmt: skip
        Reconciler(kube, "gpu-operator").reconcile(snap)  # type: ignore[arg-type]
        return kube

    monkeypatch.setenv("DRIVER_MANAGER_IMAGE", OLD_MANAGER)
    rendered = {key_of(o): o for verb, o in one_pass({}, {}).calls if verb == "apply"}
    ds = copy.deepcopy(rendered[MANAGER_KEY])
    # The DaemonSet as the operator before the annotation applied it: the same object without it, hashed so.
    del ds["metadata"]["annotations"][MANAGER_IMAGE_ANNOTATION]
    ds["metadata"]["annotations"][HASH_ANNOTATION] = object_hash(ds)
    ds["metadata"]["uid"] = "ds-uid"
    revision = {"metadata": {"name": f"{CP_DS}-abc", "labels": {"controller-revision-hash": "abc"},
                             "ownerReferences": [{"kind": "DaemonSet", "name": CP_DS, "uid": "ds-uid"}]},
                "data": {"spec": {"template": {**copy.deepcopy(ds["spec"]["template"]), "$patch": "replace"}}},
                "revision": 1}  # fmt: skip
    revisions = {revision["metadata"]["name"]: revision_projection(revision)}
    assert revisions[f"{CP_DS}-abc"]["manager"] == OLD_MANAGER
    cached = copy.deepcopy(ds)  # the owned-object cache keeps no containers, init containers or volumes
    for part in ("containers", "initContainers", "volumes"):
        cached["spec"]["template"]["spec"].pop(part, None)
    owned = {k: o for k, o in rendered.items() if k != MANAGER_KEY} | {MANAGER_KEY: cached}

    monkeypatch.setenv("DRIVER_MANAGER_IMAGE", NEW_MANAGER)  # the upgraded operator's env
    applied = [o for verb, o in one_pass(owned, revisions).calls if verb == "apply" and o["metadata"]["name"] == CP_DS]
    assert [_manager_of(o)["image"] for o in applied] == [OLD_MANAGER], "the operator upgrade changed the manager image"
    (kept,) = applied
    assert kept["spec"]["template"] == ds["spec"]["template"]  # no driver pod goes out of date
    assert kept["metadata"]["annotations"][MANAGER_IMAGE_ANNOTATION] == OLD_MANAGER
    # A DaemonSet of another spec (the NVIDIADriver changed while the operator was down) takes the new default.
    changed = _nvd_objects(default={"default": True, "manager": {}, "env": [{"name": "X", "value": "1"}]})
    drivers = changed
    applied = [o for verb, o in one_pass(owned, revisions).calls if verb == "apply" and o["metadata"]["name"] == CP_DS]
    assert [_manager_of(o)["image"] for o in applied] == [NEW_MANAGER]
