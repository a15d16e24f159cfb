"""Typed decoding of the watch streams that carry many objects or large ones (msgspec): operand Pods, Nodes and
our DaemonSets.

An operand pod's watch event is ~8 KB of JSON (managedFields, the whole spec), of which the operator reads a
dozen fields. `json.loads` builds every dict and string of it (~165 µs a pod); decoding into the Structs here
reads only the declared fields and skips the rest without building them (~11 µs). At 1,000 nodes the pod watch
parses ~20,000 such events during a rollout. A Node event is the same: of its labels, annotations, conditions,
capacity, images and managedFields, NodeFacts reads the labels, a few annotations, the Ready condition, the
runtime and `unschedulable`. Our DaemonSets are few but large (3-16 KB of JSON an event, mostly their pod
templates) and send an event each time the controller counts a pod during a rollout; the cache keeps them
without the containers and volumes of their templates, which nothing reads from the cache (`DaemonSet`).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from .kinds import DAEMON_SET

T = TypeVar("T")


class OwnerRef(msgspec.Struct):
    kind: str = ""
    name: str = ""
    uid: str = ""


class Meta(msgspec.Struct):
    name: str = ""
    resourceVersion: str = ""  # noqa: N815 - the API's field names
    labels: dict[str, str] | None = None
    ownerReferences: list[OwnerRef] | None = None  # noqa: N815
    deletionTimestamp: str | None = None  # noqa: N815


class Waiting(msgspec.Struct):
    reason: str | None = None


class ContainerState(msgspec.Struct):
    waiting: Waiting | None = None


class Terminated(msgspec.Struct):
    reason: str | None = None
    exitCode: int | None = None  # noqa: N815


class LastState(msgspec.Struct):
    terminated: Terminated | None = None


class ContainerStatus(msgspec.Struct):
    name: str | None = None
    ready: bool | None = None
    restartCount: int = 0  # noqa: N815
    state: ContainerState | None = None
    lastState: LastState | None = None  # noqa: N815


class PodCondition(msgspec.Struct):
    type: str | None = None
    status: str | None = None


class PodStatus(msgspec.Struct):
    phase: str | None = None
    conditions: list[PodCondition] | None = None  # observe.project_pod reads the Ready one
    containerStatuses: list[ContainerStatus] | None = None  # noqa: N815
    initContainerStatuses: list[ContainerStatus] | None = None  # noqa: N815


class PodSpec(msgspec.Struct):
    nodeName: str | None = None  # noqa: N815


class Pod(msgspec.Struct):
    """The fields of a Pod the operator reads (observe.pod_projection)."""

    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: PodSpec | None = None
    # A watch ERROR event's object is a Status: its `status` a string, a `message` and a `code`.
    status: PodStatus | str | None = None
    message: str | None = None
    code: int | None = None


class NodeMeta(msgspec.Struct):
    """A Node's metadata: annotations too, which a pod's (`Meta`) leaves out unread."""

    name: str = ""
    resourceVersion: str = ""  # noqa: N815
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class NodeCondition(msgspec.Struct):
    type: str | None = None
    status: str | None = None


class NodeInfo(msgspec.Struct):
    containerRuntimeVersion: str | None = None  # noqa: N815


class NodeStatus(msgspec.Struct):
    conditions: list[NodeCondition] | None = None
    nodeInfo: NodeInfo | None = None  # noqa: N815


class Taint(msgspec.Struct):
    key: str = ""
    value: str | None = None
    effect: str = ""


class NodeSpec(msgspec.Struct):
    unschedulable: bool | None = None
    taints: list[Taint] | None = None


class Node(msgspec.Struct):
    """The fields of a Node the operator reads (nodes.NodeFacts.from_wire)."""

    metadata: NodeMeta = msgspec.field(default_factory=NodeMeta)
    spec: NodeSpec | None = None
    # A watch ERROR event's object is a Status: its `status` a string, a `message` and a `code`.
    status: NodeStatus | str | None = None
    message: str | None = None
    code: int | None = None


class ManagedFields(msgspec.Struct, omit_defaults=True):
    """A managedFields entry without its fieldsV1 (apply.foreign_write_after_ours reads who wrote when)."""

    manager: str | None = None
    operation: str | None = None
    apiVersion: str | None = None  # noqa: N815
    time: str | None = None
    subresource: str | None = None


class ObjectMeta(msgspec.Struct, omit_defaults=True):
    """An owned object's metadata as the apply, the prune and readiness read it."""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str = ""  # noqa: N815
    generation: int | None = None
    creationTimestamp: str | None = None  # noqa: N815
    deletionTimestamp: str | None = None  # noqa: N815
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    ownerReferences: list[dict[str, Any]] | None = None  # noqa: N815
    finalizers: list[str] | None = None
    managedFields: list[ManagedFields] | None = None  # noqa: N815


class TemplateSpec(msgspec.Struct, omit_defaults=True):
    """Where a DaemonSet's pods go (readiness.daemon_node_count); not what they run."""

    nodeSelector: dict[str, str] | None = None  # noqa: N815
    affinity: dict[str, Any] | None = None
    tolerations: list[dict[str, Any]] | None = None
    hostNetwork: bool | None = None  # noqa: N815


class PodTemplate(msgspec.Struct, omit_defaults=True):
    metadata: dict[str, Any] | None = None
    spec: TemplateSpec | None = None


class DaemonSetSpec(msgspec.Struct, omit_defaults=True):
    selector: dict[str, Any] | None = None
    template: PodTemplate | None = None
    updateStrategy: dict[str, Any] | None = None  # noqa: N815
    minReadySeconds: int | None = None  # noqa: N815
    revisionHistoryLimit: int | None = None  # noqa: N815


class DaemonSet(msgspec.Struct, omit_defaults=True):
    """A DaemonSet as the owned-object cache keeps it (`daemonset_dict`): the whole status, the metadata and the
    spec but the containers, init containers and volumes of its template (and managedFields' fieldsV1)."""

    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: DaemonSetSpec | None = None
    # A watch ERROR event's object is a Status: its `status` a string, a `message` and a `code`.
    status: dict[str, Any] | str | None = None
    message: str | None = None
    code: int | None = None


def daemonset_dict(ds: DaemonSet) -> dict[str, Any]:
    """The decoded DaemonSet as the plain dict the cache holds, with its kind (a listing's items carry none)."""
    out: dict[str, Any] = msgspec.to_builtins(ds)
    out["kind"], out["apiVersion"] = DAEMON_SET.kind, DAEMON_SET.api_version
    return out


class ListMeta(msgspec.Struct):
    resourceVersion: str = ""  # noqa: N815
    # `continue` is a Python keyword: the Struct field is renamed.
    next: str | None = msgspec.field(default=None, name="continue")


class Page(msgspec.Struct, Generic[T]):
    """One page of a list."""

    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[T] | None = None


class Event(msgspec.Struct, Generic[T]):
    """One watch event."""

    type: str = ""
    object: T | None = None


class Codec(Generic[T]):
    """The decoders of one kind's list pages and watch events."""

    def __init__(self, kind: type[T]):
        self.page = msgspec.json.Decoder(Page[kind])  # type: ignore[valid-type]
        self.event = msgspec.json.Decoder(Event[kind])  # type: ignore[valid-type]

    def decode_page(self, data: bytes) -> Page[T]:
        return self.page.decode(data)

    def decode_event(self, line: bytes) -> Event[T]:
        return self.event.decode(line)


def convert(obj: dict[str, Any], kind: type[T]) -> T:
    """An object already parsed (a listing's) as its Struct, so both paths project the same way."""
    return msgspec.convert(obj, kind, strict=False)
