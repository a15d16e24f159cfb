"""The version matrix (data/version-matrix.yaml) and the rules that read it (pure).

`check()` says whether a driver version can run on a GPU architecture with a kernel module type; every
refusal names its rule and the matrix row it comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

DATA_FILE = "version-matrix.yaml"
MODULE_TYPES = ("auto", "open", "proprietary")


@cache
def data() -> dict[str, Any]:
    text = (resources.files("gpu_operator") / "data" / DATA_FILE).read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # GFD's nvidia.com/gpu.family value
    compute: tuple[str, ...]
    open_modules: bool
    proprietary: bool
    min_branch: int | None
    last_branch: int | None
    source: str


@cache
def architectures() -> dict[str, Architecture]:
    out = {}
    for row in data()["architectures"]:
        out[row["name"]] = Architecture(
            name=row["name"],
            family=row["family"],
            compute=tuple(row["compute"]),
            open_modules=bool(row["open_modules"]),
            proprietary=bool(row["proprietary"]),
            min_branch=row.get("min_branch"),
            last_branch=row.get("last_branch"),
            source=row["source"],
        )
    return out


@cache
def devices() -> dict[str, tuple[str, str]]:
    """PCI device ID (4 lower-case hex digits, vendor 10de) -> (architecture, product)."""
    out = {}
    for row in data()["devices"]:
        for device, product in row["ids"].items():
            out[str(device).lower()] = (row["architecture"], str(product))
    return out


@dataclass(frozen=True)
class Product:
    name: str
    architecture: str
    ids: frozenset[str]  # PCI device IDs
    gfd_product: re.Pattern[str]  # matched at the start of GFD's gpu.product label
    open_only: bool
    min_version: str | None  # the oldest full driver version (x.y.z) that supports it
    source: str


@cache
def products() -> dict[str, Product]:
    return {
        row["product"]: Product(
            name=row["product"],
            architecture=row["architecture"],
            ids=frozenset(str(i).lower() for i in row["ids"]),
            gfd_product=re.compile(row["gfd_product"]),
            open_only=bool(row.get("open_only")),
            min_version=str(row["min_version"]) if row.get("min_version") else None,
            source=row["source"],
        )
        for row in data().get("products") or []
    }


@cache
def products_of(devices: tuple[str, ...], gfd_product: str) -> tuple[str, ...]:
    """The product rows a node's GPUs match: by PCI device ID when the node's device IDs are known, else by GFD's
    gpu.product label."""
    if devices:
        return tuple(p.name for p in products().values() if p.ids.intersection(devices))
    return tuple(p.name for p in products().values() if gfd_product and p.gfd_product.match(gfd_product))


def architecture_of_compute(major: int, minor: int) -> str | None:
    """GFD's rule (getArchFamily, k8s-device-plugin v0.20.0): compute capability -> family."""
    family = {3: "kepler", 5: "maxwell", 6: "pascal", 9: "hopper", 10: "blackwell", 12: "blackwell"}.get(major)
    if major == 7:
        family = "volta" if minor < 5 else "turing"
    elif major == 8:
        family = "ampere" if minor < 9 else "ada-lovelace"
    return architecture_of_family(family or "")


@cache
def architecture_of_family(family: str) -> str | None:
    return next((a.name for a in architectures().values() if a.family == family), None)


def branch_of(version: str) -> int | None:
    """The driver branch of a version (595.91.07 -> 595); None for a digest or an unknown form."""
    m = re.match(r"^(\d{3})(\.\d+)*$", version.strip())
    return int(m.group(1)) if m else None


def full_version(version: str) -> tuple[int, int, int] | None:
    """A full driver version as numbers (570.133.20 -> (570, 133, 20)); None for a bare branch or another form."""
    m = re.match(r"^(\d{3})\.(\d+)\.(\d+)$", version.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


@dataclass(frozen=True)
class Branch:
    branch: int
    max_cuda: str
    eol: str
    source: str


@cache
def branches() -> dict[int, Branch]:
    return {
        int(r["branch"]): Branch(int(r["branch"]), str(r["max_cuda"]), str(r.get("eol") or ""), r["source"])
        for r in data()["branches"]
    }


def kernel_module_type(requested: str, branch: int, archs: tuple[str, ...]) -> str:
    """What the driver container installs for `requested` on a node with these GPU architectures.

    auto: from R570 nvidia-installer recommends open when every GPU supports it; before, the driver containers
    install proprietary (R560/R565's read no KERNEL_MODULE_TYPE, older branches fall back to proprietary)."""
    km = data()["kernel_modules"]
    if requested in ("open", "proprietary"):
        return requested
    if branch >= int(km["no_proprietary_from_branch"]):
        return "open"  # the only flavor there is
    if branch < int(km["auto_from_branch"]):
        return "proprietary"
    known = [architectures()[a] for a in archs if a in architectures()]
    if known and any(not a.open_modules for a in known):
        return "proprietary"
    return "open"


@dataclass(frozen=True)
class Refusal:
    rule: str  # a short rule id
    message: str


@cache
def check(
    version: str, requested_type: str, archs: tuple[str, ...], product_rows: tuple[str, ...] = (), asked: str = ""
) -> tuple[str | None, Refusal | None]:
    """(resolved kernel module type, refusal or None) for a driver version on GPUs of these architectures, and of
    these product rows (products_of). `asked`: what asks for `requested_type`, as a refusal names it (default
    "kernelModuleType <requested_type>").

    An unknown version (a digest) or no known architecture is not checked: (None, None)."""
    asked = asked or f"kernelModuleType {requested_type}"
    branch = branch_of(version)
    known = tuple(a for a in archs if a in architectures())
    if branch is None or not known:
        return None, None
    module_type = kernel_module_type(requested_type, branch, known)
    for name in known:
        arch = architectures()[name]
        if arch.last_branch is not None and branch > arch.last_branch:
            return module_type, Refusal(
                "architecture-dropped",
                f"driver {version} (R{branch}) does not support {name} GPUs: R{arch.last_branch} is the last "
                f"branch for {name} [{arch.source}]",
            )
        if arch.min_branch is not None and branch < arch.min_branch:
            return module_type, Refusal(
                "architecture-too-new",
                f"driver {version} (R{branch}) predates {name} GPUs: they need R{arch.min_branch} or newer "
                f"[{arch.source}]",
            )
        if module_type == "open" and not arch.open_modules:
            return module_type, Refusal(
                "open-modules-unsupported",
                f"{asked} installs open kernel modules, which do not support {name} GPUs "
                f"(proprietary only) [{arch.source}]",
            )
        if module_type == "proprietary" and not arch.proprietary:
            return module_type, Refusal(
                "proprietary-modules-unsupported",
                f"{asked} installs proprietary kernel modules; {name} GPUs need the open "
                f"ones [{arch.source}]",
            )
    for product in (products()[p] for p in product_rows if p in products()):
        if module_type == "proprietary" and product.open_only:
            return module_type, Refusal(
                "proprietary-modules-unsupported",
                f"{asked} installs proprietary kernel modules; {product.name} GPUs need "
                f"the open ones [{product.source}]",
            )
        full, least = full_version(version), full_version(product.min_version or "")
        if full is not None and least is not None and full < least:
            return module_type, Refusal(
                "version-too-old",
                f"driver {version} predates {product.name} GPUs: they need {product.min_version} or newer "
                f"[{product.source}]",
            )
    km = data()["kernel_modules"]
    if module_type == "proprietary" and branch >= int(km["no_proprietary_from_branch"]):
        return module_type, Refusal(
            "proprietary-modules-not-offered",
            f"driver {version} (R{branch}) has no proprietary kernel modules (open only from "
            f"R{km['no_proprietary_from_branch']} on) [{km['proprietary_source']}]",
        )
    if module_type == "open" and branch < int(km["open_from_branch"]):
        return module_type, Refusal(
            "open-modules-too-old",
            f"driver {version} (R{branch}) has no open kernel modules (from R{km['open_from_branch']} on) "
            f"[{km['source']}]",
        )
    return module_type, None


def latest_release() -> dict[str, Any]:
    """The newest operator release in the matrix (the first row)."""
    release: dict[str, Any] = data()["releases"][0]
    return release
