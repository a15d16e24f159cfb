"""MIG-capable GPUs, their MIG profiles and the default mig-parted layouts.

The table is data (`data/mig-layouts.yaml`, with its sources); this module turns it into the layouts of the
default ConfigMap `default-mig-parted-config` and answers which layouts a GPU can take.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

DATA_FILE = "mig-layouts.yaml"
DISABLED = "all-disabled"
ENABLED = "all-enabled"
BALANCED = "all-balanced"


@dataclass(frozen=True)
class MigGPU:
    """A group of device IDs with the same MIG profiles."""

    name: str
    device_ids: tuple[str, ...]
    profiles: Mapping[str, int]  # profile -> how many fit on one GPU
    balanced: Mapping[str, int]
    compute_slices: int
    memory_slices: int
    not_in_defaults: tuple[str, ...] = ()  # profiles whose default `all-<profile>` leaves this GPU out (upstream's)


@dataclass(frozen=True)
class LayoutEntry:
    """One entry of a mig-parted layout: applies to every GPU, or to those whose ID is in device_filter."""

    mig_enabled: bool
    mig_devices: Mapping[str, int]
    device_filter: tuple[str, ...] = ()
    comment: str = ""
    devices: tuple[int, ...] | None = None  # GPU indices it applies to (mig-parted's `devices`); None: all


def selects(entry: LayoutEntry, device_ids: tuple[str, ...]) -> bool:
    """Whether the entry applies to a GPU with one of these device IDs (its device filter; a `devices` list of
    no index applies to none)."""
    if entry.devices == ():
        return False
    return not entry.device_filter or any(d in entry.device_filter for d in device_ids)


_SIZE = re.compile(r"^(?:\d+c\.)?(\d+)g\.(\d+)gb")
_PROFILE = re.compile(r"(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:([+-])(.+))?")


def canonical(profile: str) -> str:
    """A MIG profile name as mig-parted matches it (go-nvlib MigProfileInfo.Matches and String: numbers, attributes
    in any order, `<C>c.` only when C is not G): `1c.1g.10gb` -> `1g.10gb`. A name that does not parse is kept."""
    match = _PROFILE.fullmatch(profile)
    if match is None:
        return profile
    c, g, gb, sign, attributes = match.groups()
    name = f"{int(g)}g.{int(gb)}gb"
    if c is not None and int(c) != int(g):
        name = f"{int(c)}c.{name}"
    return name + (sign + ",".join(sorted(attributes.split(","))) if sign else "")


def compute_instance(profile: str) -> bool:
    """Whether a (canonical) profile is a compute instance of fewer slices than its GPU instance (`1c.2g.20gb`)."""
    return bool(re.match(r"\d+c\.", profile))


def fits(gpu: MigGPU, devices: Mapping[str, int]) -> bool:
    """Whether one GPU of this model holds these MIG devices at once: each GPU instance profile is the GPU's and
    within its own count, and together they take no more compute and memory slices than the GPU has (a profile
    `<N>g.<M>gb` takes N compute slices and M GB over one memory slice's share of the full profile's memory). The
    driver places instances by stricter rules, but on a real H200 these sums agree with its placements for every
    combination (tests/test_real_gpus.py).

    Compute instances `<C>c.<G>g.<M>gb` (C < G) share GPU instances `<G>g.<M>gb`, which mig-parted fills with
    them (pkg/mig/config SetMigConfig reuses the last GPU instance): they count as the fewest GPU instances that
    could hold them (G compute slices each, G // C compute instances of one size). Which compute-instance sizes a
    GPU instance offers is not checked: one NVML does not list is left to mig-manager."""
    instances: dict[str, int] = {}  # GPU instance profile -> how many
    shared: dict[str, dict[int, int]] = {}  # GPU instance profile -> compute slices -> compute instances
    for profile, n in devices.items():
        name = canonical(profile)
        match = _PROFILE.fullmatch(name)
        if not n:
            continue
        if match is None:
            return False
        if match.group(1) is None:
            instances[name] = instances.get(name, 0) + n
            continue
        c, g, gi = int(match.group(1)), int(match.group(2)), name.split(".", 1)[1]
        if not 0 < c < g:
            return False  # no GPU has such a compute instance
        sizes = shared.setdefault(gi, {})
        sizes[c] = sizes.get(c, 0) + n
    for gi, sizes in shared.items():
        g = int(gi.split("g.", 1)[0])
        least = max(-(-sum(c * n for c, n in sizes.items()) // g), *(-(-n // (g // c)) for c, n in sizes.items()))
        instances[gi] = instances.get(gi, 0) + least
    if any(gpu.profiles.get(p, 0) < n for p, n in instances.items()):
        return False
    taken = {p: _slices(gpu, p) for p in instances}
    compute = sum(taken[p][0] * n for p, n in instances.items())
    memory = sum(taken[p][1] * n for p, n in instances.items())
    return compute <= gpu.compute_slices and memory <= gpu.memory_slices


def _slices(gpu: MigGPU, profile: str) -> tuple[int, int]:
    """(compute, memory) slices a profile of this GPU takes."""
    full = max(_gb(p) for p in gpu.profiles)
    match = _SIZE.match(profile)
    assert match is not None, profile  # a profile of the table
    return int(match.group(1)), round(int(match.group(2)) * gpu.memory_slices / full)


def _gb(profile: str) -> int:
    match = _SIZE.match(profile)
    return int(match.group(2)) if match else 0


def normalize_id(device_id: str) -> str:
    """`0x233a10de` -> `0x233A10DE` (mig-parted compares device IDs as numbers; we compare strings)."""
    return "0x" + device_id.lower().removeprefix("0x").upper()


def layout_name(profile: str) -> str:
    """The layout that fills every GPU with one profile: `1g.10gb+me` -> `all-1g.10gb.me` (upstream's naming)."""
    return "all-" + profile.replace("+", ".")


@cache
def _data() -> dict[str, Any]:
    text = (resources.files("gpu_operator") / "data" / DATA_FILE).read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


@cache
def gpus() -> tuple[MigGPU, ...]:
    return tuple(
        MigGPU(
            name=g["name"],
            device_ids=tuple(normalize_id(d) for d in g["device_ids"]),
            profiles=dict(g["profiles"]),
            balanced=dict(g["balanced"]),
            compute_slices=g["slices"]["compute"],
            memory_slices=g["slices"]["memory"],
            not_in_defaults=tuple(g.get("not_in_defaults") or ()),
        )
        for g in _data()["gpus"]
    )


def unattributed_profiles() -> dict[str, int]:
    return dict(_data().get("unattributed") or {})


def gpu_for(device_id: str) -> MigGPU | None:
    wanted = normalize_id(device_id)
    return next((g for g in gpus() if wanted in g.device_ids), None)


def gpu_of_devices(devices: tuple[str, ...]) -> MigGPU | None:
    """The MIG GPU of a node's NVIDIA PCI device IDs (4 hex digits each, as NFD names them), when they are all
    of one MIG-capable model; else None."""
    found = [gpu_for(d + "10de") for d in devices]
    first = found[0] if found else None
    return first if first is not None and all(g is not None and g.name == first.name for g in found) else None


def _grouped(members: list[tuple[MigGPU, Mapping[str, int]]]) -> tuple[LayoutEntry, ...]:
    """One entry per distinct set of MIG devices; filtered by device ID only when the GPUs disagree."""
    groups: dict[tuple[tuple[str, int], ...], list[MigGPU]] = {}
    for gpu, devices in members:
        groups.setdefault(tuple(devices.items()), []).append(gpu)
    if len(groups) == 1:
        ((key, group),) = groups.items()
        return (LayoutEntry(True, dict(key), comment=", ".join(g.name for g in group)),)
    return tuple(
        LayoutEntry(
            True,
            dict(key),
            device_filter=tuple(d for g in group for d in g.device_ids),
            comment=", ".join(g.name for g in group),
        )
        for key, group in groups.items()
    )


@cache
def default_layouts() -> dict[str, tuple[LayoutEntry, ...]]:
    """Layout name -> entries, as in upstream's default config: every GPU's `all-<profile>`, and `all-balanced`."""
    out: dict[str, tuple[LayoutEntry, ...]] = {
        DISABLED: (LayoutEntry(False, {}),),
        ENABLED: (LayoutEntry(True, {}),),
    }
    profiles: dict[str, list[tuple[MigGPU, Mapping[str, int]]]] = {}
    for gpu in gpus():
        for profile, count in gpu.profiles.items():
            if profile not in gpu.not_in_defaults:
                profiles.setdefault(profile, []).append((gpu, {profile: count}))
    for profile, members in profiles.items():
        out[layout_name(profile)] = _grouped(members)
    for profile, count in unattributed_profiles().items():
        name = layout_name(profile)
        if name not in out:
            out[name] = (LayoutEntry(True, {profile: count}),)
    out[BALANCED] = _balanced_entries()
    return out


def generated_layouts(gpu: MigGPU) -> dict[str, tuple[LayoutEntry, ...]]:
    """The layouts mig-manager (v0.14 on) builds on a node of this GPU when no ConfigMap is named (mig-parted
    pkg/mig/builder buildMigConfigSpec): all-disabled, all-enabled, `all-<profile>` for every profile the GPU has
    (`not_in_defaults` too: that filter is the default ConfigMap's) and all-balanced; in the default config's order."""
    out: dict[str, tuple[LayoutEntry, ...]] = {
        DISABLED: (LayoutEntry(False, {}),),
        ENABLED: (LayoutEntry(True, {}),),
    }
    for profile, count in gpu.profiles.items():
        out[layout_name(profile)] = (LayoutEntry(True, {profile: count}, comment=gpu.name),)
    out[BALANCED] = (LayoutEntry(True, dict(gpu.balanced), comment=gpu.name),)
    return out


def _balanced_entries() -> tuple[LayoutEntry, ...]:
    """all-balanced differs per GPU, so every entry is filtered (GPUs with equal layouts share one)."""
    entries = _grouped([(g, g.balanced) for g in gpus()])
    if len(entries) == 1:  # a table of one GPU group: still name it
        only = entries[0]
        return (LayoutEntry(True, only.mig_devices, tuple(d for g in gpus() for d in g.device_ids), only.comment),)
    return entries


def layout_devices(layout: str, device_id: str) -> dict[str, int] | None:
    """The MIG devices a default layout creates on one GPU ({} = MIG off or none), or None: not valid on it.

    A layout is valid on a GPU when some of its entries select the GPU and the GPU holds the MIG devices of each
    (mig-parted applies every entry that selects a GPU, and fails a profile the GPU does not have or devices it
    cannot place). `all-disabled`/`all-enabled` fit every MIG-capable GPU in the table.
    """
    gpu = gpu_for(device_id)
    chosen = [e for e in default_layouts().get(layout, ()) if selects(e, (normalize_id(device_id),))]
    if gpu is None or not chosen or not all(fits(gpu, e.mig_devices) for e in chosen):
        return None
    return dict(chosen[-1].mig_devices)


def layouts_for(device_id: str) -> list[str]:
    """Names of the default layouts valid on a GPU, in ConfigMap order."""
    return [name for name in default_layouts() if layout_devices(name, device_id) is not None]


def _q(value: str) -> str:
    return '"' + value + '"'


@cache
def default_config_yaml() -> str:
    """The mig-parted config of `default-mig-parted-config` (key config.yaml), commented with GPU names."""
    lines = ["version: v1", "mig-configs:"]
    for name, entries in default_layouts().items():
        lines.append(f"  {name}:")
        for entry in entries:
            if entry.comment:
                lines.append(f"    # {entry.comment}")
            lead = "    - "
            if entry.device_filter:
                lines.append(f"{lead}device-filter: [{', '.join(_q(d) for d in entry.device_filter)}]")
                lead = "      "
            lines.append(f"{lead}devices: all")
            lines.append(f"      mig-enabled: {'true' if entry.mig_enabled else 'false'}")
            if entry.mig_enabled and not entry.mig_devices:
                lines.append("      mig-devices: {}")
            elif entry.mig_devices:
                lines.append("      mig-devices:")
                lines += [f"        {_q(p)}: {n}" for p, n in entry.mig_devices.items()]
        lines.append("")
    return "\n".join(lines)
