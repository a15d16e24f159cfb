"""Capacity planning (pure): how many copies of a pod fit on the cluster now, where, and how many more nodes of
a given profile the rest needs (seed Exercise 3). Honours resource requests (GPUs, CPU, memory, pods), node
selectors and required node affinity, taints, cordons, required pod anti-affinity on the hostname topology (the
pod's and the running pods'), host ports and the device plugin's refusal of a container asking more than one shared
GPU (failRequestsGreaterThanOne, read from the node's sharing config). Required pod affinity, DoNotSchedule
topology spread constraints and devices claimed through Dynamic Resource Allocation are not modelled: the plan says
so."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from . import sharing
from .doctor.common import REPLICAS_LABEL, most_shared_gpus, mps_refuses, shared_replicas
from .doctor.sched import (
    ADMISSION_TOLERATIONS,
    GPU,
    NODE_STATE_TAINTS,
    NodeView,
    anti_affinity_blocks,
    anti_affinity_terms,
    cordoned,
    fmt,
    namespaces_unread,
    pod_level_resource,
    pod_requests,
    quantity,
    repelled_by,
    repelling_terms,
    selector_ok,
    self_anti_affinity,
    untolerated_taints,
    valid_quantity,
)
from .upgrade.model import belongs_to_node

HOSTNAME_LABEL = "kubernetes.io/hostname"  # the kubelet sets it to the node's own name
ANY_IP = "0.0.0.0"


@dataclass
class NodeFit:
    node: str
    fits: int
    why: str  # what limits it (or why the node is excluded)


@dataclass
class CapacityPlan:
    count: int
    requests: dict[str, Decimal]
    fits: list[NodeFit]  # every node, most copies first
    profile: str
    per_new_node: int
    profile_why: str
    notes: list[str] = field(default_factory=list)

    @property
    def fits_now(self) -> int:
        return min(self.count, sum(f.fits for f in self.fits))

    @property
    def remaining(self) -> int:
        return self.count - self.fits_now

    @property
    def extra_nodes(self) -> int | None:
        """Nodes of the profile to add for the rest (None: the profile cannot take one)."""
        if self.remaining == 0:
            return 0
        return math.ceil(self.remaining / self.per_new_node) if self.per_new_node else None

    def placements(self) -> list[tuple[str, int]]:
        """Copies per node, filling the nodes that take most first, up to the count."""
        left, out = self.count, []
        for f in self.fits:
            if left <= 0 or f.fits <= 0:
                continue
            n = min(f.fits, left)
            out.append((f.node, n))
            left -= n
        return out


@dataclass
class PluginConfigs:
    """The device plugin's sharing configs: the active ClusterPolicy's devicePlugin.config ConfigMap, each key
    parsed as the plugin reads it (None: one it refuses)."""

    name: str = ""  # "": none set, so the plugin runs without one (nothing shared)
    default: str = ""
    configs: dict[str, sharing.SharingConfig | None] = field(default_factory=dict)
    unread: str = ""  # why they are not known ("": they are)
    mig_strategy: str | None = None  # the policy's mig.strategy: the plugin's MIG_STRATEGY env (None: unset)

    @classmethod
    def of_data(cls, name: str, default: str, data: dict[str, str],
                mig_strategy: str | None = None) -> PluginConfigs:  # fmt: skip
        configs: dict[str, sharing.SharingConfig | None] = {}
        for key, text in data.items():
            try:
                configs[key] = sharing.parse(text)
            except sharing.ConfigError:
                configs[key] = None
        return cls(name, default, configs, mig_strategy=mig_strategy)

    def of(self, labels: dict[str, str]) -> tuple[str, sharing.SharingConfig | None]:
        """(key, config) a node with these labels loads, selected as config-manager does: its
        nvidia.com/device-plugin.config label, else the default; neither, or no ConfigMap: the empty config (the
        operator's fallback). None: not known (not read, or a key the ConfigMap lacks or the plugin refuses, where
        config-manager or the plugin fails and the running plugin keeps what it had)."""
        if self.unread:
            return "", None
        key = labels.get(sharing.NODE_LABEL) or self.default
        if not self.name or not key:
            return key, sharing.EMPTY
        return key, self.configs.get(key)


NOT_READ = PluginConfigs(unread="not read")


def plugin_refuses(pod: dict[str, Any], node: NodeView, configs: PluginConfigs) -> str:
    """Why the node's device plugin refuses the pod at Allocate, so the kubelet fails it ("": it does not): a
    container asking more than one replica of a shared resource where failRequestsGreaterThanOne is set
    (k8s-device-plugin internal/rm/rm.go ValidateRequest; MPS sets it unless its config says false). By the node's
    sharing config where known, else by GFD's labels (MPS refuses, time-slicing not)."""
    key, config = configs.of(node.labels)
    if config is None:
        container, gpus = most_shared_gpus(pod)
        if not mps_refuses(node.labels, gpus):
            return ""
        return (f"MPS-shared GPUs (replicas {node.labels.get(REPLICAS_LABEL)}): the device plugin refuses "
                f"container {container}'s request of {gpus}, more than 1")  # fmt: skip
    shared = config.replicated
    if config.strategy == sharing.NONE or not shared.fail_requests_greater_than_one:
        return ""
    container, gpus = most_shared_gpus(pod, [r.advertised for r in shared.resources])
    if gpus <= 1:
        return ""
    return (f"{config.strategy} with failRequestsGreaterThanOne (config {key} of ConfigMap {configs.name}): the "
            f"device plugin refuses container {container}'s request of {gpus}, more than 1")  # fmt: skip


def _overcommit_allowed(resource: str) -> bool:
    """Native resources but hugepages (component-helpers' IsOvercommitAllowed): not extended ones (nvidia.com/gpu)."""
    native = "/" not in resource or "kubernetes.io/" in resource
    return native and not resource.startswith("hugepages-")


# The API server's words for a value that is not a quantity (apimachinery resource.ErrFormatWrong).
_NOT_A_QUANTITY = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
EXTENDED_FIX = "set the limit alone, a whole number: the request defaults to it"


# Resource names without a "/" that a container may ask for (and hugepages-*), and the other standard ones, which
# the API server refuses there with another rule (Kubernetes pkg/apis/core/validation validateContainerResourceName).
_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_STANDARD_RESOURCES = ("pods", "services", "secrets", "configmaps", "resourcequotas", "replicationcontrollers",
                       "persistentvolumeclaims", "services.nodeports", "services.loadbalancers",
                       *(f"{k}.{r}" for k in ("requests", "limits") for r in _CONTAINER_RESOURCES))  # fmt: skip


def _name_errors(where: str, values: dict[Any, Any]) -> list[str]:
    """Resource names the API server refuses in a container: unqualified and not cpu, memory, ephemeral-storage or
    hugepages-* (`gpu` for nvidia.com/gpu; an unquoted YAML number, sent as the name "1")."""
    out = []
    for r in values:
        name = str(r).lower() if isinstance(r, bool) else str(r)
        if "/" in name or name in _CONTAINER_RESOURCES or name.startswith("hugepages-"):
            continue
        rule = ("must be a standard resource for containers" if name in _STANDARD_RESOURCES else
                "must be a standard resource type or fully qualified")  # fmt: skip
        out.append(f'{where}[{name}]: Invalid value: "{name}": {rule}')
    return out


def _quantity_errors(where: str, values: dict[str, Any]) -> list[str]:
    """Values the API server refuses as quantities: not one (read as 0 here), or negative. YAML null is 0."""
    out = []
    for r, v in values.items():
        if v is not None and not valid_quantity(str(v)):
            out.append(f'{where}[{r}]: Invalid value: "{v}": {_NOT_A_QUANTITY}')
        elif quantity(v) < 0:
            out.append(f'{where}[{r}]: Invalid value: "{v}": must be greater than or equal to 0')
    return out


def _pod_level_consistency(spec: dict[str, Any], limits: dict[str, Any], requests: dict[str, Any]) -> list[str]:
    """The API server's rule for pod-level resources against the containers': a pod-level request at least what the
    containers request together (pod_requests of the containers alone), a pod-level limit at least each container's
    limit."""
    out = []
    containers_only = pod_requests({"spec": {k: v for k, v in spec.items() if k not in ("resources", "overhead")}})
    for r, v in requests.items():
        total = containers_only.get(r, quantity(0))
        if quantity(v) < total:
            out.append(f'spec.resources.requests[{r}]: Invalid value: "{v}": must be greater than or equal to '
                       f"aggregate container requests of {total}")  # fmt: skip
    for r, v in limits.items():
        most = max((quantity(((c.get("resources") or {}).get("limits") or {}).get(r, 0))
                    for c in spec.get("containers") or []), default=quantity(0))  # fmt: skip
        if quantity(v) < most:
            out.append(f'spec.resources.limits[{r}]: Invalid value: "{v}": must be greater than or equal to '
                       f"container limits of {most}")  # fmt: skip
    return out


def api_errors(pod: dict[str, Any]) -> list[str]:
    """What the API server refuses a pod for in its resources: no container, a resource name it does not know, a
    value that is not a quantity or is negative, a native request (cpu, memory; of a container or of the pod's
    spec.resources) above its limit, and for extended
    resources (REFERENCE §12 entries 4, 5) a request without a limit or unequal to it, a quantity that is not a
    whole number (the last of these ends with EXTENDED_FIX)."""
    out, extended = [], []
    spec = pod.get("spec") or {}
    if not spec.get("containers"):
        out.append("spec.containers: Required value")
    overhead = spec.get("overhead") or {}
    out += _name_errors("spec.overhead", overhead) or _quantity_errors("spec.overhead", overhead)
    own = spec.get("resources") or {}  # pod-level resources
    limits, requests = own.get("limits") or {}, own.get("requests") or {}
    bad = _quantity_errors("spec.resources.limits", limits) + _quantity_errors("spec.resources.requests", requests)
    for kind, values in (("limits", limits), ("requests", requests)):
        for r in values:  # pod-level resources take cpu, memory and hugepages only (a GPU is per container)
            if not pod_level_resource(r):
                bad.append(f'spec.resources.{kind}[{r}]: Unsupported value: "{r}": supported values: "cpu", '
                           '"memory", "hugepages-<size>"')  # fmt: skip
    out += bad
    for r, v in () if bad else requests.items():
        if r in limits and quantity(v) > quantity(limits[r]):
            out.append(f'spec.resources.requests: Invalid value: "{v}": must be less than or equal to {r} limit of '
                       f"{limits[r]}")  # fmt: skip
    if not bad:
        out += _pod_level_consistency(spec, limits, requests)
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            res = c.get("resources") or {}
            limits, requests = res.get("limits") or {}, res.get("requests") or {}
            where = f"container {c.get('name')}: spec.{key}[{i}].resources"
            names = _name_errors(f"{where}.limits", limits) + _name_errors(f"{where}.requests", requests)
            bad = names or _quantity_errors(f"{where}.limits", limits) + _quantity_errors(f"{where}.requests", requests)
            if bad:  # the rules below read a bad quantity as 0, and a name as a string
                out += bad
                continue
            for kind, values in (("limits", limits), ("requests", requests)):
                for r, v in values.items():
                    if not _overcommit_allowed(r) and "/" in r and quantity(v) != quantity(v).to_integral_value():
                        extended.append(f'{where}.{kind}[{r}]: Invalid value: "{v}": must be an integer')
            for r, v in requests.items():
                if _overcommit_allowed(r):
                    if r in limits and quantity(v) > quantity(limits[r]):
                        out.append(f'{where}.requests: Invalid value: "{v}": must be less than or equal to {r} limit '
                                   f"of {limits[r]}")  # fmt: skip
                    continue
                if r not in limits:
                    extended.append(f"{where}.limits: Required value: Limit must be set for non overcommitable "
                                    f"resources ({r} is requested without a limit)")  # fmt: skip
                elif quantity(v) != quantity(limits[r]):
                    extended.append(f'{where}.requests: Invalid value: "{v}": must be equal to {r} limit of '
                                    f"{limits[r]}")  # fmt: skip
    if extended:
        extended[-1] += f" ({EXTENDED_FIX})"
    return out + extended


def pod_name(pod: dict[str, Any], source: str) -> str:
    """The pod's name; else its generateName, else the file it came from ("-": stdin)."""
    meta = pod.get("metadata") or {}
    if meta.get("name"):
        return str(meta["name"])
    generate = meta.get("generateName")
    if isinstance(generate, str) and generate:
        return f"(generateName {generate})"
    return f"(unnamed, from {'stdin' if source == '-' else source})"


def host_ports(pod: dict[str, Any]) -> set[tuple[str, str, int]]:
    """(hostIP, protocol, hostPort) of each port the pod's containers hold on their node, as kube-scheduler's NodePorts
    filter reads them (spec.containers); with hostNetwork a port without hostPort holds its containerPort (API
    defaulting: pkg/apis/core/v1/defaults.go defaultHostNetworkPorts)."""
    spec = pod.get("spec") or {}
    out = set()
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            port = p.get("hostPort") or (p.get("containerPort") if spec.get("hostNetwork") else 0)
            if port:
                out.add((p.get("hostIP") or ANY_IP, p.get("protocol") or "TCP", int(port)))
    return out


def port_conflict(ours: set[tuple[str, str, int]], theirs: set[tuple[str, str, int]]) -> str:
    """The first of our host ports that one of theirs conflicts with, as PORT/PROTOCOL ("": none): the same port and
    protocol on the same IP, or where either is 0.0.0.0 (every IP)."""
    for ip, protocol, port in sorted(ours):
        if any((p, proto) == (port, protocol) and ANY_IP in (ip, other) or (other, proto, p) == (ip, protocol, port)
               for other, proto, p in theirs):  # fmt: skip
            return f"{port}/{protocol}"
    return ""


def fit_on(pod: dict[str, Any], node: NodeView, requests: dict[str, Decimal], configs: PluginConfigs = NOT_READ
           ) -> NodeFit:  # fmt: skip
    """How many copies of the pod this node takes now, and what limits it. A pod naming its node (spec.nodeName)
    bypasses the scheduler: only that node's kubelet admits it, by its resources, selector and affinity, host ports
    and NoExecute taints (kubelet lifecycle predicate.go), not by cordon, NoSchedule taints or pod anti-affinity."""
    pinned = (pod.get("spec") or {}).get("nodeName")
    if pinned and pinned != node.name:
        return NodeFit(node.name, 0, f"excluded: the pod names node {pinned} (spec.nodeName)")
    if not selector_ok(pod, node.labels, node.name):
        return NodeFit(node.name, 0, "excluded: node selector or affinity does not match")
    taints = [t for t in untolerated_taints(pod, node) if not pinned or t.get("effect") == "NoExecute"]
    if taints:
        names = ", ".join(
            f"{t.get('key')}{'=' + t['value'] if t.get('value') else ''}:{t.get('effect')}" for t in taints
        )
        return NodeFit(node.name, 0, f"excluded: untolerated taint {names}")
    if not pinned and cordoned(pod, node):
        return NodeFit(node.name, 0, "excluded: cordoned (unschedulable)")
    if not pinned and anti_affinity_blocks(pod, node):
        return NodeFit(node.name, 0, "excluded: a pod there matches the pod's required anti-affinity")
    other = None if pinned else repelled_by(pod, node)
    if other is not None:
        meta = other.get("metadata") or {}
        return NodeFit(node.name, 0, f"excluded: pod {meta.get('namespace') or 'default'}/{meta.get('name')} there "
                       "repels it (its required anti-affinity matches the pod)")  # fmt: skip
    ports = host_ports(pod)
    for other in node.pods if ports else ():
        held = port_conflict(ports, host_ports(other))
        if held:
            meta = other.get("metadata") or {}
            return NodeFit(node.name, 0, f"excluded: pod {meta.get('namespace') or 'default'}/{meta.get('name')} "
                           f"there holds host port {held}")  # fmt: skip
    refused = plugin_refuses(pod, node, configs)
    if refused:
        return NodeFit(node.name, 0, f"excluded: {refused}")
    need = {**{k: v for k, v in requests.items() if v > 0}, "pods": Decimal(1)}
    best, limit = None, ""
    for resource, amount in sorted(need.items()):
        free = node.free(resource)
        n = max(int(free // amount), 0)
        if best is None or n < best:
            best, limit = n, f"{resource}: {fmt(max(free, Decimal(0)), resource)} free, {fmt(amount, resource)} each"
    fits = best or 0
    if fits and not pinned and self_anti_affinity(pod) and fits > 1:
        return NodeFit(node.name, 1, f"1 per node (required pod anti-affinity on kubernetes.io/hostname); {limit}")
    if ports and fits > 1:
        return NodeFit(node.name, 1, f"1 per node (host port {port_conflict(ports, ports)}); {limit}")
    return NodeFit(node.name, fits, f"limited by {limit}")


def empty_copy(view: NodeView, name: str | None = None) -> NodeView:
    """A new node like `view`, running only its DaemonSets' (and static) pods: another machine, so another hostname,
    and Ready, not cordoned, without the taints of `view`'s state (NODE_STATE_TAINTS)."""
    name = name or f"new-{view.name}"
    new = NodeView(
        name=name,
        labels={**view.labels, HOSTNAME_LABEL: name},
        taints=[copy.deepcopy(t) for t in view.taints if t.get("key") not in NODE_STATE_TAINTS],
        unschedulable=False,
        allocatable=dict(view.allocatable),
        capacity=dict(view.capacity),
    )
    for p in view.pods:
        if belongs_to_node(p):  # cluster-autoscaler puts these on its template node too
            new.add_pod(p)
    return new


@dataclass
class ProfileView(NodeView):
    """A --node-profile of KEY=VALUE parts; `gpus`: its GPUs where given as gpus=N (plan counts what the device
    plugin advertises for them under the sharing config the node loads)."""

    gpus: Decimal | None = None


def advertised(profile: ProfileView, configs: PluginConfigs) -> tuple[NodeView, str]:
    """The profile with the GPU resources the device plugin advertises for its `gpus` under its sharing config: each
    shared GPU as `replicas` devices, as nvidia.com/gpu.shared with renameByDefault (upstream internal/rm/device_map.go
    updateDeviceMapWithReplicas), none under MPS not sharing nvidia.com/gpu (the plugin does not start); and a note
    where that config is not known (the GPUs are then counted unshared), or refused at start (sharing.check: none)."""
    if profile.gpus is None:
        return profile, ""
    key, config = configs.of(profile.labels)
    if config is None:
        why = configs.unread or f"a key ConfigMap {configs.name} lacks, or one the device plugin refuses"
        gpus = fmt(profile.gpus)
        return profile, (f"the device plugin's sharing config a new node {profile.name} loads is not known ({why}): "
                         f"its {gpus} GPUs are counted as {gpus} {GPU}, unshared")  # fmt: skip
    allocatable = {k: v for k, v in profile.allocatable.items() if k != GPU}
    try:  # the MPS daemon's client limit by the profile's GFD compute labels (none: the limit from 7.5 on)
        sharing.check(config, configs.mig_strategy,
                      before_7_5=profile.name if sharing.labels_below_7_5(profile.labels) else "")
    except sharing.ConfigError as e:
        return (replace(profile, allocatable=allocatable, capacity=dict(allocatable)),
                f"the device plugin refuses config {key} of ConfigMap {configs.name} ({e}): a new node "
                f"{profile.name} advertises no GPUs")  # fmt: skip
    shared = config.sharing_of(GPU)
    if shared is not None:
        allocatable[shared.advertised] = profile.gpus * shared.replicas
    elif config.strategy != sharing.MPS:
        allocatable[GPU] = profile.gpus
    return replace(profile, allocatable=allocatable, capacity=dict(allocatable)), ""


def plan(pod: dict[str, Any], count: int, nodes: dict[str, NodeView], profile: NodeView | None = None,
         configs: PluginConfigs = NOT_READ) -> CapacityPlan:  # fmt: skip
    """Copies of `pod` that fit on `nodes` now, and the extra nodes like `profile` for the rest (the best-fitting
    existing node's shape when no profile is given); `configs`: the device plugin's sharing configs."""
    spec = pod.get("spec") or {}
    pod = {**pod, "spec": {**spec, "tolerations": [*(spec.get("tolerations") or []), *ADMISSION_TOLERATIONS]}}
    requests = pod_requests(pod)
    fits = sorted((fit_on(pod, v, requests, configs) for v in nodes.values()), key=lambda f: (-f.fits, f.node))
    notes = []
    unknown = sorted(v.name for v in [*nodes.values(), *([profile] if profile else [])]
                     if shared_replicas(v.labels) > 1 and configs.of(v.labels)[1] is None)  # fmt: skip
    if unknown:
        why = configs.unread or f"a key ConfigMap {configs.name} lacks, or one the device plugin refuses"
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        where = f"node{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:5])}{more}"
        notes.append(f"the device plugin's sharing config on {where} is not known ({why}): "
                     "a container asking more than one shared GPU is taken to be refused where GFD labels the node "
                     "MPS-shared (the plugin's default failRequestsGreaterThanOne), not where time-sliced")  # fmt: skip
    running = [p for v in nodes.values() for p in v.pods]
    theirs = [t for _, t in repelling_terms(pod, running)]
    if any(t.get("topologyKey") != HOSTNAME_LABEL for t in anti_affinity_terms(pod) + theirs):
        notes.append("anti-affinity terms on topologies other than kubernetes.io/hostname (the pod's, or a running "
                     "pod's that matches it) are not modelled")  # fmt: skip
    if namespaces_unread(pod, running):
        notes.append("a namespaceSelector other than {} in required anti-affinity (the pod's, or a running pod's that "
                     "matches it) is not modelled (namespaces' labels are not read): only its namespaces list counts, "
                     "so more may be counted than fit")  # fmt: skip
    if spec.get("resourceClaims") or any((c.get("resources") or {}).get("claims")
                                         for key in ("initContainers", "containers") for c in spec.get(key) or []):
        notes.append("resourceClaims (Dynamic Resource Allocation) are not modelled (ResourceClaims and ResourceSlices "
                     "are not read): copies are counted by the other requests, on nodes without the claimed devices "
                     "too, so fewer may fit than counted")  # fmt: skip
    if ((spec.get("affinity") or {}).get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution"):
        notes.append("required pod affinity is not modelled: the scheduler puts a copy only where a pod matching "
                     "each term runs in the same topology domain, so fewer may fit than counted")  # fmt: skip
    if any(c.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule"
           for c in spec.get("topologySpreadConstraints") or []):  # fmt: skip
        notes.append("topology spread constraints (whenUnsatisfiable: DoNotSchedule) are not modelled: the "
                     "scheduler keeps copies within maxSkew across domains, so fewer may fit than counted")  # fmt: skip
    preempting = _preemption(pod, requests, count, nodes, fits, configs)
    notes += [preempting] if preempting else []
    if isinstance(profile, ProfileView):
        profile, note = advertised(profile, configs)
        notes += [note] if note else []
    pinned = spec.get("nodeName")
    if pinned:
        notes.append(f"the pod names node {pinned} (spec.nodeName): the scheduler does not place it; only that node's "
                     "kubelet admits it, by resources, selector and affinity, host ports and NoExecute taints (not "
                     "cordon, NoSchedule taints or pod anti-affinity), and no new node can take it")  # fmt: skip
        if profile is None:
            return CapacityPlan(count, requests, fits, "(none)", 0, f"the pod names node {pinned} (spec.nodeName)",
                                notes)  # fmt: skip
    if profile is None:
        shapes = [empty_copy(v) for v in nodes.values()]
        scored = sorted(((fit_on(pod, s, requests, configs), s) for s in shapes),
                        key=lambda fs: (-fs[0].fits, fs[1].name))  # fmt: skip
        if scored and scored[0][0].fits:
            profile = scored[0][1]
            profile.name = f"like {profile.name[len('new-') :]}"
    if profile is None:
        return CapacityPlan(count, requests, fits, "(none)", 0, "no existing node could take a copy even empty; "
                            "give --node-profile", notes)  # fmt: skip
    per_new = fit_on(pod, profile, requests, configs)
    return CapacityPlan(count, requests, fits, profile.name, per_new.fits, per_new.why, notes)


def _preemption(pod: dict[str, Any], requests: dict[str, Decimal], count: int, nodes: dict[str, NodeView],
                fits: list[NodeFit], configs: PluginConfigs) -> str:  # fmt: skip
    """A note where copies are left over and the pod may preempt (seed §7.3): it has a priority (a class, or
    spec.priority) and, on a node it may use, more copies fit once the pods there that are not the node's own (lower
    than spec.priority where that is given) are gone: kube-scheduler preempts only on such a node (SelectVictimsOnNode).
    PriorityClasses are not read, so preemption is not modelled ("": no note)."""
    spec = pod.get("spec") or {}
    own, name = spec.get("priority"), spec.get("priorityClassName")
    own = own if isinstance(own, int) and not isinstance(own, bool) else None  # the API server takes an int32 only
    if sum(f.fits for f in fits) >= count or spec.get("preemptionPolicy") == "Never" or own is None and not name:
        return ""
    usable = {f.node: f.fits for f in fits if not f.why.startswith("excluded")}
    lower: list[dict[str, Any]] = []
    for v in nodes.values():
        victims = [p for p in v.pods if v.name in usable and not belongs_to_node(p)
                   and (own is None or int((p.get("spec") or {}).get("priority") or 0) < own)]  # fmt: skip
        if not victims:
            continue
        used = dict(v.used)
        for victim in victims:
            for k, q in [*pod_requests(victim).items(), ("pods", Decimal(1))]:
                used[k] = used.get(k, Decimal(0)) - q
        rest = [p for p in v.pods if all(p is not victim for victim in victims)]
        if fit_on(pod, replace(v, used=used, pods=rest), requests, configs).fits > usable[v.name]:
            lower += victims
    if not lower:
        return ""
    by = f"priority {own}" if own is not None else f"priorityClassName {name}"
    return (f"the pod has {by}: the scheduler may preempt pods of lower priority for it ({len(lower)} "
            f"pod{'s' if len(lower) > 1 else ''} {'run' if len(lower) > 1 else 'runs'} on the nodes it may use), "
            "which is not modelled (PriorityClasses are not read), so more may fit than counted")  # fmt: skip


# A profile's resource keys: these, an extended resource (a name with "/": nvidia.com/mig-1g.10gb) or hugepages-*.
_PROFILE_RESOURCES = ("gpus", "gpu", "cpu", "memory", "pods", "ephemeral-storage")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _whole(key: str) -> bool:
    """A profile resource a node has whole numbers of: GPUs, pods and extended resources (the API server refuses a
    node's fraction of them: IsIntegerResourceName)."""
    return key in ("gpus", "gpu", "pods") or "/" in key and not _overcommit_allowed(key)


def parse_profile(text: str, nodes: dict[str, NodeView]) -> NodeView:
    """`NODE` (a node like an existing one, running its DaemonSets' pods) or
    `gpus=8,cpu=96,memory=2048Gi,label.KEY=VALUE,taint.KEY=VALUE:EFFECT`; ValueError naming a part that is neither."""
    if text in nodes:
        return empty_copy(nodes[text], f"like {text}")
    name = f"profile {text}"  # the labels every kubelet sets (label.KEY parts override them)
    labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", HOSTNAME_LABEL: name}
    view = ProfileView(name=name, labels=labels, taints=[], unschedulable=False, allocatable={}, capacity={})
    view.allocatable["pods"] = Decimal(110)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--node-profile: {part!r} is neither a node name nor KEY=VALUE")
        if key.startswith("label."):
            view.labels[key[len("label.") :]] = value
        elif key.startswith("taint."):
            val, _, effect = value.partition(":")
            if effect and effect not in _EFFECTS:
                raise ValueError(f"--node-profile: {part!r}: the taint's effect must be one of {', '.join(_EFFECTS)}")
            view.taints.append({"key": key[len("taint.") :], "value": val, "effect": effect or "NoSchedule"})
        elif key not in _PROFILE_RESOURCES and "/" not in key and not key.startswith("hugepages-"):
            raise ValueError(f"--node-profile: {key!r} is not a resource ({', '.join(_PROFILE_RESOURCES)}, a name "
                             "with a / such as nvidia.com/mig-1g.10gb), label.KEY or taint.KEY")  # fmt: skip
        elif not valid_quantity(value) or quantity(value) < 0:
            raise ValueError(f"--node-profile: {part!r}: {value!r} is not a quantity (such as 8, 500m, 2048Gi)")
        elif _whole(key) and quantity(value) != quantity(value).to_integral_value():
            raise ValueError(f"--node-profile: {part!r}: {value!r} is not a whole number ({key} come whole)")
        else:
            view.allocatable[{"gpus": GPU, "gpu": GPU}.get(key, key)] = quantity(value)
            if key in ("gpus", "gpu", GPU):  # nvidia.com/gpu=N: the advertised count itself
                view.gpus = quantity(value) if key != GPU else None
    view.capacity = dict(view.allocatable)
    return view


def render(result: CapacityPlan, pod_name: str) -> str:
    wants = ", ".join(f"{k} {fmt(v, k)}" for k, v in sorted(result.requests.items()) if v > 0)
    lines = [f"pod {pod_name} × {result.count}: each requests {wants or 'nothing'}", "", "nodes now:"]
    for f in result.fits:
        lines.append(f"  {f.node}: {f.fits} ({f.why})")
    lines.append("")
    placed = result.placements()
    lines.append(f"fit now: {result.fits_now} of {result.count}"
                 + (f" ({', '.join(f'{n} on {node}' for node, n in placed)})" if placed else ""))  # fmt: skip
    if result.remaining:
        lines.append(f"left over: {result.remaining}")
        lines.append(f"a new node {result.profile} takes {result.per_new_node} ({result.profile_why})")
        if result.extra_nodes is None:
            lines.append(f"extra nodes needed: impossible with a new node {result.profile}")
        else:
            lines.append(f"extra nodes needed: {result.extra_nodes} × {result.profile}")
    else:
        lines.append("extra nodes needed: 0")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
