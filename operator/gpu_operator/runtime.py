"""kopf wiring: watch events fill a small in-memory cache and wake one single-flight reconcile loop.

Only `on.event` handlers are used (no change-detection handlers, timers or daemons), so kopf writes no
annotations or finalizers of its own to any object, and a steady cluster costs no writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, cast

import kopf

from . import __version__, compat, debug, metrics, mig_pass, wire
from .gpu_identity import identify
from .kinds import CONFIG_MAP, DAEMON_SET, NODE_FEATURE, lookup, operand_kinds, served
from .kube import ApiError, Fence, Kube, NotLeader, path_for
from .leader import Elector, identity
from .nodes import MIG_CONFIG, NodeFacts, forget_node, keep_labels, kept_labels
from .nodewatch import NodeWatch, Watch
from .nvidiadriver import KeptRouting, NVIDIADriver, selector_keys
from .observe import (
    OWNED_SELECTOR,
    Key,
    Newer,
    PodIndex,
    Snapshot,
    feature_projection,
    key_of,
    list_nvidia_drivers,
    list_owned,
    newer,
    node_features,
    node_state,
    observe,
    owner_key,
    project_pod,
    revision_projection,
)
from .readiness import is_unready
from .reconciler import Labelling, Outcome, Reconciler, generations, hold_driver_restores
from .render import (
    NodePatch,
    config_map_keys,
    driver_node_patches,
    driver_routing,
    merged,
    node_patches,
    relabelled,
    upgrade_first_sight,
    warm_up,
)
from .states.base import MANAGED_BY, OPERATOR_NAME
from .status import active_policy
from .upgrade import IN_PROGRESS_STATES, Plan, UpgradeNode
from .upgrade import STATE_LABEL as UPGRADE_STATE_LABEL
from .upgrade.adapter import DRIVER, VALIDATOR, adopting_pools, driver_precompiled, upgrade_node
from .upgrade.orchestrate import advance
from .upgrade.planner import plan_forward
from .wire import Codec

log = logging.getLogger("gpu_operator")

NOT_READY_RECHECK_S = 5.0
# A pass that failed (an exception, or the API server refusing a write: Outcome.error) is tried again after
# NOT_READY_RECHECK_S, doubled with each failure in a row up to FAILED_RETRY_MAX_S, as controller-runtime backs off
# a reconcile that returns an error. A pass that succeeds ends the streak; a watch event still wakes a pass at once
# (an admin's fix that makes no event, RBAC granted, waits for the timer).
FAILED_RETRY_MAX_S = 300.0
RESYNC_S = 300.0
DEBOUNCE_S = 0.3
# Pacing: a pass woken by node label changes, or by pod and DaemonSet status changes while operand pods roll out,
# waits after the previous one PACE times that pass's CPU time, at most MAX_GAP_S: a rollout then costs at most
# about a sixtieth of a core in passes (at 1,000 nodes a pass takes ~40 ms of CPU: one every 2.4-3 s; with 40x and
# 2 s, 130-145 passes of a 210-290 s rollout were a third of the operator's CPU). What such a pass brings is the
# status's progress: the last pod turning ready, what the status waits for, is not paced. Anything else is
# urgent (the policy, objects' specs, nodes coming or going, a node's MIG layout asked for, a DaemonSet's last pod
# turning ready, a pod turning ready on a node mid-upgrade, a pod change once none rolls out, a node change once
# none rolls out while the status is not ready). A small cluster's passes take a few ms, so only the debounce
# applies there.
PACE = 60.0
MAX_GAP_S = 3.0
LABELLING_WAIT_S = 1.0
LABEL_THREADS = 48
NODE_FEATURE_RELIST_S = 10.0  # (only where NodeFeatures may not be watched)
NEWER_WAIT_S = 1.0  # how long a pass waits for the event loop's copy of what came since its snapshot
GATHER_S = 0.05  # how long pod, revision and DaemonSet events gather before the loop takes them (see Inbox)


class Moves:
    """The nodes whose driver upgrade was moved on between passes (Operator._advance), so that a pass whose snapshot
    is older does not write them back: node -> the resourceVersion the move's write answered with, or IN_FLIGHT
    while it runs."""

    IN_FLIGHT = sys.maxsize

    def __init__(self) -> None:
        self._at: dict[str, int] = {}

    def begin(self, node: str) -> None:
        self._at[node] = self.IN_FLIGHT

    def in_flight(self, node: str) -> bool:
        return self._at.get(node) == self.IN_FLIGHT

    def done(self, node: str, resource_version: int) -> None:
        self._at[node] = resource_version

    def forget(self, node: str) -> None:
        """The move failed (the next pass takes the node on), or the node went away."""
        self._at.pop(node, None)

    def since(self, facts: NodeFacts) -> bool:
        """Whether the node moved on since `facts` of it (or a move is in flight); called from the passes' thread."""
        at = self._at.get(facts.name)
        return at is not None and facts.resource_version < at


class Operator:
    def __init__(self, kube: Kube, namespace: str, elected: bool = False, metrics_port: int = 8080):
        self.kube = kube
        self.namespace = namespace
        self.reconciler = Reconciler(kube, namespace, metrics_port)
        self.moves = Moves()  # nodes whose upgrade moved on between passes
        self.reconciler.moved = self.moves.since
        self.reconciler.newer = self.newer
        self.nodes: dict[str, NodeFacts] = {}
        # The labels NodeFacts keep for NVIDIADrivers' selectors (nodes.kept_labels) that every node in `nodes`
        # was read with: once an NVIDIADriver names another one, the nodes are read again before a pass routes them.
        self.labels_read: frozenset[str] = frozenset()
        self.policies: dict[str, dict[str, Any]] = {}
        self.nvidia_drivers: dict[str, dict[str, Any]] = {}
        # The refusal (403) of the last listing of NVIDIADrivers, ours or their watch's: `nvidia_drivers` is then
        # kept as it was, not known to be current (listed again before each pass until a listing works).
        self.nvidia_drivers_refused: ApiError | None = None
        self.owned: dict[Key, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.pods_on: dict[str, set[str]] = {}  # node -> names of the operand pods there (kept with `pods`)
        # `pods` as observe.PodIndex has it, kept with `pods` too (a pass's snapshot copies it instead of building it
        # over every pod): (node, state) -> the pods, a tuple replaced on change; owner_key -> name -> pod.
        self._by_state: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {}  # PodIndex.by_state
        self._by_owner: dict[str, dict[str, dict[str, Any]]] = {}
        # Each owner's pods as the snapshot's PodIndex gives them, made again only once they change: a pass keeps
        # what it worked out from an owner's pods while they are the same object (readiness.KeptReadiness).
        self._owner_pods: dict[str, tuple[dict[str, Any], ...]] = {}
        self.revisions: dict[str, dict[str, Any]] = {}
        self.api_groups: frozenset[str] = frozenset()
        self.discovery_stale = False
        self._gone: set[tuple[str, Any]] | None = None  # deletions seen during a listing of ours
        self._touched: set[tuple[str, Any]] | None = None  # and updates (a relisting keeps what they brought)
        # Our objects deleted from a pass's snapshot until its answers are applied (the deleted object, or what
        # was cached of it): an answer older than the deletion must not bring it back (_late).
        self._deleted: dict[Key, dict[str, Any]] | None = None
        # kopf lists a resource again after its watch ended in 410 Gone, but sends no deletions for what went away
        # meanwhile: the keys of each resource's current listing (None once its watch streams) tell a relisting
        # apart, and one makes the operator list everything again and drop what is gone.
        self._listings: dict[str, set[Any] | None] = {}
        self.relist = False
        self.not_ready = False  # the last pass found the ClusterPolicy not ready
        self.config_maps: dict[str, tuple[str, ...]] = {}  # every ConfigMap in our namespace: name -> keys
        self.config_data: dict[str, dict[str, str]] = {}  # and their data (the sharing config is validated)
        # And their uid and resourceVersion, as {"metadata": ...}: a predecessor's late events are not theirs.
        self._config_meta: dict[str, dict[str, Any]] = {}
        # NFD NodeFeature PCI devices per node, kept current by `feature_watch` while NFD's API is served (where
        # watching them is refused, an old RBAC, re-listed instead while a GPU node is identified neither by its
        # labels nor by these, at most every NODE_FEATURE_RELIST_S). `nodes` holds its facts with them filled in:
        # a node's facts are a new object only when the node or its devices change.
        self.node_features: dict[str, tuple[str, ...]] = {}
        self._features_listed = 0.0
        self.feature_watch: Watch[Any] | None = None
        self._feature_watches = 0  # the NodeFeature watches started: what a stopped one still delivers is dropped
        self._features_denied = False
        # What the watch delivered of each NodeFeature ("namespace/name" -> its node and NVIDIA devices; a node's
        # devices from the start-up listing by the node's name, until the watch's listing has them), and the keys
        # of each node's (NFD may write several NodeFeatures for one node: their devices are merged).
        self._features: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._features_of: dict[str, set[str]] = {}
        self._to_loop: Deliverer | None = None  # (own_watches': the NodeFeature watch is started later)
        self.wake = asyncio.Event()
        self.urgent = asyncio.Event()  # a change that is not paced (set with `wake`)
        self.causes: set[str] = set()  # the kinds of change since the last pass (counted in the metrics)
        self.prompt = asyncio.Event()  # the next pass skips (or ends) the debounce: a new spec, or a last count
        self.unready: set[str] = set()  # operand pods not ready and not being deleted (kept with `pods`)
        self.unready_of: dict[str, set[str]] = {}  # the same by owning DaemonSet (observe.owner_key)
        self.task: asyncio.Task[None] | None = None
        self._labelling: set[asyncio.Future[None]] = set()  # single-node label patches in flight
        self._join_routing = KeptRouting()  # the NVIDIADrivers' specs for single-node labelling (the pass has its own)
        # Their own threads: nodes joining together are labelled together (the default pool has cores + 4).
        self._label_pool = ThreadPoolExecutor(max_workers=LABEL_THREADS, thread_name_prefix="label")
        self.watches: list[Watch[Any]] = []  # the node, pod and revision watches (threads), once started
        # Set while this replica may write: from the start without leader election (`elected` False), else once
        # it holds the Lease. Until then the caches fill from the watches as usual (a takeover starts warm), but
        # nothing is written.
        self.leading = asyncio.Event()
        if not elected:
            self.leading.set()
        self.elector: Elector | None = None
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.changes = 0  # pod, DaemonSet and revision events so far (what a pass's readiness reads)
        self.failures = 0  # passes failed in a row (see FAILED_RETRY_MAX_S)
        self.snapped = 0  # `changes` at the last snapshot

    # Cache updates from watch events (run in the event loop)

    def wake_now(self, source: str) -> None:
        """Wake the loop for a change a pass should not wait for (see PACE); `source`: the kind that changed."""
        self.causes.add(source)
        self.wake.set()
        self.urgent.set()

    def paced(self, source: str) -> None:
        """Wake the loop for a change a pass may wait for (see PACE)."""
        self.causes.add(source)
        self.wake.set()

    def on_listing(self, resource: str, event_type: str | None, key: Any) -> None:
        """Every kopf event, before its handler: notes a relisting (a listing after the first one)."""
        listing = self._listings.get(resource, set())
        if event_type is not None:
            self._listings[resource] = None
        elif resource not in self._listings:
            self._listings[resource] = {key}  # the first listing
        elif listing is None or key in listing:
            log.info("%s listed again (its watch expired): re-reading the cluster", resource)
            self._listings[resource] = {key}
            self.relist = True
            self.wake_now("relist")
        else:
            listing.add(key)

    def on_node(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self.on_node_facts(name, None if event_type == "DELETED" else NodeFacts.from_node(body))

    def on_node_facts(self, name: str, facts: NodeFacts | None) -> None:
        """A node changed (None: deleted), from the node watch or a listing of ours."""
        if facts is None:
            self._forget("node", name)
            self.moves.forget(name)
            self.reconciler.applier.forget(name)
            self.reconciler.events.forget("Node", name)
            if self.feature_watch is None:  # (listed again while a node of that name is unidentified)
                self.node_features.pop(name, None)
            # Else kept: its NodeFeatures stay until deleted (their DELETED event drops them), and a node registered
            # again under its name gets their devices at once (nfd-worker does not write an unchanged NodeFeature).
            forget_node(name)
            if self.nodes.pop(name, None) is not None:
                self.wake_now("node")
            return
        cached = self.nodes.get(name)
        if cached is not None and facts.resource_version < cached.resource_version:
            return  # older than what we hold (the answer to our own patch came first)
        facts = self._with_devices(facts)
        if cached != facts:
            if cached is not None:
                facts.inherit(cached)
            self.nodes[name] = facts
            if (
                cached is None
                or (self.not_ready and not self.unready)
                or cached.labels.get(MIG_CONFIG) != facts.labels.get(MIG_CONFIG)
            ):
                # A node came, or a node's labels (mig-manager's report, say) may be all the status waits for, or
                # a MIG layout was asked for: mig-manager acts on it at once, so the gate's pass may not wait.
                self.wake_now("node")
            else:
                self.paced("node")
            self._label(facts)

    def _with_devices(self, facts: NodeFacts) -> NodeFacts:
        """`facts` with the node's NodeFeature PCI devices, as `nodes` holds them."""
        devices = self.node_features.get(facts.name, ())
        return facts if facts.pci_devices == devices else replace(facts, pci_devices=devices)

    def _read_node_features(self, features: dict[str, tuple[str, ...]]) -> None:
        """Take NodeFeature devices read: only the cached nodes whose devices changed get new facts."""
        before, self.node_features = self.node_features, features
        for name in before.keys() | features.keys():
            facts = self.nodes.get(name)
            if facts is not None and before.get(name) != features.get(name):
                self.nodes[name] = self._with_devices(facts)

    def on_node_feature(self, watch: int, key: str, feature: tuple[str, tuple[str, ...]] | None) -> None:
        """A NodeFeature's node and devices changed (None: deleted), from the NodeFeature watch numbered `watch`:
        the nodes it named and names get their NodeFeatures' devices merged."""
        if watch != self._feature_watches:
            return  # a watch stopped since (the API went away, or the watch was refused)
        old = self._features.pop(key, None)
        if old is not None:
            keys = self._features_of.get(old[0], set())
            keys.discard(key)
            if not keys:
                self._features_of.pop(old[0], None)
        if feature is not None:
            self._features[key] = feature
            self._features_of.setdefault(feature[0], set()).add(key)
        for node in {f[0] for f in (old, feature) if f is not None}:
            merged = {d for k in self._features_of.get(node, ()) for d in self._features[k][1]}
            self._read_node_devices(node, tuple(sorted(merged)))

    def _read_node_devices(self, name: str, devices: tuple[str, ...]) -> None:
        """Take one node's NodeFeature devices: only when they changed are its facts made again, a pass woken and
        the node labelled at once (with its GPU identified, its MIG labels too)."""
        if self.node_features.get(name, ()) == devices:
            return
        if devices:
            self.node_features[name] = devices
        else:
            self.node_features.pop(name, None)
        cached = self.nodes.get(name)
        if cached is not None:
            self.nodes[name] = facts = self._with_devices(cached)
            self.wake_now("nodefeature")
            self._label(facts)

    def _watch_node_features(self) -> bool:
        """Start the NodeFeature watch where NFD's API is served and watching it was not refused: whether it runs.
        Its listing replaces what the start-up listing read (each node's devices from that kept, by the node's
        name, until then); the NodeFeatures' path is across namespaces, each kept as `feature_projection`."""
        if self.feature_watch is not None or self._features_denied or self._to_loop is None:
            return self.feature_watch is not None
        self._feature_watches += 1
        number = self._feature_watches
        self._features = {name: (name, devices) for name, devices in self.node_features.items()}
        self._features_of = {name: {name} for name in self.node_features}
        refused = self._to_loop(lambda _, why: self._feature_watch_refused(number, *why))
        self.feature_watch = Watch(
            self.kube, path_for(NODE_FEATURE.kind), feature_projection, lambda key: self._features.get(key),
            self._to_loop(functools.partial(self.on_node_feature, number)), name="nodefeature-watch",
            names=lambda: tuple(self._features), namespaced=True, limit=100,
            denied=lambda exc, listing: refused("", (exc, listing)),
        )  # fmt: skip
        self.feature_watch.start()
        return True

    def _feature_watch_refused(self, watch: int, exc: ApiError, listing: bool = False) -> None:
        if watch != self._feature_watches:
            return
        if listing:  # (tried again at most every NODE_FEATURE_RELIST_S while a GPU node is unidentified)
            log.warning("listing NodeFeatures was refused (%s): GPUs are identified by their labels alone (grant "
                        "`list` and `watch` on nodefeatures.nfd.k8s-sigs.io)", exc)  # fmt: skip
        else:
            log.warning("watching NodeFeatures was refused (%s): they are listed again instead, at most every %.0f s "
                        "while a GPU node is unidentified (grant `watch` on nodefeatures.nfd.k8s-sigs.io)",
                        exc, NODE_FEATURE_RELIST_S)  # fmt: skip
        self._features_denied = True
        self._stop_feature_watch()

    def _stop_feature_watch(self) -> None:
        if self.feature_watch is not None:
            self.feature_watch.stop.set()
            self.feature_watch = None
            self._feature_watches += 1
        self._features, self._features_of = {}, {}

    def on_node_answer(self, facts: NodeFacts) -> None:
        """The answer to our own patch of a node: taken only for a node still cached. The operator creates no node,
        so one not cached was deleted after the patch was answered, and the answer would bring it back for good
        (the node watch delivers nothing more of it)."""
        if facts.name in self.nodes:
            self.on_node_facts(facts.name, facts)

    def _between_passes(self) -> Labelling | None:
        """The last pass's policy and spec, while a node may be written by it between passes: this replica leads
        and that policy is still the active one, unchanged."""
        if not self.leading.is_set():
            return None
        current = self.reconciler.labelling
        policy = self.policies.get(current.policy) if current else None
        if current is None or policy is None or self.task is None:
            return None
        meta = policy["metadata"]
        if meta.get("uid", "") != current.uid or meta.get("generation") != current.generation:
            return None
        if meta.get("deletionTimestamp") or active_policy(list(self.policies.values())) != current.policy:
            return None
        return current

    def _label(self, node: NodeFacts) -> None:
        """Label one changed node now, by the spec of the last pass, without waiting for a full pass (which
        still follows: the node may change what is rendered). Only while that pass's policy is unchanged."""
        current = self._between_passes()
        if current is None or not kept_labels() <= self.labels_read:
            return  # (not routed by NVIDIADrivers before the nodes are read with the labels they select on)
        if current.spec.driver.use_nvidia_driver_crd and generations(self.nvidia_drivers) != current.drivers:
            return  # an NVIDIADriver changed or was created again since the pass: the next pass labels the node
        # The version matrix's refusal as a full pass decides it (a node without a driver pod of ours).
        # With useNvidiaDriverCRD, by the NVIDIADriver that drives the node (its version, its labels).
        drivers = [NVIDIADriver.from_object(o) for o in self.nvidia_drivers.values()]
        routing = driver_routing([node], current.spec, drivers, self._join_routing)
        refused = compat.refused(compat.verdicts_for([node], current.spec, routing.groups))
        here = [self.pods[p] for p in self.pods_on.get(node.name, ()) if p in self.pods]
        runs_driver = bool(self._by_state.get("state-driver", {}).get(node.name))  # the pass's test (PodIndex)
        if runs_driver:
            refused = {}
        patches = node_patches([node], current.spec, set(refused))
        hold_driver_restores(patches, [node])  # a refused node's driver label comes back in a full pass only
        holding = {node.name} if runs_driver else set()
        patches = merged(patches, driver_node_patches(relabelled([node], patches), current.spec, routing, holding,
                                                      unrendered=current.unrendered))  # fmt: skip
        patches = upgrade_first_sight(relabelled([node], patches), patches, current.spec, holding, routing)
        patch = patches.get(node.name)
        if patch:
            # The MIG layout it gets now is recorded as let through, or mig-manager held as it is refused, in the
            # same patch (a pass would write it next).
            [after] = relabelled([node], patches)
            seen = mig_pass.first_sight(after, current.spec, here, self.config_data)
            if seen:
                patch = {**patch, "labels": {**(patch.get("labels") or {}), **seen}}
            self._labelling.add(asyncio.ensure_future(self._patch_node(node, patch)))

    async def _patch_node(self, node: NodeFacts, patch: NodePatch) -> None:
        try:
            patched = await asyncio.get_running_loop().run_in_executor(
                self._label_pool,
                self.reconciler.applier.patch_nodes,
                {node.name: patch},
                {node.name: node.resource_version},
            )
        except Exception as exc:  # noqa: BLE001 - the next full pass tries again
            log.warning("labelling node %s failed: %s", node.name, exc)
            self.paced("node")  # the full pass tries again
            return
        finally:
            self._labelling.discard(asyncio.current_task())
        for facts in patched:
            log.info("labelled node %s", node.name)
            self.on_node_answer(facts)

    def _advance(self, name: str) -> None:
        """A node mid driver upgrade whose new driver pod or validator just turned Ready: its next steps now, by
        the spec of the last pass (under NVIDIADrivers, that of the node's NVIDIADriver; upgrade.orchestrate.advance),
        without waiting for a pass over every node."""
        current = self._between_passes()
        if current is None or self.moves.in_flight(name):
            return
        spec = current.upgrade_spec(name, self.nvidia_drivers) if current.spec.driver.enabled else None
        if spec is None or not spec.driver.upgrade_policy.auto_upgrade:
            return  # no driver of ours, an NVIDIADriver changed since the pass, or no automatic upgrade
        facts = self.nodes.get(name)
        if facts is None:
            return
        refused = compat.refused(compat.verdicts([facts], spec)).get(name, "")
        owner = current.upgrade_owner(name) if current.spec.driver.use_nvidia_driver_crd else None
        pools = adopting_pools(self.owned, owner[0] if owner else None)
        node = upgrade_node(facts, self._by_state, self.revisions, refused, pools, owner[1] if owner else None,
                            driver_precompiled(spec))  # fmt: skip
        step = None if node is None else plan_forward(node, spec.driver.upgrade_policy, time.time())
        if node is None or step is None:
            return
        self.moves.begin(name)
        self._labelling.add(asyncio.ensure_future(self._advance_node(node, step, time.monotonic())))

    async def _advance_node(self, node: UpgradeNode, step: Plan, seen: float) -> None:
        answer = None
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._label_pool, advance, self.kube, self.namespace, node, step, self.reconciler.events, seen
            )
        except Exception as exc:  # noqa: BLE001 - the next full pass takes the node on
            log.warning("upgrade: moving node %s on failed: %s", node.name, exc)
        finally:
            self._labelling.discard(asyncio.current_task())
        if answer is None:
            self.moves.forget(node.name)
            self.paced("node")
            return
        facts = NodeFacts.from_node(answer)
        if facts.name not in self.nodes:  # deleted meanwhile (on_node_answer)
            self.moves.forget(node.name)
            return
        self.moves.done(node.name, facts.resource_version)
        self.on_node_answer(facts)
        self._advance(node.name)  # a pod that turned Ready while this write ran (its own try was turned away)

    def on_policy(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            if _successor(self.policies.get(name), body):
                return  # a re-created policy of that name is cached: this deletion is its predecessor's
            self._forget("policy", name)
            self.policies.pop(name, None)
        elif newer(self.policies.get(name), body):
            self._touch("policy", name)
            before = self.policies.get(name)
            if before is None or _generation(before) != _generation(body):
                self.prompt.set()  # a new or changed spec: no debounce (one write, nothing to coalesce)
            self.policies[name] = dict(body)
            if before is not None and _status_only(before, body):
                return  # our own status write coming back: nothing a pass decides on changed
        self.wake_now("policy")

    def on_nvidia_driver(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            if _successor(self.nvidia_drivers.get(name), body):
                return
            self._forget("nvidiadriver", name)
            self.nvidia_drivers.pop(name, None)
        elif newer(self.nvidia_drivers.get(name), body):
            self._touch("nvidiadriver", name)
            before = self.nvidia_drivers.get(name)
            self.nvidia_drivers[name] = dict(body)
            keep_labels(selector_keys([body]))  # nodes projected from now on keep the labels it selects on
            if before is not None and _status_only(before, body):
                return  # our own status write coming back: nothing a pass decides on changed
        self.wake_now("nvidiadriver")

    def on_nvidia_drivers_refused(self, exc: ApiError) -> None:
        """Listing NVIDIADrivers was refused (403): a pass under useNvidiaDriverCRD fails on it
        (require_nvidia_drivers); without it, they drive nothing and the passes go on."""
        if self.nvidia_drivers_refused is None:
            log.warning("listing NVIDIADrivers was refused (%s): a ClusterPolicy with useNvidiaDriverCRD is not "
                        "reconciled until the operator's ClusterRole grants `list` and `watch` on "
                        "nvidiadrivers.nvidia.com", exc)  # fmt: skip
            self.wake_now("nvidiadriver")
        self.nvidia_drivers_refused = exc

    async def refresh_nvidia_drivers(self) -> None:
        """While their listing is refused, list NVIDIADrivers again (before each pass): once that works, the cache
        is what it lists. On the event loop, which changes the cache: only the listing runs in a thread."""
        if self.nvidia_drivers_refused is None:
            return
        self._gone, self._touched = set(), set()  # what their watch delivers meanwhile is newer
        try:
            listed = await asyncio.to_thread(list_nvidia_drivers, self.kube)
        except Exception as exc:  # noqa: BLE001 - still not known: tried again before the next pass
            if isinstance(exc, ApiError) and exc.status == 403:
                self.nvidia_drivers_refused = exc
            else:
                log.warning("listing NVIDIADrivers failed: %s", exc)
            return
        finally:
            gone, touched = self._gone or set(), self._touched or set()
            self._gone = self._touched = None
        for name, obj in listed.items():
            if ("nvidiadriver", name) not in gone and newer(self.nvidia_drivers.get(name), obj):
                self.nvidia_drivers[name] = obj
        for name in [n for n in self.nvidia_drivers if n not in listed and ("nvidiadriver", n) not in touched]:
            self.nvidia_drivers.pop(name)
        keep_labels(selector_keys(listed.values()))
        self.nvidia_drivers_refused = None
        log.info("listing NVIDIADrivers works again: %d listed", len(listed))

    def on_owned(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.changes += 1
        key = key_of(body)
        cached = self.owned.get(key)
        if event_type == "DELETED" and _successor(cached, body):
            return
        if event_type == "DELETED":
            self._forget("owned", key)
            if self._deleted is not None:  # (the DaemonSet watch's deletion carries only the name)
                self._deleted[key] = body if (body.get("metadata") or {}).get("uid") else cached or body
            self.owned.pop(key, None)
        elif newer(cached, body):
            self._touch("owned", key)
            self.owned[key] = dict(body)
        # A status-only change (a DaemonSet counting its pods) is paced like the pods it counts.
        if event_type == "DELETED" or cached is None or _generation(cached) != _generation(body) or not self.unready:
            self.wake_now("owned")
            if self.not_ready and not self.unready and event_type != "DELETED":
                # No operand pod is left rolling out: this count may be what the status waits for to turn ready.
                self.prompt.set()
        else:
            self.paced("owned")

    def on_operand_kind(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Any object of a kind our operands use. kopf filters labels after the watch, so one that loses our
        label would send nothing through that filter and stay cached as ours (prune could delete it): to us it
        is gone."""
        if ((body.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == OPERATOR_NAME:
            self.on_owned(event_type, body)
        elif key_of(body) in self.owned:
            self.on_owned("DELETED", body)

    def daemonset(self, name: str) -> dict[str, Any] | None:
        return self.owned.get((DAEMON_SET.kind, self.namespace, name))

    def on_daemonset(self, name: str, body: dict[str, Any] | None) -> None:
        """A DaemonSet of ours changed (None: deleted), from the DaemonSet watch."""
        if body is None:
            self.on_owned("DELETED", {"kind": DAEMON_SET.kind, "metadata": {"name": name, "namespace": self.namespace}})
        else:
            self.on_owned("MODIFIED", body)

    def own_watches(self, to_loop: Deliverer, gathered: Deliverer) -> list[Watch[Any]]:
        """The watches kept out of kopf (nodewatch.py), handing what they deliver to the event loop through
        `to_loop`, or `gathered` for the streams of a rollout. Each one's listing also drops what the cache holds
        and it lacks. ClusterPolicies and NVIDIADrivers are among them: after 410 Gone kopf lists again without
        saying what went away, nor even that the listing ended (one that lists nothing calls no handler)."""
        self._to_loop = to_loop  # (the NodeFeature watch: started while NFD's API is served, _watch_node_features)
        drivers_refused = to_loop(lambda _, exc: self.on_nvidia_drivers_refused(exc))
        ns = f"/api/v1/namespaces/{self.namespace}"
        apps = f"/apis/apps/v1/namespaces/{self.namespace}"
        return [
            NodeWatch(self.kube, self.nodes.get, to_loop(self.on_node_facts), names=lambda: tuple(self.nodes)),
            Watch(self.kube, ns + "/pods", project_pod, self.pods.get, gathered(self.on_pod),
                  label_selector=OWNED_SELECTOR, name="pod-watch", codec=Codec(wire.Pod),
                  names=lambda: tuple(self.pods)),
            Watch(self.kube, apps + "/controllerrevisions", revision_projection, self.revisions.get,
                  gathered(self.on_revision), name="revision-watch", names=lambda: tuple(self.revisions)),
            # Our DaemonSets: each counts its pods in its status, an event per change during a rollout (kopf's
            # handling of those was an eighth of the operator's CPU at 1,000 nodes). Kept without their
            # templates' containers and volumes (wire.DaemonSet).
            Watch(self.kube, apps + "/daemonsets", wire.daemonset_dict, self.daemonset, gathered(self.on_daemonset),
                  label_selector=OWNED_SELECTOR, name="daemonset-watch", codec=Codec(wire.DaemonSet),
                  names=self._daemonset_names),
            Watch(self.kube, path_for("ClusterPolicy"), _kinded("ClusterPolicy"), self.policies.get,
                  to_loop(_as_event(self.on_policy)), name="clusterpolicy-watch", names=lambda: tuple(self.policies)),
            Watch(self.kube, path_for("NVIDIADriver"), _kinded("NVIDIADriver"), self.nvidia_drivers.get,
                  to_loop(_as_event(self.on_nvidia_driver)), name="nvidiadriver-watch",
                  names=lambda: tuple(self.nvidia_drivers), refused=lambda exc: drivers_refused("", exc)),
        ]  # fmt: skip

    def _daemonset_names(self) -> list[str]:
        return [k[2] for k in tuple(self.owned) if k[0] == DAEMON_SET.kind and k[1] == self.namespace]

    def on_crd(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A CRD of an optional kind's group came or went: refresh what the API serves, then reconcile."""
        group = (body.get("spec") or {}).get("group")
        optional = {k.group for k in (*operand_kinds(), NODE_FEATURE) if k.optional}
        if group in optional and event_type is not None:
            self.discovery_stale = True
            self.wake_now("crd")

    def on_pod(self, name: str, pod: dict[str, Any] | None) -> None:
        """An operand pod's projection changed (None: deleted), from the pod watch."""
        self.changes += 1
        old = self.pods.get(name)
        if old is not None:
            self._unindex(name, old)
        was_unready = bool(self.unready)
        turned_ready = pod is not None and name in self.unready  # unless it is still not ready (below)
        owner_done = self._unready_drop(name, old)
        if pod is None:
            self._forget("pod", name)
            self.pods.pop(name, None)
            if old is not None:
                self._drop_indexed(name, old)
        else:
            self._touch("pod", name)
            self.pods[name] = pod
            self.pods_on.setdefault(pod["node"], set()).add(name)
            self._index(name, pod, old)
            if is_unready(pod):
                self.unready.add(name)
                self.unready_of.setdefault(owner_key(pod), set()).add(name)
                owner_done = False
                turned_ready = False
        if turned_ready and pod is not None and self._upgrading(old) and node_state(pod)[1] in (DRIVER, VALIDATOR):
            self._advance(pod["node"])
        if was_unready and self.unready and not owner_done and not (turned_ready and self._upgrading(old)):
            self.paced("pod")
        else:
            # A DaemonSet's last pod turned ready (its state may be ready now: said at once), or none rolls out.
            self.wake_now("pod")
            if owner_done and self.not_ready and not self.unready:
                # The last operand pod rolling out is ready: its pods may say the status is ready
                # (readiness._pods_say_ready) before the DaemonSet controller counts it. No debounce.
                self.prompt.set()

    def _upgrading(self, pod: dict[str, Any] | None) -> bool:
        """Whether the pod's node is mid driver upgrade (its next step may wait for this pod)."""
        node = self.nodes.get(pod["node"]) if pod is not None else None
        return node is not None and node.labels.get(UPGRADE_STATE_LABEL, "") in IN_PROGRESS_STATES

    def _unready_drop(self, name: str, old: dict[str, Any] | None) -> bool:
        """Forget a pod as not ready; whether that left its DaemonSet without a pod not ready."""
        if old is None or name not in self.unready:
            return False
        self.unready.discard(name)
        left = self.unready_of.get(owner_key(old))
        if left is None:
            return False
        left.discard(name)
        if left:
            return False
        del self.unready_of[owner_key(old)]
        return True

    def _unindex(self, name: str, pod: dict[str, Any]) -> None:
        names = self.pods_on.get(pod["node"])
        if names is not None:
            names.discard(name)
            if not names:
                del self.pods_on[pod["node"]]

    def _index(self, name: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Put a pod in the PodIndex kept here, in its old pod's place when it has the same key."""
        node, state = key = node_state(pod)
        owner = owner_key(pod)
        if old is not None and node_state(old) == key and owner_key(old) == owner:
            here = self._by_state.setdefault(state, {})
            here[node] = tuple(pod if p is old else p for p in here.get(node, ()))
        else:
            if old is not None:
                self._drop_indexed(name, old)  # before `here` is taken: it may drop this state's last node
            here = self._by_state.setdefault(state, {})
            here[node] = (*here.get(node, ()), pod)
        self._by_owner.setdefault(owner, {})[name] = pod
        self._owner_pods.pop(owner, None)

    def _drop_indexed(self, name: str, pod: dict[str, Any]) -> None:
        node, state = node_state(pod)
        here = self._by_state.get(state, {})
        left = tuple(p for p in here.get(node, ()) if p["metadata"]["name"] != name)
        if left:
            here[node] = left
        else:
            here.pop(node, None)
            if not here:
                self._by_state.pop(state, None)
        owner = owner_key(pod)
        owned = self._by_owner.get(owner)
        self._owner_pods.pop(owner, None)
        if owned is not None:
            owned.pop(name, None)
            if not owned:
                del self._by_owner[owner]

    def on_config_map_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A ConfigMap: read as a config source, and as an operand object when it is ours."""
        self.on_config_map(event_type, body)
        self.on_operand_kind(event_type, body)

    def on_config_map(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name = meta["name"]
        held = self._config_meta.get(name)
        if event_type == "DELETED":
            if _successor(held, body):
                return  # a re-created ConfigMap of that name is cached: this deletion is its predecessor's
            self._config_meta.pop(name, None)
        elif not newer(held, body):
            return  # older than the cached one (a predecessor's late update, handled after its successor's)
        else:
            self._config_meta[name] = {"metadata": {k: meta.get(k) for k in ("uid", "resourceVersion")}}
        keys = None if event_type == "DELETED" else config_map_keys(body)
        data = None if keys is None else dict(body.get("data") or {})
        if self.config_maps.get(name) == keys and self.config_data.get(name) == data:
            return
        if keys is None or data is None:
            self._forget("configmap", name)
            self.config_maps.pop(name, None)
            self.config_data.pop(name, None)
        else:
            self._touch("configmap", name)
            self.config_maps[name] = keys
            self.config_data[name] = data
        self.wake_now("configmap")

    def on_revision(self, name: str, rev: dict[str, Any] | None) -> None:
        """A ControllerRevision's projection changed (None: deleted), from the revision watch."""
        self.changes += 1
        if rev is None:
            self._forget("revision", name)
            self.revisions.pop(name, None)
        else:
            self._touch("revision", name)
            self.revisions[name] = rev
        self.paced("revision")

    # Leadership

    def lead(self) -> None:
        """This replica may write from now on (in the event loop)."""
        metrics.leader.set(1)
        self.leading.set()
        self.wake_now("leader")

    def started_leading(self) -> None:
        """The elector won the Lease (in its thread)."""
        if self.event_loop is not None:
            self.event_loop.call_soon_threadsafe(self.lead)

    async def step_down(self) -> None:
        """On shutdown: stop writing, let the writes in flight finish, then release the Lease for a quick
        takeover."""
        if self.elector is None:
            return
        self.elector.stop.set()  # no further renew; one under way cannot open the closed fence again
        fence = self.kube.fence
        if fence is not None:
            fence.close()
            if not await asyncio.to_thread(fence.drain, 5.0):
                log.warning("writes still in flight after 5s; the Lease is left to expire")
                return
        if await asyncio.to_thread(self.elector.release):
            log.info("leader election: %s released the Lease", self.elector.me)
        metrics.leader.set(0)

    # The loop

    def _forget(self, kind: str, key: Any) -> None:
        """A deletion seen while the initial listing runs: the listing must not bring the object back."""
        if self._gone is not None:
            self._gone.add((kind, key))

    def _touch(self, kind: str, key: Any) -> None:
        if self._touched is not None:
            self._touched.add((kind, key))

    def _late(self, answer: dict[str, Any]) -> bool:
        """Whether a pass's answer is of an object deleted since its snapshot (the deletion was handled first), not
        of a successor the pass's apply created after the deletion (another uid)."""
        deleted = (self._deleted or {}).get(key_of(answer))
        return deleted is not None and not _successor(deleted, answer)

    def _merge(self, snap: Snapshot, prune: bool = False, features: bool = True) -> None:
        """Fill the caches from a listing of ours, on the event loop: what a watch event delivered while the
        listing ran is newer and stays (replacing the caches outright once lost a ClusterPolicy created then).
        With `prune` (a relisting), what the listing lacks and no event brought meanwhile is dropped. `features`:
        whether it listed NodeFeatures (not while they are watched)."""
        gone = self._gone or set()
        touched = self._touched or set()
        self.api_groups = snap.api_groups

        def fill(kind: str, cache: dict[Any, Any], listed: dict[Any, Any], by_version: bool = False) -> None:
            for key, value in listed.items():
                if (kind, key) in gone:
                    continue
                if key not in cache or (by_version and newer(cache[key], value)):
                    cache[key] = value
            if prune and kind != "node":  # nodes: NodeWatch lists them again itself
                for key in [k for k in cache if k not in listed and (kind, k) not in touched]:
                    log.info("%s %s is gone (missed while the watch was down)", kind, key)
                    cache.pop(key)

        watched = self.feature_watch is not None or not features  # (the devices are the watch's)
        fill("node", self.nodes, {n: self._with_devices(f) for n, f in snap.nodes.items()} if watched else snap.nodes)
        fill("policy", self.policies, snap.policies, by_version=True)
        if snap.nvidia_drivers_refused is not None:  # (kept as they were: not known, not none)
            self.on_nvidia_drivers_refused(snap.nvidia_drivers_refused)
        else:
            fill("nvidiadriver", self.nvidia_drivers, snap.nvidia_drivers, by_version=True)
            if self.nvidia_drivers_refused is not None:
                log.info("listing NVIDIADrivers works again: %d listed", len(snap.nvidia_drivers))
                self.nvidia_drivers_refused = None
        fill("owned", self.owned, snap.owned, by_version=True)
        fill("pod", self.pods, snap.pods)
        self.pods_on = {}
        for name, pod in self.pods.items():
            self.pods_on.setdefault(pod["node"], set()).add(name)
        index = PodIndex.of(self.pods)
        self._by_state = {s: {n: tuple(v) for n, v in on.items()} for s, on in index.by_state.items()}
        self._by_owner = {o: {p["metadata"]["name"]: p for p in pods} for o, pods in index.by_owner.items()}
        self._owner_pods = {}
        self.unready, self.unready_of = set(), {}
        for name, pod in self.pods.items():
            if is_unready(pod):
                self.unready.add(name)
                self.unready_of.setdefault(owner_key(pod), set()).add(name)
        fill("revision", self.revisions, snap.revisions)
        fill("configmap", self.config_maps, snap.config_maps)
        fill("configmap", self.config_data, snap.config_data)
        self._config_meta = {k: v for k, v in self._config_meta.items() if k in self.config_maps}  # what was pruned
        if not watched:  # (else the watch keeps them current)
            # (not the devices of a node deleted while the listing ran: another machine may join under its name)
            self._read_node_features({n: f.pci_devices for n, f in snap.nodes.items()
                                      if f.pci_devices and n in self.nodes})  # fmt: skip
            self._features_listed = time.monotonic()
        self._gone = self._touched = None

    async def refresh_discovery(self) -> None:
        """Re-read what the API serves; list the owned objects of optional kinds that just appeared. On the event
        loop, which changes the caches: only the API calls run in a thread."""
        before = self.api_groups
        groups = await asyncio.to_thread(self.kube.api_groups)
        new = [k for k in operand_kinds() if k.optional and served(k, groups) and not served(k, before)]

        def list_new() -> list[dict[str, Any]]:
            return [obj for kind in new for obj in list_owned(self.kube, kind, self.namespace, groups)]

        self._gone = set()  # objects deleted while the listing runs are not brought back by it
        try:
            listed = await asyncio.to_thread(list_new) if new else []
        finally:
            gone, self._gone = self._gone, None
        self.api_groups = groups
        for kind in new:
            log.info("%s is served now: %s objects are rendered and watched", kind.resource, kind.kind)
        for obj in listed:  # a watch event that came meanwhile is newer
            key = key_of(obj)
            if ("owned", key) not in gone and newer(self.owned.get(key), obj):
                self.owned[key] = obj
        for kind in operand_kinds():
            if kind.optional and served(kind, before) and not served(kind, groups):
                log.info("%s is no longer served: %s objects are not rendered", kind.resource, kind.kind)
                for key in [k for k in self.owned if k[0] == kind.kind]:
                    self.owned.pop(key, None)

    def unidentified(self) -> bool:
        """Whether some GPU node is identified neither by its labels nor by a NodeFeature read (one may tell: a
        node whose NodeFeature devices were read and name no GPU of the matrix waits for GFD's labels)."""
        read = self.node_features
        return any(
            n.has_gpu and n.name not in read and not identify(n.labels, (), n.label_devices).known
            for n in self.nodes.values()
        )

    async def refresh_node_features(self) -> None:
        """Watch NodeFeature objects while NFD's API is served (_watch_node_features); where that is refused,
        re-list them while some GPU node is not identified (`unidentified`; rate-limited). On the event loop, which
        changes the node cache: only the listing runs in a thread."""
        if not served(NODE_FEATURE, self.api_groups):
            self._stop_feature_watch()
            self._features_denied = False  # (tried again if the API comes back)
            self._read_node_features({})
            return
        if self._watch_node_features():
            return
        if time.monotonic() - self._features_listed < NODE_FEATURE_RELIST_S:
            return
        if not self.unidentified():
            return
        self._features_listed = time.monotonic()
        self._gone = set()  # a node deleted meanwhile keeps no devices (another machine may join under its name)
        try:
            listed = await asyncio.to_thread(node_features, self.kube, self.api_groups)
        finally:
            gone, self._gone = self._gone, None
        self._read_node_features({n: d for n, d in listed.items() if ("node", n) not in gone})

    async def read_kept_labels(self) -> bool:
        """Read every node again while some label an NVIDIADriver selects on (nodes.kept_labels) was not kept
        when the cached NodeFacts were made (their node watch drops the labels the operator does not read):
        routed on them, its nodes would fall to the default NVIDIADriver. False when that failed."""
        while not kept_labels() <= self.labels_read:
            keys = kept_labels()
            self._gone = set()  # nodes deleted while the listing runs are not brought back by it
            try:
                listed = await asyncio.to_thread(self._list_nodes)
            except Exception as exc:  # noqa: BLE001 - the pass waits, and tries again
                log.warning("reading the nodes for the labels NVIDIADrivers select on failed: %s", exc)
                return False
            finally:
                gone, self._gone = self._gone, None
            log.info("nodes read again: NVIDIADrivers select on %s", ", ".join(sorted(keys - self.labels_read)))
            for facts in listed:
                if ("node", facts.name) not in gone:
                    self.on_node_facts(facts.name, facts)
            self.labels_read = keys
        return True

    def _list_nodes(self) -> list[NodeFacts]:
        return [NodeFacts.from_node(n) for n in self.kube.each("Node", limit=100)]

    def snapshot(self) -> Snapshot:
        self.snapped = self.changes
        snap = self._snapshot()
        snap.__dict__["pod_index"] = self._pod_index()
        return snap

    def _pod_index(self) -> PodIndex:
        unready = {o: [self.pods[n] for n in names if n in self.pods] for o, names in self.unready_of.items()}
        by_state = {s: dict(on) for s, on in self._by_state.items()}
        made = self._owner_pods
        by_owner = {o: made.get(o) or made.setdefault(o, tuple(pods.values())) for o, pods in self._by_owner.items()}
        return PodIndex(by_state, by_owner, unready)

    def newer(self) -> Newer | None:
        """Reconciler.newer, asked in the pass's thread: once every operand pod is ready, the pods, DaemonSets and
        revisions as the watches left them since the pass's snapshot (None when nothing came, or some pod is not
        ready yet: then the next pass sees it as usual). Copied on the event loop, which changes them."""
        loop = self.event_loop
        if loop is None or self.changes == self.snapped or self.unready:
            return None
        answer: concurrent.futures.Future[Newer] = concurrent.futures.Future()

        def copy() -> None:
            if answer.set_running_or_notify_cancel():
                answer.set_result(Newer(dict(self.owned), dict(self.revisions), self._pod_index()))

        try:
            loop.call_soon_threadsafe(copy)
            return answer.result(timeout=NEWER_WAIT_S)
        except (RuntimeError, TimeoutError):  # the loop closed, or is too busy: the next pass sees it
            answer.cancel()
            return None

    def _snapshot(self) -> Snapshot:
        return Snapshot(
            nodes=dict(self.nodes),
            policies={k: dict(v) for k, v in self.policies.items()},
            owned=dict(self.owned),
            pods=dict(self.pods),
            revisions=dict(self.revisions),
            api_groups=self.api_groups,
            config_maps=dict(self.config_maps),
            config_data=dict(self.config_data),
            nvidia_drivers={k: dict(v) for k, v in self.nvidia_drivers.items()},
            nvidia_drivers_refused=self.nvidia_drivers_refused,
        )

    async def sync(self, prune: bool = False) -> None:
        """List everything into the caches (at start, and again after a watch expired); retries until it works."""
        while True:
            try:
                self._gone, self._touched = set(), set()
                features = self.feature_watch is None  # (else watched)
                listed = await asyncio.to_thread(observe, self.kube, self.namespace, nodefeatures=features)
                self._merge(listed, prune=prune, features=features)
                return
            except Exception as exc:  # noqa: BLE001 - keep retrying until the API answers
                self._gone = self._touched = None
                log.warning("listing the cluster failed, retrying in 5s: %s", exc)
                await asyncio.sleep(5)

    async def loop(self) -> None:
        await self.sync()
        # The watches' first listings are newer than ours: each drops what ours brought that it lacks.
        for w in self.watches:
            w.start()
        await asyncio.to_thread(warm_up)
        if not self.leading.is_set():
            log.info("following: caches filled, waiting for the leader Lease")
            await self.leading.wait()
        delay = 0.0
        last_end = gap = 0.0
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                if delay >= RESYNC_S:  # a quiet resync also re-reads discovery, in case a CRD event was missed
                    self.discovery_stale = True
            woke = time.monotonic()
            try:
                await asyncio.wait_for(self.prompt.wait(), timeout=DEBOUNCE_S)
            except TimeoutError:
                pass
            self.prompt.clear()
            left = last_end + gap - time.monotonic()
            if left > 0 and not self.urgent.is_set():
                try:
                    await asyncio.wait_for(self.urgent.wait(), timeout=left)
                except TimeoutError:
                    pass
            if self._labelling:  # single-node label patches in flight go first: the pass then sees their answers
                await asyncio.wait(set(self._labelling), timeout=LABELLING_WAIT_S)
            self.wake.clear()
            self.urgent.clear()
            causes = sorted(self.causes) or ["timer"]
            for cause in causes:
                metrics.reconciliation_triggers_total.labels(cause).inc()
            self.causes.clear()
            if self.relist:
                self.relist = False
                await self.sync(prune=True)
            if self.discovery_stale:
                self.discovery_stale = False
                try:
                    await self.refresh_discovery()
                except Exception as exc:  # noqa: BLE001 - try again on the next pass
                    log.warning("API discovery failed, retrying: %s", exc)
                    self.discovery_stale = True
            try:
                await self.refresh_node_features()
            except Exception as exc:  # noqa: BLE001 - GPUs stay identified by labels until the next try
                log.warning("listing NodeFeatures failed: %s", exc)
            await self.refresh_nvidia_drivers()
            if not await self.read_kept_labels():
                delay = self.failed()
                continue
            started = time.monotonic()  # (the snapshot follows with no await between: its nodes have those labels)
            self._deleted = {}
            try:
                outcome, cpu = await asyncio.to_thread(_timed, functools.partial(self.reconciler.reconcile,
                                                                                 self.snapshot()))
            except NotLeader as exc:  # shutting down, or the Lease is lost (the process exits)
                log.info("reconcile pass stopped: %s", exc)
                delay = NOT_READY_RECHECK_S
                continue
            except Exception:  # noqa: BLE001 - one bad pass must not stop the operator
                log.exception("reconcile pass failed")
                metrics.reconciliation_failed_total.inc()
                metrics.reconciliation_status.set(-2)
                delay = self.failed()
                continue
            last_end = time.monotonic()
            gap = pass_gap(cpu)  # by its CPU: on a busy machine a small cluster's pass takes longer, not more CPU
            for obj in outcome.applied:
                if newer(self.owned.get(key_of(obj)), obj) and not self._late(obj):
                    self.owned[key_of(obj)] = obj
            self._deleted = None
            for key in outcome.deleted:
                self.owned.pop(key, None)
            for facts in outcome.nodes:
                self.on_node_answer(facts)
            debug.trim()  # what the pass freed goes back to the OS
            if outcome.writes:
                log.info("reconciled: ready=%s, %d writes; the pass took %.0f ms (%.0f ms CPU), began %.0f ms after "
                         "the wake-up by %s", outcome.ready, outcome.writes, 1000 * (last_end - started), 1000 * cpu,
                         1000 * (started - woke), ", ".join(causes))
            self.not_ready = outcome.ready is False
            if outcome.error:
                delay = self.failed()
            else:
                self.failures = 0
                delay = NOT_READY_RECHECK_S if outcome.ready is False or outcome.busy else RESYNC_S
            if outcome.recheck_s is not None:  # a held-back status change: written as soon as it may be
                delay = min(delay, outcome.recheck_s)
            if outcome.more:  # the upgrade's writes left over: the next pass goes on with them, unpaced
                delay = 0.0
                self.urgent.set()
            if self.feature_watch is None and served(NODE_FEATURE, self.api_groups) and self.unidentified():
                delay = min(delay, NODE_FEATURE_RELIST_S)

    def failed(self) -> float:
        """Count a failed pass: how long until the next one, unless a watch event wakes it sooner."""
        self.failures += 1
        delay = failed_retry(self.failures)
        log.warning("pass failed (%d in a row): the next in %.0f s, or on a change", self.failures, delay)
        return delay


def failed_retry(failures: int) -> float:
    """How long after the `failures`-th failed pass in a row the next one comes (see FAILED_RETRY_MAX_S)."""
    return min(FAILED_RETRY_MAX_S, NOT_READY_RECHECK_S * 2 ** min(failures - 1, 16))


class Inbox:
    """The watch threads' deliveries, handed to the event loop in batches, in the order they came.

    The first delivery since the loop last drained the inbox schedules a drain; those that come before it runs
    join it. With one `call_soon_threadsafe` each (a Handle, a write to the loop's self-pipe, a wakeup), the loop's
    own scheduling was over a third of its samples at 1,000 nodes rolling out (py-spy). `gather_s`: the drain waits
    that long after the first delivery, so that a stream of events wakes the loop at most once per `gather_s`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gather_s: float = 0.0):
        self.loop = loop
        self.gather_s = gather_s
        self.lock = threading.Lock()
        self.queue: list[tuple[Callable[[str, Any], None], str, Any]] = []

    def deliverer(self, handler: Callable[[str, Any], None]) -> Callable[[str, Any], object]:
        def deliver(name: str, value: Any) -> None:
            with self.lock:
                self.queue.append((handler, name, value))
                first = len(self.queue) == 1
            if first:
                self.loop.call_soon_threadsafe(self._schedule)

        return deliver

    def _schedule(self) -> None:
        if self.gather_s > 0:
            self.loop.call_later(self.gather_s, self.drain)
        else:
            self.drain()

    def drain(self) -> None:
        with self.lock:
            batch, self.queue = self.queue, []
        for handler, name, value in batch:
            try:
                handler(name, value)
            except Exception:  # noqa: BLE001 - one bad delivery must not drop the others
                log.exception("handling a watch event for %s failed", name)


def _timed(fn: Callable[[], Outcome]) -> tuple[Outcome, float]:
    """A pass (under the passes' profiler when it is on) and the CPU its thread used, counted in the metrics."""
    start = time.thread_time()
    try:
        return debug.profiled(fn), time.thread_time() - start
    finally:
        metrics.reconciliation_cpu_seconds_total.inc(time.thread_time() - start)


def pass_gap(took: float) -> float:
    """How long after a pass that took `took` seconds of CPU a paced one waits (see PACE)."""
    return min(MAX_GAP_S, PACE * took)


_VOLATILE_META = ("resourceVersion", "managedFields")


def _status_only(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an object changed in its status alone (its metadata but the version and managedFields, and every
    other field, are equal)."""
    if set(before) - {"status"} != set(after) - {"status"}:
        return False
    if any(before[k] != after[k] for k in before if k not in ("status", "metadata")):
        return False
    meta_a, meta_b = before.get("metadata") or {}, after.get("metadata") or {}
    keys = (set(meta_a) | set(meta_b)) - set(_VOLATILE_META)
    return all(meta_a.get(k) == meta_b.get(k) for k in keys)


def _generation(obj: dict[str, Any] | None) -> Any:
    return ((obj or {}).get("metadata") or {}).get("generation")


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds an object's "essence" (a deep copy of the body) on every event for change detection, which
    only on.create/update handlers use. We have none (only on.event), so the essence is empty: at 1,000 nodes
    that copying was a fifth of the operator's CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def build_registry(op: Operator) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf watches with the same credentials the operator's own client loaded. It logs in again after a 401
        # (taking nothing equal to what it found invalid): a token from a file is read now, not the client's copy.
        if op.kube.token_file is not None:
            op.kube.token_file.reread()
        cfg = op.kube.client.configuration
        keys = cfg.api_key or {}
        auth = keys.get("BearerToken") or keys.get("authorization") or ""
        scheme, _sep, token = auth.partition(" ")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            scheme=scheme or None,
            token=token or None,
        )

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "nvidia.com/gpu-operator-kopf"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gpu-operator.nvidia.com")
        settings.persistence.diffbase_storage = _NoDiffBase(
            prefix="gpu-operator.nvidia.com", key="last-handled-configuration"
        )
        settings.posting.enabled = False
        # kopf follows CRDs as they come and go, so the watch of an optional kind (ServiceMonitor) starts
        # when its API is installed, without a restart. It needs list/watch on namespaces and CRDs.
        settings.scanning.disabled = False
        settings.watching.server_timeout = 300
        loop = asyncio.get_running_loop()
        op.event_loop = loop
        # Pod, revision and DaemonSet events come in streams while operands roll out, and what they wake is paced:
        # gathered for GATHER_S, a stream wakes the loop a few times a second instead of once per event or two.
        op.watches = op.own_watches(Inbox(loop).deliverer, Inbox(loop, GATHER_S).deliverer)  # (started by the loop)
        op.task = asyncio.create_task(op.loop())
        if op.elector is None:
            op.lead()
        else:
            op.elector.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if op.task:
            op.task.cancel()
        for w in op.watches:
            w.stop.set()
        op._stop_feature_watch()
        await op.step_down()

    def watch(group: str, version: str, plural: str, callback: Callback, **filters: Any) -> None:
        def noted(event_type: str | None, body: dict[str, Any]) -> None:
            meta = body.get("metadata") or {}
            op.on_listing(plural, event_type, (meta.get("namespace"), meta.get("name")))
            callback(event_type, body)

        kopf.on.event(group, version, plural, registry=registry, **filters)(_handler(noted))

    # Nodes, operand pods, ControllerRevisions, our DaemonSets, ClusterPolicies and NVIDIADrivers are watched
    # outside kopf (Operator.own_watches).
    for kind in operand_kinds():
        if kind not in (DAEMON_SET, CONFIG_MAP):
            watch(kind.group, kind.version, kind.plural, op.on_operand_kind)
    watch("apiextensions.k8s.io", "v1", "customresourcedefinitions", op.on_crd)
    # Users' ConfigMaps too (the driver mounts referenced ones key by key), and ours: one handler, as a second
    # on the same resource would note every listed ConfigMap twice and take the listing for a relisting.
    watch("", "v1", "configmaps", op.on_config_map_event)
    return registry


Callback = Callable[[str | None, dict[str, Any]], None]
Deliverer = Callable[[Callable[[str, Any], None]], Callable[[str, Any], object]]  # Inbox.deliverer


def _as_event(callback: Callback) -> Callable[[str, dict[str, Any] | None], None]:
    """A watch's delivery (None: deleted) as the event `callback` takes."""

    def deliver(name: str, body: dict[str, Any] | None) -> None:
        if body is None:
            callback("DELETED", {"metadata": {"name": name}})
        else:
            callback("MODIFIED", body)

    return deliver


def _kinded(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An object as a watch event has it (a list's items carry no kind)."""
    api_version = lookup(kind).api_version
    return lambda obj: {**obj, "apiVersion": api_version, "kind": kind}


def _successor(cached: dict[str, Any] | None, deleted: dict[str, Any]) -> bool:
    """Whether the cached object is another one than the deleted (a same-named successor). kopf runs each
    object's events in a worker of its own (by uid), so an old object's deletion can arrive after its
    successor's creation: a deletion by name would drop the successor, which no later event may bring back."""
    a = ((cached or {}).get("metadata") or {}).get("uid")
    b = (deleted.get("metadata") or {}).get("uid")
    return bool(a and b and a != b)


def _handler(callback: Callback) -> Callable[..., Coroutine[Any, Any, None]]:
    async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's kwarg name
        callback(type, dict(body))

    return on_event


class Unbindable(OSError):
    """A port of the operator's own (--metrics-port, --health-port) it cannot listen on: in use, say. As upstream's
    manager, it does not start; cmd_run prints one line."""


def _lost(why: str) -> None:
    """Leadership ended without a release (the fence is closed already): exit, to restart as a follower."""
    metrics.leader.set(0)
    log.error("leader election: stopped leading (%s); exiting", why)
    logging.shutdown()
    os._exit(1)


def run(
    kubeconfig: str | None, namespace: str, metrics_port: int, health_port: int, leader_elect: bool = False
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    if kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(kubeconfig)
    me = identity()
    debug.install()
    debug.tune_malloc()
    debug.tune_threads()
    # The ~70,000 objects of the imports live as long as the process: full collections (~0.1 s each at 1,000
    # nodes, a handful during a rollout) no longer walk them.
    gc.collect()
    gc.freeze()
    kube = Kube.connect(kubeconfig)
    kube.user_agent = f"gpu-operator/{__version__} ({me})"
    op = Operator(kube, namespace, elected=leader_elect, metrics_port=metrics_port)
    metrics.leader.set(0)
    if leader_elect:
        kube.fence = Fence()
        lease_kube = Kube.connect(kubeconfig)
        lease_kube.user_agent = kube.user_agent
        op.elector = Elector(lease_kube, namespace, me, kube.fence, op.started_leading, _lost)
    try:
        metrics.serve(metrics_port)
    except OSError as exc:
        raise Unbindable(f"--metrics-port {metrics_port}: {exc}") from exc
    # Not kopf's liveness_endpoint, which binds one address family (metrics.serve_health). Bound here, before
    # kopf's startup leads and reconciles, so a port in use stops the operator before it writes.
    try:
        health_sockets = metrics.bind_health(health_port) if health_port else []
    except OSError as exc:
        raise Unbindable(f"--health-port {health_port}: {exc}") from exc
    log.info("gpu-operator starting: namespace %s, API %s, identity %s, leader election %s",
             namespace, kube.host, me, "on" if leader_elect else "off")  # fmt: skip
    registry = build_registry(op)
    if health_sockets:
        servers: list[Any] = []  # the runner, held for the life of the process

        @kopf.on.startup(registry=registry)
        async def healthz(**_: Any) -> None:
            servers.append(await metrics.serve_health(health_sockets))

    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=False,
        namespaces=[namespace],
        identity=cast(Any, me),  # kopf's default calls getpass.getuser(): fails for a uid without a passwd entry
    )
    return 0
