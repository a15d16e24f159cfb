"""The `gpu-operator` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .api import PolicyError, parse_spec, unknown_fields
from .coverage import unsupported_fields

DEFAULT_NAMESPACE = "gpu-operator"


def _load_yaml_docs(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs: list[dict[str, Any]] = []
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:  # one line, like every other error of this command
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    for doc in loaded:
        if not doc:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a YAML mapping, got {type(doc).__name__}")
        if str(doc.get("kind", "")).endswith("List") and "items" in doc:
            items = doc["items"] or []
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError(f"{path}: the items of a List must be mappings")
            docs += items
        else:
            docs.append(doc)
    return docs


def _policy_from_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of the first ClusterPolicy in the file, or a bare spec mapping."""
    docs = _load_yaml_docs(path)
    for doc in docs:
        if doc.get("kind") == "ClusterPolicy":
            return doc.get("metadata") or {}, doc.get("spec") or {}
    if len(docs) == 1 and "kind" not in docs[0]:
        return {"name": "cluster-policy"}, docs[0]
    raise ValueError(f"{path}: no ClusterPolicy found")


def cmd_render(args: argparse.Namespace) -> int:
    if args.from_cluster:
        return _render_from_cluster(args)
    if not args.policy:
        print("error: --policy is required (or --from-cluster)", file=sys.stderr)
        return 2
    from .nodes import NodeFacts
    from .render import config_map_keys, node_patches, plan, relabelled
    from .states import RenderContext

    try:
        meta, raw_spec = _policy_from_file(args.policy)
        spec = parse_spec(raw_spec)
        node_docs = _load_yaml_docs(args.nodes) if args.nodes else []
    except PolicyError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in unknown_fields(spec):
        print(f"warning: {path}: not used by this operator (kept as is)", file=sys.stderr)
    for path, reason in unsupported_fields(spec):
        print(f"warning: spec.{path}: set but not supported by this operator ({reason})", file=sys.stderr)
    nodes = [NodeFacts.from_node(n) for n in node_docs if n.get("kind", "Node") == "Node"]
    # ConfigMaps in the same file stand for the cluster's (the driver mounts referenced ones key by key).
    config_maps = {
        (d.get("metadata") or {}).get("name", ""): config_map_keys(d) for d in node_docs if d.get("kind") == "ConfigMap"
    }
    patches = node_patches(nodes, spec)
    owner = {
        "apiVersion": "nvidia.com/v1",
        "kind": "ClusterPolicy",
        "name": meta.get("name", "cluster-policy"),
        "uid": meta.get("uid", "00000000-0000-0000-0000-000000000000"),
    }
    ctx = RenderContext(
        spec=spec,
        namespace=args.namespace,
        nodes=tuple(relabelled(nodes, patches)),
        owner=owner,
        api_groups=frozenset(args.api_group),
        config_maps=config_maps,
    )
    out: list[str] = []
    for state_plan in plan(ctx):
        if not state_plan.enabled:
            out.append(f"# {state_plan.state.name}: disabled\n")
            continue
        if state_plan.problem:
            print(f"warning: {state_plan.state.name}: not rendered: {state_plan.problem}", file=sys.stderr)
            out.append(f"# {state_plan.state.name}: not rendered: {state_plan.problem}\n")
            continue
        for obj in state_plan.objects:
            out.append(f"# {state_plan.state.name}\n" + yaml.safe_dump(obj, sort_keys=True))
    for name in sorted(patches):
        patch = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, **patches[name]}}
        out.append(
            f"# label patch for node {name} (merge patch; null removes a label or annotation)\n"
            + yaml.safe_dump(patch, sort_keys=True)
        )
    sys.stdout.write("---\n".join(out))
    return 0


def _optional_kinds() -> str:
    from .kinds import operand_kinds

    return ", ".join(f"{k.kind} ({k.group})" for k in operand_kinds() if k.optional)


def _render_from_cluster(args: argparse.Namespace) -> int:
    """What the operator would write now, from one dry-run reconcile pass over the cluster's snapshot."""
    from .kube import ApiError, DryRunKube, Kube
    from .observe import observe
    from .reconciler import Reconciler
    from .status import active_policy

    try:
        kube = Kube.connect(args.kubeconfig)
        snap = observe(kube, args.namespace)
        if args.policy:  # this policy instead of the active one's spec (or as the only one)
            meta, raw_spec = _policy_from_file(args.policy)
            parse_spec(raw_spec)
            name = active_policy(list(snap.policies.values())) or meta.get("name", "cluster-policy")
            current = snap.policies.get(name) or {
                "apiVersion": "nvidia.com/v1",
                "kind": "ClusterPolicy",
                "metadata": {"name": name, "uid": "00000000-0000-0000-0000-000000000000", "generation": 1},
            }
            snap.policies[name] = {**current, "spec": raw_spec}
        if args.api_group:
            snap.api_groups = snap.api_groups | frozenset(args.api_group)
        dry = DryRunKube(kube.client)
        Reconciler(dry, args.namespace).reconcile(snap)
    except PolicyError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (ApiError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not dry.recorded:
        print("# no changes: the operator would write nothing", file=sys.stderr)
        return 0
    docs = [f"# {verb} {path}\n" + yaml.safe_dump(body, sort_keys=True) for verb, path, body in dry.recorded]
    sys.stdout.write("---\n".join(docs))
    print(f"# {len(dry.recorded)} writes the operator would make now", file=sys.stderr)
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    from .crd import all_crds, crds_yaml

    if not args.apply:
        sys.stdout.write(crds_yaml())
        return 0
    from .kube import Kube

    kube = Kube.connect(args.kubeconfig)
    for crd in all_crds():
        kube.apply(crd)
        kube.wait_established(crd["metadata"]["name"])
        print(f"customresourcedefinition {crd['metadata']['name']} applied and established", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import run

    return run(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
    )


def cmd_upgrade_plan(args: argparse.Namespace) -> int:
    """Read-only: which nodes go in which wave, and why each waiting node waits."""
    import time

    from . import upgrade
    from .kube import ApiError, Kube
    from .observe import observe
    from .status import active_policy
    from .upgrade.adapter import managed_nodes, steady, workload_pods

    try:
        kube = Kube.connect(args.kubeconfig)
        snap = observe(kube, args.namespace)
        name = active_policy(list(snap.policies.values()))
        if name is None:
            print("error: no ClusterPolicy in the cluster", file=sys.stderr)
            return 2
        spec = parse_spec(snap.policies[name].get("spec"))
        managed = managed_nodes(spec, snap)
        policy = spec.driver.upgrade_policy
        result = upgrade.plan(managed, workload_pods(kube, managed), policy, time.time(),
                              validation_enabled=spec.validator.enabled)  # fmt: skip
    except (ApiError, PolicyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result.counters
    limit = policy.max_parallel_upgrades or "unlimited"
    print(f"ClusterPolicy {name}: autoUpgrade={str(policy.auto_upgrade).lower()}, maxParallelUpgrades={limit}, "
          f"maxUnavailable={policy.max_unavailable} ({c.max_unavailable} of {c.total} nodes)")  # fmt: skip
    print(f"nodes: {c.total} managed, {c.done} done, {c.in_progress} in progress, {c.failed} failed, "
          f"{c.pending} waiting to start, {c.skipped} skipped")  # fmt: skip
    waves = upgrade.preview_waves(managed, policy)
    if not spec.driver.enabled or spec.driver.use_nvidia_driver_crd:
        why = "disabled" if not spec.driver.enabled else "handed to NVIDIADriver resources (useNvidiaDriverCRD)"
        print(f"the ClusterPolicy's driver is {why}: it upgrades no node")
    elif not policy.auto_upgrade:
        print("autoUpgrade is off: nothing is orchestrated")
    elif not waves:
        print("no node needs an upgrade")
    for i, wave in enumerate(waves, 1):
        print(f"wave {i}: {', '.join(wave)}")
    states = {n.name: n.state or "unknown" for n in managed}
    if result.waiting:
        print("waiting:")
        for node in sorted(result.waiting):
            print(f"  {node} ({states[node]}): {steady(result.waiting[node])}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Read-only: findings with evidence and fix; exit 0 healthy, 1 warnings, 2 errors (3: cannot read)."""
    from .doctor import diagnose, exit_status, gather, render_json, render_prometheus, render_text
    from .kube import ApiError, Kube

    try:
        cluster = gather(Kube.connect(args.kubeconfig), args.operator_namespace)
    except (ApiError, OSError) as exc:
        print(f"error: cannot read the cluster: {exc}", file=sys.stderr)
        return 3
    names = {((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name")) for p in cluster.pods}
    if args.pod and (args.namespace, args.pod) not in names:
        print(f"error: pod {args.namespace}/{args.pod} not found", file=sys.stderr)
        return 3
    found = diagnose(cluster, namespace=args.namespace if args.namespace_given or args.pod else None,
                     pod=args.pod, node=args.node)  # fmt: skip
    render = {"json": render_json, "prometheus": render_prometheus}.get(args.output, render_text)
    sys.stdout.write(render(found))
    return exit_status(found)


def cmd_capacity(args: argparse.Namespace) -> int:
    """Read-only: how many copies of a pod fit now, where, and the extra nodes for the rest."""
    from . import capacity
    from .doctor.sched import nodes_with_pods
    from .kube import ApiError, Kube

    try:
        docs = [d for d in _load_yaml_docs(args.pod) if d.get("kind", "Pod") == "Pod"]
        if not docs:
            raise ValueError(f"{args.pod}: no Pod found")
        pod = docs[0]
        kube = Kube.connect(args.kubeconfig)
        views = nodes_with_pods(kube.list("Node"), kube.list("Pod"))
        profile = capacity.parse_profile(args.node_profile, views) if args.node_profile else None
    except (ApiError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pod.setdefault("metadata", {}).setdefault("namespace", args.namespace)
    result = capacity.plan(pod, args.count, views, profile)
    sys.stdout.write(capacity.render(result, pod["metadata"].get("name", "?")))
    return 0


def _add_doctor(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="explain why GPU pods do not run and what in the GPU stack is broken (reads only)",
        description="Read the cluster once and report findings: pending GPU pods and why (insufficient or "
        "fragmented GPUs, affinity, taints, MIG resources, cordoned nodes), workloads that misuse GPUs (CUDA "
        "without a GPU request, CUDA newer than the driver, out of memory on a shared GPU) and operands that "
        "are not ready, each with its evidence and fix. Exit status: 0 healthy, 1 warnings, 2 errors, 3 the "
        "cluster could not be read.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.add_argument("-n", "--namespace", default="default", help="namespace of the workload pods to look at "
                   "(default: every namespace; with --pod: default)")  # fmt: skip
    target = p.add_mutually_exclusive_group()
    target.add_argument("--pod", help="only this pod's findings")
    target.add_argument("--node", help="only the findings about this node and its pods")
    p.add_argument("-o", "--output", choices=("text", "json", "prometheus"), default="text",
                   help="text, json, or prometheus (findings counted by kind, for a textfile collector)")
    p.add_argument("--operator-namespace", default=DEFAULT_NAMESPACE, help="namespace of the operands (%(default)s)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "capacity",
        help="how many copies of a pod fit now and how many nodes the rest needs (reads only)",
        description="For a pod spec and a count: how many fit on the cluster now and on which nodes, and the "
        "minimum number of extra nodes of a profile for the rest, honouring GPU, CPU and memory requests, node "
        "selectors and affinity, taints, cordons and required pod anti-affinity (per hostname).",
    )
    p.add_argument("--pod", required=True, help="Pod YAML file ('-' for stdin)")
    p.add_argument("--count", type=int, required=True, help="how many copies")
    p.add_argument("--node-profile", help="shape of an extra node: an existing node's name, or "
                   "gpus=8,cpu=96,memory=2048Gi,label.KEY=VALUE,taint.KEY=VALUE:EFFECT "
                   "(default: the existing node shape that takes most copies)")  # fmt: skip
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.add_argument("-n", "--namespace", default="default", help="the pods' namespace (%(default)s)")
    p.set_defaults(func=cmd_capacity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-operator",
        description="Deploys and manages the NVIDIA GPU software stack on every GPU node of a cluster.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the operator against a cluster")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then $KUBECONFIG)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of the operands (%(default)s)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (%(default)s; 0 = off)")
    p.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port (%(default)s; 0 = off)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "render",
        help="print every object the operator would create for a policy and nodes",
        description="Print, as multi-document YAML in a stable order, every object the operator would create "
        "for a ClusterPolicy and a set of nodes, plus the label patch for each node. With --from-cluster, read "
        "the cluster instead and print only the writes the operator would make now. Exits 2 on an invalid "
        "policy, with one line per problem. Fields that are set but not acted on are named on stderr, one "
        "warning line each.",
    )
    p.add_argument("--policy", help="ClusterPolicy YAML file ('-' for stdin)")
    p.add_argument(
        "--from-cluster",
        action="store_true",
        help="read the nodes, objects and active ClusterPolicy from the cluster (--policy replaces its spec) and "
        "print the writes the operator would make now (a dry-run pass; nothing is written)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file, with --from-cluster")
    p.add_argument(
        "--nodes", help="Node objects (and the ConfigMaps the policy references): multi-document YAML or a List"
    )
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="operand namespace (%(default)s)")
    p.add_argument(
        "--api-group",
        action="append",
        default=[],
        metavar="GROUP",
        help="assume the cluster serves this optional API group (repeatable), e.g. monitoring.coreos.com for "
        f"ServiceMonitors; optional kinds: {_optional_kinds()}",
    )
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("upgrade", help="driver upgrade orchestration")
    upgrade_sub = p.add_subparsers(dest="upgrade_command", required=True, metavar="COMMAND")
    q = upgrade_sub.add_parser(
        "plan",
        help="print the waves a driver upgrade takes and why each waiting node waits (reads only)",
        description="Read the cluster and print, before or during a driver rollout, which nodes go in which wave "
        "under the policy's limits and, for every node that waits, what it waits for.",
    )
    q.add_argument("--kubeconfig", help="kubeconfig file")
    q.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="operand namespace (%(default)s)")
    q.set_defaults(func=cmd_upgrade_plan)

    p = sub.add_parser("crds", help="print the CRDs (or apply them with --apply)")
    p.add_argument("--apply", action="store_true", help="server-side apply them to the cluster")
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.set_defaults(func=cmd_crds)
    _add_doctor(sub)
    return parser


def _namespace_given(argv: list[str]) -> bool:
    return any(a in ("-n", "--namespace") or a.startswith(("--namespace=", "-n")) for a in argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.namespace_given = _namespace_given(argv)
    return int(args.func(args) or 0)


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl gpu doctor|capacity ...` (the `kubectl-gpu` plugin): the same commands, under kubectl's name."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="kubectl gpu", description="GPU diagnostics for the cluster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_doctor(sub)
    args = parser.parse_args(argv)
    args.namespace_given = _namespace_given(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
