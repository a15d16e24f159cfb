"""The operator on many fake GPU nodes (prints numbers, asserts nothing).

    python -m e2e.bench.operator_scale [--nodes 1000] [--runs 3] [--idle 60] [--joins 50] [--mass-join 1000]

Starts a cluster in a temporary directory with N fake GPU nodes (h100x8, a100x4, l4x1 in turn, half on ubuntu 22.04
and half on 24.04; `--one-os`: all on 22.04), the node simulator and the operator (under the chart's identity),
applies the default sample policy and prints the figures of the operator's scale goals, read from the API server's
audit log where they are about requests: ClusterPolicy -> every operand DaemonSet created, -> status ready (and how
long after the last operand pod became ready), the operator's requests until ready, its writes and reads during
`--idle` seconds of steady state, then `--joins` nodes joining at once (time to their `gpu.present` and deploy
labels, p50/p99, and the operator's node patches per joining node until GFD has labelled it and a MIG node's layout
is applied), its memory (VmRSS), the CPU it used, and how long `gpu-operator doctor` takes on the whole cluster.
After the joins, one component (`--switch`, dcgmExporter by default) is switched off and, once its DaemonSet and
pods are gone, back on: how long until its DaemonSet is ready, until the status is ready again, and the
ClusterPolicy status patches spent. Last, the driver version changes (`--upgrade-parallel` nodes at a time, 10% by
default; 0: no upgrade): how long every node takes to be upgrade-done on the new driver, the operator's writes per
node meanwhile, and how long after a node's new driver pod is Ready it is done (the sample's podDeletion kept unless
`--upgrade-no-pod-deletion`). Then `--mass-join` nodes join at
once (1,000 by default): how long until every one of them is labelled.

A wait that timed out prints as `> T (timed out)` (a node never labelled counts as later than any in the
percentiles), and a figure taken after one says so (`taken before ready`, `taken with 760 of 1050 nodes done`): the
table leaves both out of the medians of `--runs`, and says when a row is from fewer runs.

The nodes carry NFD's PCI device-ID label (`pci-0302_10de_<device>.present`, NFD's deviceLabelFields with
`device`, in place of `pci-10de.present`), so their GPUs are known before a driver runs (`--no-device-labels`:
`pci-10de.present` only; a MIG-capable node then gets its MIG labels in a second patch, once GFD reports).
`--node-features`: NFD's NodeFeature API (on by default since NFD 0.14) instead: every GPU node (the first ones
and those that join) gets a NodeFeature naming its GPU's PCI device, created just before the node (nfd-worker writes
it as the node starts), and carries no device-ID label, so the operator identifies GPUs through NodeFeatures only.
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from e2e.bench import upstream as nvidia
from e2e.bench.cluster_scale import cpu_seconds, proc_times
from e2e.cluster.localcluster import WRITE_VERBS, LocalCluster, audit_time, rss_kib, temporary_cluster
from e2e.cluster.nodes import (
    PCI_LABEL,
    create_node_features,
    create_nodes,
    install_node_feature_api,
    make_node,
    node_feature,
)
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from e2e.upstream_specs import DRIVER_APP, VALIDATOR_APP
from gpu_operator.debug import DEBUG_DIR, PROFILE_PASSES, SWITCH_INTERVAL_S
from gpu_operator.doctor import diagnose, gather
from gpu_operator.kube import Kube, path_for
from gpu_operator.nodes import GPU_PRESENT, deploy_label
from gpu_operator.states.base import STATE_LABEL
from gpu_operator.upgrade import STATE_LABEL as UPGRADE_STATE

PROFILES = ("h100x8", "a100x4", "l4x1")
DEVICE_IDS = {"h100x8": "2330", "a100x4": "20b2", "l4x1": "27b8"}  # H100 SXM5 80GB, A100 SXM4 80GB, L4
GFD_PRODUCT = "nvidia.com/gpu.product"
MIG_STATE = "nvidia.com/mig.config.state"


def bench_node(name: str, i: int, device_labels: bool, one_os: bool = False) -> dict[str, Any]:
    node = make_node(name, PROFILES[i % 3], os="ubuntu22.04" if one_os or i % 2 else "ubuntu24.04")
    if device_labels:
        device = DEVICE_IDS[PROFILES[i % 3]]
        labels = node["metadata"]["labels"]
        del labels[PCI_LABEL]  # one deviceLabelFields setting writes one label per device
        labels[f"feature.node.kubernetes.io/pci-0302_10de_{device}.present"] = "true"
    return node


def bench_feature(name: str, i: int) -> dict[str, Any]:
    """--node-features: the NodeFeature of bench_node(name, i, ...), naming its GPU's PCI device."""
    return node_feature(name, DEVICE_IDS[PROFILES[i % 3]])


JOIN_LABEL = "e2e.gpu-operator/bench-join"
TIMED_OUT = "timed out"


class Figure(NamedTuple):
    """One run's figure. `mark`: TIMED_OUT for a wait that ended at its timeout (the value: how long it waited), or
    how a value was taken after a wait that timed out ("taken before ready"); either way left out of the medians."""

    value: float
    unit: str
    mark: str = ""


def nvidia_drivers(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The policy switched to NVIDIADrivers (useNvidiaDriverCRD), and those NVIDIADrivers by name: a default one
    with the policy's driver, and one with another version for the nodes on ubuntu 24.04 (half of them)."""
    policy["spec"]["driver"]["useNvidiaDriverCRD"] = True
    driver = policy["spec"]["driver"]
    same = {k: driver[k] for k in ("repository", "image", "version", "manager", "upgradePolicy") if k in driver}
    pool = {"nodeSelector": {"feature.node.kubernetes.io/system-os_release.VERSION_ID": "24.04"},
            **{k: driver[k] for k in ("repository", "image") if k in driver}, "version": "580.95.05"}  # fmt: skip
    specs = {"default": {"default": True, **same}, "pool-b": pool}
    return {name: {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": name},
                   "spec": spec} for name, spec in specs.items()}  # fmt: skip


def writes_by(cluster: LocalCluster, user: str, since: float = 0.0) -> collections.Counter[str]:
    """A user's write requests since `since`, counted by verb and resource."""
    return collections.Counter(what(e) for e in cluster.writes(user, since))


def done_time(event: dict[str, Any]) -> float:
    """When the API server answered an audit event's request, in epoch seconds."""
    ts = event.get("stageTimestamp", "")
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else audit_time(event)


def requests_of(cluster: LocalCluster, user: str) -> list[dict[str, Any]]:
    """A user's requests, one audit event each (the ResponseComplete stage, or a watch's ResponseStarted)."""
    seen: dict[str, dict[str, Any]] = {}
    for e in cluster.audit_events():
        if e.get("user", {}).get("username") == user:
            seen.setdefault(e.get("auditID", ""), e)
    return list(seen.values())


def what(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    sub = "/" + ref["subresource"] if ref.get("subresource") else ""
    return f"{event['verb']} {ref.get('resource', '?')}{sub}"


def print_timeline(events: list[dict[str, Any]], start: float, end: float) -> None:
    """Requests received in [start, end], in order: runs of one kind of request folded into one line."""
    rows = sorted((audit_time(e), done_time(e), what(e), (e.get("objectRef") or {}).get("name", ""))
                  for e in events if start <= audit_time(e) <= end)  # fmt: skip
    print("operator requests, seconds after the ClusterPolicy create (received -> answered):")
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1][2] == rows[i][2]:
            j += 1
        if j - i + 1 >= 8:
            last = max(r[1] for r in rows[i : j + 1])
            print(f"  {rows[i][0] - start:6.3f} -> {last - start:6.3f}  {j - i + 1} x {rows[i][2]}")
        else:
            for r in rows[i : j + 1]:
                print(f"  {r[0] - start:6.3f} -> {r[1] - start:6.3f}  {r[2]} {r[3]}")
        i = j + 1


def passes(metrics_port: int, metric: str = "gpu_operator_reconciliation_total") -> float:
    """The operator's reconcile passes so far (or another of its counters)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{metric} (\S+)", text, re.M)
    return float(found.group(1)) if found else 0.0


PASS_CPU = "gpu_operator_reconciliation_cpu_seconds_total"


def triggers(metrics_port: int) -> collections.Counter[str]:
    """The operator's passes so far by what started them (gpu_operator_reconciliation_triggers_total)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.findall(r'^gpu_operator_reconciliation_triggers_total\{source="([^"]+)"\} (\S+)', text, re.M)
    return collections.Counter({k: int(float(v)) for k, v in found})


def _since(now: collections.Counter[str], before: collections.Counter[str]) -> str:
    diff = now - before
    return ", ".join(f"{k} {n}" for k, n in diff.most_common()) or "none"


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile: the ceil(p/100 * n)-th smallest value (the 1e-9: p/100 * n's float error)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered) - 1e-9) - 1))]


def latency_figure(lat: list[float], never: int, waited: float, p: float) -> Figure:
    """The p-th percentile of join latencies (p 50: their median), `never` nodes never labelled (in `waited`
    seconds) counted as later than any: a percentile that reaches one is the wait, timed out."""
    late = lat + [math.inf] * never
    value = statistics.median(late) if p == 50 else percentile(late, p)
    return Figure(waited, "s", TIMED_OUT) if value == math.inf else Figure(value, "s")


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the operator for `seconds` (its raw stacks in `out`)."""
    spy = Path(sys.executable).with_name("py-spy")
    # --gil: only the thread holding the GIL is sampled, so samples are Python's CPU, not threads waiting on sockets.
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--threads", "--gil", "--format",
           "raw", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_profile(raw: Path, top: int = 25) -> None:
    """Where the sampled CPU went: per thread, and the functions with the most samples (own and inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    outside_own: collections.Counter[str] = collections.Counter()
    outside_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for f in set(frames[1:]):
            incl[f] += count
        if not any(f.startswith("_timed (") for f in frames):  # outside the reconcile passes
            outside_own[frames[-1]] += count
            for f in set(frames[1:]):
                outside_incl[f] += count
    print(f"py-spy: {total} busy samples (100 a second)")
    for by, counter in (("thread", threads), ("own", own), ("inclusive", incl),
                        ("own, outside the passes", outside_own), ("inclusive, outside the passes", outside_incl)):
        print(f"  by {by}:")
        for name, samples in counter.most_common(top):
            print(f"    {samples:6d}  {name}")


def _mig(labels: dict[str, str]) -> bool:
    return labels.get("nvidia.com/mig.capable") == "true"


def print_pass_profile(path: Path, count: float, top: int = 35) -> None:
    """The reconcile passes' cProfile so far: our functions by own and by cumulative time."""
    if not path.exists():
        print("no pass profile written")
        return
    stats = pstats.Stats(str(path))
    rows: list[tuple[float, float, int, str]] = [
        (tt, ct, nc, f"{_short(file)}:{line} {fn}")
        for (file, line, fn), (_, nc, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    total = max((ct for _, ct, _, name in rows if name.startswith("gpu_operator/reconciler.py:") and
                 name.endswith(" reconcile")), default=0.0)
    print(f"reconcile passes: {count:.0f}, {total:.1f} s under cProfile ({1000 * total / max(count, 1):.0f} ms each)")
    for title, key in (("own time", 0), ("cumulative", 1)):
        print(f"  by {title} (s, calls):")
        for row in sorted(rows, key=lambda r: -float(r[key]))[:top]:
            print(f"    {row[key]:8.2f}  {row[2]:9d}  {row[3]}")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/operator/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _last_write(cluster: LocalCluster, user: str) -> float:
    """When `user` last wrote, by the audit log (0 if never)."""
    return max((audit_time(e) for e in requests_of(cluster, user) if e["verb"] in WRITE_VERBS), default=0.0)


def heap_report(pid: int, where: Path) -> str:
    """The operator's heap report (gpu_operator.debug), asked for with SIGUSR1."""
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if (where / "heap-1.txt").exists():
            return (where / "heap-1.txt").read_text()
        time.sleep(0.5)
    return "no heap report"


def join(cluster: LocalCluster, admin: Kube, user: str, count: int, prefix: str, device_labels: bool, figure: Any,
         follow_up: bool, one_os: bool = False, sim: NodeSimulator | None = None, features: bool = False) -> None:
    """`count` nodes join at once: how long until each has its GPU and deploy labels (from the audit log: the
    create's arrival to our first patch answered); with `follow_up`, also the node patches per joining node until
    GFD has labelled each and a MIG node's layout is applied. `features`: each with its NodeFeature, created first."""
    joiners = [bench_node(f"{prefix}-{i:04d}", i, device_labels, one_os) for i in range(count)]
    for node in joiners:
        node["metadata"]["labels"][JOIN_LABEL] = prefix
    selector = f"{JOIN_LABEL}={prefix}"
    if features:
        create_node_features(admin.client, [bench_feature(f"{prefix}-{i:04d}", i) for i in range(count)])
    join_from = time.time()
    create_nodes(admin.client, joiners)
    deadline = time.monotonic() + 600
    unlabelled: set[str] = set()
    while time.monotonic() < deadline:  # the nodes not labelled yet (a set that shrinks to nothing)
        unlabelled = {n["metadata"]["name"] for missing in (f"!{GPU_PRESENT}", f"{deploy_label('driver')}!=true")
                      for n in admin.list("Node", label_selector=f"{selector},{missing}")}  # fmt: skip
        if not unlabelled:
            break
        time.sleep(0.2)
    waited = time.time() - join_from
    if unlabelled:
        print(f"  {len(unlabelled)} of {count} never labelled in {waited:.0f} s")
    # The follow-up labels: GFD's, then (MIG nodes) the layout applied; the operator's answers to them.
    waiting: list[dict[str, Any]] = []
    while follow_up and time.monotonic() < deadline:
        listed = admin.list("Node", label_selector=selector)
        waiting = [n for n in listed if not (GFD_PRODUCT in (ls := n["metadata"]["labels"]) and
                                            (MIG_STATE in ls or not _mig(ls)))]  # fmt: skip
        if not waiting:
            break
        time.sleep(1)
    if waiting:  # why the follow-up's figure below counts fewer answers than it should
        print(f"  follow-up: {len(waiting)} joined nodes still without GFD's labels or their MIG layout's state")
        for node in waiting[:3]:
            ls = node["metadata"]["labels"]
            mine = {k: v for k, v in sorted(ls.items()) if "mig" in k or k in (GFD_PRODUCT,)}
            print(f"    {node['metadata']['name']}: {mine}")
            if sim is not None:
                print(f"      simulator: {sim.describe(node['metadata']['name'])}")
        if sim is not None and sim.errors:
            print(f"    simulator's last errors: {sim.errors[-3:]}")
    time.sleep(5)
    names = {n["metadata"]["name"] for n in joiners}
    events = [e for e in cluster.audit_events() if audit_time(e) >= join_from - 1]
    creates = [
        e for e in events if e.get("stage") == "ResponseComplete" and e["verb"] == "create"
        and e["objectRef"].get("resource") == "nodes" and e["objectRef"].get("name") in names
    ]  # fmt: skip
    joined = {e["objectRef"]["name"]: audit_time(e) for e in creates}
    node_made = {e["objectRef"]["name"]: done_time(e) for e in creates}
    patches = sorted(
        (done_time(e), e["objectRef"]["name"], audit_time(e)) for e in events
        if e.get("stage") == "ResponseComplete" and e.get("user", {}).get("username") == user
        and e["verb"] == "patch" and e["objectRef"].get("resource") == "nodes"
        and e["objectRef"].get("name") in names
    )  # fmt: skip
    first: dict[str, float] = {}
    sent: dict[str, float] = {}
    for at, name, received in patches:
        if name not in first:
            first[name], sent[name] = at, received
    lat = [first[n] - joined[n] for n in first if n in joined and n not in unlabelled]
    labelled = f"({len(lat)} labelled" + (f", {len(unlabelled)} of {count} never" if unlabelled else "") + ")"
    if not follow_up and unlabelled:
        figure(f"{count} nodes join at once -> all labelled", waited, "s", labelled, mark=TIMED_OUT)
    elif not follow_up and first and joined:
        figure(f"{count} nodes join at once -> all labelled", max(first.values()) - min(joined.values()), "s",
               labelled)  # fmt: skip
    for p in (50, 99) if lat or unlabelled else ():
        late = latency_figure(lat, len(unlabelled), waited, p)
        figure(f"{count} nodes join -> labels, p{p}", late.value, late.unit, labelled if p == 50 else "",
               mark=late.mark)  # fmt: skip
    if lat:
        # Where a join's time goes: the API server creating the node, the operator until its patch arrives
        # (watch, decision, sending), the API server answering the patch.
        parts = {
            "create": [node_made[n] - joined[n] for n in first if n in node_made],
            "operator": [sent[n] - node_made[n] for n in first if n in node_made],
            "patch": [first[n] - sent[n] for n in first],
        }
        print("  join p50 by part: " + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in parts.items() if v))
    if follow_up:
        short = [f"{len(unlabelled)} of {count} never labelled"] * bool(unlabelled)
        short += [f"{len(waiting)} of {count} not followed up"] * bool(waiting)
        figure("node patches per joining node", len(patches) / count, "per node",
               mark=f"taken with {', '.join(short)}" if short else "")  # fmt: skip


def switch_back_on(cluster: LocalCluster, admin: Kube, user: str, component: str, timeout: float,
                   figure: Any) -> None:
    """A component (a ClusterPolicy section) switched off, then back on: time until its DaemonSet is ready and
    until the ClusterPolicy status says ready again, and what the operator wrote in between."""
    policy = admin.get("ClusterPolicy", "cluster-policy") or {}
    if not ((policy.get("spec") or {}).get(component) or {}).get("enabled", True):
        print(f"  {component} is not enabled in the sample policy: not switched")
        return
    before = {ds["metadata"]["name"]: ds["metadata"]["labels"].get(STATE_LABEL, "")
              for ds in admin.list("DaemonSet", NAMESPACE)}

    def status() -> dict[str, Any]:
        return (admin.get("ClusterPolicy", "cluster-policy") or {}).get("status") or {}

    def state() -> str | None:
        return status().get("state")

    def switch(on: bool) -> int:
        return int(admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {component: {"enabled": on}}})
                   ["metadata"]["generation"])  # fmt: skip

    switch(False)
    began = time.monotonic()
    gone: set[str] = set()
    off = False  # its DaemonSet and pods gone, the status ready
    while time.monotonic() - began < timeout:
        gone = set(before) - {ds["metadata"]["name"] for ds in admin.list("DaemonSet", NAMESPACE)}
        pods = [admin.request("GET", path_for("Pod", namespace=NAMESPACE),
                              query={"labelSelector": f"{STATE_LABEL}={before[n]}", "limit": 1})["items"]
                for n in gone]  # fmt: skip
        if gone and not any(pods) and state() == "ready":
            off = True
            break
        time.sleep(1)
    if not gone:
        print(f"  {component} switched off: no DaemonSet went away in {timeout:.0f} s: not switched back on")
        return
    if off:
        print(f"  {component} switched off: {', '.join(sorted(gone))} and its pods gone, status ready, in "
              f"{time.monotonic() - began:.1f} s")
    else:
        print(f"  {component} switched off: {', '.join(sorted(gone))} gone, but not its pods or not the status "
              f"ready in {timeout:.0f} s")
    taken = "" if off else "taken before the switch-off was done"
    time.sleep(5)  # the passes after it end
    since = time.time()
    t0 = time.monotonic()
    generation = switch(True)
    # Each is polled on its own: our status reads the pods, which the controller's counts lag, so the status
    # may turn ready first. A status counts once it was written for the new generation after a notReady one.
    ds_ready = seen_ready = None
    not_ready_seen = False
    while time.monotonic() - t0 < timeout and (ds_ready is None or seen_ready is None):
        if ds_ready is None:
            sets = [admin.get("DaemonSet", name, NAMESPACE) for name in gone]
            if all(ds is not None and _rolled_out(ds) for ds in sets):
                ds_ready = time.monotonic() - t0
        if seen_ready is None:
            st = status()
            if st.get("observedGeneration") == generation:
                if st.get("state") != "ready":
                    not_ready_seen = True
                elif not_ready_seen:
                    seen_ready = time.monotonic() - t0
        time.sleep(0.25)
    waited = time.monotonic() - t0
    time.sleep(5)  # what the operator writes right after
    writes = writes_by(cluster, user, since=since)
    if ds_ready is None or seen_ready is None:
        print(f"  {component} switched back on: not ready again in {timeout:.0f} s (DaemonSet ready: "
              f"{ds_ready is not None}, status ready after a notReady one: {seen_ready is not None})")
    for name, seconds in (("its DaemonSet ready", ds_ready), ("status ready", seen_ready)):
        figure(f"{component} switched back on -> {name}", waited if seconds is None else seconds, "s",
               mark=TIMED_OUT if seconds is None else taken)  # fmt: skip
    figure(f"{component} switched back on: ClusterPolicy status patches", writes["patch clusterpolicies/status"], "",
           "(all writes: " + ", ".join(f"{n} {k}" for k, n in writes.most_common()) + ")",
           mark=taken or ("taken before ready again" if ds_ready is None or seen_ready is None else ""))


def _rolled_out(ds: dict[str, Any]) -> bool:
    """A DaemonSet's controller has seen its spec and every pod it wants is ready."""
    st = ds.get("status") or {}
    return (st.get("observedGeneration") == ds["metadata"]["generation"] and st.get("desiredNumberScheduled", 0) > 0
            and st.get("numberReady") == st.get("desiredNumberScheduled"))  # fmt: skip


def all_rolled_out(daemonsets: list[dict[str, Any]], gpu_nodes: int) -> bool:
    """Every DaemonSet's controller has seen its spec and has every pod it wants ready and updated, and the validator
    runs on every GPU node: what a ready status must mean (the bench checks it; NVIDIA's operator has been seen to
    say ready with one of its DaemonSets created)."""
    validator = [d for d in daemonsets if (d["metadata"].get("labels") or {}).get("app") == VALIDATOR_APP]
    if not validator or (validator[0].get("status") or {}).get("desiredNumberScheduled", 0) < gpu_nodes:
        return False
    for ds in daemonsets:
        st = ds.get("status") or {}
        desired = st.get("desiredNumberScheduled", 0)
        if st.get("observedGeneration") != ds["metadata"]["generation"]:
            return False
        if st.get("numberReady") != desired or st.get("updatedNumberScheduled", 0) != desired:
            return False
    return True


NEW_DRIVER = "600.10.01"


def _watch(kube: Kube, path: str, selector: str, seen: Any, stop: threading.Event) -> None:
    """Every object under `path` matching `selector`, then each change, to `seen(obj)` until `stop` is set.

    An ERROR event (a 410 when the version has left the API server's watch cache) lists again: a watch that retried
    the same version would see nothing more."""
    rv = ""  # empty: list again
    try:
        while not stop.is_set():
            if not rv:
                page = kube.request("GET", path, query={"labelSelector": selector})
                for obj in page["items"]:
                    seen(obj)
                rv = page["metadata"]["resourceVersion"]
            for event in kube.watch(path, rv, timeout_seconds=60, labelSelector=selector):
                if event["type"] == "ERROR":
                    rv = ""
                    break
                if event["type"] in ("ADDED", "MODIFIED"):
                    seen(event["object"])
                rv = event["object"]["metadata"].get("resourceVersion", rv)
                if stop.is_set():
                    return
    except Exception:
        if not stop.is_set():  # once stopped, the cluster going down ends the watch
            raise


def upgrade(cluster: LocalCluster, admin: Kube, user: str, total: int, parallel: int, timeout: float,
            figure: Any, pod_deletion: bool = True, drivers: Collection[str] = (),
            operator_pid: int | None = None, metrics_port: int | None = None) -> None:
    """A driver upgrade of every node, `parallel` at a time: its figures (watched, not polled: a list of every
    driver pod each half second costs the API server more than the operator does). `pod_deletion` False: the
    sample's podDeletion goes, so the upgrade reads no workload pods (the cordon and the driver pod's deletion in
    one pass). `drivers`: the NVIDIADrivers that drive the nodes (useNvidiaDriverCRD), each given the new version
    and the upgrade policy; the ClusterPolicy's upgrade policy then bounds them all together. `operator_pid`,
    `metrics_port`: the operator's, for its CPU and passes during the upgrade (with the CPU of this process, which
    runs the node simulator, and of each control-plane process: on 2 cores they share, one's spike slows all)."""
    ready_at: dict[str, float] = {}  # node -> when its new driver pod was first seen Ready
    # node -> when its validator turned Ready, and which validator pod it was
    validated: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    validator_ready: dict[str, bool] = {}
    seen_pod: dict[str, tuple[float, float | None]] = {}  # validator pod uid -> first seen, first seen on a node
    left: set[str] = set()  # nodes seen in a state other than upgrade-done since the change
    done_at: dict[str, float] = {}  # node -> when first seen upgrade-done and schedulable after that
    lock = threading.Lock()

    def pod(obj: dict[str, Any]) -> None:
        node = obj["spec"].get("nodeName")
        statuses = (obj.get("status") or {}).get("containerStatuses") or [{}]
        new = f":{NEW_DRIVER}-" in obj["spec"]["containers"][0]["image"]
        if node and new and all(c.get("ready") for c in statuses):
            with lock:
                ready_at.setdefault(node, time.time())

    def validator(obj: dict[str, Any]) -> None:
        node = obj["spec"].get("nodeName")
        statuses = (obj.get("status") or {}).get("containerStatuses") or [{}]
        ready = bool(node) and all(c.get("ready") for c in statuses) and not obj["metadata"].get("deletionTimestamp")
        uid, now = obj["metadata"].get("uid", ""), time.time()
        with lock:
            first, bound = seen_pod.get(uid, (now, None))
            seen_pod[uid] = (first, bound if bound is not None or not node else now)
            if node and ready and not validator_ready.get(node, True):
                validated[node].append((now, uid))
            if node:
                validator_ready[node] = ready

    def node(obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with lock:
            if obj["metadata"]["labels"].get(UPGRADE_STATE) != "upgrade-done":
                left.add(name)
            elif name in left and not obj["spec"].get("unschedulable"):
                done_at.setdefault(name, time.time())

    stop = threading.Event()
    # By upstream's `app` labels, which both operators' pods carry.
    pods = (path_for("Pod", namespace=NAMESPACE), f"app={DRIVER_APP}", pod)
    validators = (path_for("Pod", namespace=NAMESPACE), f"app={VALIDATOR_APP}", validator)
    nodes = (path_for("Node"), UPGRADE_STATE, node)
    watchers = [
        threading.Thread(target=_watch, daemon=True, args=(Kube.connect(str(cluster.kubeconfig)), *spec, stop))
        for spec in (pods, validators, nodes)
    ]
    for w in watchers:
        w.start()
    since = time.time()
    began = time.monotonic()
    pids = {**({"operator": operator_pid} if operator_pid else {}), "bench and node simulator": os.getpid(),
            **cluster.pids}  # fmt: skip
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    passes0 = passes(metrics_port) if metrics_port else 0.0
    limits: dict[str, Any] = {"autoUpgrade": True, "maxParallelUpgrades": parallel, "maxUnavailable": "100%"}
    if not pod_deletion:
        limits["podDeletion"] = None  # a merge patch's null removes it
    policy = {"version": NEW_DRIVER, "upgradePolicy": limits}
    if drivers:  # the global bounds first, so no NVIDIADriver starts under the old ones
        admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"upgradePolicy": limits}}})
        for name in drivers:
            admin.merge_patch("NVIDIADriver", name, {"spec": policy})
    else:
        admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": policy}})
    finished = False
    while not finished and time.monotonic() - began < timeout:
        with lock:
            finished = len(done_at) >= total and all(n in ready_at for n in done_at)
        if not finished:
            time.sleep(0.5)
    seconds = time.monotonic() - began
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    passes_run = passes(metrics_port) - passes0 if metrics_port else 0.0
    stop.set()
    events = cluster.writes(user, since)
    writes = collections.Counter(what(e) for e in events)
    lags = sorted(max(0.0, done_at[n] - ready_at[n]) for n in done_at if n in ready_at)
    figure(f"driver upgrade, {parallel} nodes at a time: all done", seconds, "s",
           f"({len(done_at)} of {total} nodes)", mark="" if finished else TIMED_OUT)  # fmt: skip
    if not finished:  # the figures below: of the nodes done by then
        figure = functools.partial(figure, mark=f"taken with {len(done_at)} of {total} nodes done")
    figure("driver upgrade: operator writes per node", sum(writes.values()) / total, "per node",
           "(" + ", ".join(f"{n} {k}" for k, n in writes.most_common()) + ")")
    if done_at:  # the nodes' own patches, counted over the nodes done alone (an upgrade cut short counts too)
        own = sum(1 for e in events if (e.get("objectRef") or {}).get("resource") == "nodes"
                  and e["objectRef"].get("name") in done_at)  # fmt: skip
        figure("driver upgrade: node patches per node done", own / len(done_at), "per node")
    if lags:
        figure("driver upgrade: new driver pod Ready -> node done, p50", statistics.median(lags), "s")
        figure("driver upgrade: new driver pod Ready -> node done, max", lags[-1], "s")
    # The operator's part: a node is done once its validator is Ready again too (validation-required).
    ours: dict[str, float] = {}
    for n, done in done_at.items():
        if n in ready_at:
            # The validator's first Ready after the new driver's (this watch may see it a moment after the node's
            # upgrade-done, which the operator wrote on seeing it).
            turned = [t for t, _ in validated.get(n, ()) if t >= ready_at[n]]
            ours[n] = max(0.0, done - max([ready_at[n], *turned[:1]]))
    # The node model's part, split: where the validator pod that turned Ready after the new driver came from.
    created, bound_in, ready_in = [], [], []
    for n in ours:
        after = [(at, uid) for at, uid in validated.get(n, ()) if at >= ready_at[n]]
        if after and after[0][1] in seen_pod:
            at, uid = after[0]
            first, bound = seen_pod[uid]
            created.append(first - ready_at[n])
            if bound is not None:
                bound_in.append(bound - first)
                ready_in.append(at - max(bound, ready_at[n]))
    for label, values in (("new driver pod Ready -> validator pod created (negative: before)", created),
                          ("validator pod created -> on its node", bound_in),
                          ("validator pod on its node (and driver Ready) -> validator Ready", ready_in)):
        if values:
            p90 = percentile(values, 90)
            figure(f"driver upgrade: {label}, p50", statistics.median(values), "s", f"(p90 {p90:.2f} s)")
    if ours:
        lag = sorted(ours.values())
        figure("driver upgrade: driver and validator Ready -> node done, p50", statistics.median(lag), "s")
        figure("driver upgrade: driver and validator Ready -> node done, max", lag[-1], "s")
    figure("driver upgrade: CPU of the processes on this machine", sum(cpu.values()), "s",
           "(" + ", ".join(f"{name} {v:.0f}" for name, v in sorted(cpu.items(), key=lambda kv: -kv[1])) + ")")
    if metrics_port:
        figure("driver upgrade: reconcile passes", passes_run, "", f"(operator CPU {cpu.get('operator', 0):.1f} s)")
    for n in sorted(ours, key=ours.__getitem__)[-5:][::-1]:  # where the operator's tail went, from the change (+s)
        turned = [round(t - since, 1) for t, _ in validated.get(n, ())]
        print(f"  slow node {n}: driver pod Ready +{ready_at[n] - since:.1f} s, validator Ready at {turned} s, "
              f"done +{done_at[n] - since:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh cluster; the table gives medians")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of steady state to watch for requests")
    parser.add_argument("--joins", type=int, default=50, help="nodes that join at once after the steady state")
    parser.add_argument("--mass-join", type=int, default=1000, metavar="N",
                        help="last, N nodes join at once: time until all are labelled (0: not)")
    parser.add_argument("--upgrade-parallel", type=int, default=-1, metavar="N",
                        help="after the joins, upgrade the driver N nodes at a time (maxParallelUpgrades; default "
                             "10%% of the nodes; 0: no upgrade)")
    parser.add_argument("--settled", type=float, default=60.0,
                        help="seconds of steady state measured again (CPU, writes, reads) once the passes after "
                             "ready stop (NVIDIA's: once it has not written for 15 s) (0: not)")
    parser.add_argument("--switch", default="dcgmExporter", metavar="SECTION",
                        help="after the joins, switch this ClusterPolicy section off, then back on: time until its "
                             "DaemonSet and the status are ready again, status patches spent (\"\": not)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--upgrade-no-pod-deletion", dest="upgrade_pod_deletion", action="store_false",
                        help="upgrade without the sample's podDeletion: no workload pods are read, a node is cordoned "
                             "and its driver pod deleted in one pass")
    parser.add_argument("--upgrade-timeout", type=float, metavar="S",
                        help="seconds the upgrade may take before its figures are printed for the nodes done by then "
                             "(default: --timeout)")
    parser.add_argument("--log", type=Path, help="keep the (last run's) operator log here")
    parser.add_argument("--alloc-top", type=int, default=0, metavar="N",
                        help="trace allocations (tracemalloc: CPU and RSS figures grow) and print the operator's "
                             "top N allocation sites after idling")
    parser.add_argument("--no-device-labels", dest="device_labels", action="store_false",
                        help="nodes without NFD's PCI device-ID label (NFD's default labels)")
    parser.add_argument("--node-features", action="store_true",
                        help="NFD's NodeFeature API: a NodeFeature naming each GPU node's device, created before the "
                             "node, and no device-ID label on the nodes (as --no-device-labels)")
    parser.add_argument("--node-leases", action="store_true",
                        help="kubelet-like heartbeats: node Leases every 10 s, node status every 5 min (default: "
                             "kwok's node status every 20-25 s)")
    parser.add_argument("--pass-profile", action="store_true",
                        help="run the reconcile passes under cProfile and print where their time went at ready")
    parser.add_argument("--heap-report", action="store_true",
                        help="print the operator's heap report after idling (RSS after gc and malloc_trim, objects by "
                             "type; with --alloc-top, the allocation sites)")
    parser.add_argument("--until-created", action="store_true",
                        help="end each run once the operand DaemonSets exist (their count steady for 5 s): the "
                             "figures of the first seconds only, with the profiles of that span")
    parser.add_argument("--timeline", action="store_true",
                        help="print the operator's requests from the ClusterPolicy to the last DaemonSet created "
                             "(received and answered, relative to the create; groups of 8 or more folded)")
    parser.add_argument("--cpu-profile", action="store_true",
                        help="sample the operator with py-spy from ClusterPolicy to ready and while it idles; print "
                             "where its CPU goes (with --log, the raw stacks to ready beside the log)")
    parser.add_argument("--one-os", action="store_true",
                        help="every node on ubuntu 22.04 (default: half on 24.04); NVIDIA's ClusterPolicy driver is "
                             "one DaemonSet for one OS, so compare with --upstream on one OS")
    parser.add_argument("--upstream", type=Path, metavar="SRC",
                        help="run NVIDIA's operator instead of ours: SRC is a NVIDIA/gpu-operator checkout with "
                             "bin/gpu-operator built in it (see e2e/bench/upstream.py); figures of our operator "
                             "alone (reconcile passes, doctor) are left out")
    parser.add_argument("--nvidia-drivers", action="store_true",
                        help="the driver from two NVIDIADrivers (useNvidiaDriverCRD): a default one and one with "
                             "another version for the nodes on ubuntu 24.04; the upgrade gives both the new version")
    args = parser.parse_args(argv)
    if args.node_features:
        args.device_labels = False  # GPUs identified through the NodeFeatures alone
    if args.nvidia_drivers and (args.upstream or args.one_os):
        parser.error("--nvidia-drivers: ours only, on both OSes")
    if args.nvidia_drivers and not args.upgrade_pod_deletion:
        parser.error("--upgrade-no-pod-deletion: an NVIDIADriver's podDeletion, unset, is upstream's default")
    if args.upstream:
        if args.cpu_profile or args.pass_profile or args.heap_report or args.alloc_top:
            parser.error("--upstream runs a Go program: --cpu-profile, --pass-profile, --heap-report and "
                         "--alloc-top profile ours only")
        if why := nvidia.check_source(args.upstream):
            parser.error(f"--upstream: {why}")
    if args.cpu_profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error(f"--cpu-profile needs py-spy: {Path(sys.executable).with_name('pip')} install py-spy")
    # This process's watches time what they see, beside the node simulator's busy threads: the operator's interval.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    runs: list[dict[str, Figure]] = []
    for n in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"\n== run {n} of {args.runs}", flush=True)
        runs.append(one_run(args))
    of = ""
    if len(runs) > 1:
        of = f", medians of {len(runs)} runs (each run's value; one timed out or taken after a timeout left out)"
    how = " (GPUs identified through NFD NodeFeatures)" if args.node_features else ""
    print(f"\nfigures at {args.nodes} nodes{how}{of}")
    print("\n".join(table(runs)))
    return 0


def table(runs: list[dict[str, Figure]]) -> list[str]:
    """The table of figures: each one's median over the runs that measured it (a wait that timed out, or a value
    taken after one, left out), with each run's value when several did, and how many did when not every run (the
    others named, a marked value shown with its run)."""
    rows = ["| figure | value |", "|---|---|"]
    for name in dict.fromkeys(k for r in runs for k in r):
        values = [r[name] for r in runs if name in r and not r[name].mark]
        notes = [f"run {i}: {_show(r[name])}" for i, r in enumerate(runs, 1) if name in r and r[name].mark]
        without = [str(i) for i, r in enumerate(runs, 1) if name not in r]
        if without:
            notes.append(f"not in run{'s' * (len(without) > 1)} {', '.join(without)}")
        if len(runs) == 1:
            cell = _show(runs[0][name])
        elif not values:
            cell = "; ".join(notes)
        else:
            unit = values[0].unit
            cell = _fmt(statistics.median(f.value for f in values), unit)
            if len(values) > 1:
                cell += f" ({', '.join(_fmt(f.value, unit) for f in values)})"
            if notes:
                cell += f" ({len(values)} of {len(runs)} runs; {'; '.join(notes)})"
        rows.append(f"| {name} | {cell} |")
    return rows


def _show(f: Figure) -> str:
    """A figure's value as printed: "> 900 s (timed out)", "172 (taken before ready)"."""
    if f.mark == TIMED_OUT:
        return f"> {_fmt(f.value, f.unit)} ({TIMED_OUT})"
    return f"{_fmt(f.value, f.unit)} ({f.mark})" if f.mark else _fmt(f.value, f.unit)


def _fmt(value: float, unit: str) -> str:
    if unit in ("s", "% of a core"):
        return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "per node":
        return f"{value:.1f}"
    return f"{value:.0f}"


def one_run(args: argparse.Namespace) -> dict[str, Figure]:
    """One fresh cluster, every figure by name."""
    figures: dict[str, Figure] = {}
    after = [""]  # the mark of every figure from here on, once the wait for ready timed out

    def figure(name: str, value: float, unit: str, detail: str = "", mark: str = "") -> None:
        if mark != TIMED_OUT:
            mark = "; ".join(m for m in dict.fromkeys((after[0], mark)) if m)
        figures[name] = Figure(value, unit, mark)
        print(f"{name}: {_show(figures[name])}{' ' + detail if detail else ''}", flush=True)

    # At 5,000 nodes on this 2-core machine kwok stops heartbeating some nodes for 10 min and more mid-rollout
    # (it re-arms a node's heartbeat whenever the node changes, and falls behind): they went NotReady, their
    # pods with them, and the rollout never ended. Past 1,000 nodes the grace outlasts a run.
    grace = "2m" if args.nodes <= 1000 else "2h"
    with temporary_cluster("gpu-operator-bench-", node_leases=args.node_leases, node_monitor_grace=grace) as (
        cluster, tmp
    ):
        op: OperatorProcess | nvidia.UpstreamProcess | None = None
        try:
            admin = Kube.connect(str(cluster.kubeconfig))
            nodes = [bench_node(f"gpu-{i:04d}", i, args.device_labels, args.one_os) for i in range(args.nodes)]
            t0 = time.monotonic()
            if args.node_features:  # NFD's worker writes a node's NodeFeature as the node starts
                install_node_feature_api(admin)
                create_node_features(admin.client, [bench_feature(f"gpu-{i:04d}", i) for i in range(args.nodes)])
                print(f"NFD NodeFeature API: {args.nodes} NodeFeatures (one per GPU node, naming its device; the nodes "
                      f"without device-ID labels) created in {time.monotonic() - t0:.1f}s")
                t0 = time.monotonic()
            create_nodes(admin.client, nodes)
            print(f"{args.nodes} nodes created in {time.monotonic() - t0:.1f}s")
            if args.upstream:
                nvidia.install_crds_and_rbac(admin, args.upstream)
            else:
                install_crds_and_rbac(admin)
            # k8s-driver-manager waits upstream's 5 minutes: a loaded control plane may take longer than 20 s
            sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, workers=8,
                                manager_grace_seconds=300.0).start()
            if args.alloc_top:
                os.environ["PYTHONTRACEMALLOC"] = "1"
            if args.alloc_top or args.heap_report or args.pass_profile:
                os.environ[DEBUG_DIR] = str(tmp)
            if args.pass_profile:
                os.environ[PROFILE_PASSES] = "1"
            t0 = time.monotonic()
            ours = not args.upstream
            if args.upstream:
                op = nvidia.UpstreamProcess(cluster, tmp / "operator.log", args.upstream).start()
                if not op.started():
                    raise RuntimeError("NVIDIA's operator did not start:\n" + op.log_tail())
                print(f"NVIDIA's operator started (its controllers' caches filled) in {time.monotonic() - t0:.1f}s",
                      flush=True)
                time.sleep(5)  # it lists nodes and more once its workers start, with no ClusterPolicy yet
            else:
                op = OperatorProcess(cluster, tmp / "operator.log").start()
                os.environ.pop("PYTHONTRACEMALLOC", None)
                os.environ.pop(DEBUG_DIR, None)
                os.environ.pop(PROFILE_PASSES, None)
                # Started: its caches filled and a first pass done (the listing of 5,000 nodes takes seconds).
                started_by = time.monotonic() + 300
                while time.monotonic() < started_by:
                    try:
                        if passes(op.metrics_port) >= 1:
                            break
                    except OSError:
                        pass
                    time.sleep(0.5)
                print(f"operator started (caches filled, first pass done) in {time.monotonic() - t0:.1f}s",
                      flush=True)
                time.sleep(1)
            assert op.proc is not None
            times0 = proc_times(op.proc.pid)
            passes0 = passes(op.metrics_port) if ours else 0.0
            triggers0 = triggers(op.metrics_port) if ours else collections.Counter()
            pass_cpu0 = passes(op.metrics_port, PASS_CPU) if ours else 0.0
            t0 = time.monotonic()
            created_at = time.time()
            rollout = tmp / "rollout.prof"
            spy_rollout = py_spy(op.proc.pid, args.timeout, rollout) if args.cpu_profile else None
            policy = policy_from_sample()
            drivers = nvidia_drivers(policy) if args.nvidia_drivers else {}
            for obj in drivers.values():
                admin.create(obj)
            admin.create(nvidia.through_simulator(policy) if args.upstream else policy)
            state = None
            daemonsets, steady_since = 0, time.monotonic()
            said_ready: float | None = None  # when the status said ready, while it still says so
            finished = False  # ready (or with --until-created, the DaemonSets there), not timed out
            while not finished and time.monotonic() - t0 < args.timeout:
                obj = admin.get("ClusterPolicy", "cluster-policy") or {}
                state = (obj.get("status") or {}).get("state")
                if state != "ready":
                    said_ready = None
                else:
                    said_ready = said_ready or time.monotonic()
                    finished = all_rolled_out(admin.list("DaemonSet", NAMESPACE), args.nodes)
                if args.until_created and not finished:
                    count = len(admin.list("DaemonSet", NAMESPACE))
                    if count != daemonsets:
                        daemonsets, steady_since = count, time.monotonic()
                    finished = bool(count) and time.monotonic() - steady_since >= 5
                if not finished:
                    time.sleep(0.25)
            ready_at = time.time()
            ready_s = time.monotonic() - t0
            user_s, system_s, faults = (b - a for a, b in zip(times0, proc_times(op.proc.pid), strict=True))
            cpu_ready = user_s + system_s
            passes_ready = passes(op.metrics_port) - passes0 if ours else 0.0
            triggers_ready = triggers(op.metrics_port) if ours else collections.Counter()
            pass_cpu = passes(op.metrics_port, PASS_CPU) - pass_cpu0 if ours else 0.0
            rss_ready = (rss_kib(op.proc.pid) or 0) / 1024
            if args.pass_profile:
                time.sleep(6)  # the next pass writes its profile (at most every 5 s)
                print_pass_profile(tmp / "passes.prof", passes(op.metrics_port))
            if spy_rollout is not None:
                spy_rollout.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far
                spy_rollout.wait(timeout=60)
                print("CPU from ClusterPolicy to ready:")
                print_profile(rollout, top=40)
                if args.log and rollout.exists():
                    shutil.copyfile(rollout, f"{args.log}.rollout.prof")  # the raw stacks, for a closer look

            user = op.username
            until_ready = [e for e in requests_of(cluster, user) if audit_time(e) <= ready_at]
            created = [
                done_time(e) for e in until_ready
                if e.get("objectRef", {}).get("resource") == "daemonsets" and e["verb"] in ("create", "patch")
                and e.get("responseStatus", {}).get("code") == 201
            ]  # fmt: skip
            pods_ready = [
                done_time(e) for e in cluster.audit_events()
                if e.get("stage") == "ResponseComplete" and e.get("objectRef", {}).get("resource") == "pods"
                and e["objectRef"].get("subresource") == "status" and audit_time(e) <= ready_at
            ]  # fmt: skip
            if created:
                figure("ClusterPolicy -> every operand DaemonSet created", max(created) - created_at, "s",
                       f"({len(created)} DaemonSets)")
                if args.timeline:
                    policy_create = [e for e in cluster.audit_events() if e.get("verb") == "create"
                                     and (e.get("objectRef") or {}).get("resource") == "clusterpolicies"]  # fmt: skip
                    print_timeline(policy_create[-1:] + until_ready, created_at, max(created))
            if args.until_created:
                after[0] = "" if finished else "taken at the timeout"
                figure("operator CPU from ClusterPolicy to DaemonSets created (+5 s)", cpu_ready, "s")
                figure("operator RSS then", rss_ready, "MiB")
                figure("operator requests until then", len(until_ready), "")
                op.stop()
                sim.stop()
                if args.log:
                    shutil.copyfile(tmp / "operator.log", args.log)
                return figures
            figure("ClusterPolicy -> status ready", ready_s, "s", f"(state {state})",
                   mark="" if finished else TIMED_OUT)  # fmt: skip
            if not finished:  # what follows is measured mid-rollout
                after[0] = "taken before ready"
                print("last operand pod status written -> ready seen: never ready")
            if said_ready is not None and ready_s - (said_ready - t0) > 1:
                print(f"  the status said ready {ready_s - (said_ready - t0):.1f} s before every DaemonSet was rolled "
                      "out: counted from the rollout")
            if pods_ready and finished:
                figure("last operand pod status written -> ready seen", ready_at - max(pods_ready), "s")
                # Where that time went: the DaemonSet controller's last status write, then our status patch.
                ds_status = [
                    done_time(e) for e in cluster.audit_events()
                    if e.get("stage") == "ResponseComplete" and e.get("objectRef", {}).get("resource") == "daemonsets"
                    and e["objectRef"].get("subresource") == "status" and audit_time(e) <= ready_at
                ]  # fmt: skip
                status_patches = [done_time(e) for e in until_ready
                                  if what(e) in ("patch clusterpolicies/status", "update clusterpolicies/status")]
                if ds_status and status_patches:
                    last, patched = max(pods_ready), max(status_patches)
                    clock = time.strftime("%H:%M:%S", time.localtime(last)) + f",{int(last % 1 * 1000):03d}"
                    print(f"  last pod status {last - created_at:.2f} s after the create (at {clock}, as in --log), "
                          f"last DaemonSet status {max(ds_status) - last:+.2f} s, the ready status patch "
                          f"{patched - last:+.2f} s")
                    if patched - last > 1:  # the goal missed: what we asked meanwhile
                        between = [e for e in until_ready if last - 1 <= done_time(e) <= patched]
                        for e in between[-20:]:
                            print(f"    {done_time(e) - last:+.3f} s  {what(e)}")
            by_verb = collections.Counter(what(e) for e in until_ready)
            figure("API requests until ready", len(until_ready), "", f"({2 * args.nodes + 300} is 2N+300)")
            for name, n in sorted(by_verb.items()):
                print(f"  {n:6d}  {name}")
            figure("operator CPU from ClusterPolicy to ready", cpu_ready, "s",
                   f"(user {user_s:.1f} s, system {system_s:.1f} s; {faults:.0f} minor page faults)")
            if ours:
                figure("reconcile passes from ClusterPolicy to ready", passes_ready, "",
                       f"(their thread's CPU {pass_cpu:.1f} s; the rest is the watches, the event loop and HTTP)")
                print(f"  started by: {_since(triggers_ready, triggers0)}")
            figure("operator RSS at ready", rss_ready, "MiB")
            plane = {name: (rss_kib(pid) or 0) / 1024 for name, pid in cluster.pids.items()}
            figure("control plane RSS at ready", sum(plane.values()), "MiB",
                   "(" + ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(plane.items())) + ")")
            figure("bench process RSS at ready", (rss_kib(os.getpid()) or 0) / 1024, "MiB",
                   "(the node simulator's pods and models, this bench's watches)")

            idle_from = time.time()
            cpu1 = cpu_seconds(op.proc.pid)
            spy = py_spy(op.proc.pid, args.idle, tmp / "idle.prof") if args.cpu_profile else None
            time.sleep(args.idle)
            idle_to = time.time()
            idle_cpu = cpu_seconds(op.proc.pid) - cpu1
            idle = [e for e in requests_of(cluster, user) if idle_from <= audit_time(e) <= idle_to]
            writes = [e for e in idle if e["verb"] in WRITE_VERBS]
            reads = [e for e in idle if e["verb"] not in WRITE_VERBS and e["verb"] != "watch"]
            steady = dict(collections.Counter(what(e) for e in writes + reads))
            figure(f"writes in {args.idle:.0f} s of steady state", len(writes), "", str(steady) if steady else "")
            figure(f"reads in {args.idle:.0f} s of steady state", len(reads), "")
            figure("operator CPU at steady state", 100 * idle_cpu / args.idle, "% of a core")
            figure("operator RSS after idling", (rss_kib(op.proc.pid) or 0) / 1024, "MiB")
            if spy is not None:
                spy.wait(timeout=60)
                print_profile(tmp / "idle.prof")
            if args.alloc_top or args.heap_report:
                print(heap_report(op.proc.pid, tmp), flush=True)
            if args.settled:
                # Right after ready, node labels still change for a while (mig-manager reports each node's
                # layout applied, each change a full pass of ours; NVIDIA's upgrade controller marks each node's
                # upgrade state). Measure again once ours has run no pass, or NVIDIA's has written nothing, for 15 s.
                t_wait = time.monotonic()
                if ours:
                    last, still = passes(op.metrics_port), time.monotonic()
                    while time.monotonic() - still < 15 and time.monotonic() - t_wait < 600:
                        time.sleep(1)
                        now = passes(op.metrics_port)
                        if now != last:
                            last, still = now, time.monotonic()
                    quiet = time.monotonic() - still >= 15
                    figure("last pass after ready", still - (t0 + ready_s), "s", mark="" if quiet else TIMED_OUT)
                    print(f"  passes after ready started by: {_since(triggers(op.metrics_port), triggers_ready)}")
                else:
                    quiet = False
                    while not quiet and time.monotonic() - t_wait < 600:
                        wrote = _last_write(cluster, user)
                        quiet = time.time() - wrote >= 15
                        if not quiet:
                            time.sleep(5)
                    figure("last write after ready", wrote - ready_at, "s", mark="" if quiet else TIMED_OUT)
                unsettled = "" if quiet else "taken before settled"
                cpu2, p0 = cpu_seconds(op.proc.pid), passes(op.metrics_port) if ours else 0.0
                settled_from = time.time()
                time.sleep(args.settled)
                settled_cpu = 100 * (cpu_seconds(op.proc.pid) - cpu2) / args.settled
                settled = [e for e in requests_of(cluster, user) if settled_from <= audit_time(e) <= time.time()]
                figure("operator CPU at steady state, once settled", settled_cpu, "% of a core",
                       f"({passes(op.metrics_port) - p0:.0f} passes in {args.settled:.0f} s)" if ours else "",
                       mark=unsettled)  # fmt: skip
                figure(f"writes in {args.settled:.0f} s once settled", sum(e["verb"] in WRITE_VERBS for e in settled),
                       "", mark=unsettled)  # fmt: skip
                figure(f"reads in {args.settled:.0f} s once settled",
                       sum(e["verb"] not in WRITE_VERBS and e["verb"] != "watch" for e in settled), "",
                       mark=unsettled)  # fmt: skip

            if ours:
                t_doc = time.monotonic()
                seen = gather(Kube.connect(str(cluster.kubeconfig)), NAMESPACE)
                t_read = time.monotonic() - t_doc
                found = diagnose(seen)
                figure("gpu-operator doctor on the whole cluster", time.monotonic() - t_doc, "s",
                       f"({t_read:.2f} s reading {len(seen.pods)} pods and {len(seen.events)} events, the rest "
                       f"analysis), {len(found)} findings")

            if args.joins:
                join(cluster, admin, user, args.joins, "join", args.device_labels, figure, follow_up=True,
                     one_os=args.one_os, sim=sim, features=args.node_features)
            if args.switch:  # after the joins: they are measured on a cluster at rest
                switch_back_on(cluster, admin, user, args.switch, args.timeout, figure)
            total = args.nodes + args.joins
            parallel = args.upgrade_parallel if args.upgrade_parallel >= 0 else max(1, total // 10)
            if parallel:
                upgrade(cluster, admin, user, total, parallel, args.upgrade_timeout or args.timeout, figure,
                        args.upgrade_pod_deletion, drivers=list(drivers), operator_pid=op.proc.pid,
                        metrics_port=op.metrics_port if ours else None)
            if args.mass_join:
                join(cluster, admin, user, args.mass_join, "mass", args.device_labels, figure, follow_up=False,
                     one_os=args.one_os, features=args.node_features)
            op.stop()
            sim.stop()
            if args.log:
                shutil.copyfile(tmp / "operator.log", args.log)
        finally:
            if op is not None:  # a run that failed must not leave the operator process behind
                op.stop()
    return figures


if __name__ == "__main__":
    sys.exit(main())
