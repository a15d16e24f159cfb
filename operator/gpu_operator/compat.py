"""Per-node compatibility of the policy's driver with the node's GPUs (pure): what is refused and why.

A refused node keeps whatever driver pod of ours it runs (the driver DaemonSets are OnDelete, and the upgrade
planner skips the node), so a refusal never stops a working driver; a refused node without one gets
`gpu.deploy.driver=refused-by-version-matrix`, which the driver DaemonSets (selecting `true`) do not match.
No DaemonSet template changes, so no other node restarts its driver because of a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from . import images, matrix
from .api import ClusterPolicySpec, DriverSpec
from .gpu_identity import Identity
from .nodes import DRIVER_REFUSED, PAUSED_VALUES, ByNode, NodeFacts, deploy_label, per_spec, workload_of

CONDITION = "DriverRefused"
EVENT_REASON = "DriverRefused"
MAX_NODES_NAMED = 20


@dataclass(frozen=True)
class Verdict:
    node: str
    identity: Identity
    version: str
    module_type: str | None  # resolved kernel module type (None: not checked)
    refusal: matrix.Refusal | None

    def describe(self) -> str:
        if self.refusal:
            return f"refused: {self.refusal.message} (rule {self.refusal.rule})"
        if not self.identity.known:
            return self.identity.describe()
        if self.module_type is None:
            return f"driver version {self.version} unknown, not checked"
        return f"ok: {self.identity.describe()}, {self.module_type} kernel modules"


def driver_version(spec: ClusterPolicySpec) -> str:
    return images.version_of(spec.driver, "driver")


def _driver_candidate(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    """A GPU node the ClusterPolicy's driver is (or would be) for: not opted out, no host driver."""
    if not (spec.driver.enabled and not spec.driver.use_nvidia_driver_crd) or not node.has_gpu:
        return False
    if workload_of(node, spec) != "container" or node.labels.get(deploy_label("operands")) == "false":
        return False
    value = node.labels.get(deploy_label("driver"))
    return value in (None, "", "true", DRIVER_REFUSED) or value in PAUSED_VALUES


_by_name = attrgetter("name")


def verdicts(
    nodes: Iterable[NodeFacts], spec: ClusterPolicySpec, kept: ByNode[Verdict] | None = None
) -> dict[str, Verdict]:
    """Node name -> verdict, for every node the ClusterPolicy's driver is for, sorted by name. `kept`: the last
    call's, worked out again only for the nodes that changed since."""
    if kept is not None:
        return kept.over(nodes, spec)
    out = {}
    for node in sorted(nodes, key=_by_name):
        found = per_spec(node, "_compat_verdict", spec, _verdict)
        if found is not None:
            out[node.name] = found
    return out


def kept_verdicts() -> ByNode[Verdict]:
    """What a pass keeps of `verdicts` between passes."""
    return ByNode(lambda node, spec: per_spec(node, "_compat_verdict", spec, _verdict))


def requested_module_type(driver: DriverSpec, version: str, field: str = "driver.") -> tuple[str, str]:
    """(the kernel module type the driver pod asks for, what asks for it, as a refusal names it; `field`: the
    prefix of the driver's fields, "" in an NVIDIADriver). Its env is applied after kernelModuleType (upstream's
    transformDriverContainer, the NVIDIADriver template), so its KERNEL_MODULE_TYPE wins; empty is auto to the
    container, another value makes it exit. The R560/R565 containers predate KERNEL_MODULE_TYPE: they install open
    modules when OPEN_KERNEL_MODULES_ENABLED is "true" (the operator sets it for kernelModuleType open, the env
    may replace it), else proprietary. Before R570, auto installs proprietary modules unless
    OPEN_KERNEL_MODULES_ENABLED=true, which the older builds of the other branches read as open."""
    env = {e.name: e.value for e in driver.env}
    requested: str = driver.kernel_module_type
    asked = f"kernelModuleType {requested}"
    branch = matrix.branch_of(version)
    km = matrix.data()["kernel_modules"]
    if branch in km["no_module_type_env_branches"]:
        value = env.get("OPEN_KERNEL_MODULES_ENABLED")
        if value is None:
            return requested, asked  # auto and proprietary: proprietary (matrix.kernel_module_type)
        requested = "open" if value == "true" else "proprietary"
        return requested, f"{asked} with {field}env OPEN_KERNEL_MODULES_ENABLED={value}"
    value = env.get("KERNEL_MODULE_TYPE")
    if value is not None and (value or "auto") in matrix.MODULE_TYPES:
        requested, asked = value or "auto", f"{field}env KERNEL_MODULE_TYPE={value}"
    before_auto = branch is not None and branch < int(km["auto_from_branch"])
    if requested == "auto" and before_auto and env.get("OPEN_KERNEL_MODULES_ENABLED") == "true":
        requested, asked = "open", f"{asked} with {field}env OPEN_KERNEL_MODULES_ENABLED=true"
    return requested, asked


def _verdict(node: NodeFacts, spec: ClusterPolicySpec, field: str = "driver.") -> Verdict | None:
    if not _driver_candidate(node, spec):
        return None
    version = driver_version(spec)
    identity = node.identity
    requested, asked = requested_module_type(spec.driver, version, field)
    module_type, refusal = matrix.check(version, requested, identity.architectures, identity.product_rows, asked)
    return Verdict(node.name, identity, version, module_type, refusal)


def _nvidiadriver_verdict(node: NodeFacts, spec: ClusterPolicySpec) -> Verdict | None:
    """_verdict for an NVIDIADriver's spec (nvidiadriver.cluster_spec): its fields sit at the top."""
    return _verdict(node, spec, "")


def verdicts_for(
    nodes: Iterable[NodeFacts], spec: ClusterPolicySpec, groups: Sequence[Any] = (),
    kept: ByNode[Verdict] | None = None, kept_groups: ByNode[Verdict] | None = None,
) -> dict[str, Verdict]:  # fmt: skip
    """verdicts(); with useNvidiaDriverCRD, each NVIDIADriver's (nvidiadriver.DriverGroup) on its own nodes. `kept`:
    the last call's for the ClusterPolicy's driver; `kept_groups` (kept_group_verdicts): for the NVIDIADrivers',
    worked out again for every node when `groups` is another object (render.driver_routing keeps it)."""
    if not spec.driver.use_nvidia_driver_crd:
        return verdicts(nodes, spec, kept)
    if kept_groups is not None:
        return kept_groups.over(nodes, groups)
    return {n.name: v for n in sorted(nodes, key=_by_name) if (v := _group_verdict(n, groups)) is not None}


def kept_group_verdicts() -> ByNode[Verdict]:
    """What a pass keeps of `verdicts_for` under NVIDIADrivers between passes."""
    return ByNode(_group_verdict)


def _group_verdict(node: NodeFacts, groups: Sequence[Any]) -> Verdict | None:
    for group in groups:
        if node.name in group.nodes:
            return per_spec(node, "_compat_verdict", group.spec, _nvidiadriver_verdict)
    return None


def refused(found: Mapping[str, Verdict]) -> dict[str, str]:
    """Node -> the refusal message, for refused nodes."""
    return {n: v.refusal.message for n, v in found.items() if v.refusal}


def _named(names: list[str]) -> str:
    more = len(names) - MAX_NODES_NAMED
    return ", ".join(names[:MAX_NODES_NAMED]) + (f" and {more} more" if more > 0 else "")


def condition(
    found: Mapping[str, Verdict], generation: int | None, previous: list[dict[str, Any]], now: str
) -> dict[str, Any]:
    """The DriverRefused condition: True naming each refused node with its rule; unidentified nodes named too."""
    by_rule: dict[str, list[str]] = {}
    for v in found.values():
        if v.refusal:
            by_rule.setdefault(v.refusal.message, []).append(v.node)
    unknown = sorted(v.node for v in found.values() if not v.identity.known)
    parts = [f"{_named(sorted(nodes))}: {message}" for message, nodes in sorted(by_rule.items())]
    if unknown:
        parts.append(f"GPU unknown, not checked: {_named(unknown)}")
    if by_rule:
        value, reason = "True", "IncompatibleNodes"
        message = "driver not rolled out to " + "; ".join(parts)
    else:
        value, reason = "False", "NoneRefused"
        message = "; ".join(["no node refused"] + parts)
    before = next((c for c in previous if c.get("type") == CONDITION), {})
    same = before.get("status") == value and before.get("lastTransitionTime")
    return {
        "type": CONDITION,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if same else now,
        "observedGeneration": generation,
    }


def newly_refused(found: Mapping[str, Verdict], previous: list[dict[str, Any]]) -> dict[str, str]:
    """The refusals the previous DriverRefused condition did not name yet (node -> message): what deserves an
    event. Read from the status, so a restarted operator or a dry run posts nothing new at steady state."""
    before = next((c for c in previous if c.get("type") == CONDITION and c.get("status") == "True"), None)
    text = str((before or {}).get("message", ""))
    out = {}
    for node, message in refused(found).items():
        at = text.find(": " + message)
        named = text[:at].rsplit("; ", 1)[-1].removeprefix("driver not rolled out to ") if at >= 0 else ""
        if node not in {part.split(" and ")[0].strip() for part in named.split(", ")}:
            out[node] = message
    return out
