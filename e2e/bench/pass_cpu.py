"""The CPU of one reconcile pass on a settled cluster of N nodes, without a cluster (prints numbers, asserts nothing).

    python -m e2e.bench.pass_cpu [--nodes 1000 5000] [--passes 15] [--profile 25] [--nvidia-drivers] [--cpu-nodes N]
                                 [--sandbox-workloads] [--node-features]

The operator's Reconciler runs on snapshots as the watch caches hold them once everything is rolled out: N nodes
as operator_scale makes them (h100x8, a100x4, l4x1 in turn, half on ubuntu 22.04 and half on 24.04), labelled by a
first pass, every operand DaemonSet counted by its controller, one ready pod of each on each of its nodes, the
default sample policy. The API server is a stand-in that merges node patches and answers applies with the object
(nothing is written once settled; a settled pass that writes is printed). Printed per N: the first pass's CPU
(every node labelled, every object applied), then the medians over `--passes` passes of a pass with nothing
changed and of one where one node's labels changed (what a node label report costs once ready), of passes near the
end of a rollout (2% of pods not ready, 10 nodes relabelled each) and midway (40%, 150), and with `--profile K` the
K functions of most cumulative time over midway passes. `--nvidia-drivers` hands the driver to two NVIDIADrivers
(useNvidiaDriverCRD): a default one and one with another version for the nodes on ubuntu 24.04. `--cpu-nodes N`
adds N nodes without a GPU (no operand goes to them; the relabelled nodes are still the GPU nodes);
`--sandbox-workloads` sets sandboxWorkloads.enabled (every node on the default workload, container).
`--node-features` gives every GPU node an NFD NodeFeature naming its device (NFD's NodeFeature API, on by default
since NFD 0.14) and hands each pass its nodes as the runtime's snapshot does, through an Operator's node cache fed
the nodes that changed, as the node watch feeds it. Thread CPU time,
so what the machine's other processes take is left out; on the live cluster (operator_scale) passes also wait for
the cores.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import gc
import pstats
import statistics
import time
from typing import Any

from e2e.bench.operator_scale import DEVICE_IDS, PROFILES, bench_node, nvidia_drivers
from e2e.cluster.nodes import make_node
from e2e.operator_process import NAMESPACE, policy_from_sample
from gpu_operator.lifecycle import CLEANUP_FINALIZER
from gpu_operator.nodes import NodeFacts, apply_patch, deploy_label
from gpu_operator.observe import Key, PodIndex, Snapshot, key_of
from gpu_operator.readiness import daemon_node_count
from gpu_operator.reconciler import Reconciler
from gpu_operator.runtime import Operator
from gpu_operator.states.base import STATE_LABEL

COUNTS = ("desiredNumberScheduled", "currentNumberScheduled", "numberReady", "updatedNumberScheduled",
          "numberAvailable")  # fmt: skip


def counted(n: int) -> dict[str, Any]:
    return {"observedGeneration": 1, **dict.fromkeys(COUNTS, n)}


class StandIn:
    """What a pass asks of the API server, answered in memory: node patches merged, applies and creates echoed
    (a DaemonSet with its generation observed), anything else refused loudly."""

    def __init__(self, nodes: list[dict[str, Any]], policy: dict[str, Any], drivers: dict[str, dict[str, Any]]):
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.policy = policy  # its status patches are merged into it, as the next snapshot would have it
        self.drivers = drivers  # NVIDIADrivers by name: the same
        self.rv = 10 * len(nodes)
        self.count = 0

    def writes(self) -> int:
        return self.count

    def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.count += 1
        if obj["kind"] == "DaemonSet":
            return {**obj, "metadata": {**obj["metadata"], "generation": 1}, "status": counted(0)}
        return obj

    def create(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.count += 1  # events, mostly
        return obj

    def get(self, *_: Any, **__: Any) -> dict[str, Any] | None:
        return None  # the operand namespace: created once

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.count += 1
        if kind == "ClusterPolicy" and "status" in patch:
            status = {**(self.policy.get("status") or {}), **patch["status"]}
            self.policy["status"] = {k: v for k, v in status.items() if v is not None}
        if kind == "NVIDIADriver":
            status = {**(self.drivers[name].get("status") or {}), **patch["status"]}
            self.drivers[name]["status"] = {k: v for k, v in status.items() if v is not None}
        if kind != "Node":
            return patch
        meta = self.nodes[name]["metadata"]
        for part in ("labels", "annotations"):
            meta[part] = apply_patch(meta.get(part) or {}, (patch.get("metadata") or {}).get(part) or {})
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.nodes[name])

    def list(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return []


def settled(n: int, crd: bool = False, cpu: int = 0, sandbox: bool = False) -> tuple[Reconciler, StandIn, Snapshot]:
    """A reconciler that has labelled `n` nodes and applied every object, and the snapshot of the rolled-out
    cluster that follows. `crd`: the drivers as two NVIDIADrivers (nvidia_drivers); `cpu`: that many nodes without
    a GPU besides; `sandbox`: sandboxWorkloads.enabled."""
    raw = [bench_node(f"node-{i:05d}", i, device_labels=True) for i in range(n)]
    raw += [make_node(f"zcpu-{i:05d}", "cpu", os="ubuntu22.04" if i % 2 else "ubuntu24.04") for i in range(cpu)]
    for i, obj in enumerate(raw):
        obj["metadata"]["resourceVersion"] = str(i + 1)
    policy = policy_from_sample()
    if sandbox:
        policy["spec"].setdefault("sandboxWorkloads", {})["enabled"] = True
    policy["metadata"].update(uid="u1", generation=1, resourceVersion="1", finalizers=[CLEANUP_FINALIZER])
    drivers = nvidia_drivers(policy) if crd else {}
    for i, obj in enumerate(drivers.values()):  # what the API server would have given them
        obj["metadata"].update(uid=f"nvd-{i}", generation=1, resourceVersion=str(i + 2))
    api = StandIn(raw, policy, drivers)
    reconciler = Reconciler(api, NAMESPACE)  # type: ignore[arg-type]
    facts = {name: NodeFacts.from_node(obj) for name, obj in api.nodes.items()}
    start = time.thread_time()
    first = reconciler.reconcile(Snapshot(nodes=facts, policies={"cluster-policy": policy}, owned={}, pods={},
                                          revisions={}, nvidia_drivers=drivers))  # fmt: skip
    print(f"  first pass: {time.thread_time() - start:.3f} s CPU, {first.writes} writes")
    nodes = {name: NodeFacts.from_node(copy.deepcopy(obj)) for name, obj in api.nodes.items()}
    owned: dict[Key, dict[str, Any]] = {key_of(o): o for o in first.applied}
    pods: dict[str, dict[str, Any]] = {}
    revisions: dict[str, dict[str, Any]] = {}
    for key, obj in list(owned.items()):
        if obj["kind"] != "DaemonSet":
            continue
        name = obj["metadata"]["name"]
        template = obj["spec"]["template"]
        revision = f"{abs(hash(name)) % 10**9:09d}"
        revisions[f"{name}-1"] = {"metadata": {"labels": {"controller-revision-hash": revision}}, "revision": 1,
                                  "owner": name}  # fmt: skip
        state = obj["metadata"]["labels"].get(STATE_LABEL, "")
        on = [f for f in nodes.values() if daemon_node_count(template["spec"], [f])]
        for f in on:
            pod = f"{name}-{f.name}"
            pods[pod] = {
                "metadata": {"name": pod, "labels": {"controller-revision-hash": revision, STATE_LABEL: state}},
                "node": f.name, "owner": name, "ready": True,
                "status": {"phase": "Running", "containerStatuses": [{"name": "main", "ready": True,
                                                                      "restartCount": 0}]},
            }  # fmt: skip
        owned[key] = {**obj, "status": counted(len(on))}
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy}, owned=owned, pods=pods, revisions=revisions,
                    nvidia_drivers=drivers)
    snap.__dict__["pod_index"] = PodIndex.of(pods)  # the runtime keeps its index as pods change
    reconciler.reconcile(snap)  # the status written ready once (and, with NVIDIADrivers, the upgrade states)
    changed = {name: NodeFacts.from_node(copy.deepcopy(obj)) for name, obj in api.nodes.items()
               if int(obj["metadata"]["resourceVersion"]) != nodes[name].resource_version}  # fmt: skip
    return reconciler, api, snap.with_nodes({**nodes, **changed}) if changed else snap


class NodeCache:
    """--node-features: a snapshot's nodes as the runtime's snapshot hands them to a pass, with NodeFeature devices
    for the GPU nodes (node-00000 has the device of PROFILES[0], and so on, as bench_node makes them)."""

    def __init__(self, n: int) -> None:
        self.op = Operator(kube=None, namespace=NAMESPACE)  # type: ignore[arg-type]
        self.op.node_features = {f"node-{i:05d}": (DEVICE_IDS[PROFILES[i % 3]],) for i in range(n)}  # read at start
        self.fed: dict[str, NodeFacts] = {}

    def __call__(self, snap: Snapshot) -> Snapshot:
        for name, facts in snap.nodes.items():
            if self.fed.get(name) is not facts:  # the node watch delivers a node whose facts changed
                self.fed[name] = facts
                self.op.on_node_facts(name, facts)
        return snap.with_nodes(self.op.snapshot().nodes)


def timed(reconciler: Reconciler, snap: Snapshot, cached: NodeCache | None = None) -> tuple[float, int, bool | None]:
    if cached is not None:
        snap = cached(snap)
    index = snap.pod_index  # a fresh index per pass, as the runtime's snapshot has (made outside the pass)
    snap.__dict__["pod_index"] = PodIndex({s: dict(on) for s, on in index.by_state.items()}, dict(index.by_owner),
                                          index.unready_by_owner)  # fmt: skip
    start = time.thread_time()
    out = reconciler.reconcile(snap)
    return time.thread_time() - start, out.writes, out.ready


def relabelled(snap: Snapshot, i: int, count: int = 1) -> Snapshot:
    """The snapshot with `count` GPU nodes' facts replaced by new ones: labels reported on each, as GFD and
    k8s-driver-manager do during a rollout (the latter sets deploy labels it found unset to "")."""
    names = sorted(k for k in snap.nodes if k.startswith("node-"))
    changed = dict(snap.nodes)
    for j in range(i * count, (i + 1) * count):
        old = snap.nodes[names[j % len(names)]]
        report = {"nvidia.com/gpu.count": str(8 + i % 2), deploy_label("nvsm"): ""}
        changed[old.name] = old.relabel({**old.labels, **report}, old.annotations, report)  # as the node watch does
    return snap.with_nodes(changed)


def rolling(snap: Snapshot, late: float) -> Snapshot:
    """The snapshot near the end of a rollout: the last `late` of each DaemonSet's pods (by node) not ready yet,
    its counts saying so."""
    pods = dict(snap.pods)
    owned = dict(snap.owned)
    for key, ds in snap.owned.items():
        if ds["kind"] != "DaemonSet":
            continue
        mine = sorted(name for name, pod in pods.items() if pod["owner"] == ds["metadata"]["name"])
        waiting = mine[len(mine) - int(len(mine) * late):]
        for name in waiting:
            pods[name] = {**pods[name], "ready": False, "status": {"phase": "Pending", "containerStatuses": []}}
        status = dict(ds["status"])
        status.update(numberReady=status["numberReady"] - len(waiting), numberUnavailable=len(waiting),
                      numberAvailable=status["numberAvailable"] - len(waiting))  # fmt: skip
        owned[key] = {**ds, "status": status}
    out = dataclasses.replace(snap, pods=pods, owned=owned)
    out.__dict__["pod_index"] = PodIndex.of(pods)
    return out


class GcClock:
    """Time spent in the garbage collector, by generation, while on."""

    def __init__(self) -> None:
        self.spent = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.spent[info["generation"]] += time.thread_time() - self._start
            self.runs[info["generation"]] += 1

    def close(self) -> str:
        gc.callbacks.remove(self._note)
        return ", ".join(f"gen{g}: {self.runs[g]} runs {self.spent[g] * 1000:.0f} ms" for g in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="print the K costliest functions")
    parser.add_argument("--nvidia-drivers", action="store_true",
                        help="the drivers as two NVIDIADrivers (useNvidiaDriverCRD; one for half the nodes)")
    parser.add_argument("--cpu-nodes", type=int, default=0, metavar="N", help="N nodes without a GPU besides")
    parser.add_argument("--sandbox-workloads", action="store_true", help="sandboxWorkloads.enabled")
    parser.add_argument("--node-features", action="store_true",
                        help="NFD NodeFeatures naming each GPU node's device, read through the runtime's node cache")
    args = parser.parse_args()
    for n in args.nodes:
        besides = f" and {args.cpu_nodes} CPU nodes" if args.cpu_nodes else ""
        how = ", ".join(w for w, on in (("NVIDIADrivers", args.nvidia_drivers),
                                         ("sandboxWorkloads", args.sandbox_workloads),
                                         ("NodeFeatures", args.node_features)) if on)  # fmt: skip
        print(f"{n} nodes{besides}{f' ({how})' if how else ''}:")
        reconciler, _, snap = settled(n, args.nvidia_drivers, args.cpu_nodes, args.sandbox_workloads)
        cached = NodeCache(n) if args.node_features else None
        clock = GcClock()
        quiet = [timed(reconciler, snap, cached) for _ in range(args.passes)]
        changed = []
        for i in range(args.passes):
            snap = relabelled(snap, i)
            changed.append(timed(reconciler, snap, cached))
        rollout = rolling(snap, 0.02)
        rolled = []
        for i in range(args.passes):
            rollout = relabelled(rollout, i, 10)
            rolled.append(timed(reconciler, rollout, cached))
        midway = rolling(snap, 0.4)
        busy = []
        for i in range(args.passes):
            midway = relabelled(midway, i, 150)
            busy.append(timed(reconciler, midway, cached))
        collected = clock.close()
        for what, runs in (("settled, nothing changed", quiet), ("settled, one node's labels changed", changed),
                           ("2% of each DaemonSet's pods not ready, 10 nodes' labels changed", rolled),
                           ("40% of each DaemonSet's pods not ready, 150 nodes' labels changed", busy)):
            cpu = sorted(r[0] for r in runs)
            writes = sorted({r[1] for r in runs})
            ready = sorted({str(r[2]) for r in runs})
            print(f"  pass, {what}: median {statistics.median(cpu) * 1000:.1f} ms CPU "
                  f"(min {cpu[0] * 1000:.1f}, max {cpu[-1] * 1000:.1f}; writes {writes}, ready {ready})")
        print(f"  garbage collector in those {4 * args.passes} passes: {collected}")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for i in range(args.passes):
                midway = relabelled(midway, args.passes + i, 150)
                timed(reconciler, midway, cached)
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
