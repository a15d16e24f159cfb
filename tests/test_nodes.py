"""Node labelling (REFERENCE §3) and driver node pools (§6)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_operator.api import ClusterPolicySpec, parse_spec
from gpu_operator.nodes import (
    ALL_OPERANDS,
    DEPLOY_PREFIX,
    DRA_OPERANDS,
    DRIVER_KERNEL,
    GPU_PCI_LABELS,
    RUNTIME_LABEL,
    NodeFacts,
    Pool,
    apply_patch,
    deploy_label,
    desired_annotations,
    desired_labels,
    driver_pools,
    unpooled,
)
from support import KERNEL, OS_ID, OS_VERSION, PCI, facts, node

# The chart's and the samples' migManager.config.default: without a config section no mig.config label is seeded.
MIG_DEFAULT = {"config": {"default": "all-disabled"}}
DEFAULT = parse_spec({"migManager": MIG_DEFAULT})
SANDBOX = parse_spec({"sandboxWorkloads": {"enabled": True}, "migManager": MIG_DEFAULT})
GPU_PRESENT = "nvidia.com/gpu.present"


def labelled(n: NodeFacts, spec: ClusterPolicySpec = DEFAULT) -> NodeFacts:
    """The node after the operator's patch is applied."""
    return replace(n, labels=apply_patch(n.labels, desired_labels(n, spec)))


# NodeFacts


def test_from_node_keeps_only_relevant_labels_and_reads_status() -> None:
    nfd_other = "feature.node.kubernetes.io/cpu-cpuid.AVX512F"
    raw = node("n1", labels={"nvidia.com/gpu.deploy.driver": "true", "example.com/other": "x", nfd_other: "true"})
    raw["spec"] = {"unschedulable": True}
    n = NodeFacts.from_node(raw)
    assert n.name == "n1"
    # NFD's labels other than the OS, kernel and NVIDIA PCI ones are dropped; labels outside NFD are kept (an
    # NVIDIADriver's nodeSelector may name any of them).
    assert n.labels == {
        PCI: "true",
        OS_ID: "ubuntu",
        OS_VERSION: "22.04",
        KERNEL: "5.15.0-122-generic",
        "nvidia.com/gpu.deploy.driver": "true",
        "example.com/other": "x",
        "kubernetes.io/hostname": "n1",
        "kubernetes.io/os": "linux",
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


@pytest.mark.parametrize(
    ("label", "gpu"),
    [
        ("feature.node.kubernetes.io/pci-0302_10de_2330.present", True),  # deviceLabelFields [class, vendor, device]
        ("feature.node.kubernetes.io/pci-0300_10de_2236.present", True),
        ("feature.node.kubernetes.io/pci-10de_2330.present", True),  # [vendor, device]: no class, as pci-10de
        ("feature.node.kubernetes.io/pci-0302_10de_2330_10de_16c1.present", True),  # with the subsystem IDs
        ("feature.node.kubernetes.io/pci-0680_10de_22a3.present", False),  # an NVSwitch: class 0680
    ],
)
def test_gpu_detected_from_nfd_labels_with_the_device_id_alone(label: str, gpu: bool) -> None:
    # NFD writes one label per device with the fields of deviceLabelFields (source/pci/pci.go GetLabels), so with
    # `device` among them the node carries no pci-0302_10de.present nor pci-10de.present.
    n = NodeFacts.from_node(node("n1", pci_label=label))
    assert n.has_gpu is gpu
    assert desired_labels(n, DEFAULT).get(GPU_PRESENT) == ("true" if gpu else None)
    if label.endswith("_2330.present"):
        assert n.identity.describe().startswith("hopper") and n.is_mig_capable


# Label decisions, one row per node/policy combination.

MIG_CAPABLE = "nvidia.com/mig.capable"
MIG_CONFIG = "nvidia.com/mig.config"
PRODUCT = "nvidia.com/gpu.product"
NFD_DEVICE = "feature.node.kubernetes.io/pci-0302_10de_{}.present"
VGPU_HOST = "nvidia.com/vgpu.host-driver-version"
WORKLOAD = "nvidia.com/gpu.workload.config"
OPERANDS = "nvidia.com/gpu.deploy.operands"
PAUSED_DRIVER = "paused-for-driver-upgrade"
PAUSED_MIG = "paused-for-mig-change"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"

# Upstream's deploy-label sets per workload config (gpuStateLabels, controllers/state_manager.go), spelt out here.
CONTAINER = ("driver", "gpu-feature-discovery", "container-toolkit", "device-plugin", "dcgm", "dcgm-exporter",
             "node-status-exporter", "operator-validator", "client")  # fmt: skip
PASSTHROUGH = ("sandbox-device-plugin", "sandbox-validator", "vfio-manager", "kata-manager", "cc-manager", "client")
PASSTHROUGH_KATA = ("kata-sandbox-device-plugin", "sandbox-validator", "vfio-manager", "kata-manager", "cc-manager",
                    "client")  # fmt: skip
VGPU = ("sandbox-device-plugin", "vgpu-manager", "vgpu-device-manager", "sandbox-validator", "cc-manager", "client")
SETS = {"container": CONTAINER, "vm-passthrough": PASSTHROUGH, "vm-vgpu": VGPU}

POLICIES = {
    "default": DEFAULT,  # sandbox off; migManager on with config.default all-disabled (the chart's values)
    "mig-off": parse_spec({"migManager": {"enabled": False}}),
    "no-mig-default": parse_spec({"migManager": {"config": {"default": ""}}}),
    "mig-balanced": parse_spec({"migManager": {"config": {"default": "all-balanced"}}}),  # upstream's CRD: enum
    "sandbox": SANDBOX,  # defaultWorkload container, mode kubevirt
    "sandbox-pt": parse_spec(
        {"sandboxWorkloads": {"enabled": True, "defaultWorkload": "vm-passthrough"}, "migManager": MIG_DEFAULT}
    ),
    "sandbox-vgpu": parse_spec(
        {"sandboxWorkloads": {"enabled": True, "defaultWorkload": "vm-vgpu"}, "migManager": MIG_DEFAULT}
    ),
    "sandbox-kata": parse_spec(
        {"sandboxWorkloads": {"enabled": True, "defaultWorkload": "vm-passthrough", "mode": "kata"},
         "migManager": MIG_DEFAULT}
    ),  # fmt: skip
    "sandbox-mig-off": parse_spec({"sandboxWorkloads": {"enabled": True}, "migManager": {"enabled": False}}),
}


def dl(op: str) -> str:
    return deploy_label(op)


def on(*ops: str) -> dict[str, str | None]:
    return {dl(op): "true" for op in ops}


def off(*ops: str) -> dict[str, str | None]:
    return {dl(op): None for op in ops}


def but(ops: tuple[str, ...], *drop: str) -> tuple[str, ...]:
    return tuple(op for op in ops if op not in drop)


PRESENT: dict[str, str | None] = {GPU_PRESENT: "true"}
ALL_DISABLED: dict[str, str | None] = {MIG_CONFIG: "all-disabled"}
LABELLED = {GPU_PRESENT: "true", **{dl(op): "true" for op in CONTAINER}}  # a container node the operator labelled


def row(id: str, policy: str, labels: dict[str, str], patch: dict[str, str | None], *, gpu: bool = True) -> Any:
    return pytest.param(policy, labels, gpu, patch, id=id)


# Each expectation follows upstream v26.7's NodeLabelingReconciler (controllers/nodelabeling_controller.go:
# reconcileCommonGPULabel, updateGPUStateLabels; controllers/state_manager.go: hasGPULabels, hasMIGCapableGPU,
# getWorkloadConfig, getEffectiveStateLabels, gpuWorkloadConfiguration.updateGPUStateLabels / addGPUStateLabels /
# removeGPUStateLabels, removeAllGPUStateLabels), except where a row says "ours": a sweep (another workload's
# labels, a node without GPUs) removes only values we or an operand manager wrote (true, "", paused-*), never a
# user's opt-out; upstream deletes those too. And dra-driver never leaves a GPU node ("ours" too: upstream keeps
# it while pods with gpu.nvidia.com claims remain there, which this pure function cannot see). A migManager
# config.default other than all-disabled is seeded as well ("ours": upstream's CRD admits only all-disabled or "").
ROWS = [
    # container workload (sandbox workloads off)
    row("fresh-gpu-node", "default", {}, PRESENT | on(*CONTAINER)),
    row("gpu-present-false-on-gpu-node", "default", {GPU_PRESENT: "false"}, PRESENT | on(*CONTAINER)),
    row("mig-capable", "default", {MIG_CAPABLE: "true"}, PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("product-h100-only", "default", {PRODUCT: H100}, PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("product-a100-only", "default", {PRODUCT: A100}, PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("product-a30-only", "default", {PRODUCT: "NVIDIA-A30"}, PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    # upstream's substring match: "a30" is in RTX A3000; H200 is not in its list
    row("product-rtx-a3000-only", "default", {PRODUCT: "NVIDIA-RTX-A3000-Laptop-GPU"},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("product-h200-only", "default", {PRODUCT: "NVIDIA-H200"}, PRESENT | on(*CONTAINER)),
    # ours: before GFD's labels (no driver ran yet), NFD's PCI device-ID label by the default MIG table
    row("nfd-device-a100-80gb-only", "default", {NFD_DEVICE.format("20b5"): "true"},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("nfd-device-h200-only", "default", {NFD_DEVICE.format("2335"): "true"},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("nfd-device-l4-only", "default", {NFD_DEVICE.format("27b8"): "true"}, PRESENT | on(*CONTAINER)),
    row("nfd-device-hgx-h100-with-its-nvswitches", "default",
        {NFD_DEVICE.format("2330"): "true", "feature.node.kubernetes.io/pci-0680_10de_22a3.present": "true"},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("nfd-device-two-models-not-decided", "default",
        {NFD_DEVICE.format("20b5"): "true", NFD_DEVICE.format("2335"): "true"}, PRESENT | on(*CONTAINER)),
    row("gfd-product-beats-nfd-device", "default", {PRODUCT: "NVIDIA-L4", NFD_DEVICE.format("20b5"): "true"},
        PRESENT | on(*CONTAINER)),
    row("product-l4-only", "default", {PRODUCT: "NVIDIA-L4"}, PRESENT | on(*CONTAINER)),
    row("mig-capable-false-beats-product", "default", {MIG_CAPABLE: "false", PRODUCT: H100}, PRESENT | on(*CONTAINER)),
    row("mig-capable-empty-beats-product", "default", {MIG_CAPABLE: "", PRODUCT: H100}, PRESENT | on(*CONTAINER)),
    row("vgpu-host-never-mig-capable", "default", {MIG_CAPABLE: "true", VGPU_HOST: "550.90.05"},
        PRESENT | on(*CONTAINER)),
    row("vgpu-host-label-empty-ignored", "default", {MIG_CAPABLE: "true", VGPU_HOST: ""},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("mig-manager-disabled", "mig-off", {MIG_CAPABLE: "true"}, PRESENT | on(*CONTAINER, "mig-manager")),
    row("mig-default-empty", "no-mig-default", {MIG_CAPABLE: "true"}, PRESENT | on(*CONTAINER, "mig-manager")),
    row("mig-default-other-layout-ours", "mig-balanced", {MIG_CAPABLE: "true"},
        PRESENT | on(*CONTAINER, "mig-manager") | {MIG_CONFIG: "all-balanced"}),
    row("mig-config-kept", "default", {MIG_CAPABLE: "true", MIG_CONFIG: "all-1g.10gb"},
        PRESENT | on(*CONTAINER, "mig-manager")),
    row("mig-config-empty-replaced", "default", {MIG_CAPABLE: "true", MIG_CONFIG: ""},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("mig-manager-opt-out-kept", "default", {MIG_CAPABLE: "true", dl("mig-manager"): "false"},
        PRESENT | on(*CONTAINER) | ALL_DISABLED),
    row("mig-manager-empty-kept", "default", {MIG_CAPABLE: "true", dl("mig-manager"): ""},
        PRESENT | on(*CONTAINER) | ALL_DISABLED),
    # Ours: upstream never sweeps mig-manager from a container node, but sets it only once GFD says MIG-capable; we
    # may set it earlier from NFD's device ID, so GFD's `false` takes a `true` back (an opt-out stays).
    row("mig-manager-swept-once-gfd-says-not-mig-capable", "default",
        {**LABELLED, MIG_CAPABLE: "false", dl("mig-manager"): "true"}, off("mig-manager")),
    row("mig-manager-opt-out-kept-when-not-mig-capable", "default",
        {**LABELLED, MIG_CAPABLE: "false", dl("mig-manager"): "false"}, {}),
    row("mig-manager-kept-while-gfd-has-not-said", "default",
        {**LABELLED, NFD_DEVICE.format("2330"): "true", dl("mig-manager"): "true", MIG_CONFIG: "all-disabled"}, {}),
    row("steady-container-node", "default", LABELLED, {}),
    row("steady-mig-node", "default",
        {**LABELLED, MIG_CAPABLE: "true", dl("mig-manager"): "true", MIG_CONFIG: "all-balanced"}, {}),
    row("opt-outs-kept", "default",
        {dl("dcgm-exporter"): "false", dl("driver"): "pre-installed", dl("device-plugin"): "disabled"},
        PRESENT | on(*but(CONTAINER, "dcgm-exporter", "driver", "device-plugin"))),
    row("empty-values-set", "default", {**LABELLED, dl("device-plugin"): "", dl("client"): ""},
        on("device-plugin", "client")),
    row("paused-values-kept", "default",
        {**LABELLED, dl("device-plugin"): PAUSED_DRIVER, dl("gpu-feature-discovery"): PAUSED_MIG,
         dl("dcgm-exporter"): "custom_" + PAUSED_DRIVER}, {}),  # fmt: skip
    row("vm-labels-swept-opt-out-kept-ours", "default",
        {**LABELLED, dl("vfio-manager"): "true", dl("sandbox-device-plugin"): PAUSED_DRIVER, dl("vgpu-manager"): "",
         dl("kata-sandbox-device-plugin"): "true", dl("cc-manager"): "true", dl("kata-manager"): "false"},
        off("vfio-manager", "sandbox-device-plugin", "kata-sandbox-device-plugin", "cc-manager")),
    # k8s-driver-manager's empty values for the operands it pauses that were not set: they deploy nothing, left
    row("driver-manager-empty-values-left", "default",
        {**LABELLED, **{dl(op): "" for op in ("nvsm", "sandbox-validator", "sandbox-device-plugin",
                                              "vgpu-device-manager", "dra-validator", "dcgm-dra", "dcgm-exporter-dra",
                                              "dra-driver")}}, {}),
    row("workload-label-ignored-without-sandbox", "default", {WORKLOAD: "vm-passthrough"}, PRESENT | on(*CONTAINER)),
    row("dra-labels-swept-dra-driver-kept-ours", "default",
        {**LABELLED, dl("dra-validator"): "true", dl("dcgm-dra"): "true", dl("dcgm-exporter-dra"): PAUSED_DRIVER,
         dl("dra-driver"): "true"},
        off("dra-validator", "dcgm-dra", "dcgm-exporter-dra")),
    row("unknown-deploy-label-untouched", "default", {**LABELLED, dl("nvsm"): "true"}, {}),
    # gpu.deploy.operands=false: every state label but dra-driver goes, whatever its value; mig.config is still seeded
    row("operands-false-fresh-mig-node", "default", {OPERANDS: "false", MIG_CAPABLE: "true"}, PRESENT | ALL_DISABLED),
    row("operands-false-labelled-dra-driver-kept-ours", "default",
        {**LABELLED, OPERANDS: "false", dl("dcgm-exporter"): "false", dl("device-plugin"): PAUSED_DRIVER,
         dl("mig-manager"): "true", dl("vfio-manager"): "false", dl("dra-driver"): "true", dl("nvsm"): "true"},
        off(*CONTAINER, "mig-manager", "vfio-manager")),
    row("operands-false-vm-node", "sandbox-pt", {GPU_PRESENT: "true", OPERANDS: "false", **on(*PASSTHROUGH)},
        off(*PASSTHROUGH)),
    # sandbox workloads on
    row("sandbox-default-container", "sandbox", {MIG_CAPABLE: "true"},
        PRESENT | on(*CONTAINER, "mig-manager") | ALL_DISABLED),
    row("passthrough-mig-capable", "sandbox", {WORKLOAD: "vm-passthrough", MIG_CAPABLE: "true"},
        PRESENT | on(*PASSTHROUGH) | ALL_DISABLED),
    row("vgpu-mig-capable", "sandbox", {WORKLOAD: "vm-vgpu", MIG_CAPABLE: "true"}, PRESENT | on(*VGPU) | ALL_DISABLED),
    row("vgpu-on-vgpu-host", "sandbox", {WORKLOAD: "vm-vgpu", MIG_CAPABLE: "true", VGPU_HOST: "550.90.05"},
        PRESENT | on(*VGPU)),
    row("passthrough-kata", "sandbox-kata", {WORKLOAD: "vm-passthrough"}, PRESENT | on(*PASSTHROUGH_KATA)),
    row("vgpu-kata", "sandbox-kata", {WORKLOAD: "vm-vgpu"}, PRESENT | on(*VGPU)),
    row("default-workload-passthrough", "sandbox-pt", {}, PRESENT | on(*PASSTHROUGH)),
    row("default-workload-vgpu-product-a100", "sandbox-vgpu", {PRODUCT: A100}, PRESENT | on(*VGPU) | ALL_DISABLED),
    row("invalid-workload-label", "sandbox-vgpu", {WORKLOAD: "vm-bogus"}, PRESENT | on(*VGPU)),
    row("empty-workload-label", "sandbox-pt", {WORKLOAD: ""}, PRESENT | on(*PASSTHROUGH)),
    row("sandbox-mig-manager-disabled", "sandbox-mig-off", {WORKLOAD: "vm-passthrough", MIG_CAPABLE: "true"},
        PRESENT | on(*PASSTHROUGH)),
    row("container-to-passthrough-ours", "sandbox",
        {**LABELLED, WORKLOAD: "vm-passthrough", MIG_CAPABLE: "true", dl("mig-manager"): "true",
         MIG_CONFIG: "all-disabled", dl("dcgm-exporter"): "false", dl("device-plugin"): PAUSED_DRIVER},
        off(*but(CONTAINER, "client", "dcgm-exporter"), "mig-manager") | on(*but(PASSTHROUGH, "client"))),
    row("passthrough-kubevirt-to-kata", "sandbox-kata", {GPU_PRESENT: "true", WORKLOAD: "vm-passthrough",
                                                         **on(*PASSTHROUGH)},
        off("sandbox-device-plugin") | on("kata-sandbox-device-plugin")),
    row("vgpu-to-container-ours", "sandbox",
        {GPU_PRESENT: "true", WORKLOAD: "container", MIG_CAPABLE: "true", **on(*VGPU), dl("vgpu-manager"): "false"},
        off(*but(VGPU, "client", "vgpu-manager")) | on(*but(CONTAINER, "client"), "mig-manager") | ALL_DISABLED),
    row("sandbox-switched-off", "default", {GPU_PRESENT: "true", WORKLOAD: "vm-vgpu", **on(*VGPU)},
        off(*but(VGPU, "client")) | on(*but(CONTAINER, "client"))),
    # no GPU (never had one, or NFD no longer sees it)
    row("cpu-node", "default", {}, {}, gpu=False),
    row("cpu-node-mig-labels", "sandbox", {MIG_CAPABLE: "true", PRODUCT: H100}, {}, gpu=False),
    row("cpu-node-gpu-present-false", "default", {GPU_PRESENT: "false"}, {}, gpu=False),
    row("cpu-node-gpu-present-other-value", "default", {GPU_PRESENT: "yes"}, {}, gpu=False),
    row("cpu-node-stale-labels-ours", "default", {dl("driver"): "true", dl("device-plugin"): "false"},
        off("driver"), gpu=False),
    row("gpu-removed-ours", "default",
        {**LABELLED, MIG_CAPABLE: "true", dl("mig-manager"): "true", MIG_CONFIG: "all-disabled",
         dl("dcgm-exporter"): "false", dl("device-plugin"): PAUSED_DRIVER, dl("client"): ""},
        {GPU_PRESENT: "false"} | off(*but(CONTAINER, "dcgm-exporter"), "mig-manager"), gpu=False),
    row("gpu-removed-driver-manager-leftovers-go", "default", {GPU_PRESENT: "true", dl("nvsm"): ""},
        {GPU_PRESENT: "false"} | off("nvsm"), gpu=False),
    row("gpu-removed-nvsm-of-someone-else-kept", "default", {GPU_PRESENT: "true", dl("nvsm"): "true"},
        {GPU_PRESENT: "false"}, gpu=False),
    row("gpu-removed-vgpu-node", "sandbox",
        {GPU_PRESENT: "true", WORKLOAD: "vm-vgpu", **on(*VGPU), dl("dra-driver"): "true", OPERANDS: "true"},
        {GPU_PRESENT: "false"} | off(*VGPU, "dra-driver"), gpu=False),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "labels", "gpu", "patch"), ROWS)
def test_label_decision(policy: str, labels: dict[str, str], gpu: bool, patch: dict[str, str | None]) -> None:
    spec = POLICIES[policy]
    n = facts(gpu=gpu, labels=labels)
    # The toolkit-pool label is ours, not upstream's: pinned in tests/test_toolkit.py, left out of this table.
    assert {k: v for k, v in desired_labels(n, spec).items() if k != RUNTIME_LABEL} == patch
    assert desired_labels(labelled(n, spec), spec) == {}


def test_rows_cover_every_policy_and_workload() -> None:
    policies = {p.values[0] for p in ROWS}
    assert policies == set(POLICIES)
    assert {p.values[1].get(WORKLOAD) for p in ROWS} >= {None, "", "container", "vm-passthrough", "vm-vgpu", "vm-bogus"}


def test_an_invalid_workload_config_is_logged_once_per_node_and_value(caplog: pytest.LogCaptureFixture) -> None:
    """Upstream (nodelabeling_controller.go -> getWorkloadConfig) logs "failed to get GPU workload config for node;
    using default" with "invalid GPU workload config: <value>" when a node's nvidia.com/gpu.workload.config is not
    container, vm-passthrough or vm-vgpu. Ours fell back to the default without a word: a node meant for VFIO
    passthrough but labelled `vm-passthru` silently got the whole container stack, driver included, which binds
    the GPUs the VMs were to get. Now a warning names the value, once per node and value (the pass also posts a
    Warning Event on the node: tests/test_status.py)."""
    import logging

    from gpu_operator.render import node_patches

    typo = facts("typo-node", labels={WORKLOAD: "vm-passthru"})
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        patches = node_patches([typo], SANDBOX)
        node_patches([typo], SANDBOX)  # labelled again (a pass, a change of the node): said already
        node_patches([facts("typo-node", labels={WORKLOAD: "VM-Passthrough"})], SANDBOX)
        node_patches([facts("typo-node", labels={WORKLOAD: "vm-passthru"})], DEFAULT)  # ignored without sandbox
    assert patches["typo-node"]["labels"][deploy_label("driver")] == "true"  # the default, container, as upstream
    assert [r.getMessage() for r in caplog.records] == [
        "node typo-node: invalid nvidia.com/gpu.workload.config 'vm-passthru' (not one of container, vm-passthrough, "
        "vm-vgpu): the node gets sandboxWorkloads.defaultWorkload, container",
        "node typo-node: invalid nvidia.com/gpu.workload.config 'VM-Passthrough' (not one of container, "
        "vm-passthrough, vm-vgpu): the node gets sandboxWorkloads.defaultWorkload, container",
    ]  # fmt: skip


def test_what_was_logged_of_an_invalid_workload_config_goes_with_the_node(caplog: pytest.LogCaptureFixture) -> None:
    """The (node, value) pairs logged were kept for every node ever seen with an invalid workload config, deleted
    ones too, for the life of the process (autoscaled pools: a new name per node). Now the runtime drops a node's
    when the node is deleted; a new node of that name is told of again."""
    import logging

    from gpu_operator import nodes
    from gpu_operator.render import node_patches
    from gpu_operator.runtime import Operator

    typo = facts("typo-gone", labels={WORKLOAD: "vm-passthru"})
    op = Operator(kube=None, namespace="gpu-operator")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="gpu_operator"):
        op.on_node_facts("typo-gone", typo)
        node_patches([typo], SANDBOX)  # a pass labels it: logged
        op.on_node_facts("typo-gone", None)
        assert "typo-gone" not in nodes._INVALID_WORKLOADS_LOGGED
        node_patches([typo], SANDBOX)  # a new node of that name
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node typo-gone: invalid")]
    assert len(said) == 2


def _condition(nodes: list[NodeFacts], spec: Any, *rest: Any) -> dict[str, Any] | None:
    from gpu_operator.nodes import invalid_workload_condition, invalid_workloads

    return invalid_workload_condition(invalid_workloads(nodes, spec), spec, *rest)


def _newly(nodes: list[NodeFacts], spec: Any, previous: list[dict[str, Any]]) -> dict[str, str]:
    from gpu_operator.nodes import invalid_workloads, newly_invalid_workloads

    return newly_invalid_workloads(invalid_workloads(nodes, spec), spec, previous)


def test_the_invalid_workload_config_condition_names_the_nodes_and_says_what_is_new() -> None:
    """The InvalidWorkloadConfig Warning Event was deduplicated only in the recorder's memory (posted again after
    each restart). Now the InvalidWorkloadConfig condition names each node with its value (the first 20 by name, as
    DriverRefused), and a node's Event is owed only for what the previous condition did not name: a value changed,
    another defaultWorkload (the Event says which the node gets), or a node past those 20."""

    bad = [facts(f"n{i:02}", labels={WORKLOAD: "bogus"}) for i in range(25)]
    nodes = [*bad, facts("fine", labels={WORKLOAD: "vm-vgpu"}), facts("unset"), facts("empty", labels={WORKLOAD: ""})]
    cond = _condition(nodes, SANDBOX, 3, [], "2026-01-01T00:00:00Z")
    assert cond is not None
    assert (cond["type"], cond["status"], cond["reason"], cond["observedGeneration"]) == (
        "InvalidWorkloadConfig", "True", "NoSuchWorkload", 3)  # fmt: skip
    assert cond["message"] == (
        "nvidia.com/gpu.workload.config names no workload (not one of container, vm-passthrough, vm-vgpu) on these "
        "nodes, which get sandboxWorkloads.defaultWorkload, container: empty (''), "
        + ", ".join(f"n{i:02} ('bogus')" for i in range(19)) + " and 6 more"
    )  # fmt: skip
    assert _condition(nodes, DEFAULT, 3, [], "2026-01-01T00:00:00Z") is None  # the label unused
    fine = _condition(nodes[25:27], SANDBOX, 4, [cond], "2026-01-02T00:00:00Z")
    assert fine is not None and (fine["status"], fine["reason"], fine["lastTransitionTime"]) == (
        "False", "AllValid", "2026-01-02T00:00:00Z")  # fmt: skip
    same = _condition(nodes, SANDBOX, 4, [cond], "2026-01-02T00:00:00Z")
    assert same is not None and same["lastTransitionTime"] == "2026-01-01T00:00:00Z"

    assert _newly(nodes, SANDBOX, []) == {"empty": "", **{f"n{i:02}": "bogus" for i in range(25)}}
    assert _newly(nodes, DEFAULT, []) == {}
    changed = [facts("n00", labels={WORKLOAD: "vm-passthru"}), *nodes[1:]]
    assert _newly(changed, SANDBOX, [cond]) == {"n00": "vm-passthru", **{
        f"n{i:02}": "bogus" for i in range(19, 25)}}  # fmt: skip
    assert _newly(nodes, SANDBOX, [fine]) == _newly(nodes, SANDBOX, [])
    other = parse_spec({"sandboxWorkloads": {"enabled": True, "defaultWorkload": "vm-passthrough"}})
    assert _newly(nodes, other, [cond]) == _newly(nodes, other, [])


def test_the_invalid_workload_config_condition_names_only_nodes_that_get_operands() -> None:
    """The condition (and each node's Warning Event) walked every node: a CPU node, or one whose GPU went away or
    with gpu.deploy.operands=false, carrying a stray workload config was named as getting
    sandboxWorkloads.defaultWorkload, though it gets no operand at all (desired_labels never reads the label there,
    as upstream's updateGPUStateLabels). Now only the nodes that get operands are named."""
    cpu = facts("cpu-a", gpu=False, labels={WORKLOAD: "vm-passthru"})
    off = facts("off-a", labels={WORKLOAD: "vm-passthru", "nvidia.com/gpu.deploy.operands": "false"})
    gpu = facts("gpu-a", labels={WORKLOAD: "vm-vgpu"})
    assert not [k for n in (cpu, off) for k, v in desired_labels(n, SANDBOX).items() if ".deploy." in k and v]
    cond = _condition([cpu, off, gpu], SANDBOX, 1, [], "2026-01-01T00:00:00Z")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "AllValid"), cond["message"]
    assert _newly([cpu, off, gpu], SANDBOX, []) == {}
    typo = facts("gpu-b", labels={WORKLOAD: "vm-passthru"})
    assert _newly([cpu, off, typo], SANDBOX, []) == {"gpu-b": "vm-passthru"}

# The cross product: workload label x sandbox on/off x MIG capability (GFD label, product name only, none)
# x migManager on/off x existing labels (none, or a labelled node with an opt-out, a paused and an empty value)
# x GPU present/removed. Each result is checked against the upstream sets above.

MIG_KINDS = {"capable": {MIG_CAPABLE: "true"}, "product-only": {PRODUCT: H100}, "none": {PRODUCT: "NVIDIA-L4"}}
EXISTING = {
    "fresh": {},
    "labelled": {**LABELLED, dl("dcgm-exporter"): "false", dl("device-plugin"): PAUSED_DRIVER, dl("client"): "",
                 dl("vfio-manager"): "true", dl("vgpu-manager"): "false"},
}  # fmt: skip


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "no-gpu"])
@pytest.mark.parametrize("existing", sorted(EXISTING))
@pytest.mark.parametrize("mig_manager", [True, False], ids=["mig-manager-on", "mig-manager-off"])
@pytest.mark.parametrize("mig_kind", sorted(MIG_KINDS))
@pytest.mark.parametrize("sandbox", [False, True], ids=["sandbox-off", "sandbox-on"])
@pytest.mark.parametrize("workload", [None, "container", "vm-passthrough", "vm-vgpu"])
def test_label_combinations(
    workload: str | None, sandbox: bool, mig_kind: str, mig_manager: bool, existing: str, gpu: bool
) -> None:
    spec = parse_spec({"sandboxWorkloads": {"enabled": sandbox}, "migManager": {"enabled": mig_manager, **MIG_DEFAULT}})
    before = {**EXISTING[existing], **MIG_KINDS[mig_kind], **({WORKLOAD: workload} if workload else {})}
    after = labelled(facts(gpu=gpu, labels=before), spec).labels
    opt_outs = {k: v for k, v in before.items() if k.startswith(DEPLOY_PREFIX) and v in ("false", "disabled")}
    assert {k: after.get(k) for k in opt_outs} == opt_outs, "a user's opt-out is kept"
    deploy = {k: v for k, v in after.items() if k.startswith(DEPLOY_PREFIX)}
    if not gpu:
        assert after.get(GPU_PRESENT) == ("false" if GPU_PRESENT in before else None)
        assert deploy == opt_outs
        assert after.get(MIG_CONFIG) is None
        return
    config = (workload or "container") if sandbox else "container"
    capable = mig_kind != "none"
    expected = {dl(op): before.get(dl(op)) or "true" for op in SETS[config]} | opt_outs
    if config == "container" and capable:
        expected[dl("mig-manager")] = "true"
    assert after[GPU_PRESENT] == "true"
    assert deploy == expected
    assert after.get(MIG_CONFIG) == ("all-disabled" if capable and mig_manager else None)


def test_no_mig_manager_config_section_seeds_no_mig_config_label() -> None:
    """Upstream seeds nvidia.com/mig.config only from a `migManager.config` section whose default is all-disabled
    (nodelabeling_controller.go); `config` is a pointer with no CRD default of its own, only `config.default` has
    one. Ours took a missing section as default all-disabled and seeded it on every MIG-capable node, so
    mig-manager turned off a MIG layout the admin had made by other means. `config: {}` still seeds all-disabled,
    as upstream's API server fills in `config.default`."""
    bare = facts(labels={MIG_CAPABLE: "true", PRODUCT: H100})
    assert desired_labels(bare, parse_spec({"migManager": {"config": {}}})).get(MIG_CONFIG) == "all-disabled"
    for raw in ({"migManager": {"enabled": True}}, {}):
        assert MIG_CONFIG not in desired_labels(bare, parse_spec(raw)), raw


# Idempotence and the values never overwritten


def test_apply_patch_sets_and_removes() -> None:
    assert apply_patch({"a": "1", "b": "2"}, {"a": None, "c": "3", "missing": None}) == {"b": "2", "c": "3"}


DEPLOY_VALUES = st.sampled_from(["true", "false", "", PAUSED_DRIVER, PAUSED_MIG, "pre-installed"])
LABEL_VALUES: dict[str, Any] = {
    **{dl(op): DEPLOY_VALUES for op in (*ALL_OPERANDS, *DRA_OPERANDS, "operands")},
    **{label: st.sampled_from(["true", "false"]) for label in GPU_PCI_LABELS},
    GPU_PRESENT: st.sampled_from(["true", "false"]),
    MIG_CAPABLE: st.sampled_from(["true", "false", ""]),
    MIG_CONFIG: st.sampled_from(["all-disabled", "all-1g.10gb", ""]),
    PRODUCT: st.sampled_from([H100, "NVIDIA-L4"]),
    VGPU_HOST: st.sampled_from(["550.90.05", ""]),
    WORKLOAD: st.sampled_from(["container", "vm-passthrough", "vm-vgpu", "bogus"]),
    OS_ID: st.sampled_from(["ubuntu", "rhel"]),
}


@st.composite
def label_sets(draw: st.DrawFn) -> dict[str, str]:
    keys = draw(st.lists(st.sampled_from(sorted(LABEL_VALUES)), unique=True))
    return {k: draw(LABEL_VALUES[k]) for k in keys}


SPECS = st.builds(
    lambda sandbox, workload, mode, mig_enabled, mig_default: parse_spec(
        {
            "sandboxWorkloads": {"enabled": sandbox, "defaultWorkload": workload, "mode": mode},
            "migManager": {"enabled": mig_enabled, "config": {"default": mig_default}},
        }
    ),
    st.booleans(),
    st.sampled_from(["container", "vm-passthrough", "vm-vgpu"]),
    st.sampled_from(["kubevirt", "kata"]),
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
        if key.startswith(DEPLOY_PREFIX) and key in labels:
            # An existing deploy label is only ever removed, or set when empty...
            assert value is None or labels[key] == "", (key, labels[key], value)
            # ...and a user's own value (an opt-out) only by gpu.deploy.operands=false.
            if labels[key] not in ("true", "", PAUSED_DRIVER, PAUSED_MIG):
                assert labels.get(OPERANDS) == "false" and NodeFacts("n", labels).has_gpu
        if key not in labels:
            assert value is not None, f"removal of absent label {key}"
        else:
            assert value != labels[key], f"no-op change of {key}"
    assert OPERANDS not in patch
    assert not {MIG_CAPABLE, PRODUCT, VGPU_HOST, WORKLOAD} & set(patch), "labels others own are never written"


def test_uninstall_removes_only_the_deploy_labels_a_node_losing_its_gpu_loses() -> None:
    """The clean-up of a deleted last ClusterPolicy removed every gpu.deploy.* label valued "true" (or "", or
    paused), `nvsm=true` and the label of an operand we do not know among them: labels the operator never wrote
    and leaves alone while it runs (rows unknown-deploy-label-untouched, gpu-removed-nvsm-of-someone-else-kept), so
    the DaemonSets selecting on them lost their pods. It now removes what desired_labels removes from a node
    without a GPU."""
    from gpu_operator.apply import Applier
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.observe import Snapshot
    from support import NAMESPACE, RecordingKube, policy_object

    ours = {GPU_PRESENT: "true", dl("driver"): "true", dl("device-plugin"): PAUSED_DRIVER, dl("dcgm"): ""}
    someone_elses = {dl("nvsm"): "true", dl("example-agent"): "true", OPERANDS: "true", dl("dcgm-exporter"): "false"}
    nodes = {
        "gpu-1": facts("gpu-1", labels={**ours, **someone_elses}),
        "gpu-2": facts("gpu-2", labels={GPU_PRESENT: "true", dl("nvsm"): PAUSED_DRIVER}),  # k8s-driver-manager's
    }
    pol = policy_object()
    pol["metadata"].update(finalizers=[CLEANUP_FINALIZER], deletionTimestamp="2026-02-01T00:00:00Z")
    kube = RecordingKube()
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={})
    Lifecycle(kube, NAMESPACE, Applier(kube)).cleanup_deleted(snap)  # type: ignore[arg-type]
    removed = {(what[1], k) for verb, what in kube.calls if verb == "merge_patch" and what[0] == "Node"
               for k in what[2]["metadata"]["labels"]}  # fmt: skip
    assert removed == {("gpu-1", k) for k in ours} | {("gpu-2", GPU_PRESENT), ("gpu-2", dl("nvsm"))}


def test_uninstall_lifts_the_mig_gates_cordons_only() -> None:
    """The MIG gate cordons a node before it evicts GPU pods for a layout change (annotation MIG_CORDONED marks the
    cordon as its own). Deleting the last ClusterPolicy mid-change lifts those, never someone else's cordon. The
    driver upgrade, let go first, no longer holds a node: a gate cordon it found (and recorded as there before it)
    is lifted too; on a node a failed upgrade keeps cordoned for the admin only the gate's annotation goes."""
    from gpu_operator.apply import Applier
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.nodes import MIG_CORDONED
    from gpu_operator.observe import Snapshot
    from gpu_operator.upgrade.model import FAILURE_REASON_ANNOTATION, INITIAL_UNSCHEDULABLE_ANNOTATION, STATE_LABEL
    from support import NAMESPACE, RecordingKube, policy_object

    def cordoned(name: str, labels: dict[str, str] | None = None, **annotations: str) -> NodeFacts:
        meta = {"name": name, "labels": labels or {}, "annotations": {MIG_CORDONED: "true", **annotations}}
        return NodeFacts.from_node({"metadata": meta, "spec": {"unschedulable": True}})

    nodes = {
        "gate": cordoned("gate"),
        "admin": NodeFacts.from_node({"metadata": {"name": "admin"}, "spec": {"unschedulable": True}}),
        "upgrade": cordoned("upgrade", {STATE_LABEL: "drain-required"}, **{INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}),
        "failed": cordoned("failed", {STATE_LABEL: "upgrade-failed"}, **{FAILURE_REASON_ANNOTATION: "boom"}),
    }
    pol = policy_object()
    pol["metadata"].update(finalizers=[CLEANUP_FINALIZER], deletionTimestamp="2026-02-01T00:00:00Z")
    kube = RecordingKube()
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={})
    Lifecycle(kube, NAMESPACE, Applier(kube)).cleanup_deleted(snap)  # type: ignore[arg-type]
    gate_patches = [(what[1], what[2]) for verb, what in kube.calls
                    if verb == "merge_patch" and what[0] == "Node" and MIG_CORDONED in what[2]["metadata"].get(
                        "annotations", {})]  # fmt: skip
    uncordon = {"metadata": {"annotations": {MIG_CORDONED: None}}, "spec": {"unschedulable": None}}
    assert gate_patches == [("gate", uncordon), ("upgrade", uncordon),
                            ("failed", {"metadata": {"annotations": {MIG_CORDONED: None}}})]  # fmt: skip
    uncordoned = {what[1] for verb, what in kube.calls if verb == "merge_patch" and "spec" in what[2]}
    assert uncordoned == {"gate", "upgrade"}


def test_uninstall_takes_a_gate_cordoned_node_deleted_since_the_snapshot_as_uncordoned() -> None:
    """The clean-up lifted the MIG gate's cordons with a bare merge patch, before the label patches and the finalizer
    removal. A gate-cordoned node deleted since the snapshot (an autoscaler removing a cordoned, drained node) answered
    404, which failed the pass: no other node's labels were removed and the finalizer stayed until a later pass. A
    node that is gone has no cordon to lift, as the label patches and the chart hook's uncordon already take it."""
    from gpu_operator.apply import Applier
    from gpu_operator.kube import ApiError
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.nodes import MIG_CORDONED
    from gpu_operator.observe import Snapshot
    from support import NAMESPACE, RecordingKube, policy_object

    class GoneNodeKube(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if (kind, name) == ("Node", "gone"):
                raise ApiError(404, '{"message": "nodes \\"gone\\" not found"}', "PATCH Node gone", "NotFound")
            return super().merge_patch(kind, name, patch, *a, **k)

    cordoned = {"name": "gone", "labels": {GPU_PRESENT: "true"}, "annotations": {MIG_CORDONED: "true"}}
    nodes = {
        "gone": NodeFacts.from_node({"metadata": cordoned, "spec": {"unschedulable": True}}),
        "gpu-1": facts("gpu-1", labels={GPU_PRESENT: "true"}),
    }
    pol = policy_object()
    pol["metadata"].update(finalizers=[CLEANUP_FINALIZER], deletionTimestamp="2026-02-01T00:00:00Z")
    kube = GoneNodeKube()
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={})
    assert Lifecycle(kube, NAMESPACE, Applier(kube)).cleanup_deleted(snap)  # type: ignore[arg-type]
    patched = {(what[0], what[1]): what[2] for verb, what in kube.calls if verb == "merge_patch"}
    assert patched[("Node", "gpu-1")] == {"metadata": {"labels": {GPU_PRESENT: None}}}, "the other node is cleaned up"
    assert patched[("ClusterPolicy", "cluster-policy")]["metadata"]["finalizers"] == [], "and let go in this pass"


def _delete_last_policy(nodes: list[NodeFacts], kube: Any = None) -> tuple[Any, bool, list[tuple[str, str, str]]]:
    """Run the clean-up of the deleted only ClusterPolicy over `nodes`: the kube (its calls), whether it let the
    policy go, and the events posted (node, type, message)."""
    from gpu_operator.apply import Applier
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.observe import Snapshot
    from support import NAMESPACE, RecordingKube, policy_object

    pol = policy_object()
    pol["metadata"].update(finalizers=[CLEANUP_FINALIZER], deletionTimestamp="2026-02-01T00:00:00Z")
    kube = kube or RecordingKube()
    events: list[tuple[str, str, str]] = []

    def event(obj: dict[str, Any], etype: str, reason: str, message: str, *, durable: bool = False) -> None:
        events.append((obj["metadata"]["name"], etype, message))

    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": pol}, owned={}, pods={},
                    revisions={})  # fmt: skip
    done = Lifecycle(kube, NAMESPACE, Applier(kube), events=event).cleanup_deleted(snap)  # type: ignore[arg-type]
    return kube, done, events


def _mid_upgrade(name: str, state: str, unschedulable: bool = True, **annotations: str) -> NodeFacts:
    from gpu_operator.upgrade.model import DRAIN_START_ANNOTATION, STATE_LABEL

    meta = {"name": name, "labels": {GPU_PRESENT: "true", STATE_LABEL: state},
            "annotations": {DRAIN_START_ANNOTATION: "1767225600", **annotations}}  # fmt: skip
    return NodeFacts.from_node({"metadata": meta, "spec": {"unschedulable": unschedulable}})


def test_uninstall_removes_the_upgrade_state_label_as_upstream() -> None:
    """Deleting the last ClusterPolicy left `nvidia.com/gpu-driver-upgrade-state` (and the upgrade's annotations) on
    the nodes for good: no pass runs the upgrade once no ClusterPolicy is active. Upstream v26.7's upgrade
    controller removes the state label from every node once none is left (upgrade_controller.go: no ClusterPolicy
    and no NVIDIADriver with autoUpgrade -> removeNodeUpgradeStateLabels)."""
    from gpu_operator.upgrade.model import DRAIN_START_ANNOTATION, STATE_LABEL

    kube, done, _ = _delete_last_policy(
        [_mid_upgrade("gpu-1", "drain-required"), _mid_upgrade("gpu-2", "upgrade-done", unschedulable=False)]
    )
    assert done
    removed = {(name, k) for verb, (kind, name, patch) in kube.calls if verb == "merge_patch" and kind == "Node"
               for part in ("labels", "annotations") for k, v in (patch["metadata"].get(part) or {}).items()
               if v is None}  # fmt: skip
    for name in ("gpu-1", "gpu-2"):
        assert {(name, GPU_PRESENT), (name, STATE_LABEL), (name, DRAIN_START_ANNOTATION)} <= removed


def test_uninstall_mid_upgrade_lifts_the_upgrades_own_cordon_as_with_autoupgrade_off() -> None:
    """Deleting the last ClusterPolicy mid-upgrade left the node the upgrade had cordoned unschedulable for good,
    and the chart's hook skipped it too ("its driver upgrade holds it"), though nothing was left to let it go. Now
    the upgrade is let go as with autoUpgrade off (planner.switched_off): its own cordon lifted with an event; a
    failed one's kept for the admin, with a warning; a cordon there before the upgrade never touched."""
    from gpu_operator.upgrade.model import FAILURE_REASON_ANNOTATION, INITIAL_UNSCHEDULABLE_ANNOTATION

    nodes = [
        _mid_upgrade("ours", "drain-required"),
        _mid_upgrade("admins", "wait-for-jobs-required", **{INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}),
        _mid_upgrade("failed", "upgrade-failed", **{FAILURE_REASON_ANNOTATION: "boom"}),
    ]
    kube, done, events = _delete_last_policy(nodes)
    assert done
    uncordoned = [name for verb, (kind, name, patch) in kube.calls if verb == "merge_patch" and "spec" in patch]
    assert uncordoned == ["ours"]
    assert sorted(events) == [
        ("failed", "Warning", "ClusterPolicy cluster-policy deleted in upgrade-failed (boom): node left cordoned for "
                              "the admin; uncordon it once its driver works"),
        ("ours", "Normal", "ClusterPolicy cluster-policy deleted in drain-required: node uncordoned (the upgrade had "
                           "cordoned it)"),
    ]  # fmt: skip


def test_uninstall_keeps_the_finalizer_while_a_nodes_upgrade_is_not_let_go() -> None:
    """The clean-up lets go of the driver upgrades once: with the finalizer gone no pass comes back. A node whose
    let-go patch failed would have stayed cordoned mid-upgrade for good; the finalizer now stays (the pass is
    tried again), and the MIG gate's cordon of that node is not lifted meanwhile."""
    from gpu_operator.kube import ApiError
    from gpu_operator.nodes import MIG_CORDONED
    from gpu_operator.upgrade.model import STATE_LABEL
    from support import RecordingKube

    class RefusingKube(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if kind == "Node" and STATE_LABEL in (patch["metadata"].get("labels") or {}):
                raise ApiError(500, '{"message": "etcdserver: request timed out"}', "PATCH Node gpu-1")
            return super().merge_patch(kind, name, patch, *a, **k)

    kube, done, _ = _delete_last_policy([_mid_upgrade("gpu-1", "drain-required", **{MIG_CORDONED: "true"})],
                                        RefusingKube())  # fmt: skip
    assert not done
    assert not [c for c in kube.calls if c[0] == "merge_patch" and "spec" in c[1][2]], "still cordoned"
    assert not [c for c in kube.calls if c[0] == "merge_patch" and c[1][0] == "ClusterPolicy"], "finalizer kept"


def test_uninstall_takes_a_mid_upgrade_node_deleted_since_the_snapshot_as_let_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The let-go of the driver upgrades took a node deleted since the snapshot (its patch answered 404: an
    autoscaler or an admin removing a node the upgrade had cordoned) for a failed let-go: the Executor logged a failed
    patch, the clean-up warned that its upgrade was "not let go; tried again" and kept the finalizer until the next
    pass. A node that is gone holds no upgrade to let go, as the MIG gate's uncordon already takes its 404."""
    from gpu_operator.kube import ApiError
    from gpu_operator.nodes import MIG_CORDONED
    from support import RecordingKube

    class GoneNodeKube(RecordingKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
            if (kind, name) == ("Node", "gone"):
                raise ApiError(404, '{"message": "nodes \\"gone\\" not found"}', "PATCH Node gone", "NotFound")
            return super().merge_patch(kind, name, patch, *a, **k)

    kube, done, _ = _delete_last_policy([_mid_upgrade("gone", "drain-required", **{MIG_CORDONED: "true"})],
                                        GoneNodeKube())  # fmt: skip
    assert done
    assert [c for c in kube.calls if c[0] == "merge_patch" and c[1][0] == "ClusterPolicy"], "finalizer let go"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], "nothing failed"


def test_uninstall_removes_the_driver_upgrade_enabled_annotation_it_put_on_every_gpu_node() -> None:
    """With autoUpgrade on (the chart's default) every GPU node carries `nvidia.com/gpu-driver-upgrade-enabled=true`
    (desired_annotations), which tells k8s-driver-manager to leave GPU pod eviction and drain to the operator's
    upgrade. Deleting the last ClusterPolicy let the upgrade go only on nodes with an upgrade state label: on every
    other node the annotation stayed, so a driver-manager started there later (another operator's, or this one's
    installed again before its first node pass) skipped its eviction. It now goes with our labels; a value we never
    write is someone else's and stays."""
    def gpu_node(name: str, value: str, **labels: str) -> NodeFacts:
        meta = {"name": name, "labels": {GPU_PRESENT: "true", **labels}, "annotations": {ENABLED: value}}
        return NodeFacts.from_node({"metadata": meta})

    kube, done, _ = _delete_last_policy([gpu_node("gpu-1", "true", **{deploy_label("driver"): "true"}),
                                         gpu_node("gpu-2", "false")])  # fmt: skip
    assert done
    removed = {(name, part, k) for verb, (kind, name, patch) in kube.calls if verb == "merge_patch" and kind == "Node"
               for part in ("labels", "annotations") for k, v in (patch["metadata"].get(part) or {}).items()
               if v is None}  # fmt: skip
    assert removed == {("gpu-1", "labels", GPU_PRESENT), ("gpu-1", "labels", deploy_label("driver")),
                       ("gpu-1", "annotations", ENABLED), ("gpu-2", "labels", GPU_PRESENT)}  # fmt: skip
    assert [name for verb, (kind, name, _) in kube.calls if verb == "merge_patch" and kind == "Node"] == [
        "gpu-1", "gpu-2"], "one patch per node"  # fmt: skip


# The driver auto-upgrade annotation k8s-driver-manager reads (upstream applyDriverAutoUpgradeAnnotation and
# setDriverAutoUpgradeAnnotation, controllers/nodelabeling_controller.go): on gpu.present=true nodes only,
# "true" when driver.enabled and driver.upgradePolicy.autoUpgrade and not sandboxWorkloads.enabled, otherwise
# removed; with driver.useNvidiaDriverCRD (sandbox off) the NVIDIADriver resources decide, so it is left alone.

ENABLED = "nvidia.com/gpu-driver-upgrade-enabled"
AUTO = {"driver": {"upgradePolicy": {"autoUpgrade": True}}}


@pytest.mark.parametrize(
    ("policy", "present", "value", "patch"),
    [
        pytest.param(AUTO, "true", None, {ENABLED: "true"}, id="auto-upgrade-sets"),
        pytest.param(AUTO, "true", "true", {}, id="auto-upgrade-already-set"),
        pytest.param(AUTO, "true", "false", {ENABLED: "true"}, id="auto-upgrade-other-value"),
        pytest.param({}, "true", "true", {ENABLED: None}, id="no-auto-upgrade-removes"),
        pytest.param({}, "true", None, {}, id="no-auto-upgrade-absent"),
        pytest.param({"driver": {"enabled": False, "upgradePolicy": {"autoUpgrade": True}}}, "true", "true",
                     {ENABLED: None}, id="driver-disabled-removes"),
        pytest.param({**AUTO, "sandboxWorkloads": {"enabled": True}}, "true", "true", {ENABLED: None},
                     id="sandbox-removes"),
        pytest.param({"driver": {"useNvidiaDriverCRD": True, "upgradePolicy": {"autoUpgrade": True}}}, "true",
                     "true", {}, id="nvidiadriver-crd-left-alone"),
        pytest.param({"driver": {"useNvidiaDriverCRD": True}}, "true", None, {}, id="nvidiadriver-crd-not-set"),
        pytest.param({"driver": {"useNvidiaDriverCRD": True}, "sandboxWorkloads": {"enabled": True}}, "true", "true",
                     {}, id="nvidiadriver-crd-with-sandbox-left-to-the-nvidiadrivers"),
        pytest.param(AUTO, "false", None, {}, id="no-gpu-not-set"),
        pytest.param({}, "false", "true", {}, id="no-gpu-not-removed"),
        pytest.param(AUTO, None, None, {}, id="unlabelled-not-set"),
    ],
)  # fmt: skip
def test_upgrade_enabled_annotation(
    policy: dict[str, Any], present: str | None, value: str | None, patch: dict[str, str | None]
) -> None:
    raw = node("n1", labels={GPU_PRESENT: present} if present else {})
    if value is not None:
        raw["metadata"]["annotations"] = {ENABLED: value, "example.com/other": "x"}
    n = NodeFacts.from_node(raw)
    assert n.annotations.get(ENABLED) == value
    assert desired_annotations(n, parse_spec(policy)) == patch


def test_upgrade_enabled_annotation_settles_under_nvidiadrivers_with_sandbox_workloads() -> None:
    """Under useNvidiaDriverCRD with sandboxWorkloads.enabled the node labelling removed the annotation and the
    NVIDIADriver's node patch (autoUpgrade) set it again: one node patch every pass, for ever. Now the NVIDIADriver
    owns it: once set, neither asks for a change."""
    from gpu_operator import nvidiadriver

    spec = parse_spec({"driver": {"useNvidiaDriverCRD": True, "upgradePolicy": {"autoUpgrade": True}},
                       "sandboxWorkloads": {"enabled": True}})  # fmt: skip
    raw = node("n1", labels={GPU_PRESENT: "true"})
    n = NodeFacts.from_node(raw)
    assert desired_annotations(n, spec) == {}
    assert nvidiadriver.node_patch(n, None, spec) == {"annotations": {ENABLED: "true"}}
    raw["metadata"]["annotations"] = {ENABLED: "true"}
    n = NodeFacts.from_node(raw)
    assert desired_annotations(n, spec) == {} and nvidiadriver.node_patch(n, None, spec) == {}


def test_annotation_follows_the_labels_of_a_new_gpu_node() -> None:
    spec = parse_spec(AUTO)
    n = facts()
    assert desired_annotations(n, spec) == {}  # gpu.present not yet set
    assert desired_annotations(labelled(n, spec), spec) == {ENABLED: "true"}


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
    # The operator's driver-kernel label, which the upgrade planner moves when the kernel changes.
    assert pools[0].node_selector() == {OS_ID: "ubuntu", OS_VERSION: "22.04", DRIVER_KERNEL: "5.15.0-122-generic"}
    odd = Pool("rhel", "9.4", "5.14.0-427.13.1.el9_4.x86_64+debug")  # no label value: NFD's label is selected
    assert odd.node_selector()[KERNEL] == "5.14.0-427.13.1.el9_4.x86_64+debug"


def test_an_os_update_in_place_moves_the_node_to_another_pool() -> None:
    """Known limitation (README): a pool is keyed by the full VERSION_ID, and a precompiled pool holds its node by
    the kernel only. An update that changes VERSION_ID in place (a RHEL minor update rewrites /etc/os-release
    before any reboot; here also ubuntu 22.04 to 24.04 with the old kernel still held) takes the node out of its
    pool's DaemonSet, which deletes its driver pod without the upgrade's cordon and drain, and another pool's
    starts one (for RHEL with the same -rhel9 image). Keying RHEL pools by the major version, as upstream does,
    would rename their DaemonSets: the operator upgrade would restart every RHEL driver pod at once. Pinned so
    that a change of the pool key is a deliberate one."""
    from gpu_operator.states.driver import image_os_tag

    rhel = "5.14.0-427.13.1.el9_4.x86_64"
    before, after = driver_node("n", ("rhel", "9.4"), rhel), driver_node("n", ("rhel", "9.6"), rhel)
    pools = driver_pools([before, replace(after, name="m")], precompiled=False)
    assert pools == [Pool("rhel", "9.4"), Pool("rhel", "9.6")]
    assert image_os_tag("rhel", "9.4") == image_os_tag("rhel", "9.6") == "rhel9"
    [pool] = driver_pools([before], precompiled=False)
    assert pool.node_selector()[OS_VERSION] == "9.4" != after.os_version  # the node leaves its DaemonSet

    held = {DRIVER_KERNEL: "5.15.0-122-generic"}
    before = driver_node("n", ("ubuntu", "22.04"), "5.15.0-122-generic", **held)
    after = driver_node("n", ("ubuntu", "24.04"), "6.8.0-45-generic", **held)
    [pool] = driver_pools([before], precompiled=True)
    assert pool.node_selector()[DRIVER_KERNEL] == after.labels[DRIVER_KERNEL]  # the kernel is held ...
    assert pool.node_selector()[OS_VERSION] != after.os_version  # ... the OS is not
    assert driver_pools([after], precompiled=True) == [Pool("ubuntu", "24.04", "5.15.0-122-generic")]


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


def test_a_node_known_by_its_nodefeature_devices_only_is_mig_capable_before_gfd() -> None:
    from gpu_operator.nodes import desired_labels
    from support import sample_spec

    spec = sample_spec()
    h100 = replace(facts("n1"), pci_devices=("2330",))
    l4 = replace(facts("n2"), pci_devices=("27b8",))
    assert desired_labels(h100, spec).get(MIG_CONFIG) == "all-disabled"
    assert desired_labels(h100, spec).get("nvidia.com/gpu.deploy.mig-manager") == "true"
    assert MIG_CONFIG not in desired_labels(l4, spec)


def test_relabelling_with_our_labels_keeps_the_gpu_facts_and_with_gfds_works_them_out_again() -> None:
    from gpu_operator.render import relabelled

    node = facts("n1", labels={"nvidia.com/mig.capable": "true"})
    assert node.is_mig_capable and node.has_gpu and node.identity
    [ours] = relabelled([node], {"n1": {"labels": {"nvidia.com/gpu.deploy.driver": "true"}}})
    assert ours.labels["nvidia.com/gpu.deploy.driver"] == "true"
    assert ours.__dict__["is_mig_capable"] is True and ours.__dict__["identity"] is node.identity
    [gfd] = relabelled([node], {"n1": {"labels": {"nvidia.com/mig.capable": "false"}}})
    assert "is_mig_capable" not in gfd.__dict__ and not gfd.is_mig_capable


def test_a_nodes_next_object_inherits_its_gpu_facts_unless_what_they_are_read_from_changed() -> None:
    gfd = {"nvidia.com/mig.capable": "true", "nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.product": H100}
    node = facts("n1", labels=gfd)
    assert node.is_mig_capable and node.has_gpu and node.identity.known and node.label_devices == ()

    def next_object(labels: dict[str, str], **changes: Any) -> NodeFacts:
        return replace(node, labels={**node.labels, **labels}, **changes)

    ours = next_object({"nvidia.com/gpu.deploy.driver": "true"})
    ours.inherit(node)
    assert ours.__dict__["identity"] is node.identity and ours.__dict__["is_mig_capable"] is True
    assert ours.__dict__["label_devices"] == () and ours.__dict__["has_gpu"] is True
    for changed in (
        next_object({"nvidia.com/mig.capable": "false"}),  # GFD's
        next_object({"nvidia.com/gpu.product": "NVIDIA-L4"}),
        next_object({"feature.node.kubernetes.io/pci-0302_10de_27b8.present": "true"}),  # NFD's
        next_object({}, pci_devices=("27b8",)),  # its NodeFeature's
    ):
        changed.inherit(node)
        assert "identity" not in changed.__dict__ and "is_mig_capable" not in changed.__dict__, changed.labels
    gone = replace(node, labels={k: v for k, v in node.labels.items() if k != "nvidia.com/mig.capable"})
    gone.inherit(node)
    assert "is_mig_capable" not in gone.__dict__  # worked out again (from the product, then)
    # What a node object worked out itself stays its own.
    fresh = next_object({"nvidia.com/gpu.deploy.driver": "true"})
    mine = fresh.identity
    fresh.inherit(node)
    assert fresh.identity is mine


@pytest.mark.parametrize("seed", range(8))
def test_by_node_keeps_what_a_walk_of_every_node_gives(seed: int) -> None:
    """ByNode over passes of nodes coming, going and relabelled (and the spec changing) gives what calling the
    function on every node gives, sorted by name, and calls it only for nodes whose object it has not seen."""
    import random

    from gpu_operator import compat
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import ByNode

    rng = random.Random(seed)
    specs = [parse_spec({}), parse_spec({"driver": {"usePrecompiled": True}})]
    calls: list[str] = []

    def f(node: NodeFacts, spec: object) -> str | None:
        calls.append(node.name)
        value = node.labels.get("pick")
        return None if value is None else f"{value}/{id(spec)}"

    kept, verdicts = ByNode(f), compat.kept_verdicts()
    nodes: dict[str, NodeFacts] = {}
    spec = specs[0]
    for step in range(50):
        changed = set()
        for _ in range(rng.randint(0, 5)):
            name = f"n{rng.randint(0, 20):02d}"
            if rng.random() < 0.2:
                nodes.pop(name, None)
            else:
                labels = {GPU_PCI_LABELS[0]: "true", deploy_label("driver"): rng.choice(["true", "false"])}
                if rng.random() < 0.7:
                    labels["pick"] = rng.choice("ab")
                nodes[name] = NodeFacts(name, labels=labels)
                changed.add(name)
        respecced = rng.random() < 0.1
        if respecced:
            spec = specs[1] if spec is specs[0] else specs[0]
        order = list(nodes.values())
        rng.shuffle(order)
        calls.clear()
        got = kept.over(order, spec)
        want = {n.name: f(n, spec) for n in sorted(order, key=lambda n: n.name)}
        assert got == {k: v for k, v in want.items() if v is not None} and list(got) == sorted(got), f"step {step}"
        if not respecced and step:
            assert set(calls[: len(calls) - len(order)]) <= changed, f"step {step}"  # then the walk's calls
        assert verdicts.over(order, spec) == compat.verdicts(order, spec), f"step {step}"


def test_by_node_starts_over_after_a_call_that_failed() -> None:
    """A call that raises midway leaves nothing half kept: the next one works every node out again."""
    from gpu_operator.nodes import ByNode

    broken = {"n1"}

    def f(node: NodeFacts, _: object) -> str:
        if node.name in broken:
            raise ValueError(node.name)
        return node.labels["v"]

    kept: ByNode[str] = ByNode(f)
    first = [NodeFacts(f"n{i}", labels={"v": str(i)}) for i in range(3)]
    assert kept.over(first[:1], True) == {"n0": "0"}
    with pytest.raises(ValueError):
        kept.over(first, True)
    broken.clear()
    assert kept.over(first, True) == {"n0": "0", "n1": "1", "n2": "2"}
