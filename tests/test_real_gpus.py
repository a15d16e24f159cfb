"""What real GPUs report, checked against the tables the operator decides with.

tests/fixtures/nvidia-smi/ holds nvidia-smi's own output, captured on real hardware (the file says where and when):
the device ID, memory and compute capability GFD and NFD would publish, and the GPU's MIG instance profiles with
their placements, which the MIG table (data/mig-layouts.yaml) must match and every default layout must fit.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from gpu_operator import gpu_identity, mig, mig_layouts

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"
_PROFILE_ROW = re.compile(r"^\|\s+\d+\s+MIG\s+(\S+)\s+(\d+)\s+\d+/(\d+)\s")
_PLACEMENTS = re.compile(r"^GPU\s+\d+ Profile ID\s+(\d+) Placements?\s*: \{([\d,]+)\}:(\d+)$")


class Smi:
    """One fixture: the query line's fields, MIG profiles (name -> (profile ID, instances)) and placements
    (profile ID -> (allowed start slices, slices taken))."""

    def __init__(self, text: str) -> None:
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        header = [h.strip() for h in lines[0].split(",")]
        self.query = dict(zip(header, (v.strip() for v in lines[1].split(",")), strict=True))
        self.profiles: dict[str, tuple[int, int]] = {}
        self.placements: dict[int, tuple[tuple[int, ...], int]] = {}
        for line in lines[2:]:
            if m := _PROFILE_ROW.match(line):
                self.profiles[m.group(1)] = (int(m.group(2)), int(m.group(3)))
            elif m := _PLACEMENTS.match(line):
                starts = tuple(int(s) for s in m.group(2).split(","))
                self.placements[int(m.group(1))] = (starts, int(m.group(3)))

    def fits(self, devices: dict[str, int]) -> bool:
        """Whether the driver could place these MIG devices on one GPU at once (no two share a memory slice)."""
        wanted = sorted(
            (self.placements[self.profiles[p][0]] for p, n in devices.items() for _ in range(n)),
            key=lambda placement: -placement[1],
        )

        def place(i: int, used: frozenset[int]) -> bool:
            if i == len(wanted):
                return True
            starts, size = wanted[i]
            for start in starts:
                span = frozenset(range(start, start + size))
                if not span & used and place(i + 1, used | span):
                    return True
            return False

        return place(0, frozenset())


FILES = sorted(FIXTURES.glob("*.txt"))


@pytest.fixture(params=FILES, ids=[f.stem for f in FILES])
def smi(request: pytest.FixtureRequest) -> Smi:
    return Smi(request.param.read_text())


def test_every_fixture_parses_into_profiles_and_their_placements(smi: Smi) -> None:
    assert smi.query["pci.device_id"].endswith("10DE")
    assert smi.profiles and {pid for pid, _ in smi.profiles.values()} == set(smi.placements)


def test_the_mig_table_has_the_profiles_the_gpu_reports(smi: Smi) -> None:
    gpu = mig_layouts.gpu_for(smi.query["pci.device_id"])
    assert gpu is not None, smi.query["name"]
    assert dict(gpu.profiles) == {name: count for name, (_, count) in smi.profiles.items()}


def test_every_default_layout_for_the_gpu_fits_its_placements(smi: Smi) -> None:
    device = smi.query["pci.device_id"]
    layouts = mig_layouts.layouts_for(device)
    assert mig_layouts.BALANCED in layouts
    checked = 0
    for layout in layouts:
        devices = mig_layouts.layout_devices(layout, device)
        assert devices is not None, layout
        assert smi.fits(devices), (layout, devices)
        checked += 1
    assert checked >= len(smi.profiles)


def test_the_placement_check_refuses_what_the_gpu_cannot_hold(smi: Smi) -> None:
    # One more of a profile than the GPU reports does not fit (+me profiles excepted: their limit is the one set
    # of media engines, not memory slices), and neither do the largest two profiles together.
    for name, (_, count) in smi.profiles.items():
        if "+me" not in name:
            assert not smi.fits({name: count + 1}), name
    largest = sorted(smi.profiles, key=lambda p: -smi.placements[smi.profiles[p][0]][1])[:2]
    assert not smi.fits({largest[0]: 1, largest[1]: 1})


def test_the_slice_check_agrees_with_the_placements_on_every_combination(smi: Smi) -> None:
    """mig_layouts.fits (per-profile counts, then compute and memory slice sums) accepts exactly what the GPU's
    placements hold, for every combination of its profiles within their counts: it refuses nothing valid."""
    gpu = mig_layouts.gpu_for(smi.query["pci.device_id"])
    assert gpu is not None
    names = list(gpu.profiles)
    checked = 0
    for counts in itertools.product(*(range(gpu.profiles[p] + 1) for p in names)):
        devices = {p: n for p, n in zip(names, counts, strict=True) if n}
        assert mig_layouts.fits(gpu, devices) == smi.fits(devices), devices
        checked += 1
    assert checked > 1000


def test_the_gpu_is_identified_from_nfd_before_a_driver_and_from_gfd_after(smi: Smi) -> None:
    device = smi.query["pci.device_id"].lower().removeprefix("0x")[:4]
    nfd = {f"feature.node.kubernetes.io/pci-0302_10de_{device}.present": "true"}
    before = gpu_identity.identify(nfd)
    major, minor = smi.query["compute_cap"].split(".")
    product = smi.query["name"].replace(" ", "-")  # as GFD writes the product label
    gfd = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.compute.major": major,
           "nvidia.com/gpu.compute.minor": minor}
    after = gpu_identity.identify(gfd)
    assert before.known and after.known
    assert before.architectures == after.architectures
    # The MIG table's group is the same whether found by GFD's product name or by NFD's device ID.
    assert mig.gpu_of_product(product) == mig_layouts.gpu_for(smi.query["pci.device_id"])
