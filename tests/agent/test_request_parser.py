"""Tests for the embedded (LLM-free) request parser.

These are pure unit tests of a deterministic parser: there is no API traffic to record.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crystalforge.agent.request_parser import (
    INSULATOR_MIN_GAP_EV,
    MAX_ATOMS_LIMIT,
    METALLIC_MAX_GAP_EV,
    SEMICONDUCTOR_GAP_EV,
    parse_request,
)
from crystalforge.core.errors import ClarificationNeeded, RequestError
from crystalforge.core.spec import DEFAULT_E_ABOVE_HULL_EV, DEFAULT_MAX_ATOMS, Budget, DesignSpec


def bounds(spec: DesignSpec, name: str) -> tuple[float | None, float | None, bool]:
    target = spec.target(name)
    assert target is not None, f"no {name} target in {spec.describe()}"
    return target.min, target.max, target.hard


def approx_bounds(spec: DesignSpec, name: str) -> tuple[object, object, bool]:
    low, high, hard = bounds(spec, name)
    return (
        None if low is None else pytest.approx(low),
        None if high is None else pytest.approx(high),
        hard,
    )


# --- the worked examples -------------------------------------------------------------------


def test_stable_li_mn_o_oxide_with_atom_limit():
    spec = parse_request("a stable Li-Mn-O oxide, at most 16 atoms per cell")
    assert spec.chemical_system == ("Li", "Mn", "O")
    assert spec.allowed_elements == ("Li", "Mn", "O")
    assert spec.required_elements == ("Li", "Mn", "O")
    assert spec.max_atoms == 16
    assert spec.min_atoms == 1
    hull = spec.target("e_above_hull")
    assert hull is not None
    assert hull.max == DEFAULT_E_ABOVE_HULL_EV
    assert hull.min is None
    assert hull.source == "request: 'stable'"
    assert len(spec.targets) == 1
    assert spec.num_candidates == 3


def test_cathode_with_gap_exclusion_and_atoms():
    spec = parse_request(
        "a Li-Mn-O cathode, band gap above 1 eV, no cobalt, at most 20 atoms per cell"
    )
    assert spec.chemical_system == ("Li", "Mn", "O")
    assert spec.excluded_elements == ("Co",)
    assert spec.max_atoms == 20
    assert bounds(spec, "band_gap") == (1.0, None, True)
    hull = spec.target("e_above_hull")
    assert hull is not None
    assert hull.source == "default"
    assert hull.max == DEFAULT_E_ABOVE_HULL_EV


def test_formula_with_gap_range():
    spec = parse_request("LiFePO4 with a band gap between 1 and 2 eV")
    assert spec.formula == "LiFePO4"
    assert spec.chemical_system == ("Fe", "Li", "O", "P")
    assert bounds(spec, "band_gap") == (1.0, 2.0, True)


def test_nitride_without_cobalt_and_bulk_modulus():
    spec = parse_request("a nitride without Co, bulk modulus at least 150 GPa")
    assert spec.required_elements == ("N",)
    assert spec.excluded_elements == ("Co",)
    assert spec.chemical_system is None
    assert spec.allowed_elements is None
    assert bounds(spec, "bulk_modulus") == (150.0, None, True)


def test_oxides_of_ti_and_sr_in_pm3m():
    spec = parse_request("oxides of Ti and Sr in Pm-3m")
    assert spec.space_groups == (221,)
    assert spec.required_elements == ("O", "Sr", "Ti")
    assert spec.chemical_system is None


def test_candidates_in_system_within_hull_window():
    spec = parse_request("find 5 candidates in the Ba-Ti-O system within 50 meV/atom of the hull")
    assert spec.num_candidates == 5
    assert spec.chemical_system == ("Ba", "O", "Ti")
    assert approx_bounds(spec, "e_above_hull") == (None, pytest.approx(0.05), True)


def test_request_text_is_kept_verbatim():
    text = "  A stable Li–Mn–O oxide ≥ 3 eV band gap  "
    assert parse_request(text).request == text


def test_parsing_is_deterministic():
    text = "a Li-Mn-O cathode, band gap above 1 eV, no cobalt, find 4 structures"
    assert parse_request(text) == parse_request(text)


# --- chemistry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "system", "required", "excluded"),
    [
        ("the Li-Fe-P-O system", ("Fe", "Li", "O", "P"), ("Fe", "Li", "O", "P"), ()),
        ("a Li–Mn–O oxide", ("Li", "Mn", "O"), ("Li", "Mn", "O"), ()),
        ("Li—Co—O", ("Co", "Li", "O"), ("Co", "Li", "O"), ()),
        ("a cobalt manganese oxide", None, ("Co", "Mn", "O"), ()),
        ("an IRON SULFIDE", None, ("Fe", "S"), ()),
        ("Li, Mn and O", None, ("Li", "Mn", "O"), ()),
        ("a Li-Ni-O oxide, Co-free", ("Li", "Ni", "O"), ("Li", "Ni", "O"), ("Co",)),
        ("a Li-Ni-O oxide, Co free", ("Li", "Ni", "O"), ("Li", "Ni", "O"), ("Co",)),
        ("a cobalt-free Li-Ni-O oxide", ("Li", "Ni", "O"), ("Li", "Ni", "O"), ("Co",)),
        ("a sulfide excluding Pb and Cd", None, ("S",), ("Cd", "Pb")),
        ("a Li-O oxide not containing Ni", ("Li", "O"), ("Li", "O"), ("Ni",)),
        ("a Li-O oxide, free of nickel", ("Li", "O"), ("Li", "O"), ("Ni",)),
        ("a Pb- and Cd-free Sn-S sulfide", ("S", "Sn"), ("S", "Sn"), ("Cd", "Pb")),
        (
            "No cobalt or nickel, a Li-Mn-O oxide",
            ("Li", "Mn", "O"),
            ("Li", "Mn", "O"),
            ("Co", "Ni"),
        ),
        ("an oxygen-free Li-N nitride", ("Li", "N"), ("Li", "N"), ("O",)),
        ("a non-oxide containing Ti and N", None, ("N", "Ti"), ("O",)),
        ("a phosphate of Li and Fe", None, ("Fe", "Li", "O", "P"), ()),
        ("a Na carbonate", None, ("C", "Na", "O"), ()),
        ("a lead-free halide perovskite of Cs, Sn and I", None, ("Cs", "I", "Sn"), ("Pb",)),
        ("lead iodide", None, ("I", "Pb"), ()),
        ("a tin and lead selenide", None, ("Pb", "Se", "Sn"), ()),
        ("no lead, a tin iodide", None, ("I", "Sn"), ("Pb",)),
        (
            "a non-toxic Cu-Zn-Sn-S sulfide",
            ("Cu", "S", "Sn", "Zn"),
            ("Cu", "S", "Sn", "Zn"),
            ("As", "Be", "Cd", "Hg", "Pb", "Tl"),
        ),
        (
            "a Mn oxide, avoid toxic elements",
            None,
            ("Mn", "O"),
            ("As", "Be", "Cd", "Hg", "Pb", "Tl"),
        ),
        ("containing In and Ga, a nitride", None, ("Ga", "In", "N"), ()),
        ("an In-free Ga-N nitride", ("Ga", "N"), ("Ga", "N"), ("In",)),
        ("an As-free Ga-N nitride", ("Ga", "N"), ("Ga", "N"), ("As",)),
        (
            "Be careful: no Be, He or In in the Li-O oxide",
            ("Li", "O"),
            ("Li", "O"),
            ("Be", "He", "In"),
        ),
        ("a Li-rich Mn oxide", None, ("Li", "Mn", "O"), ()),
        ("Co-design a Li-Mn-O oxide", ("Li", "Mn", "O"), ("Li", "Mn", "O"), ()),
        ("an FCC Fe-Ni alloy tested on a CPU", ("Fe", "Ni"), ("Fe", "Ni"), ()),
    ],
)
def test_chemistry(text, system, required, excluded):
    spec = parse_request(text)
    assert spec.chemical_system == system
    assert spec.required_elements == required
    assert spec.excluded_elements == excluded
    if system is not None:
        assert spec.allowed_elements == system


@pytest.mark.parametrize(
    ("text", "formula", "system"),
    [
        ("LiMnO2", "LiMnO2", ("Li", "Mn", "O")),
        ("Li2MnO3 with fewer than 10 atoms", "Li2MnO3", ("Li", "Mn", "O")),
        ("Fe2O3 polymorphs", "Fe2O3", ("Fe", "O")),
        ("(Li)MnO2 please", "LiMnO2", ("Li", "Mn", "O")),
        ("Give me 10 Li4Mn2O6-like structures", "Li2MnO3", ("Li", "Mn", "O")),
        ("LiMnO2 in the Li-Mn-O system", "LiMnO2", ("Li", "Mn", "O")),
        ("A hexagonal BN nitride", "BN", ("B", "N")),
        ("a DFT-free search near NaCl.", "NaCl", ("Cl", "Na")),
    ],
)
def test_formulae(text, formula, system):
    spec = parse_request(text)
    assert spec.formula == formula
    assert spec.chemical_system == system
    assert spec.allowed_elements == system


@pytest.mark.parametrize(
    ("text", "required"),
    [
        # English words that are element symbols are not elements out of a chemical context.
        ("I want a stable oxide of Sr and Ti", ("O", "Sr", "Ti")),
        ("In the Li-O system, find three structures", ("Li", "O")),
        ("As a cathode, I need a Li-Co-O oxide", ("Co", "Li", "O")),
        ("At least a Fe-O oxide", ("Fe", "O")),
        ("Be quick: a Li-Mn-O oxide", ("Li", "Mn", "O")),
        ("He said a cobalt oxide. No hurry", ("Co", "O")),
        ("a sulfide of Fe and I want it stable", ("Fe", "S")),
        ("CO and NO are not wanted; a Fe-O oxide", ("Fe", "O")),
        ("a Ti oxide stable at 300 K and 1.5 V", ("O", "Ti")),
    ],
)
def test_english_words_are_not_elements(text, required):
    spec = parse_request(text)
    assert spec.required_elements == required
    assert spec.excluded_elements == ()


def test_only_sets_allowed_elements():
    spec = parse_request("a crystal made of only Sr, Ti and O")
    assert spec.allowed_elements == ("O", "Sr", "Ti")
    assert spec.chemical_system is None


def test_only_with_an_anion_class_allows_the_anion():
    spec = parse_request("an oxide consisting of Sr and Ti")
    assert spec.allowed_elements == ("O", "Sr", "Ti")
    assert spec.element_pool() == ("O", "Sr", "Ti")


# --- property targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "low", "high"),
    [
        ("Li-O, band gap over 1.5 eV", "band_gap", 1.5, None),
        ("Li-O, bandgap greater than 2 eV", "band_gap", 2.0, None),
        ("Li-O, gap > 2 eV", "band_gap", 2.0, None),
        ("Li-O, band gap ≥ 1 eV", "band_gap", 1.0, None),
        ("Li-O, band gap of at least 0.5 eV", "band_gap", 0.5, None),
        ("Li-O, band gap below 3 eV", "band_gap", None, 3.0),
        ("Li-O, band gap under 3 eV", "band_gap", None, 3.0),
        ("Li-O, band gap <= 2.5 eV", "band_gap", None, 2.5),
        ("Li-O, band gap up to 2 eV", "band_gap", None, 2.0),
        ("Li-O, band gap no more than 2 eV", "band_gap", None, 2.0),
        ("Li-O, band gap 1-2 eV", "band_gap", 1.0, 2.0),
        ("Li-O, band gap 1.5–2.5 eV", "band_gap", 1.5, 2.5),
        ("Li-O, band gap from 1 to 3 eV", "band_gap", 1.0, 3.0),
        ("Li-O, band gap above 1 eV and below 3 eV", "band_gap", 1.0, 3.0),
        ("Li-O, band gap around 2 eV", "band_gap", 1.8, 2.2),
        ("Li-O, band gap ~2 eV", "band_gap", 1.8, 2.2),
        ("Li-O, band gap about 0.5 eV", "band_gap", 0.4, 0.6),
        ("Li-O, a band gap of 2 eV", "band_gap", 1.8, 2.2),
        ("Li-O, band gap exactly 2 eV", "band_gap", 2.0, 2.0),
        ("Li-O, band gap 1 eV or more", "band_gap", 1.0, None),
        ("Li-O, band gap 1500 meV or less", "band_gap", None, 1.5),
        ("a 1.5 eV band gap Ga-N nitride", "band_gap", 1.35, 1.65),
        ("a >2 eV band gap Zn-O oxide", "band_gap", 2.0, None),
        ("Li-O, a minimum band gap of 1 eV", "band_gap", 1.0, None),
        ("Li-O, band gap > 1", "band_gap", 1.0, None),
        ("Li-O, e_hull <= 0.05", "e_above_hull", None, 0.05),
        ("Li-O, Ehull below 30 meV/atom", "e_above_hull", None, 0.03),
        ("Li-O, energy above hull under 0.05 eV/atom", "e_above_hull", None, 0.05),
        ("Li-O within 0.05 eV/atom of the hull", "e_above_hull", None, 0.05),
        ("Li-O within 50 meV of the hull", "e_above_hull", None, 0.05),
        ("Li-O, at most 25 meV/atom above the hull", "e_above_hull", None, 0.025),
        ("Li-O on the hull", "e_above_hull", None, 0.0),
        ("a thermodynamically stable Li-O oxide", "e_above_hull", None, DEFAULT_E_ABOVE_HULL_EV),
        ("a stable Li-O oxide within 200 meV/atom of the hull", "e_above_hull", None, 0.2),
        ("Al-N, formation energy below -1.5 eV/atom", "formation_energy", None, -1.5),
        ("Li-O, formation energy between -2 and -1 eV/atom", "formation_energy", -2.0, -1.0),
        ("Li-O, bulk modulus at least 150 GPa", "bulk_modulus", 150.0, None),
        ("Li-O, bulk modulus above 150000 MPa", "bulk_modulus", 150.0, None),
        ("Li-O, density between 3 and 5 g/cm3", "density", 3.0, 5.0),
        ("Li-O, density below 4 g/cm^3", "density", None, 4.0),
        ("Li-O, density 2-3 g cm-3", "density", 2.0, 3.0),
        ("Li-O, volume per atom below 20 Å^3/atom", "volume_per_atom", None, 20.0),
        ("Li-O, volume per atom around 12 A3/atom", "volume_per_atom", 10.8, 13.2),
        ("Fe-O, magnetic moment above 1 μB/atom", "magnetic_moment", 1.0, None),
        ("Fe-O, magnetization at least 0.5 muB", "magnetic_moment", 0.5, None),
        ("a metallic Fe-Si compound", "band_gap", None, METALLIC_MAX_GAP_EV),
        ("a Li-O oxide that is a metal", "band_gap", None, METALLIC_MAX_GAP_EV),
        ("an insulating Li-O oxide", "band_gap", INSULATOR_MIN_GAP_EV, None),
        ("a semiconducting Zn-S sulfide", "band_gap", *SEMICONDUCTOR_GAP_EV),
        ("a magnetic Fe-N nitride", "magnetic_moment", 0.1, None),
        ("a semiconductor with band gap above 2 eV, Zn-O", "band_gap", 2.0, None),
    ],
)
def test_property_targets(text, name, low, high):
    spec = parse_request(text)
    assert approx_bounds(spec, name) == (
        None if low is None else pytest.approx(low),
        None if high is None else pytest.approx(high),
        True,
    )


@pytest.mark.parametrize(
    ("text", "soft", "hard"),
    [
        ("Li-O, ideally a band gap above 2 eV", ("band_gap",), ()),
        ("Li-O, band gap above 2 eV if possible", ("band_gap",), ()),
        ("Li-O, preferably insulating", ("band_gap",), ()),
        ("Li-O, a band gap above 2 eV would be nice to have", ("band_gap",), ()),
        (
            "Li-O, bulk modulus above 100 GPa and ideally a band gap above 1 eV",
            ("band_gap",),
            ("bulk_modulus",),
        ),
        (
            "a cobalt oxide, band gap between 1 and 2 eV if possible, bulk modulus above 100 GPa",
            ("band_gap",),
            ("bulk_modulus",),
        ),
    ],
)
def test_soft_targets(text, soft, hard):
    spec = parse_request(text)
    for name in soft:
        assert bounds(spec, name)[2] is False
    for name in hard:
        assert bounds(spec, name)[2] is True


def test_hard_piece_wins_over_soft_piece_on_one_property():
    spec = parse_request("Li-O, band gap above 1 eV, ideally above 2 eV")
    assert bounds(spec, "band_gap") == (1.0, None, True)


def test_default_stability_target_when_request_is_silent():
    spec = parse_request("a Li-O oxide")
    assert spec.targets == spec.hard_targets
    (hull,) = spec.targets
    assert (hull.name, hull.max, hull.source) == (
        "e_above_hull",
        DEFAULT_E_ABOVE_HULL_EV,
        "default",
    )


def test_dynamically_stable_is_not_a_hull_target():
    spec = parse_request("a dynamically stable Li-O oxide")
    hull = spec.target("e_above_hull")
    assert hull is not None
    assert hull.source == "default"


def test_targets_record_their_source():
    spec = parse_request("a stable Li-O oxide, band gap above 1 eV and below 3 eV")
    band_gap = spec.target("band_gap")
    assert band_gap is not None
    assert band_gap.source == "request: 'band gap above 1 eV' and 'band gap below 3 eV'"


# --- cell size, symmetry, counts, budget --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "min_atoms", "max_atoms"),
    [
        ("Li-O, at most 16 atoms per cell", 1, 16),
        ("Li-O, up to 12 atoms", 1, 12),
        ("Li-O, fewer than 10 atoms", 1, 9),
        ("Li-O, no more than 20 atoms/cell", 1, 20),
        ("Li-O, between 4 and 12 atoms", 4, 12),
        ("Li-O with 4-12 atoms per unit cell", 4, 12),
        ("Li-O, at least 6 atoms", 6, DEFAULT_MAX_ATOMS),
        ("Li-O, more than 6 atoms", 7, DEFAULT_MAX_ATOMS),
        ("Li-O, at least 24 atoms", 24, MAX_ATOMS_LIMIT),
        ("Li-O, 12 atoms per cell", 12, 12),
        ("Li-O in a 12-atom cell", 12, 12),
        ("Li-O, about 10 atoms per cell", 8, 12),
        ("Li-O, 16 atoms or fewer", 1, 16),
        ("Li-O, at most sixteen atoms", 1, 16),
        ("Li-O", 1, DEFAULT_MAX_ATOMS),
    ],
)
def test_atoms_per_cell(text, min_atoms, max_atoms):
    spec = parse_request(text)
    assert (spec.min_atoms, spec.max_atoms) == (min_atoms, max_atoms)


@pytest.mark.parametrize(
    ("text", "space_groups"),
    [
        ("Li-O in space group 225", (225,)),
        ("Li-O, SG 62", (62,)),
        ("Li-O, space groups 221 or 225", (221, 225)),
        ("Li-Fe-P-O, spacegroup Pnma", (62,)),
        ("Li-O in Fm-3m", (225,)),
        ("Li-O in Fm3m", (225,)),
        ("a Ti-O oxide in P6_3/mmc", (194,)),
        ("a Ti-O oxide in P63/mmc", (194,)),
        ("a Ti-O oxide in P2_1/c", (14,)),
        ("a triclinic Li-O oxide", (1, 2)),
        ("a trigonal Li-O oxide", tuple(range(143, 168))),
        ("a cubic Li-Mn-O oxide", tuple(range(195, 231))),
        ("a cubic Li-O oxide in space group 225", (225,)),
        ("a non-cubic Li-O oxide", tuple(range(1, 195))),
        ("Li-O, density below 3 g per cubic centimetre", ()),
    ],
)
def test_space_groups(text, space_groups):
    assert parse_request(text).space_groups == space_groups


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("find 5 candidates in Li-O", 5),
        ("three Li-O structures", 3),
        ("twelve stable Li-O oxides candidates", 12),
        ("Li-O, give me 10", 10),
        ("Li-O, top 7", 7),
        ("a few Li-O structures", 3),
        ("a couple of Li-O structures", 2),
        ("several Li-O candidates", 5),
        ("a Li-O oxide", 3),
        ("a band gap above 5 eV in Li-O, find 2 candidates", 2),
    ],
)
def test_number_of_candidates(text, count):
    assert parse_request(text).num_candidates == count


def test_budget_phrases_override_defaults():
    defaults = Budget(max_rounds=7, samples_per_round=30, max_validator_calls=99)
    spec = parse_request(
        "a Li-Mn-O oxide in at most 4 rounds within 10 minutes using at most 50 relaxations",
        defaults=defaults,
    )
    assert spec.budget.max_rounds == 4
    assert spec.budget.max_wall_time_s == 600.0
    assert spec.budget.max_validator_calls == 50
    assert spec.budget.samples_per_round == 30  # untouched default


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("Li-O within 2 hours", "max_wall_time_s", 7200.0),
        ("Li-O in under 90 seconds", "max_wall_time_s", 90.0),
        ("Li-O with 20 samples per round", "samples_per_round", 20),
        ("Li-O with 100k tokens", "max_llm_tokens", 100_000),
        ("Li-O, stop after 1 round without improvement", "patience_rounds", 1),
        ("Li-O, 6 iterations", "max_rounds", 6),
    ],
)
def test_budget_fields(text, field, value):
    assert getattr(parse_request(text).budget, field) == value


def test_defaults_budget_is_used_when_request_is_silent():
    defaults = Budget(max_rounds=9)
    assert parse_request("a Li-O oxide", defaults=defaults).budget == defaults


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("Xy-O compounds", "unknown element 'Xy' in chemical system 'Xy-O'"),
        ("a Li-M-O oxide", "unknown element 'M' in chemical system 'Li-M-O'"),
        ("a XyO2 compound", "unknown element 'Xy' in formula 'XyO2'"),
        ("a Li-O oxide, band gap above 3 eV and below 1 eV", "contradictory range for band gap"),
        ("a cobalt oxide without cobalt", "'Co' is both required ('cobalt') and excluded"),
        ("a Li-Co-O oxide without Co", "'Co' is in the chemical system 'Co-Li-O'"),
        ("an oxide in the Li-Mn system", "'O' is required ('oxide') but is not in the chemical"),
        ("LiCoO2 in the Li-Mn-O system", "formula 'LiCoO2' has the elements Co-Li-O"),
        ("an oxide made of only Sr and Ti, containing Fe", "allows only O, Sr, Ti"),
        ("Li-O with 0 atoms", "0 atoms per cell is not possible"),
        ("Li-O, fewer than 1 atom", "0 atoms per cell is not possible"),
        (
            "Li-O, at most 500 atoms per cell",
            "at most 500 atoms per cell is above the supported limit of 100",
        ),
        ("Li-O, at least 150 atoms", "at least 150 atoms per cell is above the supported limit"),
        ("Li-O, at least 30 atoms and at most 20 atoms", "contradictory atom limits: at least 30"),
        ("Li-O in space group 231", "space group 231 is not a space-group number (1-230)"),
        ("Li-O in space group Xq-7", "unknown space-group symbol"),
        ("a hexagonal Li-O oxide in space group 225", "does not belong to the crystal system"),
        ("Li-O, band gap below -1 eV", "band gap cannot be negative"),
        ("Li-O, band gap above 1 GPa", "'above 1 GPa' cannot be a band gap"),
        ("Li-O, 0 candidates", "0 candidates is not supported"),
        ("1001 candidates of Li-O", "1001 candidates is not supported"),
        ("Li-O in 0 rounds", "max_rounds"),
        ("Li-O in 500 rounds", "max_rounds"),
    ],
)
def test_request_errors(text, message):
    with pytest.raises(RequestError) as info:
        parse_request(text)
    assert type(info.value) is RequestError  # not a ClarificationNeeded, not pydantic's error
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a metallic Fe-Co alloy with a band gap above 3 eV",
            "'metallic' means band gap <= 0.1 eV but you also asked for band gap >= 3 eV; "
            "which do you want?",
        ),
        ("a metallic semiconductor in Fe-Si", "which do you want?"),
        ("a stable Li-O oxide with e_hull above 0.2 eV/atom", "'stable' means energy above hull"),
        ("something nice", "Which elements or chemical system"),
        ("a crystal without cobalt, band gap above 1 eV", "Which elements or chemical system"),
        ("Li-Mn-O or Li-Fe-O oxides", "more than one chemical system"),
        ("LiMnO2 or LiCoO2", "more than one formula"),
        ("a Ti or Zr oxide", "'Ti or Zr'"),
        ("a Li-O oxide with at least 150 GPa", "Which property does 'at least 150 GPa' refer to?"),
        ("find 5 candidates in Li-O and give me 10", "different numbers of candidates"),
        ("Li-O in 3 rounds, no, 4 rounds", "max_rounds"),
    ],
)
def test_clarification_needed(text, message):
    with pytest.raises(ClarificationNeeded) as info:
        parse_request(text)
    assert message in info.value.question


@pytest.mark.parametrize(
    "text",
    [
        "Li-O, band gap above 3 eV and below 1 eV",
        "Li-O with 0 atoms",
        "Li-O in 0 rounds",
        "a cobalt oxide without cobalt",
        "Li-O in space group 0",
    ],
)
def test_errors_are_never_pydantic_validation_errors(text):
    with pytest.raises(RequestError) as info:
        parse_request(text)
    assert not isinstance(info.value, ValidationError)
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, ValidationError)
