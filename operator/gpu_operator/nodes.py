"""Node facts and node-label decisions (pure).

`NodeFacts` is the small projection of a Node the operator keeps in memory; `desired_labels` and
`desired_annotations` decide what to set or remove on it for a policy, as upstream v26.7's node-labelling
controller does (`controllers/nodelabeling_controller.go`, `controllers/state_manager.go`), except that a
user's opt-out value is never removed by a sweep. Upstream label names are kept verbatim.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, cached_property, lru_cache
from sys import intern
from typing import Any, Generic, TypeVar

from . import mig_layouts, wire
from .api import ClusterPolicySpec, is_label_value
from .gpu_identity import (
    GFD_COMPUTE_MAJOR,
    GFD_COMPUTE_MINOR,
    GFD_FAMILY,
    Identity,
    device_ids_from_labels,
    identify,
)

log = logging.getLogger("gpu_operator")

NFD_PREFIX = "feature.node.kubernetes.io/"
GPU_PCI_LABELS = (
    "feature.node.kubernetes.io/pci-10de.present",
    "feature.node.kubernetes.io/pci-0302_10de.present",
    "feature.node.kubernetes.io/pci-0300_10de.present",
)
OS_ID = "feature.node.kubernetes.io/system-os_release.ID"
OS_VERSION = "feature.node.kubernetes.io/system-os_release.VERSION_ID"
KERNEL = "feature.node.kubernetes.io/kernel-version.full"

GPU_PRESENT = "nvidia.com/gpu.present"
DEPLOY_PREFIX = "nvidia.com/gpu.deploy."
DEPLOY_OPERANDS = "nvidia.com/gpu.deploy.operands"
WORKLOAD_CONFIG = "nvidia.com/gpu.workload.config"
INVALID_WORKLOAD_REASON = "InvalidWorkloadConfig"  # the Warning Event on a node whose workload config names none
INVALID_WORKLOAD_CONDITION = "InvalidWorkloadConfig"  # the ClusterPolicy's condition naming those nodes
MIG_CAPABLE = "nvidia.com/mig.capable"
MIG_CONFIG = "nvidia.com/mig.config"
MIG_CONFIG_STATE = "nvidia.com/mig.config.state"
GPU_PRODUCT = "nvidia.com/gpu.product"
VGPU_HOST_DRIVER = "nvidia.com/vgpu.host-driver-version"
UPGRADE_ANNOTATION_PREFIX = "nvidia.com/gpu-driver-upgrade"
# Ours: the node's cordon is the MIG gate's (mig.py), set before it evicted GPU pods for a layout change.
MIG_CORDONED = "nvidia.com/gpu-operator.mig-cordoned"
# Read by k8s-driver-manager: "true" hands drain and GPU-pod eviction to the operator's upgrade controller.
UPGRADE_ENABLED_ANNOTATION = "nvidia.com/gpu-driver-upgrade-enabled"
MIG_PAUSED = "paused-for-mig-change"  # a MIG change's pause, and the MIG gate's hold of mig-manager (mig.PAUSED)
PAUSED_VALUES = ("paused-for-driver-upgrade", MIG_PAUSED)
# gpu.deploy.driver on a node whose GPU the policy's driver version cannot run (see compat.py): ours, so it
# goes back to "true" once the version fits, and the driver DaemonSets (which select "true") skip the node.
DRIVER_REFUSED = "refused-by-version-matrix"
# Ours: the kernel whose precompiled driver pool a node is in (the precompiled driver DaemonSets select it). It
# follows the node's kernel label, except on a node running a driver under autoUpgrade: there the upgrade state
# machine moves it, so the node is cordoned and drained before its driver pod changes pools.
DRIVER_KERNEL = "nvidia.com/gpu-operator.driver-kernel"

CONTAINER_OPERANDS = (
    "driver",
    "gpu-feature-discovery",
    "container-toolkit",
    "device-plugin",
    "dcgm",
    "dcgm-exporter",
    "node-status-exporter",
    "operator-validator",
)
# "client": the node selector of GPU-client DaemonSets that k8s-driver-manager pauses around a driver reload.
WORKLOAD_OPERANDS: dict[str, tuple[str, ...]] = {
    "container": CONTAINER_OPERANDS + ("client",),
    "vm-passthrough": (
        "sandbox-device-plugin", "sandbox-validator", "vfio-manager", "kata-manager", "cc-manager", "client",
    ),
    "vm-vgpu": (
        "sandbox-device-plugin", "vgpu-manager", "vgpu-device-manager", "sandbox-validator", "cc-manager", "client",
    ),
}  # fmt: skip
MIG_MANAGER = "mig-manager"
KATA_DEVICE_PLUGIN = "kata-sandbox-device-plugin"  # replaces sandbox-device-plugin on vm-passthrough in kata mode
# Upstream's DRA (GPUCluster) stack, swept from ClusterPolicy nodes (dra-driver only from nodes without GPUs).
DRA_OPERANDS = ("dra-driver", "dra-validator", "dcgm-dra", "dcgm-exporter-dra")
ALL_OPERANDS = tuple(
    dict.fromkeys([*(op for ops in WORKLOAD_OPERANDS.values() for op in ops), MIG_MANAGER, KATA_DEVICE_PLUGIN])
)
# Upstream's fallback when GFD's mig.capable is absent: a substring of the product name, case-insensitive.
MIG_PRODUCT_HINTS = ("h100", "a100", "a30")


def deploy_label(operand: str) -> str:
    return DEPLOY_PREFIX + operand


# Of NFD's labels only these matter to the operator; the in-memory projection drops NFD's others (but those an
# NVIDIADriver selects on: keep_labels).
_NFD_KEYS = frozenset(GPU_PCI_LABELS + (OS_ID, OS_VERSION, KERNEL))


Taint = tuple[str, str, str]  # key, value, effect


def kept_label(key: str) -> bool:
    """Whether NodeFacts keeps the node's label with this key (a selector on another key cannot be judged)."""
    return _relevant(key) or key in _kept


# NFD labels the operator does not read itself but an NVIDIADriver's nodeSelector or required nodeAffinity names
# (nvidiadriver.selector_keys): kept as well, once keep_labels is told of them, until the process ends.
_kept: frozenset[str] = frozenset()
_kept_lock = threading.Lock()


def keep_labels(keys: Iterable[str]) -> bool:
    """Keep the labels with these keys in NodeFacts made from now on as well. Whether one was not kept before:
    facts made until now lack it, and must be made again from their Nodes before they are routed."""
    global _kept
    with _kept_lock:
        new = {k for k in keys if not _relevant(k)} - _kept
        if new:
            _kept = _kept | new
    return bool(new)


def kept_labels() -> frozenset[str]:
    """The label keys keep_labels was told of (those NodeFacts keep besides what _relevant says)."""
    return _kept


@lru_cache(maxsize=4096)  # every node event asks it of each of ~60 label keys, the same few dozen on every node
def _relevant(key: str) -> bool:
    # NFD's NVIDIA PCI labels too: with device IDs in them they identify the GPU before any driver runs.
    # Labels outside NFD's are kept as well: an NVIDIADriver's nodeSelector may name any of them.
    return (
        key.startswith("nvidia.com/")
        or key in _NFD_KEYS
        or (key.startswith(NFD_PREFIX + "pci-") and "10de" in key)
        or not key.startswith(NFD_PREFIX)
    )


@dataclass(frozen=True)
class NodeFacts:
    """What the operator needs to know about one node."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # only nvidia.com/gpu-driver-upgrade*, MIG_CORDONED
    unschedulable: bool = False
    ready: bool = True
    runtime: str = ""
    has_nfd: bool = False
    pci_devices: tuple[str, ...] = ()  # NVIDIA PCI device IDs from the node's NFD NodeFeature object
    taints: tuple[Taint, ...] = ()  # those that keep pods off (NoSchedule, NoExecute)
    # The Node's resourceVersion this was read from (not part of what the node is: equal facts stay equal).
    resource_version: int = field(default=0, compare=False)

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> NodeFacts:
        """The facts of a parsed Node (a listing's, a test's)."""
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        return cls._of(
            meta.get("name", ""),
            meta.get("resourceVersion"),
            meta.get("labels") or {},
            meta.get("annotations") or {},
            unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []),
            runtime=(status.get("nodeInfo") or {}).get("containerRuntimeVersion") or "",
            taints=[
                (t.get("key") or "", t.get("value") or "", t.get("effect") or "")
                for t in (node.get("spec") or {}).get("taints") or []
            ],
        )

    @classmethod
    def from_wire(cls, node: wire.Node) -> NodeFacts:
        """The facts of a Node decoded into wire.py's Structs (the node watch's): the same as `from_node`'s."""
        meta = node.metadata
        status = node.status if isinstance(node.status, wire.NodeStatus) else _NO_STATUS
        info = status.nodeInfo
        return cls._of(
            meta.name,
            meta.resourceVersion,
            meta.labels or {},
            meta.annotations or {},
            unschedulable=bool(node.spec is not None and node.spec.unschedulable),
            ready=any(c.type == "Ready" and c.status == "True" for c in status.conditions or ()),
            runtime=(info.containerRuntimeVersion if info is not None else None) or "",
            taints=[(t.key, t.value or "", t.effect) for t in (node.spec.taints if node.spec else None) or ()],
        )

    @classmethod
    def _of(
        cls,
        name: str,
        resource_version: str | None,
        labels: dict[str, str],
        annotations: dict[str, str],
        *,
        unschedulable: bool,
        ready: bool,
        runtime: str,
        taints: Iterable[Taint] = (),
    ) -> NodeFacts:
        # Label keys and values are interned: 1,000 nodes carry the same few dozen of each.
        kept = _kept
        return cls(
            name=name,
            labels={intern(k): intern(v) for k, v in labels.items() if _relevant(k) or k in kept},
            annotations={
                intern(k): intern(v)
                for k, v in annotations.items()
                if k.startswith(UPGRADE_ANNOTATION_PREFIX) or k == MIG_CORDONED
            },
            unschedulable=unschedulable,
            ready=ready,
            runtime=intern(runtime.split(":", 1)[0]),
            has_nfd=any(k.startswith(NFD_PREFIX) for k in labels),  # over all labels, not only those kept
            taints=tuple((intern(k), intern(v), intern(e)) for k, v, e in taints if e in ("NoSchedule", "NoExecute")),
            resource_version=_int(resource_version),
        )

    def relabel(self, labels: dict[str, str], annotations: dict[str, str], changed: Iterable[str]) -> NodeFacts:
        """This node with other labels and annotations; the GPU facts worked out already are kept when none of
        the `changed` label keys is one they are read from."""
        out = replace(self, labels=labels, annotations=annotations)
        if not any(map(_gpu_fact_label, changed)):
            out._take_gpu_facts(self)
        return out

    def inherit(self, previous: NodeFacts) -> None:
        """Take the GPU facts `previous` (this node's last object, from the watch) worked out, when none of the
        labels or devices they are read from differ: a node's label events (GFD's, mig-manager's, ours) then
        cost no new GPU identification each."""
        if previous is self or previous.pci_devices != self.pci_devices:
            return
        old, new = previous.labels, self.labels
        if old != new:
            for k in old.keys() | new.keys():
                if _gpu_fact_label(k) and old.get(k) != new.get(k):
                    return
        self._take_gpu_facts(previous)

    def _take_gpu_facts(self, other: NodeFacts) -> None:
        for name in _GPU_FACTS:
            if name in other.__dict__ and name not in self.__dict__:
                self.__dict__[name] = other.__dict__[name]

    @cached_property
    def label_devices(self) -> tuple[str, ...]:
        """NVIDIA PCI device IDs in the node's NFD labels, read once per node object."""
        return device_ids_from_labels(self.labels)

    @cached_property
    def identity(self) -> Identity:
        """The node's GPUs (gpu_identity.identify), worked out once per node object."""
        return identify(self.labels, self.pci_devices, self.label_devices)

    @cached_property
    def is_mig_capable(self) -> bool:
        """mig_capable(), worked out once per node object."""
        return mig_capable(self.labels, self.pci_devices, self.label_devices)

    @cached_property
    def has_gpu(self) -> bool:
        """NFD's NVIDIA PCI label (upstream's three), or one with the device ID of a display controller (NFD's
        deviceLabelFields with `device` writes only that one: `pci-0302_10de_2330.present`)."""
        return any(self.labels.get(k) == "true" for k in GPU_PCI_LABELS) or bool(self.label_devices)

    @property
    def os_id(self) -> str:
        return self.labels.get(OS_ID, "")

    @property
    def os_version(self) -> str:
        return self.labels.get(OS_VERSION, "")

    @property
    def kernel(self) -> str:
        return self.labels.get(KERNEL, "")

    def deploys(self, operand: str) -> bool:
        return self.labels.get(deploy_label(operand)) == "true"


_NO_STATUS = wire.NodeStatus()

# The cached GPU facts of NodeFacts and the labels (besides NFD's) they are read from.
_GPU_FACTS = ("label_devices", "identity", "is_mig_capable", "has_gpu")
_GPU_FACT_LABELS = frozenset(
    {MIG_CAPABLE, GPU_PRODUCT, VGPU_HOST_DRIVER, GFD_FAMILY, GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR}
)


def _gpu_fact_label(key: str) -> bool:
    """Whether the cached GPU facts are read from this label (NFD's, or one of _GPU_FACT_LABELS)."""
    return key in _GPU_FACT_LABELS or key.startswith(NFD_PREFIX)


_T = TypeVar("_T")


def per_spec(node: NodeFacts, key: str, spec: ClusterPolicySpec,
             compute: Callable[[NodeFacts, ClusterPolicySpec], _T]) -> _T:  # fmt: skip
    """`compute(node, spec)`, worked out once per node object and spec. Kept on the object under `key`, not in a
    table by node name: the watch cache replaces a node's object when the node changes (nothing changes one in
    place), and calls for other nodes (one joining node, one NVIDIADriver's) leave it."""
    hit = node.__dict__.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    value = compute(node, spec)
    node.__dict__[key] = (spec, value)
    return value


class ByNode(Generic[_T]):
    """`f(node, key)` over many nodes, kept between calls: a call works `f` out again only for the nodes whose
    object is not the one the last call saw (the watch cache replaces a node's object when the node changes), for
    every node under another key (what else `f` reads: a spec, a flag; compared by identity). At 5,000 nodes a
    walk that calls a function per node is ~2 ms, an identity scan ~0.3 ms. Returns the results that are not None
    by node name, sorted by name, as a new dict. Calls take turns (a lock): one kept at module level is safe."""

    def __init__(self, f: Callable[[NodeFacts, Any], _T | None]) -> None:
        self.f = f
        self.key: Any = None
        self.seen: dict[str, NodeFacts] = {}
        self.values: dict[str, _T] = {}
        self.lock = threading.Lock()

    def over(self, nodes: Iterable[NodeFacts], key: Any) -> dict[str, _T]:
        with self.lock:
            try:
                return self._over(nodes, key)
            except BaseException:
                self.key, self.seen, self.values = None, {}, {}  # half updated: the next call starts over
                raise

    def _over(self, nodes: Iterable[NodeFacts], key: Any) -> dict[str, _T]:
        if key is not self.key:
            self.key, self.seen, self.values = key, {}, {}
        seen, values = self.seen, self.values
        nodes = nodes if isinstance(nodes, list | tuple) else list(nodes)
        unsorted = False
        for node in [n for n in nodes if seen.get(n.name) is not n]:
            seen[node.name] = node
            value = self.f(node, key)
            if value is None:
                values.pop(node.name, None)
            else:
                unsorted = unsorted or node.name not in values
                values[node.name] = value
        if len(seen) != len(nodes):  # nodes went (each one here is in `seen` now)
            here = {n.name for n in nodes}
            for name in [k for k in seen if k not in here]:
                del seen[name]
                values.pop(name, None)
        if unsorted:
            self.values = values = dict(sorted(values.items()))
        return dict(values)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def workload_of(node: NodeFacts, spec: ClusterPolicySpec) -> str:
    if not spec.sandbox_workloads.enabled:
        return "container"
    wanted = node.labels.get(WORKLOAD_CONFIG, spec.sandbox_workloads.default_workload)
    return wanted if wanted in WORKLOAD_OPERANDS else spec.sandbox_workloads.default_workload


def invalid_workload(node: NodeFacts, spec: ClusterPolicySpec) -> str | None:
    """The node's workload config label when it names no workload while sandbox workloads are on (the node then
    gets sandboxWorkloads.defaultWorkload, as upstream), else None. None on a node that gets no operand (no GPU,
    or gpu.deploy.operands=false): the label is not read there."""
    if not spec.sandbox_workloads.enabled or not node.has_gpu or node.labels.get(DEPLOY_OPERANDS) == "false":
        return None
    value = node.labels.get(WORKLOAD_CONFIG)
    return None if value is None or value in WORKLOAD_OPERANDS else value


def invalid_workload_message(value: str, spec: ClusterPolicySpec) -> str:
    """What the log line and the node's Warning Event say of an invalid workload config `value`."""
    return (f"invalid {WORKLOAD_CONFIG} {value!r} (not one of {', '.join(WORKLOAD_OPERANDS)}): the node gets "
            f"sandboxWorkloads.defaultWorkload, {spec.sandbox_workloads.default_workload}")  # fmt: skip


_NODES_NAMED = 20  # as the DriverRefused condition names its nodes


def invalid_workloads(nodes: Iterable[NodeFacts], spec: ClusterPolicySpec) -> dict[str, str]:
    """node -> its invalid workload config (invalid_workload), for the condition and the Events of one pass (no walk
    of the nodes without sandboxWorkloads.enabled)."""
    if not spec.sandbox_workloads.enabled:
        return {}
    return {n.name: v for n in nodes if (v := invalid_workload(n, spec)) is not None}


def _invalid_workloads_said(spec: ClusterPolicySpec) -> str:
    """What the InvalidWorkloadConfig condition says before naming the nodes (with their values)."""
    return (f"{WORKLOAD_CONFIG} names no workload (not one of {', '.join(WORKLOAD_OPERANDS)}) on these nodes, which "
            f"get sandboxWorkloads.defaultWorkload, {spec.sandbox_workloads.default_workload}: ")  # fmt: skip


def invalid_workload_condition(
    invalid: Mapping[str, str], spec: ClusterPolicySpec, generation: int | None, previous: list[dict[str, Any]],
    now: str,
) -> dict[str, Any] | None:
    """The InvalidWorkloadConfig condition (None without sandboxWorkloads.enabled, which leaves the label unread):
    True naming each node of `invalid` (invalid_workloads) with its value, the first 20 by name."""
    if not spec.sandbox_workloads.enabled:
        return None
    found = sorted(invalid.items())
    if found:
        more = len(found) - _NODES_NAMED
        value, reason = "True", "NoSuchWorkload"
        message = _invalid_workloads_said(spec) + ", ".join(f"{n} ({v!r})" for n, v in found[:_NODES_NAMED]) + (
            f" and {more} more" if more > 0 else "")  # fmt: skip
    else:
        value, reason, message = "False", "AllValid", f"every {WORKLOAD_CONFIG} set names a workload"
    before = next((c for c in previous if c.get("type") == INVALID_WORKLOAD_CONDITION), {})
    same = before.get("status") == value and before.get("lastTransitionTime")
    return {
        "type": INVALID_WORKLOAD_CONDITION,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if same else now,
        "observedGeneration": generation,
    }


def newly_invalid_workloads(
    invalid: Mapping[str, str], spec: ClusterPolicySpec, previous: list[dict[str, Any]]
) -> dict[str, str]:
    """Of `invalid` (invalid_workloads), those the previous InvalidWorkloadConfig condition did not name yet:
    what deserves a node's Warning Event. Read from the status, so a restarted operator or a new leader posts
    nothing new at steady state (but for nodes past the 20 the condition names)."""
    before = next((c for c in previous if c.get("type") == INVALID_WORKLOAD_CONDITION and c.get("status") == "True"),
                  {})  # fmt: skip
    said = str(before.get("message", ""))
    head = _invalid_workloads_said(spec)
    # Node names and label values hold no spaces, commas or quotes: each entry is whole between ", " and ", ".
    named = f", {said.removeprefix(head).rsplit(' and ', 1)[0]}, " if said.startswith(head) else ""
    return {n: v for n, v in invalid.items() if f", {n} ({v!r}), " not in named}


# Node -> the values logged: each change of a node labels it again. Dropped with the node (forget_node).
_INVALID_WORKLOADS_LOGGED: dict[str, set[str]] = {}


def _say_invalid_workload(node: NodeFacts, spec: ClusterPolicySpec) -> None:
    """Log the node's invalid workload config, once per node and value (upstream logs it on every labelling)."""
    value = invalid_workload(node, spec)
    if value is not None and value not in (logged := _INVALID_WORKLOADS_LOGGED.setdefault(node.name, set())):
        logged.add(value)
        log.warning("node %s: %s", node.name, invalid_workload_message(value, spec))


def forget_node(name: str) -> None:
    """Drop what this module keeps of a deleted node."""
    _INVALID_WORKLOADS_LOGGED.pop(name, None)


def sandbox_mode(spec: ClusterPolicySpec) -> str:
    """sandboxWorkloads.mode: kubevirt (the default) or kata."""
    mode = getattr(spec.sandbox_workloads, "mode", None)
    return "kata" if mode == "kata" else "kubevirt"


def state_operands() -> tuple[str, ...]:
    """Deploy labels of operand states beyond upstream's table (a state added here deploys on container nodes)."""
    from .states import all_states  # the states import this module

    states = all_states()
    memo = _STATE_OPERANDS
    if memo and memo[0] is states:  # by identity: hashing the states (frozen dataclasses) costs ~85 hash calls
        return memo[1]
    known = {*ALL_OPERANDS, *DRA_OPERANDS}
    found = tuple(dict.fromkeys(s.deploy_label for s in states if s.deploy_label and s.deploy_label not in known))
    _STATE_OPERANDS[:] = [states, found]
    return found


_STATE_OPERANDS: list[Any] = []  # [the states, their extra deploy labels]


def _every_operand() -> tuple[tuple[str, str], ...]:
    """(operand, its deploy label) for every operand a node may carry a deploy label of."""
    return _with_keys(state_operands())


@cache
def _with_keys(extra: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((op, deploy_label(op)) for op in (*ALL_OPERANDS, *DRA_OPERANDS, *extra))


def workload_operands(workload: str, mode: str) -> tuple[str, ...]:
    """The operands whose deploy labels a node of this workload config gets (mig-manager aside)."""
    ops = WORKLOAD_OPERANDS[workload]
    if workload == "container":
        return ops + state_operands()
    if workload == "vm-passthrough" and mode == "kata":
        return tuple(KATA_DEVICE_PLUGIN if op == "sandbox-device-plugin" else op for op in ops)
    return ops


def mig_capable(
    labels: dict[str, str], pci_devices: tuple[str, ...] = (), label_devices: tuple[str, ...] | None = None
) -> bool:
    """GFD's nvidia.com/mig.capable; without it, the product name; without GFD's labels (no driver ran yet), the
    PCI device IDs of NFD's labels (or of its NodeFeature object: `pci_devices`), by the default MIG table (beyond
    upstream: a joining node gets its MIG labels in its first patch). Never on a vGPU host."""
    if labels.get(VGPU_HOST_DRIVER):
        return False
    if MIG_CAPABLE in labels:
        return labels[MIG_CAPABLE] == "true"
    product = labels.get(GPU_PRODUCT, "").lower()
    if product:
        return any(hint in product for hint in MIG_PRODUCT_HINTS)
    if label_devices is None:
        label_devices = device_ids_from_labels(labels)
    return mig_layouts.gpu_of_devices(label_devices or pci_devices) is not None


# Deploy labels of operands we never deploy that k8s-driver-manager writes on each driver pod start ("" when unset,
# paused during a restart): its values go with the GPU, as ours do; any other value is someone else's.
MANAGER_ONLY = (DEPLOY_PREFIX + "nvsm",)


def written_by_us(value: str | None) -> bool:
    """A deploy-label value the operator or an operand manager wrote, as opposed to a user's opt-out.

    "" counts as ours: k8s-driver-manager writes it when it pauses an operand that was never deployed."""
    return value in ("true", "", DRIVER_REFUSED) or value in PAUSED_VALUES


def our_deploy_labels(labels: dict[str, str]) -> list[str]:
    """The deploy labels on a node with a value the operator or an operand manager wrote: those of the operands
    we know, and the MANAGER_ONLY ones only when "" or paused. They go with the GPU, and on uninstall."""
    return [key for _op, key in _every_operand() if written_by_us(labels.get(key))] + [
        key for key in MANAGER_ONLY if labels.get(key) == "" or labels.get(key) in PAUSED_VALUES
    ]


def desired_labels(node: NodeFacts, spec: ClusterPolicySpec, refused: bool = False) -> dict[str, str | None]:
    """The label patch for one node: key -> value to set, or None to remove. Empty when nothing changes.

    `refused`: the policy's driver cannot run on this node and it runs no driver pod of ours (compat.py)."""
    labels = node.labels
    want: dict[str, str | None] = {}
    present = labels.get(GPU_PRESENT)

    if not node.has_gpu:
        if present == "true":
            want[GPU_PRESENT] = "false"
        for key in our_deploy_labels(labels):
            want[key] = None
        _runtime_label(node, None, want)
        return want

    if present != "true":
        want[GPU_PRESENT] = "true"

    capable = node.is_mig_capable
    # dra-driver stays on a GPU node: upstream removes it only once no pod holds a gpu.nvidia.com claim there.
    if labels.get(DEPLOY_OPERANDS) == "false":
        for op, key in _every_operand():
            if op != "dra-driver" and key in labels:
                want[key] = None
        _runtime_label(node, None, want)
    else:
        workload = workload_of(node, spec)
        if labels.get(WORKLOAD_CONFIG, workload) != workload:  # an invalid value (or any, with sandbox off)
            _say_invalid_workload(node, spec)
        wanted = workload_operands(workload, sandbox_mode(spec))
        for op, key in _every_operand():
            if op == "driver" and op in wanted and (refused or labels.get(key) == DRIVER_REFUSED):
                current = labels.get(key)
                if refused and current in (None, "", "true"):
                    want[key] = DRIVER_REFUSED
                elif not refused and current == DRIVER_REFUSED:
                    want[key] = "true"
            elif op in wanted:
                if not labels.get(key):
                    want[key] = "true"
            elif op == MIG_MANAGER and workload == "container":
                # Never swept from a container node (upstream); set once the node is MIG-capable. Beyond upstream it
                # may be set before GFD runs, from NFD's device ID: GFD's `mig.capable=false` takes that back.
                if capable and key not in labels:
                    want[key] = "true"
                elif labels.get(MIG_CAPABLE) == "false" and labels.get(key) == "true":
                    want[key] = None
                elif labels.get(MIG_CAPABLE) == "false" and labels.get(key) == MIG_PAUSED and (
                        labels.get(MIG_CONFIG_STATE) != "pending"):
                    # The MIG gate's hold, once the MIG pass removed the wait's `pending` (the hold marks it ours).
                    want[key] = None
            elif op != "dra-driver" and labels.get(key) and written_by_us(labels.get(key)):
                # An empty value deploys nothing and stays: k8s-driver-manager writes one for every operand it
                # pauses that was not set, on every driver pod start; sweeping it cost a node write each time.
                want[key] = None
        # The toolkit pool this node belongs to (one toolkit DaemonSet per container runtime).
        toolkit = "container-toolkit" in wanted
        _runtime_label(node, runtime_of(node, spec.operator.default_runtime) if toolkit else None, want)

    default = spec.mig_manager.default_layout
    if spec.mig_manager.enabled and default and capable and not labels.get(MIG_CONFIG):
        want[MIG_CONFIG] = default
    return want


def desired_annotations(node: NodeFacts, spec: ClusterPolicySpec) -> dict[str, str | None]:
    """The annotation patch for one node, read after its labels are patched: key -> value, or None to remove.

    Only GPU nodes (gpu.present=true) are touched; with useNvidiaDriverCRD the NVIDIADriver resources own the
    annotation (nvidiadriver.node_patch), so nothing is written here. With sandboxWorkloads too: upstream removes it
    there while its NVIDIADrivers' upgrades still run (two drivers of one drain), and here both writers took turns,
    one node patch each pass; the NVIDIADriver upgrades are the operator's, so the annotation says so."""
    if node.labels.get(GPU_PRESENT) != "true":
        return {}
    if spec.driver.use_nvidia_driver_crd:
        return {}
    enabled = spec.driver.enabled and upgrades_orchestrated(spec)
    value = node.annotations.get(UPGRADE_ENABLED_ANNOTATION)
    if enabled:
        return {} if value == "true" else {UPGRADE_ENABLED_ANNOTATION: "true"}
    return {} if value is None else {UPGRADE_ENABLED_ANNOTATION: None}


def upgrades_orchestrated(spec: ClusterPolicySpec) -> bool:
    """Whether the operator orchestrates the upgrades of the ClusterPolicy's own driver (`spec`: the ClusterPolicy's;
    an NVIDIADriver's follow its upgradePolicy alone, as upstream): under autoUpgrade, and not with
    sandboxWorkloads.enabled, where upstream's UpgradeReconciler runs none and k8s-driver-manager evicts and drains
    by itself (the nodes keep no upgrade-enabled annotation: desired_annotations)."""
    return spec.driver.upgrade_policy.auto_upgrade and not spec.sandbox_workloads.enabled


def apply_patch(labels: dict[str, str], patch: dict[str, str | None]) -> dict[str, str]:
    out = dict(labels)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# A driver DaemonSet's pool, on it and its pods (its selector): pool names are label values, at most 63 characters.
POOL_LABEL = "nvidia.com/gpu-operator.driver-pool"
MAX_POOL_NAME = 63


@dataclass(frozen=True, order=True)
class Pool:
    """A driver node pool: GPU nodes of one OS (and, with precompiled drivers, one kernel)."""

    os_id: str
    os_version: str
    kernel: str = ""

    @property
    def os_tag(self) -> str:
        return f"{self.os_id}{self.os_version}"

    @property
    def name(self) -> str:
        """DNS-safe suffix used in object names and as a label value (at most 63 characters)."""
        parts = [self.os_tag] + ([self.kernel] if self.kernel else [])
        name = re.sub(r"[^a-z0-9.-]", "-", "-".join(parts).lower()).strip("-.")
        if len(name) <= MAX_POOL_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{name[: MAX_POOL_NAME - 9].rstrip('-.')}-{digest}"

    def node_selector(self) -> dict[str, str]:
        sel = {OS_ID: self.os_id, OS_VERSION: self.os_version}
        if self.kernel:
            sel[DRIVER_KERNEL if label_value_ok(self.kernel) else KERNEL] = self.kernel
        return sel


def label_value_ok(value: str) -> bool:
    """A label value that is not empty (api.is_label_value)."""
    return bool(value) and is_label_value(value)


def pool_kernel(node: NodeFacts) -> str:
    """The kernel of the precompiled pool a node is in: its driver-kernel label, else its kernel."""
    return node.labels.get(DRIVER_KERNEL) or node.kernel


def driver_kernel_patch(node: NodeFacts, precompiled: bool, hold: bool) -> dict[str, str | None]:
    """The driver-kernel label change for one node. `precompiled`: the node's driver is precompiled; `hold`:
    the node runs a driver pod under autoUpgrade (a changed kernel is then left to the upgrade planner)."""
    current = node.labels.get(DRIVER_KERNEL)
    want = node.kernel if precompiled and gets_driver(node) and label_value_ok(node.kernel) else None
    if current == want or (want is not None and current is not None and hold):
        return {}
    return {DRIVER_KERNEL: want}


_DEPLOY_DRIVER = deploy_label("driver")


def gets_driver(node: NodeFacts) -> bool:
    """A GPU node the operator's driver is for (a paused label keeps the node in its pool)."""
    value = node.labels.get(_DEPLOY_DRIVER)
    return node.has_gpu and (value == "true" or value in PAUSED_VALUES)


def driver_pools(nodes: list[NodeFacts], precompiled: bool) -> list[Pool]:
    """The pools of the nodes that get the operator's driver, in a stable order."""
    pools = {
        Pool(n.os_id, n.os_version, pool_kernel(n) if precompiled else "")
        for n in nodes
        if gets_driver(n) and n.os_id and n.os_version and (n.kernel or not precompiled)
    }
    return sorted(pools)


def unpooled(nodes: list[NodeFacts], precompiled: bool) -> list[str]:
    """Driver nodes that fit no pool because NFD did not label their OS (or kernel), by name."""
    return list(_UNPOOLED[bool(precompiled)].over(nodes, bool(precompiled)))


def _unpooled(node: NodeFacts, precompiled: bool) -> bool | None:
    return gets_driver(node) and not (node.os_id and node.os_version and (node.kernel or not precompiled)) or None


# Each pass's readiness notes ask over every node, under NVIDIADrivers for either way of pooling: one for each.
_UNPOOLED: dict[bool, ByNode[bool]] = {precompiled: ByNode(_unpooled) for precompiled in (False, True)}


# Container runtime pools (the toolkit renders one DaemonSet per runtime). The runtime comes from the node's
# status.nodeInfo.containerRuntimeVersion; the operator copies it into this label so DaemonSets can select on it.
RUNTIME_LABEL = "nvidia.com/gpu-operator.container-runtime"
# containerRuntimeVersion scheme -> the toolkit's runtime name (its RUNTIME values).
RUNTIMES = {"containerd": "containerd", "cri-o": "crio", "docker": "docker"}


def runtime_of(node: NodeFacts, fallback: str | None) -> str | None:
    """The toolkit runtime of a node: from what it reports; the fallback only when it reports nothing."""
    if not node.runtime:
        return fallback
    return RUNTIMES.get(node.runtime)


def _runtime_label(node: NodeFacts, runtime: str | None, want: dict[str, str | None]) -> None:
    current = node.labels.get(RUNTIME_LABEL)
    if runtime is None and current is not None:
        want[RUNTIME_LABEL] = None
    elif runtime is not None and current != runtime:
        want[RUNTIME_LABEL] = runtime


_DEPLOY_TOOLKIT = deploy_label("container-toolkit")


def gets_toolkit(node: NodeFacts) -> bool:
    """A GPU node the operator's container toolkit is for (a paused label keeps it in its pool)."""
    value = node.labels.get(_DEPLOY_TOOLKIT)
    return node.has_gpu and (value == "true" or value in PAUSED_VALUES)


def runtime_pools(nodes: list[NodeFacts]) -> list[str]:
    """The runtimes of the nodes that get the toolkit, sorted."""
    known = set(RUNTIMES.values())
    return sorted({n.labels[RUNTIME_LABEL] for n in nodes if gets_toolkit(n) and n.labels.get(RUNTIME_LABEL) in known})


def unknown_runtime(nodes: list[NodeFacts]) -> dict[str, str]:
    """Toolkit nodes whose container runtime is not supported: name -> the runtime they report."""
    return _UNKNOWN_RUNTIME.over(nodes, True)


def _unknown_runtime(node: NodeFacts, _: bool) -> str | None:
    return node.runtime if gets_toolkit(node) and node.labels.get(RUNTIME_LABEL) not in _KNOWN_RUNTIMES else None


_KNOWN_RUNTIMES = frozenset(RUNTIMES.values())
_UNKNOWN_RUNTIME: ByNode[str] = ByNode(_unknown_runtime)  # as _UNPOOLED
