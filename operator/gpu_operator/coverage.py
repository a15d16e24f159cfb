"""Which ClusterPolicy fields are set but not acted on by this operator (pure).

`UNSUPPORTED` is the source of truth: field paths (upstream's names; `*` matches any run, as in `gds.*`) this
operator accepts but does not act on, each with the reason. `unsupported_fields` applies it to a parsed spec:
a field counts when its value differs from the default and the component it belongs to is enabled (a field
of a disabled component does nothing upstream either). tests/test_coverage.py keeps the table honest against
every field of upstream's schema: a listed field must change nothing, an unlisted one must change what is
rendered (or be acted on elsewhere, as its table there says).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel

from .api import ClusterPolicySpec, KubeObject, unknown_fields


def _sandbox(spec: ClusterPolicySpec) -> bool:
    return spec.sandbox_workloads.enabled


def _nri(spec: ClusterPolicySpec) -> bool:
    return spec.cdi.nri_plugin_enabled


@dataclass(frozen=True)
class Rule:
    pattern: str  # a field path; `*` matches any run of characters (`vgpuManager.*`, `*.hostNetwork`)
    reason: str
    # Only then does the field matter (beyond its component being enabled).
    when: Callable[[ClusterPolicySpec], bool] | None = None
    # The field takes effect in part; the reason says which part does not.
    partial: bool = False

    def matches(self, path: str) -> bool:
        return fnmatchcase(path, self.pattern)


VM = "VM-workload operands (sandboxWorkloads) are not rendered by this operator yet"
UPSTREAM_IGNORES = "deprecated upstream, which ignores it too"

# First match wins: specific paths before wildcards.
UNSUPPORTED: tuple[Rule, ...] = (
    # Upstream itself no longer acts on these.
    Rule("operator.initContainer.*", UPSTREAM_IGNORES),
    Rule("driver.useOpenKernelModules", UPSTREAM_IGNORES + "; use driver.kernelModuleType"),
    Rule("cdi.default", UPSTREAM_IGNORES + "; cdi.enabled makes CDI the default"),
    Rule("psp.enabled", UPSTREAM_IGNORES + "; PodSecurityPolicy no longer exists, use psa.enabled"),
    Rule("kataManager.*", UPSTREAM_IGNORES),
    Rule("operator.labels", "not used by upstream's operator either"),
    Rule("operator.annotations", "not used by upstream's operator either"),
    Rule("operator.use_ocp_driver_toolkit", "OpenShift's driver toolkit is not supported"),
    Rule(
        "toolkit.args",
        "ignored by upstream too: its entrypoint runs nvidia-toolkit without arguments; set the installer's "
        "options with toolkit.env (it reads them from the environment)",
    ),
    # Upstream does not act on this in NRI mode either: pre-requisites is off and pods get no runtime class.
    Rule(
        "operator.runtimeClass",
        "not used with cdi.nriPluginEnabled: no RuntimeClass is created and GPU pods get their devices from the "
        "NRI plugin",
        when=_nri,
        partial=True,
    ),
    # VM workloads: only the node labels per workload (and per mode) are acted on.
    Rule("sandboxWorkloads.enabled", "nodes are labelled per workload, but " + VM, partial=True),
    Rule(
        "sandboxWorkloads.mode",
        "vm-passthrough nodes are labelled for the kata or the kubevirt sandbox device plugin, but " + VM,
        when=_sandbox,
        partial=True,
    ),
    Rule("vfioManager.*", VM, when=_sandbox),
    Rule("vgpuManager.*", VM, when=_sandbox),
    Rule("vgpuDeviceManager.*", VM, when=_sandbox),
    Rule("sandboxDevicePlugin.*", VM, when=_sandbox),
    Rule("kataSandboxDevicePlugin.*", VM, when=_sandbox),
    Rule("ccManager.*", VM, when=_sandbox),
    Rule("validator.vfioPCI.env", VM, when=_sandbox),
    Rule("validator.vgpuManager.env", VM, when=_sandbox),
    Rule("validator.vgpuDevices.env", VM, when=_sandbox),
    # Driver pod features not rendered yet.
    Rule("driver.virtualTopology.config", "the vGPU topology ConfigMap is not mounted into the driver yet"),
    # Other operand settings not rendered yet.
    Rule("daemonsets.podSecurityContext", "not applied to the operand pods yet"),
    Rule("gds.args", "not passed to the nvidia-fs sidecar, which runs its image's entrypoint"),
    Rule("gdrcopy.args", "not passed to the gdrcopy sidecar, which runs its image's entrypoint"),
    Rule("toolkit.hostNetwork", "host networking of the toolkit pod is not rendered yet"),
    Rule("dcgm.hostPort", UPSTREAM_IGNORES + ": no host port is bound; exporters reach the engine by its Service"),
)


def rule_for(path: str) -> Rule | None:
    """The first rule that names `path` (a field path without the `spec.` prefix)."""
    return next((r for r in UNSUPPORTED if r.matches(path)), None)


def _paths(value: Any, default: Any, prefix: str) -> Iterator[str]:
    """Field paths (upstream names) under a model whose value differs from the default."""
    if isinstance(value, BaseModel) and not isinstance(value, KubeObject):  # a Kubernetes object is one field
        if not isinstance(default, type(value)):
            default = type(value).model_construct()  # an optional section given: compare with its defaults
        for name, field in type(value).model_fields.items():
            key = field.alias or name
            yield from _paths(getattr(value, name), getattr(default, name), f"{prefix}.{key}" if prefix else key)
        return
    if value != default:
        yield prefix


def set_fields(spec: ClusterPolicySpec) -> list[str]:
    """Every modelled field whose value differs from its default (unknown fields are not included)."""
    return list(_paths(spec, ClusterPolicySpec(), ""))


def _enabled_along(spec: ClusterPolicySpec, path: str) -> bool:
    """Whether every section above `path` that has an `enabled` switch is switched on."""
    node: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = child(node, part)
        if not isinstance(node, BaseModel):
            return True
        enabled = getattr(node, "enabled", True)
        if enabled is False:
            return False
    return True


def child(model: BaseModel, key: str) -> Any:
    """The value of a model's field by its upstream name."""
    for name, field in type(model).model_fields.items():
        if (field.alias or name) == key:
            return getattr(model, name)
    raise KeyError(key)


def unsupported_fields(spec: ClusterPolicySpec) -> list[tuple[str, str]]:
    """(path, reason) of every field that is set but not acted on, in field order."""
    out = []
    for path in set_fields(spec):
        rule = rule_for(path)
        if rule is None or not _enabled_along(spec, path):
            continue
        if rule.when is not None and not rule.when(spec):
            continue
        out.append((path, rule.reason))
    return out


UNKNOWN = "not a ClusterPolicy field of upstream v26.7; ignored (allowed by the policy's annotation)"


def report(spec: ClusterPolicySpec) -> list[tuple[str, str]]:
    """(`spec.<path>`, reason) of every field that is set but not acted on, unknown fields included."""
    out = [(f"spec.{path}", reason) for path, reason in unsupported_fields(spec)]
    return out + [(path, UNKNOWN) for path in unknown_fields(spec)]
