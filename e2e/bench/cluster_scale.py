"""How the local cluster copes with many fake GPU nodes (prints numbers, asserts nothing).

    python -m e2e.bench.cluster_scale [--nodes 1000] [--concurrency 32] [--settle 30] [--daemonset]

Starts a cluster in a temporary directory, creates N fake GPU nodes (h100x8, a100x4, l4x1 in turn), waits until
all are Ready, and prints the creation time, the time to Ready and the memory (VmRSS) of each control-plane
process, then again after ``--settle`` seconds of kwok heartbeats.  ``--daemonset`` also times a DaemonSet
rolling out one Running+Ready pod to every node.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from e2e.cluster.localcluster import LocalCluster, rss_kib, temporary_cluster
from e2e.cluster.nodes import PROFILE_LABEL, create_nodes, make_node
from e2e.kube import Kube, create_namespace, node_ready, pod_running_ready

GPU_PROFILES = ("h100x8", "a100x4", "l4x1")


def print_rss(cluster: LocalCluster, title: str) -> None:
    print(f"\n{title}")
    total = 0
    for name, pid in cluster.pids.items():
        rss = rss_kib(pid) or 0
        total += rss
        print(f"  {name:<26} {rss / 1024:8.1f} MiB")
    print(f"  {'total':<26} {total / 1024:8.1f} MiB")


def proc_times(pid: int) -> tuple[float, float, float]:
    """A process's user and system CPU seconds and its minor page faults so far (proc(5): fields 14, 15, 10)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, float(fields[7])


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far."""
    user, system, _ = proc_times(pid)
    return user + system


def count_ready(kube: Kube) -> tuple[int, int]:
    nodes = kube.items("/api/v1/nodes", labelSelector=PROFILE_LABEL)
    return len(nodes), sum(1 for n in nodes if node_ready(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to idle before the last RSS reading")
    parser.add_argument("--daemonset", action="store_true", help="also time a DaemonSet onto every node")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    with temporary_cluster("e2e-bench-") as (cluster, _):
        print(f"cluster start-up: {cluster.startup_seconds:.1f}s")
        print_rss(cluster, "RSS after start-up (no nodes):")
        kube = Kube.from_kubeconfig(cluster.kubeconfig, pool_size=8)
        nodes = [make_node(f"bench-{GPU_PROFILES[i % 3]}-{i:05d}", GPU_PROFILES[i % 3])
                 for i in range(args.nodes)]

        t0 = time.monotonic()
        create_nodes(kube, nodes, concurrency=args.concurrency)
        created = time.monotonic() - t0
        print(f"\ncreated {args.nodes} nodes in {created:.1f}s "
              f"({args.nodes / created:.0f} nodes/s, concurrency {args.concurrency})")

        ready = 0
        while time.monotonic() - t0 < args.timeout:
            _, ready = count_ready(kube)
            if ready >= args.nodes:
                break
            time.sleep(0.5)
        to_ready = time.monotonic() - t0
        print(f"{ready}/{args.nodes} nodes Ready {to_ready:.1f}s after the first create "
              f"({to_ready - created:.1f}s after the last)")
        print_rss(cluster, f"RSS with {args.nodes} Ready nodes:")

        if args.daemonset:
            time_daemonset(kube, args.nodes, args.timeout)
            print_rss(cluster, f"RSS with {args.nodes} nodes and {args.nodes} pods:")

        if args.settle > 0:
            cpu0 = {name: cpu_seconds(pid) for name, pid in cluster.pids.items()}
            time.sleep(args.settle)
            total, ready = count_ready(kube)
            print(f"\nafter {args.settle:.0f}s of heartbeats: {ready}/{total} nodes Ready; CPU use while idle:")
            for name, pid in cluster.pids.items():
                used = cpu_seconds(pid) - cpu0[name]
                print(f"  {name:<26} {100 * used / args.settle:6.1f}% of a core")
            print_rss(cluster, "RSS after settling:")
        kube.close()
        t = time.monotonic()  # the cluster goes down as the block ends
    print(f"\ncluster down in {time.monotonic() - t:.1f}s")
    return 0


def time_daemonset(kube: Kube, n: int, timeout: float) -> None:
    create_namespace(kube, "bench")
    ds: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {"selector": {"matchLabels": {"app": "bench"}}, "template": {
            "metadata": {"labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}}},
    }
    t0 = time.monotonic()
    kube.create("/apis/apps/v1/namespaces/bench/daemonsets", ds)
    ready = 0
    while time.monotonic() - t0 < timeout:
        pods = kube.items("/api/v1/namespaces/bench/pods", labelSelector="app=bench")
        ready = sum(1 for p in pods if pod_running_ready(p))
        if ready >= n:
            break
        time.sleep(1.0)
    print(f"\nDaemonSet: {ready}/{n} pods Running+Ready after {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
