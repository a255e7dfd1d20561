"""The hull-accuracy suite's scoring, and leaving a material's own entry out of the hull."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from pymatgen.core import Structure

from crystalforge.core.candidate import Candidate
from crystalforge.evals.hull_accuracy import classification, sample_rows
from crystalforge.evals.registry import available_suites
from crystalforge.memory.reference_data import ReferenceData
from crystalforge.tools.validators.hull import HullValidator

if TYPE_CHECKING:
    from pathlib import Path

    from pymatgen.analysis.phase_diagram import PhaseDiagram

ON_HULL = "mp-559246"
"""BaCrF6, on the MP hull (DFT e_above_hull 0) and the only Ba-Cr-F entry near it."""


def test_registered() -> None:
    assert "hull-accuracy" in available_suites()


def test_classification() -> None:
    dft = [0.0, 0.05, 0.3, 0.5, 0.02, math.nan]
    predicted = [0.02, 0.2, 0.05, 0.6, 0.0, 0.0]
    scores = classification(dft, predicted)
    assert scores["n"] == 5
    # stable (<= 0.1) is positive: TP = rows 0, 4; FN = row 1; FP = row 2; TN = row 3.
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["mae_ev"] == pytest.approx((0.02 + 0.15 + 0.25 + 0.1 + 0.02) / 5)
    assert scores["mae_dft_stable_ev"] == pytest.approx((0.02 + 0.15 + 0.02) / 3)
    assert scores["mae_dft_unstable_ev"] == pytest.approx((0.25 + 0.1) / 2)
    empty = classification([], [])
    assert empty["n"] == 0
    assert empty["f1"] is None


@pytest.fixture(scope="module")
def reference(data_dir: Path) -> ReferenceData:
    return ReferenceData.from_dir(data_dir)


def test_sample_rows_is_seeded_and_split(data_dir: Path) -> None:
    positives, negatives = sample_rows(data_dir, n_positives=5, n_negatives=4, seed=3)
    again, _ = sample_rows(data_dir, n_positives=5, n_negatives=4, seed=3)
    assert list(positives["material_id"]) == list(again["material_id"])
    assert len(positives) == 5
    assert len(negatives) == 4
    assert max(positives["dft_e_hull"].tolist()) <= 0.08 + 1e-9
    assert min(negatives["dft_e_hull"].tolist()) > 0.1


class Delegating:
    """A reference whose ``phase_diagram`` takes no ``exclude_ids`` (the generic path)."""

    def __init__(self, inner: ReferenceData) -> None:
        self.inner = inner
        self.name = inner.name

    def chemical_potentials(self, elements: Any) -> dict[str, float]:
        return self.inner.chemical_potentials(elements)

    def phase_diagram(self, chemsys: Any) -> PhaseDiagram:
        return self.inner.phase_diagram(chemsys)

    def known_phases(self, chemsys: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self.inner.known_phases(chemsys, **kwargs)

    def reference_structures(self, formula: str) -> list[Structure]:
        return self.inner.reference_structures(formula)


def test_excluding_a_materials_own_entry(reference: ReferenceData, data_dir: Path) -> None:
    frame = pd.read_csv(data_dir / "mp_20_biternary" / "test.csv.gz", index_col=0)
    row = frame[frame["material_id"] == ON_HULL].iloc[0]
    structure = Structure.from_str(str(row["cif"]), fmt="cif")
    mu = reference.elemental_references()
    composition = structure.composition
    energy = float(row["formation_energy_per_atom"]) + sum(
        composition.get_atomic_fraction(el) * mu[el.symbol] for el in composition
    )
    candidate = Candidate.create(structure, generator="test").evolve(
        properties={"energy_per_atom": energy}
    )
    chemsys = [el.symbol for el in composition]
    ids = {
        getattr(e.attribute, "material_id", None)
        for e in reference.phase_diagram(chemsys).all_entries
    }
    assert ON_HULL in ids
    excluded = reference.phase_diagram(chemsys, exclude_ids=[ON_HULL])
    assert ON_HULL not in {getattr(e.attribute, "material_id", None) for e in excluded.all_entries}

    (own,) = HullValidator(reference=reference).validate([candidate])
    assert own.metrics["e_above_hull"] == pytest.approx(0.0, abs=1e-6)  # its own entry
    exclude = {candidate.id: (ON_HULL,)}
    (left_out,) = HullValidator(reference=reference, exclude_ids=exclude).validate([candidate])
    e_hull = left_out.metrics["e_above_hull"]
    assert isinstance(e_hull, float)
    assert e_hull < -0.05  # it is the hull here: without it, it lies below the others
    assert ON_HULL not in str(left_out.metrics["decomposition"])
    (generic,) = HullValidator(reference=Delegating(reference), exclude_ids=exclude).validate(
        [candidate]
    )
    assert generic.metrics["e_above_hull"] == pytest.approx(e_hull)
    # The cached, unexcluded diagram is untouched.
    (again,) = HullValidator(reference=reference).validate([candidate])
    assert again.metrics["e_above_hull"] == pytest.approx(0.0, abs=1e-6)
