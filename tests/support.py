"""Shared builders for the unit tests: Node objects as NFD labels them, and the render pipeline."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpu_operator import nvidiadriver
from gpu_operator.api import ClusterPolicySpec, parse_spec
from gpu_operator.kube import ApiError
from gpu_operator.nodes import NodeFacts, apply_patch
from gpu_operator.render import StatePlan, driver_node_patches, driver_routing, node_patches, plan, relabelled
from gpu_operator.states import RenderContext

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "manifests" / "samples"
SAMPLE_POLICY = SAMPLES / "clusterpolicy-default.yaml"
SAMPLE_NODES = SAMPLES / "nodes-mixed-os.yaml"

NAMESPACE = "gpu-operator"
OWNER = {
    "apiVersion": "nvidia.com/v1",
    "kind": "ClusterPolicy",
    "name": "cluster-policy",
    "uid": "11111111-2222-3333-4444-555555555555",
}
MONITORING = "monitoring.coreos.com"

PCI = "feature.node.kubernetes.io/pci-10de.present"
OS_ID = "feature.node.kubernetes.io/system-os_release.ID"
OS_VERSION = "feature.node.kubernetes.io/system-os_release.VERSION_ID"
KERNEL = "feature.node.kubernetes.io/kernel-version.full"


def load_policy(path: Path = SAMPLE_POLICY) -> dict[str, Any]:
    """The ClusterPolicy document of a sample file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return next(d for d in docs if d.get("kind") == "ClusterPolicy")


def policy_object(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sample ClusterPolicy as the API server hands it over (uid, generation, ...), with `spec` when given."""
    policy = load_policy()
    policy["metadata"].update(uid="u1", generation=1, resourceVersion="1", creationTimestamp="2026-01-01T00:00:00Z")
    if spec is not None:
        policy["spec"] = spec
    return policy


class EchoKube:
    """A stand-in for a pass without an API server: takes every call and answers with what it was sent; keeps the
    status writes, by (kind, name) and in order (`written`)."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.written: list[dict[str, Any]] = []

    def writes(self) -> int:
        return 0

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        if k.get("sub") == "status":
            self.statuses[(kind, name)] = patch["status"]
            self.written.append(patch["status"])
        return patch

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: a[0] if a and isinstance(a[0], dict) else {}


class PostingKube(EchoKube):
    """EchoKube that keeps the reasons of the Events posted (`posted`, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.posted: list[str] = []

    def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.posted.append(obj["reason"])
        return obj


class RecordingKube(EchoKube):
    """EchoKube that also records its applies, merge patches and deletes in the order sent (`calls`: verb and
    the object, (kind, name, patch) or (kind, namespace, name)); a Node patch answers with a Node."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()  # applies come from the applier's threads

    def _note(self, verb: str, what: Any) -> None:
        with self._lock:
            self.calls.append((verb, copy.deepcopy(what)))

    def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self._note("apply", obj)
        return obj

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        self._note("merge_patch", (kind, name, patch))
        return node(name) if kind == "Node" else super().merge_patch(kind, name, patch, *a, **k)

    def delete(self, kind: str, name: str, namespace: str | None = None, *_: Any, **__: Any) -> bool:
        self._note("delete", (kind, namespace or "", name))
        return True


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json (a list replaces the
    whole list)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class ServerKube(RecordingKube):
    """RecordingKube that holds some objects as the API server does (`objects`, by (kind, name)): a merge patch to
    one is merged into it and gives it a new resourceVersion; one that names another resourceVersion than the
    object's (a precondition) is refused with 409."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        super().__init__()
        self.objects = objects

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *a: Any, **k: Any) -> dict[str, Any]:
        live = self.objects.get((kind, name))
        if live is None:
            return super().merge_patch(kind, name, patch, *a, **k)
        version = live["metadata"].get("resourceVersion") or "0"
        if (patch.get("metadata") or {}).get("resourceVersion") not in (None, version):
            raise ApiError(409, '{"message": "the object has been modified"}', f"PATCH {kind} {name}", "Conflict")
        super().merge_patch(kind, name, patch, *a, **k)
        self.objects[(kind, name)] = merge(live, patch)
        self.objects[(kind, name)]["metadata"]["resourceVersion"] = str(int(version) + 1)
        return self.objects[(kind, name)]



def patch_node(held: dict[str, Any], patch: dict[str, Any], version: int) -> dict[str, Any]:
    """A Node merge patch as the API server applies it to `held` (its labels and annotations, a null removing a
    key), which then has resourceVersion `version`; the node as patched, a copy."""
    meta = held["metadata"]
    for part in ("labels", "annotations"):
        meta[part] = apply_patch(meta.get(part) or {}, patch["metadata"].get(part) or {})
    meta["resourceVersion"] = str(version)
    return copy.deepcopy(held)


def sample_spec() -> ClusterPolicySpec:
    return parse_spec(load_policy()["spec"])


def node(
    name: str,
    *,
    gpu: bool = True,
    os: tuple[str, str] = ("ubuntu", "22.04"),
    kernel: str = "5.15.0-122-generic",
    labels: dict[str, str] | None = None,
    pci_label: str = PCI,
    ready: bool = True,
    runtime: str = "containerd://1.7.22",
) -> dict[str, Any]:
    """A Node object the way NFD leaves it (plus any extra labels)."""
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        OS_ID: os[0],
        OS_VERSION: os[1],
        KERNEL: kernel,
    }
    if gpu:
        all_labels[pci_label] = "true"
    all_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"containerRuntimeVersion": runtime},
        },
    }


def facts(name: str = "n1", **kwargs: Any) -> NodeFacts:
    return NodeFacts.from_node(node(name, **kwargs))


def fixed_nodes() -> list[NodeFacts]:
    """The node set of the golden files: two OS pools, one MIG-capable node, one CPU node."""
    return [
        facts("gpu-h100-a", os=("ubuntu", "22.04"), labels={"nvidia.com/mig.capable": "true"}),
        facts("gpu-h100-b", os=("ubuntu", "22.04")),
        facts("gpu-a100-a", os=("ubuntu", "24.04"), kernel="6.8.0-45-generic"),
        facts("cpu-a", gpu=False),
    ]


# ConfigMaps the golden clusters hold in the operator namespace (name -> keys), for policies that reference them.
CONFIG_MAPS: dict[str, tuple[str, ...]] = {
    "repo-config": ("custom.list",),
    "cert-config": ("corp-ca.crt",),
    "kernel-module-params": ("nvidia.conf",),
    "licensing-config": ("client_configuration_token.tok", "gridd.conf"),
    # devicePlugin.config's (their data is not known here, so not checked: a missing one holds the device plugin)
    "device-plugin-config": ("time-slicing-4",),
    "time-slicing-config": ("any",),
    "mps-config": ("mps-4",),
    "sharing-config": ("any",),
    # dcgmExporter.config's (checked: its volume lists the key)
    "custom-metrics": ("dcgm-metrics.csv",),
    "custom-dcgm-metrics": ("dcgm-metrics.csv",),
}


def render_all(spec: ClusterPolicySpec, nodes: list[NodeFacts] | None = None, **facts: Any) -> list[StatePlan]:
    """The whole pipeline as the operator runs it: label the nodes, then plan on the relabelled nodes (`facts`:
    render_context's keywords)."""
    return plan(render_context(spec, nodes, **facts))


def render_context(
    spec: ClusterPolicySpec,
    nodes: list[NodeFacts] | None = None,
    *,
    namespace: str = NAMESPACE,
    api_groups: frozenset[str] = frozenset(),
    config_maps: dict[str, tuple[str, ...]] | None = None,
    nvidia_drivers: list[dict[str, Any]] | None = None,
    missing_secrets: frozenset[str] = frozenset(),
) -> RenderContext:
    """What render_all plans from: the nodes as the operator labels them, and the cluster's other facts."""
    nodes = fixed_nodes() if nodes is None else nodes
    patched = relabelled(nodes, node_patches(nodes, spec))
    drivers = [nvidiadriver.NVIDIADriver.from_object(o) for o in nvidia_drivers or []]
    routing = driver_routing(patched, spec, drivers)
    groups = routing.groups
    patched = relabelled(patched, driver_node_patches(patched, spec, routing))
    return RenderContext(
        spec=spec,
        namespace=namespace,
        nodes=tuple(patched),
        owner=OWNER,
        api_groups=api_groups,
        config_maps=CONFIG_MAPS if config_maps is None else config_maps,
        missing_secrets=missing_secrets,
        nvidia_drivers=groups,
    )


def objects(plans: list[StatePlan]) -> list[dict[str, Any]]:
    return [obj for p in plans for obj in p.objects]


def daemonsets(plans: list[StatePlan]) -> list[dict[str, Any]]:
    return [obj for obj in objects(plans) if obj["kind"] == "DaemonSet"]


def daemonset(plans: list[StatePlan], name: str) -> dict[str, Any]:
    found = [ds for ds in daemonsets(plans) if ds["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one DaemonSet {name}, found {[d['metadata']['name'] for d in daemonsets(plans)]}"
    return found[0]


def container(ds: dict[str, Any], name: str) -> dict[str, Any]:
    for c in ds["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{ds['metadata']['name']} has no container {name}")


# Golden scenarios: tests/scenarios/<name>/scenario.yaml (see the README there)

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    spec: dict[str, Any]
    nodes: list[NodeFacts] | None
    api_groups: frozenset[str]
    config_maps: dict[str, tuple[str, ...]] | None = None
    nvidia_drivers: list[dict[str, Any]] | None = None

    def render(self) -> list[StatePlan]:
        return plan(self.context())

    def context(self) -> RenderContext:
        spec = parse_spec(copy.deepcopy(self.spec))
        return render_context(
            spec, self.nodes, api_groups=self.api_groups, config_maps=self.config_maps,
            nvidia_drivers=self.nvidia_drivers,
        )  # fmt: skip


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """base with overlay merged in, mapping by mapping; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_scenario(name: str) -> Scenario:
    data = yaml.safe_load((SCENARIOS / name / "scenario.yaml").read_text()) or {}
    unknown = set(data) - {"description", "base", "overlay", "nodes", "api_groups", "config_maps", "nvidia_drivers"}
    assert not unknown, f"scenario {name}: unknown keys {sorted(unknown)}"
    base = {"default": dict(load_policy()["spec"]), "empty": {}}[data.get("base", "default")]
    nodes = None
    if "nodes" in data:
        nodes = []
        for n in data["nodes"]:
            n = dict(n)
            name_ = n.pop("name")
            if "os" in n:
                n["os"] = tuple(n["os"])
            nodes.append(facts(name_, **n))
    return Scenario(
        name=name,
        description=data["description"],
        spec=deep_merge(base, data.get("overlay") or {}),
        nodes=nodes,
        api_groups=frozenset(data.get("api_groups", [MONITORING])),
        config_maps={k: tuple(v) for k, v in data["config_maps"].items()} if "config_maps" in data else None,
        nvidia_drivers=data.get("nvidia_drivers"),
    )


def scenario_names() -> list[str]:
    return sorted(p.parent.name for p in SCENARIOS.glob("*/scenario.yaml"))
