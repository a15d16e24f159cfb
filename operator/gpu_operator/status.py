"""ClusterPolicy status (pure): the singleton rule, the overall state, the Ready/Error conditions and the
UnsupportedFields condition (which fields are set but not acted on; it never changes the state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StateResult:
    name: str
    state: str  # ready | notReady | disabled
    message: str = ""


def active_policy(policies: list[dict[str, Any]]) -> str | None:
    """The one ClusterPolicy that is acted on: the oldest by creationTimestamp. Timestamps are whole seconds, so of
    policies created in the same second the one whose status says it is acted on stays so (a policy created a
    moment after a hand-over does not take the operands back), then the name breaks the tie."""
    live = [p for p in policies if not p["metadata"].get("deletionTimestamp")]
    if not live:
        return None

    def age(p: dict[str, Any]) -> tuple[str, bool, str]:
        state = (p.get("status") or {}).get("state")
        return p["metadata"].get("creationTimestamp", ""), state in (None, "ignored"), p["metadata"]["name"]

    return str(min(live, key=age)["metadata"]["name"])


UNSUPPORTED_FIELDS = "UnsupportedFields"
MAX_FIELDS_NAMED = 40


def _transition(before: dict[str, Any], value: str, now: str) -> str:
    if before.get("status") != value or not before.get("lastTransitionTime"):
        return now
    return str(before["lastTransitionTime"])


def whole_entries(parts: list[str], limit: int) -> str:
    """`parts` joined by "; " within `limit` characters: as many whole ones as fit, then "; and N more" for the rest.
    The first one is always there (cut short, ending "...", only if it alone is too long)."""
    message = "; ".join(parts)
    if len(message) <= limit:
        return message
    kept, size = 0, -2
    while kept < len(parts) - 1 and size + 2 + len(parts[kept]) + len(f"; and {len(parts) - kept - 1} more") <= limit:
        size += 2 + len(parts[kept])
        kept += 1
    more = f"; and {len(parts) - max(kept, 1)} more" if len(parts) > 1 else ""
    if not kept:
        return parts[0][: limit - len(more) - 3] + "..." + more
    return "; ".join(parts[:kept]) + more


def unsupported_condition(
    fields: list[tuple[str, str]] | None,
    generation: int | None,
    previous: list[dict[str, Any]],
    now: str,
    invalid: bool = False,
) -> dict[str, Any] | None:
    """The UnsupportedFields condition: True naming each field (grouped by reason), False when there is none.

    `fields` None: not known this pass; an invalid spec makes it Unknown, otherwise the previous one stays.
    """
    before = next((c for c in previous if c.get("type") == UNSUPPORTED_FIELDS), None)
    if fields is None:
        if not invalid:
            return before
        value, reason, message = "Unknown", "InvalidSpec", "the spec does not validate (see the Ready condition)"
    elif not fields:
        value, reason, message = "False", "AllFieldsSupported", "every field set in the spec is acted on"
    else:
        by_reason: dict[str, list[str]] = {}
        for path, why in fields[:MAX_FIELDS_NAMED]:
            by_reason.setdefault(why, []).append(path)
        parts = [f"{', '.join(paths)} ({why})" for why, paths in by_reason.items()]
        more = len(fields) - MAX_FIELDS_NAMED
        message = (
            "set but not acted on by this operator: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
        )
        value, reason = "True", "FieldsNotSupported"
    return {
        "type": UNSUPPORTED_FIELDS,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _transition(before or {}, value, now),
        "observedGeneration": generation,
    }


def _conditions(
    ready: bool, reason: str, message: str, generation: int | None, previous: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Ready and Error, always opposite. Error False is upstream's (reason Ready, no message); Ready False keeps the
    reason and message Error True has (beyond upstream, whose Ready False says only reason Error)."""
    old = {c.get("type"): c for c in previous}
    out = []
    for ctype, status in (("Ready", ready), ("Error", not ready)):
        value = "True" if status else "False"
        before = old.get(ctype) or {}
        changed = before.get("status") != value
        quiet = ctype == "Error" and ready
        out.append(
            {
                "type": ctype,
                "status": value,
                "reason": "Ready" if quiet else reason,
                "message": "" if quiet else message,
                "lastTransitionTime": now
                if changed or not before.get("lastTransitionTime")
                else before["lastTransitionTime"],
                "observedGeneration": generation,
            }
        )
    return out


SETTLING = "changes applied; waiting to observe their effect"  # the message of a pass that wrote and waits to see it
# Upstream's (clusterpolicy_controller.go, clusterPolicyNotReadyMessage) while an NVIDIADriver upgrade is unfinished.
UPGRADE_INCOMPLETE = ("NVIDIADriver upgrade has not completed; "
                      "one or more NVIDIADriver-owned Nodes are marked pending, in-progress, or failed")
MAX_UPGRADING_NAMED = 5


def _upgrading(nodes: Sequence[str]) -> str:
    more = len(nodes) - MAX_UPGRADING_NAMED
    named = ", ".join(nodes[:MAX_UPGRADING_NAMED]) + (f" and {more} more" if more > 0 else "")
    return f"{UPGRADE_INCOMPLETE}: {named}"


def policy_status(
    *,
    generation: int | None,
    namespace: str,
    results: list[StateResult],
    gpu_nodes: int,
    has_nfd: bool,
    previous: dict[str, Any] | None,
    now: str,
    error: str | None = None,
    error_reason: str = "ReconcileFailed",
    settling: bool = False,
    extra: dict[str, Any] | None = None,
    unsupported: list[tuple[str, str]] | None = None,
    more_conditions: list[dict[str, Any]] | None = None,
    upgrading: Sequence[str] = (),
    operand_nodes: int | None = None,
) -> dict[str, Any]:
    """The status of the active ClusterPolicy.

    `settling`: this pass changed node labels or objects, whose effect the watched state does not show yet.
    `unsupported`: (field path, reason) of the fields set but not acted on (None: not known this pass).
    `upgrading`: the nodes, sorted, whose NVIDIADriver upgrade is pending, in progress or failed: not ready while
    there is one (upstream's nvidiaDriverUpgradeIncomplete), named after the operands not ready, if any.
    `operand_nodes`: the GPU nodes operands run on (not nvidia.com/gpu.deploy.operands=false, and one an enabled
    operand DaemonSet should run on), which the ready message counts; `gpu_nodes` when not given.
    """
    not_ready = [r for r in results if r.state == "notReady"]
    if error:
        ready, reason, message = False, error_reason, error
    elif not has_nfd:
        ready, reason, message = (
            False,
            "NFDLabelsMissing",
            "no node carries Node Feature Discovery labels (feature.node.kubernetes.io/*): "
            "install NFD so GPU nodes can be detected",
        )
    elif gpu_nodes == 0:
        ready, reason, message = True, "NoGPUNodes", "no GPU nodes found; operands deploy when one appears"
    elif not_ready:
        driver = next((r for r in not_ready if r.name == "state-driver"), None)
        reason = "DriverNotReady" if driver else "OperandNotReady"
        message = "; ".join(f"{r.name}: {r.message}" if r.message else r.name for r in not_ready)
        if upgrading:
            message += "; " + _upgrading(upgrading)
        ready = False
    elif upgrading:  # before settling: a rollout's writes come and go, its message stays
        ready, reason, message = False, "OperandNotReady", "ClusterPolicy is not ready; " + _upgrading(upgrading)
    elif settling:
        ready, reason, message = False, "OperandNotReady", SETTLING
    else:
        counted = gpu_nodes if operand_nodes is None else operand_nodes
        ready, reason, message = True, "Reconciled", f"all operands ready on {counted} GPU nodes"
    prev = previous or {}
    conditions = _conditions(ready, reason, message, generation, prev.get("conditions") or [], now)
    fields = unsupported_condition(
        unsupported,
        generation,
        prev.get("conditions") or [],
        now,
        invalid=error_reason == "InvalidSpec" and bool(error),
    )
    if fields is not None:
        conditions.append(fields)
    conditions += more_conditions or []
    status = {
        "state": "ready" if ready else "notReady",
        "namespace": namespace,
        "observedGeneration": generation,
        "conditions": conditions,
        "states": [{"name": r.name, "state": r.state, "message": r.message} for r in results],
    }
    if extra:
        status.update(extra)
    return status


def ignored_status(
    *, generation: int | None, namespace: str, active: str, previous: dict[str, Any] | None, now: str,
    same_second: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The status of a ClusterPolicy that is not the active one. `same_second`: both were created in the same second
    (active_policy's tie), so the active one is not older."""
    why = "was created in the same second and is the one acted on" if same_second else "is older and active"
    message = f"ClusterPolicy {active} {why}; only one ClusterPolicy is used, so this one is ignored"
    prev = previous or {}
    return {
        "state": "ignored",
        "namespace": namespace,
        "observedGeneration": generation,
        "conditions": _conditions(False, "Ignored", message, generation, prev.get("conditions") or [], now),
        "states": [],
    }


def _comparable(status: dict[str, Any] | None) -> Any:
    if not status:
        return None
    clean = dict(status)
    clean["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return clean


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything but timestamps."""
    return _comparable(old) != _comparable(new)


def _outline(status: dict[str, Any] | None) -> Any:
    """A status without its messages and counts: the state, each condition's status and reason, each operand
    state's state, the generation observed and which sections there are."""
    if not status:
        return None
    return (
        status.get("state"),
        status.get("observedGeneration"),
        sorted(status),
        [(c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
         for c in status.get("conditions") or []],
        [(s.get("name"), s.get("state")) for s in status.get("states") or []],
    )  # fmt: skip


def progress_only(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether `new` differs from `old` only in messages and counts (a rollout's progress), not in any state,
    condition, reason or observed generation."""
    return _outline(old) == _outline(new)
