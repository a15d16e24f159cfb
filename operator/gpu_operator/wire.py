"""Typed decoding of the watch streams that carry many objects (msgspec): operand Pods and Nodes.

An operand pod's watch event is ~8 KB of JSON (managedFields, the whole spec), of which the operator reads a
dozen fields. `json.loads` builds every dict and string of it (~165 µs a pod); decoding into the Structs here
reads only the declared fields and skips the rest without building them (~11 µs). At 1,000 nodes the pod watch
parses ~20,000 such events during a rollout. A Node event is the same: of its labels, annotations, conditions,
capacity, images and managedFields, NodeFacts reads the labels, a few annotations, the Ready condition, the
runtime and `unschedulable`.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


class OwnerRef(msgspec.Struct):
    kind: str = ""
    name: str = ""


class Meta(msgspec.Struct):
    name: str = ""
    resourceVersion: str = ""  # noqa: N815 - the API's field names
    labels: dict[str, str] | None = None
    ownerReferences: list[OwnerRef] | None = None  # noqa: N815
    deletionTimestamp: str | None = None  # noqa: N815


class ContainerStatus(msgspec.Struct):
    name: str | None = None
    ready: bool | None = None
    restartCount: int = 0  # noqa: N815


class PodStatus(msgspec.Struct):
    phase: str | None = None
    containerStatuses: list[ContainerStatus] | None = None  # noqa: N815


class PodSpec(msgspec.Struct):
    nodeName: str | None = None  # noqa: N815


class Pod(msgspec.Struct):
    """The fields of a Pod the operator reads (observe.pod_projection)."""

    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: PodSpec | None = None
    # A watch ERROR event's object is a Status: its `status` a string, and a `message`.
    status: PodStatus | str | None = None
    message: str | None = None


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
    # A watch ERROR event's object is a Status: its `status` a string, and a `message`.
    status: NodeStatus | str | None = None
    message: str | None = None


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
