"""Router: Thompson-sampling allocation over generator families.

Pure unit tests of arithmetic on small records; nothing to record.
"""

from __future__ import annotations

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
