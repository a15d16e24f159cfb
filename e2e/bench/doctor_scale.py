"""`gpu-operator doctor` on a converged cluster of many fake GPU nodes (prints numbers, asserts nothing).

    python -m e2e.bench.doctor_scale [--nodes 1000] [--workloads 200] [--runs 3]

Much quicker than `operator_scale`, which converges through the node simulator: here the cluster is put
straight into the state a converged one has. The nodes carry what GPU feature discovery and the device plugin
publish (GFD labels, nvidia.com/gpu) and upgrade-done; the operator's own reconcile passes (in this process,
as admin) label them and apply the operand objects for the default sample policy; then, with the DaemonSet
controller off (and the node lifecycle controller, so a heartbeat late on a loaded machine changes nothing),
this script creates each DaemonSet's pods, bound to their nodes, Running and Ready, with the status a kubelet
writes (about 6-7 per node), and writes the DaemonSets' status; a last pass writes the ClusterPolicy's. Then
`--workloads` running one-GPU pods (scheduled, run by kwok) and one pod too big for any node (Pending, one
finding) are added, and doctor is timed `--runs` times under the chart's read-only doctor role: reads
(`gather`) and analysis (`diagnose`) apart, median of the runs; and the command once, start-up included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.localcluster import LocalCluster, temporary_cluster
from e2e.cluster.nodes import PROFILES, create_nodes, gfd_labels, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, REPO, install_crds_and_rbac, policy_from_sample
from gpu_operator.doctor import diagnose, gather
from gpu_operator.doctor.common import UPGRADE_STATE
from gpu_operator.doctor.sched import selector_ok
from gpu_operator.kube import Kube, path_for
from gpu_operator.observe import observe
from gpu_operator.reconciler import Reconciler

NODE_PROFILES = ("h100x8", "a100x4", "l4x1")
DRIVER = "595.91.07"  # the sample policy's driver, as GFD would report it
WORKLOAD_NS = "bench-workloads"
DOCTOR_SA = "doctor"


class BenchCluster(LocalCluster):
    """The local cluster without the controllers whose work this benchmark does itself."""

    def _controller_manager_args(self) -> list[str]:
        off = "--controllers=*,-daemonset-controller,-node-lifecycle-controller"
        return [off if a == "--controllers=*" else a for a in super()._controller_manager_args()]


def gpu_node(i: int) -> dict[str, Any]:
    profile = NODE_PROFILES[i % len(NODE_PROFILES)]
    node = make_node(f"gpu-{i:04d}", profile, os="ubuntu22.04" if i % 2 else "ubuntu24.04")
    node["metadata"]["labels"].update(gfd_labels(profile, DRIVER))
    node["metadata"]["labels"][UPGRADE_STATE] = "upgrade-done"
    gpus = str(PROFILES[profile].gpu_count)
    node["status"]["capacity"]["nvidia.com/gpu"] = gpus
    node["status"]["allocatable"]["nvidia.com/gpu"] = gpus
    return node


def workload(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": WORKLOAD_NS, "labels": {"app": "bench-train"}},
        "spec": {"containers": [{
            "name": "train", "image": "nvcr.io/nvidia/pytorch:25.01-py3", "command": ["sleep", "infinity"],
            "resources": {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "4", "memory": "32Gi"}}}]},
    }  # fmt: skip


def converge(admin: Kube, passes: int = 4) -> None:
    """The operator's reconcile passes until one writes nothing but status (labels, operand objects)."""
    reconciler = Reconciler(admin, NAMESPACE)
    for i in range(passes):
        t0 = time.monotonic()
        out = reconciler.reconcile(observe(admin, NAMESPACE))
        print(f"reconcile pass {i + 1}: {out.writes} writes in {time.monotonic() - t0:.1f} s", flush=True)
        if out.writes <= 1:
            return


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status(spec: dict[str, Any], node_ip: str, pod_ip: str) -> dict[str, Any]:
    """What a kubelet reports for a started pod whose init containers completed."""
    now = _now()

    def status(c: dict[str, Any], init: bool) -> dict[str, Any]:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}} if init \
            else {"running": {"startedAt": now}}  # fmt: skip
        return {"name": c["name"], "image": c.get("image", ""), "imageID": f"{c.get('image', '')}@sha256:{'0' * 64}",
                "containerID": f"containerd://{secrets.token_hex(32)}", "ready": not init, "restartCount": 0,
                "started": not init, "state": state}  # fmt: skip

    return {
        "phase": "Running",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                       for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                 "PodScheduled")],  # fmt: skip
        "hostIP": node_ip, "hostIPs": [{"ip": node_ip}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": now, "qosClass": "BestEffort",
        "initContainerStatuses": [status(c, True) for c in spec.get("initContainers") or []],
        "containerStatuses": [status(c, False) for c in spec.get("containers") or []],
    }  # fmt: skip


def operand_pods(admin: Kube, nodes: list[dict[str, Any]], workers: int = 16) -> int:
    """Each operand DaemonSet's pods on the nodes it selects, Running and Ready, and its status to match."""
    jobs = []
    for n, ds in enumerate(admin.list("DaemonSet", NAMESPACE)):
        meta, template, selector = ds["metadata"], ds["spec"]["template"], ds["spec"]["selector"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        admin.create({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": f"{meta['name']}-{digest}", "namespace": NAMESPACE,
                         "labels": {**selector.get("matchLabels", {}), "controller-revision-hash": digest},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "data": {"spec": {"template": {**template, "$patch": "replace"}}}, "revision": 1,
        })  # fmt: skip
        probe = {"spec": template["spec"]}
        on = [x for x in nodes if selector_ok(probe, x["metadata"].get("labels") or {}, x["metadata"]["name"])]
        for i, node in enumerate(on):
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{i:05d}", "namespace": NAMESPACE,
                    "labels": {**template["metadata"].get("labels", {}), "controller-revision-hash": digest,
                               "pod-template-generation": "1"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": meta["name"],
                                         "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
                },
                "spec": {**template["spec"], "nodeName": node["metadata"]["name"]},
            }  # fmt: skip
            jobs.append((pod, f"10.64.{n}.{i % 250}", f"10.{128 + n}.{i // 250}.{i % 250}"))
        status = {"desiredNumberScheduled": len(on), "currentNumberScheduled": len(on), "numberReady": len(on),
                  "updatedNumberScheduled": len(on), "numberAvailable": len(on), "numberMisscheduled": 0,
                  "observedGeneration": meta["generation"]}  # fmt: skip
        admin.merge_patch("DaemonSet", meta["name"], {"status": status}, NAMESPACE, "status")

    def start(job: tuple[dict[str, Any], str, str]) -> None:
        pod, node_ip, pod_ip = job
        made = admin.create(pod)
        made["status"] = running_status(pod["spec"], node_ip, pod_ip)
        admin.request("PUT", path_for("Pod", made["metadata"]["name"], NAMESPACE, "status"), made)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(start, jobs))
    return len(jobs)


def doctor_kubeconfig(cluster: LocalCluster, admin: Kube, path: Path) -> Path:
    """A kubeconfig for ServiceAccount doctor bound to the chart's read-only doctor roles (as e2e/test_doctor.py)."""
    helm = subprocess.run(["bash", str(REPO / "e2e/cluster/build.sh"), "--print-dir"], check=True,
                          capture_output=True, text=True).stdout.strip() + "/helm"  # fmt: skip
    out = subprocess.run([helm, "template", "gpu-operator", str(REPO / "charts/gpu-operator"), "-n", NAMESPACE,
                          "--kube-version", "1.37.2", "--show-only", "templates/doctor-rbac.yaml",
                          "--set", "doctor.subjects[0].kind=ServiceAccount",
                          "--set", f"doctor.subjects[0].name={DOCTOR_SA}",
                          "--set", f"doctor.subjects[0].namespace={NAMESPACE}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    admin.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DOCTOR_SA, "namespace": NAMESPACE}}
    )
    for doc in yaml.safe_load_all(out):
        if doc:
            admin.apply(doc)
    token = admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{DOCTOR_SA}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 7200}})["status"]["token"]  # fmt: skip
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": DOCTOR_SA, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = DOCTOR_SA
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=200, help="running one-GPU workload pods")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the cluster to converge")
    args = parser.parse_args(argv)

    with temporary_cluster("gpu-operator-doctor-bench-", BenchCluster) as (cluster, tmp):
        admin = Kube.connect(str(cluster.kubeconfig))
        t0 = time.monotonic()
        create_nodes(admin.client, [gpu_node(i) for i in range(args.nodes)])
        # The not-ready taint the API server puts on a new node; the node lifecycle controller is off.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: admin.merge_patch("Node", f"gpu-{i:04d}", {"spec": {"taints": None}}),
                          range(args.nodes)))  # fmt: skip
        print(f"{args.nodes} GPU nodes created in {time.monotonic() - t0:.1f} s", flush=True)
        install_crds_and_rbac(admin)
        t0 = time.monotonic()
        admin.create(policy_from_sample())
        converge(admin)
        made = operand_pods(admin, admin.list("Node"))
        converge(admin)
        policy = admin.get("ClusterPolicy", "cluster-policy") or {}
        print(f"converged in {time.monotonic() - t0:.1f} s: {made} operand pods Running and Ready, "
              f"ClusterPolicy {(policy.get('status') or {}).get('state')}", flush=True)  # fmt: skip

        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORKLOAD_NS}})
        wait_for(lambda: admin.get("ServiceAccount", "default", WORKLOAD_NS), 60, message="default ServiceAccount")
        pods = [workload(f"train-{i:04d}", 1) for i in range(args.workloads)] + [workload("too-big", 64)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(admin.create, pods))

        def placed() -> bool:
            listed = admin.list("Pod", WORKLOAD_NS, field_selector="status.phase=Running")
            return len(listed) >= args.workloads

        wait_for(placed, 120, interval=1, message="workload pods Running")
        print(f"{args.workloads} workload pods Running, 1 Pending (64 GPUs)", flush=True)

        kubeconfig = doctor_kubeconfig(cluster, admin, tmp / "doctor.kubeconfig")
        reads, analyses, totals = [], [], []
        for run in range(args.runs):
            kube = Kube.connect(str(kubeconfig))
            t0 = time.monotonic()
            seen = gather(kube, NAMESPACE)
            t_read = time.monotonic() - t0
            found = diagnose(seen)
            t_all = time.monotonic() - t0
            reads.append(t_read)
            analyses.append(t_all - t_read)
            totals.append(t_all)
            requests = sum(kube.requests.values())
            print(f"run {run + 1}: {t_all:.2f} s ({t_read:.2f} s reads: {requests} requests, {len(seen.pods)} "
                  f"pods and {len(seen.events)} events kept; {t_all - t_read:.2f} s analysis), "
                  f"{len(found)} findings: {sorted({f.kind for f in found})} (load {load_average()})",
                  flush=True)  # fmt: skip
        t0 = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "gpu_operator.cli", "doctor", "--kubeconfig", str(kubeconfig),
                              "-o", "json"], capture_output=True, text=True)  # fmt: skip
        print(f"the command `gpu-operator doctor -o json`: {time.monotonic() - t0:.2f} s with Python's start-up "
              f"and imports, exit {cli.returncode}")  # fmt: skip
        print(
            f"\ndoctor at {args.nodes} nodes, median of {args.runs}: {statistics.median(totals):.2f} s "
            f"({statistics.median(reads):.2f} s reads, {statistics.median(analyses):.2f} s analysis)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
