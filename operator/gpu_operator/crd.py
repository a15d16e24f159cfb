"""Generate the ClusterPolicy and NVIDIADriver CRDs from the pydantic model, as a structural OpenAPI v3 schema.

Field descriptions (what `kubectl explain` shows) come from data/crd-descriptions.yaml, by field path, not from
the models' docstrings; a ClusterPolicy field coverage.UNSUPPORTED names gets that table's reason appended.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import yaml

from . import api, coverage, nvidiadriver_api

# `default` too: the models' defaults are how the operator reads an unset field, most of them None (no schema
# default); the API server applies only nvidiadriver_api.SERVER_DEFAULTS.
_DROP = {"title", "default", "additionalProperties", "$defs", "discriminator", "description"}
DESCRIPTIONS_FILE = "crd-descriptions.yaml"


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
        if types <= {"integer", "string"}:  # a plain int | str (Quantity gives its own schema)
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


@functools.cache
def description_table() -> dict[str, dict[str, str]]:
    """data/crd-descriptions.yaml: section (a CRD's plural, or `common`) -> key -> description."""
    text = (resources.files("gpu_operator") / "data" / DESCRIPTIONS_FILE).read_text()
    table: dict[str, dict[str, str]] = yaml.safe_load(text)
    return table


def _key_pattern(key: str) -> re.Pattern[str]:
    """A table key as a regex over field paths: `**` any run of the path, `*` any part of one field name."""
    parts = re.split(r"(\*\*|\*)", key)
    return re.compile("".join(".+" if p == "**" else r"[^.\[\]]+" if p == "*" else re.escape(p) for p in parts))


class Descriptions:
    """The descriptions of one CRD's fields: its own section of the table, then `common`."""

    def __init__(self, plural: str):
        table = description_table()
        own, common = table[plural], table["common"]
        self.sections = {**{key: "common" for key in common}, **{key: plural for key in own}}
        merged = {**own, **{k: v for k, v in common.items() if k not in own}}
        self.exact = {k: v for k, v in merged.items() if "*" not in k}
        self.patterns = [(k, _key_pattern(k), v) for k, v in merged.items() if "*" in k]

    def lookup(self, path: str) -> tuple[str, str] | None:
        """(key, description) for a field path: its exact key, else the first pattern that matches it."""
        if path in self.exact:
            return path, self.exact[path]
        return next(((k, text) for k, pattern, text in self.patterns if pattern.fullmatch(path)), None)


def field_paths(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under `node` by path: fields by name, the items of a list as `[]` (map values are not
    walked: none holds fields)."""
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from field_paths(child, child_path)
    if isinstance(node.get("items"), dict):
        yield path + "[]", node["items"]
        yield from field_paths(node["items"], path + "[]")


def _coverage_notes(root: dict[str, Any]) -> dict[str, str]:
    """Field path -> the sentence coverage.UNSUPPORTED gives a ClusterPolicy field this operator does not act on:
    a rule for a whole section (`vfioManager.*`) on the section, any other on each field it is the rule for."""
    spec = [p.removeprefix("spec.") for p, _ in field_paths(root) if p.startswith("spec.") and "[]" not in p]
    out: dict[str, str] = {}
    for rule in coverage.UNSUPPORTED:
        section = rule.pattern.removesuffix(".*")
        if section != rule.pattern and "*" not in section:
            targets = [section]
        else:
            targets = [p for p in spec if coverage.rule_for(p) is rule and not rule.matches(p.rpartition(".")[0])]
        if not targets or not set(targets) <= set(spec):
            raise ValueError(f"coverage rule {rule.pattern}: no such ClusterPolicy field")
        lead = "Partly acted on by this operator" if rule.partial else "Not acted on by this operator"
        note = f"{lead}: {rule.reason}."
        for path in (f"spec.{target}" for target in targets):
            out[path] = f"{out[path]} {note}" if path in out else note
    return out


def described(root: dict[str, Any], plural: str, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """The schema with each field's description from the table, and `notes` (by path) appended. Only the root
    comes with a description of its own (_structural drops the models' docstrings)."""
    table = Descriptions(plural)
    notes = notes or {}

    def walk(node: dict[str, Any], path: str) -> dict[str, Any]:
        hit = table.lookup(path)
        text = " ".join(part for part in (hit[1] if hit else node.get("description", ""), notes.get(path, "")) if part)
        out: dict[str, Any] = {"description": text} if text else {}
        for key, value in node.items():
            if key == "properties":
                value = {name: walk(child, f"{path}.{name}" if path else name) for name, child in value.items()}
            elif key == "items" and isinstance(value, dict):
                value = walk(value, path + "[]")
            if key != "description":
                out[key] = value
        return out

    return walk(root, "")


def _root(description: str, spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A CRD's openAPIV3Schema before its fields are described."""
    status.pop("x-kubernetes-preserve-unknown-fields", None)
    return {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def clusterpolicy_crd() -> dict[str, Any]:
    root = _root(
        "ClusterPolicy configures the GPU software stack on every GPU node.",
        _schema(api.ClusterPolicySpec),
        _schema(api.ClusterPolicyStatus),
    )
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
                    "schema": {"openAPIV3Schema": described(root, api.PLURAL, _coverage_notes(root))},
                }
            ],
        },
    }


def nvidiadriver_crd() -> dict[str, Any]:
    n = nvidiadriver_api
    spec = _schema(n.NVIDIADriverSpec)
    for name in n.SERVER_DEFAULTS:
        field = n.NVIDIADriverSpec.model_fields[name]
        spec["properties"][field.alias or name]["default"] = field.default
    root = _root(
        "NVIDIADriver deploys one driver configuration on the GPU nodes it selects.",
        spec,
        _schema(n.NVIDIADriverStatus),
    )
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
                    "schema": {"openAPIV3Schema": described(root, n.PLURAL)},
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
