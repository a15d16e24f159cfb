"""The `gpu-operator` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import __version__
from .api import (
    ALLOW_UNKNOWN_ANNOTATION,
    ClusterPolicySpec,
    PolicyError,
    allows_unknown,
    parse_policy,
    parse_spec,
    unknown_fields,
)
from .coverage import unsupported_fields

if TYPE_CHECKING:
    from .capacity import PluginConfigs
    from .kube import Kube

DEFAULT_NAMESPACE = "gpu-operator"
# Every --kubeconfig's help: where Kube.connect looks without one.
KUBECONFIG_HELP = "kubeconfig file (default: the in-cluster config in a pod, else $KUBECONFIG, else ~/.kube/config)"


def _load_yaml_docs(path: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # UTF-16 from a PowerShell redirect, say: the file named, as YAML errors are
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
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


# The fields render reads from a hand-written file, by kind, and the type each must have where it is set (a path's
# keys are separated by "/"; "[]" stands for each item of a list).
_METADATA = {"metadata": "mapping", "metadata/name": "string", "metadata/labels": "strings",
             "metadata/annotations": "strings"}  # fmt: skip
_PCI = "spec/features/instances/pci.device"
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_NODE_REQUIRED = f"spec/affinity/nodeAffinity/{_REQUIRED}"
# A selector requirement's fields, below its list (the API server's types: values are []string, so `[8]` is refused).
_REQUIREMENT = (("", "list"), ("/[]", "mapping"), ("/[]/key", "string"), ("/[]/operator", "string"),
                ("/[]/values", "list"), ("/[]/values/[]", "string"))  # fmt: skip
_SHAPES: dict[str, dict[str, str]] = {
    "ClusterPolicy": _METADATA,
    "Node": {
        **_METADATA, "spec": "mapping", "spec/unschedulable": "boolean", "spec/taints": "list",
        "spec/taints/[]": "mapping", "spec/taints/[]/key": "string", "spec/taints/[]/value": "string",
        "spec/taints/[]/effect": "string", "status": "mapping", "status/conditions": "list",
        "status/conditions/[]": "mapping", "status/nodeInfo": "mapping",
        "status/nodeInfo/containerRuntimeVersion": "string",
    },
    "ConfigMap": {**_METADATA, "data": "strings", "binaryData": "strings"},
    "NodeFeature": {
        **_METADATA, "spec": "mapping", "spec/features": "mapping", "spec/features/instances": "mapping",
        _PCI: "mapping", f"{_PCI}/elements": "list", f"{_PCI}/elements/[]": "mapping",
        f"{_PCI}/elements/[]/attributes": "mapping",
    },
    "NVIDIADriver": _METADATA,
    "Pod": {  # what capacity reads
        **_METADATA, "metadata/namespace": "string", "spec": "mapping", "spec/overhead": "mapping",
        "spec/nodeSelector": "strings", "spec/tolerations": "list", "spec/tolerations/[]": "mapping",
        **{f"spec/tolerations/[]/{key}": "string" for key in ("key", "operator", "value", "effect")},
        "spec/topologySpreadConstraints": "list", "spec/topologySpreadConstraints/[]": "mapping",
        "spec/hostNetwork": "boolean", "spec/resources": "mapping", "spec/resources/limits": "mapping",
        "spec/resources/requests": "mapping", "spec/nodeName": "string",
        **{f"spec/{key}{path}": want for key in ("containers", "initContainers") for path, want in (
            ("", "list"), ("/[]", "mapping"), ("/[]/resources", "mapping"), ("/[]/resources/limits", "mapping"),
            ("/[]/resources/requests", "mapping"), ("/[]/ports", "list"), ("/[]/ports/[]", "mapping"),
            ("/[]/ports/[]/hostPort", "integer"), ("/[]/ports/[]/containerPort", "integer"),
            ("/[]/ports/[]/hostIP", "string"), ("/[]/ports/[]/protocol", "string"))},
        "spec/affinity": "mapping", "spec/affinity/nodeAffinity": "mapping", f"{_NODE_REQUIRED}": "mapping",
        f"{_NODE_REQUIRED}/nodeSelectorTerms": "list", f"{_NODE_REQUIRED}/nodeSelectorTerms/[]": "mapping",
        **{f"{_NODE_REQUIRED}/nodeSelectorTerms/[]/{key}{path}": want for key in ("matchExpressions", "matchFields")
           for path, want in _REQUIREMENT},
        **{f"spec/affinity/{kind}{path}": want for kind in ("podAffinity", "podAntiAffinity") for path, want in (
            ("", "mapping"), (f"/{_REQUIRED}", "list"), (f"/{_REQUIRED}/[]", "mapping"),
            (f"/{_REQUIRED}/[]/namespaces", "list"), (f"/{_REQUIRED}/[]/namespaces/[]", "string"),
            (f"/{_REQUIRED}/[]/topologyKey", "string"),
            *((f"/{_REQUIRED}/[]/{selector}{part}", want) for selector in ("labelSelector", "namespaceSelector")
              for part, want in (("", "mapping"), ("/matchLabels", "strings"),
                                 *((f"/matchExpressions{p}", w) for p, w in _REQUIREMENT))))},
    },
}  # fmt: skip
_TYPES: dict[str, type] = {"mapping": dict, "list": list, "string": str, "boolean": bool, "integer": int}
# The one version each of our kinds is served in (crds/): another is refused by the API server.
_API_VERSIONS = {"ClusterPolicy": "nvidia.com/v1", "NVIDIADriver": "nvidia.com/v1alpha1"}


def _values(obj: Any, path: tuple[str, ...], at: str = "") -> Iterator[tuple[str, Any]]:
    """(field path, value) of each value set at `path`; an ancestor of the wrong type yields nothing (it is reported
    itself)."""
    if not path:
        yield at, obj
    elif path[0] == "[]":
        for i, item in enumerate(obj if isinstance(obj, list) else ()):
            yield from _values(item, path[1:], f"{at}[{i}]")
    elif isinstance(obj, dict) and obj.get(path[0]) is not None:
        yield from _values(obj[path[0]], path[1:], f"{at}.{path[0]}" if at else path[0])


def _shape_problem(doc: dict[str, Any]) -> str | None:
    """The first field of a document that render cannot read, as "FIELD: must be ...", or its unserved apiVersion."""
    kind = doc.get("kind", "Node")
    if not isinstance(kind, str):
        return f"kind: must be a string, not {type(kind).__name__}"
    version = doc.get("apiVersion")
    if kind in _API_VERSIONS and version is not None and version != _API_VERSIONS[kind]:
        return f"apiVersion {version}: {kind} is served only as {_API_VERSIONS[kind]}"
    for path, want in _SHAPES.get(kind, {}).items():
        for where, value in _values(doc, tuple(path.split("/"))):
            if want == "strings":
                if not isinstance(value, dict):
                    return f"{where}: must be a mapping of strings, not {type(value).__name__} {value!r}"
                for k, v in value.items():
                    if not isinstance(k, str) or not isinstance(v, str):
                        wrong = v if isinstance(k, str) else k
                        what = "" if isinstance(k, str) else " key"
                        return (f"{where}.{k}:{what} must be a string, not {type(wrong).__name__} {wrong!r} "
                                "(quote it in YAML)")  # fmt: skip
            elif not isinstance(value, _TYPES[want]):
                article = "an" if want == "integer" else "a"
                quote = " (quote it in YAML)" if want == "string" and isinstance(value, (int, float)) else ""
                return f"{where}: must be {article} {want}, not {type(value).__name__} {value!r}{quote}"
    if kind == "Node" and not (doc.get("metadata") or {}).get("name"):
        return "metadata.name: must be set"
    return None


def _checked(path: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents, or ValueError naming the first one render cannot read, and the field."""
    for doc in docs:
        problem = _shape_problem(doc)
        if problem:
            kind = doc.get("kind", "Node")
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
            what = kind if isinstance(kind, str) else "a document"
            raise ValueError(f"{path}: {what} {name}: {problem}" if isinstance(name, str) and name else
                             f"{path}: {what}: {problem}")  # fmt: skip
    return docs


def _policy_from_file(
    path: str, docs: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """(metadata, spec) of the first ClusterPolicy in the file (or in `docs`, read from it), or a bare spec mapping;
    and the file's ConfigMaps."""
    docs = _load_yaml_docs(path) if docs is None else docs
    config_maps = _checked(path, [d for d in docs if d.get("kind") == "ConfigMap"])
    for doc in docs:
        if doc.get("kind") == "ClusterPolicy":
            _checked(path, [doc])
            spec = doc.get("spec")  # only a null spec is the empty one: `spec: []` is parse_spec's error
            return doc.get("metadata") or {}, {} if spec is None else spec, config_maps
    if len(docs) == 1 and "kind" not in docs[0]:
        return {"name": "cluster-policy"}, docs[0], []
    raise ValueError(f"{path}: no ClusterPolicy found")


def _print_error(exc: Exception) -> None:
    """`error: ...` on stderr, one line per problem of a PolicyError (as render prints them)."""
    for line in exc.problems if isinstance(exc, PolicyError) else [str(exc)]:
        print(f"error: {line}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    if args.from_cluster and args.nodes:  # the cluster's nodes are read: the file's would be ignored
        print("error: --nodes is read only without --from-cluster", file=sys.stderr)
        return 2
    if args.from_cluster:
        return _render_from_cluster(args)
    if args.kubeconfig:  # without --from-cluster the files are rendered and the cluster is never read
        print("error: --kubeconfig is read only with --from-cluster", file=sys.stderr)
        return 2
    if not args.policy:
        print("error: --policy is required (or --from-cluster)", file=sys.stderr)
        return 2
    from . import compat
    from .gpu_identity import device_ids_from_node_feature, node_of_feature
    from .nodes import NodeFacts, keep_labels
    from .nvidiadriver import NVIDIADriver, conflict_message, selector_keys
    from .observe import with_devices
    from .render import config_map_keys, driver_node_patches, driver_routing, merged, node_patches, plan, relabelled
    from .states import RenderContext

    try:
        # stdin can be read once: `--policy - --nodes -` takes both from the one stream, as from one file
        stdin = _load_yaml_docs("-") if args.policy == args.nodes == "-" else None
        meta, raw_spec, policy_config_maps = _policy_from_file(args.policy, stdin)
        spec = parse_spec(raw_spec, allow_unknown=args.allow_unknown_fields or allows_unknown(meta))
        node_docs = _checked(args.nodes, _load_yaml_docs(args.nodes) if stdin is None else stdin) if args.nodes else []
    except PolicyError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in unknown_fields(spec):
        print(f"warning: {path}: unknown field, ignored (not in upstream v26.7's ClusterPolicy)", file=sys.stderr)
    for path, reason in unsupported_fields(spec):
        print(f"warning: spec.{path}: set but not supported by this operator ({reason})", file=sys.stderr)
    # NVIDIADriver objects in the same file drive the nodes they select (with driver.useNvidiaDriverCRD): the
    # labels their selectors name are kept when the nodes are read.
    driver_docs = [d for d in node_docs if d.get("kind") == "NVIDIADriver"]
    keep_labels(selector_keys(driver_docs))
    nodes = [NodeFacts.from_node(n) for n in node_docs if n.get("kind", "Node") == "Node"]
    # NFD NodeFeature objects in the same file give the nodes' PCI device IDs.
    features: dict[str, tuple[str, ...]] = {}
    for doc in node_docs:
        if doc.get("kind") == "NodeFeature":
            node = node_of_feature(doc)
            features[node] = tuple(sorted({*features.get(node, ()), *device_ids_from_node_feature(doc)}))
    nodes = list(with_devices({n.name: n for n in nodes}, features).values())
    # ConfigMaps in either file stand for the cluster's (the driver mounts referenced ones key by key; one the sharing
    # config names that neither holds does not exist).
    config_maps = {
        (d.get("metadata") or {}).get("name", ""): config_map_keys(d)
        for d in [*policy_config_maps, *node_docs] if d.get("kind") == "ConfigMap"
    }
    drivers = [NVIDIADriver.from_object(d) for d in driver_docs]
    routing = driver_routing(nodes, spec, drivers)
    for d in drivers:
        if routing.assignment is not None and d.name in routing.assignment.problems:
            print(f"warning: NVIDIADriver {d.name}: {routing.assignment.problems[d.name]}", file=sys.stderr)
        message = conflict_message(d.name, routing.assignment) if routing.assignment is not None else None
        if message:
            print(f"warning: NVIDIADriver {d.name}: {message}", file=sys.stderr)
    verdicts = compat.verdicts_for(nodes, spec, routing.groups)
    refused = compat.refused(verdicts)
    for name, message in refused.items():
        print(f"warning: node {name}: driver not rolled out: {message}", file=sys.stderr)
    patches = node_patches(nodes, spec, set(refused))
    patches = merged(patches, driver_node_patches(relabelled(nodes, patches), spec, routing))
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
        nvidia_drivers=routing.groups,
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
        for why in state_plan.held.values():  # one NVIDIADriver's objects: the others' follow
            print(f"warning: {state_plan.state.name}: not rendered: {why}", file=sys.stderr)
            out.append(f"# {state_plan.state.name}: not rendered: {why}\n")
        for obj in state_plan.objects:
            out.append(f"# {state_plan.state.name}\n" + yaml.safe_dump(obj, sort_keys=True))
    for name in sorted(patches):
        patch = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, **patches[name]}}
        out.append(
            f"# label patch for node {name} (merge patch; null removes a label or annotation)\n"
            + yaml.safe_dump(patch, sort_keys=True)
        )
    if refused:
        lines = [f"# {name}: {v.describe()}" for name, v in verdicts.items()]
        out.append("# driver compatibility per node (version matrix)\n" + "\n".join(lines) + "\n")
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
    from .render import config_map_keys
    from .states.operator_metrics import live_target_port
    from .status import active_policy

    try:
        kube = Kube.connect(args.kubeconfig)
        snap = observe(kube, args.namespace)
        allow = args.allow_unknown_fields
        if args.policy:  # this policy instead of the active one's spec (or as the only one)
            meta, raw_spec, config_maps = _policy_from_file(args.policy)
            allow = allow or allows_unknown(meta)
            parse_spec(raw_spec, allow_unknown=allow)
            for cm in config_maps:  # the file's, as applied with it (offline render takes them too)
                cm_meta = cm.get("metadata") or {}
                if cm_meta.get("namespace", args.namespace) == args.namespace and cm_meta.get("name"):
                    snap.config_maps = {**snap.config_maps, cm_meta["name"]: config_map_keys(cm)}
                    snap.config_data = {**snap.config_data, cm_meta["name"]: dict(cm.get("data") or {})}
            name = active_policy(list(snap.policies.values())) or meta.get("name", "cluster-policy")
            current = snap.policies.get(name) or {
                "apiVersion": "nvidia.com/v1",
                "kind": "ClusterPolicy",
                "metadata": {"name": name, "uid": "00000000-0000-0000-0000-000000000000", "generation": 1},
            }
            snap.policies[name] = {**current, "spec": raw_spec}
        name = active_policy(list(snap.policies.values()))
        if allow and name:  # as if the policy carried the annotation (nothing is written)
            policy = snap.policies[name]
            meta = policy.get("metadata") or {}
            annotations = {**(meta.get("annotations") or {}), ALLOW_UNKNOWN_ANNOTATION: "true"}
            snap.policies[name] = {**policy, "metadata": {**meta, "annotations": annotations}}
        if args.api_group:
            snap.api_groups = snap.api_groups | frozenset(args.api_group)
        dry = DryRunKube(kube.client)
        port = live_target_port(snap.owned, args.namespace)  # the operator's --metrics-port, not this process's
        Reconciler(dry, args.namespace, metrics_port=port).reconcile(snap)
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

    if args.apply and args.dir:  # one or the other: the files written, or the cluster's CRDs applied
        print("error: --dir and --apply exclude each other", file=sys.stderr)
        return 2
    if args.kubeconfig and not args.apply:  # without --apply no cluster is read (render refuses the like)
        print("error: --kubeconfig is read only with --apply", file=sys.stderr)
        return 2
    if args.dir:
        from .crd import crd_files

        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
            for name, text in crd_files().items():
                (Path(args.dir) / name).write_text(text)
        except OSError as exc:  # a file of that name, no permission
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.apply:
        sys.stdout.write(crds_yaml())
        return 0
    from .kube import ApiError, Kube

    try:
        kube = Kube.connect(args.kubeconfig)
        for crd in all_crds():
            kube.apply(crd)
            kube.wait_established(crd["metadata"]["name"])
            print(f"customresourcedefinition {crd['metadata']['name']} applied and established", file=sys.stderr)
    except (ApiError, OSError) as exc:  # OSError: an unusable kubeconfig, no answer, or not established in time
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .kube import Unreachable
    from .runtime import Unbindable, run

    try:
        return run(
            kubeconfig=args.kubeconfig,
            namespace=args.namespace,
            metrics_port=args.metrics_port,
            health_port=args.health_port,
            leader_elect=args.leader_elect,
        )
    except (Unreachable, Unbindable) as exc:  # a kubeconfig or port it cannot use (a cluster not answering is retried)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_upgrade_plan(args: argparse.Namespace) -> int:
    """Read-only: which nodes go in which wave, and why each waiting node waits."""
    import time

    from . import upgrade
    from .kube import ApiError, Kube
    from .observe import Snapshot, observe, require_nvidia_drivers
    from .status import active_policy
    from .upgrade.adapter import managed_nodes, workload_pods

    try:
        kube = Kube.connect(args.kubeconfig)
        snap = observe(kube, args.namespace)
        name = active_policy(list(snap.policies.values()))
        if name is None:
            print("error: no ClusterPolicy in the cluster", file=sys.stderr)
            return 2
        policy_obj = snap.policies[name]
        spec = parse_policy(policy_obj)
        require_nvidia_drivers(snap, spec.driver.use_nvidia_driver_crd)  # (a refused listing is not "none")
        # One section per upgrade policy: the ClusterPolicy's, or each NVIDIADriver's (useNvidiaDriverCRD).
        sections: list[tuple[str, ClusterPolicySpec, Snapshot, tuple[str, str] | None]]  # the last: managed_nodes
        sections = [(f"ClusterPolicy {name}", spec, snap, None)]
        limit = None
        if spec.driver.enabled and spec.driver.use_nvidia_driver_crd:
            from dataclasses import replace

            from .nvidiadriver import NVIDIADriver
            from .render import driver_routing

            drivers = [NVIDIADriver.from_object(o) for o in snap.nvidia_drivers.values()]
            routing = driver_routing(list(snap.nodes.values()), spec, drivers)
            sections = [
                (f"NVIDIADriver {g.name}", g.spec,
                 replace(snap, nodes={k: v for k, v in snap.nodes.items() if k in g.nodes}), g.upgrade_owner())
                for g in routing.groups
            ]  # fmt: skip
            everyone = [n for _, s_, part, owner in sections for n in managed_nodes(s_, part, owner=owner)]
            what = "all NVIDIADrivers (ClusterPolicy driver.upgradePolicy)"
            limit = upgrade.Limit.over(everyone, spec.driver.upgrade_policy, what)
            if not sections:
                print("the ClusterPolicy's driver is handed to NVIDIADriver resources (useNvidiaDriverCRD); none "
                      "drives a node")  # fmt: skip
            else:
                cap = spec.driver.upgrade_policy
                slots = upgrade.Slots.observe(everyone, cap)
                print(f"NVIDIADrivers upgrade together within the ClusterPolicy's maxParallelUpgrades="
                      f"{cap.max_parallel_upgrades or 'unlimited'}, maxUnavailable={cap.max_unavailable} "
                      f"({slots.max_unavailable} of {slots.total} nodes): waves are numbered across them")  # fmt: skip
        results = []
        for title, section_spec, part, owner in sections:
            managed = managed_nodes(section_spec, part, owner=owner)
            policy = section_spec.driver.upgrade_policy
            if owner is None and section_spec.sandbox_workloads.enabled:  # the ClusterPolicy's: none, as the operator
                policy = policy.model_copy(update={"auto_upgrade": False})
            result = upgrade.plan(managed, workload_pods(kube, managed, policy), policy, time.time(), limit=limit)
            if limit is not None:
                starts = result.started
                by_name = {n.name: n for n in managed}
                limit = limit.after(len(starts), sum(1 for n in starts if not by_name[n].counted_unavailable))
            results.append((title, section_spec, managed, result))
    except (ApiError, PolicyError, OSError) as exc:
        _print_error(exc)
        return 2
    joint = None
    if limit is not None:  # the waves of all NVIDIADrivers together, under the ClusterPolicy's cap, as the operator
        parts = [(managed, section_spec.driver.upgrade_policy) for _, section_spec, managed, _ in results]
        joint = upgrade.preview_joint_waves(parts, spec.driver.upgrade_policy)
    sandboxed = joint is None and spec.sandbox_workloads.enabled  # the ClusterPolicy's own driver's section
    for title, section_spec, managed, result in results:
        if joint is None:
            waves = list(enumerate(upgrade.preview_waves(managed, section_spec.driver.upgrade_policy), 1))
        else:
            mine = {n.name for n in managed}
            waves = [(i, ours) for i, wave in enumerate(joint, 1) if (ours := [n for n in wave if n in mine])]
        _print_upgrade_plan(title, section_spec, managed, result, waves, sandboxed=sandboxed)
    return 0


def _print_upgrade_plan(
    title: str, spec: ClusterPolicySpec, managed: list[Any], result: Any, waves: list[tuple[int, list[str]]],
    sandboxed: bool = False,
) -> None:
    """One section of `upgrade plan`; `waves`: its nodes' waves, by number. `sandboxed`: the ClusterPolicy's own
    driver with sandboxWorkloads.enabled, which the operator does not upgrade (as upstream)."""
    from .upgrade.adapter import steady

    policy = spec.driver.upgrade_policy
    c = result.counters
    limit = policy.max_parallel_upgrades or "unlimited"
    print(f"{title}: autoUpgrade={str(policy.auto_upgrade).lower()}, maxParallelUpgrades={limit}, "
          f"maxUnavailable={policy.max_unavailable} ({c.max_unavailable} of {c.total} nodes)")  # fmt: skip
    print(f"nodes: {c.total} managed, {c.done} done, {c.in_progress} in progress, {c.failed} failed, "
          f"{c.pending} waiting to start, {c.skipped} skipped")  # fmt: skip
    if not spec.driver.enabled or spec.driver.use_nvidia_driver_crd:
        why = "disabled" if not spec.driver.enabled else "handed to NVIDIADriver resources (useNvidiaDriverCRD)"
        print(f"the ClusterPolicy's driver is {why}: it upgrades no node")
    elif sandboxed:
        print("sandboxWorkloads is enabled: nothing is orchestrated (k8s-driver-manager evicts and drains itself)")
    elif not policy.auto_upgrade:
        print("autoUpgrade is off: nothing is orchestrated")
    elif not waves:
        print("no node needs an upgrade")
    for i, wave in waves if not sandboxed else ():  # none can start
        print(f"wave {i}: {', '.join(wave)}")
    states = {n.name: n.state or "unknown" for n in managed}
    if result.waiting:
        print("waiting:")
        for node in sorted(result.waiting):
            print(f"  {node} ({states[node]}): {steady(result.waiting[node])}")


def _resources(res: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in res.items()) or "nothing"


def cmd_mig_layouts(args: argparse.Namespace) -> int:
    """The layouts valid for each GPU model, and what each would advertise (per node, or per GPU offline)."""
    from . import mig, mig_layouts
    from .kube import ApiError, Kube
    from .nodes import GPU_PRODUCT, NodeFacts

    layouts: mig.Layouts | None = None
    groups: dict[str, tuple[mig_layouts.MigGPU, list[tuple[str, int | None]]]] = {}  # node, GPUs (None: unknown)
    if args.offline:
        if args.node:
            print("error: --node reads the cluster; drop --offline", file=sys.stderr)
            return 2
        groups = {g.name: (g, []) for g in mig_layouts.gpus()}
    else:
        try:
            kube = Kube.connect(args.kubeconfig)
            nodes = kube.list("Node")
            policies = kube.list("ClusterPolicy")
            from .mig_pass import _layouts
            from .states.mig_manager import custom_config
            from .status import active_policy

            active = active_policy(policies)
            if active:
                spec = parse_policy(next(p for p in policies if p["metadata"]["name"] == active))
                custom = custom_config(spec)
                cm = kube.get("ConfigMap", custom, args.namespace) if custom else None
                layouts = _layouts(spec, {custom: cm.get("data") or {}} if custom and cm else {})
        except (ApiError, PolicyError, OSError, mig.ConfigError) as exc:
            _print_error(exc)
            return 2
        if args.node:
            nodes = [n for n in nodes if n["metadata"]["name"] == args.node]
            if not nodes:
                print(f"error: no node {args.node}", file=sys.stderr)
                return 2
        for node in nodes:
            facts = NodeFacts.from_node(node)
            product = facts.labels.get(GPU_PRODUCT, "")
            gpu = mig.gpu_of_product(product)
            if gpu is None:
                if args.node:
                    print(f"node {args.node}: no MIG-capable GPU known (product {product or 'unknown'!r})")
                continue
            gpus = mig.physical_gpus(facts.labels, mig.held_entries(facts, gpu, layouts))
            groups.setdefault(gpu.name, (gpu, []))[1].append((facts.name, gpus))
        if not groups:
            print("no node with a MIG-capable GPU (GFD's nvidia.com/gpu.product label names the model)")
            return 0
    source = (
        "mig-manager builds from each GPU (no migManager.config.name)"
        if layouts is None
        else "from the ClusterPolicy's migManager.config ConfigMap"
    )
    print(f"# layouts {source}")
    for gpu, members in groups.values():
        counts = sorted({c for _, c in members}, key=lambda c: c or 0) or [None]  # offline: none known
        gpus = (counts[0] or 1) if len(counts) == 1 else 1
        where = ", ".join(f"{n} ({'GPU count not known' if c is None else f'{c} GPUs'})" for n, c in members) \
            or "offline"
        print(f"{gpu.name} [{where}]" + ("" if gpus > 1 else ": per GPU"))
        table = mig.node_layouts(gpu, layouts)
        for name in mig.valid_layouts(gpu, table):
            entries = mig.layout_entries(gpu, name, table)
            assert entries is not None
            print(f"  {name}")
            # As the gate checks each node: its GPUs when their count is known, else every index an entry names.
            if conflict := next((c for c in (mig.mode_conflict(entries, n) for n in counts) if c), ""):
                print(f"    refused: {conflict} (mig-parted fails it)")
                continue
            print(f"    mixed:  {_resources(mig.advertised(entries, gpus, 'mixed'))}")
            print(f"    single: {_resources(mig.advertised(entries, gpus, 'single'))}")
    return 0


def versions_report(snap: Any | None = None) -> dict[str, Any]:
    """The matrix, and with a cluster snapshot the driver verdict for each GPU node: the active policy's driver, or
    with useNvidiaDriverCRD the driver of the NVIDIADriver that drives the node (as the operator judges it)."""
    from . import compat, matrix
    from .nvidiadriver import NVIDIADriver
    from .observe import require_nvidia_drivers
    from .render import driver_routing
    from .status import active_policy

    report: dict[str, Any] = {"matrix": matrix.data()}
    if snap is None:
        return report
    name = active_policy(list(snap.policies.values()))
    nodes = list(snap.nodes.values())
    if name is None:
        report["cluster"] = {"policy": None, "nodes": {}}
        return report
    spec = parse_policy(snap.policies[name])
    by_crd = spec.driver.use_nvidia_driver_crd
    require_nvidia_drivers(snap, by_crd)  # (a refused listing is not "none")
    drivers = [NVIDIADriver.from_object(o) for o in snap.nvidia_drivers.values()] if by_crd else []
    groups = driver_routing(nodes, spec, drivers).groups
    owner = {n: g.name for g in groups for n in g.nodes}
    found = compat.verdicts_for(nodes, spec, groups)
    report["cluster"] = {
        "policy": name,
        "useNvidiaDriverCRD": by_crd,
        "driver": None if by_crd else compat.driver_version(spec),  # each NVIDIADriver's, per node
        "kernelModuleType": None if by_crd else spec.driver.kernel_module_type,
        "nodes": {
            n: {
                "nvidiaDriver": owner.get(n),
                "driver": v.version,
                "gpu": v.identity.describe(),
                "architectures": list(v.identity.architectures),
                "identifiedBy": v.identity.source or None,
                "kernelModuleType": v.module_type,
                "refused": {"rule": v.refusal.rule, "message": v.refusal.message} if v.refusal else None,
                "verdict": v.describe(),
            }
            for n, v in found.items()
        },
    }
    return report


def versions_text(report: dict[str, Any]) -> str:
    m = report["matrix"]
    lines = ["operator releases (default component versions):"]
    for r in m["releases"]:
        comps = ", ".join(f"{k} {v}" for k, v in r["components"].items())
        lines.append(f"  {r['release']}: {comps}  [{r['source']}]")
        if r.get("kubernetes"):
            k = r["kubernetes"]
            lines.append(f"    kubernetes {k['min']}-{k['max']}  [{k['source']}]")
        if r.get("operating_systems"):
            supported = r["operating_systems"]["supported"]
            oses = "; ".join(f"{o['id']} {' '.join(o['versions'])}".strip() for o in supported)
            lines.append(f"    operating systems: {oses}  [{r['operating_systems']['source']}]")
        if r.get("drivers"):
            lines.append(f"    drivers: {', '.join(r['drivers'])}")
    lines.append("driver branches (newest CUDA without the forward-compatibility package):")
    for b in m["branches"]:
        eol = f", end of life {b['eol']}" if b.get("eol") else ""
        lines.append(f"  R{b['branch']}: CUDA {b['max_cuda']}{eol}  [{b['source']}]")
    lines.append("GPU architectures:")
    for a in m["architectures"]:
        span = (f"R{a['min_branch']}+" if a.get("min_branch") else "") + (
            f"up to R{a['last_branch']}" if a.get("last_branch") else ""
        )
        modules = "/".join(t for t, ok in (("open", a["open_modules"]), ("proprietary", a["proprietary"])) if ok)
        lines.append(f"  {a['name']} (compute {', '.join(a['compute'])}): {span}, {modules} kernel modules  "
                     f"[{a['source']}]")  # fmt: skip
    lines.append("PCI device IDs (vendor 10de):")
    for d in m["devices"]:
        ids = ", ".join(f"{i} {p}" for i, p in d["ids"].items())
        lines.append(f"  {d['architecture']}: {ids}  [{d['source']}]")
    lines.append("products with rules of their own (by PCI device ID, else GFD's gpu.product label):")
    for p in m.get("products") or []:
        rules = (["open kernel modules only"] if p.get("open_only") else []) + (
            [f"driver {p['min_version']} or newer"] if p.get("min_version") else []
        )
        lines.append(f"  {p['product']} ({p['architecture']}; {', '.join(p['ids'])}; {p['gfd_product']}): "
                     f"{', '.join(rules)}  [{p['source']}]")  # fmt: skip
    km = m["kernel_modules"]
    lines.append(f"kernel modules: open from R{km['open_from_branch']}, the installer's default from "
                 f"R{km['open_default_from_branch']}  [{km['source']}]")  # fmt: skip
    lines.append(f"  auto: per node's GPUs from R{km['auto_from_branch']}, proprietary before  [{km['auto_source']}]")
    old = ", ".join(f"R{b}" for b in km["no_module_type_env_branches"])
    lines.append(f"  {old}: no KERNEL_MODULE_TYPE read, open with OPEN_KERNEL_MODULES_ENABLED=true only")
    lines.append(f"  no proprietary modules from R{km['no_proprietary_from_branch']}  [{km['proprietary_source']}]")
    lines.append("precompiled drivers:")
    for p in m["precompiled"]["rows"]:
        branches = ", ".join(f"R{b}" for b in p["branches"])
        lines.append(f"  {p['os']} kernel {', '.join(p['kernels'])}: {branches}  [{m['precompiled']['source']}]")
    cluster = report.get("cluster")
    if cluster is not None:
        if cluster["policy"] is None:
            lines.append("cluster: no ClusterPolicy")
        elif cluster["useNvidiaDriverCRD"]:
            lines.append(f"cluster: ClusterPolicy {cluster['policy']}, driver from NVIDIADriver resources "
                         "(useNvidiaDriverCRD)")  # fmt: skip
            for name, node in cluster["nodes"].items():
                owner = f"NVIDIADriver {node['nvidiaDriver']}, driver {node['driver']}"
                lines.append(f"  {name}: {owner}: {node['verdict']}")
            if not cluster["nodes"]:
                lines.append("  no GPU node gets an NVIDIADriver's driver")
        else:
            lines.append(f"cluster: ClusterPolicy {cluster['policy']}, driver {cluster['driver']}, "
                         f"kernelModuleType {cluster['kernelModuleType']}")  # fmt: skip
            for name, node in cluster["nodes"].items():
                lines.append(f"  {name}: {node['verdict']}")
            if not cluster["nodes"]:
                lines.append("  no GPU node gets the ClusterPolicy's driver")
    return "\n".join(lines) + "\n"


def cmd_versions(args: argparse.Namespace) -> int:
    """The version matrix and, with a cluster, where each GPU node falls."""
    import json

    from .kube import ApiError, Kube
    from .observe import observe

    snap = None
    if args.kubeconfig:
        try:
            snap = observe(Kube.connect(args.kubeconfig), args.namespace)
            report = versions_report(snap)
        except (ApiError, PolicyError, OSError) as exc:
            _print_error(exc)
            return 2
    else:
        report = versions_report()
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(report, sort_keys=True))
    else:
        sys.stdout.write(versions_text(report))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Read-only: findings with evidence and fix; exit 0 healthy, 1 warnings, 2 errors (3: cannot read)."""
    from .doctor import diagnose, exit_status, gather, render_json, render_prometheus, render_text
    from .kube import ApiError, Kube

    # -n unset (None, so an abbreviation such as --names counts as set): every namespace, and "default" for --pod
    namespace = "default" if args.namespace is None else args.namespace
    try:
        kube = Kube.connect(args.kubeconfig)
        cluster = gather(kube, args.operator_namespace)
        names = {((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name"))
                 for p in cluster.pods}  # fmt: skip
        if args.pod and (namespace, args.pod) not in names:
            extra = kube.get("Pod", args.pod, namespace)  # an operand pod doctor did not need to read
            if extra is None:
                print(f"error: pod {namespace}/{args.pod} not found", file=sys.stderr)
                return 3
            cluster.pods.append(extra)
        if args.node and args.node not in {(n.get("metadata") or {}).get("name") for n in cluster.nodes}:
            print(f"error: node {args.node} not found", file=sys.stderr)
            return 3
    except (ApiError, OSError) as exc:
        print(f"error: cannot read the cluster: {exc}", file=sys.stderr)
        if isinstance(exc, ApiError) and exc.status == 404 and "/apis/nvidia.com/" in exc.what:
            print("the GPU operator's CRDs are not installed here: install the operator first (README, Install)",
                  file=sys.stderr)
        return 3
    found = diagnose(cluster, namespace=namespace if args.namespace is not None or args.pod else None,
                     pod=args.pod, node=args.node)  # fmt: skip
    render = {"json": render_json, "prometheus": render_prometheus}.get(args.output, render_text)
    sys.stdout.write(render(found))
    return exit_status(found)


def _plugin_configs(kube: Kube, namespace: str) -> PluginConfigs:
    """The device plugin's sharing configs of the active ClusterPolicy (capacity.PluginConfigs), or why they could
    not be read (then capacity judges by GFD's labels and says so)."""
    from .capacity import PluginConfigs
    from .kube import ApiError
    from .status import active_policy

    try:
        policies = kube.list("ClusterPolicy")
        name = active_policy(policies)
        if name is None:
            return PluginConfigs(unread="no ClusterPolicy")
        spec = parse_policy(next(p for p in policies if p["metadata"]["name"] == name))
        if not spec.device_plugin.enabled:
            return PluginConfigs(unread=f"ClusterPolicy {name} disables the device plugin")
        cfg = spec.device_plugin.config
        if not cfg.name:
            return PluginConfigs(mig_strategy=spec.mig.strategy)
        cm = kube.get("ConfigMap", cfg.name, namespace)
    except ApiError as exc:
        return PluginConfigs(unread=f"cannot read it: {' '.join(str(exc).split())}")
    except PolicyError as exc:
        return PluginConfigs(unread=f"ClusterPolicy {name} is invalid: {'; '.join(exc.problems)}")
    if cm is None:
        return PluginConfigs(unread=f"ConfigMap {namespace}/{cfg.name} not found")
    return PluginConfigs.of_data(cfg.name, cfg.default, dict(cm.get("data") or {}), spec.mig.strategy)


# Where the pod template of a workload is (what capacity plans of it): the path to it in the object.
_POD_TEMPLATES: dict[str, tuple[str, ...]] = {
    **{kind: ("spec", "template") for kind in ("Deployment", "ReplicaSet", "StatefulSet", "Job")},
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
# The labels the API server gives a Job's pod template, with the Job's name (kubernetes
# pkg/registry/batch/job/strategy.go generateSelector, unless spec.manualSelector; it adds the controller-uid ones
# too); and those a workload's controller gives each pod, per revision, pod or index: not known in advance.
_JOB_NAME_LABELS = ["job-name", "batch.kubernetes.io/job-name"]
_UNKNOWN_LABELS: dict[str, tuple[str, ...]] = {
    "Deployment": ("pod-template-hash",),
    "StatefulSet": ("controller-revision-hash", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"),
    **{kind: ("batch.kubernetes.io/job-completion-index",) for kind in ("Job", "CronJob")},
}


def _pod_of(path: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The Pod itself, or the pod a workload's pod template makes (named by its generateName, in its namespace)."""
    kind = doc.get("kind", "Pod")
    if kind == "Pod":
        return doc
    meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    template: Any = doc
    for i, key in enumerate(_POD_TEMPLATES[kind]):
        template = template.get(key) if isinstance(template, dict) else None
        if not isinstance(template, dict):
            raise ValueError(f"{path}: {kind} {meta.get('name')}: {'.'.join(_POD_TEMPLATES[kind][: i + 1])}: "
                             "must be a mapping")  # fmt: skip
    pod_meta = dict(template["metadata"]) if isinstance(template.get("metadata"), dict) else {}
    pod_meta["generateName"] = f"{meta.get('name') or kind.lower()}-"
    if meta.get("namespace"):
        pod_meta["namespace"] = meta["namespace"]
    labels = pod_meta.get("labels") or {}
    if kind == "Job" and meta.get("name") and not _manual_selector(doc) and isinstance(labels, dict):
        pod_meta["labels"] = {**dict.fromkeys(_JOB_NAME_LABELS, meta["name"]), **labels}  # the template's win
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec")}


def _manual_selector(doc: dict[str, Any]) -> bool:
    """Whether a Job (or a CronJob's Jobs) sets spec.manualSelector: the API server then adds no label to its pods."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return spec.get("manualSelector") is True


def _unknown_labels_note(doc: dict[str, Any], pod: dict[str, Any]) -> str | None:
    """A note where the pod's required affinity or anti-affinity selects a label its workload gives each pod with a
    value not known in advance (capacity plans the pod without it)."""
    kind = doc.get("kind", "Pod")
    keys = list(_UNKNOWN_LABELS.get(kind, ()))
    if kind in ("Job", "CronJob") and not _manual_selector(doc):
        keys += ["controller-uid", "batch.kubernetes.io/controller-uid"]
        if kind == "CronJob" or not (doc.get("metadata") or {}).get("name"):  # the Job's name is generated
            keys += _JOB_NAME_LABELS
    affinity = (pod.get("spec") or {}).get("affinity") or {}
    required = [(affinity.get(what) or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
                for what in ("podAffinity", "podAntiAffinity")]  # fmt: skip
    selectors = [t.get("labelSelector") or {} for terms in required for t in terms]
    selected = {k for s in selectors for k in [*(s.get("matchLabels") or {}),
                                                *(e.get("key") for e in s.get("matchExpressions") or [])]}  # fmt: skip
    labels = (pod.get("metadata") or {}).get("labels") or {}
    unknown = [k for k in keys if k in selected and k not in labels]
    if not unknown:
        return None
    return (f"the pod's required pod affinity or anti-affinity selects {', '.join(unknown)}: the {kind}'s pods get "
            "these labels when created, with values not known in advance, so the pod is planned without them and "
            "the count may be wrong")  # fmt: skip


def cmd_capacity(args: argparse.Namespace) -> int:
    """Read-only: how many copies of a pod fit now, where, and the extra nodes for the rest."""
    from . import capacity
    from .doctor.sched import nodes_with_pods
    from .kube import ApiError, Kube

    try:
        docs = [d for d in _load_yaml_docs(args.pod) if d.get("kind", "Pod") in ("Pod", *_POD_TEMPLATES)]
        if not docs:
            raise ValueError(f"{args.pod}: no Pod found, nor a {', '.join(_POD_TEMPLATES)} with a pod template")
        pod = _pod_of(args.pod, docs[0])
        _checked(args.pod, [{**pod, "kind": "Pod"}])
        refused = capacity.api_errors(pod)
        if refused:  # a pod the API server would not create: nothing to plan
            raise ValueError(f"{args.pod}: the API server refuses this pod: " + "; ".join(refused))
        kube = Kube.connect(args.kubeconfig)
        views = nodes_with_pods(kube.list("Node"), kube.list("Pod"))
        profile = capacity.parse_profile(args.node_profile, views) if args.node_profile else None
        configs = _plugin_configs(kube, args.operator_namespace)
    except (ApiError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pod["metadata"] = pod.get("metadata") or {}  # `metadata:` left empty is null
    pod["metadata"].setdefault("namespace", args.namespace)
    result = capacity.plan(pod, args.count, views, profile, configs)
    note = _unknown_labels_note(docs[0], pod)
    if note:
        result.notes.append(note)
    if len(docs) > 1:
        result.notes.append(f"{args.pod} holds {len(docs)} pods and pod templates: only the first is planned")
    sys.stdout.write(capacity.render(result, capacity.pod_name(pod, args.pod)))
    return 0


def _port(value: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0 to 65535): {n}")
    return n


def _at_least_one(value: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _add_doctor(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="explain why GPU pods do not run and what in the GPU stack is broken (reads only)",
        description="Read the cluster once and report findings: pending GPU pods and why (insufficient or "
        "fragmented GPUs, affinity, taints, MIG resources, cordoned nodes), workloads that misuse GPUs (CUDA "
        "without a GPU request, CUDA newer than the driver, out of memory on a shared GPU) and operands that "
        "are not ready, each with its evidence and fix. Exit status: 0 healthy, 1 warnings, 2 errors, 3 the "
        "cluster could not be read or the --pod or --node named does not exist.",
    )
    p.add_argument("--kubeconfig", help=KUBECONFIG_HELP)
    p.add_argument("-n", "--namespace", help="namespace of the workload pods to look at "
                   "(default: every namespace; with --pod: default)")  # fmt: skip
    target = p.add_mutually_exclusive_group()
    target.add_argument("--pod", help="only this pod's findings and the GPU stack's on its node")
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
        "selectors and affinity, taints, cordons, required pod anti-affinity (per hostname, both ways) and shared "
        "GPUs (one per container where the node's sharing config, the ClusterPolicy's devicePlugin.config, sets "
        "failRequestsGreaterThanOne: MPS by default) and host ports; required pod affinity, DoNotSchedule "
        "topology spread constraints and DRA resourceClaims get a note. The file holds a Pod, or a Deployment, "
        "ReplicaSet, StatefulSet, Job or CronJob whose pod template is planned (a Job's with the job-name labels "
        "the API server gives it).",
    )
    p.add_argument("--pod", required=True, help="Pod (or workload with a pod template) YAML file ('-' for stdin)")
    p.add_argument("--count", type=_at_least_one, required=True, help="how many copies")
    p.add_argument("--node-profile", help="shape of an extra node: an existing node's name, or "
                   "gpus=8,cpu=96,memory=2048Gi,label.KEY=VALUE,taint.KEY=VALUE:EFFECT, where gpus are "
                   "physical GPUs, advertised as the sharing config says (nvidia.com/gpu=N: advertised as given) "
                   "(default: the existing node shape that takes most copies)")  # fmt: skip
    p.add_argument("--kubeconfig", help=KUBECONFIG_HELP)
    p.add_argument("-n", "--namespace", default="default", help="the pods' namespace (%(default)s)")
    p.add_argument("--operator-namespace", default=DEFAULT_NAMESPACE,
                   help="namespace of the operands and the device plugin's sharing ConfigMap (%(default)s)")
    p.set_defaults(func=cmd_capacity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-operator",
        description="Deploys and manages the NVIDIA GPU software stack on every GPU node of a cluster.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the operator against a cluster")
    p.add_argument("--kubeconfig", help=KUBECONFIG_HELP)
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of the operands (%(default)s)")
    p.add_argument("--metrics-port", type=_port, default=8080, help="Prometheus metrics port (%(default)s; 0 = off)")
    p.add_argument("--health-port", type=_port, default=8081, help="liveness endpoint port (%(default)s; 0 = off)")
    p.add_argument("--leader-elect", action="store_true",
                   default=os.environ.get("GPU_OPERATOR_LEADER_ELECT", "").lower() in ("1", "true"),
                   help="elect a leader through the Lease 53822513.nvidia.com in --namespace, so several replicas "
                   "can run and one acts (env GPU_OPERATOR_LEADER_ELECT=true; the chart turns it on)")  # fmt: skip
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "render",
        help="print every object the operator would create for a policy and nodes",
        description="Print, as multi-document YAML in a stable order, every object the operator would create "
        "for a ClusterPolicy and a set of nodes, plus the label patch for each node. With --from-cluster, read "
        "the cluster instead and print only the writes the operator would make now. Exits 2 on an invalid "
        "policy, with one line per problem: an unknown field is one (as the API server rejects it) unless "
        f"--allow-unknown-fields or the policy's annotation {ALLOW_UNKNOWN_ANNOTATION}=true allows it. Fields "
        "that are set but not acted on (and allowed unknown fields) are named on stderr, one warning line each.",
    )
    p.add_argument("--policy", help="ClusterPolicy YAML file ('-' for stdin)")
    p.add_argument(
        "--from-cluster",
        action="store_true",
        help="read the nodes, objects and active ClusterPolicy from the cluster (--policy replaces its spec, and "
        "the ConfigMaps in its file those of --namespace) and print the writes the operator would make now (a "
        "dry-run pass; nothing is written)",
    )
    p.add_argument("--kubeconfig", help=f"{KUBECONFIG_HELP}; read only with --from-cluster")
    p.add_argument(
        "--nodes", help="Node objects (and the ConfigMaps the policy references): multi-document YAML or a List "
        "('-' for stdin: with --policy -, the one stream holds both); not with --from-cluster"
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
    p.add_argument(
        "--allow-unknown-fields",
        action="store_true",
        help="ignore spec fields this operator does not know (a newer upstream's), with a warning each, instead "
        f"of failing; as the policy annotation {ALLOW_UNKNOWN_ANNOTATION}: \"true\" does for the operator",
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
    q.add_argument("--kubeconfig", help=KUBECONFIG_HELP)
    q.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="operand namespace (%(default)s)")
    q.set_defaults(func=cmd_upgrade_plan)

    p = sub.add_parser("mig", help="MIG layouts")
    mig_sub = p.add_subparsers(dest="mig_command", required=True, metavar="COMMAND")
    q = mig_sub.add_parser(
        "layouts",
        help="list the MIG layouts valid for each GPU model in the cluster and what each advertises (reads only)",
        description="For each MIG-capable GPU model on the cluster's nodes (by GFD's nvidia.com/gpu.product), list "
        "the layouts a node's nvidia.com/mig.config label may name (the default table, or the active "
        "ClusterPolicy's migManager.config ConfigMap) and the extended resources each would advertise with "
        "mig.strategy mixed and single (profiles x GPUs on the node). --offline lists every known model, per GPU.",
    )
    q.add_argument("--node", help="only this node")
    q.add_argument("--offline", action="store_true", help="no cluster: every known GPU model, per GPU")
    q.add_argument("--kubeconfig", help=KUBECONFIG_HELP)
    q.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="operand namespace (%(default)s)")
    q.set_defaults(func=cmd_mig_layouts)

    p = sub.add_parser(
        "versions",
        help="print the version matrix and, with --kubeconfig, where each GPU node falls",
        description="Print the version matrix (operator releases and their default versions, driver branches, GPU "
        "architectures, kernel module types, precompiled drivers; every row with its source). With --kubeconfig, "
        "also the active ClusterPolicy's driver verdict for each GPU node: ok, refused (with the rule), or unknown, "
        "not checked.",
    )
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text", help="format (%(default)s)")
    p.add_argument("--kubeconfig", help="kubeconfig file: also show the cluster's nodes (default: none, the matrix "
                   "alone)")  # fmt: skip
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="operand namespace (%(default)s)")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("crds", help="print the CRDs (or apply them with --apply)")
    p.add_argument("--apply", action="store_true", help="server-side apply them to the cluster")
    p.add_argument("--dir", help="write one file per CRD into this directory (make crds); not with --apply")
    p.add_argument("--kubeconfig", help=f"{KUBECONFIG_HELP}; read only with --apply")
    p.set_defaults(func=cmd_crds)
    _add_doctor(sub)
    return parser


def _call(args: argparse.Namespace) -> int:
    """The command, its output flushed; a reader that left (`gpu-operator crds | head`) or Ctrl-C ends it quietly."""
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()
        return rc
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports it
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor a second error at exit's flush
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe's signal ended


def main(argv: list[str] | None = None) -> int:
    return _call(build_parser().parse_args(argv))


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl gpu doctor|capacity ...` (the `kubectl-gpu` plugin): the same commands, under kubectl's name."""
    parser = argparse.ArgumentParser(prog="kubectl gpu", description="GPU diagnostics for the cluster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_doctor(sub)
    return _call(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
