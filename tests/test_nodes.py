"""Node labelling (REFERENCE §3) and driver node pools (§6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_operator.api import ClusterPolicySpec, parse_spec
from gpu_operator.nodes import (
    ALL_OPERANDS,
    CONTAINER_OPERANDS,
    GPU_PCI_LABELS,
    RUNTIME_LABEL,
    NodeFacts,
    Pool,
    apply_patch,
    deploy_label,
    desired_labels,
    driver_pools,
    unpooled,
)
from support import KERNEL, OS_ID, OS_VERSION, PCI, facts, node

DEFAULT = parse_spec({})
SANDBOX = parse_spec({"sandboxWorkloads": {"enabled": True}})
GPU_PRESENT = "nvidia.com/gpu.present"
CONTAINER_LABELS = {deploy_label(op) for op in CONTAINER_OPERANDS}


def labelled(n: NodeFacts, spec: ClusterPolicySpec = DEFAULT) -> NodeFacts:
    """The node after the operator's patch is applied."""
    return NodeFacts(name=n.name, labels=apply_patch(n.labels, desired_labels(n, spec)), has_nfd=n.has_nfd)


# NodeFacts


def test_from_node_keeps_only_relevant_labels_and_reads_status() -> None:
    raw = node("n1", labels={"nvidia.com/gpu.deploy.driver": "true", "example.com/other": "x"})
    raw["spec"] = {"unschedulable": True}
    n = NodeFacts.from_node(raw)
    assert n.name == "n1"
    assert n.labels == {
        PCI: "true",
        OS_ID: "ubuntu",
        OS_VERSION: "22.04",
        KERNEL: "5.15.0-122-generic",
        "nvidia.com/gpu.deploy.driver": "true",
    }
    assert (n.unschedulable, n.ready, n.runtime, n.has_nfd) == (True, True, "containerd", True)
    assert (n.os_id, n.os_version, n.kernel) == ("ubuntu", "22.04", "5.15.0-122-generic")
    assert n.has_gpu and n.deploys("driver") and not n.deploys("dcgm")


def test_from_node_without_nfd_or_status() -> None:
    n = NodeFacts.from_node({"metadata": {"name": "bare"}})
    assert (n.name, n.labels, n.ready, n.runtime, n.has_nfd, n.has_gpu) == ("bare", {}, False, "", False, False)


def test_not_ready_node() -> None:
    assert facts(ready=False).ready is False


# GPU detection


@pytest.mark.parametrize("pci_label", GPU_PCI_LABELS)
def test_gpu_detected_from_each_nfd_pci_label(pci_label: str) -> None:
    n = facts(pci_label=pci_label)
    assert n.has_gpu
    assert desired_labels(n, DEFAULT)[GPU_PRESENT] == "true"


def test_pci_label_must_be_true() -> None:
    assert not facts(gpu=False, labels={PCI: "false"}).has_gpu


def test_new_gpu_node_gets_every_container_deploy_label() -> None:
    patch = desired_labels(facts(), DEFAULT)
    assert patch == {GPU_PRESENT: "true", RUNTIME_LABEL: "containerd", **{label: "true" for label in CONTAINER_LABELS}}
    assert deploy_label("mig-manager") not in patch


def test_gpu_present_not_rewritten_when_already_true() -> None:
    n = facts(labels={GPU_PRESENT: "true"})
    assert GPU_PRESENT not in desired_labels(n, DEFAULT)


# MIG


def test_mig_capable_node_gets_mig_manager_and_default_mig_config() -> None:
    patch = desired_labels(facts(labels={"nvidia.com/mig.capable": "true"}), DEFAULT)
    assert patch[deploy_label("mig-manager")] == "true"
    assert patch["nvidia.com/mig.config"] == "all-disabled"


@pytest.mark.parametrize("capable", [None, "false"])
def test_mig_manager_only_on_mig_capable_nodes(capable: str | None) -> None:
    labels = {"nvidia.com/mig.capable": capable} if capable else {}
    patch = desired_labels(facts(labels=labels), DEFAULT)
    assert deploy_label("mig-manager") not in patch
    assert "nvidia.com/mig.config" not in patch


def test_mig_manager_label_removed_when_node_is_no_longer_mig_capable() -> None:
    n = facts(labels={"nvidia.com/mig.capable": "false", deploy_label("mig-manager"): "true"})
    assert desired_labels(n, DEFAULT)[deploy_label("mig-manager")] is None


def test_existing_mig_config_is_kept() -> None:
    n = facts(labels={"nvidia.com/mig.capable": "true", "nvidia.com/mig.config": "all-1g.10gb"})
    assert "nvidia.com/mig.config" not in desired_labels(n, DEFAULT)


def test_mig_config_seed_follows_the_policy_default() -> None:
    n = facts(labels={"nvidia.com/mig.capable": "true"})
    spec = parse_spec({"migManager": {"config": {"default": "all-balanced"}}})
    assert desired_labels(n, spec)["nvidia.com/mig.config"] == "all-balanced"
    no_default = parse_spec({"migManager": {"config": {"default": ""}}})
    assert "nvidia.com/mig.config" not in desired_labels(n, no_default)
    disabled = parse_spec({"migManager": {"enabled": False}})
    assert "nvidia.com/mig.config" not in desired_labels(n, disabled)


# Opt-outs and paused values


@pytest.mark.parametrize("value", ["false", "disabled", "pre-installed", ""])
def test_user_opt_out_is_never_overwritten(value: str) -> None:
    key = deploy_label("dcgm-exporter")
    patch = desired_labels(facts(labels={key: value}), DEFAULT)
    assert key not in patch
    assert patch[deploy_label("device-plugin")] == "true"


def test_pre_installed_driver_is_left_alone() -> None:
    n = facts(labels={deploy_label("driver"): "pre-installed"})
    assert deploy_label("driver") not in desired_labels(n, DEFAULT)


@pytest.mark.parametrize("value", ["paused-for-driver-upgrade", "paused-for-mig-change"])
def test_paused_values_are_left_alone(value: str) -> None:
    labels = {GPU_PRESENT: "true", RUNTIME_LABEL: "containerd", **{label: "true" for label in CONTAINER_LABELS}}
    labels[deploy_label("device-plugin")] = value
    labels[deploy_label("dcgm-exporter")] = value
    assert desired_labels(facts(labels=labels), DEFAULT) == {}


def test_operands_false_removes_all_deploy_labels() -> None:
    labels = {
        GPU_PRESENT: "true",
        "nvidia.com/gpu.deploy.operands": "false",
        deploy_label("driver"): "true",
        deploy_label("dcgm-exporter"): "false",
        deploy_label("device-plugin"): "paused-for-mig-change",
        deploy_label("mig-manager"): "true",
    }
    patch = desired_labels(facts(labels=labels), DEFAULT)
    assert patch == {
        deploy_label("driver"): None,
        deploy_label("dcgm-exporter"): None,
        deploy_label("device-plugin"): None,
        deploy_label("mig-manager"): None,
    }


def test_operands_false_on_a_fresh_node_adds_nothing_but_gpu_present() -> None:
    n = facts(labels={"nvidia.com/gpu.deploy.operands": "false", "nvidia.com/mig.capable": "true"})
    assert desired_labels(n, DEFAULT) == {GPU_PRESENT: "true"}


# Sandbox workloads

PASSTHROUGH = {deploy_label(op) for op in ("sandbox-device-plugin", "sandbox-validator", "vfio-manager", "cc-manager")}
VGPU = {
    deploy_label(op)
    for op in ("sandbox-device-plugin", "vgpu-manager", "vgpu-device-manager", "sandbox-validator", "cc-manager")
}


def test_workload_config_ignored_without_sandbox_workloads() -> None:
    n = facts(labels={"nvidia.com/gpu.workload.config": "vm-passthrough"})
    patch = desired_labels(n, DEFAULT)
    assert {k for k, v in patch.items() if v == "true"} == CONTAINER_LABELS | {GPU_PRESENT}


@pytest.mark.parametrize(("workload", "expected"), [("vm-passthrough", PASSTHROUGH), ("vm-vgpu", VGPU)])
def test_vm_workload_label_sets(workload: str, expected: set[str]) -> None:
    n = facts(labels={"nvidia.com/gpu.workload.config": workload, "nvidia.com/mig.capable": "true"})
    patch = desired_labels(n, SANDBOX)
    assert {k for k, v in patch.items() if v == "true"} == expected | {GPU_PRESENT}
    assert "nvidia.com/mig.config" not in patch


def test_default_workload_applies_without_a_node_label() -> None:
    spec = parse_spec({"sandboxWorkloads": {"enabled": True, "defaultWorkload": "vm-vgpu"}})
    patch = desired_labels(facts(), spec)
    assert {k for k, v in patch.items() if v == "true"} == VGPU | {GPU_PRESENT}


def test_unknown_workload_falls_back_to_default() -> None:
    n = facts(labels={"nvidia.com/gpu.workload.config": "vm-unknown"})
    patch = desired_labels(n, SANDBOX)
    assert {k for k, v in patch.items() if v == "true"} == CONTAINER_LABELS | {GPU_PRESENT}


def test_labels_of_another_workload_are_removed_but_opt_outs_kept() -> None:
    labels = {
        GPU_PRESENT: "true",
        "nvidia.com/gpu.workload.config": "vm-passthrough",
        **{label: "true" for label in CONTAINER_LABELS},
        deploy_label("dcgm-exporter"): "false",  # user opt-out of a container operand
        deploy_label("vgpu-manager"): "true",  # vm-vgpu only
    }
    patch = desired_labels(facts(labels=labels), SANDBOX)
    removed = {k for k, v in patch.items() if v is None}
    assert removed == (CONTAINER_LABELS - {deploy_label("dcgm-exporter")}) | {deploy_label("vgpu-manager")}
    assert {k for k, v in patch.items() if v == "true"} == PASSTHROUGH


# GPU removed / never a GPU node


def test_node_that_lost_its_gpu() -> None:
    labels = {
        GPU_PRESENT: "true",
        **{label: "true" for label in CONTAINER_LABELS},
        deploy_label("dcgm-exporter"): "false",
        deploy_label("device-plugin"): "paused-for-driver-upgrade",
    }
    patch = desired_labels(facts(gpu=False, labels=labels), DEFAULT)
    assert patch[GPU_PRESENT] == "false"
    assert deploy_label("dcgm-exporter") not in patch
    assert {k for k, v in patch.items() if v is None} == CONTAINER_LABELS - {deploy_label("dcgm-exporter")}
    after = labelled(facts(gpu=False, labels=labels))
    assert after.labels[deploy_label("dcgm-exporter")] == "false"
    assert desired_labels(after, DEFAULT) == {}


def test_non_gpu_node_never_labelled_gets_no_patch() -> None:
    assert desired_labels(facts(gpu=False), DEFAULT) == {}
    assert desired_labels(facts(gpu=False, labels={"nvidia.com/mig.capable": "true"}), SANDBOX) == {}


def test_gpu_present_false_stays_without_patch() -> None:
    assert desired_labels(facts(gpu=False, labels={GPU_PRESENT: "false"}), DEFAULT) == {}


# Idempotence


def test_patch_is_empty_once_applied() -> None:
    n = facts(labels={"nvidia.com/mig.capable": "true"})
    after = labelled(n)
    assert after.labels[GPU_PRESENT] == "true"
    assert desired_labels(after, DEFAULT) == {}


def test_apply_patch_sets_and_removes() -> None:
    assert apply_patch({"a": "1", "b": "2"}, {"a": None, "c": "3", "missing": None}) == {"b": "2", "c": "3"}


DEPLOY_VALUES = st.sampled_from(
    ["true", "false", "paused-for-driver-upgrade", "paused-for-mig-change", "pre-installed"]
)
LABEL_VALUES: dict[str, Any] = {
    **{deploy_label(op): DEPLOY_VALUES for op in (*ALL_OPERANDS, "operands")},
    **{label: st.sampled_from(["true", "false"]) for label in GPU_PCI_LABELS},
    GPU_PRESENT: st.sampled_from(["true", "false"]),
    "nvidia.com/mig.capable": st.sampled_from(["true", "false"]),
    "nvidia.com/mig.config": st.sampled_from(["all-disabled", "all-1g.10gb"]),
    "nvidia.com/gpu.workload.config": st.sampled_from(["container", "vm-passthrough", "vm-vgpu", "bogus"]),
    OS_ID: st.sampled_from(["ubuntu", "rhel"]),
}


@st.composite
def label_sets(draw: st.DrawFn) -> dict[str, str]:
    keys = draw(st.lists(st.sampled_from(sorted(LABEL_VALUES)), unique=True))
    return {k: draw(LABEL_VALUES[k]) for k in keys}


SPECS = st.builds(
    lambda sandbox, workload, mig_enabled, mig_default: parse_spec(
        {
            "sandboxWorkloads": {"enabled": sandbox, "defaultWorkload": workload},
            "migManager": {"enabled": mig_enabled, "config": {"default": mig_default}},
        }
    ),
    st.booleans(),
    st.sampled_from(["container", "vm-passthrough", "vm-vgpu"]),
    st.booleans(),
    st.sampled_from(["all-disabled", ""]),
)


@settings(max_examples=400, deadline=None)
@given(labels=label_sets(), spec=SPECS)
def test_labelling_is_idempotent(labels: dict[str, str], spec: ClusterPolicySpec) -> None:
    n = NodeFacts(name="n", labels=labels)
    patch = desired_labels(n, spec)
    after = NodeFacts(name="n", labels=apply_patch(labels, patch))
    assert desired_labels(after, spec) == {}


@settings(max_examples=400, deadline=None)
@given(labels=label_sets(), spec=SPECS)
def test_labelling_never_overwrites_user_values(labels: dict[str, str], spec: ClusterPolicySpec) -> None:
    patch = desired_labels(NodeFacts(name="n", labels=labels), spec)
    for key, value in patch.items():
        if key.startswith("nvidia.com/gpu.deploy.") and key in labels:
            # An existing deploy label is only ever removed, never rewritten...
            assert value is None, (key, labels[key], value)
            # ...and a user's own value (an opt-out) only by gpu.deploy.operands=false.
            if labels[key] not in ("true", "paused-for-driver-upgrade", "paused-for-mig-change"):
                assert labels.get("nvidia.com/gpu.deploy.operands") == "false" and NodeFacts("n", labels).has_gpu
        if key not in labels:
            assert value is not None, f"removal of absent label {key}"
        else:
            assert value != labels[key], f"no-op change of {key}"
    assert "nvidia.com/gpu.deploy.operands" not in patch


# Driver pools


def driver_node(name: str, os: tuple[str, str], kernel: str = "5.15.0-122-generic", **labels: str) -> NodeFacts:
    return facts(name, os=os, kernel=kernel, labels={deploy_label("driver"): "true", **labels})


def test_one_pool_per_os_in_stable_order() -> None:
    nodes = [
        driver_node("c", ("ubuntu", "24.04"), "6.8.0-45-generic"),
        driver_node("a", ("ubuntu", "22.04")),
        driver_node("d", ("rhel", "9.4"), "5.14.0-427.13.1.el9_4.x86_64"),
        driver_node("b", ("ubuntu", "22.04"), "5.15.0-130-generic"),
    ]
    pools = driver_pools(nodes, precompiled=False)
    assert pools == [Pool("rhel", "9.4"), Pool("ubuntu", "22.04"), Pool("ubuntu", "24.04")]
    assert driver_pools(list(reversed(nodes)), precompiled=False) == pools
    assert [p.name for p in pools] == ["rhel9.4", "ubuntu22.04", "ubuntu24.04"]
    assert pools[1].node_selector() == {OS_ID: "ubuntu", OS_VERSION: "22.04"}


def test_precompiled_pools_split_by_kernel() -> None:
    nodes = [
        driver_node("a", ("ubuntu", "22.04"), "5.15.0-122-generic"),
        driver_node("b", ("ubuntu", "22.04"), "5.15.0-130-generic"),
        driver_node("c", ("ubuntu", "22.04"), "5.15.0-122-generic"),
    ]
    pools = driver_pools(nodes, precompiled=True)
    assert pools == [Pool("ubuntu", "22.04", "5.15.0-122-generic"), Pool("ubuntu", "22.04", "5.15.0-130-generic")]
    assert pools[0].name == "ubuntu22.04-5.15.0-122-generic"
    assert pools[0].node_selector() == {OS_ID: "ubuntu", OS_VERSION: "22.04", KERNEL: "5.15.0-122-generic"}


def test_pool_name_is_dns_safe() -> None:
    pool = Pool("rhel", "9.4", "5.14.0-427.13.1.el9_4.x86_64+debug")
    assert pool.name == "rhel9.4-5.14.0-427.13.1.el9-4.x86-64-debug"


@pytest.mark.parametrize("value", ["false", "pre-installed"])
def test_nodes_without_the_operators_driver_are_not_pooled(value: str) -> None:
    nodes = [
        driver_node("a", ("ubuntu", "22.04")),
        facts("b", os=("rhel", "9.4"), labels={deploy_label("driver"): value}),
    ]
    assert driver_pools(nodes, precompiled=False) == [Pool("ubuntu", "22.04")]


def test_non_gpu_and_unlabelled_nodes_are_not_pooled() -> None:
    nodes = [
        facts("cpu", gpu=False, os=("rhel", "9.4"), labels={deploy_label("driver"): "true"}),
        facts("fresh", os=("rhel", "8.10")),  # not yet labelled by the operator
    ]
    assert driver_pools(nodes, precompiled=False) == []


def test_a_paused_driver_label_keeps_the_node_in_its_pool() -> None:
    paused = facts("n1", labels={"nvidia.com/gpu.deploy.driver": "paused-for-driver-upgrade"})
    assert driver_pools([paused], precompiled=False) == [Pool("ubuntu", "22.04")]


def test_driver_nodes_without_os_labels_are_reported_not_pooled() -> None:
    bare = NodeFacts("bare", labels={PCI: "true", "nvidia.com/gpu.deploy.driver": "true"})
    ok = facts("ok", labels={"nvidia.com/gpu.deploy.driver": "true"})
    opted_out = NodeFacts("out", labels={PCI: "true", "nvidia.com/gpu.deploy.driver": "false"})
    assert driver_pools([bare, ok, opted_out], precompiled=False) == [Pool("ubuntu", "22.04")]
    assert unpooled([bare, ok, opted_out], precompiled=False) == ["bare"]
    no_kernel = NodeFacts("nk", labels={PCI: "true", OS_ID: "ubuntu", OS_VERSION: "22.04",
                                        "nvidia.com/gpu.deploy.driver": "true"})  # fmt: skip
    assert unpooled([no_kernel], precompiled=True) == ["nk"]
    assert unpooled([no_kernel], precompiled=False) == []


def test_pool_names_fit_a_label_value_and_stay_distinct() -> None:
    long_a = Pool("ubuntu", "22.04", "5.15.0-1234-nvidia-lowlatency-64k-pages-with-a-very-long-suffix-a")
    long_b = Pool("ubuntu", "22.04", "5.15.0-1234-nvidia-lowlatency-64k-pages-with-a-very-long-suffix-b")
    for pool in (long_a, long_b):
        assert len(pool.name) <= 63 and pool.name[0].isalnum() and pool.name[-1].isalnum()
    assert long_a.name != long_b.name
    assert Pool("rhel", "9.4", "5.14.0-427.el9.x86_64").name == "rhel9.4-5.14.0-427.el9.x86-64"
