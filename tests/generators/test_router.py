"""Router: Thompson-sampling allocation over generator families.

Pure unit tests of arithmetic on small records; nothing to record.
"""

from __future__ import annotations

import dataclasses

import pytest

from crystalforge.core.errors import ConfigError
from crystalforge.generators.router import FamilyYield, Router

FAMILIES = ["substitution", "wyckoff"]


def test_better_yield_gets_more_samples() -> None:
    history = [
        FamilyYield(family="wyckoff", samples=40, survivors=4, round=0),
        FamilyYield(family="substitution", samples=40, survivors=30, round=0),
    ]
    allocation = Router().allocate(100, FAMILIES, history, seed=1)
    assert allocation.samples["substitution"] > allocation.samples["wyckoff"]
    assert allocation.samples["wyckoff"] >= 10  # the floor
    assert sum(allocation.samples.values()) == 100
    assert "substitution" in allocation.rationale
    assert "30/40 survived" in allocation.rationale


def test_yield_per_second_counts_when_timed() -> None:
    # Same survival rate, but wyckoff is ten times faster per sample.
    history = [
        FamilyYield(family="wyckoff", samples=50, survivors=25, seconds=5.0),
        FamilyYield(family="substitution", samples=50, survivors=25, seconds=50.0),
    ]
    allocation = Router().allocate(60, FAMILIES, history, seed=0)
    assert allocation.samples["wyckoff"] > allocation.samples["substitution"]
    assert "survivors/s" in allocation.rationale


def test_unavailable_family_gets_none() -> None:
    history = [
        FamilyYield(family="diffusion", samples=10, survivors=10),
        FamilyYield(family="wyckoff", samples=10, survivors=1),
    ]
    allocation = Router().allocate(30, ["wyckoff"], history, seed=0)
    assert allocation.samples["diffusion"] == 0
    assert allocation.samples["wyckoff"] == 30
    assert "diffusion: 0 samples (not available" in allocation.rationale
    empty = Router().allocate(30, [], history)
    assert sum(empty.samples.values()) == 0
    assert "no generator family" in empty.rationale


def test_prior_only_first_round_and_determinism() -> None:
    router = Router(prior_weights={"wyckoff": 1.0, "substitution": 1.0, "fake": 0.1})
    first = router.allocate(50, ["wyckoff", "substitution", "fake"], seed=3)
    assert first == router.allocate(50, ["wyckoff", "substitution", "fake"], seed=3)
    assert sum(first.samples.values()) == 50
    assert first.samples["fake"] < first.samples["wyckoff"]
    assert first.samples["fake"] >= 5  # floor
    assert "prior only" in first.rationale


def test_old_rounds_count_less() -> None:
    history = [
        FamilyYield(family="wyckoff", samples=100, survivors=90, round=0),
        FamilyYield(family="substitution", samples=100, survivors=10, round=0),
        FamilyYield(family="wyckoff", samples=20, survivors=0, round=5),
        FamilyYield(family="substitution", samples=20, survivors=18, round=5),
    ]
    allocation = Router(decay=0.3).allocate(40, FAMILIES, history, seed=0)
    assert allocation.samples["substitution"] > allocation.samples["wyckoff"]


def test_small_budget_and_bad_settings() -> None:
    allocation = Router().allocate(1, FAMILIES, seed=0)
    assert sum(allocation.samples.values()) == 1
    assert set(Router().allocate(0, FAMILIES).samples.values()) == {0}
    with pytest.raises(ConfigError, match="budget"):
        Router().allocate(-1, FAMILIES)
    with pytest.raises(ConfigError, match="min_share"):
        Router(min_share=2.0)
    with pytest.raises(ConfigError, match="prior weights"):
        Router(prior_weights={"wyckoff": 0.0})


def _remembered(family: str, samples: int, survivors: int, source: str, weight: float = 1.0):
    return FamilyYield(
        family=family, samples=samples, survivors=survivors, weight=weight, source=source
    )


PRIOR_FAVOURS_WYCKOFF = {"wyckoff": 1.0, "fake": 0.1}
MEMORY_FAVOURS_FAKE = [
    _remembered("fake", 40, 36, "r1"),
    _remembered("wyckoff", 40, 2, "r1"),
    _remembered("fake", 20, 17, "r2"),
    _remembered("wyckoff", 20, 1, "r2"),
]


def test_remembered_yields_shift_the_first_round() -> None:
    router = Router(prior_weights=PRIOR_FAVOURS_WYCKOFF)
    families = ["fake", "wyckoff"]
    fresh = router.allocate(40, families, seed=2)
    remembered = router.allocate(40, families, memory=MEMORY_FAVOURS_FAKE, seed=2)
    assert fresh.samples["wyckoff"] > fresh.samples["fake"]
    assert remembered.samples["fake"] > remembered.samples["wyckoff"]
    assert "memory: 53/60 survived in 2 earlier campaigns" in remembered.rationale
    assert "memory: 3/60 survived in 2 earlier campaigns" in remembered.rationale
    # Capped: 60 remembered samples, aged one round (x 0.7), count as memory_strength samples.
    assert f"counted as {router.memory_strength:.1f} samples" in remembered.rationale
    # Weight 0 and memory_strength 0 both mean "no memory".
    unweighted = [dataclasses.replace(y, weight=0.0) for y in MEMORY_FAVOURS_FAKE]
    assert router.allocate(40, families, memory=unweighted, seed=2).samples == fresh.samples
    off = Router(prior_weights=PRIOR_FAVOURS_WYCKOFF, memory_strength=0)
    assert off.allocate(40, families, memory=MEMORY_FAVOURS_FAKE, seed=2).samples == fresh.samples


def test_memory_cannot_drown_the_runs_own_rounds() -> None:
    # Memory says fake is far better (900 samples); this run's one round says the opposite.
    memory = [_remembered("fake", 900, 880, "r1"), _remembered("wyckoff", 900, 20, "r1")]
    this_run = [
        FamilyYield(family="fake", samples=20, survivors=2, round=0),
        FamilyYield(family="wyckoff", samples=20, survivors=16, round=0),
    ]
    router = Router(prior_weights={"wyckoff": 1.0, "fake": 1.0})
    capped = router.allocate(40, ["fake", "wyckoff"], this_run, memory=memory, seed=5)
    assert capped.samples["wyckoff"] > capped.samples["fake"]
    # Without the cap (the same records read as this run's own round) memory would win.
    uncapped = router.allocate(40, ["fake", "wyckoff"], [*this_run, *memory], seed=5)
    assert uncapped.samples["fake"] > uncapped.samples["wyckoff"]


def test_dissimilar_campaigns_count_less() -> None:
    router = Router(prior_weights={"wyckoff": 1.0, "fake": 1.0})
    # Few remembered samples, so the cap does not hide the weight.
    near = [_remembered("fake", 6, 6, "r1"), _remembered("wyckoff", 6, 0, "r1")]
    far = [dataclasses.replace(y, weight=0.1) for y in near]
    strong = router.allocate(20, ["fake", "wyckoff"], memory=near, seed=0)
    weak = router.allocate(20, ["fake", "wyckoff"], memory=far, seed=0)
    assert strong.scores["fake"] > weak.scores["fake"] > strong.scores["wyckoff"]
    assert strong.scores["wyckoff"] < weak.scores["wyckoff"]


def test_remembered_unavailable_family_and_bad_weight() -> None:
    memory = [_remembered("diffusion", 50, 50, "r1")]
    allocation = Router().allocate(10, ["wyckoff"], memory=memory, seed=0)
    assert allocation.samples == {**dict.fromkeys(allocation.samples, 0), "wyckoff": 10}
    assert "diffusion: 0 samples (not available" in allocation.rationale
    with pytest.raises(ConfigError, match="weight"):
        _remembered("fake", 1, 1, "r1", weight=-0.5)
    with pytest.raises(ConfigError, match="memory_strength"):
        Router(memory_strength=-1)
