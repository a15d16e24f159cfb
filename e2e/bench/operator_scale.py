"""The operator on many fake GPU nodes (prints numbers, asserts nothing).

    python -m e2e.bench.operator_scale [--nodes 1000] [--idle 60]

Starts a cluster in a temporary directory with N fake GPU nodes (h100x8, a100x4, l4x1 in turn, half on
ubuntu 22.04 and half on 24.04), the node simulator and the operator (under the chart's identity), applies
the default sample policy and prints: time to `ready`, the operator's API writes by verb and resource
until ready, its writes during `--idle` seconds of steady state, its memory (VmRSS), the CPU it used, and how long
`gpu-operator doctor` takes on the whole cluster.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from e2e.bench.cluster_scale import cpu_seconds
from e2e.cluster.localcluster import LocalCluster, ensure_binaries, rss_kib
from e2e.cluster.nodes import create_nodes, make_node
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.doctor import diagnose, gather
from gpu_operator.kube import Kube

PROFILES = ("h100x8", "a100x4", "l4x1")


def writes_by(cluster: LocalCluster, user: str, since: float = 0.0) -> collections.Counter[str]:
    """A user's write requests since `since`, counted by verb and resource."""
    counts: collections.Counter[str] = collections.Counter()
    for event in cluster.writes(user, since):
        ref = event.get("objectRef", {})
        sub = "/" + ref["subresource"] if ref.get("subresource") else ""
        counts[f"{event['verb']} {ref.get('resource', '?')}{sub}"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of steady state to watch for writes")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="gpu-operator-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.up()
        try:
            admin = Kube.connect(str(cluster.kubeconfig))
            nodes = [
                make_node(f"gpu-{i:04d}", PROFILES[i % 3], os="ubuntu22.04" if i % 2 else "ubuntu24.04")
                for i in range(args.nodes)
            ]
            t0 = time.monotonic()
            create_nodes(admin.client, nodes)
            print(f"{args.nodes} nodes created in {time.monotonic() - t0:.1f}s")
            install_crds_and_rbac(admin)
            sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, workers=8).start()
            op = OperatorProcess(cluster, Path(tmp) / "operator.log").start()
            time.sleep(3)
            assert op.proc is not None
            cpu0 = cpu_seconds(op.proc.pid)
            t0 = time.monotonic()
            admin.create(policy_from_sample())
            state = None
            while time.monotonic() - t0 < args.timeout:
                obj = admin.get("ClusterPolicy", "cluster-policy") or {}
                state = (obj.get("status") or {}).get("state")
                if state == "ready":
                    break
                time.sleep(1)
            ready_s = time.monotonic() - t0
            print(f"ClusterPolicy {state} after {ready_s:.1f}s; operator CPU {cpu_seconds(op.proc.pid) - cpu0:.1f}s")
            print(f"operator RSS at ready: {(rss_kib(op.proc.pid) or 0) / 1024:.0f} MiB")
            print("operator writes until ready:")
            for what, n in sorted(writes_by(cluster, op.username).items()):
                print(f"  {n:6d}  {what}")
            idle_from = time.time()
            cpu1 = cpu_seconds(op.proc.pid)
            time.sleep(args.idle)
            idle = writes_by(cluster, op.username, since=idle_from)
            print(f"operator writes in {args.idle:.0f}s of steady state: {sum(idle.values())} {dict(idle)}")
            print(f"operator CPU in steady state: {cpu_seconds(op.proc.pid) - cpu1:.1f}s over {args.idle:.0f}s")
            print(f"operator RSS after idle: {(rss_kib(op.proc.pid) or 0) / 1024:.0f} MiB")
            t_doc = time.monotonic()
            seen = gather(Kube.connect(str(cluster.kubeconfig)), NAMESPACE)
            t_read = time.monotonic() - t_doc
            found = diagnose(seen)
            read = f"{t_read:.2f}s reading {len(seen.pods)} pods and {len(seen.events)} events"
            print(f"gpu-operator doctor on {args.nodes} nodes: {time.monotonic() - t_doc:.2f}s ({read}, the rest "
                  f"analysis), {len(found)} findings")  # fmt: skip
            op.stop()
            sim.stop()
        finally:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
