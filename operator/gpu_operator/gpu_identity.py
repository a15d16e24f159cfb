"""Which GPUs a node has, before any driver runs (pure).

In order: GPU feature discovery's labels (gpu.family, gpu.compute.major/minor, gpu.product), which exist only
once a driver ran; the PCI devices of NFD's NodeFeature object (nfd.k8s-sigs.io/v1alpha1, vendor and device
ID of every PCI device); NFD's labels when NFD is told to put the device ID in them
(`feature.node.kubernetes.io/pci-<class>_10de_<device>.present`, deviceLabelFields with `device`). Where those
device IDs are in the matrix and do not include GFD's architecture (a replaced GPU), the devices win; known devices
of other architectures than GFD's (a mixed node) are added to it. A node none of them identifies is "unknown, not
checked".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import matrix

NVIDIA_VENDOR = "10de"
GFD_FAMILY = "nvidia.com/gpu.family"
GFD_PRODUCT = "nvidia.com/gpu.product"
GFD_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
GFD_COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
_PCI_LABEL = re.compile(r"^feature\.node\.kubernetes\.io/pci-([0-9a-f_]+)\.present$")
_PCI_PREFIX = "feature.node.kubernetes.io/pci-"
_HEX4 = re.compile(r"^[0-9a-f]{4}$")


@dataclass(frozen=True)
class Identity:
    architectures: tuple[str, ...] = ()  # sorted; empty: unknown
    products: tuple[str, ...] = ()
    source: str = ""  # gfd | nodefeature | nfd-label | ""
    detail: str = ""  # what was seen when the GPU could not be identified
    product_rows: tuple[str, ...] = ()  # the version matrix's product rows it matches (matrix.products_of)

    @property
    def known(self) -> bool:
        return bool(self.architectures)

    def describe(self) -> str:
        if not self.known:
            return f"unknown, not checked ({self.detail})" if self.detail else "unknown, not checked"
        products = f" ({', '.join(self.products)})" if self.products else ""
        return f"{'+'.join(self.architectures)}{products} from {self.source}"


def device_ids_from_labels(labels: Mapping[str, str]) -> tuple[str, ...]:
    """NVIDIA PCI device IDs in NFD labels whose device label fields include the device ID: of display controllers
    (class 03xx) where the label names the class, as from a NodeFeature object (an HGX board's NVSwitches are
    class 0680 and would make its GPUs look mixed)."""
    out = set()
    for key, value in labels.items():
        if not key.startswith(_PCI_PREFIX):
            continue
        m = _PCI_LABEL.match(key)
        if not m or value != "true":
            continue
        parts = m.group(1).split("_")
        if NVIDIA_VENDOR not in parts:
            continue
        at = parts.index(NVIDIA_VENDOR)
        if at and _HEX4.match(parts[at - 1]) and not parts[at - 1].startswith("03"):
            continue  # a class field, not a display controller's
        after = parts[at + 1 :]
        if after and _HEX4.match(after[0]):
            out.add(after[0])
    return tuple(sorted(out))


def device_ids_from_node_feature(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """NVIDIA display-class PCI device IDs in a NodeFeature object (spec.features.instances["pci.device"])."""
    instances = ((obj.get("spec") or {}).get("features") or {}).get("instances") or {}
    out = set()
    for element in (instances.get("pci.device") or {}).get("elements") or []:
        attrs = element.get("attributes") or {}
        if str(attrs.get("vendor", "")).lower() != NVIDIA_VENDOR:
            continue
        if not str(attrs.get("class", "03")).startswith("03"):  # display controllers only (no NVSwitch, bridges)
            continue
        device = str(attrs.get("device", "")).lower()
        if _HEX4.match(device):
            out.add(device)
    return tuple(sorted(out))


def node_of_feature(obj: Mapping[str, Any]) -> str:
    """The node a NodeFeature object describes (NFD's node-name label, else the object's name)."""
    meta = obj.get("metadata") or {}
    return str((meta.get("labels") or {}).get("nfd.node.kubernetes.io/node-name") or meta.get("name", ""))


def _from_devices(devices: Iterable[str], source: str) -> Identity:
    known = matrix.devices()
    ids = tuple(sorted(set(devices)))
    archs = sorted({known[d][0] for d in ids if d in known})
    if not archs:
        return Identity(detail=f"PCI device {', '.join('0x' + d for d in ids)} not in the version matrix")
    products = tuple(sorted({known[d][1] for d in ids if d in known}))
    return Identity(tuple(archs), products, source, product_rows=matrix.products_of(ids, ""))


def identify(
    labels: Mapping[str, str], pci_devices: Iterable[str] = (), label_devices: tuple[str, ...] | None = None
) -> Identity:
    """The node's GPUs from its labels and its NodeFeature devices (lower-case device IDs); `label_devices`:
    device_ids_from_labels(labels), when the caller has it already."""
    pci = tuple(pci_devices)
    family = labels.get(GFD_FAMILY, "")
    arch = matrix.architecture_of_family(family) if family else None
    if arch is None:
        try:
            major, minor = int(labels[GFD_COMPUTE_MAJOR]), int(labels[GFD_COMPUTE_MINOR])
        except (KeyError, ValueError):
            pass
        else:
            arch = matrix.architecture_of_compute(major, minor)
    if label_devices is None:
        label_devices = device_ids_from_labels(labels)
    misses = []
    by_devices = None
    for devices, source in ((pci, "nodefeature"), (label_devices, "nfd-label")):
        if devices:
            found = _from_devices(devices, source)
            if found.known:
                by_devices = found
                break
            misses.append(found.detail)
    # GFD's labels outlive a GPU swap (only GFD rewrites them, and it needs a driver): where the devices NFD reports
    # now are known and do not include GFD's architecture, the devices decide. (An unknown device does not: the
    # matrix lists data-center parts, and GFD's labels are right for a workstation GPU it does not list.)
    seen = {*pci, *label_devices}
    if arch is not None and (by_devices is None or arch in by_devices.architectures):
        product = labels.get(GFD_PRODUCT, "")
        rows = matrix.products_of(tuple(sorted(seen)), product)
        # GFD labels a node from one of its GPUs: a mixed node's others are its known devices of other architectures.
        known = matrix.devices()
        others = {known[d] for d in seen if d in known and known[d][0] != arch}
        archs = tuple(sorted({arch, *(a for a, _ in others)}))
        products = ((product,) if product else ()) + tuple(sorted({p for _, p in others}))
        return Identity(archs, products, "gfd", product_rows=rows)
    if by_devices is not None:
        return by_devices
    if family:
        misses.insert(0, f"gpu.family {family} not in the version matrix")
    return Identity(detail="; ".join(misses) or "no GFD labels, NodeFeature devices or NFD device-ID labels yet")
