"""A thin, synchronous Kubernetes REST adapter over the official client's auth and connection pool.

Only what the operator needs: get/list/apply (server-side, one field manager)/merge-patch/delete/create.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config

from .kinds import lookup

FIELD_MANAGER = "gpu-operator"


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str):
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{what}: {status} {message}")
        self.status = status
        self.message = message


def path_for(kind: str, name: str | None = None, namespace: str | None = None, sub: str | None = None) -> str:
    k = lookup(kind)
    path = "/" + k.prefix
    if k.namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{k.plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def _resource_of(path: str) -> str:
    """/api/v1/namespaces/ns/pods/p/eviction -> pods/eviction; /apis/apps/v1/daemonsets -> daemonsets."""
    parts = path.strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
        parts = parts[2:]
    return "/".join(parts[::2]) if parts else ""


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.client = api_client
        self.host = api_client.configuration.host.rstrip("/")
        # Requests made, by (verb, resource), for logs, metrics and benchmarks.
        self.requests: Counter[tuple[str, str]] = Counter()
        self._count_lock = threading.Lock()

    def writes(self) -> int:
        """Requests that changed something (every verb but GET) so far."""
        return sum(n for (verb, _), n in self.requests.items() if verb != "GET")

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Kube:
        cfg = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = 16
        return cls(client.ApiClient(cfg))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.host + path + ("?" + urlencode(query) if query else "")
        with self._count_lock:
            self.requests[(method, _resource_of(path))] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        self.client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        resp = self.client.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
        data = resp.read()
        if resp.status >= 400:
            raise ApiError(resp.status, data.decode(errors="replace"), f"{method} {path}")
        return json.loads(data) if data else None

    # Convenience verbs

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", path_for(kind, name, namespace))
            return result
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        items: list[dict[str, Any]] = []
        while True:
            page = self.request("GET", path_for(kind, namespace=namespace), query={**query, "limit": 500})
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items
            query["continue"] = cont

    def apply(self, obj: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        """Server-side apply under the operator's field manager."""
        meta = obj["metadata"]
        path = path_for(obj["kind"], meta["name"], meta.get("namespace"), sub)
        result: dict[str, Any] = self.request(
            "PATCH",
            path,
            json.dumps(obj),
            {"fieldManager": FIELD_MANAGER, "force": "true"},
            "application/apply-patch+yaml",
        )
        return result

    def merge_patch(
        self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None, sub: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PATCH",
            path_for(kind, name, namespace, sub),
            patch,
            {"fieldManager": FIELD_MANAGER},
            "application/merge-patch+json",
        )
        return result

    def create(self, obj: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        if sub:
            path = path_for(obj["kind"], meta["name"], meta.get("namespace"), sub)
        else:
            path = path_for(obj["kind"], namespace=meta.get("namespace"))
        result: dict[str, Any] = self.request("POST", path, obj, {"fieldManager": FIELD_MANAGER})
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None, body: dict[str, Any] | None = None) -> bool:
        """Delete; False when it was already gone."""
        try:
            self.request("DELETE", path_for(kind, name, namespace), body or {"propagationPolicy": "Background"})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def evict(self, name: str, namespace: str) -> None:
        """Evict a pod through the Eviction API, so PodDisruptionBudgets hold (429 when one blocks it)."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        self.request("POST", path_for("Pod", name, namespace, "eviction"), body)

    def wait_established(self, crd_name: str, timeout: float = 30.0) -> None:
        """Wait until a CRD is served (its Established condition is True)."""
        deadline = time.monotonic() + timeout
        while True:
            crd = self.get("CustomResourceDefinition", crd_name) or {}
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CustomResourceDefinition {crd_name} not established after {timeout:.0f}s")
            time.sleep(0.2)

    def api_groups(self) -> frozenset[str]:
        groups = self.request("GET", "/apis").get("groups") or []
        return frozenset(g["name"] for g in groups)
