"""The typed decoding of pod and node events (wire.py): the same projections as from the parsed objects, and the
watch around the pods' (the node watch's is in test_nodewatch.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from sys import intern
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from gpu_operator import wire
from gpu_operator.apply import foreign_write_after_ours, labels_of
from gpu_operator.nodes import NFD_PREFIX, UPGRADE_ANNOTATION_PREFIX, NodeFacts
from gpu_operator.nodewatch import Watch
from gpu_operator.observe import key_of, pod_projection, project_pod, revision_projection
from gpu_operator.readiness import daemon_node_count, daemonset_ready, is_unready, pod_ready
from gpu_operator.states.base import COMPONENT, STATE_LABEL

CODEC = wire.Codec(wire.Pod)
NODE_CODEC = wire.Codec(wire.Node)


def line(obj: Any) -> bytes:
    """JSON the way the API server writes it: compact, one line."""
    return json.dumps(obj, separators=(",", ":")).encode()


def reference(pod: dict[str, Any]) -> dict[str, Any]:
    """The projection written out from the parsed pod, field by field (the pod watch's before wire.py)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "DaemonSet"), {})
    keep = ("controller-revision-hash", STATE_LABEL, COMPONENT)
    inits = [
        {"name": c.get("name") or "", "ready": False, "restartCount": c.get("restartCount", 0),
         **({"state": {"waiting": {"reason": why}}} if (why := ((c.get("state") or {}).get("waiting") or {})
                                                          .get("reason")) else {}), **_last_run(c)}
        for c in status.get("initContainerStatuses") or [] if not c.get("ready")
    ]  # fmt: skip
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in keep},
            "ownerUid": owner.get("uid", ""),
            **({"deletionTimestamp": meta["deletionTimestamp"]} if meta.get("deletionTimestamp") else {}),
        },
        "node": (pod.get("spec") or {}).get("nodeName", ""),
        "owner": owner.get("name", ""),
        "status": {
            "phase": status.get("phase"),
            "containerStatuses": [
                {"name": c.get("name") or "", "ready": bool(c.get("ready")), "restartCount": c.get("restartCount", 0),
                 **_last_run(c)}
                for c in status.get("containerStatuses") or []
            ],
            **({"initContainerStatuses": inits} if inits else {}),
        },
        "ready": status.get("phase") == "Running" and bool(status.get("containerStatuses"))
        and all(c.get("ready") for c in status["containerStatuses"])
        and all(c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"),
    }


def _last_run(c: dict[str, Any]) -> dict[str, Any]:
    """How a container that has restarted last ended, as the projection keeps it."""
    last = (c.get("lastState") or {}).get("terminated")
    if c.get("restartCount", 0) > 0 and last is not None:
        return {"lastTerminated": (last.get("reason") or "", last.get("exitCode"))}
    return {}


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
    return _override(pod, over)


def test_an_api_servers_pod_projects_to_the_fields_the_operator_reads() -> None:
    pod = api_pod(metadata__deletionTimestamp="2026-12-01T11:00:00Z")
    event = CODEC.decode_event(line({"type": "MODIFIED", "object": pod}))
    assert event.type == "MODIFIED" and event.object is not None
    expected = {
        "metadata": {
            "name": "nvidia-driver-daemonset-x1",
            "labels": {"controller-revision-hash": "6f7c", STATE_LABEL: "state-driver"},
            "ownerUid": "9a",
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


def test_a_pod_on_a_node_gone_notready_is_unready_and_its_daemonset_not_ready() -> None:
    """The node lifecycle controller (MarkPodsNotReady) sets only the Ready condition of a NotReady node's pods
    False: phase Running and containerStatuses[].ready stay as the kubelet last wrote them, and daemon pods tolerate
    the node's NoExecute taints, so they stay so while the node is down. The projection kept no pod condition and
    read such a pod ready, so `_pods_say_ready` overrode the controller's numberUnavailable (REFERENCE §2: not
    ready) and the state read ready with a GPU node down. Now the Ready condition, where the pod has one, counts."""
    down = api_pod(status__conditions=[{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"},
                                       {"type": "ContainersReady", "status": "True"}])  # fmt: skip
    assert not project_pod(CODEC.decode_event(line({"type": "MODIFIED", "object": down})).object)["ready"]  # type: ignore[arg-type]
    pods = [pod_projection(_override(down, {"metadata__name": "p0", "spec__nodeName": "gpu-0"}))] + [
        pod_projection(api_pod(f"p{i}", spec__nodeName=f"gpu-{i}")) for i in (1, 2)
    ]
    assert [is_unready(p) for p in pods] == [True, False, False]
    revisions = [revision_projection({
        "metadata": {"name": "nvidia-driver-daemonset-6f7c", "labels": {"controller-revision-hash": "6f7c"},
                     "ownerReferences": [{"kind": "DaemonSet", "name": "nvidia-driver-daemonset"}]},
        "revision": 1,
    })]  # fmt: skip
    ds = {
        "kind": "DaemonSet",
        "metadata": {"name": "nvidia-driver-daemonset", "generation": 1},
        "spec": {"updateStrategy": {"type": "RollingUpdate"}},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                   "updatedNumberScheduled": 3, "numberReady": 2, "numberAvailable": 2, "numberUnavailable": 1},
    }  # fmt: skip
    assert daemonset_ready(ds, pods, revisions) == (
        False, "nvidia-driver-daemonset: 1 of 3 pods unavailable (not ready on gpu-0)"
    )  # fmt: skip


def test_init_containers_not_ready_are_kept_with_their_restarts_and_waiting_reason() -> None:
    """A driver pod whose k8s-driver-manager init container crash-loops (Init:CrashLoopBackOff) fails a driver
    upgrade (upgrade.model.crash_loop). The projection used to drop initContainerStatuses, so the planner never saw
    it. Only the init containers not Ready are kept (done ones are Ready): a running pod carries none."""
    inits = [
        {"name": "k8s-driver-manager", "ready": True, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "nvidia-fs-init", "ready": False, "restartCount": 14, "image": "x",
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}},
        {"name": "later", "ready": False, "restartCount": 0, "state": {}},
    ]  # fmt: skip
    pod = api_pod(status__phase="Pending", status__initContainerStatuses=inits)
    expected = [
        {"name": "nvidia-fs-init", "ready": False, "restartCount": 14,
         "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastTerminated": ("Error", 1)},
        {"name": "later", "ready": False, "restartCount": 0},
    ]  # fmt: skip
    assert _projected_both_ways(pod, "initContainerStatuses") == (expected, expected)
    done = api_pod(status__initContainerStatuses=inits[:1])
    assert "initContainerStatuses" not in pod_projection(done)["status"]


def test_containers_are_kept_with_their_waiting_reason() -> None:
    """A driver pod whose image cannot be pulled waits in ImagePullBackOff (restartCount 0): the projection kept
    only name, ready and restarts of the main containers, so the upgrade's reason said only "phase Pending". Their
    waiting reason is kept now, as the init containers'; a running container carries none. Review planner #2."""
    containers = [
        {"name": "nvidia-driver-ctr", "ready": False, "restartCount": 0, "image": "x",
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}},
        {"name": "sidecar", "ready": True, "restartCount": 1, "state": {"running": {"startedAt": "t"}}},
    ]  # fmt: skip
    pod = api_pod(status__phase="Pending", status__containerStatuses=containers)
    expected = [
        {"name": "nvidia-driver-ctr", "ready": False, "restartCount": 0,
         "state": {"waiting": {"reason": "ImagePullBackOff"}}},
        {"name": "sidecar", "ready": True, "restartCount": 1},
    ]  # fmt: skip
    assert _projected_both_ways(pod, "containerStatuses") == (expected, expected)


def test_a_restarted_container_keeps_how_its_last_run_ended() -> None:
    """Review diffS #1: readiness tells a crash loop (last run: Error, exit code 1) from a container restarted by a
    node reboot (Unknown, 255) by how the last run ended; kept only for a container that has restarted, its reason
    interned."""
    containers = [
        {"name": "nvidia-driver-ctr", "ready": False, "restartCount": 1, "state": {"running": {"startedAt": "t"}},
         "lastState": {"terminated": {"exitCode": 255, "reason": "Unknown", "finishedAt": "t"}}},
        {"name": "sidecar", "ready": False, "restartCount": 0, "lastState": {}},
    ]  # fmt: skip
    pod = api_pod(status__containerStatuses=containers)
    expected = [
        {"name": "nvidia-driver-ctr", "ready": False, "restartCount": 1, "lastTerminated": ("Unknown", 255)},
        {"name": "sidecar", "ready": False, "restartCount": 0},
    ]
    decoded, parsed = _projected_both_ways(pod, "containerStatuses")
    assert (decoded, parsed) == (expected, expected)
    assert decoded[0]["lastTerminated"][0] is intern("Unknown")


def _projected_both_ways(pod: dict[str, Any], key: str) -> tuple[Any, Any]:
    """status[key] of the pod as the watch decoder projects it and as a list's pod_projection does."""
    decoded = CODEC.decode_event(line({"type": "MODIFIED", "object": pod})).object
    assert decoded is not None
    return project_pod(decoded)["status"][key], pod_projection(pod)["status"][key]


def test_missing_parts_project_as_before() -> None:
    for pod in (
        api_pod(status=None),
        api_pod(spec=None, metadata__labels=None, metadata__ownerReferences=None),
        api_pod(status__containerStatuses=[{"name": "c"}, {"ready": False}], status__phase=None),
        api_pod(status__conditions=[{"type": "Ready"}, {"status": "False"}]),  # Ready without a status: not ready
        api_pod(status__conditions=None),  # no Ready condition: the containers say it
        api_pod(metadata__ownerReferences=[{"kind": "ReplicaSet", "name": "r"}, {"kind": "DaemonSet", "name": "d"}]),
        {"metadata": {"name": "bare"}},
    ):
        decoded = CODEC.decode_event(line({"type": "ADDED", "object": pod})).object
        assert decoded is not None
        assert project_pod(decoded) == reference(pod) == pod_projection(pod)


names = st.text("abcxyz-.", min_size=1, max_size=12)
label_keys = st.sampled_from(["controller-revision-hash", STATE_LABEL, COMPONENT, "app", "pod-template-generation"])
last_state = st.fixed_dictionaries({}, optional={"terminated": st.fixed_dictionaries({}, optional={
    "reason": st.sampled_from(["Error", "Unknown", "Completed", ""]), "exitCode": st.sampled_from([0, 1, 137, 255]),
})})  # fmt: skip
container = st.fixed_dictionaries(
    {}, optional={"name": names, "ready": st.booleans(), "restartCount": st.integers(0, 50), "image": names,
                  "lastState": last_state},
)  # fmt: skip
pod_condition = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["Ready", "ContainersReady", "PodScheduled", "ready"]),
    "status": st.sampled_from(["True", "False", "Unknown"]),
    "lastTransitionTime": st.just("2026-12-01T10:00:05Z"),
})  # fmt: skip
waiting = st.sampled_from(["CrashLoopBackOff", "PodInitializing", ""]).map(lambda r: {"reason": r} if r else {})
init_container = st.fixed_dictionaries(
    {}, optional={"name": names, "ready": st.booleans(), "restartCount": st.integers(0, 50),
                  "state": st.one_of(st.fixed_dictionaries({"waiting": waiting}),
                                     st.just({"terminated": {"exitCode": 0, "reason": "Completed"}})),
                  "lastState": last_state},
)  # fmt: skip
pods = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries(
        {"name": names, "resourceVersion": st.integers(1, 10**9).map(str)},
        optional={
            "labels": st.dictionaries(label_keys, names, max_size=5),
            "ownerReferences": st.lists(st.fixed_dictionaries(
                {"kind": st.sampled_from(["DaemonSet", "ReplicaSet", "Node"]), "name": names},
                optional={"uid": names}), max_size=2),
            "deletionTimestamp": st.sampled_from(["2026-12-01T00:00:00Z", ""]),
            "annotations": st.dictionaries(names, names, max_size=2),
        })},
    optional={
        "spec": st.fixed_dictionaries({}, optional={"nodeName": names, "hostNetwork": st.booleans()}),
        "status": st.fixed_dictionaries({}, optional={
            "phase": st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]),
            "conditions": st.lists(pod_condition, max_size=3),
            "containerStatuses": st.lists(container, max_size=3),
            "initContainerStatuses": st.lists(init_container, max_size=2),
            "podIP": names,
        }),
    },
)  # fmt: skip


@given(pods)
@example({"metadata": {"name": "a"}, "status": {"phase": "Running"}})  # running without containers: not ready
@example({"metadata": {"name": "a"}, "status": {"phase": "Running", "containerStatuses": [{"ready": True}, {}]}})
@example({"metadata": {"name": "a"}, "status": {"phase": "Running", "containerStatuses": [{"ready": True}],
                                               "conditions": [{"type": "Ready", "status": "False"}]}})
def test_decoded_projection_equals_the_parsed_ones(pod: dict[str, Any]) -> None:
    decoded = CODEC.decode_event(line({"type": "MODIFIED", "object": pod})).object
    assert decoded is not None
    assert project_pod(decoded) == reference(pod) == pod_projection(pod)
    assert pod_ready(project_pod(decoded)) is pod_ready(pod)  # the answer carried equals the one worked out


def test_strings_shared_by_pods_are_interned() -> None:
    a, b = (project_pod(CODEC.decode_event(line({"type": "ADDED", "object": api_pod(n)})).object)  # type: ignore[arg-type]
            for n in ("p1", "p2"))  # fmt: skip
    assert a["node"] is b["node"] is intern("gpu-node-3")
    assert a["owner"] is b["owner"] and a["metadata"]["ownerUid"] is b["metadata"]["ownerUid"]


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


def test_a_pod_turning_unready_and_back_before_the_event_loop_takes_it_stays_ready() -> None:
    """Each event was judged against the cache, which deliveries reach later (runtime.Inbox, after GATHER_S): a pod
    unready then ready again within that time had its return to ready dropped (equal to the old entry) and stayed
    unready in the cache until it changed again."""
    cache, waiting = Pods(), []
    cache.deliver("b", reference(api_pod("b", "6")))
    unready = api_pod("b", "7", status__containerStatuses=[{"name": "c", "ready": False}])
    api = Api([], [{"type": "MODIFIED", "object": unready}, {"type": "MODIFIED", "object": api_pod("b", "8")}])
    watch = Watch(api, "/api/v1/namespaces/gpu-operator/pods", project_pod, cache.pods.get,  # type: ignore[arg-type]
                  lambda name, pod: waiting.append((name, pod)), codec=CODEC)  # fmt: skip
    watch.watch("6")
    for name, pod in waiting:  # the event loop takes them
        cache.deliver(name, pod)
    assert cache.pods["b"]["ready"]


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


# Nodes: NodeFacts.from_wire of a decoded Node equals NodeFacts.from_node of the parsed one.

NFD_LABELS = {
    **{f"{NFD_PREFIX}cpu-cpuid.{f}": "true" for f in ("ADX", "AESNI", "AVX", "AVX2", "AVX512F", "FMA3", "SHA", "VMX")},
    **{f"{NFD_PREFIX}cpu-{k}": v for k, v in (("hardware_multithreading", "true"), ("model.family", "6"),
                                              ("model.id", "143"), ("model.vendor_id", "Intel"))},
    **{f"{NFD_PREFIX}kernel-config.{k}": "true" for k in ("NO_HZ", "NO_HZ_IDLE", "PREEMPT", "IOMMU")},
    f"{NFD_PREFIX}kernel-version.full": "6.8.0-45-generic",
    f"{NFD_PREFIX}kernel-version.major": "6",
    f"{NFD_PREFIX}kernel-version.minor": "8",
    f"{NFD_PREFIX}kernel-version.revision": "0",
    f"{NFD_PREFIX}memory-numa": "true",
    f"{NFD_PREFIX}pci-0302_10de.present": "true",
    f"{NFD_PREFIX}pci-10de.present": "true",
    f"{NFD_PREFIX}pci-1af4.present": "true",
    f"{NFD_PREFIX}pci-8086.present": "true",
    f"{NFD_PREFIX}storage-nonrotationaldisk": "true",
    f"{NFD_PREFIX}system-os_release.ID": "ubuntu",
    f"{NFD_PREFIX}system-os_release.VERSION_ID": "24.04",
    f"{NFD_PREFIX}system-os_release.VERSION_ID.major": "24",
    f"{NFD_PREFIX}system-os_release.VERSION_ID.minor": "04",
}  # fmt: skip


def api_node(name: str = "gpu-node-3", rv: str = "583", **over: Any) -> dict[str, Any]:
    """A GPU node as the API server sends it: NFD's and GFD's labels, managedFields, the whole status."""
    condition = {"lastHeartbeatTime": "2026-12-01T16:58:31Z", "lastTransitionTime": "2026-12-01T16:00:00Z"}
    node: dict[str, Any] = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "a40ea428-88f8-4640-99aa-4db1dac545dc",
            "resourceVersion": rv,
            "creationTimestamp": "2026-12-01T16:00:00Z",
            "labels": {
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "a2-ultragpu-4g", **NFD_LABELS,
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.count": "4", "nvidia.com/mig.capable": "true", "nvidia.com/gpu.deploy.driver": "true",
                "nvidia.com/gpu.deploy.device-plugin": "true", "nvidia.com/gfd.timestamp": "1796144325",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "nfd.node.kubernetes.io/feature-labels": ",".join(k[len(NFD_PREFIX):] for k in NFD_LABELS),
                "nvidia.com/gpu-driver-upgrade-enabled": "true",
                "nvidia.com/gpu-driver-upgrade-state": "upgrade-done",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": [
                {"manager": manager, "operation": "Update", "apiVersion": "v1", "time": "2026-12-01T16:58:31Z",
                 "fieldsType": "FieldsV1", **({"subresource": "status"} if manager == "kubelet" else {}),
                 "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in NFD_LABELS}},
                              "f:status": {"f:conditions": {'k:{"type":"Ready"}': {"f:lastHeartbeatTime": {}}}}}}
                for manager in ("kubelet", "nfd-master", "gpu-operator")
            ],
        },
        "spec": {"podCIDR": "10.244.3.0/24", "providerID": "kwok://" + name},
        "status": {
            "capacity": {"cpu": "96", "memory": "680Gi", "nvidia.com/gpu": "4", "pods": "110"},
            "allocatable": {"cpu": "96", "memory": "680Gi", "nvidia.com/gpu": "4", "pods": "110"},
            "conditions": [
                {**condition, "type": t, "status": s, "reason": "Kubelet" + t, "message": "kubelet says so"}
                for t, s in (("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False"),
                             ("NetworkUnavailable", "False"), ("Ready", "True"))
            ],
            "addresses": [{"type": "InternalIP", "address": "10.64.0.3"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": "containerd://1.7.27",
                         "kernelVersion": "6.8.0-45-generic", "kubeletVersion": "v1.31.2",
                         "osImage": "Ubuntu 24.04.1 LTS", "operatingSystem": "linux"},
            "images": [{"names": [f"nvcr.io/nvidia/image-{i}@sha256:{i:064x}", f"nvcr.io/nvidia/image-{i}:v1"],
                        "sizeBytes": 10**8 + i} for i in range(8)],
        },
    }  # fmt: skip
    return _override(node, over)


def decoded_node(obj: dict[str, Any], kind: str = "MODIFIED") -> wire.Node:
    event = NODE_CODEC.decode_event(line({"type": kind, "object": obj}))
    assert event.type == kind and event.object is not None
    return event.object


def test_an_api_servers_node_decodes_to_the_facts_the_operator_keeps() -> None:
    node = api_node(spec__unschedulable=True)
    facts = NodeFacts.from_wire(decoded_node(node))
    # Of NFD's labels those the operator reads (the NVIDIA PCI ones, the OS, the kernel); every other label.
    kept = ("pci-0302_10de.present", "pci-10de.present", "system-os_release.ID", "system-os_release.VERSION_ID",
            "kernel-version.full")  # fmt: skip
    labels = node["metadata"]["labels"]
    relevant = {k: v for k, v in labels.items() if not k.startswith(NFD_PREFIX) or k[len(NFD_PREFIX):] in kept}
    assert len(relevant) == len(labels) - len(NFD_LABELS) + len(kept)
    assert facts == NodeFacts(
        name="gpu-node-3",
        labels=relevant,
        annotations={
            UPGRADE_ANNOTATION_PREFIX + "-enabled": "true", UPGRADE_ANNOTATION_PREFIX + "-state": "upgrade-done",
        },
        unschedulable=True,
        ready=True,
        runtime="containerd",
        has_nfd=True,
    )
    assert facts.resource_version == 583
    assert NFD_PREFIX + "cpu-cpuid.AVX" not in facts.labels and NFD_PREFIX + "pci-10de.present" in facts.labels
    parsed = NodeFacts.from_node(node)
    assert facts == parsed and facts.resource_version == parsed.resource_version


def test_missing_parts_of_a_node_decode_to_the_same_facts() -> None:
    for node in (
        api_node(status=None, spec=None),
        api_node(metadata__labels=None, metadata__annotations=None, metadata__resourceVersion=None),
        api_node(status__conditions=[{"type": "Ready"}, {"status": "True"}], status__nodeInfo={}),
        api_node(status__conditions=[{"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}]),
        api_node(metadata__resourceVersion="not-a-number", spec__unschedulable=False),
        # Only NFD labels the operator drops: has_nfd is still true, the labels kept are none of them.
        api_node(metadata__labels={NFD_PREFIX + "cpu-cpuid.AVX": "true"}),
        {"metadata": {"name": "bare"}},
        {},
    ):
        facts, parsed = NodeFacts.from_wire(decoded_node(node)), NodeFacts.from_node(node)
        assert facts == parsed and facts.resource_version == parsed.resource_version
    assert NodeFacts.from_wire(decoded_node(api_node(metadata__labels={NFD_PREFIX + "cpu-cpuid.AVX": "true"}))).has_nfd


def test_a_node_watch_error_event_decodes_as_a_status() -> None:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
              "reason": "Expired", "message": "too old resource version: 3 (4)"}  # fmt: skip
    obj = decoded_node(status, "ERROR")
    assert obj.status == "Failure" and obj.message == "too old resource version: 3 (4)" and obj.metadata.name == ""
    assert obj.code == 410  # the watch lists again at once on an expiry only


key_text = st.text("ab10de.-_/\u00e9\"", min_size=1, max_size=8)  # JSON escapes too
node_label_keys = st.one_of(
    st.sampled_from([*NFD_LABELS, "kubernetes.io/hostname", "nvidia.com/gpu.present", "nvidia.com/mig.config",
                     "nvidia.com/gpu.deploy.driver", NFD_PREFIX + "pci-0300_10de.present", "example.com/pool"]),
    st.tuples(st.sampled_from([NFD_PREFIX, NFD_PREFIX + "pci-", "nvidia.com/", ""]), key_text).map("".join),
)  # fmt: skip
annotation_keys = st.one_of(
    st.sampled_from([UPGRADE_ANNOTATION_PREFIX + "-state", UPGRADE_ANNOTATION_PREFIX + "-enabled",
                     UPGRADE_ANNOTATION_PREFIX + ".requested", "nvidia.com/other", "node.alpha.kubernetes.io/ttl"]),
    key_text,
)  # fmt: skip
label_values = st.one_of(st.sampled_from(["true", "false", "", "ubuntu", "24.04"]), key_text)
conditions = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.none(), st.sampled_from(["Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "ready"])),
    "status": st.one_of(st.none(), st.sampled_from(["True", "False", "Unknown", "true"])),
    "lastHeartbeatTime": st.just("2026-12-01T16:58:31Z"),
    "reason": names,
})  # fmt: skip
runtimes = st.one_of(
    st.none(), st.sampled_from(["containerd://1.7.22", "cri-o://1.30.4", "docker://24.0.7", "containerd", "", "a:b:c"])
)
nodes = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries(
        {"name": names},
        optional={
            "resourceVersion": st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["", "abc", "-3"])),
            "labels": st.one_of(st.none(), st.dictionaries(node_label_keys, label_values, max_size=8)),
            "annotations": st.one_of(st.none(), st.dictionaries(annotation_keys, label_values, max_size=4)),
            "uid": names,
            "managedFields": st.lists(st.fixed_dictionaries({"manager": names, "time": names}), max_size=2),
        })},
    optional={
        "kind": st.just("Node"),
        "spec": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "unschedulable": st.one_of(st.none(), st.booleans()),
            "taints": st.lists(st.fixed_dictionaries({"key": names, "effect": st.just("NoSchedule")}), max_size=2),
        })),
        "status": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "conditions": st.one_of(st.none(), st.lists(conditions, max_size=6)),
            "nodeInfo": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
                "containerRuntimeVersion": runtimes, "kubeletVersion": names})),
            "capacity": st.dictionaries(names, names, max_size=3),
            "images": st.lists(st.fixed_dictionaries({"names": st.lists(names, max_size=2),
                                                      "sizeBytes": st.integers(0, 10**10)}), max_size=2),
        })),
    },
)  # fmt: skip


@given(nodes)
@example({"metadata": {"name": "a", "labels": {NFD_PREFIX + "cpu-cpuid.AVX": "true"}}})  # has_nfd over all labels
@example({"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready", "status": "False"},
                                                               {"type": "Ready", "status": "True"}]}})
def test_facts_of_a_decoded_node_equal_the_parsed_ones(node: dict[str, Any]) -> None:
    facts, parsed = NodeFacts.from_wire(decoded_node(node)), NodeFacts.from_node(json.loads(line(node)))
    assert facts == parsed
    assert facts.resource_version == parsed.resource_version
    # Interned as from_node's are: 1,000 nodes share the strings of one.
    assert all(k is intern(k) and v is intern(v) for k, v in (*facts.labels.items(), *facts.annotations.items()))
    assert facts.runtime is intern(facts.runtime)


def test_strings_shared_by_nodes_are_interned() -> None:
    a, b = (NodeFacts.from_wire(decoded_node(api_node(n))) for n in ("n1", "n2"))
    assert a.runtime is b.runtime
    for key, value in a.labels.items():
        if key != "kubernetes.io/hostname":
            other_key = next(k for k in b.labels if k == key)
            assert other_key is key and b.labels[key] is value


def _override(obj: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`obj` with `over`'s values set at their paths (`status__phase`); None removes the field."""
    for path, value in over.items():
        *parents, leaf = path.split("__")
        target = obj
        for p in parents:
            target = target.setdefault(p, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return obj


# Our DaemonSets (the daemonset watch): kept without their templates' containers and volumes.

GOLDEN = Path(__file__).resolve().parent / "golden"


def api_daemonsets() -> list[dict[str, Any]]:
    """Every rendered DaemonSet of the all-on scenario as the API server sends it: managedFields with their
    fieldsV1, uid, generation and a status of the controller's counts."""
    out = []
    for path in sorted((GOLDEN / "all-on").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "DaemonSet":
                continue
            doc["metadata"].update(uid="u-1", resourceVersion="88", generation=3,
                                   creationTimestamp="2026-12-01T10:00:00Z", managedFields=[
                {"manager": "gpu-operator", "operation": "Apply", "apiVersion": "apps/v1",
                 "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}},
                {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-12-01T10:05:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                 "time": "2026-12-01T10:06:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}},
                 "subresource": "status"},
            ])  # fmt: skip
            doc["status"] = {"currentNumberScheduled": 2, "desiredNumberScheduled": 2, "numberAvailable": 1,
                             "numberMisscheduled": 0, "numberReady": 1, "numberUnavailable": 1,
                             "observedGeneration": 3, "updatedNumberScheduled": 2}  # fmt: skip
            out.append(doc)
    return out


def test_a_cached_daemonset_reads_as_the_whole_one_where_the_operator_reads_it() -> None:
    """Readiness (counts, strategy, where its pods go), the apply (hash, generation, who wrote after us) and the
    prune (labels, owner) decide the same on the cached DaemonSet as on the whole one; the containers and volumes
    of its template, and managedFields' fieldsV1, are not kept."""
    codec = wire.Codec(wire.DaemonSet)
    whole = api_daemonsets()
    assert len(whole) >= 8
    selected = {k: v for ds in whole for k, v in (ds["spec"]["template"]["spec"].get("nodeSelector") or {}).items()}
    gpu = NodeFacts.from_node({"metadata": {"name": "g1", "labels": selected}})
    cpu = NodeFacts.from_node({"metadata": {"name": "c1", "labels": {}}})
    assert selected and gpu.labels == selected
    kept_bytes = 0
    for ds in whole:
        event = codec.decode_event(line({"type": "MODIFIED", "object": ds}))
        kept = wire.daemonset_dict(event.object)
        name = ds["metadata"]["name"]
        assert kept["kind"] == "DaemonSet" and kept["apiVersion"] == "apps/v1", name
        assert kept["metadata"] == {**ds["metadata"], "managedFields": [
            {k: v for k, v in e.items() if k not in ("fieldsType", "fieldsV1")} for e in ds["metadata"]["managedFields"]
        ]}, name  # fmt: skip
        assert kept["status"] == ds["status"] and key_of(kept) == key_of(ds), name
        template = kept["spec"]["template"]
        assert template["metadata"] == ds["spec"]["template"]["metadata"], name
        assert set(template["spec"]) <= {"nodeSelector", "affinity", "tolerations", "hostNetwork"}, name
        assert {k: v for k, v in kept["spec"].items() if k != "template"} == {
            k: v for k, v in ds["spec"].items() if k != "template"
        }, name  # fmt: skip
        for nodes in ([gpu], [gpu, cpu], []):
            assert daemonset_ready(kept, [], [], [], nodes) == daemonset_ready(ds, [], [], [], nodes), name
            assert daemon_node_count(template["spec"], nodes) == daemon_node_count(ds["spec"]["template"]["spec"],
                                                                                   nodes), name  # fmt: skip
        assert foreign_write_after_ours(kept["metadata"]["managedFields"]), name  # kubectl-edit came after us
        assert labels_of(kept) == labels_of(ds), name
        kept_bytes += len(json.dumps(kept))
    assert kept_bytes < sum(len(json.dumps(ds)) for ds in whole) / 2


def test_a_daemonset_watch_error_event_decodes_as_a_status() -> None:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
              "reason": "Expired", "message": "too old resource version: 3 (4)"}  # fmt: skip
    obj = wire.Codec(wire.DaemonSet).decode_event(line({"type": "ERROR", "object": status})).object
    assert obj is not None and obj.status == "Failure" and obj.message == "too old resource version: 3 (4)"
    assert obj.code == 410
