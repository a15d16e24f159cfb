"""The pod watch's typed decoding (wire.py): the same projection as from the parsed pod, and the watch around it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from sys import intern
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gpu_operator import wire
from gpu_operator.nodewatch import Watch
from gpu_operator.observe import pod_projection, project_pod
from gpu_operator.readiness import pod_ready
from gpu_operator.states.base import COMPONENT, STATE_LABEL

CODEC = wire.Codec(wire.Pod)


def line(obj: Any) -> bytes:
    """JSON the way the API server writes it: compact, one line."""
    return json.dumps(obj, separators=(",", ":")).encode()


def reference(pod: dict[str, Any]) -> dict[str, Any]:
    """The projection written out from the parsed pod, field by field (the pod watch's before wire.py)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    owner = next((o["name"] for o in meta.get("ownerReferences") or [] if o.get("kind") == "DaemonSet"), "")
    keep = ("controller-revision-hash", STATE_LABEL, COMPONENT)
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in keep},
            **({"deletionTimestamp": meta["deletionTimestamp"]} if meta.get("deletionTimestamp") else {}),
        },
        "node": (pod.get("spec") or {}).get("nodeName", ""),
        "owner": owner,
        "status": {
            "phase": status.get("phase"),
            "containerStatuses": [
                {"name": c.get("name") or "", "ready": bool(c.get("ready")), "restartCount": c.get("restartCount", 0)}
                for c in status.get("containerStatuses") or []
            ],
        },
        "ready": status.get("phase") == "Running" and bool(status.get("containerStatuses"))
        and all(c.get("ready") for c in status["containerStatuses"]),
    }


def api_pod(name: str = "nvidia-driver-daemonset-x1", rv: str = "7", **over: Any) -> dict[str, Any]:
    """An operand pod as the API server sends it: managedFields, the whole spec, conditions."""
    pod: dict[str, Any] = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": "nvidia-driver-daemonset-",
            "namespace": "gpu-operator",
            "uid": "1d2e",
            "resourceVersion": rv,
            "labels": {
                "app": "nvidia-driver-daemonset",
                "controller-revision-hash": "6f7c",
                STATE_LABEL: "state-driver",
                "app.kubernetes.io/managed-by": "gpu-operator",
                "pod-template-generation": "1",
            },
            "annotations": {"kubectl.kubernetes.io/default-container": "nvidia-driver-ctr"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "nvidia-driver-daemonset", "uid": "9a",
                 "controller": True, "blockOwnerDeletion": True},
            ],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                 "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {}}}},
            ],
        },
        "spec": {
            "nodeName": "gpu-node-3",
            "containers": [{"name": "nvidia-driver-ctr", "image": "nvcr.io/nvidia/driver:595.91.07",
                            "securityContext": {"privileged": True},
                            "volumeMounts": [{"name": "run", "mountPath": "/run"}]}],
            "initContainers": [{"name": "k8s-driver-manager", "image": "nvcr.io/nvidia/k8s-driver-manager:v0.9"}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"}],
            "containerStatuses": [
                {"name": "nvidia-driver-ctr", "ready": True, "restartCount": 2, "image": "x", "imageID": "y",
                 "state": {"running": {"startedAt": "2026-12-01T10:00:04Z"}}},
            ],
            "hostIP": "10.0.0.3",
        },
    }  # fmt: skip
    for path, value in over.items():
        *parents, leaf = path.split("__")
        target = pod
        for p in parents:
            target = target.setdefault(p, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return pod


def test_an_api_servers_pod_projects_to_the_fields_the_operator_reads() -> None:
    pod = api_pod(metadata__deletionTimestamp="2026-12-01T11:00:00Z")
    event = CODEC.decode_event(line({"type": "MODIFIED", "object": pod}))
    assert event.type == "MODIFIED" and event.object is not None
    expected = {
        "metadata": {
            "name": "nvidia-driver-daemonset-x1",
            "labels": {"controller-revision-hash": "6f7c", STATE_LABEL: "state-driver"},
            "deletionTimestamp": "2026-12-01T11:00:00Z",
        },
        "node": "gpu-node-3",
        "owner": "nvidia-driver-daemonset",
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": True, "restartCount": 2}],
        },
        "ready": True,
    }
    assert project_pod(event.object) == expected
    assert pod_projection(pod) == expected  # a listing's parsed pod: the same projection


def test_missing_parts_project_as_before() -> None:
    for pod in (
        api_pod(status=None),
        api_pod(spec=None, metadata__labels=None, metadata__ownerReferences=None),
        api_pod(status__containerStatuses=[{"name": "c"}, {"ready": False}], status__phase=None),
        api_pod(metadata__ownerReferences=[{"kind": "ReplicaSet", "name": "r"}, {"kind": "DaemonSet", "name": "d"}]),
        {"metadata": {"name": "bare"}},
    ):
        decoded = CODEC.decode_event(line({"type": "ADDED", "object": pod})).object
        assert decoded is not None
        assert project_pod(decoded) == reference(pod) == pod_projection(pod)


names = st.text("abcxyz-.", min_size=1, max_size=12)
label_keys = st.sampled_from(["controller-revision-hash", STATE_LABEL, COMPONENT, "app", "pod-template-generation"])
container = st.fixed_dictionaries(
    {}, optional={"name": names, "ready": st.booleans(), "restartCount": st.integers(0, 50), "image": names}
)
pods = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries(
        {"name": names, "resourceVersion": st.integers(1, 10**9).map(str)},
        optional={
            "labels": st.dictionaries(label_keys, names, max_size=5),
            "ownerReferences": st.lists(st.fixed_dictionaries(
                {"kind": st.sampled_from(["DaemonSet", "ReplicaSet", "Node"]), "name": names}), max_size=2),
            "deletionTimestamp": st.sampled_from(["2026-12-01T00:00:00Z", ""]),
            "annotations": st.dictionaries(names, names, max_size=2),
        })},
    optional={
        "spec": st.fixed_dictionaries({}, optional={"nodeName": names, "hostNetwork": st.booleans()}),
        "status": st.fixed_dictionaries({}, optional={
            "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]),
            "containerStatuses": st.lists(container, max_size=3),
            "podIP": names,
        }),
    },
)  # fmt: skip


@given(pods)
@example({"metadata": {"name": "a"}, "status": {"phase": "Running"}})  # running without containers: not ready
@example({"metadata": {"name": "a"}, "status": {"phase": "Running", "containerStatuses": [{"ready": True}, {}]}})
def test_decoded_projection_equals_the_parsed_ones(pod: dict[str, Any]) -> None:
    decoded = CODEC.decode_event(line({"type": "MODIFIED", "object": pod})).object
    assert decoded is not None
    assert project_pod(decoded) == reference(pod) == pod_projection(pod)
    assert pod_ready(project_pod(decoded)) is pod_ready(pod)  # the answer carried equals the one worked out


def test_strings_shared_by_pods_are_interned() -> None:
    a, b = (project_pod(CODEC.decode_event(line({"type": "ADDED", "object": api_pod(n)})).object)  # type: ignore[arg-type]
            for n in ("p1", "p2"))  # fmt: skip
    assert a["node"] is b["node"] is intern("gpu-node-3")
    assert a["owner"] is b["owner"]


class Api:
    """List pages and watch lines as the API server sends them, through the decoder the watch passes."""

    def __init__(self, pages: list[dict[str, Any]], events: list[dict[str, Any]]):
        self.pages = pages
        self.events = events
        self.queries: list[dict[str, Any]] = []

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, decode: Any = json.loads) -> Any:
        self.queries.append(dict(query or {}))
        return decode(line(self.pages[len(self.queries) - 1]))

    def watch(self, path: str, rv: str, timeout_seconds: int = 30, parse: Any = json.loads, **_: Any) -> Iterator[Any]:
        for event in self.events:
            yield parse(line(event))


class Pods:
    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.delivered: list[tuple[str, bool]] = []

    def deliver(self, name: str, pod: dict[str, Any] | None) -> None:
        self.delivered.append((name, pod is not None))
        if pod is None:
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod


def pod_watch(api: Api, cache: Pods) -> Watch[dict[str, Any]]:
    return Watch(api, "/api/v1/namespaces/gpu-operator/pods", project_pod, cache.pods.get, cache.deliver,  # type: ignore[arg-type]
                 codec=CODEC)  # fmt: skip


def test_the_pod_watch_lists_pages_then_delivers_only_changes() -> None:
    cache = Pods()
    api = Api(
        [
            {"kind": "PodList", "metadata": {"resourceVersion": "40", "continue": "next-page"},
             "items": [api_pod("a", "5"), api_pod("b", "6")]},
            {"kind": "PodList", "metadata": {"resourceVersion": "41"}, "items": [api_pod("c", "7")]},
        ],
        [
            {"type": "MODIFIED", "object": api_pod("a", "42", metadata__annotations={"x": "y"})},  # nothing new
            {"type": "MODIFIED",
             "object": api_pod("b", "43", status__containerStatuses=[{"name": "c", "ready": False}])},
            {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "44"}}},
            {"type": "DELETED", "object": api_pod("c", "45")},
            {"type": "ADDED", "object": api_pod("d", "46")},
        ],
    )  # fmt: skip
    watch = pod_watch(api, cache)
    assert watch.relist() == "41"
    assert api.queries[1]["continue"] == "next-page"  # the second page asked for where the first ended
    assert cache.delivered == [("a", True), ("b", True), ("c", True)]
    assert cache.pods["a"] == reference(api_pod("a", "5"))
    cache.delivered.clear()
    assert watch.watch("41") == "46"
    assert cache.delivered == [("b", True), ("c", False), ("d", True)]
    assert cache.pods["b"]["status"]["containerStatuses"] == [{"name": "c", "ready": False, "restartCount": 0}]

    api.pages, api.queries = [{"metadata": {"resourceVersion": "50"}, "items": [api_pod("a", "47")]}], []
    cache.delivered.clear()
    watch.relist()  # listed again: what is gone is delivered as deleted
    assert sorted(cache.delivered) == [("b", False), ("d", False)]


def test_an_error_event_ends_the_watch_for_a_new_listing() -> None:
    cache = Pods()
    api = Api([], [
        {"type": "ADDED", "object": api_pod("a", "5")},
        {"type": "ERROR", "object": {"kind": "Status", "status": "Failure", "code": 410,
                                     "message": "too old resource version: 3 (4)", "reason": "Expired"}},
        {"type": "ADDED", "object": api_pod("b", "6")},
    ])  # fmt: skip
    assert pod_watch(api, cache).watch("3") is None
    assert cache.delivered == [("a", True)]
