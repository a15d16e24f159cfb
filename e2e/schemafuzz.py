"""ClusterPolicy specs generated from the CRD's structural schema (hypothesis strategies), valid and mutated.

`specs()` draws specs the schema admits; `mutants()` draws a valid spec with one change the schema rejects (an
unknown field, a wrong type, a value outside an enum or a bound), with the path of the change. Used by the unit
fuzz tests (through `render`) and by the end-to-end ones (through the API server).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from gpu_operator.crd import clusterpolicy_crd

Schema = dict[str, Any]

# Few, short values: the interesting cases are structural; long strings only slow the tests down.
_TEXT = st.text(alphabet="abcz019-./:%", min_size=0, max_size=6)
_KEY = st.text(alphabet="abz19-./", min_size=1, max_size=5)


@functools.cache
def spec_schema() -> Schema:
    crd = clusterpolicy_crd()
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _int_or_string(node: Schema) -> st.SearchStrategy[Any]:
    if node.get("x-kubernetes-validations"):  # maxUnavailable: a positive int or "N" / "N%" (daemonsets' refuses 0)
        return st.one_of(st.integers(1, 20), st.from_regex(r"\A[1-9][0-9]?%?\Z"))
    return st.one_of(st.integers(0, 64), st.sampled_from(["1", "100m", "2Gi", "500Mi"]))


def values(node: Schema, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the schema node admits (optional properties present or not)."""
    if node.get("x-kubernetes-int-or-string"):
        return _int_or_string(node)
    kind = node.get("type")
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(node.get("minimum", -5), node.get("maximum", 70000))
    if kind == "string" and "pattern" in node:  # Go's RE2 and Python read these patterns alike
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) <= node.get("maxLength", 63))
    if kind == "string":
        return st.text(alphabet="abz19-", min_size=max(1, node.get("minLength", 0)), max_size=6) if node.get(
            "minLength"
        ) else _TEXT
    if kind == "array":
        return st.lists(values(node["items"], depth + 1), max_size=2 if depth < 4 else 0)
    if kind == "object":
        props = node.get("properties") or {}
        if props:  # the required keys and up to three others (all of them would make huge specs)
            required = [k for k in props if k in node.get("required", [])]
            optional = [k for k in props if k not in required]
            return st.lists(st.sampled_from(optional), max_size=min(3, len(optional)), unique=True).flatmap(
                lambda keys: st.fixed_dictionaries({k: values(props[k], depth + 1) for k in required + keys})
            )
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return st.dictionaries(_KEY, values(extra, depth + 1), max_size=2)
        return st.just({})
    raise AssertionError(f"no strategy for schema node {node}")


@functools.cache
def specs() -> st.SearchStrategy[dict[str, Any]]:
    return values(spec_schema())


@dataclass(frozen=True)
class Mutant:
    spec: dict[str, Any]
    path: str  # `spec.<path>` of the change, as the API server and `render` name it
    how: str


def _objects(value: Any, node: Schema, path: str) -> list[tuple[str, Any, Schema]]:
    """(path, value, schema) of every value under `value`, depth first."""
    out = [(path, value, node)]
    if isinstance(value, dict) and node.get("properties"):
        for key, child in value.items():
            out += _objects(child, node["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and node.get("type") == "array":
        for i, child in enumerate(value):
            out += _objects(child, node["items"], f"{path}[{i}]")
    return out


def _wrong(node: Schema) -> list[tuple[Any, str]]:
    """Values of another type than the node's (or outside its enum or bounds), with what is wrong."""
    if node.get("x-kubernetes-int-or-string"):
        return [(True, "a boolean for an int-or-string"), ([1], "a list for an int-or-string")]
    kind = node.get("type")
    out: list[tuple[Any, str]] = []
    if "enum" in node:
        out.append(("not-in-enum", "a value outside the enum"))
    if "minimum" in node:
        out.append((node["minimum"] - 1, "below the minimum"))
    if "maximum" in node:
        out.append((node["maximum"] + 1, "above the maximum"))
    if "pattern" in node:
        out.append(("no match", "a string its pattern refuses"))
    other = {"boolean": "yes", "integer": "12x", "string": 12, "array": {"a": "b"}, "object": ["a"]}
    if kind in other:
        out.append((other[kind], f"a {type(other[kind]).__name__} for a {kind}"))
    return out


@st.composite
def mutants(draw: st.DrawFn) -> Mutant:
    schema = spec_schema()
    spec = copy.deepcopy(draw(specs()))
    places = _objects(spec, schema, "spec")
    where, value, node = draw(st.sampled_from(places))
    if isinstance(value, dict) and node.get("properties") and draw(st.booleans()):
        key = draw(st.sampled_from(["devicePlugn", "enabeld", "fooBar", "x"]))
        value[key] = draw(st.sampled_from([True, "x", {"enabled": True}]))
        return Mutant(spec, f"{where}.{key}", "an unknown field")
    if where == "spec":  # the root: any field of the schema instead (its parents made as needed)
        where, node = draw(st.sampled_from(_fields()))
    bad, how = draw(st.sampled_from(_wrong(node)))
    _put(spec, where, bad)
    return Mutant(spec, where, how)


@functools.cache
def _fields() -> list[tuple[str, Schema]]:
    """(path, schema) of every field reached through properties alone (no list items, no map values)."""
    out = []
    todo = [("spec", spec_schema())]
    while todo:
        path, node = todo.pop()
        for key, child in (node.get("properties") or {}).items():
            out.append((f"{path}.{key}", child))
            todo.append((f"{path}.{key}", child))
    return sorted(out, key=lambda f: f[0])


def _put(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at a `spec.a.b[0].c` path, making missing mappings on the way."""
    parts: list[str | int] = []
    for piece in path.removeprefix("spec.").split("."):
        name, *indexes = piece.split("[")
        parts.append(name)
        parts += [int(i.rstrip("]")) for i in indexes]
    node: Any = spec
    for part in parts[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[parts[-1]] = value
