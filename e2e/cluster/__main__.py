"""python -m e2e.cluster up|down|status [--nodes SPEC] [--state-dir DIR]

``up`` starts the local cluster detached (its processes outlive this command) and prints the kubeconfig;
``down`` stops it and removes its state; ``status`` says which components run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from e2e.cluster.localcluster import REPO_ROOT, ClusterError, LocalCluster, ensure_binaries, rss_kib

DEFAULT_STATE_DIR = REPO_ROOT / ".e2e-state"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where the cluster keeps its files (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--nodes", default="",
                        help="fake nodes to create after start, e.g. h100x8:2,a100x4:1,l4x1:1:rhel9.4,cpu:1; a fourth "
                             "part picks the runtime (containerd, crio), `hostdriver` marks a pre-installed driver: "
                             "h100x8:2:ubuntu22.04:crio,l4x1:1:ubuntu22.04:containerd:hostdriver")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir, detach=True)

    if args.command == "status":
        running = cluster.running()
        if not running:
            print(f"no cluster in {args.state_dir}")
            return 1
        for name, alive in running.items():
            pid = cluster.pids[name]
            rss = rss_kib(pid) if alive else None
            mem = f"{rss / 1024:.0f} MiB" if rss else "-"
            print(f"{name:<24} pid {pid:<8} {'running' if alive else 'DEAD':<8} {mem}")
        print(f"server {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}")
        return 0 if all(running.values()) else 1

    if args.command == "down":
        had = bool(cluster.pids)
        cluster.down()
        print("cluster stopped" if had else f"no cluster was running in {args.state_dir}; state removed")
        return 0

    # up
    if cluster.pids and any(cluster.running().values()):
        print(f"a cluster already runs from {args.state_dir} ({cluster.server}); "
              f"`python -m e2e.cluster down` first", file=sys.stderr)
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 1
    try:
        ensure_binaries()
        cluster.up()
        if args.nodes:
            from kubernetes import config

            from e2e.cluster.nodes import create_nodes

            t = time.monotonic()
            with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as api:
                names = create_nodes(api, args.nodes)
            print(f"[cluster] created {len(names)} fake nodes ({time.monotonic() - t:.1f}s): "
                  f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}", file=sys.stderr)
    except (ClusterError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        cluster.down()
        return 1
    except BaseException:
        cluster.down()
        raise
    print(f"kubeconfig: {cluster.kubeconfig}")
    print(f"operator kubeconfig: {cluster.operator_kubeconfig}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
