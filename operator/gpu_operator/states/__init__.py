"""Operand states. Each module in this package defines `STATE`; its templates live in
`gpu_operator/templates/<state name>/`. Modules are discovered, so adding a state touches nothing else."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from .base import OperandState, RenderContext

__all__ = ["OperandState", "RenderContext", "all_states", "by_name"]


@cache
def all_states() -> tuple[OperandState, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.STATE)
    return tuple(sorted(found, key=lambda s: s.order))


def by_name(name: str) -> OperandState:
    for state in all_states():
        if state.name == name:
            return state
    raise KeyError(name)
