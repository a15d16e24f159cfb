"""The node simulator's decisions, without a cluster: the work queue, driver and validator pod statuses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.nodes import make_node
from e2e.kube import condition, pod_running_ready
from e2e.simulator import (
    COMPONENT_LABEL,
    DRIVER,
    DRIVER_CONTAINER,
    VALIDATOR,
    NodeSimulator,
    _NodeQueue,
    driver_version_from_image,
    image_id,
)

NODE = "n1"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[NodeSimulator]:
    """A simulator that is never started (its API address leads nowhere)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }))
    s = NodeSimulator(kubeconfig, namespace="ns", crash_restart_seconds=2.0)
    yield s
    s._kube.close()


def _node() -> dict[str, Any]:
    node = make_node(NODE, "h100x8")
    node["status"]["addresses"] = [{"type": "InternalIP", "address": "10.64.0.9"}]
    return node


def _driver_pod(uid: str = "u1", image: str = "nvcr.io/nvidia/driver:595.91.07-ubuntu22.04") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"driver-{uid}", "namespace": "ns", "uid": uid, "resourceVersion": "1",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "labels": {COMPONENT_LABEL: DRIVER, "controller-revision-hash": "abc123"},
        },
        "spec": {
            "nodeName": NODE,
            "initContainers": [{"name": "k8s-driver-manager", "image": "nvcr.io/nvidia/k8s-driver-manager:v0.9"}],
            "containers": [{"name": DRIVER_CONTAINER, "image": image}],
        },
        "status": {"phase": "Pending"},
    }


def _validator_pod(uid: str = "v1") -> dict[str, Any]:
    image = "nvcr.io/nvidia/gpu-operator:v25.10.0"
    return {
        "metadata": {"name": f"validator-{uid}", "namespace": "ns", "uid": uid, "resourceVersion": "1",
                     "labels": {COMPONENT_LABEL: VALIDATOR}},
        "spec": {
            "nodeName": NODE,
            "initContainers": [{"name": "driver-validation", "image": image},
                               {"name": "toolkit-validation", "image": image}],
            "containers": [{"name": "nvidia-operator-validator", "image": image}],
        },
        "status": {"phase": "Pending"},
    }


def _apply(pod: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """The pod after the simulator's status patch (a merge patch of the status)."""
    if status is not None:
        pod = {**pod, "status": {**(pod.get("status") or {}), **status}}
    return pod


def _ctr(pod: dict[str, Any], name: str = DRIVER_CONTAINER) -> dict[str, Any]:
    return next(c for c in pod["status"]["containerStatuses"] if c["name"] == name)


def test_driver_version_and_image_id() -> None:
    assert driver_version_from_image("nvcr.io/nvidia/driver:600.10.01-ubuntu22.04") == "600.10.01"
    assert driver_version_from_image("localhost:5000/driver") is None
    digest = image_id("nvcr.io/nvidia/driver:595.91.07-ubuntu22.04")
    assert digest.startswith("nvcr.io/nvidia/driver@sha256:") and len(digest.split(":")[-1]) == 64
    assert digest == image_id("nvcr.io/nvidia/driver:595.91.07-ubuntu22.04")
    assert image_id("localhost:5000/driver") .startswith("localhost:5000/driver@sha256:")


def test_queue_keeps_the_earliest_delayed_add() -> None:
    q = _NodeQueue()
    q.add("a", delay=30)
    q.add("a", delay=0.05)
    q.add("a", delay=60)
    assert set(q.pending()) == {"a"} and q.pending()["a"] < 1
    t = time.monotonic()
    assert q.get() == "a"
    assert 0.03 < time.monotonic() - t < 5
    q.done("a")
    assert q.pending() == {} and q.idle()
    q.close()
    assert q.get() is None


def test_driver_pod_ready_at_once_without_delay(sim: NodeSimulator) -> None:
    node, pod = _node(), _driver_pod()
    sim._note_seen(pod)
    status, again = sim._driver_pod_status(node, pod)
    assert status is not None and again is None
    pod = _apply(pod, status)
    assert pod_running_ready(pod)
    ctr = _ctr(pod)
    assert ctr["ready"] is True and ctr["restartCount"] == 0 and "running" in ctr["state"]
    assert ctr["image"] == pod["spec"]["containers"][0]["image"]
    assert ctr["imageID"] == image_id(ctr["image"])
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert pod["status"]["hostIP"] == "10.64.0.9" and pod["status"]["podIP"]
    assert "metadata" not in status  # labels (controller-revision-hash) are never written
    # nothing more to do
    assert sim._driver_pod_status(node, pod) == (None, None)


def test_driver_pod_waits_for_its_delay(sim: NodeSimulator) -> None:
    sim.set_driver_ready_delay(3)
    node, pod = _node(), _driver_pod()
    sim._note_seen(pod)
    seen = sim._seen["u1"].first_seen
    status, again = sim._driver_pod_status(node, pod, now=seen + 1)
    assert status is not None and again == pytest.approx(2, abs=0.01)
    pod = _apply(pod, status)
    assert pod["status"]["phase"] == "Running" and not pod_running_ready(pod)
    assert condition(pod, "Ready") == "False" and condition(pod, "ContainersReady") == "False"
    assert condition(pod, "Initialized") == "True"
    ctr = _ctr(pod)
    assert ctr["ready"] is False and ctr["started"] is False and "running" in ctr["state"]
    ip = pod["status"]["podIP"]
    # still waiting: nothing to write, ask again later
    assert sim._driver_pod_status(node, pod, now=seen + 2.5) == (None, pytest.approx(0.5, abs=0.01))
    status, again = sim._driver_pod_status(node, pod, now=seen + 3.01)
    assert again is None
    pod = _apply(pod, status)
    assert pod_running_ready(pod) and _ctr(pod)["ready"] is True
    assert pod["status"]["podIP"] == ip
    # a shorter delay frees a waiting pod at once
    other = _driver_pod("u2")
    sim._note_seen(other)
    sim.set_driver_ready_delay(0)
    status, again = sim._driver_pod_status(node, other)
    assert again is None and pod_running_ready(_apply(other, status))


def test_driver_pod_already_ready_when_first_seen_stays_ready(sim: NodeSimulator) -> None:
    node, pod = _node(), _driver_pod()
    sim._note_seen(pod)
    pod = _apply(pod, sim._driver_pod_status(node, pod)[0])
    fresh = NodeSimulator.__new__(NodeSimulator)
    fresh.__dict__.update(sim.__dict__)
    fresh._seen = {}
    fresh._driver_ready_delay = 600
    fresh._note_seen(pod)
    assert fresh._driver_pod_status(node, pod) == (None, None)


def test_crash_loop_raises_restart_count_then_recovers(sim: NodeSimulator) -> None:
    node, pod = _node(), _driver_pod()
    sim._note_seen(pod)
    pod = _apply(pod, sim._driver_pod_status(node, pod)[0])
    assert pod_running_ready(pod)
    sim.crash_loop_driver(NODE)
    assert sim.crash_looping() == {NODE}
    t0 = time.monotonic()
    status, again = sim._driver_pod_status(node, pod, now=t0)
    assert again == pytest.approx(2.0, abs=0.01)
    pod = _apply(pod, status)
    assert pod["status"]["phase"] == "Running" and not pod_running_ready(pod)
    ctr = _ctr(pod)
    assert ctr["ready"] is False and ctr["restartCount"] == 1
    assert ctr["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert ctr["lastState"]["terminated"]["exitCode"] == 1
    status, again = sim._driver_pod_status(node, pod, now=t0 + 4.5)
    assert again == pytest.approx(1.5, abs=0.01)
    pod = _apply(pod, status)
    assert _ctr(pod)["restartCount"] == 3
    assert sim._driver_pod_status(node, pod, now=t0 + 5)[0] is None  # same count: nothing to write
    # the cached pod may lag behind the last write; the count never goes back
    sim.crash_loop_driver(NODE, on=False)
    stale = _apply(pod, {"containerStatuses": [{**_ctr(pod), "restartCount": 2}]})
    status, again = sim._driver_pod_status(node, stale, now=t0 + 6)
    assert again is None
    pod = _apply(pod, status)
    assert pod_running_ready(pod)
    ctr = _ctr(pod)
    assert ctr["ready"] is True and ctr["restartCount"] == 3 and "running" in ctr["state"]
    assert "lastState" in ctr


def test_crash_loop_applies_to_a_new_pod_on_the_node(sim: NodeSimulator) -> None:
    sim.set_driver_ready_delay(5)
    sim.crash_loop_driver(NODE)
    node, pod = _node(), _driver_pod("u9")
    sim._note_seen(pod)
    status, _ = sim._driver_pod_status(node, pod)
    pod = _apply(pod, status)
    assert _ctr(pod)["restartCount"] == 1 and not pod_running_ready(pod)
    sim.crash_loop_driver(NODE, on=False)
    # back to the delay counted from the pod's creation
    status, again = sim._driver_pod_status(node, pod)
    assert again is not None and 0 < again <= 5
    assert not pod_running_ready(_apply(pod, status))


def test_validator_follows_the_driver(sim: NodeSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    node, driver, validator = _node(), _driver_pod(), _validator_pod()
    sim.set_driver_ready_delay(3)
    sim._note_seen(driver)
    driver = _apply(driver, sim._driver_pod_status(node, driver)[0])  # starting, not ready
    status, again = sim._validator_pod_status(node, validator, [driver])
    assert again is None
    validator = _apply(validator, status)
    assert validator["status"]["phase"] == "Running" and not pod_running_ready(validator)
    assert condition(validator, "Initialized") == "False"
    inits = {c["name"]: c for c in validator["status"]["initContainerStatuses"]}
    assert "running" in inits["driver-validation"]["state"] and not inits["driver-validation"]["ready"]
    assert inits["toolkit-validation"]["state"]["waiting"]["reason"] == "PodInitializing"

    sim.set_driver_ready_delay(0)
    driver = _apply(driver, sim._driver_pod_status(node, driver)[0])
    validator = _apply(validator, sim._validator_pod_status(node, validator, [driver])[0])
    assert pod_running_ready(validator)
    assert sim._validator_pod_status(node, validator, [driver]) == (None, None)

    # the driver pod is being deleted, or gone while its DaemonSet is still there: not ready
    deleting = {**driver, "metadata": {**driver["metadata"], "deletionTimestamp": "2030-01-01T00:00:00Z"}}
    monkeypatch.setattr(sim, "_driver_expected", lambda node: True)
    for drivers in ([deleting], []):
        status, again = sim._validator_pod_status(node, validator, drivers)
        assert again is not None and not pod_running_ready(_apply(validator, status))
    # no driver DaemonSet for the node (driver disabled or opted out): the host's driver counts
    monkeypatch.setattr(sim, "_driver_expected", lambda node: False)
    assert sim._validator_pod_status(node, validator, []) == (None, None)
