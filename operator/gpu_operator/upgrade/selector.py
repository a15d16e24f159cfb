"""Kubernetes label selectors in their string form (pure).

Supports what `kubectl -l` and upstream's `podSelector` fields accept: equality-based requirements
(`k=v`, `k==v`, `k!=v`) and set-based ones (`k in (a,b)`, `k notin (a,b)`, `k`, `!k`), joined by commas
(AND). As in Kubernetes, `!=` and `notin` also match objects that lack the key. An empty selector
matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# A label key: optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")

_SET_RE = re.compile(r"^(?P<key>[^\s=!(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^\s=!(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s=!(),]*)$")


class SelectorError(ValueError):
    """A selector string that does not parse."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists" ("=" is "in" with one value, "!=" is "notin")
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(current))
    return parts


def _key(key: str, text: str) -> str:
    if not _KEY_RE.match(key):
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _value(value: str, text: str) -> str:
    if not _VALUE_RE.match(value):
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


def parse_selector(text: str) -> Selector:
    """Parse a label selector string; raise SelectorError naming the offending part."""
    if not text.strip():
        return Selector()
    reqs: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"empty requirement in selector {text!r}")
        if part.startswith("!"):
            reqs.append(Requirement(_key(part[1:].strip(), text), "!exists"))
            continue
        m = _SET_RE.match(part)
        if m:
            values = frozenset(_value(v.strip(), text) for v in m["values"].split(","))
            if not m["values"].strip():
                raise SelectorError(f"empty value set in selector {text!r}")
            reqs.append(Requirement(_key(m["key"], text), m["op"], values))
            continue
        m = _EQ_RE.match(part)
        if m:
            op = "notin" if m["op"] == "!=" else "in"
            reqs.append(Requirement(_key(m["key"], text), op, frozenset({_value(m["value"], text)})))
            continue
        if re.fullmatch(r"[^\s=!(),]+", part):
            reqs.append(Requirement(_key(part, text), "exists"))
            continue
        raise SelectorError(f"cannot parse {part!r} in selector {text!r}")
    return Selector(tuple(reqs))
