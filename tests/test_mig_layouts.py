"""The MIG table (gpu_operator/data/mig-layouts.yaml) and the default mig-parted layouts built from it."""

from __future__ import annotations

import re

import pytest
import yaml

from gpu_operator import mig
from gpu_operator import mig_layouts as m

# Every device ID in upstream GPU Operator v26.7.0's default MIG config
# (assets/state-mig-manager/0400_configmap.yaml, the device-filter lists of all-balanced and all-1g.*).
UPSTREAM_DEVICE_IDS = [
    "0x233010DE", "0x233110DE", "0x232210DE", "0x20B210DE", "0x20B510DE", "0x20F310DE", "0x20F510DE", "0x232410DE",
    "0x20B010DE", "0x20B110DE", "0x20F110DE", "0x20F610DE", "0x294110DE", "0x2BB510DE", "0x290110DE", "0x234810DE",
    "0x233510DE", "0x233B10DE", "0x232110DE", "0x233A10DE", "0x20B710DE", "0x234210DE", "0x233D10DE", "0x20B610DE",
    "0x232910DE", "0x318210DE", "0x31C210DE",
]  # fmt: skip

# Every layout name of that same upstream config.
UPSTREAM_LAYOUTS = [
    "all-1g.10gb", "all-1g.10gb.me", "all-1g.12gb", "all-1g.12gb.me", "all-1g.18gb", "all-1g.18gb.me", "all-1g.20gb",
    "all-1g.23gb", "all-1g.23gb.me", "all-1g.24gb", "all-1g.24gb-me", "all-1g.24gb.gfx", "all-1g.24gb.me",
    "all-1g.24gb.me.all", "all-1g.34gb", "all-1g.34gb.me", "all-1g.35gb", "all-1g.35gb.me", "all-1g.36gb",
    "all-1g.45gb", "all-1g.47gb", "all-1g.5gb", "all-1g.5gb.me", "all-1g.67gb", "all-1g.6gb", "all-1g.6gb.me",
    "all-1g.70gb", "all-2g.10gb", "all-2g.12gb", "all-2g.12gb.me", "all-2g.20gb", "all-2g.24gb", "all-2g.35gb",
    "all-2g.36gb", "all-2g.45gb", "all-2g.47gb", "all-2g.48gb", "all-2g.48gb-me", "all-2g.48gb.gfx",
    "all-2g.48gb.me.all", "all-2g.67gb", "all-2g.70gb", "all-3g.135gb", "all-3g.139gb", "all-3g.20gb", "all-3g.40gb",
    "all-3g.47gb", "all-3g.48gb", "all-3g.71gb", "all-3g.72gb", "all-3g.90gb", "all-3g.93gb", "all-3g.95gb",
    "all-4g.135gb", "all-4g.139gb", "all-4g.20gb", "all-4g.24gb", "all-4g.40gb", "all-4g.47gb", "all-4g.48gb",
    "all-4g.71gb", "all-4g.72gb", "all-4g.90gb", "all-4g.93gb", "all-4g.95gb", "all-4g.96gb", "all-4g.96gb.gfx",
    "all-7g.141gb", "all-7g.144gb", "all-7g.180gb", "all-7g.186gb", "all-7g.189gb", "all-7g.269gb", "all-7g.278gb",
    "all-7g.40gb", "all-7g.80gb", "all-7g.94gb", "all-7g.96gb", "all-balanced", "all-disabled", "all-enabled",
]  # fmt: skip

PROFILE = re.compile(r"^(\d+)g\.(\d+)gb")


def slices(profile: str) -> int:
    match = PROFILE.match(profile)
    assert match, profile
    return int(match.group(1))


def test_mig_table_covers_every_upstream_device_id() -> None:
    covered = {d for g in m.gpus() for d in g.device_ids}
    assert sorted(set(UPSTREAM_DEVICE_IDS) - covered) == []


def test_device_ids_are_unique_and_in_mig_parted_spelling() -> None:
    ids = [d for g in m.gpus() for d in g.device_ids]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"0x[0-9A-F]{4}10DE", d) for d in ids), ids


def test_default_layouts_have_every_upstream_layout_name() -> None:
    assert sorted(m.default_layouts()) == sorted(UPSTREAM_LAYOUTS)


@pytest.mark.parametrize(
    ("device_id", "balanced"),
    [
        ("0x233510DE", {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}),  # H200 141GB
        ("0x233B10DE", {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}),  # H200 NVL
        ("0x290110DE", {"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1}),  # B200
        ("0x294110DE", {"1g.23gb": 2, "2g.47gb": 1, "3g.93gb": 1}),  # GB200
        ("0x233010DE", {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}),  # H100 80GB
        ("0x20B210DE", {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}),  # A100 80GB
        ("0x20B010DE", {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}),  # A100 40GB
        ("0x20B710DE", {"1g.6gb": 2, "2g.12gb": 1}),  # A30
        ("0x2BB510DE", {"1g.24gb": 2, "2g.48gb": 1}),  # RTX PRO 6000
    ],
)
def test_balanced_layout_per_gpu(device_id: str, balanced: dict[str, int]) -> None:
    assert m.layout_devices("all-balanced", device_id) == balanced


def test_a_profile_shared_by_gpus_with_different_counts_is_filtered_by_device_id() -> None:
    assert m.layout_devices("all-1g.10gb", "0x233010DE") == {"1g.10gb": 7}  # H100 80GB
    assert m.layout_devices("all-1g.10gb", "0x20B010DE") == {"1g.10gb": 4}  # A100 40GB
    entries = m.default_layouts()["all-1g.10gb"]
    assert len(entries) == 2 and all(e.device_filter for e in entries)


def test_all_1g_35gb_leaves_out_the_h200_nvl_as_upstream() -> None:
    """Upstream's default config (gpu-operator assets/state-mig-manager/0400_configmap.yaml, mig-parted's
    hopper-blackwell example) filters all-1g.35gb to the H200 141GB and GB300; ours also gave it to the H200 NVL
    (0x233B10DE), which its all-balanced treats as an H200."""
    assert [e.device_filter for e in m.default_layouts()["all-1g.35gb"]] == [("0x233510DE",), ("0x31C210DE",)]
    assert m.layout_devices("all-1g.35gb", "0x233B10DE") is None
    assert m.layout_devices("all-1g.35gb", "0x233510DE") == {"1g.35gb": 4}
    nvl = m.gpu_for("0x233B10DE")
    assert nvl is not None and mig.layout_entries(nvl, "all-1g.35gb") is None
    assert m.fits(nvl, {"1g.35gb": 4})  # the GPU holds them: a user's layout may ask for them


def test_a_layout_is_not_valid_on_a_gpu_without_its_profile() -> None:
    assert m.layout_devices("all-1g.18gb", "0x233010DE") is None  # an H200 profile on an H100
    assert m.layout_devices("all-1g.10gb", "0x290110DE") is None
    assert m.layout_devices("no-such-layout", "0x233010DE") is None
    assert m.layout_devices("all-disabled", "0x1EB810DE") is None  # T4: not MIG-capable


def test_every_gpu_gets_disabled_enabled_balanced_and_one_layout_per_profile() -> None:
    for gpu in m.gpus():
        device = gpu.device_ids[0]
        valid = m.layouts_for(device)
        assert {"all-disabled", "all-enabled", "all-balanced"} <= set(valid), gpu.name
        for profile, count in gpu.profiles.items():
            expected = None if profile in gpu.not_in_defaults else {profile: count}
            assert m.layout_devices(m.layout_name(profile), device) == expected, (gpu.name, profile)


def test_profile_counts_fit_the_gpu() -> None:
    """No layout asks for more compute slices than the GPU has (7, or 4 on A30 and RTX PRO 6000)."""
    for gpu in m.gpus():
        total = max(slices(p) for p in gpu.profiles)
        for profile, count in gpu.profiles.items():
            assert slices(profile) * count <= total, (gpu.name, profile, count)
        assert sum(slices(p) * n for p, n in gpu.balanced.items()) == total, gpu.name
        assert set(gpu.balanced) <= set(gpu.profiles), gpu.name


def test_every_default_layout_passes_the_slice_check_on_the_gpus_with_its_profiles() -> None:
    """The check of every entry that selects a GPU, and of the GPU's compute and memory slices, refuses a default
    layout only where no entry selects the GPU or one names a profile the GPU lacks (as mig-parted does)."""
    for gpu in m.gpus():
        assert gpu.compute_slices == max(slices(p) for p in gpu.profiles), gpu.name
        for name, entries in m.default_layouts().items():
            chosen = [e for e in entries if m.selects(e, gpu.device_ids)]  # none: filtered for other GPUs
            has_profiles = bool(chosen) and all(set(e.mig_devices) <= set(gpu.profiles) for e in chosen)
            assert (bool(chosen) and all(m.fits(gpu, e.mig_devices) for e in chosen)) == has_profiles, (gpu.name, name)
            assert (mig.layout_entries(gpu, name) is not None) == has_profiles, (gpu.name, name)
            for device in gpu.device_ids:
                assert (m.layout_devices(name, device) is not None) == has_profiles, (gpu.name, name, device)


def test_default_config_is_valid_mig_parted_yaml() -> None:
    config = yaml.safe_load(m.default_config_yaml())
    assert config["version"] == "v1"
    layouts = config["mig-configs"]
    assert list(layouts) == list(m.default_layouts())
    assert layouts["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    assert layouts["all-enabled"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {}}]
    for name, entries in layouts.items():
        for entry in entries:
            assert entry["devices"] == "all", name
            assert set(entry) <= {"device-filter", "devices", "mig-enabled", "mig-devices"}, name
    h200 = next(e for e in layouts["all-balanced"] if "0x233510DE" in e["device-filter"])
    assert h200["mig-devices"] == {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}


@pytest.mark.parametrize(
    ("profile", "name"),
    [("1c.1g.10gb", "1g.10gb"), ("01g.010gb", "1g.10gb"), ("1c.2g.20gb", "1c.2g.20gb"), ("7c.7g.80gb", "7g.80gb"),
     ("1g.24gb+me.all", "1g.24gb+me.all"), ("1g.24gb-me", "1g.24gb-me"), ("1g.10gb+me,gfx", "1g.10gb+gfx,me")],
)
def test_profiles_are_named_as_mig_parted_matches_them(profile: str, name: str) -> None:
    """go-nvlib MigProfileInfo.Matches compares C, G, GB and the attributes, and String() drops `<C>c.` when C is G."""
    assert m.canonical(profile) == name


def test_device_ids_match_however_they_are_spelled() -> None:
    assert m.gpu_for("0x233a10de") is m.gpu_for("0x233A10DE") is not None
