"""Leader failover time with two operator replicas (prints numbers, asserts nothing).

    python -m e2e.bench.failover [--runs 5] [--nodes 4] [--seed 1]

A fresh local cluster with GPU nodes, the simulator, two replicas with --leader-elect and a ClusterPolicy. Each
run waits until the follower is synced, waits a random part of the renew period (seeded: the kill lands anywhere
in the leader's renew cycle), SIGKILLs the leader and measures until the other one holds the Lease (its
acquireTime) and until its first write (Events aside); the killed replica is restarted as the next run's
follower. Then the same with SIGTERM (the leader releases the Lease). Medians are printed.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import time

from e2e.cluster.localcluster import LocalCluster, audit_time, temporary_cluster
from e2e.cluster.nodes import create_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.replicas import acquired, holder, operator_writes
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube
from gpu_operator.leader import RENEW_PERIOD_S


def follower_ready(op: OperatorProcess) -> bool:
    return "waiting for the leader Lease" in op.log_tail(400)


def one(admin: Kube, cluster: LocalCluster, ops: dict[str, OperatorProcess], sig: int, delay: float,
        nudge: int) -> tuple[float, float | None]:  # fmt: skip
    """Stop the leader with `sig` after `delay`; (seconds until the other holds the Lease, until its first write)."""
    name = holder(admin)
    leader = ops[name]
    follower = next(op for n, op in ops.items() if n != name)
    wait_for(lambda: follower_ready(follower), 120, message=f"{follower.identity} synced")
    time.sleep(delay)
    stopped = time.time()
    leader.stop(sig)
    wait_for(lambda: holder(admin) == follower.identity, 60, interval=0.05, message="takeover")
    _, took_at = acquired(admin)
    # Something for the new leader to do, so its first write can be timed.
    admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"dcgmExporter": {"enabled": bool(nudge % 2)}}})
    first = None
    try:
        first = wait_for(lambda: sorted(audit_time(e) for e in operator_writes(cluster, stopped).get(
            follower.identity, []) if e["objectRef"]["resource"] != "events"), 60,
            message="the new leader's first write")[0]  # fmt: skip
    except AssertionError:
        pass
    leader.log_path.write_text("")  # its next life's log only
    leader.start()
    return took_at - stopped, (first - stopped) if first else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with temporary_cluster("gpu-operator-failover-bench-") as (cluster, tmp):
        ops: dict[str, OperatorProcess] = {}
        sim = None
        try:
            admin = Kube.connect(str(cluster.kubeconfig))
            create_nodes(admin.client, [make_node(f"fo-{i}", "h100x8") for i in range(args.nodes)])
            install_crds_and_rbac(admin)
            sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE).start()
            for name in ("replica-a", "replica-b"):
                ops[name] = OperatorProcess(cluster, tmp / f"{name}.log", identity=name, leader_elect=True)
                ops[name].start()
            wait_for(lambda: holder(admin) in ops, 60, message="a leader")
            admin.create(policy_from_sample())
            results: dict[str, list[tuple[float, float | None]]] = {"SIGKILL": [], "SIGTERM": []}
            nudge = 0
            for sig in (signal.SIGKILL, signal.SIGTERM):
                for i in range(args.runs):
                    nudge += 1
                    took, wrote = one(admin, cluster, ops, sig, rng.uniform(0, RENEW_PERIOD_S), nudge)
                    results[sig.name].append((took, wrote))
                    print(f"{sig.name} run {i + 1}: Lease taken after {took:.2f}s, first write after "
                          f"{'-' if wrote is None else f'{wrote:.2f}s'}", flush=True)  # fmt: skip
            for name, rows in results.items():
                taken = statistics.median(t for t, _ in rows)
                writes = [w for _, w in rows if w is not None]
                first = f"{statistics.median(writes):.2f}s" if writes else "-"
                print(f"{name}: median of {len(rows)}: Lease taken after {taken:.2f}s, first write after {first}")
        finally:
            for op in ops.values():
                op.stop()
            if sim:
                sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
