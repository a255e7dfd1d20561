"""Earlier campaigns' generator yields: parsing, similarity weights and the report line.

Pure functions on small dicts (no store); the store path is in test_router_memory.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from crystalforge.memory.yields import (
    MAX_DISTANCE,
    OTHER_SYSTEM_WEIGHT,
    CampaignYields,
    GeneratorTotals,
    describe,
    parse_yields,
    totals_of_rounds,
    weigh_campaigns,
)

SPEC = {"chemical_system": ["O", "Mn", "Li"]}


def _campaign(run_id: str, system: list[str] | None, distance: float, yields: object) -> dict:
    return {
        "run_id": run_id,
        "distance": distance,
        "spec": {"chemical_system": system} if system else {"elements": ["Fe", "O"]},
        "generator_yields": json.dumps(yields),
    }


def test_same_system_counts_most_and_far_campaigns_not_at_all() -> None:
    wyckoff = {"wyckoff": {"samples": 40, "survivors": 12, "seconds": 8.0}}
    campaigns = [
        _campaign("near-other", ["Li", "Fe", "O"], 0.07, wyckoff),
        _campaign("same", ["Li", "Mn", "O"], 0.2, wyckoff),
        _campaign("far", ["Cu", "Sn"], MAX_DISTANCE + 0.01, wyckoff),
        _campaign("open-pool", None, 0.1, wyckoff),
    ]
    got = weigh_campaigns(SPEC, campaigns)
    assert [c.run_id for c in got] == ["same", "near-other", "open-pool"]
    same, near, pool = got
    assert same.same_system
    assert same.weight == 1.0
    assert same.chemical_system == ("Li", "Mn", "O")
    assert near.weight == pytest.approx(OTHER_SYSTEM_WEIGHT * (1 - 0.07 / MAX_DISTANCE), abs=1e-4)
    assert pool.chemical_system is None
    assert near.weight > pool.weight > 0
    assert same.yields["wyckoff"].survivors == 12


def test_describe_names_campaigns_systems_and_counts() -> None:
    a = CampaignYields.from_json(
        {
            "run_id": "r1",
            "chemical_system": ["Li", "Mn", "O"],
            "distance": 0.0,
            "same_system": True,
            "weight": 1.0,
            "yields": {
                "wyckoff": {"samples": 30, "survivors": 9},
                "fake": {"samples": 5, "survivors": 0},
            },
        }
    )
    b = CampaignYields(
        run_id="r2",
        chemical_system=("Li", "Mn", "O"),
        distance=0.1,
        same_system=True,
        weight=1.0,
        yields={"wyckoff": GeneratorTotals(samples=10, survivors=3)},
    )
    c = CampaignYields.from_json({**b.to_json(), "run_id": "r3", "chemical_system": ["Fe", "O"],
                                  "same_system": False, "weight": 0.25})  # fmt: skip
    assert CampaignYields.from_json(a.to_json()) == a
    assert describe([a, b]) == (
        "from 2 earlier campaigns in Li-Mn-O (r1, r2): fake 0/5 survived, wyckoff 12/40 survived"
    )
    assert describe([a, c]) == (
        "from 2 earlier campaigns in Li-Mn-O (r1); in Fe-O (r3, weight 0.25): "
        "fake 0/5 survived, wyckoff 12/40 survived"
    )
    assert describe([]) == "no earlier campaign with generator yields"
    with pytest.raises(ValueError, match="no valid 'yields'"):
        CampaignYields.from_json({**a.to_json(), "yields": {"x": {"samples": -1, "survivors": 0}}})


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2]",
        {"fake": {"samples": 3}},
        {"fake": {"samples": 3, "survivors": 4}},
        {"fake": {"samples": True, "survivors": 0}},
        {"fake": {"samples": 3.5, "survivors": 1}},
        {"fake": {"samples": 3, "survivors": 1, "seconds": -1.0}},
        {"fake": {"samples": 3, "survivors": 1, "seconds": float("nan")}},
        {"fake": [3, 1]},
        {"": {"samples": 3, "survivors": 1}},
    ],
)
def test_malformed_yields_are_refused(raw: object) -> None:
    assert parse_yields(raw) is None


def test_malformed_yields_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    campaigns = [
        {**_campaign("bad", ["Li", "Mn", "O"], 0.0, {}), "generator_yields": "{oops"},
        {**_campaign("old", ["Li", "Mn", "O"], 0.0, {}), "generator_yields": None},
        _campaign("ok", ["Li", "Mn", "O"], 0.0, {"fake": {"samples": 2, "survivors": 1}}),
    ]
    with caplog.at_level(logging.WARNING, logger="crystalforge.memory.yields"):
        got = weigh_campaigns(SPEC, campaigns)
    assert [c.run_id for c in got] == ["ok"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("campaign bad: malformed generator yields" in m for m in messages)
    assert any("campaign old has no generator yields" in m for m in messages)


def test_totals_over_rounds() -> None:
    rounds = [
        {"fake": {"samples": 4, "survivors": 1, "seconds": 0.5}},
        {"fake": {"samples": 6, "survivors": 2, "seconds": 0.25}, "wyckoff": {"samples": 3}},
    ]
    assert totals_of_rounds(rounds) == {
        "fake": {"samples": 10, "survivors": 3, "seconds": 0.75, "rounds": 2},
        "wyckoff": {"samples": 3, "survivors": 0, "seconds": 0.0, "rounds": 1},
    }
    assert parse_yields(totals_of_rounds(rounds)) is not None
