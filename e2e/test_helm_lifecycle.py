"""End-to-end: Helm installs as admins run them, against the local cluster.

`helm install --atomic` of the previous chart version, then, while the operator runs and the ClusterPolicy is
ready on GPU nodes, `helm upgrade` to this chart and `helm rollback`: the ClusterPolicy (uid, generation, spec),
the GPU nodes' labels and the operand DaemonSets stay as they were, and the operator writes nothing. An atomic
install that cannot become ready within --timeout is rolled back and leaves nothing of the release behind.

The previous chart version is the chart as committed before Chart.yaml's version last changed (read from this
repository's git history). A chart change that would touch a running cluster on upgrade fails here: either make
it not touch it, or say so in the chart's upgrade notes and change this test.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.localcluster import OPERATOR_USER, LocalCluster, audit_time
from e2e.cluster.nodes import create_nodes, delete_nodes, make_node
from e2e.kube import Kube, create_namespace, node_ready, wait_for
from e2e.operator_process import OperatorProcess
from e2e.simulator import NodeSimulator
from e2e.test_helm import (
    CHART,
    CRD,
    NS,
    NVSM_BY_MIG_MANAGER,
    POLICY,
    RELEASE,
    Tools,
    _release_free,
    install_crds,
    revision,
)
from e2e.test_helm import tools as tools  # noqa: F401  (the module fixture, shared)
from gpu_operator.status_writer import PROGRESS_INTERVAL_S

REPO = Path(__file__).resolve().parents[1]
CHART_YAML = "charts/gpu-operator/Chart.yaml"
WORKER = "life-cpu-0"
GPU_NODES = {"life-h100-0": "h100x8", "life-l4-0": "l4x1"}
DAEMONSETS = f"/apis/apps/v1/namespaces/{NS}/daemonsets"
# Defaults changed in chart 0.3.0 that reach the ClusterPolicy (charts/gpu-operator/README.md, "Upgrading"):
# the upgrade pins the previous ones, as that note tells admins to, so it leaves the running cluster alone.
PREVIOUS_DEFAULTS = ("cdi.enabled=false", "cdi.default=false", "dcgmExporter.serviceMonitor.enabled=false",
                     "dcgmExporter.serviceMonitor.scrapeTimeout=null",
                     "operator.metrics.serviceMonitor.enabled=false")  # fmt: skip


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=60)


def _version(chart_yaml: str) -> str:
    match = re.search(r"(?m)^version:\s*(\S+)", chart_yaml)
    assert match, "Chart.yaml has no version"
    return match.group(1).strip("\"'")


def previous_chart(dest: Path) -> tuple[Path, str]:
    """The chart as committed at the newest commit whose Chart.yaml has another version than the working tree's."""
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("the previous chart version comes from this repository's git history (not a git checkout)")
    current = _version((REPO / CHART_YAML).read_text())
    commits = _git("log", "--format=%H", "--", CHART_YAML).stdout.decode().split()
    for commit in commits:
        shown = _git("show", f"{commit}:{CHART_YAML}")
        if shown.returncode == 0 and _version(shown.stdout.decode()) != current:
            archive = _git("archive", "--format=tar", commit, "charts/gpu-operator")
            assert archive.returncode == 0, archive.stderr.decode()
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                    tar.extractall(dest, filter="data")
                else:
                    tar.extractall(dest)  # noqa: S202  (our own repository's archive)
            return dest / "charts" / "gpu-operator", _version(shown.stdout.decode())
    pytest.skip(f"no commit has a chart version other than {current} (shallow clone?)")


@pytest.fixture(scope="module")
def prepared(cluster: LocalCluster, kube: Kube, tools: Tools) -> Iterator[None]:  # noqa: F811
    crd_before = kube.get_or_none(CRD) is not None
    _release_free(kube, tools)
    create_namespace(kube, NS)
    create_nodes(kube.api, [make_node(WORKER, "cpu")])
    wait_for(lambda: node_ready(kube.get(f"/api/v1/nodes/{WORKER}")), 60, message=f"node {WORKER} Ready")
    try:
        yield
    finally:
        if kube.get_or_none(CRD) is not None:  # no operator runs now to remove its finalizer
            for policy in kube.items("/apis/nvidia.com/v1/clusterpolicies"):
                kube.patch(f"/apis/nvidia.com/v1/clusterpolicies/{policy['metadata']['name']}",
                           {"metadata": {"finalizers": None}})  # fmt: skip
        _release_free(kube, tools)
        delete_nodes(kube.api, [WORKER, *GPU_NODES])
        if crd_before and kube.get_or_none(CRD) is None:
            install_crds(tools)


def release_gone(kube: Kube, tools: Tools) -> list[str]:
    """What of a release named RELEASE is still there (empty when nothing)."""
    left = []
    if tools.helm("status", RELEASE, "-n", NS, check=False).returncode == 0:
        left.append("the release")
    for path in (POLICY, f"/apis/apps/v1/namespaces/{NS}/deployments/gpu-operator",
                 f"/api/v1/namespaces/{NS}/serviceaccounts/gpu-operator",
                 f"/api/v1/namespaces/{NS}/services/gpu-operator-metrics",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpu-operator",
                 "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/gpu-operator",
                 f"/apis/batch/v1/namespaces/{NS}/jobs/gpu-operator-upgrade-crd",
                 f"/api/v1/namespaces/{NS}/serviceaccounts/gpu-operator-upgrade-crd",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpu-operator-upgrade-crd",
                 f"/apis/batch/v1/namespaces/{NS}/jobs/gpu-operator-cleanup",
                 f"/api/v1/namespaces/{NS}/serviceaccounts/gpu-operator-cleanup",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpu-operator-cleanup",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/gpu-operator-cleanup",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/gpu-operator-cleanup"):  # fmt: skip
        if kube.get_or_none(path) is not None:
            left.append(path)
    return left


def test_atomic_install_that_cannot_become_ready_is_rolled_back(prepared: None, kube: Kube, tools: Tools) -> None:
    """The operator asks for more memory than any node has: its pod stays Pending, --atomic uninstalls."""
    install_crds(tools)
    start = time.monotonic()
    out = tools.helm("install", RELEASE, str(CHART), "-n", NS, "--atomic", "--timeout", "20s",
                     "--set", "operator.resources.requests.memory=64Ti",
                     "--set", "operator.resources.limits.memory=64Ti", check=False)  # fmt: skip
    assert out.returncode != 0, out.stdout
    assert "atomic" in out.stderr and "uninstalled" in out.stderr, out.stderr
    assert time.monotonic() - start < 120
    pods = kube.items(f"/api/v1/namespaces/{NS}/pods", labelSelector="app=gpu-operator")
    wait_for(lambda: not release_gone(kube, tools), 60, message="the failed release's objects removed")
    assert not [p for p in pods if p["spec"].get("nodeName")], "the operator pod was never scheduled"
    assert kube.get_or_none(CRD) is not None, "Helm keeps the CRDs it installed from crds/"


def _metric(port: int, name: str) -> float:
    """A metric of the operator's, -1 while it does not serve them yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not served")


def cluster_state(kube: Kube) -> dict[str, Any]:
    """What a chart upgrade must leave alone: the policy's identity and spec, the GPU nodes, the DaemonSets."""
    policy = kube.get(POLICY)
    nodes = {}
    for name in GPU_NODES:
        node = kube.get(f"/api/v1/nodes/{name}")
        nodes[name] = {"labels": node["metadata"].get("labels") or {},
                       "unschedulable": node["spec"].get("unschedulable", False),
                       "taints": node["spec"].get("taints") or []}  # fmt: skip
    daemonsets = {d["metadata"]["name"]: (d["metadata"]["uid"], d["metadata"]["generation"])
                  for d in kube.items(DAEMONSETS)}  # fmt: skip
    return {"policy": (policy["metadata"]["uid"], policy["metadata"]["generation"], policy["spec"]),
            "state": (policy.get("status") or {}).get("state"), "nodes": nodes, "daemonsets": daemonsets}  # fmt: skip


def test_upgrade_from_the_previous_chart_and_rollback_leave_the_cluster_alone(
    prepared: None, cluster: LocalCluster, kube: Kube, tools: Tools, tmp_path: Path
) -> None:
    old_chart, old_version = previous_chart(tmp_path)
    new_version = _version((REPO / CHART_YAML).read_text())
    install_crds(tools)
    out = tools.helm("install", RELEASE, str(old_chart), "-n", NS, "--atomic", "--wait", "--timeout", "120s")
    assert "STATUS: deployed" in out.stdout
    create_nodes(kube.api, [make_node(name, profile) for name, profile in GPU_NODES.items()])
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NS, resync_seconds=5).start()
    op = OperatorProcess(cluster, tmp_path / "operator.log").start()
    try:
        def ready() -> bool:
            policy = kube.get(POLICY)
            status = policy.get("status") or {}
            return status.get("state") == "ready" and status.get("observedGeneration") == policy["metadata"][
                "generation"]  # fmt: skip

        try:
            wait_for(ready, 150, interval=0.5, message="the previous chart's ClusterPolicy ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {kube.get(POLICY).get('status')}\n{op.log_tail()}") from None

        def quiet() -> bool:  # the operator's last write is a few seconds old: its passes have settled
            # Longer than the status writer holds a progress change back (PROGRESS_INTERVAL_S, then a pass): a
            # change held back when the operator stops is written by the next one, after the step.
            writes = cluster.writes(OPERATOR_USER)
            return not writes or time.time() - max(audit_time(e) for e in writes) >= 2 * PROGRESS_INTERVAL_S

        wait_for(quiet, 60, interval=0.5, message="the operator's writes to settle")
        before = cluster_state(kube)
        assert before["state"] == "ready" and len(before["daemonsets"]) >= 5

        def unchanged(step: str, since: float, passes: float) -> None:
            # The operator has looked at the cluster since the step (one more reconciliation), and wrote nothing.
            wait_for(lambda: _metric(op.metrics_port, "gpu_operator_reconciliation_total") > passes,
                     30, interval=0.5, message=f"the operator to reconcile after {step}")  # fmt: skip
            wait_for(quiet, 60, interval=0.5, message=f"the operator's writes to settle after {step}")
            after = cluster_state(kube)
            assert after == before, f"{step} changed the cluster: {json.dumps([before, after], default=str)[:3000]}"
            writes = [f"{e['verb']} {e.get('requestURI')}" for e in cluster.writes(OPERATOR_USER, since=since)]
            assert not writes, f"the operator wrote after {step}: {writes}; status {kube.get(POLICY).get('status')}"
            # Nobody else wrote to the GPU nodes or the DaemonSets either (status updates aside).
            others = [f"{e['user']['username']} {e['verb']} {e.get('requestURI')}"
                      for e in cluster.audit_events()
                      if e.get("verb") in ("update", "patch", "delete") and audit_time(e) >= since
                      and (e.get("objectRef") or {}).get("resource") in ("nodes", "daemonsets")
                      and not (e.get("objectRef") or {}).get("subresource")
                      and (e["objectRef"].get("name") in GPU_NODES or e["objectRef"]["resource"] == "daemonsets")]
            assert not others, f"writes to the GPU nodes or DaemonSets after {step}: {others}"

        # The upgrade replaces the operator (its Deployment's pod template changes): stop ours meanwhile and start
        # a fresh one, as the new pod would.
        since = time.time()
        op.stop()
        pinned = [a for s in PREVIOUS_DEFAULTS for a in ("--set", s)]
        out = tools.helm("upgrade", RELEASE, str(CHART), "-n", NS, "--atomic", "--wait", "--timeout", "120s", *pinned)
        assert "STATUS: deployed" in out.stdout and revision(tools) == 2
        assert kube.get(POLICY)["metadata"]["labels"]["helm.sh/chart"] == f"gpu-operator-{new_version}"
        op.start()
        unchanged(f"helm upgrade {old_version} -> {new_version}", since, 0)

        since = time.time()
        passes = _metric(op.metrics_port, "gpu_operator_reconciliation_total")
        out = tools.helm("rollback", RELEASE, "1", "-n", NS, "--wait", "--timeout", "120s")
        assert "Rollback was a success" in out.stdout and revision(tools) == 3
        assert kube.get(POLICY)["metadata"]["labels"]["helm.sh/chart"] == f"gpu-operator-{old_version}"
        unchanged(f"helm rollback to {old_version}", since, passes)
        history = json.loads(tools.helm("history", RELEASE, "-n", NS, "-o", "json").stdout)
        assert [h["chart"] for h in history] == [f"gpu-operator-{v}" for v in (old_version, new_version, old_version)]

        # What the pre-delete hook does (kwok only fakes its Job): delete the policy while the operator runs, so it
        # removes its finalizer and the node labels; then the release goes.
        kube.delete(POLICY)
        wait_for(lambda: kube.get_or_none(POLICY) is None, 60, message="ClusterPolicy deleted")
        for name in GPU_NODES:
            labels = kube.get(f"/api/v1/nodes/{name}")["metadata"].get("labels") or {}
            assert not [k for k, v in labels.items()
                        if k.startswith("nvidia.com/gpu.deploy.") and (k, v) != NVSM_BY_MIG_MANAGER], labels
        tools.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
    finally:
        op.stop()
        sim.stop()
        delete_nodes(kube.api, list(GPU_NODES))

