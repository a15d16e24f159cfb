"""Fixtures for the end-to-end suite: one local cluster per test session.

Every test collected under e2e/ is marked ``e2e``.  The cluster binaries are built by ``e2e/cluster/build.sh``
when missing (progress is shown); the cluster is always stopped at the end of the session, also on Ctrl-C,
and its processes die with pytest even if pytest is killed.

With ``E2E_KUBECONFIG=/path`` the session uses that cluster instead (e2e/cluster/existing.py): kwok runs against
it for the fake nodes, and what the run created is deleted at the end. Tests marked ``local_cluster_only`` (they
start their own control plane) and tests that read the audit log are skipped there, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e.cluster.existing import RUN_ENV, ExistingCluster, NotLocalCluster
from e2e.cluster.localcluster import ClusterError, LocalCluster, ensure_binaries
from e2e.kube import Kube, create_namespace, delete_namespace
from e2e.simulator import NodeSimulator

E2E_DIR = Path(__file__).resolve().parent
EXISTING_KUBECONFIG = os.environ.get("E2E_KUBECONFIG", "")
EXISTING = "existing-cluster mode (E2E_KUBECONFIG)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_cluster_only(reason): needs the suite's own local control plane")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            mark = item.get_closest_marker("local_cluster_only")
            if EXISTING_KUBECONFIG and mark is not None:
                reason = mark.args[0] if mark.args else "needs the local control plane"
                item.add_marker(pytest.mark.skip(reason=f"{EXISTING}: {reason}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """A test that reaches for what only the local cluster has (its audit log) is skipped in existing mode."""
    try:
        return (yield)
    except NotLocalCluster as e:
        pytest.skip(f"{EXISTING}: {e}")


@contextlib.contextmanager
def _uncaptured(pytestconfig: pytest.Config) -> Iterator[None]:
    """Let progress lines through pytest's output capture."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    with _uncaptured(pytestconfig):
        binaries = ensure_binaries()
        if EXISTING_KUBECONFIG:
            existing = ExistingCluster(EXISTING_KUBECONFIG, tmp_path_factory.mktemp("existing"), binaries=binaries)
            os.environ[RUN_ENV] = existing.run_id  # e2e.cluster.nodes and e2e.kube label what they create with it
            c: LocalCluster = existing
        else:
            c = LocalCluster(tmp_path_factory.mktemp("cluster"), binaries=binaries)
        try:
            c.up()
        except BaseException as e:
            c.down()
            os.environ.pop(RUN_ENV, None)
            if EXISTING_KUBECONFIG and isinstance(e, ClusterError):  # e.g. a cluster the run may not use
                pytest.exit(str(e), returncode=pytest.ExitCode.USAGE_ERROR)
            raise
    try:
        yield c
    finally:
        c.down()
        os.environ.pop(RUN_ENV, None)


@pytest.fixture(scope="session")
def api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An ApiClient for the cluster admin (group system:masters)."""
    with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as a:
        yield a


@pytest.fixture(scope="session")
def kube(api: client.ApiClient) -> Kube:
    """Plain-JSON access as cluster admin (see e2e/kube.py)."""
    return Kube(api)


@pytest.fixture
def operator_kube(cluster: LocalCluster) -> Iterator[Kube]:
    """Plain-JSON access as the operator's ServiceAccount identity (only what RBAC grants it).

    Per test: on an existing cluster the identity is a token of the ServiceAccount, which tests delete and make."""
    k = Kube.from_kubeconfig(cluster.operator_kubeconfig)
    yield k
    k.close()


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for the namespace controller)."""
    run = os.environ.get(RUN_ENV)
    name = f"e2e-{run}-{uuid.uuid4().hex[:4]}" if run else f"e2e-{uuid.uuid4().hex[:8]}"
    create_namespace(kube, name)
    yield name
    delete_namespace(kube, name, wait=False)


@pytest.fixture
def simulator(cluster: LocalCluster, kube: Kube) -> Iterator[NodeSimulator]:
    """A running node simulator for the gpu-operator namespace (created if missing)."""
    create_namespace(kube, "gpu-operator")
    # The tests' upstream-shaped DaemonSets select nodes by a pool label, not by deploy labels: no
    # k8s-driver-manager pause (it would wait for pods nothing removes).
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace="gpu-operator", resync_seconds=5,
                        driver_manager=False)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
