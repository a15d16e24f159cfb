"""Path-based, plain-JSON access to the API server for tests and test infrastructure.

The transport is the operator's own client (`gpu_operator.kube.Kube`: plain dicts through the kubernetes
ApiClient's host, token and TLS settings, no client models in between, errors as `ApiError`, which is also a
`kubernetes.client.ApiException`, requests counted per verb and resource); this module adds the path-based
verbs the tests use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kubernetes import client, config

from gpu_operator.kube import Kube as Client

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

T = TypeVar("T")


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.client = Client(api)

    @classmethod
    def from_kubeconfig(cls, path: Any, pool_size: int | None = None) -> Kube:
        api = config.new_client_from_config(config_file=str(path))
        if pool_size:
            api.configuration.connection_pool_maxsize = pool_size
            api.rest_client = client.rest.RESTClientObject(api.configuration)
        return cls(api)

    def close(self) -> None:
        self.api.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str | None = None,
        timeout: float = 30,
    ) -> Any:
        return self.client.request(method, path, body, query=query, content_type=content_type, timeout=timeout)

    # --- verbs ---
    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str, **query: Any) -> Any:
        try:
            return self.get(path, **query)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def items(self, path: str, **query: Any) -> list[dict[str, Any]]:
        return list(self.get(path, **query).get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, missing_ok: bool = True, **query: Any) -> Any:
        try:
            return self.request("DELETE", path, query=query)
        except client.ApiException as e:
            if e.status == 404 and missing_ok:
                return None
            raise

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 30, *,
        handle: list[Any] | None = None, **query: Any,
    ) -> Iterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) from a collection path (see `gpu_operator.kube.Kube.watch`)."""
        return self.client.watch(path, resource_version, timeout_seconds, handle=handle, **query)


def wait_for(
    fn: Callable[[], T | None], timeout: float = 30, interval: float = 0.2, message: str = "condition"
) -> T:
    """Poll ``fn`` until it returns something truthy and return that; AssertionError after ``timeout``.

    Exceptions from ``fn`` count as "not yet" and the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = fn()
            error = None
            if last:
                return last
        except (client.ApiException, KeyError, AssertionError) as e:
            error = e
        if time.monotonic() > deadline:
            detail = f"; last error: {error!r}" if error else f"; last value: {last!r}"
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}{detail}")
        time.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> str | None:
    """The status ("True"/"False"/"Unknown") of a condition of an object, None when absent."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def pod_running_ready(pod: dict[str, Any]) -> bool:
    return (
        (pod.get("status") or {}).get("phase") == "Running"
        and condition(pod, "Ready") == "True"
        and not pod["metadata"].get("deletionTimestamp")
    )


def node_ready(node: dict[str, Any]) -> bool:
    return condition(node, "Ready") == "True"


def create_namespace(kube: Kube, name: str, timeout: float = 30) -> None:
    """Create a namespace (if missing) and wait until pods can be made in it: its default ServiceAccount exists."""
    if kube.get_or_none(f"/api/v1/namespaces/{name}") is None:
        try:
            from e2e.cluster.existing import run_labels

            kube.create("/api/v1/namespaces",
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": run_labels()}})
        except client.ApiException as e:
            if e.status != 409:
                raise
    wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"), timeout,
             message=f"ServiceAccount {name}/default")


def delete_namespace(kube: Kube, name: str, wait: bool = True, timeout: float = 60) -> None:
    """Delete a namespace and (unless ``wait=False``) wait until it is gone (5-10s: the namespace controller)."""
    kube.delete(f"/api/v1/namespaces/{name}")
    if wait:
            wait_for(lambda: kube.get_or_none(f"/api/v1/namespaces/{name}") is None, timeout,
                 message=f"namespace {name} to be deleted")


def wait_pod_running_ready(kube: Kube, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until a pod is Running and Ready; returns it."""
    def get() -> dict[str, Any] | None:
        pod: dict[str, Any] = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod if pod_running_ready(pod) else None

    return wait_for(get, timeout, message=f"pod {namespace}/{name} Running and Ready")
