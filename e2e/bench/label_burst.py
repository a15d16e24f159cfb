"""A burst of node label patches as joining nodes get them, on new connections and on warm ones (prints numbers).

    python -m e2e.bench.label_burst [--nodes 50] [--rounds 3]

The operator labels each joining node from its own thread (`LABEL_THREADS` of them), each on a connection of
the client's pool. The API server closes a connection idle for 90 s, so the first burst of joins after a quiet
spell opens one TLS connection per patch in flight. Each round, for a client with TLS session resumption (as the
operator's, `gpu_operator.tls`) and one without: the client reads once, its connections are closed (the quiet
spell), then it sends one patch per node from that many threads (new connections), then again (warm ones).
Each patch's wall time, p50 and max; the connections opened and how many resumed a session. Medians of the rounds.
Then `--serial` new connections one after another for each client: the time each took, and the process's RSS
before and after (a resuming client must not grow with the connections it makes).
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from e2e.cluster.localcluster import rss_kib, temporary_cluster
from e2e.cluster.nodes import create_nodes, make_node
from e2e.operator_process import install_crds_and_rbac
from gpu_operator.kube import Kube
from gpu_operator.runtime import LABEL_THREADS


def _pools(kube: Kube) -> list[Any]:
    manager = kube.client.rest_client.pool_manager
    return [manager.pools[key] for key in manager.pools.keys()]


def opened(kube: Kube) -> int:
    """Connections the client's pools have opened so far."""
    return sum(pool.num_connections for pool in _pools(kube))


def resumed(kube: Kube) -> int:
    """The client's idle connections whose TLS session was resumed."""
    conns = [c for pool in _pools(kube) for c in list(pool.pool.queue) if c is not None]
    return sum(1 for c in conns if isinstance(c.sock, ssl.SSLSocket) and c.sock.session_reused)


def burst(kube: Kube, names: list[str], value: str) -> tuple[list[float], int]:
    """One label patch per node, `LABEL_THREADS` at a time: each one's wall time, and the connections opened."""
    before = opened(kube)

    def one(name: str) -> float:
        start = time.perf_counter()
        kube.merge_patch("Node", name, {"metadata": {"labels": {"bench.label-burst/round": value}}})
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=LABEL_THREADS) as pool:
        took = list(pool.map(one, names))
    return took, opened(kube) - before


def rss_mib() -> float:
    return (rss_kib(os.getpid()) or 0) / 1024


def serial(kube: Kube, count: int) -> tuple[float, float, float]:
    """`count` requests, each on a new connection: the mean seconds each, RSS before and after (MiB)."""
    for _ in range(50):  # warm: imports, the first session
        kube.request("GET", "/version")
        kube.client.rest_client.pool_manager.clear()
    before, start = rss_mib(), time.perf_counter()
    for _ in range(count):
        kube.request("GET", "/version")
        kube.client.rest_client.pool_manager.clear()
    return (time.perf_counter() - start) / count, before, rss_mib()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.label_burst", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50, help="nodes patched at once (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serial", type=int, default=2000, help="new connections one after another (%(default)s)")
    args = parser.parse_args(argv)
    with temporary_cluster("gpu-operator-label-burst-") as (cluster, _):
        kubeconfig = str(cluster.operator_kubeconfig)
        admin = Kube.connect(str(cluster.kubeconfig))
        install_crds_and_rbac(admin)  # the patches go under the operator's own identity (a token)
        names = [f"burst-{i:04d}" for i in range(args.nodes)]
        create_nodes(admin.client, [make_node(name, "h100x8") for name in names])
        rows: dict[str, list[tuple[float, float, float, float]]] = {}
        for r in range(args.rounds):
            for resume in (False, True):
                kube = Kube.connect(kubeconfig, resume_tls=resume)
                kube.get("Node", names[0])
                kube.client.rest_client.pool_manager.clear()  # the quiet spell: its connections closed
                client = "resuming TLS sessions" if resume else "full handshakes"
                for conns, value in (("new", f"cold-{r}"), ("warm", f"warm-{r}")):
                    took, made = burst(kube, names, value)
                    again = resumed(kube) if conns == "new" else 0
                    rows.setdefault(f"{client}, {conns} connections", []).append(
                        (statistics.median(took), max(took), made, again)
                    )
                    print(f"round {r + 1}, {client}, {conns} connections: p50 {statistics.median(took) * 1000:.1f}"
                          f" ms, max {max(took) * 1000:.1f} ms, {made} connections opened ({again} resumed)",
                          flush=True)  # fmt: skip
        print(f"\n{args.nodes} label patches at once from {LABEL_THREADS} threads, medians of {args.rounds} rounds")
        print("| client, connections | p50 | max | opened (resumed) |\n|---|---|---|---|")
        for kind, values in rows.items():
            p50, top = (statistics.median(v[i] for v in values) * 1000 for i in range(2))
            count, reused = (statistics.median(v[i] for v in values) for i in (2, 3))
            print(f"| {kind} | {p50:.1f} ms | {top:.1f} ms | {count:.0f} ({reused:.0f}) |")
        print(f"\n{args.serial} new connections one after another (GET /version)")
        for resume in (False, True):
            each, before, after = serial(Kube.connect(kubeconfig, resume_tls=resume), args.serial)
            client = "resuming TLS sessions" if resume else "full handshakes"
            print(f"  {client}: {each * 1000:.2f} ms each; RSS {before:.1f} -> {after:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
