"""Composition enumeration: sources, charge balance, ordering, atom ranges and bad input.

Pure unit tests over SMACT's bundled tables; nothing to record.
"""

from __future__ import annotations

import time

import pytest

from crystalforge.core.errors import GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.compositions import (
    CompositionChoice,
    enumerate_compositions,
    oxidation_states,
    z_options,
)


def _request(**kwargs: object) -> GenerationRequest:
    return GenerationRequest(num_structures=1, **kwargs)  # type: ignore[arg-type]


def _formulas(choices: list[CompositionChoice]) -> list[str]:
    return [c.formula for c in choices]


def test_chemical_system_gives_known_charge_balanced_oxides() -> None:
    choices = enumerate_compositions(_request(chemical_system=("Li", "Mn", "O"), max_atoms=16))
    formulas = _formulas(choices)
    assert {"LiMnO2", "Li2MnO3", "LiMn2O4"} <= set(formulas)
    assert formulas[0] == "LiMnO2"  # the simplest
    assert "LiMnO" not in formulas  # Mn+ is not a common state
    by_formula = {c.formula: c for c in choices}
    assert dict(by_formula["Li2MnO3"].oxidation_states)["Mn"] == (4,)
    assert dict(by_formula["LiMn2O4"].oxidation_states)["Mn"] == (3, 4)  # mixed valence
    for choice in choices:
        assert set(choice.elements) == {"Li", "Mn", "O"}
        assert choice.charge_balance == "common"
        assert choice.z_options
        assert all(1 <= z * choice.num_atoms <= 16 for z in choice.z_options)


def test_simpler_compositions_come_first() -> None:
    choices = enumerate_compositions(_request(chemical_system=("Fe", "O"), max_atoms=20))
    sizes = [c.num_atoms for c in choices]
    assert sizes == sorted(sizes)
    assert _formulas(choices)[:3] == ["FeO", "Fe2O3", "Fe3O4"]


def test_deterministic() -> None:
    request = _request(elements=("Li", "Na", "Mn", "Fe", "O", "F", "S"), required_elements=("O",))
    assert enumerate_compositions(request) == enumerate_compositions(request)


def test_element_pool_interleaves_subsets() -> None:
    pool = ("F", "Li", "Mn", "O")
    choices = enumerate_compositions(_request(elements=pool, required_elements=("Li",)))
    for choice in choices:
        assert "Li" in choice.elements
        assert set(choice.elements) <= set(pool)
        assert 2 <= len(choice.elements) <= 4
    # Round-robin: the first choices come from different element sets.
    first = [frozenset(c.elements) for c in choices[:5]]
    assert len(set(first)) == 5


def test_element_pool_skips_alloys_unless_all_metal() -> None:
    mixed = enumerate_compositions(_request(elements=("Li", "Mn", "O")))
    assert all(c.charge_balance != "metallic" for c in mixed)
    metals = enumerate_compositions(_request(elements=("Cu", "Zn")))
    assert {c.charge_balance for c in metals} == {"metallic"}


def test_all_metal_system_falls_back_to_alloys() -> None:
    choices = enumerate_compositions(_request(chemical_system=("K", "Na"), max_atoms=8))
    assert "KNa" in _formulas(choices)
    for choice in choices:
        assert choice.charge_balance == "metallic"
        assert all(states == (0,) for _, states in choice.oxidation_states)


def test_rare_oxidation_states_only_when_common_ones_fail() -> None:
    (choice,) = enumerate_compositions(_request(chemical_system=("H", "Li"), max_atoms=8))
    assert choice.formula == "LiH"  # needs H-, below 10 % of hydrogen's ICSD reports
    assert choice.charge_balance == "rare"
    assert oxidation_states("H") == (1,)
    assert -1 in oxidation_states("H", rare=True)


def test_formula_is_the_only_choice() -> None:
    (choice,) = enumerate_compositions(_request(formula="Li4Mn2O6", min_atoms=6, max_atoms=16))
    assert choice.formula == "Li2MnO3"
    assert choice.z_options == (1, 2)
    assert choice.oxidation_label() == "Li+1 Mn+4 O-2"


def test_explicit_compositions_are_checked_against_the_system() -> None:
    request = _request(compositions=("LiMnO2", "NaCl"), chemical_system=("Li", "Mn", "O"))
    assert _formulas(enumerate_compositions(request)) == ["LiMnO2"]


def test_explicit_unbalanced_formula_is_kept_and_marked() -> None:
    (choice,) = enumerate_compositions(_request(formula="LiO"))  # lithium peroxide is Li2O2...
    assert choice.charge_balance in {"rare", "none"}
    (choice,) = enumerate_compositions(_request(formula="NaO3"))
    assert choice.charge_balance == "none"
    assert choice.oxidation_states == ()


def test_z_options() -> None:
    assert z_options(6, 6, 16) == (1, 2)
    assert z_options(4, 5, 7) == ()
    assert z_options(1, 1, 3) == (1, 2, 3)


def test_four_elements_are_fast() -> None:
    start = time.perf_counter()
    choices = enumerate_compositions(_request(chemical_system=("Li", "Mn", "Fe", "O")))
    assert choices
    assert time.perf_counter() - start < 1.0


def test_large_pool_is_bounded() -> None:
    pool = ("Ca", "F", "Fe", "K", "Li", "Mn", "Na", "O", "P", "S", "Mg", "Al")
    start = time.perf_counter()
    choices = enumerate_compositions(_request(elements=pool, required_elements=("Li",)))
    assert choices
    assert time.perf_counter() - start < 2.0


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("system", [("F", "Ne"), ("Kr", "S")])
def test_systems_that_cannot_balance(system: tuple[str, ...]) -> None:
    with pytest.raises(
        GenerationFailed, match=r"none of the common oxidation states of .* balance"
    ):
        enumerate_compositions(_request(chemical_system=system))


def test_max_atoms_below_smallest_formula() -> None:
    request = _request(chemical_system=("Li", "Mn", "O"), max_atoms=3)
    with pytest.raises(GenerationFailed, match=r"smallest, LiMnO2, has 4 atoms"):
        enumerate_compositions(request)


def test_formula_that_does_not_fit_the_atom_range() -> None:
    request = _request(formula="Li2MnO3", min_atoms=7, max_atoms=11)
    with pytest.raises(GenerationFailed, match="6 atoms per formula unit"):
        enumerate_compositions(request)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chemical_system": ("Li", "O"), "max_atoms": 0}, "no cell size fits"),
        ({"chemical_system": ("Li", "O"), "min_atoms": 9, "max_atoms": 8}, "no cell size fits"),
        ({}, "no element pool"),
        ({"chemical_system": ("Li", "Xx")}, "'Xx', which is not an element"),
        ({"formula": "Lo2"}, "not an element|cannot parse"),
        ({"chemical_system": ("Li", "O"), "excluded_elements": ("O",)}, "excluded"),
        ({"chemical_system": ("Li", "O"), "required_elements": ("F",)}, "not in the chemical"),
        ({"elements": ("Li", "O"), "required_elements": ("F",)}, "not in the element pool"),
    ],
)
def test_bad_requests(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(GenerationFailed, match=message):
        enumerate_compositions(_request(**kwargs))


def test_charge_balance_of_a_proposed_formula() -> None:
    from crystalforge.generators.compositions import charge_balance_of

    assert charge_balance_of("Li2MnO3") == "common"
    assert charge_balance_of("LiO3") != "common"
    assert charge_balance_of("CuZn") == "metallic"
    assert charge_balance_of("NaCl2F5") == "none"
    with pytest.raises(GenerationFailed, match="Xx"):
        charge_balance_of("XxO2")
