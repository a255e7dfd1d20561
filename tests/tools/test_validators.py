"""Cheap validators, the fake relaxer, the hull validator on a tiny hull, and the pipeline."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, DummySpecies, Element, Lattice, Structure

from crystalforge.core.candidate import Candidate, Verdict
from crystalforge.core.errors import ValidationFailed
from crystalforge.memory.reference_data import ReferenceHull
from crystalforge.tools.validators.base import Validator
from crystalforge.tools.validators.composition import SmactValidator
from crystalforge.tools.validators.fake import FakeEnergyValidator
from crystalforge.tools.validators.hull import HullValidator
from crystalforge.tools.validators.pipeline import (
    CandidateResult,
    ValidationPipeline,
    default_pipeline,
    is_expensive,
)
from crystalforge.tools.validators.sanity import SanityValidator, min_interatomic_distance
from crystalforge.tools.validators.symmetry import SymmetryValidator
from crystalforge.tools.validators.uniqueness import NoveltyValidator, UniquenessValidator
from tests.contracts.validator import make_validator_contract_tests

# -- structures --------------------------------------------------------------------------------


def rocksalt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    """Primitive rocksalt cell (2 atoms); ``a`` is the conventional lattice constant, Å."""
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [cation, anion], [[0, 0, 0], [0.5] * 3]
    )


def cscl(a: float = 4.1) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def make(structure: Structure, seed: int = 0) -> Candidate:
    return Candidate.create(structure, generator="test", seed=seed)


# -- a tiny reference hull (Na-Cl), independent of the data folder -----------------------------


class TinyReference:
    """Na and Cl at 0, NaCl at -2.0 eV/atom; chemical potentials Na -1.3, Cl -1.8 eV/atom."""

    name = "tiny Na-Cl hull (1 entry)"

    def __init__(self) -> None:
        self.mu = {"Na": -1.3, "Cl": -1.8}
        self.nacl = PDEntry(Composition("NaCl"), -4.0, name="NaCl", attribute=None)

    def chemical_potentials(self, elements: Any) -> dict[str, float]:
        return {el: self.mu[el] for el in elements if el in self.mu}

    def phase_diagram(self, chemsys: Any) -> PhaseDiagram:
        system = sorted(set(chemsys))
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        if set(system) >= {"Na", "Cl"}:
            entries.append(self.nacl)
        return PhaseDiagram(entries, elements=[Element(e) for e in system])

    def known_phases(self, chemsys: Any, *, max_e_above_hull: Any = 0.1, exact: bool = False):
        return []

    def reference_structures(self, formula: str) -> list[Structure]:
        if Composition(formula).reduced_formula != "NaCl":
            return []
        known = rocksalt(5.69)
        known.properties["material_id"] = "mp-22862"
        return [known]


@pytest.fixture
def tiny_reference() -> TinyReference:
    return TinyReference()


def test_tiny_reference_is_a_reference_hull(tiny_reference) -> None:
    assert isinstance(tiny_reference, ReferenceHull)


# -- contracts ---------------------------------------------------------------------------------


@pytest.fixture
def sanity_validator() -> SanityValidator:
    return SanityValidator()


@pytest.fixture
def smact_validator() -> SmactValidator:
    return SmactValidator()


@pytest.fixture
def symmetry_validator() -> SymmetryValidator:
    return SymmetryValidator()


@pytest.fixture
def unique_validator() -> UniquenessValidator:
    return UniquenessValidator(known=(("c-earlier", cscl()),))


@pytest.fixture
def fake_validator() -> FakeEnergyValidator:
    return FakeEnergyValidator()


@pytest.fixture
def novelty_validator() -> NoveltyValidator:
    return NoveltyValidator(reference=TinyReference())


TestSanityContract = make_validator_contract_tests("sanity_validator")
TestSmactContract = make_validator_contract_tests("smact_validator")
TestSymmetryContract = make_validator_contract_tests("symmetry_validator")
TestUniqueContract = make_validator_contract_tests("unique_validator")
TestFakeContract = make_validator_contract_tests("fake_validator")
TestNoveltyContract = make_validator_contract_tests("novelty_validator")


def test_validators_satisfy_the_protocol_at_runtime() -> None:
    for validator in (
        SanityValidator(),
        SmactValidator(),
        SymmetryValidator(),
        UniquenessValidator(),
        FakeEnergyValidator(),
        HullValidator(reference=TinyReference()),
    ):
        assert isinstance(validator, Validator)


# -- sanity ------------------------------------------------------------------------------------


def test_sanity_passes_rocksalt_with_metrics() -> None:
    (verdict,) = SanityValidator().validate([make(rocksalt())])
    assert verdict.passed
    assert verdict.reason is None
    assert verdict.metrics["n_atoms"] == 2
    assert verdict.metrics["min_distance_a"] == pytest.approx(5.64 / 2, abs=1e-6)
    assert verdict.metrics["volume_per_atom_a3"] == pytest.approx(5.64**3 / 8, rel=1e-6)


def test_sanity_rejects_overlapping_atoms_with_numbers() -> None:
    structure = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.062, 0, 0]])
    (verdict,) = SanityValidator().validate([make(structure)])
    assert not verdict.passed
    assert verdict.reason == "min distance 0.31 Å < 0.5 Å (Na-Cl)"


def test_sanity_sees_overlap_across_the_periodic_boundary() -> None:
    structure = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.01, 0, 0], [0.99, 0, 0]])
    distance, _ = min_interatomic_distance(structure)
    assert distance == pytest.approx(0.1, abs=1e-9)


def test_sanity_rejects_an_atom_too_close_to_its_own_image() -> None:
    structure = Structure(Lattice.tetragonal(0.4, 20.0), ["H"], [[0, 0, 0]])
    (verdict,) = SanityValidator(min_volume_per_atom_a3=0.1).validate([make(structure)])
    assert not verdict.passed
    assert "min distance 0.40 Å" in str(verdict.reason)


@pytest.mark.parametrize(
    ("structure", "fragment"),
    [
        (Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0, 0]]), "non-finite"),
        (
            Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5] * 3]),
            "partial occupancy",
        ),
        (
            Structure(Lattice.cubic(4.0), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5] * 3]),
            "unknown species",
        ),
        (rocksalt(30.0), "volume per atom 3375.0 Å^3 > 150 Å^3"),
        (rocksalt(2.0), "volume per atom 1.00 Å^3 < 4 Å^3"),
        (
            Structure(Lattice([[1, 0, 0], [2, 0, 0], [0, 0, 1]]), ["Na"], [[0, 0, 0]]),
            "degenerate lattice",
        ),
        (Structure(Lattice.cubic(4.0), [], []), "no sites"),
    ],
    ids=["nan", "disordered", "dummy", "huge", "tiny", "degenerate", "empty"],
)
def test_sanity_rejects_bad_structures(structure: Structure, fragment: str) -> None:
    (verdict,) = SanityValidator().validate([make(structure)])
    assert not verdict.passed
    assert fragment in str(verdict.reason)


def test_sanity_atom_limit() -> None:
    (verdict,) = SanityValidator(max_atoms=8).validate([make(rocksalt() * (2, 2, 2))])
    assert verdict.reason == "16 atoms > 8 atoms"


# -- smact -------------------------------------------------------------------------------------


def test_smact_accepts_charge_balanced_and_alloys() -> None:
    cunisupercell = Structure(Lattice.cubic(3.6), ["Cu", "Ni"], [[0, 0, 0], [0.5, 0.5, 0]])
    verdicts = SmactValidator().validate([make(rocksalt()), make(cunisupercell)])
    assert [v.passed for v in verdicts] == [True, True]
    assert verdicts[0].metrics == {"smact_valid": True}


def test_smact_rejects_and_names_the_formula() -> None:
    nacl2 = Structure(
        Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]
    )
    (verdict,) = SmactValidator().validate([make(nacl2)])
    assert not verdict.passed
    assert str(verdict.reason).startswith("NaCl2 is not SMACT-valid")


def test_smact_mixed_valence_knob() -> None:
    spinel_like = Structure(
        Lattice.cubic(6.0),
        ["Li", "Mn", "Mn", "O", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5] * 3],
    )
    candidate = make(spinel_like)
    assert not SmactValidator().validate([candidate])[0].passed
    assert SmactValidator(mixed_valence=True).validate([candidate])[0].passed


# -- symmetry ----------------------------------------------------------------------------------


def test_symmetry_reports_the_space_group() -> None:
    (verdict,) = SymmetryValidator().validate([make(rocksalt())])
    assert verdict.passed
    assert verdict.metrics == {"space_group_number": 225, "space_group_symbol": "Fm-3m"}


def test_symmetry_filters_on_allowed_groups() -> None:
    validator = SymmetryValidator(allowed_space_groups=(221,))
    verdicts = validator.validate([make(rocksalt()), make(cscl())])
    assert [v.passed for v in verdicts] == [False, True]
    assert verdicts[0].reason == "space group Fm-3m (225) is not among the allowed 221"


def test_symmetry_prefix_for_relaxed_structures() -> None:
    validator = SymmetryValidator(name="relaxed_symmetry", metric_prefix="relaxed_")
    (verdict,) = validator.validate([make(cscl())])
    assert verdict.metrics["relaxed_space_group_number"] == 221


def test_symmetry_does_not_crash_on_nan() -> None:
    # spglib segfaults on NaN coordinates; the validator must not hand them over.
    nan = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0, 0]])
    (verdict,) = SymmetryValidator().validate([make(nan)])
    assert not verdict.passed
    assert "non-finite" in str(verdict.reason)


# -- uniqueness and novelty --------------------------------------------------------------------


def test_unique_first_occurrence_passes_later_duplicates_fail() -> None:
    first = make(rocksalt(5.64), seed=1)
    supercell = make(rocksalt(5.64) * (2, 1, 1), seed=2)  # same crystal, another cell
    strained = make(rocksalt(5.90), seed=3)  # StructureMatcher scales volumes: same crystal
    other = make(cscl(), seed=4)
    verdicts = UniquenessValidator().validate([first, supercell, strained, other])
    assert [v.passed for v in verdicts] == [True, False, False, True]
    assert verdicts[1].reason == f"duplicate of {first.id}"
    assert verdicts[1].metrics == {"duplicate_of": first.id}


def test_unique_against_known_candidates_of_the_run() -> None:
    candidate = make(rocksalt(5.64))
    validator = UniquenessValidator(known=(("c-round0", rocksalt(5.66)),))
    (verdict,) = validator.validate([candidate])
    assert verdict.reason == "duplicate of c-round0"


def test_unique_ignores_a_known_entry_with_the_same_id() -> None:
    candidate = make(rocksalt())
    validator = UniquenessValidator(known=((candidate.id, candidate.structure),))
    assert validator.validate([candidate])[0].passed


def test_novelty_reports_without_failing(tiny_reference) -> None:
    validator = NoveltyValidator(reference=tiny_reference)
    known, new = validator.validate([make(rocksalt(5.64)), make(cscl())])
    assert known.passed
    assert new.passed
    assert known.metrics["novel"] is False
    assert known.metrics["matches_reference"] == "mp-22862"
    assert new.metrics["novel"] is True
    assert new.metrics["novelty_reference"] == tiny_reference.name


# -- fake relaxer ------------------------------------------------------------------------------


def test_fake_energy_is_deterministic_and_looked_up() -> None:
    candidate = make(rocksalt())
    fake = FakeEnergyValidator(chemical_potentials={"Na": -1.3, "Cl": -1.8})
    first = fake.validate([candidate])[0]
    again = FakeEnergyValidator(chemical_potentials={"Na": -1.3, "Cl": -1.8}).validate([candidate])
    assert first.metrics == again[0].metrics
    assert first.structure is candidate.structure
    formation = first.metrics["energy_per_atom"] - (-1.55)  # type: ignore[operator]
    assert -0.5 <= formation < 0.3
    looked_up = FakeEnergyValidator(energies={"NaCl": -3.5}).validate([candidate])[0]
    assert looked_up.metrics["energy_per_atom"] == -3.5
    assert looked_up.metrics["energy_total_ev"] == -7.0
    assert is_expensive(fake)


def test_fake_failures_and_progress() -> None:
    calls = []
    fake = FakeEnergyValidator(
        fail_formulas=frozenset({"CsCl"}), progress=lambda d, t: calls.append((d, t))
    )
    verdicts = fake.validate([make(rocksalt()), make(cscl())])
    assert [v.passed for v in verdicts] == [True, False]
    assert calls == [(1, 2), (2, 2)]


# -- hull on the tiny reference ----------------------------------------------------------------


def test_hull_formation_energy_and_e_above_hull(tiny_reference) -> None:
    candidate = make(rocksalt()).evolve(properties={"energy_per_atom": -3.45})
    (verdict,) = HullValidator(reference=tiny_reference).validate([candidate])
    assert verdict.passed
    # E_f = -3.45 - (0.5 * -1.3 + 0.5 * -1.8) = -1.9; the hull at NaCl is -2.0.
    assert verdict.metrics["formation_energy"] == pytest.approx(-1.9)
    assert verdict.metrics["e_above_hull"] == pytest.approx(0.1)
    assert verdict.metrics["decomposition"] == "1.000 NaCl"
    assert verdict.metrics["reference"] == tiny_reference.name


def test_hull_below_hull_is_negative(tiny_reference) -> None:
    candidate = make(rocksalt()).evolve(properties={"energy_per_atom": -3.65})
    (verdict,) = HullValidator(reference=tiny_reference).validate([candidate])
    assert verdict.metrics["e_above_hull"] == pytest.approx(-0.1)


def test_hull_threshold_failure_names_the_numbers(tiny_reference) -> None:
    candidate = make(rocksalt()).evolve(properties={"energy_per_atom": -3.25})
    validator = HullValidator(reference=tiny_reference, max_e_above_hull_ev=0.1)
    (verdict,) = validator.validate([candidate])
    assert not verdict.passed
    assert verdict.reason == (f"e_above_hull 0.300 eV/atom > 0.1 eV/atom ({tiny_reference.name})")
    assert verdict.metrics["e_above_hull"] == pytest.approx(0.3)


def test_hull_without_energy_or_reference(tiny_reference) -> None:
    no_energy = make(rocksalt())
    kcl = make(rocksalt(6.3, "K", "Cl")).evolve(properties={"energy_per_atom": -3.0})
    verdicts = HullValidator(reference=tiny_reference).validate([no_energy, kcl])
    assert [v.passed for v in verdicts] == [False, False]
    assert str(verdicts[0].reason).startswith("no energy")
    assert str(verdicts[1].reason).startswith("no reference energy for K")


# -- pipeline ----------------------------------------------------------------------------------


class Recorder:
    """Wraps a validator and records the batch sizes it was called with."""

    def __init__(self, inner: Any, *, expensive: bool = False) -> None:
        self.inner = inner
        self.name = inner.name
        self.expensive = expensive
        self.batches: list[int] = []

    def validate(self, candidates):
        self.batches.append(len(candidates))
        return self.inner.validate(candidates)


def batch() -> list[Candidate]:
    overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    return [
        make(rocksalt(5.64), seed=0),
        make(overlapping, seed=1),
        make(cscl(4.1), seed=2),
        make(rocksalt(5.64) * (1, 1, 2), seed=3),  # duplicate of the first
        make(rocksalt(6.3, "K", "Cl"), seed=4),
        make(cscl(3.3).replace_species({Element("Cs"): Element("Na")}), seed=5),  # NaCl, B2
    ]


def test_pipeline_cheap_stages_on_all_then_chunks(tiny_reference) -> None:
    sanity = Recorder(SanityValidator())
    unique = Recorder(UniquenessValidator())
    relax = Recorder(FakeEnergyValidator(energies={"NaCl": -3.5}), expensive=True)
    hull = Recorder(HullValidator(reference=tiny_reference))
    pipeline = ValidationPipeline(stages=[sanity, unique, relax, hull], chunk_size=2)
    seen: list[tuple[int | None, str | None]] = []
    results = pipeline.run(
        batch(), on_result=lambda r: seen.append((r.candidate.seed, r.failed_stage))
    )

    assert sanity.batches == [6]
    assert unique.batches == [5]
    # seeds 0, 2, 4, 5 pass the cheap stages: chunks of two
    assert relax.batches == [2, 2]
    assert [r.candidate.seed for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.failed_stage for r in results] == [None, "sanity", "hull", "unique", "hull", None]
    # failures of cheap stages are reported first, then chunk by chunk
    assert seen == [(1, "sanity"), (3, "unique"), (0, None), (2, "hull"), (4, "hull"), (5, None)]
    assert results[2].reason is not None
    assert results[2].reason.startswith("no reference energy for Cs")
    assert results[4].reason == "no reference energy for K in tiny Na-Cl hull (1 entry)"


def test_pipeline_merges_metrics_and_structures(tiny_reference) -> None:
    relaxed = rocksalt(5.70)

    class Relax:
        name = "chgnet_relax"

        def validate(self, candidates):
            return [
                Verdict(
                    candidate_id=c.id,
                    validator=self.name,
                    passed=True,
                    metrics={"energy_per_atom": -3.5},
                    structure=relaxed,
                )
                for c in candidates
            ]

    pipeline = ValidationPipeline(
        stages=[SanityValidator(), Relax(), HullValidator(reference=tiny_reference)]
    )
    original = make(rocksalt(5.64))
    (result,) = pipeline.run([original])
    assert result.passed
    assert result.failed_stage is None
    assert result.candidate.id == original.id
    assert result.candidate.structure is relaxed
    assert [v.validator for v in result.verdicts] == ["sanity", "chgnet_relax", "hull"]
    props = result.candidate.properties
    assert props["n_atoms"] == 2
    assert props["energy_per_atom"] == -3.5
    assert props["e_above_hull"] == pytest.approx(0.05)
    data = json.loads(json.dumps(result.to_json()))
    assert data["candidate_id"] == original.id
    assert data["verdicts"][2]["metrics"]["formation_energy"] == pytest.approx(-1.95)
    assert Structure.from_dict(data["structure"]) == relaxed


def test_pipeline_rejects_a_stage_that_breaks_the_contract() -> None:
    class Broken:
        name = "broken"

        def validate(self, candidates):
            return []

    with pytest.raises(ValidationFailed, match="'broken' returned 0 verdicts for 1"):
        ValidationPipeline(stages=[Broken()]).run([make(rocksalt())])


def test_pipeline_rejects_duplicate_stage_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        ValidationPipeline(stages=[SanityValidator(), SanityValidator()])


def test_default_pipeline_end_to_end_with_fake_relaxer(tiny_reference) -> None:
    progress: list[tuple[int, int]] = []
    pipeline = default_pipeline(
        tiny_reference,
        relaxer=FakeEnergyValidator(energies={"NaCl": -3.52}),
        max_e_above_hull_ev=0.1,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert [s.name for s in pipeline.stages] == [
        "sanity",
        "smact",
        "symmetry",
        "unique",
        "chgnet_relax",
        "relaxed_symmetry",
        "hull",
        "properties",
        "novelty",
    ]
    results = pipeline.run(batch())
    assert isinstance(results[0], CandidateResult)
    assert [r.passed for r in results] == [True, False, False, False, False, True]
    props = results[0].candidate.properties
    assert props["space_group_number"] == 225
    assert props["relaxed_space_group_number"] == 225
    assert props["e_above_hull"] == pytest.approx(0.03)
    assert props["novel"] is False
    assert props["matches_reference"] == "mp-22862"
    # With a replacement relaxer the property stage gives band gap and density, not CHGNet's EOS.
    assert float(props["band_gap"] or 0.0) > 1.0  # rocksalt NaCl is an insulator
    assert props["density"] == pytest.approx(results[0].candidate.structure.density)
    assert "bulk_modulus" not in props
    assert progress[-1] == (6, 6)


def test_reduced_fits_agree_with_structure_matcher_fit():
    """The cached-reduction matcher answers exactly as ``StructureMatcher.fit`` does."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from crystalforge.tools.validators.uniqueness import _ReducedFits

    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    supercell = rocksalt.copy()
    supercell.make_supercell([2, 1, 1])
    shaken = rocksalt.copy()
    shaken.perturb(0.05, min_distance=0.0)
    zincblende = Structure.from_spacegroup(
        "F-43m", Lattice.cubic(4.6), ["Mg", "O"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    wurtzite = Structure.from_spacegroup(
        "P6_3mc",
        Lattice.hexagonal(3.2, 5.1),
        ["Mg", "O"],
        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]],
    )
    structures = {
        "rs": rocksalt,
        "super": supercell,
        "shaken": shaken,
        "zb": zincblende,
        "wz": wurtzite,
    }
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    fits = _ReducedFits(matcher)
    answers = {}
    for a, first in structures.items():
        for b, second in structures.items():
            answers[a, b] = fits(a, first, b, second)
            assert answers[a, b] == matcher.fit(first, second), (a, b)
    assert answers["rs", "super"]
    assert answers["rs", "shaken"]
    assert not answers["rs", "zb"]
    assert not answers["zb", "wz"]
