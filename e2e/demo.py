"""`make demo`: the operator reconciling a local cluster of fake GPU nodes, shown converging to ready.

python -m e2e.demo [start]   build what is missing, start everything, show progress, leave it running
python -m e2e.demo stop      stop the operator and the node simulator started by `start`
python -m e2e.demo simulate  (internal) run the node simulator in the foreground
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e.cluster.__main__ import DEFAULT_STATE_DIR
from e2e.cluster.localcluster import (
    ClusterError,
    LocalCluster,
    _tail,
    ensure_binaries,
    free_ports,
    owned_alive,
    pid_alive,
    signal_group,
)
from e2e.cluster.nodes import create_nodes, make_node
from e2e.operator_process import NAMESPACE, REPO, install_crds_and_rbac, policy_from_sample
from gpu_operator.kube import Kube

NODES = [
    ("h100-node-0", "h100x8", "ubuntu22.04"),
    ("h100-node-1", "h100x8", "ubuntu22.04"),
    ("a100-node-0", "a100x4", "ubuntu24.04"),
    ("l4-node-0", "l4x1", "rhel9.4"),
    ("cpu-node-0", "cpu", "ubuntu22.04"),
]


def _pidfile(state: Path) -> Path:
    return state / "demo.json"


def _spawn(args: list[str], log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    return proc.pid


def stop(state: Path, grace: float = 5.0) -> None:
    """Stop what `start` left running: only processes still ours (their command line names the state dir, so a
    pid reused after a reboot or a crash is left alone), each with its process group; SIGKILL after `grace`."""
    try:
        pids = json.loads(_pidfile(state).read_text())
    except FileNotFoundError:
        return
    marker = str(state.resolve())  # in each one's --kubeconfig, as LocalCluster's state_dir
    live = {name: pid for name, pid in pids.items() if owned_alive(pid, marker)}
    for pid in live.values():
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in live.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name, pid in live.items():
        if pid_alive(pid):
            signal_group(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    _pidfile(state).unlink(missing_ok=True)


def _summary(policy: dict[str, Any] | None) -> str:
    status = (policy or {}).get("status") or {}
    states = status.get("states") or []
    active = [s for s in states if s["state"] != "disabled"]
    ready = [s for s in active if s["state"] == "ready"]
    waiting = "; ".join(f"{s['name']}: {s['message']}" for s in active if s["state"] == "notReady")
    line = f"{status.get('state', 'pending'):<9} {len(ready)}/{len(active)} operand states ready"
    return line + (f" - waiting for {waiting}" if waiting else "")


def _show(kube: Kube, policy: dict[str, Any]) -> None:
    print("\nOperand states:")
    for s in policy["status"]["states"]:
        print(f"  {s['name']:<30} {s['state']}")
    print("\nNodes:")
    print(f"  {'NAME':<14} {'GPU':<6} {'nvidia.com/gpu':<15} {'PRODUCT':<26} {'DRIVER':<10} OS")
    for node in sorted(kube.list("Node"), key=lambda n: n["metadata"]["name"]):
        labels = node["metadata"].get("labels") or {}
        gpus = (node.get("status", {}).get("allocatable") or {}).get("nvidia.com/gpu", "-")
        os_name = labels.get("feature.node.kubernetes.io/system-os_release.ID", "") + labels.get(
            "feature.node.kubernetes.io/system-os_release.VERSION_ID", ""
        )
        driver = ".".join(labels.get(f"nvidia.com/cuda.driver.{p}", "") for p in ("major", "minor", "rev")).strip(".")
        print(
            f"  {node['metadata']['name']:<14} {labels.get('nvidia.com/gpu.present', '-'):<6} {gpus:<15} "
            f"{labels.get('nvidia.com/gpu.product', '-'):<26} {driver or '-':<10} {os_name}"
        )


def start(state: Path, timeout: float) -> int:
    ensure_binaries()
    cluster = LocalCluster(state, detach=True)
    if not (cluster.pids and all(cluster.running().values())):
        cluster.up()
    stop(state)
    admin = Kube.connect(str(cluster.kubeconfig))
    create_nodes(admin.client, [make_node(n, p, os=o) for n, p, o in NODES])
    print(f"nodes: {', '.join(f'{n} ({p}, {o})' for n, p, o in NODES)}")
    install_crds_and_rbac(admin)
    py = sys.executable
    metrics_port, health_port = free_ports(2)  # not fixed ones: another checkout's demo may hold those
    logs = {"node-simulator": state / "simulator.log", "gpu-operator": state / "operator.log"}
    pids = {
        "node-simulator": _spawn(
            [py, "-m", "e2e.demo", "simulate", "--kubeconfig", str(cluster.simulator_kubeconfig)],
            logs["node-simulator"],
        ),  # fmt: skip
        "gpu-operator": _spawn(
            [
                py,
                "-m",
                "gpu_operator.cli",
                "run",
                "--kubeconfig",
                str(cluster.operator_kubeconfig),
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                str(health_port),
            ],
            logs["gpu-operator"],
        ),  # fmt: skip
    }
    _pidfile(state).write_text(json.dumps(pids))
    print(f"operator running as the chart's ServiceAccount identity (metrics http://127.0.0.1:{metrics_port}/metrics,"
          f" log: {logs['gpu-operator']})")  # fmt: skip
    if admin.get("ClusterPolicy", "cluster-policy") is None:
        admin.create(policy_from_sample())
        print("applied manifests/samples/clusterpolicy-default.yaml\n")
    else:
        print("kept the ClusterPolicy cluster-policy already in the cluster\n")
    began = time.monotonic()
    last = ""
    policy: dict[str, Any] | None = None
    while time.monotonic() - began < timeout:
        gone = [name for name, pid in pids.items() if not pid_alive(pid)]
        if gone:  # nothing will get the policy ready: say why now rather than after the timeout
            print(f"error: {gone[0]} exited; the last lines of {logs[gone[0]]}:\n{_tail(logs[gone[0]], 20)}\n"
                  "(make cluster-down stops the rest)", file=sys.stderr)  # fmt: skip
            return 1
        policy = admin.get("ClusterPolicy", "cluster-policy")
        line = _summary(policy)
        if line != last:
            print(f"[{time.monotonic() - began:5.1f}s] {line}", flush=True)
            last = line
        if policy and (policy.get("status") or {}).get("state") == "ready":
            break
        time.sleep(1)
    else:
        print(f"not ready after {timeout:.0f}s; see {state / 'operator.log'}", file=sys.stderr)
        return 1
    assert policy is not None
    _show(admin, policy)
    kubectl = ensure_binaries() / "kubectl"
    print(
        f"""
The cluster, the operator and the node simulator keep running. Explore:
  export KUBECONFIG={cluster.kubeconfig}
  {kubectl} get clusterpolicy
  {kubectl} get pods -n {NAMESPACE} -o wide
  {kubectl} get nodes -L nvidia.com/gpu.present,nvidia.com/gpu.product,nvidia.com/gpu.count
  {kubectl} patch clusterpolicy cluster-policy --type merge -p '{{"spec":{{"dcgmExporter":{{"enabled":false}}}}}}'
  .venv/bin/gpu-operator render --policy manifests/samples/clusterpolicy-default.yaml
  tail -f {state / "operator.log"}
Stop everything: make cluster-down"""
    )
    return 0


def simulate(kubeconfig: str) -> int:
    from e2e.simulator import NodeSimulator

    sim = NodeSimulator(kubeconfig, namespace=NAMESPACE, resync_seconds=5).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="start", choices=["start", "stop", "simulate"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for ready (%(default)s)")
    parser.add_argument("--kubeconfig", help="(simulate) kubeconfig of the simulator")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop(args.state_dir)
        return 0
    if args.command == "simulate":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        return simulate(args.kubeconfig)
    try:
        return start(args.state_dir, args.timeout)
    except ClusterError as e:  # build.sh failed (its output above says why) or the cluster did not start
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
