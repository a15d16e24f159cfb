"""How long a driver rollout takes as the cluster grows (prints numbers, asserts nothing).

    python -m e2e.bench.upgrade_scale [--nodes 12 100] [--parallel 3] [--max-unavailable 25%] [--delay 2]

For each node count: a fresh cluster with that many GPU nodes in two OS pools, the simulator (a new driver
pod turns Ready `--delay` seconds after it starts), the operator, and a ClusterPolicy with the given limits;
then the driver version changes and the time until every node is upgrade-done on the new driver is printed,
with the operator's API writes during the rollout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from e2e.bench.operator_scale import writes_by
from e2e.cluster.localcluster import temporary_cluster
from e2e.cluster.nodes import create_nodes, make_node
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube
from gpu_operator.upgrade import STATE_LABEL


def all_done(admin: Kube, version: str, count: int) -> bool:
    pods = admin.list("Pod", NAMESPACE, label_selector="nvidia.com/gpu-operator.state=state-driver")
    current = sum(
        1
        for p in pods
        if f":{version}-" in p["spec"]["containers"][0]["image"]
        and all(c.get("ready") for c in p.get("status", {}).get("containerStatuses") or [{}])
    )
    nodes = admin.list("Node", label_selector=f"{STATE_LABEL}=upgrade-done")
    return current == count and len([n for n in nodes if not n["spec"].get("unschedulable")]) == count


def new_driver_ready(admin: Kube, version: str) -> list[str]:
    """Nodes whose driver pod of that version is Ready."""
    pods = admin.list("Pod", NAMESPACE, label_selector="nvidia.com/gpu-operator.state=state-driver")
    return [
        p["spec"]["nodeName"] for p in pods
        if f":{version}-" in p["spec"]["containers"][0]["image"] and p["spec"].get("nodeName")
        and all(c.get("ready") for c in p.get("status", {}).get("containerStatuses") or [{}])
    ]  # fmt: skip


def run(count: int, parallel: int, max_unavailable: str, delay: float, timeout: float) -> dict[str, Any]:
    with temporary_cluster("gpu-operator-upgrade-bench-") as (cluster, tmp):
        admin = Kube.connect(str(cluster.kubeconfig))
        nodes = [
            make_node(f"n-{i:04d}", "h100x8" if i % 2 else "a100x4", os="ubuntu22.04" if i % 2 else "ubuntu24.04")
            for i in range(count)
        ]
        create_nodes(admin.client, nodes)
        install_crds_and_rbac(admin)
        sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, driver_ready_delay=delay,
                            manager_grace_seconds=300.0).start()  # upstream's grace, as the figures were measured
        op = OperatorProcess(cluster, tmp / "operator.log").start()
        try:
            policy = policy_from_sample()
            policy["spec"]["driver"]["upgradePolicy"] = {
                "autoUpgrade": True,
                "maxParallelUpgrades": parallel,
                "maxUnavailable": max_unavailable,
            }
            admin.create(policy)
            began = time.monotonic()
            while not all_done(admin, "595.91.07", count) and time.monotonic() - began < timeout:
                time.sleep(1)
            admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": "600.10.01"}}})
            since = time.time()
            began = time.monotonic()
            ready_at: dict[str, float] = {}  # node -> when its new driver pod was first seen Ready
            done_at: dict[str, float] = {}  # node -> when it was first seen upgrade-done (uncordoned) after that
            while time.monotonic() - began < timeout:
                now = time.monotonic()
                for node in new_driver_ready(admin, "600.10.01"):
                    ready_at.setdefault(node, now)
                for n in admin.list("Node", label_selector=f"{STATE_LABEL}=upgrade-done"):
                    name = n["metadata"]["name"]
                    if name in ready_at and not n["spec"].get("unschedulable"):
                        done_at.setdefault(name, now)
                if len(done_at) == count:
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - began
            writes = writes_by(cluster, op.username, since=since)
            lags = sorted(done_at[n] - ready_at[n] for n in done_at)
            return {"nodes": count, "seconds": seconds, "writes": sum(writes.values()), "by": dict(writes),
                    "lag_p50": statistics.median(lags) if lags else float("nan"),
                    "lag_max": lags[-1] if lags else float("nan")}
        finally:  # a run that failed must not leave the operator process behind
            op.stop()
            sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[12, 100])
    parser.add_argument("--parallel", type=int, default=3, help="maxParallelUpgrades (%(default)s)")
    parser.add_argument("--max-unavailable", default="25%", help="maxUnavailable (%(default)s)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds until a new driver pod is Ready")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    results = [run(n, args.parallel, args.max_unavailable, args.delay, args.timeout) for n in args.nodes]
    print(
        f"\nmaxParallelUpgrades={args.parallel} maxUnavailable={args.max_unavailable} driver ready delay={args.delay}s"
    )
    base = results[0]
    for r in results:
        waves = -(-r["nodes"] // args.parallel) if args.parallel else 1
        print(
            f"{r['nodes']:5d} nodes: rollout {r['seconds']:7.1f}s  ({r['seconds'] / waves:5.1f}s per wave of "
            f"{args.parallel or 'all'}; x{r['seconds'] / base['seconds']:.1f} vs {base['nodes']} nodes)  "
            f"operator writes {r['writes']} ({r['writes'] / r['nodes']:.1f} per node)"
        )
        print(f"       new driver pod Ready -> node upgrade-done and uncordoned: p50 {r['lag_p50']:.1f}s, "
              f"max {r['lag_max']:.1f}s (polled every 0.5 s)")
        for name, n in sorted(r["by"].items(), key=lambda kv: -kv[1]):
            print(f"       {n:6d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
