"""DesignSpec validation: pure logic, no recorded traffic to replay."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget


def test_elements_are_sorted_and_deduplicated():
    spec = DesignSpec(chemical_system=("O", "Mn", "Li", "O"))
    assert spec.chemical_system == ("Li", "Mn", "O")
    assert spec.element_pool() == ("Li", "Mn", "O")


def test_round_trips_through_json():
    spec = DesignSpec(
        request="x",
        chemical_system=("Li", "O"),
        targets=(PropertyTarget(name="band_gap", min=1.0, max=2.0),),
        budget=Budget(max_rounds=2),
    )
    assert DesignSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chemical_system": ("Li", "Xy")}, "unknown element symbol 'Xy'"),
        ({"min_atoms": 10, "max_atoms": 4}, "contradictory atom limits"),
        (
            {"required_elements": ("Co",), "excluded_elements": ("Co",)},
            "both required and excluded",
        ),
        ({"chemical_system": ("Co", "O"), "excluded_elements": ("Co",)}, "are excluded"),
        ({"space_groups": (231,)}, "space group 231"),
        ({"max_atoms": 0}, "greater than or equal to 1"),
    ],
)
def test_inconsistent_specs_are_rejected(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        DesignSpec(**kwargs)


def test_contradictory_target_range_names_both_bounds():
    with pytest.raises(ValidationError, match=r"lower bound 3 is above upper bound 1 eV"):
        PropertyTarget(name="band_gap", min=3.0, max=1.0)


def test_target_distance_and_description():
    target = PropertyTarget(name="e_above_hull", max=0.1)
    assert target.contains(0.05)
    assert not target.contains(0.2)
    assert target.distance(0.25) == pytest.approx(0.15)
    assert target.describe() == "e_above_hull <= 0.1 eV/atom"
    soft = PropertyTarget(name="band_gap", min=1, max=3, hard=False)
    assert soft.describe() == "band_gap in [1, 3] eV (soft)"
