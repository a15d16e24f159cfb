"""The operand-state building block: enabled rule, template variables, and rendering of its folder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel

from .. import contracts, images
from ..api import ClusterPolicySpec, ComponentSpec, ImageSpec, ValidatorSpec
from ..kinds import DEFAULT_OPERAND_KINDS, Kind, served
from ..nodes import NodeFacts

MANAGED_BY = "app.kubernetes.io/managed-by"
# Upstream's component label: set by the templates with upstream's values (the validator finds the driver by it).
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
# Our ownership marker: which operand state an object belongs to (readiness, pruning, upgrades select by it).
STATE_LABEL = "nvidia.com/gpu-operator.state"
OPERATOR_NAME = "gpu-operator"
HASH_ANNOTATION = "nvidia.com/last-applied-hash"
# libyaml's safe loader when PyYAML has it (ten times faster; rendering was mostly YAML parsing).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Rendered text -> its documents as JSON: a pass re-renders every state when any node changes, and most texts come
# out the same; JSON reads back several times faster than YAML is parsed. Bounded: cleared when full.
_PARSED: dict[str, str] = {}
_PARSED_MAX = 512


def _parse(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of `text` (fresh objects: callers change them)."""
    hit = _PARSED.get(text)
    if hit is not None:
        return list(json.loads(hit))
    docs = [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    try:
        dumped = json.dumps(docs)
    except (TypeError, ValueError):  # a value JSON cannot hold (a YAML date): not cached
        return docs
    if json.loads(dumped) == docs:  # and not where JSON would change it (a non-string key)
        _PARSED[text] = dumped
    return docs
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class RenderContext:
    """Everything rendering depends on: the policy, where we run, and the cluster facts."""

    spec: ClusterPolicySpec
    namespace: str
    nodes: tuple[NodeFacts, ...] = ()
    owner: dict[str, Any] | None = None  # the ClusterPolicy: apiVersion, kind, name, uid
    # API groups the cluster serves beyond the core ones (e.g. monitoring.coreos.com for ServiceMonitors).
    api_groups: frozenset[str] = frozenset()
    # ConfigMaps in the operator namespace: name -> their keys (the driver mounts referenced ones key by key).
    config_maps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Their data, where known (the device plugin's sharing config is validated before it rolls out).
    config_data: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Secrets the spec names (driver.secretEnv, licensingConfig.secretName) that were looked up in the operator
    # namespace and are not there; one not looked up (an offline render) is not checked.
    missing_secrets: frozenset[str] = frozenset()
    # With driver.useNvidiaDriverCRD: what the driver state renders per NVIDIADriver (nvidiadriver.DriverGroup).
    nvidia_drivers: tuple[Any, ...] = ()
    # Set by the driver state while it renders one of them.
    driver_group: Any = None
    # The operator's own --metrics-port: what its metrics Service (state-operator-metrics) targets.
    metrics_port: int = 8080
    # Driver DaemonSets of NVIDIADrivers that name no k8s-driver-manager image, as the cluster has them: name ->
    # (the manager image they run, their last-applied hash); the driver state keeps that image while nothing else
    # changes (states/driver.py, kept_manager_images).
    kept_manager_images: Mapping[str, tuple[str, str]] = field(default_factory=dict)


class RenderProblem(Exception):
    """A state that cannot be rendered as asked (e.g. a referenced ConfigMap is missing); the message says why."""


class PartialRender(RenderProblem):
    """A state rendered but for some owners' objects (one NVIDIADriver's spec it cannot render): `objects` is the
    rest, `held` each such owner's uid -> why; the objects those owners have stay as they are."""

    def __init__(self, objects: list[dict[str, Any]], held: dict[str, str]):
        super().__init__("; ".join(held.values()))
        self.objects = objects
        self.held = held


def owning_state(labels: Mapping[str, str] | None, states: frozenset[str]) -> str | None:
    """The operand state an object or pod belongs to: our state label, or (objects written before it
    existed) the component label when it names a state."""
    labels = labels or {}
    if labels.get(STATE_LABEL):
        return labels[STATE_LABEL]
    legacy = labels.get(COMPONENT)
    return legacy if legacy in states else None


def nvidia_runtime_class(ctx: RenderContext) -> str | None:
    """The runtimeClassName of pods that need the NVIDIA runtime (contracts.runtime_class_name)."""
    return contracts.runtime_class_name(ctx.spec, contracts.gpu_runtimes(ctx.nodes))


Vars = Callable[[RenderContext], dict[str, Any]]


@dataclass(frozen=True)
class OperandState:
    name: str  # template folder and status name, e.g. "state-device-plugin"
    order: int
    section: str | None = None  # ClusterPolicySpec attribute holding the component's settings
    component: str | None = None  # key in images.DEFAULTS
    container: str | None = None  # the main container that gets the section's env/args/resources
    # Other containers (init containers included) that get a sub-section's env/args/resources: (name, attribute).
    sub_containers: tuple[tuple[str, str], ...] = ()
    deploy_label: str | None = None  # node selector nvidia.com/gpu.deploy.<label>=true
    on_delete: bool = False  # DaemonSet always uses OnDelete (the driver)
    enabled_when: Callable[[ClusterPolicySpec], bool] | None = None
    extra_vars: Vars | None = None
    depends_on_nodes: bool = field(default=False)  # renders differently per node pool
    # Every kind the state's templates may render (watched, listed for pruning and granted in RBAC from this).
    kinds: tuple[Kind, ...] = DEFAULT_OPERAND_KINDS
    # Where the state's template folder lives, when not in the package (a state shipped outside it).
    template_root: Path | None = None
    # Runs on the decorated objects before they are hashed (e.g. a digest over the driver's pod spec).
    finalize: Callable[[list[dict[str, Any]], RenderContext], None] | None = None
    # The section's resources go on every container of the pod (upstream does so for the driver and validator).
    resources_everywhere: bool = False
    # Why the state is not ready beyond its DaemonSets' readiness (GPU nodes it cannot serve), or None.
    readiness_notes: Callable[[RenderContext], str | None] | None = None
    # Env the main container gets after the section's env, which cannot override it: what upstream's Transform
    # sets after its env loop (GFD's MIG env and CONFIG_FILE; the toolkit and driver states re-assert theirs).
    final_env: Callable[[ClusterPolicySpec], list[dict[str, Any]]] | None = None

    def settings(self, spec: ClusterPolicySpec) -> ComponentSpec | ValidatorSpec | None:
        value = getattr(spec, self.section) if self.section else None
        return value if isinstance(value, (ComponentSpec, ValidatorSpec)) else None

    def enabled(self, spec: ClusterPolicySpec) -> bool:
        if self.enabled_when is not None:
            return self.enabled_when(spec)
        settings = self.settings(spec)
        return settings.enabled if isinstance(settings, ComponentSpec) else True  # the validator: always

    def variables(self, ctx: RenderContext) -> dict[str, Any]:
        settings = self.settings(ctx.spec)
        out: dict[str, Any] = {
            "spec": ctx.spec,
            "namespace": ctx.namespace,
            "state": self.name,
            "settings": settings,
            "deploy_label": f"nvidia.com/gpu.deploy.{self.deploy_label}" if self.deploy_label else None,
            "validator_image": images.resolve(ctx.spec.validator, "validator"),
            "runtime_class": nvidia_runtime_class(ctx),
        }
        if settings is not None and self.component:
            out["image"] = images.resolve(settings, self.component)
            out["image_pull_policy"] = settings.image_pull_policy or "IfNotPresent"
        if self.extra_vars:
            out.update(self.extra_vars(ctx))
        return out

    def render(self, ctx: RenderContext) -> list[dict[str, Any]]:
        """The state's objects, decorated and hashed, in template-file order."""
        variables = self.variables(ctx)
        objects: list[dict[str, Any]] = []
        for template in templates(self.name, self.template_root):
            text = template.render(**variables)
            try:
                objects += _parse(text)
            except yaml.YAMLError as error:  # a spec string that YAML reads as syntax, put in unquoted
                fields = ", ".join(_yaml_culprits(ctx.spec, text, error)) or "a spec string"
                raise RenderProblem(f"{fields}: not a plain string (YAML syntax in it), so not rendered") from None
        declared = {k.kind: k for k in self.kinds}
        for obj in objects:
            kind = declared.get(obj.get("kind", ""))
            if kind is None or kind.api_version != obj.get("apiVersion"):
                raise ValueError(
                    f"{self.name} renders {obj.get('apiVersion')} {obj.get('kind')}, which is not in its declared kinds"
                )
        objects = [obj for obj in objects if served(declared[obj["kind"]], ctx.api_groups)]
        objects = [self._decorate(obj, ctx) for obj in objects]
        if self.finalize:
            self.finalize(objects, ctx)
        for obj in objects:
            obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = object_hash(obj)
        return objects

    def _decorate(self, obj: dict[str, Any], ctx: RenderContext) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = ctx.namespace
        meta["labels"] = {**meta.get("labels", {}), **self.standard_labels()}
        if ctx.owner:
            meta["ownerReferences"] = [
                {**ctx.owner, "controller": True, "blockOwnerDeletion": True},
            ]
        if obj["kind"] == "DaemonSet":
            self._decorate_daemonset(obj, ctx.spec)
        return obj

    def standard_labels(self) -> dict[str, str]:
        return {MANAGED_BY: OPERATOR_NAME, PART_OF: OPERATOR_NAME, STATE_LABEL: self.name}

    def _decorate_daemonset(self, ds: dict[str, Any], spec: ClusterPolicySpec) -> None:
        common = spec.daemonsets
        meta = ds["metadata"]
        meta["labels"] = {**common.labels, **meta["labels"]}
        if common.annotations:
            meta["annotations"] = {**common.annotations, **meta.get("annotations", {})}
        dspec = ds["spec"]
        template = dspec["template"]
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**common.labels, **tmeta.get("labels", {}), **self.standard_labels()}
        if common.annotations:
            tmeta["annotations"] = {**common.annotations, **tmeta.get("annotations", {})}
        pod = template["spec"]
        pod["priorityClassName"] = common.priority_class_name
        tolerations = list(pod.get("tolerations", []))
        for tol in [GPU_TOLERATION, *(t.as_dict() for t in common.tolerations)]:
            if tol not in tolerations:
                tolerations.append(tol)
        pod["tolerations"] = tolerations
        if self.on_delete or common.update_strategy == "OnDelete":
            dspec["updateStrategy"] = {"type": "OnDelete"}
        else:
            max_unavailable = common.rolling_update.max_unavailable
            if isinstance(max_unavailable, str) and max_unavailable.isdigit():
                max_unavailable = int(max_unavailable)
            dspec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}}
        settings = self.settings(spec)
        if settings is None:
            return
        if settings.image_pull_secrets:  # the section's first, then any the template names
            names = list(settings.image_pull_secrets) + [s["name"] for s in pod.get("imagePullSecrets", [])]
            pod["imagePullSecrets"] = [{"name": s} for s in dict.fromkeys(names)]
        sections: dict[str | None, ImageSpec] = {self.container: settings}
        sections.update({name: getattr(settings, attr) for name, attr in self.sub_containers})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            if self.resources_everywhere and settings.resources is not None:
                container["resources"] = settings.resources.model_dump(exclude_defaults=True)
            section = sections.get(container["name"])
            if section is not None:
                _apply_section(container, section)
            if self.final_env is not None and container["name"] == self.container:
                for entry in self.final_env(spec):
                    set_env(container, entry)


def _yaml_culprits(spec: ClusterPolicySpec, text: str, error: yaml.YAMLError) -> list[str]:
    """Paths of the spec strings that can have broken `text`: those with YAML syntax on the line the error points
    at, else those in `text`, else all (one the template changed first)."""
    found = _yaml_syntax_strings(spec)
    in_text = [(path, value) for path, value in found if value in text]
    mark = getattr(error, "problem_mark", None)
    lines = text.splitlines()
    on_line = [p for p, v in in_text if v in lines[mark.line]] if mark is not None and mark.line < len(lines) else []
    return on_line or [path for path, _ in in_text or found]


def _yaml_syntax_strings(value: Any, path: str = "spec") -> list[tuple[str, str]]:
    """(path, string) of the spec's strings that, written bare, YAML does not read back as themselves or as another
    scalar: one read as a number, bool or null breaks nothing."""
    if isinstance(value, BaseModel):
        return [p for name, f in type(value).model_fields.items()
                for p in _yaml_syntax_strings(getattr(value, name), f"{path}.{f.alias or name}")]  # fmt: skip
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _yaml_syntax_strings(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _yaml_syntax_strings(v, f"{path}.{k}")]
    if isinstance(value, str) and value:
        try:
            loaded = yaml.safe_load(f"k: {value}")
        except yaml.YAMLError:
            return [(path, value)]
        if isinstance(loaded, dict) and list(loaded) == ["k"]:
            read = loaded["k"]
            if read == value or not isinstance(read, (str, dict, list)):
                return []
        return [(path, value)]
    return []


def _apply_section(container: dict[str, Any], section: ImageSpec) -> None:
    """A section's env (overriding by name), args (replacing) and resources, on one container (a driver
    manager section has env only)."""
    env = getattr(section, "env", [])
    if env:
        names = {e.name for e in env}
        kept = [e for e in container.get("env", []) if e["name"] not in names]
        container["env"] = kept + [{"name": e.name, "value": e.value} for e in env]
    args = getattr(section, "args", None)
    if args:
        container["args"] = list(args)
    resources = getattr(section, "resources", None)
    if resources is not None:
        container["resources"] = resources.model_dump(exclude_defaults=True)


def set_env(container: dict[str, Any], entry: dict[str, Any]) -> None:
    """Upstream's setContainerEnv: the entry replaces the one of its name in place, or is appended."""
    env = container.setdefault("env", [])
    for i, old in enumerate(env):
        if old["name"] == entry["name"]:
            env[i] = entry
            return
    env.append(entry)


CLUSTER_SCOPED = frozenset(
    {"ClusterRole", "ClusterRoleBinding", "RuntimeClass", "Namespace", "CustomResourceDefinition", "PriorityClass"}
)


def object_hash(obj: dict[str, Any]) -> str:
    """Stable hash of an object's rendered content, excluding the hash annotation itself."""
    clean = json.loads(json.dumps(obj))
    meta = clean.get("metadata", {})
    meta.get("annotations", {}).pop(HASH_ANNOTATION, None)
    if meta.get("annotations") == {}:
        del meta["annotations"]  # as it was when the hash was taken: a rendered object hashes to its annotation
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _to_yaml(value: Any) -> str:
    """Jinja filter: a value as flow-style YAML/JSON, safe to embed on one line."""
    if isinstance(value, list):
        value = [v.model_dump(by_alias=True, exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
    elif isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_none=True)
    return json.dumps(value)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("gpu_operator", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["json"] = _to_yaml
_ENV.filters["str"] = lambda v: json.dumps(str(v).lower() if isinstance(v, bool) else str(v))


@cache
def templates(state: str, root: Path | None = None) -> tuple[jinja2.Template, ...]:
    """The state folder's templates in file-name order (from the package, or from `root`)."""
    env = _ENV
    folder: Any = resources.files("gpu_operator") / "templates" / state
    if root is not None:
        env = _ENV.overlay(loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(root)), _ENV.loader]))  # type: ignore[list-item]
        folder = root / state
    names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".yaml"))
    return tuple(env.get_template(f"{state}/{name}") for name in names)
