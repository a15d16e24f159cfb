"""Generate the ClusterPolicy and NVIDIADriver CRDs from the pydantic model, as a structural OpenAPI v3 schema."""

from __future__ import annotations

from typing import Any

import yaml

from . import api, nvidiadriver_api

_DROP = {"title", "default", "additionalProperties", "$defs", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, turn Optional[X] into X, and keep only what a structural schema allows."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(branches) == 1:
            return _structural({**branches[0], **rest}, defs)
        types = {b.get("type") for b in branches}
        if types <= {"integer", "string"}:  # dict[str, int | str] values: quantities
            return {"x-kubernetes-int-or-string": True, **_keep(rest)}
        raise ValueError(f"cannot express union in a structural schema: {node}")
    out = {k: _structural(v, defs) for k, v in node.items() if k not in _DROP and k != "properties"}
    if "properties" in node:  # field names are kept as they are (`default` is a field of several sections)
        out["properties"] = {name: _structural(v, defs) for name, v in node["properties"].items()}
    if node.get("type") == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs)
        elif extra is not False:
            # A free-form object: none is left in the spec (upstream's schema preserves no unknown fields).
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "const" in out:
        out["enum"] = [out.pop("const")]
        out.setdefault("type", "string")
    return out


def _keep(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in _DROP}


def _schema(model: type[api.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def clusterpolicy_crd() -> dict[str, Any]:
    spec_schema = _schema(api.ClusterPolicySpec)
    status_schema = _schema(api.ClusterPolicyStatus)
    status_schema.pop("x-kubernetes-preserve-unknown-fields", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "gpu-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Cluster",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": "clusterpolicy",
                "shortNames": ["cp"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Status", "type": "string", "jsonPath": ".status.state"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "ClusterPolicy configures the GPU software stack on every GPU node.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def nvidiadriver_crd() -> dict[str, Any]:
    n = nvidiadriver_api
    spec_schema = _schema(n.NVIDIADriverSpec)
    status_schema = _schema(n.NVIDIADriverStatus)
    status_schema.pop("x-kubernetes-preserve-unknown-fields", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{n.PLURAL}.{n.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "gpu-operator"},
        },
        "spec": {
            "group": n.GROUP,
            "scope": "Cluster",
            "names": {
                "kind": n.KIND,
                "listKind": f"{n.KIND}List",
                "plural": n.PLURAL,
                "singular": "nvidiadriver",
                "shortNames": ["nvd", "nvdriver", "nvdrivers"],
            },
            "versions": [
                {
                    "name": n.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Status", "type": "string", "jsonPath": ".status.state"},
                        {"name": "Default", "type": "boolean", "jsonPath": ".spec.default"},
                        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "NVIDIADriver deploys one driver configuration on the GPU nodes it selects.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [clusterpolicy_crd(), nvidiadriver_crd()]


def crds_yaml() -> str:
    return "".join(crd_files().values())


def crd_files() -> dict[str, str]:
    """File name (`<group>_<plural>.yaml`, as crds/ holds them) -> that CRD as a YAML document, in all_crds()
    order, which is also the files' name order: the files joined are crds_yaml()."""
    out = {}
    for crd in all_crds():
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        out[f"{group}_{plural}.yaml"] = "---\n" + yaml.safe_dump(crd, sort_keys=False, width=120)
    return out
