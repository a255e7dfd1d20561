"""The model-disagreement (uncertainty) stage: real CHGNet 0.2.0 on a tiny cell, flips logic."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Lattice, Structure

from crystalforge.core.candidate import Candidate
from crystalforge.tools.validators.fake import FakeEnergyValidator
from crystalforge.tools.validators.pipeline import default_pipeline
from crystalforge.tools.validators.uncertainty import (
    ModelDisagreementValidator,
    verdict_flips,
)


class NaClReference:
    """Na and Cl at 0 eV, NaCl at -2.0 eV/atom; chemical potentials Na -1.3, Cl -1.8 eV/atom.

    An energy E (eV/atom) of NaCl lands at E_hull = E + 3.55 eV/atom.
    """

    name = "test Na-Cl hull (1 entry)"

    def chemical_potentials(self, elements: Any) -> dict[str, float]:
        mu = {"Na": -1.3, "Cl": -1.8}
        return {el: mu[el] for el in elements if el in mu}

    def phase_diagram(self, chemsys: Any) -> PhaseDiagram:
        system = sorted(set(chemsys))
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        if set(system) >= {"Na", "Cl"}:
            entries.append(PDEntry(Composition("NaCl"), -4.0))
        return PhaseDiagram(entries, elements=[Element(e) for e in system])

    def known_phases(self, chemsys: Any, *, max_e_above_hull: Any = 0.1, exact: bool = False):
        return []

    def reference_structures(self, formula: str) -> list[Structure]:
        return []


def rocksalt(a: float = 5.64) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Na", "Cl"], [[0] * 3, [0.5] * 3])


def relaxed(e_above_hull: float | None, a: float = 5.64) -> Candidate:
    candidate = Candidate.create(rocksalt(a), generator="test")
    return candidate.evolve(properties={"e_above_hull": e_above_hull})


def test_verdict_flips() -> None:
    assert verdict_flips(0.05, 0.2) is True
    assert verdict_flips(0.2, 0.05) is True
    assert verdict_flips(0.05, 0.09) is False
    assert verdict_flips(0.3, 0.5) is False
    assert verdict_flips(0.1, 0.1) is False  # the threshold itself counts as stable
    assert verdict_flips(0.05, 0.2, threshold_ev=0.3) is False


def test_flips_and_disagreement_with_a_fake_second_model() -> None:
    candidates = [
        relaxed(0.05, 5.60),
        relaxed(0.05, 5.64),
        relaxed(0.25, 5.68),
        relaxed(None, 5.72),
    ]
    fake_energies = {5.60: -3.35, 5.64: -3.48, 5.68: -3.50}  # E_hull 0.20, 0.07, 0.05

    def energy_fn(structures: Any) -> list[float]:
        return [fake_energies.get(round(s.lattice.a * 2**0.5, 2), math.nan) for s in structures]

    validator = ModelDisagreementValidator(reference=NaClReference(), energy_fn=energy_fn)
    verdicts = validator.validate(candidates)
    assert [v.passed for v in verdicts] == [True] * 4  # never fails a candidate
    assert [v.validator for v in verdicts] == ["uncertainty"] * 4
    flips = [v.metrics["verdict_flips"] for v in verdicts]
    assert flips == [True, False, True, None]
    assert verdicts[0].metrics["e_above_hull_alt"] == pytest.approx(0.20)
    assert verdicts[0].metrics["e_hull_disagreement"] == pytest.approx(0.15)
    assert verdicts[1].metrics["e_hull_disagreement"] == pytest.approx(0.02)
    assert verdicts[2].metrics["e_hull_disagreement"] == pytest.approx(0.20)
    # No primary E_hull (and no alternative energy): reported as unknown, not failed.
    assert verdicts[3].metrics == {
        "e_above_hull_alt": None,
        "e_hull_disagreement": None,
        "verdict_flips": None,
    }
    strict = ModelDisagreementValidator(
        reference=NaClReference(), energy_fn=energy_fn, threshold_ev=0.0
    )
    assert [v.metrics["verdict_flips"] for v in strict.validate(candidates[:3])] == [
        False,
        False,
        False,
    ]
    assert validator.validate([]) == []


def test_default_pipeline_places_uncertainty_after_hull() -> None:
    names = [s.name for s in default_pipeline(NaClReference()).stages]
    assert names[names.index("hull") + 1 :] == ["properties", "uncertainty", "novelty"]
    assert "uncertainty" not in [
        s.name for s in default_pipeline(NaClReference(), uncertainty=False).stages
    ]
    # A replacement relaxer's energies are not CHGNet's: no disagreement stage.
    fake = default_pipeline(NaClReference(), relaxer=FakeEnergyValidator())
    assert "uncertainty" not in [s.name for s in fake.stages]


def test_real_chgnet_020_on_a_two_atom_cell() -> None:
    pytest.importorskip("chgnet")
    candidate = relaxed(-0.10)
    (verdict,) = ModelDisagreementValidator(reference=NaClReference(), device="cpu").validate(
        [candidate]
    )
    assert verdict.passed
    alt = verdict.metrics["e_above_hull_alt"]
    assert isinstance(alt, float)
    # CHGNet puts rocksalt NaCl near -3.67 eV/atom, i.e. ~0.1 eV/atom below this toy hull.
    assert -0.5 < alt < 0.3
    assert verdict.metrics["e_hull_disagreement"] == pytest.approx(abs(alt + 0.10))
    assert verdict.metrics["verdict_flips"] is (alt > 0.1)
