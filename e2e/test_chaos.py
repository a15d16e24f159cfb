"""End-to-end: the short variant of the chaos script (e2e/chaos.py), one seeded run of every scenario.

The module runs its own cluster: its faults restart the API server and etcd. Each test injects one fault and
checks the invariants afterwards (rollout complete, nothing cordoned or paused, no eviction outside the policy,
the PodDisruptionBudget held, no operator writes over a quiet window, the operator's writes found in the audit log,
an install or upgrade SIGKILLed before it converged); `python -m e2e.chaos --runs 20` runs more.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from e2e.chaos import SCENARIOS, Chaos

SEED = 13
WINDOW_S = 5.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    env = Chaos(tmp_path_factory.mktemp("chaos"), random.Random(SEED), window=WINDOW_S)
    try:
        env.up()
        yield env
    finally:
        env.down()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_recovers_with_its_invariants_holding(chaos: Chaos, scenario: str) -> None:
    result = chaos.run(scenario)
    print(f"\n{scenario}: recovered in {result.recover_s:.1f}s, {result.writes} writes [{result.fault}]")
    assert not result.violations, f"{result.fault}:\n" + "\n".join(result.violations)
