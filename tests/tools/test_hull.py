"""The hull validator on the real offline MP-20 hull (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.core.candidate import Candidate
from crystalforge.memory.reference_data import ReferenceData, load_reference
from crystalforge.tools.validators.hull import HullValidator

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"offline reference data not found at {DATA} (../shared/data)"
)


@pytest.fixture(scope="module")
def reference() -> ReferenceData:
    ref = load_reference(DATA)
    assert isinstance(ref, ReferenceData)
    return ref


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    frame = pd.read_csv(DATA / "mp_20_biternary" / "test.csv.gz", index_col=0)
    return frame.sample(40, random_state=0)


def candidate_of(row: pd.Series) -> Candidate:
    structure = Structure.from_str(str(row["cif"]), fmt="cif")
    return Candidate.create(
        structure, generator="mp_20_biternary", parameters={"material_id": str(row["material_id"])}
    )


def dft_energy_per_atom(candidate: Candidate, formation: float, mu: dict[str, float]) -> float:
    composition = candidate.structure.composition
    return formation + sum(
        composition.get_atomic_fraction(el) * mu[el.symbol] for el in composition
    )


def test_dft_formation_energies_reproduce_the_csv_e_above_hull(reference, test_rows) -> None:
    mu = reference.elemental_references()
    candidates = [
        candidate_of(row).evolve(
            properties={
                "energy_per_atom": dft_energy_per_atom(
                    candidate_of(row), row["formation_energy_per_atom"], mu
                )
            }
        )
        for _, row in test_rows.iterrows()
    ]
    verdicts = HullValidator(reference=reference).validate(candidates)
    computed = np.array([v.metrics["e_above_hull"] for v in verdicts], dtype=float)
    formation = np.array([v.metrics["formation_energy"] for v in verdicts], dtype=float)
    expected = test_rows["e_above_hull"].to_numpy()
    assert all(v.passed for v in verdicts)
    np.testing.assert_allclose(formation, test_rows["formation_energy_per_atom"], atol=1e-9)
    # The offline hull is a subset of the MP hull: it can only under-estimate e_above_hull.
    assert (computed <= expected + 1e-3).all()
    assert np.abs(computed - expected).mean() < 0.01
    assert verdicts[0].metrics["reference"] == "MP-20 offline hull (47,421 entries)"


def test_threshold_and_decomposition(reference, test_rows) -> None:
    mu = reference.elemental_references()
    row = test_rows.iloc[0]
    candidate = candidate_of(row)
    energy = dft_energy_per_atom(candidate, row["formation_energy_per_atom"], mu) + 0.2
    (verdict,) = HullValidator(reference=reference, max_e_above_hull_ev=0.1).validate(
        [candidate.evolve(properties={"energy_per_atom": energy})]
    )
    assert not verdict.passed
    assert str(verdict.reason).startswith("e_above_hull 0.2")
    assert "mp-" in str(verdict.metrics["decomposition"])


def test_element_without_reference_energy(reference) -> None:
    polonium = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    candidate = Candidate.create(polonium, generator="test").evolve(
        properties={"energy_per_atom": -3.0}
    )
    (verdict,) = HullValidator(reference=reference).validate([candidate])
    assert not verdict.passed
    assert str(verdict.reason).startswith("no reference energy for Po")


@pytest.mark.chgnet
def test_chgnet_static_energies_sit_on_the_dft_hull(reference, test_rows) -> None:
    pytest.importorskip("chgnet", reason="needs the 'chgnet' extra")
    from crystalforge.tools.validators.chgnet import load_chgnet

    model = load_chgnet("cpu")
    rows = test_rows.iloc[:10]
    candidates = []
    for _, row in rows.iterrows():
        candidate = candidate_of(row)
        energy = float(model.predict_structure(candidate.structure, task="e")["e"])
        candidates.append(candidate.evolve(properties={"energy_per_atom": energy}))
    verdicts = HullValidator(reference=reference).validate(candidates)
    e_hull = np.array([v.metrics["e_above_hull"] for v in verdicts], dtype=float)
    e_form = np.array([v.metrics["formation_energy"] for v in verdicts], dtype=float)
    # Measured on 20 such rows: 0.020 eV/atom MAE for e_above_hull, 0.019 for formation energy.
    assert np.abs(e_hull - rows["e_above_hull"].to_numpy()).mean() < 0.05
    assert np.abs(e_form - rows["formation_energy_per_atom"].to_numpy()).mean() < 0.05


@pytest.mark.chgnet
@pytest.mark.parametrize("material_id", ["mp-1138", "mp-2251"], ids=["LiF", "Li3N"])
def test_relaxed_stable_material_lands_on_the_hull(reference, material_id: str) -> None:
    pytest.importorskip("chgnet", reason="needs the 'chgnet' extra")
    from crystalforge.tools.validators.chgnet import CHGNetRelaxer

    frame = pd.read_csv(DATA / "mp_20_biternary" / "test.csv.gz", index_col=0)
    row = frame[frame["material_id"] == material_id].iloc[0]
    assert row["e_above_hull"] == 0.0
    candidate = candidate_of(row)
    (relaxed,) = CHGNetRelaxer(device="cpu").validate([candidate])
    assert relaxed.passed
    candidate = candidate.evolve(structure=relaxed.structure, properties=relaxed.metrics)
    (verdict,) = HullValidator(reference=reference).validate([candidate])
    assert abs(verdict.metrics["e_above_hull"]) < 0.1  # type: ignore[arg-type]
    assert verdict.metrics["formation_energy"] == pytest.approx(
        row["formation_energy_per_atom"], abs=0.1
    )
