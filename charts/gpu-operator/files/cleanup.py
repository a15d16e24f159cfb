"""pre-delete hook of the gpu-operator chart: delete ClusterPolicies while the operator still runs.

The operator keeps a finalizer on each ClusterPolicy and, when one is deleted, removes the labels it put on nodes
before letting it go. Helm deletes the operator's Deployment before the ClusterPolicy, so without this hook the
ClusterPolicy would be left terminating for ever. Settings (environment):

  CLUSTERPOLICIES   names to delete, comma separated, or "*" for all (default: cluster-policy)
  TIMEOUT_SECONDS   how long to wait for the operator to clean up (default 120); after that our finalizers are
                    removed here, so the uninstall never hangs (node labels may then be left behind)
  DELETE_CRDS       CRD names to delete afterwards, comma separated (default: none)

Connects in-cluster, or with $KUBECONFIG. Runs with the operator image (it uses the operator's API client).
"""

from __future__ import annotations

import os
import sys
import time

from gpu_operator.kube import ApiError, Kube

OUR_FINALIZERS = ("nvidia.com/gpu-operator-cleanup", "nvidia.com/gpu-operator-kopf")


def say(msg: str) -> None:
    print(f"gpu-operator-cleanup: {msg}", flush=True)


def policies(kube: Kube, wanted: list[str]) -> list[dict]:
    try:
        found = kube.list("ClusterPolicy")
    except ApiError as exc:
        if exc.status == 404:  # the CRD is gone: nothing to do
            return []
        raise
    return [p for p in found if "*" in wanted or p["metadata"]["name"] in wanted]


def main() -> int:
    wanted = [n.strip() for n in os.environ.get("CLUSTERPOLICIES", "cluster-policy").split(",") if n.strip()]
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "120"))
    crds = [n.strip() for n in os.environ.get("DELETE_CRDS", "").split(",") if n.strip()]
    kube = Kube.connect(None)

    for policy in policies(kube, wanted):
        name = policy["metadata"]["name"]
        if kube.delete("ClusterPolicy", name):
            say(f"clusterpolicy {name} deleted; waiting for the operator to clean up")

    deadline = time.monotonic() + timeout
    left = policies(kube, wanted)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = policies(kube, wanted)
    for policy in left:
        meta = policy["metadata"]
        keep = [f for f in meta.get("finalizers") or [] if f not in OUR_FINALIZERS]
        say(f"clusterpolicy {meta['name']} still there after {timeout:.0f}s (is the operator running?): "
            "removing its finalizer; node labels may be left behind")
        try:
            kube.merge_patch("ClusterPolicy", meta["name"], {"metadata": {"finalizers": keep or None}})
        except ApiError as exc:
            if exc.status != 404:
                raise

    for crd in crds:
        if kube.delete("CustomResourceDefinition", crd):
            say(f"customresourcedefinition {crd} deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
