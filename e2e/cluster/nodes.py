"""Fake node profiles for the local cluster, and what GPU feature discovery would publish for them.

Nodes made here carry the annotation ``kwok.x-k8s.io/node: fake`` so kwok manages them (it marks them Ready
and runs their pods), and the label ``e2e.gpu-operator/profile`` so the node simulator knows their GPUs.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from e2e.cluster.existing import RUN_LABEL, run_id, run_labels
from e2e.kube import Kube

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
PROFILE_LABEL = "e2e.gpu-operator/profile"
NFD = "feature.node.kubernetes.io/"
PCI_LABEL = NFD + "pci-10de.present"  # what NFD writes for the GPUs with deviceLabelFields [vendor]
# The NFD deviceLabelFields settings a fake node may have (by name): one PCI label per device, of these fields.
NFD_PCI_MODES = {"vendor": ("vendor",), "class-vendor": ("class", "vendor"),
                 "class-vendor-device": ("class", "vendor", "device")}  # fmt: skip
HOST_DRIVER_ANNOTATION = "e2e.gpu-operator/host-driver"  # the version of a driver pre-installed on the node
KUBELET_VERSION = "v1.37.2"
CONTAINER_RUNTIMES = {"containerd": "containerd://1.7.27", "crio": "cri-o://1.31.3"}
CONTAINER_RUNTIME = CONTAINER_RUNTIMES["containerd"]
DEFAULT_HOST_DRIVER = "580.95.05"


@dataclass(frozen=True)
class Profile:
    name: str
    gpu_count: int
    product: str = ""  # as GFD writes it: spaces replaced by dashes
    family: str = ""
    compute: tuple[int, int] = (0, 0)
    memory_mib: int = 0
    mig_capable: bool = False
    machine: str = ""
    instance_type: str = ""
    cpu: str = "96"
    memory: str = "1056Gi"
    # The NFD worker's deviceLabelFields on such a node, which decide its one PCI label for the GPUs: "vendor"
    # (upstream chart's: pci-10de.present), "class-vendor" (NFD's default: pci-0302_10de.present) or
    # "class-vendor-device" (pci-0302_10de_<device_id>.present: the GPU is known before any driver runs).
    nfd: str = "vendor"
    device_id: str = ""  # PCI device ID (vendor 10de)

    def __post_init__(self) -> None:
        if self.nfd not in NFD_PCI_MODES or (self.nfd == "class-vendor-device" and not self.device_id):
            raise ValueError(f"profile {self.name}: nfd must be one of {sorted(NFD_PCI_MODES)}, "
                             "class-vendor-device with a device_id")

    @property
    def has_gpu(self) -> bool:
        return self.gpu_count > 0

    @property
    def pci_label(self) -> str:
        """NFD's label for the node's GPUs under its deviceLabelFields (source/pci/pci.go; the GPUs are 3D
        controllers, class 0302)."""
        values = {"class": "0302", "vendor": "10de", "device": self.device_id}
        return f"{NFD}pci-{'_'.join(values[f] for f in NFD_PCI_MODES[self.nfd])}.present"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="h100x8", gpu_count=8, product="NVIDIA-H100-80GB-HBM3", family="hopper",
            compute=(9, 0), memory_mib=81559, mig_capable=True, machine="DGX-H100",
            instance_type="p5.48xlarge", memory="2048Gi",
        ),
        # Tesla V100-SXM2-16GB (device 0x1db1, pci-ids.ucw.cz), as on an AWS p3.16xlarge; R580 is its last branch.
        Profile(
            name="v100x8", gpu_count=8, product="Tesla-V100-SXM2-16GB", family="volta",
            compute=(7, 0), memory_mib=16384, mig_capable=False, machine="p3.16xlarge",
            instance_type="p3.16xlarge", cpu="64", memory="488Gi", nfd="class-vendor-device", device_id="1db1",
        ),
        Profile(
            name="a100x4", gpu_count=4, product="NVIDIA-A100-SXM4-80GB", family="ampere",
            compute=(8, 0), memory_mib=81920, mig_capable=True, machine="DGX-Station-A100",
            instance_type="a2-ultragpu-4g", memory="680Gi",
        ),
        Profile(
            name="l4x1", gpu_count=1, product="NVIDIA-L4", family="ada-lovelace",
            compute=(8, 9), memory_mib=23034, mig_capable=False, machine="g6.4xlarge",
            instance_type="g6.4xlarge", memory="64Gi",
        ),
        Profile(name="cpu", gpu_count=0, instance_type="m7i.4xlarge", cpu="16", memory="64Gi"),
    )
}


@dataclass(frozen=True)
class OSInfo:
    id: str
    version_id: str
    kernel: str
    os_image: str


OS_RELEASES: dict[str, OSInfo] = {
    "ubuntu22.04": OSInfo("ubuntu", "22.04", "5.15.0-105-generic", "Ubuntu 22.04.4 LTS"),
    "ubuntu24.04": OSInfo("ubuntu", "24.04", "6.8.0-45-generic", "Ubuntu 24.04.1 LTS"),
    "rhel9.4": OSInfo("rhel", "9.4", "5.14.0-427.13.1.el9_4.x86_64", "Red Hat Enterprise Linux 9.4 (Plow)"),
}


# How NFD splits versions into parts: os_release VERSION_ID (source/system/system.go splitVersion; an empty part
# is left out) and the kernel's (source/kernel/version.go parseVersion; every part written).
_OS_VERSION_PARTS = re.compile(r"^(?P<major>\d+)(\.(?P<minor>\d+))?(\..*)?$")
_KERNEL_VERSION_PARTS = re.compile(r"^(?P<major>\d+)(\.(?P<minor>\d+))?(\.(?P<revision>\d+))?(-.*)?$")


def nfd_system_labels(os_id: str, version_id: str, kernel: str) -> dict[str, str]:
    """NFD's labels for a node's OS release and kernel, with the version parts it splits out of them."""
    labels = {
        f"{NFD}system-os_release.ID": os_id,
        f"{NFD}system-os_release.VERSION_ID": version_id,
        f"{NFD}kernel-version.full": kernel,
    }
    if m := _OS_VERSION_PARTS.match(version_id):
        labels.update({f"{NFD}system-os_release.VERSION_ID.{k}": v for k, v in m.groupdict().items() if v})
    if m := _KERNEL_VERSION_PARTS.match(kernel):
        labels.update({f"{NFD}kernel-version.{k}": v or "" for k, v in m.groupdict().items()})
    return labels


def profile_of(node: Any) -> Profile | None:
    """The profile of a Node (a dict or a client model), from its ``e2e.gpu-operator/profile`` label."""
    if isinstance(node, dict):
        labels = (node.get("metadata") or {}).get("labels") or {}
    else:
        labels = node.metadata.labels or {}
    return PROFILES.get(labels.get(PROFILE_LABEL, ""))


def make_node(
    name: str, profile: str | Profile, os: str = "ubuntu22.04", kernel: str | None = None, *,
    runtime: str = "containerd", host_driver: str | None = None,
) -> dict[str, Any]:
    """A Node object (a dict for the API) for a fake node of that profile, without taints.

    ``runtime`` is ``containerd`` or ``crio`` (it shows in ``status.nodeInfo.containerRuntimeVersion``);
    ``host_driver`` (a version) marks a driver pre-installed on the host, for the node simulator.
    """
    if runtime not in CONTAINER_RUNTIMES:
        raise ValueError(f"runtime must be one of {sorted(CONTAINER_RUNTIMES)}, not {runtime!r}")
    prof = profile if isinstance(profile, Profile) else PROFILES[profile]
    osi = OS_RELEASES[os]
    kernel = kernel or osi.kernel
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        # The kubelet sets the beta twins at registration too; without them the node lifecycle controller adds
        # them later, a few nodes at a time (at 5,000 nodes, minutes of label changes mid-rollout).
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": prof.instance_type,
        **nfd_system_labels(osi.id, osi.version_id, kernel),
        PROFILE_LABEL: prof.name,
    }
    if prof.has_gpu:
        labels[prof.pci_label] = "true"
    resources = {"cpu": prof.cpu, "memory": prof.memory, "pods": "110", "ephemeral-storage": "500Gi"}
    labels.update(run_labels())  # against an existing cluster: the run's label, which its kwok manages
    annotations = {KWOK_ANNOTATION: "fake"}
    if host_driver:
        annotations[HOST_DRIVER_ANNOTATION] = host_driver
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": osi.os_image,
                "kernelVersion": kernel,
                "kubeletVersion": KUBELET_VERSION,
                "containerRuntimeVersion": CONTAINER_RUNTIMES[runtime],
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }


@dataclass(frozen=True)
class NodeSpec:
    profile: str
    count: int
    os: str = "ubuntu22.04"
    runtime: str = "containerd"
    host_driver: str | None = None


SPEC_FORMAT = "PROFILE[:COUNT[:OS[:RUNTIME][:hostdriver[=VERSION]]]]"


def parse_spec(spec: str) -> list[NodeSpec]:
    """Parse ``h100x8:2,a100x4:1,cpu:1``; optional parts pick the OS (``l4x1:2:rhel9.4``), the container runtime
    (``h100x8:2:ubuntu22.04:crio``) and a pre-installed driver (``l4x1:1:ubuntu22.04:containerd:hostdriver`` or
    ``hostdriver=570.172.08``)."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields = part.split(":")
        if len(fields) > 5 or fields[0] not in PROFILES:
            raise ValueError(f"bad node spec {part!r}: want {SPEC_FORMAT}; profiles {sorted(PROFILES)}")
        count = int(fields[1]) if len(fields) > 1 else 1
        os = fields[2] if len(fields) > 2 and fields[2] else "ubuntu22.04"
        if os not in OS_RELEASES:
            raise ValueError(f"bad node spec {part!r}: OS must be one of {sorted(OS_RELEASES)}")
        runtime, host_driver = "containerd", None
        for flag in fields[3:]:
            if flag in CONTAINER_RUNTIMES:
                runtime = flag
            elif flag == "hostdriver" or flag.startswith("hostdriver="):
                host_driver = flag.partition("=")[2] or DEFAULT_HOST_DRIVER
            else:
                raise ValueError(f"bad node spec {part!r}: {flag!r} is neither a runtime "
                                 f"({', '.join(sorted(CONTAINER_RUNTIMES))}) nor hostdriver[=VERSION]")
        out.append(NodeSpec(fields[0], count, os, runtime, host_driver))
    return out


def expand_spec(spec: str | Sequence[NodeSpec], prefix: str = "") -> list[dict[str, Any]]:
    """Node objects for a spec; names are ``<prefix><profile>-<i>`` counted per profile."""
    specs = parse_spec(spec) if isinstance(spec, str) else list(spec)
    seen: dict[str, int] = {}
    nodes = []
    for s in specs:
        for _ in range(s.count):
            i = seen.get(s.profile, 0)
            seen[s.profile] = i + 1
            nodes.append(make_node(f"{prefix}{s.profile}-{i}", s.profile, os=s.os, runtime=s.runtime,
                                   host_driver=s.host_driver))
    return nodes


def _kube(api: Any, pool_size: int) -> Kube:
    """A Kube with a connection pool of ``pool_size`` sharing the settings of ``api``.

    ``api`` is a Kube, an ApiClient, or a typed API object (CoreV1Api, ...) holding one.
    """
    base = api.api if isinstance(api, Kube) else api if isinstance(api, client.ApiClient) else api.api_client
    conf = copy.copy(base.configuration)
    conf.connection_pool_maxsize = max(pool_size, 4)
    return Kube(client.ApiClient(conf))


def _post(kube: Kube, path: str, obj: dict[str, Any]) -> bool:
    """Create an object, tried again on 429 and 5xx; False when it exists already (409)."""
    for attempt in range(5):
        try:
            kube.create(path, obj)
            return True
        except client.ApiException as e:
            if e.status == 409:
                return False
            if (e.status and e.status < 500 and e.status != 429) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    return True


def create_nodes(api: Any, nodes: Iterable[dict[str, Any]] | str, concurrency: int = 32) -> list[str]:
    """Create Node objects (or the nodes of a spec string like ``h100x8:2,cpu:1``) in parallel.

    Returns their names.  A node that already exists is left as it is.  The status given at creation
    (capacity, allocatable, nodeInfo) is kept by the API server; kwok then marks the node Ready.
    """
    node_list = expand_spec(nodes) if isinstance(nodes, str) else list(nodes)
    kube = _kube(api, concurrency)

    def create(node: dict[str, Any]) -> str:
        name = str(node["metadata"]["name"])
        if not _post(kube, "/api/v1/nodes", node) and run_id() and _labels(kube, name).get(RUN_LABEL) != run_id():
            raise RuntimeError(f"node {name} exists and was not made by this run")
        return name

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(create, node_list))
    finally:
        kube.close()


NFD_NAMESPACE = "node-feature-discovery"
NODE_FEATURE_LABEL = "nfd.node.kubernetes.io/node-name"
# A minimal NodeFeature CRD (NFD's group, version, names and scope; schema left open).
NODE_FEATURE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "nodefeatures.nfd.k8s-sigs.io"},
    "spec": {
        "group": "nfd.k8s-sigs.io",
        "names": {"kind": "NodeFeature", "listKind": "NodeFeatureList", "plural": "nodefeatures",
                  "singular": "nodefeature"},
        "scope": "Namespaced",
        "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}  # fmt: skip


def install_node_feature_api(admin: Any) -> None:
    """NFD's NodeFeature CRD and the namespace its workers write them in; `admin`: a gpu_operator.kube.Kube."""
    admin.apply(NODE_FEATURE_CRD)
    admin.wait_established(NODE_FEATURE_CRD["metadata"]["name"])
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NFD_NAMESPACE}})


def node_feature(node: str, device: str) -> dict[str, Any]:
    """What nfd-worker publishes for a node (named after it): its PCI devices with class, vendor and device ID, an
    NVIDIA GPU of that device ID and a Mellanox NIC."""
    return {
        "apiVersion": "nfd.k8s-sigs.io/v1alpha1",
        "kind": "NodeFeature",
        "metadata": {"name": node, "namespace": NFD_NAMESPACE, "labels": {NODE_FEATURE_LABEL: node}},
        "spec": {"features": {"instances": {"pci.device": {"elements": [
            {"attributes": {"class": "0302", "vendor": "10de", "device": device, "subsystem_vendor": "10de"}},
            {"attributes": {"class": "0200", "vendor": "15b3", "device": "101b"}},
        ]}}}},
    }  # fmt: skip


def create_node_features(api: Any, features: Iterable[dict[str, Any]], concurrency: int = 32) -> None:
    """Create NodeFeature objects (node_feature's) in parallel, as create_nodes does nodes; one that already exists
    is left as it is."""
    kube = _kube(api, concurrency)

    def create(obj: dict[str, Any]) -> None:
        _post(kube, f"/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/{obj['metadata']['namespace']}/nodefeatures", obj)

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(create, features))
    finally:
        kube.close()


def _labels(kube: Kube, name: str) -> dict[str, str]:
    node = kube.get_or_none(f"/api/v1/nodes/{name}")
    return dict((node or {}).get("metadata", {}).get("labels") or {})


def delete_nodes(api: Any, names: Iterable[str], concurrency: int = 16) -> None:
    """Delete nodes by name; against an existing cluster only those this run made (its label)."""
    kube = _kube(api, concurrency)

    def delete(name: str) -> None:
        if run_id() and _labels(kube, name).get(RUN_LABEL) != run_id():
            return
        kube.delete(f"/api/v1/nodes/{name}")

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(delete, names))
    finally:
        kube.close()


CUDA_RUNTIME_BY_DRIVER: list[tuple[int, tuple[int, int]]] = [
    (595, (13, 2)),
    (590, (13, 1)),
    (580, (13, 0)),
    (575, (12, 9)),
    (570, (12, 8)),
    (560, (12, 6)),
    (550, (12, 4)),
    (535, (12, 2)),
]


def cuda_runtime_for(driver_major: int) -> tuple[int, int]:
    for floor, runtime in CUDA_RUNTIME_BY_DRIVER:
        if driver_major >= floor:
            return runtime
    return (12, 0)


GFD_BASE_KEYS = (
    "nvidia.com/gpu.count",
    "nvidia.com/gpu.product",
    "nvidia.com/gpu.memory",
    "nvidia.com/gpu.family",
    "nvidia.com/gpu.compute.major",
    "nvidia.com/gpu.compute.minor",
    "nvidia.com/gpu.replicas",
    "nvidia.com/gpu.sharing-strategy",
    "nvidia.com/gpu.machine",
    "nvidia.com/mig.capable",
    "nvidia.com/mig.strategy",
    "nvidia.com/mps.capable",
    "nvidia.com/gfd.timestamp",
)
GFD_DRIVER_KEYS = (
    "nvidia.com/cuda.driver.major",
    "nvidia.com/cuda.driver.minor",
    "nvidia.com/cuda.driver.rev",
    "nvidia.com/cuda.runtime.major",
    "nvidia.com/cuda.runtime.minor",
)
GFD_LABEL_KEYS = GFD_BASE_KEYS + GFD_DRIVER_KEYS


def gfd_labels(
    profile: str | Profile, driver_version: str | None, mig_strategy: str = "single"
) -> dict[str, str]:
    """The labels GPU feature discovery publishes for a node of that profile.

    ``driver_version`` looks like ``595.91.07``; with None the cuda.* labels are left out (no driver loaded).
    ``nvidia.com/mig.strategy`` only under single or mixed (k8s-device-plugin internal/lm/mig-strategy.go).
    """
    prof = profile if isinstance(profile, Profile) else PROFILES[profile]
    if not prof.has_gpu:
        raise ValueError(f"profile {prof.name} has no GPU")
    labels = {
        "nvidia.com/gpu.count": str(prof.gpu_count),
        "nvidia.com/gpu.product": prof.product,
        "nvidia.com/gpu.memory": str(prof.memory_mib),
        "nvidia.com/gpu.family": prof.family,
        "nvidia.com/gpu.compute.major": str(prof.compute[0]),
        "nvidia.com/gpu.compute.minor": str(prof.compute[1]),
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.machine": prof.machine,
        "nvidia.com/mig.capable": "true" if prof.mig_capable else "false",
        "nvidia.com/mps.capable": "false",
        "nvidia.com/gfd.timestamp": str(int(time.time())),
    }
    if mig_strategy != "none":
        labels["nvidia.com/mig.strategy"] = mig_strategy
    if driver_version:
        parts = driver_version.split(".")
        major = int(parts[0])
        runtime = cuda_runtime_for(major)
        labels.update({
            "nvidia.com/cuda.driver.major": parts[0],
            "nvidia.com/cuda.driver.minor": parts[1] if len(parts) > 1 else "",
            "nvidia.com/cuda.driver.rev": parts[2] if len(parts) > 2 else "",
            "nvidia.com/cuda.runtime.major": str(runtime[0]),
            "nvidia.com/cuda.runtime.minor": str(runtime[1]),
        })
    return labels
