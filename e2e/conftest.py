"""Fixtures for the end-to-end suite: one local cluster per test session.

Every test collected under e2e/ is marked ``e2e``.  The cluster binaries are built by ``e2e/cluster/build.sh``
when missing (progress is shown); the cluster is always stopped at the end of the session, also on Ctrl-C,
and its processes die with pytest even if pytest is killed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e.cluster.localcluster import LocalCluster, ensure_binaries
from e2e.kube import Kube, create_namespace, delete_namespace
from e2e.simulator import NodeSimulator

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


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
        c = LocalCluster(tmp_path_factory.mktemp("cluster"), binaries=binaries)
        try:
            c.up()
        except BaseException:
            c.down()
            raise
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An ApiClient for the cluster admin (group system:masters)."""
    with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as a:
        yield a


@pytest.fixture(scope="session")
def kube(api: client.ApiClient) -> Kube:
    """Plain-JSON access as cluster admin (see e2e/kube.py)."""
    return Kube(api)


@pytest.fixture(scope="session")
def operator_kube(cluster: LocalCluster) -> Iterator[Kube]:
    """Plain-JSON access as the operator's ServiceAccount identity (only what RBAC grants it)."""
    k = Kube.from_kubeconfig(cluster.operator_kubeconfig)
    yield k
    k.close()


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for the namespace controller)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    create_namespace(kube, name)
    yield name
    delete_namespace(kube, name, wait=False)


@pytest.fixture
def simulator(cluster: LocalCluster, kube: Kube) -> Iterator[NodeSimulator]:
    """A running node simulator for the gpu-operator namespace (created if missing)."""
    create_namespace(kube, "gpu-operator")
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace="gpu-operator", resync_seconds=5)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
