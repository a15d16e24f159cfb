"""The version matrix (data file and rules), GPU identification before any driver runs, and per-node refusal."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
import yaml

from gpu_operator import compat, images, matrix
from gpu_operator.api import parse_spec
from gpu_operator.cli import main
from gpu_operator.gpu_identity import (
    device_ids_from_labels,
    device_ids_from_node_feature,
    identify,
    node_of_feature,
)
from gpu_operator.kinds import NODE_FEATURE, registry, served
from gpu_operator.nodes import DRIVER_REFUSED, NodeFacts, desired_labels, gets_driver
from gpu_operator.render import node_patches
from gpu_operator.upgrade import plan
from gpu_operator.upgrade.adapter import upgrade_nodes
from support import container, daemonsets, render_all
from test_upgrade_planner import NEW, make_node, policy

PCI = "feature.node.kubernetes.io/pci-10de.present"
OS = {
    "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
    "feature.node.kubernetes.io/system-os_release.VERSION_ID": "22.04",
}
V100_LABEL = "feature.node.kubernetes.io/pci-0302_10de_1db1.present"
H100_GFD = {"nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GH200_GFD = {"nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.product": "NVIDIA-GH200-480GB"}
GH200_144G_LABEL = "feature.node.kubernetes.io/pci-0302_10de_2348.present"
B200_LABEL = "feature.node.kubernetes.io/pci-0302_10de_2901.present"
NFD_L4 = "feature.node.kubernetes.io/pci-0302_10de_27b8.present"


def gpu_node(name: str, **labels: str) -> NodeFacts:
    return NodeFacts(name=name, labels={PCI: "true", **OS, **labels}, has_nfd=True)


def spec(version: str | None = None, module_type: str | None = None) -> Any:
    driver: dict[str, Any] = {}
    if version:
        driver.update(repository="nvcr.io/nvidia", image="driver", version=version)
    if module_type:
        driver["kernelModuleType"] = module_type
    return parse_spec({"driver": driver})


# The data file


def test_every_row_names_its_source() -> None:
    d = matrix.data()
    rows = [*d["releases"], *d["architectures"], *d["devices"], *d["products"], *d["branches"]]
    assert rows and all(str(r.get("source", "")).strip() for r in rows)
    km = d["kernel_modules"]
    assert km["source"] and km["proprietary_source"] and km["auto_source"] and d["precompiled"]["source"]
    for release in d["releases"]:
        for extra in ("kubernetes", "operating_systems"):
            if extra in release:
                assert release[extra]["source"]


def _strip_os(tag: str) -> str:
    return re.sub(r"-(ubuntu\d+\.\d+|distroless|ubi\d+)$", "", tag)


def test_newest_release_agrees_with_the_images_the_operator_deploys() -> None:
    """images.py holds the defaults the operator renders; the matrix's newest release must say the same."""
    release = matrix.latest_release()
    assert release["release"] == "v" + images.DEFAULTS["validator"][2].lstrip("v")
    for component, version in release["components"].items():
        assert _strip_os(images.DEFAULTS[component][2]) == _strip_os(version), component


def test_releases_newest_first_and_branches_descending() -> None:
    releases = [tuple(int(x) for x in r["release"].lstrip("v").split(".")) for r in matrix.data()["releases"]]
    assert releases == sorted(releases, reverse=True)
    branches = [b["branch"] for b in matrix.data()["branches"]]
    assert branches == sorted(branches, reverse=True)


def test_a_newer_branch_runs_at_least_the_cuda_of_an_older_one() -> None:
    """A newer driver always runs older CUDA (REFERENCE 7); R620 read "CUDA 13" (13.0), below R610's 13.3."""

    def cuda(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    rows = sorted(matrix.branches().values(), key=lambda b: b.branch)
    for older, newer in zip(rows, rows[1:], strict=False):
        assert cuda(newer.max_cuda) >= cuda(older.max_cuda), (older, newer)


def test_every_product_is_a_listed_device_of_its_architecture() -> None:
    products = matrix.products()
    assert products
    for product in products.values():
        assert product.ids and all(matrix.devices()[i][0] == product.architecture for i in product.ids), product
        assert product.open_only or product.min_version, product


def test_every_device_names_a_known_architecture() -> None:
    archs = matrix.architectures()
    for device, (arch, product) in matrix.devices().items():
        assert re.fullmatch(r"[0-9a-f]{4}", device) and arch in archs and product


@pytest.mark.parametrize(
    ("major", "minor", "arch"),
    [(7, 0, "volta"), (7, 5, "turing"), (8, 0, "ampere"), (8, 6, "ampere"), (8, 9, "ada-lovelace"),
     (9, 0, "hopper"), (10, 0, "blackwell"), (12, 0, "blackwell"), (6, 1, "pascal"), (13, 0, None)],
)  # fmt: skip
def test_compute_capability_to_architecture_as_gfd(major: int, minor: int, arch: str | None) -> None:
    assert matrix.architecture_of_compute(major, minor) == arch


def test_branch_of() -> None:
    assert matrix.branch_of("595.91.07") == 595
    assert matrix.branch_of("580.65.06") == 580
    assert matrix.branch_of("sha256:" + "a" * 64) is None
    assert matrix.branch_of("latest") is None


# The rules


@pytest.mark.parametrize(
    ("version", "module_type", "archs", "resolved", "rule"),
    [
        ("595.91.07", "auto", ("volta",), "proprietary", "architecture-dropped"),
        ("590.44.01", "auto", ("pascal",), "proprietary", "architecture-dropped"),
        ("580.95.05", "auto", ("volta",), "proprietary", None),
        ("580.95.05", "open", ("volta",), "open", "open-modules-unsupported"),
        ("595.91.07", "auto", ("hopper",), "open", None),
        ("550.54.14", "auto", ("hopper",), "proprietary", None),
        ("595.91.07", "proprietary", ("blackwell",), "proprietary", "proprietary-modules-unsupported"),
        ("535.309.01", "auto", ("blackwell",), "proprietary", "architecture-too-new"),
        ("570.133.20", "auto", ("blackwell",), "open", None),
        ("510.47.03", "open", ("ampere",), "open", "open-modules-too-old"),
        ("595.91.07", "auto", ("hopper", "volta"), "proprietary", "architecture-dropped"),
        ("620.10.01", "proprietary", ("hopper",), "proprietary", "proprietary-modules-not-offered"),
        ("620.10.01", "auto", ("hopper",), "open", None),
        ("610.57.04", "proprietary", ("hopper",), "proprietary", None),
    ],
)
def test_check(version: str, module_type: str, archs: tuple[str, ...], resolved: str, rule: str | None) -> None:
    got, refusal = matrix.check(version, module_type, archs)
    assert got == resolved
    assert (refusal.rule if refusal else None) == rule
    if refusal:
        assert "[" in refusal.message and version in refusal.message or "kernelModuleType" in refusal.message


def test_unknown_version_or_gpu_is_not_checked() -> None:
    assert matrix.check("sha256:" + "0" * 64, "auto", ("volta",)) == (None, None)
    assert matrix.check("595.91.07", "auto", ()) == (None, None)


def test_products_match_by_device_id_else_by_gfd_product() -> None:
    assert matrix.products_of(("2342",), "") == matrix.products_of(("2348",), "") == ("GH200",)
    assert matrix.products_of((), "NVIDIA-GH200-480GB") == ("GH200",)
    assert matrix.products_of((), "NVIDIA-B200") == matrix.products_of(("2901",), "") == ("HGX B200",)
    assert matrix.products_of((), "NVIDIA-GB200") == ()  # Grace Blackwell is not the HGX B200 board
    assert matrix.products_of((), "NVIDIA-H100-80GB-HBM3") == matrix.products_of(("233d", "2329"), "") == ()
    assert matrix.products_of(("2330",), "NVIDIA-GH200-480GB") == ()  # the device ID decides where it is known


def test_full_version() -> None:
    assert matrix.full_version("570.133.20") == (570, 133, 20)
    assert matrix.full_version("570") is None and matrix.full_version("sha256:" + "0" * 64) is None


def test_auto_resolves_per_node_like_the_driver_container() -> None:
    """auto: open from R570 when every GPU supports open modules; proprietary for a pre-Turing GPU or older branch."""
    assert matrix.kernel_module_type("auto", 570, ("turing",)) == "open"
    assert matrix.kernel_module_type("auto", 560, ("turing",)) == "proprietary"  # the R560/R565 containers
    assert matrix.kernel_module_type("auto", 555, ("turing",)) == "proprietary"
    assert matrix.kernel_module_type("auto", 580, ("volta",)) == "proprietary"
    assert matrix.kernel_module_type("auto", 580, ()) == "open"  # the branch rule when the GPU is unknown
    assert matrix.kernel_module_type("proprietary", 595, ("hopper",)) == "proprietary"


# Identification


def test_identify_from_gfd_labels_first() -> None:
    ident = identify({**H100_GFD, "feature.node.kubernetes.io/pci-0302_10de_2330.present": "true"})
    assert (ident.architectures, ident.source, ident.products) == (("hopper",), "gfd", ("NVIDIA-H100-80GB-HBM3",))
    unknown_device = identify({**H100_GFD, "feature.node.kubernetes.io/pci-0302_10de_ffff.present": "true"})
    assert (unknown_device.architectures, unknown_device.source) == (("hopper",), "gfd")


def test_identify_trusts_the_devices_over_gfd_labels_they_contradict() -> None:
    """GFD's labels live in GFD's own NodeFeature object, which only GFD rewrites, and GFD needs a driver; nfd-worker
    rewrites the devices at every start. GFD's architecture used to win whatever the devices said, so a node whose
    V100 was replaced by an L4 stayed a volta."""
    v100_gfd = {"nvidia.com/gpu.family": "volta", "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}
    for ident in (identify(v100_gfd, ("27b8",)), identify({**v100_gfd, NFD_L4: "true"})):
        assert ident.architectures == ("ada-lovelace",) and ident.source != "gfd", ident.describe()
    # devices that include GFD's architecture (a mixed node) keep GFD's answer, the other architecture added
    mixed = identify(v100_gfd, ("1db1", "27b8"))
    assert (mixed.architectures, mixed.source) == (("ada-lovelace", "volta"), "gfd")


def test_stale_gfd_labels_do_not_keep_a_replaced_gpu_refused() -> None:
    """A V100 node refused under R595 (no driver pod, so GFD no longer runs there) has its GPU replaced by an L4, the
    remedy the refusal suggests. GFD's stale volta labels outvoted the NodeFeature's 0x27b8, so the node stayed
    refused and never got the driver that would let GFD correct them."""
    v100_gfd = {"nvidia.com/gpu.family": "volta", "nvidia.com/gpu.compute.major": "7",
                "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}  # fmt: skip
    labels = {PCI: "true", **OS, **v100_gfd, "nvidia.com/gpu.deploy.driver": DRIVER_REFUSED}
    node = NodeFacts(name="swapped", labels=labels, has_nfd=True, pci_devices=("27b8",))
    found = compat.verdicts([node], spec("595.91.07"))["swapped"]
    assert found.refusal is None, found.describe()
    assert desired_labels(node, spec("595.91.07"), refused=False)["nvidia.com/gpu.deploy.driver"] == "true"


# pci.ids: 2236 GA102GL [A10], 26b9 AD102GL [L40S], 25b6 GA107GL [A2 / A16].
@pytest.mark.parametrize("device", ["2236", "26b9", "25b6"])
def test_v100_swapped_for_a_gpu_of_another_architecture_is_not_kept_refused(device: str) -> None:
    """Only device IDs in the matrix outvoted GFD's stale labels, and the A10, A40, L40(S), A2/A16 were not in it: a
    V100 replaced by one stayed refused under R595 until someone deleted GFD's labels by hand. The matrix now lists
    those."""
    v100_gfd = {"nvidia.com/gpu.family": "volta", "nvidia.com/gpu.compute.major": "7",
                "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}  # fmt: skip
    labels = {PCI: "true", **OS, **v100_gfd, "nvidia.com/gpu.deploy.driver": DRIVER_REFUSED}
    node = NodeFacts(name="swapped", labels=labels, has_nfd=True, pci_devices=(device,))
    found = compat.verdicts([node], spec("595.91.07"))["swapped"]
    assert found.refusal is None, f"0x{device}: {found.describe()}"
    assert desired_labels(node, spec("595.91.07"), refused=False)["nvidia.com/gpu.deploy.driver"] == "true"
    assert "volta" not in found.identity.architectures and found.identity.known
    # a V100 among the devices keeps GFD's answer
    assert identify(v100_gfd, (device, "1db1")).architectures[-1] == "volta"


def test_gfd_labels_stand_for_a_device_the_matrix_does_not_list() -> None:
    """The matrix lists data-center GPUs only: a Quadro GV100 (0x1dba, not listed) that GFD labels volta is volta,
    refused under R595, not "unknown, not checked" (a driver that cannot run it)."""
    gv100 = {"nvidia.com/gpu.family": "volta", "nvidia.com/gpu.compute.major": "7",
             "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.product": "Quadro-GV100"}  # fmt: skip
    assert identify(gv100, ("1dba",)).architectures == ("volta",)
    node = NodeFacts(name="gv100", labels={PCI: "true", **OS, **gv100}, has_nfd=True, pci_devices=("1dba",))
    assert compat.verdicts([node], spec("595.91.07"))["gv100"].refusal is not None
    assert identify({**H100_GFD}, ("20b3",)).architectures == ("hopper",)


def test_mixed_node_keeps_every_architecture_its_devices_show_under_gfd_labels() -> None:
    """An H100 (0x2330) and a V100 (0x1db1): refused under R595 before GFD ran. GFD labels a node from one GPU
    (hopper here), and identify() kept that single architecture since it was among the devices', so the same node
    was no longer refused and an upgrade to R595 lost its V100."""
    labels = {PCI: "true", **OS}
    before = NodeFacts(name="mixed", labels=labels, has_nfd=True, pci_devices=("1db1", "2330"))
    assert compat.verdicts([before], spec("595.91.07"))["mixed"].refusal is not None
    gfd = {"nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.compute.major": "9",
           "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # fmt: skip
    after = NodeFacts(name="mixed", labels={**labels, **gfd}, has_nfd=True, pci_devices=("1db1", "2330"))
    ident = identify(after.labels, after.pci_devices)
    assert (ident.architectures, ident.source) == (("hopper", "volta"), "gfd")
    assert ident.products == ("NVIDIA-H100-80GB-HBM3", "Tesla V100-SXM2-16GB")
    found = compat.verdicts([after], spec("595.91.07"))["mixed"]
    assert found.refusal is not None, found.describe()


def test_identify_from_gfd_compute_capability() -> None:
    ident = identify({"nvidia.com/gpu.compute.major": "7", "nvidia.com/gpu.compute.minor": "0"})
    assert ident.architectures == ("volta",) and ident.source == "gfd"


def test_identify_from_node_feature_devices() -> None:
    obj = {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1",
        "kind": "NodeFeature",
        "metadata": {"name": "n1-abc", "namespace": "nfd", "labels": {"nfd.node.kubernetes.io/node-name": "n1"}},
        "spec": {"features": {"instances": {"pci.device": {"elements": [
            {"attributes": {"class": "0302", "vendor": "10de", "device": "1DB4"}},
            {"attributes": {"class": "0680", "vendor": "10de", "device": "22a3"}},  # NVSwitch: not a GPU
            {"attributes": {"class": "0200", "vendor": "15b3", "device": "101d"}},
        ]}}}},
    }  # fmt: skip
    assert device_ids_from_node_feature(obj) == ("1db4",)
    assert node_of_feature(obj) == "n1"
    ident = identify({}, device_ids_from_node_feature(obj))
    assert (ident.architectures, ident.source) == (("volta",), "nodefeature")
    assert ident.products == ("Tesla V100-PCIE-16GB",)


# pci.ids (the `pci-ids` source): data-center GPUs of the architectures whose last branch is R580 or older.
PRE_TURING = [
    ("1df6", "volta", "Tesla V100S PCIe 32GB"),
    ("1db8", "volta", "Tesla V100 SXM3 32GB (DGX-2)"),
    ("1db7", "volta", "Tesla V100 DGXS 32GB"),
    ("1df5", "volta", "Tesla V100 SXM2 16GB"),
    ("15f8", "pascal", "Tesla P100 PCIe 16GB"),
    ("15f9", "pascal", "Tesla P100 SXM2 16GB"),
    ("1b38", "pascal", "Tesla P40"),
    ("1bb3", "pascal", "Tesla P4"),
    ("13f2", "maxwell", "Tesla M60"),
    ("13bd", "maxwell", "Tesla M10"),
    ("102d", "kepler", "Tesla K80"),
]


@pytest.mark.parametrize(("device", "arch", "product"), PRE_TURING)
def test_pre_turing_data_center_gpus_are_identified_and_refused_by_device_id(
    device: str, arch: str, product: str
) -> None:
    """REFERENCE 7: Volta's, Pascal's and Maxwell's last branch is R580, Kepler's R470, and we refuse up front. Before
    a driver runs the device ID is all there is, and `devices` listed 4 of the V100 IDs and no Pascal, Maxwell or
    Kepler one: a fresh node with one of these GPUs was "unknown, not checked" and got R595, which cannot drive it
    (so GFD never labelled it and it was never refused)."""
    node = NodeFacts(name="old", labels={PCI: "true", **OS}, has_nfd=True, pci_devices=(device,))
    assert identify(node.labels, node.pci_devices).architectures == (arch,), f"0x{device} ({product})"
    found = compat.verdicts([node], spec("595.91.07"))["old"]
    assert found.refusal is not None, f"0x{device} ({product}) under R595: {found.describe()}"


def test_every_dropped_architecture_has_its_device_ids() -> None:
    listed = {arch for arch, _ in matrix.devices().values()}
    assert all(a.name in listed for a in matrix.architectures().values() if a.last_branch is not None)


@pytest.mark.parametrize(
    ("key", "device"),
    [
        ("feature.node.kubernetes.io/pci-0302_10de_1db1.present", "1db1"),
        ("feature.node.kubernetes.io/pci-10de_2330.present", "2330"),
        ("feature.node.kubernetes.io/pci-0302_10de_2330_10de_16c1.present", "2330"),
        ("feature.node.kubernetes.io/pci-0302_10de.present", None),
        ("feature.node.kubernetes.io/pci-10de.present", None),
        ("feature.node.kubernetes.io/pci-0200_15b3_101d.present", None),
        ("feature.node.kubernetes.io/pci-0300_10de_20b0.present", "20b0"),
        ("feature.node.kubernetes.io/pci-0680_10de_22a3.present", None),  # an HGX board's NVSwitch
    ],
)
def test_device_ids_from_nfd_labels(key: str, device: str | None) -> None:
    assert device_ids_from_labels({key: "true"}) == ((device,) if device else ())


def test_unknown_gpu_is_named_not_refused() -> None:
    assert not identify({PCI: "true"}).known
    odd = identify({"feature.node.kubernetes.io/pci-0302_10de_ffff.present": "true"})
    assert not odd.known and "0xffff" in odd.describe() and odd.describe().startswith("unknown, not checked")


def test_node_facts_keep_nfd_device_labels() -> None:
    nfd_other = "feature.node.kubernetes.io/cpu-cpuid.AVX512F"
    labels = {V100_LABEL: "true", nfd_other: "true", "pool": "a"}
    facts = NodeFacts.from_node({"metadata": {"name": "n", "labels": labels}})
    # NFD's other labels are dropped; labels outside NFD stay (an NVIDIADriver's nodeSelector may name them).
    assert facts.labels == {V100_LABEL: "true", "pool": "a"}


# Refusal per node


def test_refused_node_gets_our_driver_label_and_leaves_the_pools() -> None:
    v100 = gpu_node("v100", **{V100_LABEL: "true"})
    want = desired_labels(v100, spec(), refused=True)
    assert want["nvidia.com/gpu.deploy.driver"] == DRIVER_REFUSED
    assert want["nvidia.com/gpu.deploy.container-toolkit"] == "true"
    labelled = replace(v100, labels={**v100.labels, **{k: v for k, v in want.items() if v}})
    assert not gets_driver(labelled)
    # once the version fits again, the label goes back to true; a refusal never overrides an opt-out or a pause
    assert desired_labels(labelled, spec("580.95.05"))["nvidia.com/gpu.deploy.driver"] == "true"
    for value in ("false", "pre-installed", "paused-for-driver-upgrade"):
        node = gpu_node("n", **{"nvidia.com/gpu.deploy.driver": value})
        assert "nvidia.com/gpu.deploy.driver" not in desired_labels(node, spec(), refused=True)


def test_verdicts_refuse_only_what_cannot_run() -> None:
    nodes = [
        gpu_node("h100", **H100_GFD),
        gpu_node("v100", **{V100_LABEL: "true"}),
        gpu_node("unknown"),
        gpu_node("opted-out", **{V100_LABEL: "true", "nvidia.com/gpu.deploy.driver": "false"}),
        NodeFacts(name="cpu", labels=dict(OS), has_nfd=True),
    ]
    found = compat.verdicts(nodes, spec())
    assert sorted(found) == ["h100", "unknown", "v100"]
    assert compat.refused(found).keys() == {"v100"}
    assert found["h100"].module_type == "open" and found["unknown"].refusal is None
    cond = compat.condition(found, 3, [], "2026-01-01T00:00:00Z")
    assert (cond["type"], cond["status"], cond["reason"], cond["observedGeneration"]) == (
        "DriverRefused", "True", "IncompatibleNodes", 3,
    )  # fmt: skip
    assert "v100: driver 595.91.07 (R595) does not support volta GPUs" in cond["message"]
    assert "GPU unknown, not checked: unknown" in cond["message"]
    # R580 runs everything here
    assert not compat.refused(compat.verdicts(nodes, spec("580.95.05")))
    again = compat.condition(compat.verdicts(nodes, spec("580.95.05")), 4, [cond], "2026-01-02T00:00:00Z")
    assert again["status"] == "False" and again["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def test_verdicts_judge_only_the_nodes_the_clusterpolicys_driver_is_for() -> None:
    """A node the ClusterPolicy deploys no driver to gets no verdict, so DriverRefused never names it: none with
    driver.enabled false (the driver is on the host) or useNvidiaDriverCRD (the NVIDIADrivers' are judged), nor a
    node opted out of every operand, a vm-passthrough one or one whose driver is pre-installed. A node paused for a
    driver upgrade is still judged."""
    v100 = {V100_LABEL: "true"}
    assert compat.refused(compat.verdicts([gpu_node("v100", **v100)], spec())).keys() == {"v100"}
    found = compat.verdicts([gpu_node("v100", **v100)], parse_spec({"driver": {"enabled": False}}))
    assert found == {}
    assert compat.condition(found, 1, [], "t")["status"] == "False"
    assert compat.verdicts([gpu_node("v100", **v100)], parse_spec({"driver": {"useNvidiaDriverCRD": True}})) == {}

    opted_out = gpu_node("opted-out", **v100, **{"nvidia.com/gpu.deploy.operands": "false"})
    vm = gpu_node("vm", **v100, **{"nvidia.com/gpu.workload.config": "vm-passthrough"})
    assert compat.verdicts([opted_out, vm], parse_spec({"sandboxWorkloads": {"enabled": True}})) == {}
    assert compat.verdicts([opted_out], spec()) == {}
    pre = gpu_node("pre", **v100, **{"nvidia.com/gpu.deploy.driver": "pre-installed"})
    paused = gpu_node("paused", **v100, **{"nvidia.com/gpu.deploy.driver": "paused-for-driver-upgrade"})
    assert compat.refused(compat.verdicts([pre, paused], spec())).keys() == {"paused"}


def test_driver_refused_keeps_its_transition_time_while_its_status_stays() -> None:
    """lastTransitionTime moves only when the status does: `kubectl describe` says when the refusal began, not
    when the status was last written."""
    found = compat.verdicts([gpu_node("v100", **{V100_LABEL: "true"})], spec())
    first = compat.condition(found, 1, [], "t0")
    assert first["status"] == "True" and first["lastTransitionTime"] == "t0"
    again = compat.condition(found, 2, [first], "t1")
    assert again["status"] == "True" and again["lastTransitionTime"] == "t0"
    cleared = compat.condition({}, 3, [again], "t2")
    assert cleared["status"] == "False" and cleared["lastTransitionTime"] == "t2"
    assert compat.condition({}, 4, [cleared], "t3")["lastTransitionTime"] == "t2"


def test_grace_hopper_needs_the_open_kernel_modules() -> None:
    """GH200 was judged as any Hopper, which runs either module type, so kernelModuleType proprietary, or auto on a
    branch before R560 (the driver container falls back to proprietary there), passed as "ok". NVIDIA: the
    proprietary modules do not support Grace Hopper, as they do not support Blackwell."""
    on_r550 = compat.verdicts([gpu_node("gh200", **GH200_GFD)], spec("550.54.15"))["gh200"]
    assert on_r550.module_type == "proprietary"  # what the driver container installs there
    assert on_r550.refusal is not None and on_r550.refusal.rule == "proprietary-modules-unsupported"
    for labels in (GH200_GFD, {GH200_144G_LABEL: "true"}):
        found = compat.verdicts([gpu_node("gh200", **labels)], spec("595.91.07", "proprietary"))["gh200"]
        assert found.refusal is not None and "GH200 GPUs need the open ones" in found.refusal.message, labels
        assert compat.verdicts([gpu_node("gh200", **labels)], spec("595.91.07"))["gh200"].refusal is None  # open
    # a plain H100 keeps running the proprietary modules
    assert compat.verdicts([gpu_node("h100", **H100_GFD)], spec("595.91.07", "proprietary"))["h100"].refusal is None


def driver_env(version: str, module_type: str = "auto", **env: str) -> Any:
    return parse_spec({"driver": {"repository": "nvcr.io/nvidia", "image": "driver", "version": version,
                                  "kernelModuleType": module_type,
                                  "env": [{"name": k, "value": v} for k, v in env.items()]}})  # fmt: skip


def rendered_env(spec: Any, node: NodeFacts, nvidia_drivers: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The env of the rendered nvidia-driver-ctr (one entry per name)."""
    for ds in daemonsets(render_all(spec, [node], nvidia_drivers=nvidia_drivers)):
        if ds["metadata"]["name"].startswith("nvidia-driver-daemonset"):
            return {e["name"]: e.get("value") for e in container(ds, "nvidia-driver-ctr")["env"]}
    raise AssertionError("no driver DaemonSet rendered")


def test_driver_env_kernel_module_type_is_what_the_matrix_judges() -> None:
    """A KERNEL_MODULE_TYPE in driver.env replaces the kernelModuleType one in the pod (user env is applied last, as
    upstream), but the matrix judged kernelModuleType alone: env open on the 550.163.01 container (NVIDIA's way to
    get open modules from it) refused a GH200 that runs them, env proprietary on R595 passed a Blackwell node, env
    open on R580 a Volta one. The refusal now names the env."""
    gh200 = gpu_node("gh200", **GH200_GFD)
    with_open = driver_env("550.163.01", KERNEL_MODULE_TYPE="open")
    assert rendered_env(with_open, gh200)["KERNEL_MODULE_TYPE"] == "open"  # what the driver container installs
    found = compat.verdicts([gh200], with_open)["gh200"]
    assert (found.module_type, found.refusal) == ("open", None), found.describe()
    b200 = gpu_node("b200", **{B200_LABEL: "true"})
    with_proprietary = driver_env("595.91.07", KERNEL_MODULE_TYPE="proprietary")
    assert rendered_env(with_proprietary, b200)["KERNEL_MODULE_TYPE"] == "proprietary"
    refusal = compat.verdicts([b200], with_proprietary)["b200"].refusal
    assert refusal is not None and refusal.rule == "proprietary-modules-unsupported"
    assert refusal.message.startswith("driver.env KERNEL_MODULE_TYPE=proprietary installs proprietary"), refusal
    v100 = gpu_node("v100", **{V100_LABEL: "true"})
    volta = compat.verdicts([v100], driver_env("580.95.05", KERNEL_MODULE_TYPE="open"))["v100"]
    assert volta.refusal is not None and volta.refusal.rule == "open-modules-unsupported"
    # empty is auto to the container; another value makes it exit, so kernelModuleType is judged
    assert compat.requested_module_type(driver_env("550.163.01", KERNEL_MODULE_TYPE="").driver, "550") == (
        "auto", "driver.env KERNEL_MODULE_TYPE="
    )  # fmt: skip
    odd = parse_spec({"driver": {"kernelModuleType": "proprietary", "env": [{"name": "KERNEL_MODULE_TYPE",
                                                                          "value": "closed"}]}})  # fmt: skip
    assert compat.requested_module_type(odd.driver, "595") == ("proprietary", "kernelModuleType proprietary")


def test_nvidiadriver_env_kernel_module_type_is_what_the_matrix_judges() -> None:
    """The same under NVIDIADrivers: its env follows its kernelModuleType in the pod; the refusal names its env."""
    from gpu_operator.nvidiadriver import NVIDIADriver
    from gpu_operator.render import driver_routing

    policy = parse_spec({"driver": {"useNvidiaDriverCRD": True}})
    obj = {"metadata": {"name": "b", "uid": "b"}, "spec": {"repository": "nvcr.io/nvidia", "image": "driver",
           "version": "595.91.07", "env": [{"name": "KERNEL_MODULE_TYPE", "value": "proprietary"}]}}  # fmt: skip
    b200 = gpu_node("b200", **{B200_LABEL: "true"})
    assert rendered_env(policy, b200, [obj])["KERNEL_MODULE_TYPE"] == "proprietary"
    groups = driver_routing([b200], policy, [NVIDIADriver.from_object(obj)]).groups
    refusal = compat.verdicts_for([b200], policy, groups)["b200"].refusal
    assert refusal is not None and refusal.rule == "proprietary-modules-unsupported"
    assert refusal.message.startswith("env KERNEL_MODULE_TYPE=proprietary installs proprietary"), refusal


def test_open_kernel_modules_enabled_in_env_is_open_where_auto_is_not_read() -> None:
    """Before R570 auto reads OPEN_KERNEL_MODULES_ENABLED=true alone as open: in the containers of the branches that
    predate KERNEL_MODULE_TYPE (every R560/R565 one) and in the older builds of the others (R535, R550); from R570
    it is ignored. A V100 on such a driver is refused with the env named."""
    gh200 = gpu_node("gh200", **GH200_GFD)
    v100 = gpu_node("v100", **{V100_LABEL: "true"})
    for version in ("550.163.01", "565.57.01"):
        env_open = driver_env(version, OPEN_KERNEL_MODULES_ENABLED="true")
        found = compat.verdicts([gh200], env_open)["gh200"]
        assert (found.module_type, found.refusal) == ("open", None), (version, found.describe())
        refusal = compat.verdicts([v100], env_open)["v100"].refusal
        assert refusal is not None and refusal.rule == "open-modules-unsupported", (version, refusal)
        assert refusal.message.startswith(
            "kernelModuleType auto with driver.env OPEN_KERNEL_MODULES_ENABLED=true installs open kernel modules"
        ), refusal
    for version in ("570.133.20", "580.95.05"):
        found = compat.verdicts([v100], driver_env(version, OPEN_KERNEL_MODULES_ENABLED="true"))["v100"]
        assert (found.module_type, found.refusal) == ("proprietary", None), (version, found.describe())
    # on R550 kernelModuleType proprietary is not auto: the env does not turn it open
    proprietary = driver_env("550.163.01", "proprietary", OPEN_KERNEL_MODULES_ENABLED="true")
    assert compat.requested_module_type(proprietary.driver, "550.163.01")[0] == "proprietary"


def test_env_kernel_module_type_is_not_read_by_the_r560_r565_containers() -> None:
    """The matrix took a KERNEL_MODULE_TYPE in driver.env for what every container installs, but the 560.35.03 /
    565.57.01 containers predate it: they read OPEN_KERNEL_MODULES_ENABLED alone, which the operator sets for
    kernelModuleType open only and the env may replace. auto with env open passed a GH200 that gets proprietary
    modules; open with env proprietary refused a GH200 that gets open ones."""
    gh200 = gpu_node("gh200", **GH200_GFD)
    env_open = driver_env("565.57.01", KERNEL_MODULE_TYPE="open")
    assert rendered_env(env_open, gh200).get("OPEN_KERNEL_MODULES_ENABLED") != "true"  # what that container reads
    found = compat.verdicts([gh200], env_open)["gh200"]
    assert found.module_type == "proprietary", found.describe()
    assert found.refusal is not None and found.refusal.rule == "proprietary-modules-unsupported", found.describe()
    assert found.refusal.message.startswith("kernelModuleType auto installs proprietary"), found.refusal
    env_proprietary = driver_env("565.57.01", "open", KERNEL_MODULE_TYPE="proprietary")
    assert rendered_env(env_proprietary, gh200).get("OPEN_KERNEL_MODULES_ENABLED") == "true"
    found = compat.verdicts([gh200], env_proprietary)["gh200"]
    assert (found.module_type, found.refusal) == ("open", None), found.describe()
    # the env's OPEN_KERNEL_MODULES_ENABLED replaces the operator's: not "true" is proprietary
    env_false = driver_env("560.35.03", "open", OPEN_KERNEL_MODULES_ENABLED="false")
    assert rendered_env(env_false, gh200)["OPEN_KERNEL_MODULES_ENABLED"] == "false"
    refusal = compat.verdicts([gh200], env_false)["gh200"].refusal
    assert refusal is not None and refusal.message.startswith(
        "kernelModuleType open with driver.env OPEN_KERNEL_MODULES_ENABLED=false installs proprietary"
    ), refusal


def test_auto_on_r560_r565_installs_proprietary_so_gh200_is_refused() -> None:
    """auto was taken for open from R560, as the driver container's branch fallback says, so a GH200 on R560/R565
    passed as "ok" and every node there was said to get open modules. That fallback came with KERNEL_MODULE_TYPE
    (gpu-driver-container 1220e91, 2025-01); the 560.35.03 / 565.57.01 containers were last built before it and
    install proprietary modules unless OPEN_KERNEL_MODULES_ENABLED=true, which the operator sets for `open` only
    (NVIDIA: auto needs the 570.86.15 / 570.124.06 or later containers)."""
    for version in ("560.35.03", "565.57.01"):
        module_type, refusal = matrix.check(version, "auto", ("hopper",), ("GH200",))
        assert module_type == "proprietary", version
        assert refusal is not None and refusal.rule == "proprietary-modules-unsupported", version
    assert matrix.check("565.57.01", "auto", ("hopper",)) == ("proprietary", None)  # a plain H100 runs them
    assert matrix.check("570.133.20", "auto", ("hopper",), ("GH200",)) == ("open", None)


def test_hgx_b200_needs_570_133_20() -> None:
    """Only branches were compared, so a B200 passed with 570.86.15, older than the 570.133.20 HGX B200 needs
    (REFERENCE 7, the GPU Operator's platform-support note). A bare branch (precompiled) is checked by branch."""
    b200_gfd = {"nvidia.com/gpu.family": "blackwell", "nvidia.com/gpu.product": "NVIDIA-B200"}
    for labels in ({B200_LABEL: "true"}, b200_gfd):
        node = gpu_node("b200", **labels)
        assert compat.verdicts([node], spec("570.133.20"))["b200"].refusal is None
        early = compat.verdicts([node], spec("570.86.15"))["b200"]
        assert early.refusal is not None and early.refusal.rule == "version-too-old", early.describe()
        assert "570.133.20" in early.refusal.message
    assert matrix.check("570", "auto", ("blackwell",), ("HGX B200",)) == ("open", None)
    gb200 = gpu_node("gb200", **{"nvidia.com/gpu.family": "blackwell", "nvidia.com/gpu.product": "NVIDIA-GB200"})
    assert compat.verdicts([gb200], spec("570.86.15"))["gb200"].refusal is None  # GB200 needs R570 only


@pytest.mark.parametrize("env", [False, True])
def test_driver_image_with_tag_and_digest_is_checked_by_its_tag(monkeypatch: pytest.MonkeyPatch, env: bool) -> None:
    """`image: nvcr.io/nvidia/driver:535.230.02@sha256:...` (a tag pinned by digest, as Renovate or kbld write it)
    is used verbatim and runs 535.230.02 (REFERENCE 1), so a B200 is refused (REFERENCE 7 beyond: R570+). The
    version read was the digest's hex, "unknown, not checked", and the B200 got R535. Likewise in DRIVER_IMAGE. A
    digest alone names no version: still unknown, not checked."""
    digest = "sha256:" + "4" * 64
    b200 = gpu_node("b200", **{B200_LABEL: "true"})

    def verdict(image: str) -> compat.Verdict:
        if env:
            monkeypatch.setenv("DRIVER_IMAGE", image)
            return compat.verdicts([b200], parse_spec({}))["b200"]
        return compat.verdicts([b200], parse_spec({"driver": {"image": image}}))["b200"]

    found = verdict(f"nvcr.io/nvidia/driver:535.230.02@{digest}")
    assert found.version == "535.230.02", found.describe()
    assert found.refusal is not None and found.refusal.rule == "architecture-too-new", found.describe()
    pinned = verdict(f"registry:5000/nvidia/driver@{digest}")
    assert pinned.version == digest and pinned.refusal is None, pinned.describe()
    assert pinned.describe() == f"driver version {digest} unknown, not checked"


def test_a_node_object_is_judged_once_per_spec_whatever_else_is_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass judges every node twice (the rollout, the upgrade planner) and one joining node is judged between
    passes: neither may make the next pass judge every node again (it did: 0.1 s a pass at 5,000 nodes)."""
    checked: list[str] = []
    real = matrix.check

    def counting(version: str, module_type: str, archs: tuple[str, ...], *rest: Any) -> Any:
        checked.append(version)
        return real(version, module_type, archs, *rest)

    monkeypatch.setattr(matrix, "check", counting)
    everyone, policy = [gpu_node(f"n{i}", **H100_GFD) for i in range(300)], spec()
    first = compat.verdicts(everyone, policy)
    assert len(first) == 300 and len(checked) == 300
    compat.verdicts([gpu_node("joining", **H100_GFD)], policy)  # one node, between passes
    assert compat.verdicts(everyone, policy) == first
    assert len(checked) == 301
    changed = replace(everyone[7], labels={**everyone[7].labels, "nvidia.com/gpu.deploy.driver": "false"})
    after = compat.verdicts([*everyone[:7], changed, *everyone[8:]], policy)
    assert len(checked) == 301 and "n7" not in after and len(after) == 299  # a changed node: judged again
    other = spec("580.95.05")
    compat.verdicts(everyone, other)
    assert len(checked) == 301 + 300  # another spec: every node again


def test_nvidiadriver_verdicts_are_judged_again_only_for_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under NVIDIADrivers a pass keeps the routing (the same object while equal) and each node's verdict under it:
    a pass with nothing new judges no node, a changed NVIDIADriver judges its own nodes again (every node's verdict
    was judged again each pass, the group specs being made anew)."""
    from gpu_operator.nvidiadriver import KeptRouting, NVIDIADriver
    from gpu_operator.render import driver_routing

    checked: list[str] = []
    real = matrix.check
    counts = [True]

    def counting(version: str, module_type: str, archs: tuple[str, ...], *rest: Any) -> Any:
        if counts[0]:
            checked.append(version)
        return real(version, module_type, archs, *rest)

    def copies(nodes: list[NodeFacts]) -> list[NodeFacts]:
        return [replace(n) for n in nodes]  # objects of their own: what is kept on the pass's nodes stays

    def nvd(name: str, **spec: Any) -> NVIDIADriver:
        return NVIDIADriver.from_object({"metadata": {"name": name, "uid": name}, "spec": spec})

    monkeypatch.setattr(matrix, "check", counting)
    nodes = [gpu_node(f"h{i}", **H100_GFD) for i in range(4)] + [gpu_node(f"v{i}", pool="v", **{V100_LABEL: "true"})
                                                                 for i in range(3)]  # fmt: skip
    policy = parse_spec({"driver": {"useNvidiaDriverCRD": True}})
    drivers = [nvd("default", default=True, version="595.91.07"), nvd("volta", nodeSelector={"pool": "v"},
                                                                       version="580.95.05")]  # fmt: skip
    kept, kept_groups = KeptRouting(), compat.kept_group_verdicts()

    def judged() -> dict[str, Any]:
        groups = driver_routing(nodes, policy, drivers, kept).groups
        got = compat.verdicts_for(nodes, policy, groups, kept_groups=kept_groups)
        counts[0] = False  # what nothing is kept for gives the same, and is not counted
        fresh = copies(nodes)
        assert got == compat.verdicts_for(fresh, policy, driver_routing(fresh, policy, drivers).groups)
        counts[0] = True
        return got

    first = judged()
    assert not compat.refused(first) and sorted(first) == [*(f"h{i}" for i in range(4)), "v0", "v1", "v2"]
    count = len(checked)
    drivers = [nvd("default", default=True, version="595.91.07"), nvd("volta", nodeSelector={"pool": "v"},
                                                                       version="580.95.05")]  # parsed anew
    assert judged() == first and len(checked) == count  # nothing judged again
    drivers[1] = nvd("volta", nodeSelector={"pool": "v"}, version="595.91.07")
    assert compat.refused(judged()).keys() == {"v0", "v1", "v2"}
    assert checked[count:] == ["595.91.07"] * 3  # the volta nodes alone


def test_node_patches_label_refused_nodes_only() -> None:
    nodes = [gpu_node("h100", **H100_GFD), gpu_node("v100", **{V100_LABEL: "true"})]
    patches = node_patches(nodes, spec(), {"v100"})
    assert patches["v100"]["labels"]["nvidia.com/gpu.deploy.driver"] == DRIVER_REFUSED
    assert patches["h100"]["labels"]["nvidia.com/gpu.deploy.driver"] == "true"


def test_planner_skips_a_refused_node_with_the_reason() -> None:
    reason = "driver 595.91.07 (R595) does not support volta GPUs"
    nodes = [make_node("h100", "upgrade-required"), replace(make_node("v100", "upgrade-required"), refused=reason)]
    p = plan(nodes, [], policy(max_parallel_upgrades=0), 10_000.0)
    assert p.waiting["v100"] == f"upgrade skipped: driver refused: {reason}"
    assert "v100" not in {getattr(a, "node", None) for a in p.actions}
    assert p.counters.skipped == 1 and p.counters.pending == 1


def test_upgrade_nodes_carry_the_refusal() -> None:
    node = gpu_node("v100", **{V100_LABEL: "true", "nvidia.com/gpu.deploy.driver": "true"})
    (un,) = upgrade_nodes([node], {}, {}, {"v100": "why"})
    assert un.refused == "why" and un.skipped
    assert NEW  # the planner fixtures' revision names stay importable


# The NodeFeature kind


def test_node_feature_is_an_optional_kind() -> None:
    kind = registry()["NodeFeature"]
    assert kind == NODE_FEATURE and kind.optional and kind.namespaced
    assert kind.api_version == "nfd.k8s-sigs.io/v1alpha1" and kind.plural == "nodefeatures"
    assert not served(kind, frozenset()) and served(kind, frozenset({"nfd.k8s-sigs.io"}))


# The command line


def test_versions_json_is_the_data_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["versions", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"matrix": matrix.data()}
    assert main(["versions", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"matrix": matrix.data()}


def test_versions_text_shows_every_row_with_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["versions"]) == 0
    out = capsys.readouterr().out
    d = matrix.data()
    for r in d["releases"]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {r['release']}:"))
        assert f"[{r['source']}]" in line and all(f"{k} {v}" in line for k, v in r["components"].items())
    for b in d["branches"]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  R{b['branch']}:"))
        assert f"CUDA {b['max_cuda']}" in line and f"[{b['source']}]" in line
    for a in d["architectures"]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {a['name']} (compute"))
        assert f"[{a['source']}]" in line
    for device in d["devices"]:
        assert all(f"{i} {p}" in out for i, p in device["ids"].items())
    for product in d["products"]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {product['product']} ("))
        assert f"[{product['source']}]" in line


def test_versions_report_judges_nodes_by_their_nvidiadriver() -> None:
    """Under useNvidiaDriverCRD `versions --kubeconfig` judged nodes by the ClusterPolicy's driver, which no node
    gets there: it named none ("no GPU node gets the ClusterPolicy's driver") while the operator refused a V100 by
    its NVIDIADriver's version."""
    from gpu_operator.cli import versions_report, versions_text
    from gpu_operator.observe import Snapshot

    nodes = [gpu_node("h100", **H100_GFD), gpu_node("v100", pool="v", **{V100_LABEL: "true"})]
    drivers = {
        "default": {"metadata": {"name": "default", "uid": "d"}, "spec": {"default": True, "version": "595.91.07"}},
        "old": {"metadata": {"name": "old", "uid": "o"}, "spec": {"nodeSelector": {"pool": "v"},
                                                                   "version": "590.44.01"}},
    }  # fmt: skip
    policy = {"metadata": {"name": "cluster-policy"}, "spec": {"driver": {"useNvidiaDriverCRD": True}}}
    snap = Snapshot(nodes={n.name: n for n in nodes}, policies={"cluster-policy": policy}, owned={}, pods={},
                    revisions={}, nvidia_drivers=drivers)  # fmt: skip
    cluster = versions_report(snap)["cluster"]
    assert cluster["useNvidiaDriverCRD"] and cluster["driver"] is None
    assert (cluster["nodes"]["h100"]["nvidiaDriver"], cluster["nodes"]["h100"]["driver"]) == ("default", "595.91.07")
    assert cluster["nodes"]["h100"]["refused"] is None
    v100 = cluster["nodes"]["v100"]
    assert (v100["nvidiaDriver"], v100["driver"]) == ("old", "590.44.01")
    assert v100["refused"]["rule"] == "architecture-dropped"
    text = versions_text(versions_report(snap))
    assert "  v100: NVIDIADriver old, driver 590.44.01: refused: driver 590.44.01 (R590)" in text
    assert "ClusterPolicy cluster-policy, driver from NVIDIADriver resources (useNvidiaDriverCRD)" in text


def _node_doc(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {PCI: "true", **OS, **labels}}}


def test_render_nodes_shows_the_refusals_offline(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    feature = {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1",
        "kind": "NodeFeature",
        "metadata": {"name": "v100-b", "namespace": "nfd", "labels": {"nfd.node.kubernetes.io/node-name": "v100-b"}},
        "spec": {"features": {"instances": {"pci.device": {"elements": [
            {"attributes": {"class": "0302", "vendor": "10de", "device": "1db5"}}]}}}},
    }  # fmt: skip
    docs = [_node_doc("h100", H100_GFD), _node_doc("v100-a", {V100_LABEL: "true"}), _node_doc("v100-b", {}), feature]
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump_all(docs))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy",
                                           "metadata": {"name": "p"}, "spec": {}}))  # fmt: skip
    assert main(["render", "--policy", str(policy_file), "--nodes", str(nodes)]) == 0
    captured = capsys.readouterr()
    warned = sorted(ln.split(":")[0] for ln in captured.err.splitlines() if "driver not rolled out" in ln)
    assert warned == ["warning", "warning"]
    assert "node v100-a: driver not rolled out" in captured.err and "node v100-b:" in captured.err
    docs_out = [d for d in yaml.safe_load_all(captured.out) if d]
    patches = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs_out if d.get("kind") == "Node"}
    assert patches["v100-a"]["nvidia.com/gpu.deploy.driver"] == DRIVER_REFUSED
    assert patches["v100-b"]["nvidia.com/gpu.deploy.driver"] == DRIVER_REFUSED
    assert patches["h100"]["nvidia.com/gpu.deploy.driver"] == "true"
    assert "# v100-a: refused: driver 595.91.07 (R595) does not support volta GPUs" in captured.out
    assert "# h100: ok: hopper (NVIDIA-H100-80GB-HBM3) from gfd, open kernel modules" in captured.out


def test_a_refused_node_gets_its_driver_label_back_only_after_the_daemonsets_changed() -> None:
    from gpu_operator.reconciler import hold_driver_restores

    v100 = gpu_node("v100", **{V100_LABEL: "true", "nvidia.com/gpu.deploy.driver": DRIVER_REFUSED})
    h100 = gpu_node("h100", **H100_GFD)
    patches = node_patches([v100, h100], spec("580.95.05"))
    assert patches["v100"]["labels"]["nvidia.com/gpu.deploy.driver"] == "true"
    held = hold_driver_restores(patches, [v100, h100])
    assert held == {"v100": {"labels": {"nvidia.com/gpu.deploy.driver": "true"}}}
    assert "nvidia.com/gpu.deploy.driver" not in patches["v100"]["labels"]
    assert patches["v100"]["labels"]["nvidia.com/gpu.deploy.container-toolkit"] == "true"
    assert patches["h100"]["labels"]["nvidia.com/gpu.deploy.driver"] == "true"


def test_an_event_only_for_refusals_the_status_does_not_name_yet() -> None:
    nodes = [gpu_node(f"v100-{i}", **{V100_LABEL: "true"}) for i in range(3)] + [gpu_node("h100", **H100_GFD)]
    found = compat.verdicts(nodes, spec())
    assert sorted(compat.newly_refused(found, [])) == ["v100-0", "v100-1", "v100-2"]
    named = compat.condition({k: v for k, v in found.items() if k != "v100-2"}, 1, [], "t")
    assert sorted(compat.newly_refused(found, [named])) == ["v100-2"]
    assert compat.newly_refused(found, [compat.condition(found, 1, [], "t")]) == {}
    # another rule for the same node is a change
    assert sorted(compat.newly_refused(compat.verdicts(nodes, spec("580.95.05", "open")), [named])) == [
        "v100-0", "v100-1", "v100-2",
    ]  # fmt: skip
