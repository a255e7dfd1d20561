"""Band-gap model, equation-of-state fit and the property stage (real CHGNet on 1-2 atom cells)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystalforge.core.candidate import Candidate
from crystalforge.core.spec import DesignSpec, PropertyTarget
from crystalforge.tools.assess import assess, property_values
from crystalforge.tools.validators.band_gap import (
    CHECKPOINT,
    FEATURE_COUNT,
    BandGapModel,
    featurize,
    featurize_one,
    load_band_gap_model,
)
from crystalforge.tools.validators.properties import (
    PropertyValidator,
    fit_birch_murnaghan,
    strained_cells,
)
from tests.contracts.validator import make_validator_contract_tests


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [cation, anion], [[0, 0, 0], [0.5] * 3]
    )


def bcc(a: float, element: str) -> Structure:
    h = a / 2
    return Structure(Lattice([[-h, h, h], [h, -h, h], [h, h, -h]]), [element], [[0, 0, 0]])


def make(structure: Structure, seed: int = 0) -> Candidate:
    return Candidate.create(structure, generator="test", seed=seed)


# -- band gap model ----------------------------------------------------------------------------


def test_features_have_the_documented_width_and_are_finite() -> None:
    x = featurize([Composition("NaCl"), Composition("Fe2O3"), Composition("Si")])
    assert x.shape == (3, FEATURE_COUNT)
    assert np.isfinite(x).all()
    # Fraction vector: Na (Z=11) and Cl (Z=17) at 0.5 each, nothing else.
    fractions = featurize_one(Composition("NaCl"))[-(94 + 6 + 4 + 2) : -(6 + 4 + 2)]
    assert fractions[10] == pytest.approx(0.5)
    assert fractions[16] == pytest.approx(0.5)
    assert fractions.sum() == pytest.approx(1.0)
    assert featurize([]).shape == (0, FEATURE_COUNT)


@pytest.mark.parametrize(
    ("composition", "message"),
    [(Composition(), "empty composition"), (Composition("AmO2"), "beyond Z=94")],
)
def test_bad_compositions_get_a_clear_error(composition: Composition, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        featurize_one(composition)


def test_shipped_model_tells_salts_from_metals() -> None:
    gaps, p_gapped = load_band_gap_model().predict(
        [Composition("NaCl"), Composition("MgO"), Composition("Cu"), Composition("Al3Ni")]
    )
    assert gaps[0] > 3.0  # DFT (GGA) gap ~5 eV
    assert gaps[1] > 2.0  # ~4.5 eV
    assert gaps[2] == 0.0
    assert gaps[3] == 0.0
    assert p_gapped[0] > 0.9
    assert p_gapped[2] < 0.1
    assert CHECKPOINT.stat().st_size < 5_000_000


def test_checkpoint_round_trips(tmp_path) -> None:
    model = load_band_gap_model()
    path = tmp_path / "copy.npz"
    model.save(path)
    again = BandGapModel.load(path)
    x = featurize([Composition("GaAs"), Composition("TiO2")])
    np.testing.assert_allclose(again.predict_features(x)[0], model.predict_features(x)[0], 1e-5)
    assert again.threshold == model.threshold


# -- equation of state ---------------------------------------------------------------------------


def _birch_murnaghan(v: np.ndarray, e0: float, b0: float, bp: float, v0: float) -> np.ndarray:
    eta = (v0 / v) ** (2 / 3)
    return e0 + 9 * v0 * b0 / 16 * ((eta - 1) ** 3 * bp + (eta - 1) ** 2 * (6 - 4 * eta))


def test_birch_murnaghan_fit_recovers_a_known_modulus() -> None:
    v = 40.0 * (1 + np.array([-0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06]))
    b0_ev_a3 = 100.0 / 160.21766208  # 100 GPa
    energies = _birch_murnaghan(v, -10.0, b0_ev_a3, 4.5, 40.4)
    fit = fit_birch_murnaghan(v, energies, n_atoms=2)
    assert not isinstance(fit, str)
    assert fit.bulk_modulus_gpa == pytest.approx(100.0, rel=1e-3)
    assert fit.v0_per_atom == pytest.approx(20.2, rel=1e-4)
    assert fit.rmse_mev < 1e-3


def test_fit_refuses_a_minimum_outside_the_sampled_volumes() -> None:
    v = 40.0 * (1 + np.array([-0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06]))
    energies = _birch_murnaghan(v, -10.0, 0.6, 4.0, 52.0)  # minimum 30% above the cell
    reason = fit_birch_murnaghan(v, energies, n_atoms=2)
    assert isinstance(reason, str)
    assert "outside the sampled" in reason
    assert "non-finite" in str(fit_birch_murnaghan(v, energies * np.nan, n_atoms=2))


def test_strained_cells_scale_volume_not_shape() -> None:
    nacl = rocksalt(5.64, "Na", "Cl")
    cells = strained_cells(nacl, (-0.06, 0.0, 0.06))
    assert [c.volume / nacl.volume for c in cells] == pytest.approx([0.94, 1.0, 1.06])
    assert cells[0].lattice.angles == pytest.approx(nacl.lattice.angles)
    np.testing.assert_allclose(cells[2].frac_coords, nacl.frac_coords)


# -- the stage, with real CHGNet -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_verdicts():
    pytest.importorskip("chgnet")
    candidates = [
        make(rocksalt(5.69, "Na", "Cl")),  # near CHGNet's equilibrium (experiment 5.64 Å)
        make(bcc(2.84, "Fe")),  # ferromagnetic bcc iron
        make(rocksalt(5.69 * 0.8, "Na", "Cl"), seed=1),  # squeezed: the EOS minimum lies outside
        make(rocksalt(4.8, "Am", "O")),  # Am (Z=95): beyond CHGNet and the band-gap model
    ]
    validator = PropertyValidator(device="cpu")
    return validator.validate(candidates), candidates, validator


def test_stage_reports_every_property_in_canonical_units(stage_verdicts) -> None:
    verdicts, candidates, validator = stage_verdicts
    assert [v.candidate_id for v in verdicts] == [c.id for c in candidates]
    assert all(v.passed and v.validator == "properties" for v in verdicts)
    nacl, fe = verdicts[0].metrics, verdicts[1].metrics
    assert 15.0 < float(nacl["bulk_modulus"]) < 40.0  # experiment 24 GPa
    assert float(nacl["magnetic_moment"]) < 0.1
    assert float(fe["magnetic_moment"]) > 1.5  # experiment 2.2 μB/atom
    assert float(nacl["band_gap"]) > 3.0
    assert fe["band_gap"] == 0.0
    assert nacl["density"] == pytest.approx(candidates[0].structure.density)
    assert "properties_note" not in nacl
    assert set(validator.timings) == {"band_gap", "eos"}
    json.dumps([v.to_json() for v in verdicts])


def test_stage_explains_what_it_could_not_compute(stage_verdicts) -> None:
    verdicts, _, _ = stage_verdicts
    squeezed, americium = verdicts[2].metrics, verdicts[3].metrics
    assert "bulk_modulus" not in squeezed
    assert "outside the sampled" in str(squeezed["properties_note"])
    assert "band_gap" in squeezed  # the composition model does not care about the cell
    assert "bulk_modulus" not in americium
    assert "band_gap" not in americium
    note = str(americium["properties_note"])
    assert "beyond Z=94" in note
    assert "CHGNet" in note


def test_stage_without_eos_needs_no_chgnet() -> None:
    verdicts = PropertyValidator(eos=False).validate([make(rocksalt(5.64, "Na", "Cl"))])
    assert set(verdicts[0].metrics) == {"band_gap", "band_gap_p_gapped", "density"}


def test_stage_rejects_a_useless_strain_grid() -> None:
    with pytest.raises(ValueError, match=r"at least 5 points including 0\.0"):
        PropertyValidator(volume_strains=(-0.05, 0.05))


@pytest.fixture
def property_validator():
    pytest.importorskip("chgnet")
    return PropertyValidator(device="cpu")


TestPropertyContract = make_validator_contract_tests("property_validator")


# -- assess uses them ------------------------------------------------------------------------------


def test_assess_evaluates_band_gap_bulk_modulus_and_magnetic_moment() -> None:
    spec = DesignSpec(
        request="a hard insulator",
        chemical_system=("Na", "Cl"),
        max_atoms=8,
        targets=(
            PropertyTarget(name="band_gap", min=3.0),
            PropertyTarget(name="bulk_modulus", min=100.0),
            PropertyTarget(name="magnetic_moment", max=0.5),
            PropertyTarget(name="density", min=1.0, max=5.0),
        ),
    )
    candidate = make(rocksalt(5.64, "Na", "Cl")).evolve(
        properties={
            "band_gap": 5.1,
            "bulk_modulus": 25.0,
            "magmom_mean": 0.9,  # the relaxer's value is overridden by the property stage's
            "magnetic_moment": 0.01,
            "e_above_hull": 0.0,
        }
    )
    result = assess(spec, candidate, passed=True)
    assert result.unevaluated == ()
    assert len(result.unmet) == 1
    assert "bulk_modulus" in result.unmet[0]
    assert result.values["magnetic_moment"] == 0.01
    assert not result.meets_hard
    bare = make(rocksalt(5.64, "Na", "Cl"))
    assert "band_gap" not in property_values(bare)
    assert math.isfinite(property_values(bare)["density"])


# -- the eval suite ------------------------------------------------------------------------------


@pytest.mark.slow  # ~11 s of CHGNet on three solids: keeps this file under ~30 s
def test_properties_suite_measures_band_gap_error_on_held_out_rows(data_dir) -> None:
    pytest.importorskip("chgnet")
    from crystalforge.evals.base import SuiteOptions
    from crystalforge.evals.properties import run

    result = run(SuiteOptions(quick=True, limit=300, device="cpu", data_dir=data_dir))
    ours, zero, _ = result.rows
    assert ours["n"] == 300
    assert float(ours["mae_ev"] or 0) < float(zero["mae_ev"] or 0)  # beats "always a metal"
    assert result.metadata["band_gap_rows"] == 300
    assert len(result.metadata["solids"]) == 3
    assert any("NaCl" in note and "GPa" in note for note in result.notes)


# -- the training data respects the split convention ----------------------------------------------


def test_band_gap_training_pool_holds_no_held_out_id(data_dir) -> None:
    from crystalforge.tools.validators.train_band_gap import held_out_ids, training_rows

    pool = training_rows(data_dir)
    held = held_out_ids(data_dir)
    assert len(held) == 7118
    assert not set(pool.ids) & held
    assert len(set(pool.ids)) == len(pool.ids)  # deduplicated by material_id
    assert len(pool.ids) > 30_000
