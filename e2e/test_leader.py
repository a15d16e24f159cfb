"""End-to-end: two operator replicas under leader election (--leader-elect), on the module's own cluster.

Only the Lease's holder writes: every write of the operator's identity in the API server's audit log is
attributed to a replica by its User-Agent (`gpu-operator/<version> (<POD_NAME>)`). Tests build on each other
in file order: both replicas start, one acts; the leader is SIGKILLed mid-rollout and the other takes over once
the Lease runs out and finishes the rollout; a SIGTERMed leader hands over at once; a SIGSTOPped leader is
fenced, and exits when it wakes.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from e2e.cluster.localcluster import LocalCluster, audit_time, ensure_binaries
from e2e.cluster.nodes import create_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.replicas import acquired, holder, operator_writes, span
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube
from gpu_operator.leader import LEASE_DURATION_S, RETRY_S
from gpu_operator.upgrade import IN_PROGRESS_STATES, STATE_LABEL

NODES = [f"le-{i}" for i in range(6)]
LIMITS = {"autoUpgrade": True, "maxParallelUpgrades": 1, "maxUnavailable": 1, "drain": {"enable": False}}
NAMES = ("replica-a", "replica-b")
SLACK_S = 1.5  # a loaded 2-core machine: process scheduling and one request's latency


class Env:
    def __init__(self, cluster: LocalCluster, admin: Kube, ops: dict[str, OperatorProcess], started: float):
        self.cluster, self.admin, self.ops, self.started = cluster, admin, ops, started

    def leader(self) -> tuple[OperatorProcess, OperatorProcess]:
        """(holder, the other), by the Lease."""
        name = holder(self.admin)
        assert name in self.ops, f"Lease held by {name!r}"
        other = next(n for n in self.ops if n != name)
        return self.ops[name], self.ops[other]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{op.log_tail(30)}" for n, op in self.ops.items())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = LocalCluster(tmp_path_factory.mktemp("leader-cluster"), binaries=ensure_binaries())
    cluster.up()
    sim = None
    ops: dict[str, OperatorProcess] = {}
    try:
        admin = Kube.connect(str(cluster.kubeconfig))
        create_nodes(admin.client, [make_node(n, "h100x8") for n in NODES] + [make_node("le-cpu", "cpu")])
        install_crds_and_rbac(admin)
        sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5,
                            driver_ready_delay=2.0).start()  # fmt: skip
        logs = tmp_path_factory.mktemp("leader-operators")
        started = time.time()
        for name in NAMES:
            ops[name] = OperatorProcess(cluster, logs / f"{name}.log", identity=name, leader_elect=True).start()
        yield Env(cluster, admin, ops, started)
    finally:
        for op in ops.values():
            op.stop()
        if sim:
            sim.stop()
        cluster.down()


def metric(op: OperatorProcess, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def healthy(op: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5) as resp:
        return bool(resp.status == 200)


def answers(op: OperatorProcess, leading: float) -> bool:
    try:
        return metric(op, "gpu_operator_leader") == leading and healthy(op)
    except OSError:
        return False


def rollout_left(env: Env, version: str) -> str | None:
    """None when every GPU node is upgrade-done, schedulable, on a ready driver pod of `version`."""
    listed = env.admin.list("Pod", NAMESPACE, label_selector="nvidia.com/gpu-operator.state=state-driver")
    pods = {p["spec"].get("nodeName"): p for p in listed if not p["metadata"].get("deletionTimestamp")}
    left = []
    for name in NODES:
        node = env.admin.get("Node", name) or {}
        state = node.get("metadata", {}).get("labels", {}).get(STATE_LABEL)
        pod = pods.get(name) or {}
        image = (pod.get("spec") or {}).get("containers", [{}])[0].get("image", "")
        ready = all(c.get("ready") for c in (pod.get("status") or {}).get("containerStatuses") or [{}])
        if state != "upgrade-done" or node["spec"].get("unschedulable") or f":{version}-" not in image or not ready:
            left.append(f"{name}={state}")
    return ", ".join(left) or None


def wait_rollout(env: Env, version: str, timeout: float) -> None:
    last: list[str | None] = [None]

    def done() -> bool:
        last[0] = rollout_left(env, version)
        return last[0] is None

    try:
        wait_for(done, timeout, interval=1.0, message=f"rollout of {version}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nleft: {last[0]}\n{env.logs()}") from None


def in_progress(env: Env) -> int:
    nodes = [env.admin.get("Node", n) or {} for n in NODES]
    return sum(n.get("metadata", {}).get("labels", {}).get(STATE_LABEL) in IN_PROGRESS_STATES for n in nodes)


def test_one_replica_acts_the_other_waits(env: Env) -> None:
    wait_for(lambda: holder(env.admin) in NAMES, 60, message="a replica holds the Lease")
    policy = policy_from_sample()
    policy["spec"]["driver"]["upgradePolicy"] = LIMITS
    env.admin.create(policy)
    wait_rollout(env, "595.91.07", 240)
    leader, follower = env.leader()
    assert wait_for(lambda: answers(leader, 1) and answers(follower, 0), 20, message="gpu_operator_leader 1 / 0")
    writes = operator_writes(env.cluster, env.started)
    assert set(writes) == {leader.identity}, f"writes by {sorted(writes)}: only the leader acts"
    assert len(writes[leader.identity]) > 20
    lease_writes = operator_writes(env.cluster, env.started, leases=True)
    assert not lease_writes.get(follower.identity), "the follower never held the Lease"
    transitions = [e for e in env.admin.list("Event", NAMESPACE) if e["reason"] == "LeaderElection"]
    assert [e["message"] for e in transitions] == [f"{leader.identity} became leader"]


def test_leader_killed_mid_rollout_the_other_takes_over_and_finishes(env: Env) -> None:
    leader, follower = env.leader()
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": "600.10.01"}}})
    wait_for(lambda: in_progress(env) > 0, 120, message="rollout under way")
    before = time.time()
    leader.stop(signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: holder(env.admin) == follower.identity, LEASE_DURATION_S + 15, interval=0.1,
             message=f"{follower.identity} holds the Lease")  # fmt: skip
    name, took_at = acquired(env.admin)
    failover = took_at - killed
    print(f"\nfailover after SIGKILL: {failover:.1f}s")
    # Standard Lease semantics: nobody takes over before the lease ran out (the last renew was at most one renew
    # period before the kill), and the follower does as soon as it has (it looks every RETRY_S).
    assert failover <= LEASE_DURATION_S + RETRY_S + SLACK_S, f"took over {failover:.1f}s after the kill"
    wait_rollout(env, "600.10.01", 300)
    writes = operator_writes(env.cluster, env.started)
    assert set(writes) == {leader.identity, follower.identity}, sorted(writes)
    old_first, old_last = span(writes[leader.identity])
    new_first, new_last = span(writes[follower.identity])
    assert old_last <= before + SLACK_S, "the killed leader wrote nothing after its death"
    assert new_first >= took_at - 0.05, "the new leader wrote nothing before it held the Lease"
    assert old_last < new_first, "one actor at a time"
    assert new_last > old_last
    assert not [n for n in NODES if (env.admin.get("Node", n) or {})["spec"].get("unschedulable")]


def test_sigterm_releases_the_lease_and_the_other_takes_over_at_once(env: Env) -> None:
    leader, follower = env.leader()
    follower.start()  # the killed replica comes back, as a follower
    wait_for(lambda: answers(follower, 0), 60, message="the restarted replica serves metrics and /healthz")
    wait_for(lambda: "waiting for the leader Lease" in follower.log_tail(200), 60, message="follower synced")
    stopped = time.time()
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGTERM)
    assert leader.proc.wait(timeout=30) == 0
    leader.proc = None
    wait_for(lambda: holder(env.admin) == follower.identity, 10, interval=0.1, message="handover")
    _, took_at = acquired(env.admin)
    handover = took_at - stopped
    print(f"\nhandover after SIGTERM: {handover:.1f}s")
    assert handover <= RETRY_S + 2 * SLACK_S, f"took over {handover:.1f}s after SIGTERM"
    assert "released the Lease" in leader.log_tail(20)
    writes = operator_writes(env.cluster, stopped)
    assert set(writes) <= {leader.identity, follower.identity}
    if leader.identity in writes and follower.identity in writes:
        assert span(writes[leader.identity])[1] < span(writes[follower.identity])[0]
    # The new leader acts: a change of the policy is carried out.
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"dcgmExporter": {"enabled": False}}})
    wait_for(lambda: not env.admin.list("DaemonSet", NAMESPACE, label_selector="app=nvidia-dcgm-exporter"), 60,
             message="dcgm-exporter removed by the new leader")  # fmt: skip
    late = [e for e in operator_writes(env.cluster, took_at).get(leader.identity, []) if audit_time(e) > took_at]
    assert not late


def test_paused_leader_is_fenced_and_exits_when_it_wakes(env: Env) -> None:
    leader, follower = env.leader()
    follower.start()
    wait_for(lambda: "waiting for the leader Lease" in follower.log_tail(200), 60, message="follower synced")
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    paused = time.time()
    try:
        wait_for(lambda: holder(env.admin) == follower.identity, LEASE_DURATION_S + 15, interval=0.2,
                 message="takeover from a paused leader")  # fmt: skip
        _, took_at = acquired(env.admin)
        # A change while the old leader sleeps: when it wakes, its pass must not write.
        env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"dcgmExporter": {"enabled": True}}})
    finally:
        woken = time.time()
        leader.proc.send_signal(signal.SIGCONT)
    assert leader.proc.wait(timeout=30) == 1, "a leader that lost the Lease exits"
    leader.proc = None
    assert "stopped leading" in leader.log_tail(30)
    # A write already on the wire when the signal landed is received after `paused` (the fence is checked before a
    # write is sent); one received once the process runs again was sent after waking: there must be none.
    woke = [e for e in operator_writes(env.cluster, paused).get(leader.identity, []) if audit_time(e) >= woken]
    assert not woke, [f"{e['verb']} {e['requestURI']}" for e in woke]
    wait_for(lambda: env.admin.list("DaemonSet", NAMESPACE, label_selector="app=nvidia-dcgm-exporter"), 60,
             message="dcgm-exporter back, by the new leader")  # fmt: skip
    assert all(audit_time(e) >= took_at for e in operator_writes(env.cluster, paused).get(follower.identity, []))
