"""``crystalforge eval csp`` end to end on two held-out rows with a tiny random checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

pytest.importorskip("torch")
pytest.importorskip("chgnet")

from crystalforge.core.errors import ConfigError, DataError
from crystalforge.evals.base import SuiteOptions, SuiteResult
from crystalforge.evals.csp import (
    HELD_OUT,
    any_of_k_metrics,
    best_by_energy,
    largest_cluster_near_minimum,
    most_symmetric_near_minimum,
    run,
    sample_rows,
    tuning_rows,
)
from crystalforge.evals.registry import available_suites
from tests.generators.test_diffusion_generator import write_tiny_checkpoint

if TYPE_CHECKING:
    from pathlib import Path


def quick_run(data_dir: Path, tmp_path: Path, methods: tuple[str, ...]) -> SuiteResult:
    """``--quick`` on two held-out rows with a tiny random diffusion checkpoint."""
    checkpoint = str(write_tiny_checkpoint(tmp_path / "tiny.pt"))
    options = SuiteOptions(
        quick=True, data_dir=data_dir, limit=2, device="cpu", out_dir=tmp_path, families=methods
    )
    return run(options, checkpoint_path=checkpoint)


def test_csp_suite_is_registered() -> None:
    assert "csp" in available_suites()


def test_quick_run_gives_seven_selections_per_method(data_dir: Path, tmp_path: Path) -> None:
    import gzip
    import json

    result = quick_run(data_dir, tmp_path, ("diffusion", "pyxtal"))
    assert [(r["method"], r["k"]) for r in result.rows] == [
        (method, k) for method in ("diffusion", "pyxtal") for k in (1, 1, 2, 2, 2, 2, 2)
    ]
    assert "after refinement" in str(result.rows[3]["selection"])
    with gzip.open(tmp_path / "csp-samples-pyxtal.json.gz", "rt") as handle:
        dumped = json.load(handle)
    assert dumped["material_ids"] == result.metadata["material_ids"]
    assert len(dumped["raw"]) == len(dumped["relaxed"]) == len(dumped["energies_ev_per_atom"]) == 2
    assert len(dumped["refined"]) == len(dumped["refined_energies_ev_per_atom"]) == 2
    for row in result.rows:
        assert row["rows"] == 2
        assert 0 <= row["matched"] <= 2  # type: ignore[operator]
        assert row["match_rate"] == row["matched"] / 2  # type: ignore[operator]
    assert len(result.metadata["material_ids"]) == 2
    assert result.metadata["k"] == 2


def test_template_methods_predict_each_row_from_training_templates(
    data_dir: Path, tmp_path: Path
) -> None:
    """Both template methods on real rows: the renamed templates keep each row's atoms."""
    import gzip
    import json

    from pymatgen.core import Structure

    result = quick_run(data_dir, tmp_path, ("template", "diffusion-template"))
    assert [r["method"] for r in result.rows] == ["template"] * 7 + ["diffusion-template"] * 7
    rows = sample_rows(data_dir, 2, 0)
    for method in ("template", "diffusion-template"):
        with gzip.open(tmp_path / f"csp-samples-{method}.json.gz", "rt") as handle:
            raw = json.load(handle)["raw"]
        for draw in raw:
            for row, sample in zip(rows, draw, strict=True):
                if sample is not None:
                    atoms = Structure.from_dict(sample).composition
                    assert atoms == row.truth.composition
    # diffusion-template fills every slot (templates first, free samples after).
    assert all(
        r["no_structure"] == 0
        for r in result.rows
        if r["method"] == "diffusion-template" and r["k"] == 1
    )


def test_tuning_needs_the_split_seed_of_the_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    import torch

    path = write_tiny_checkpoint(tmp_path / "tiny.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.pop("seed")
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match="seed of its validation split"):
        tuning_rows(data_dir, 2, 0, str(path))


@pytest.mark.slow
def test_tuning_rows_come_from_the_validation_split_only(data_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from crystalforge.generators.diffusion.data import load_crystals
    from crystalforge.generators.diffusion.train import VAL_SHARE

    rows = tuning_rows(data_dir, 12, 3)
    again = tuning_rows(data_dir, 12, 3)  # the split is cached: the same rows, quickly
    assert [r.material_id for r in rows] == [r.material_id for r in again]
    assert [r.material_id for r in tuning_rows(data_dir, 12, 4)] != [r.material_id for r in rows]
    held_out = set(pd.read_csv(data_dir / HELD_OUT, usecols=["material_id"]).material_id)
    _, ids = load_crystals(data_dir)
    order = np.random.default_rng(0).permutation(len(ids))  # the shipped checkpoint's seed
    n_val = round(VAL_SHARE * len(ids))
    validation, training = {ids[i] for i in order[:n_val]}, {ids[i] for i in order[n_val:]}
    assert len(rows) == 12
    for row in rows:
        assert row.material_id in validation
        assert row.material_id not in training
        assert row.material_id not in held_out
    # A checkpoint whose validation part has another size was trained on other rows.
    import torch

    subset = write_tiny_checkpoint(tmp_path / "subset.pt")
    checkpoint = torch.load(subset, weights_only=True)
    checkpoint["val_rows"] = 3
    torch.save(checkpoint, subset)
    with pytest.raises(DataError, match="validated on 3 rows"):
        tuning_rows(data_dir, 2, 0, str(subset))


def test_unknown_method_is_a_config_error(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'cdvae'"):
        run(SuiteOptions(quick=True, data_dir=data_dir, families=("cdvae",)))


def test_selection_uses_energy_and_any_of_k_uses_every_sample() -> None:
    from pymatgen.core import Lattice, Structure

    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5],
    ])  # fmt: skip
    cscl = Structure(Lattice.cubic(3.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    samples = [[cscl, None], [nacl, cscl]]
    assert best_by_energy(samples, [[-1.0, float("nan")], [-2.0, -1.0]]) == [nacl, cscl]
    assert best_by_energy(samples, [[-3.0, float("nan")], [-2.0, float("nan")]]) == [cscl, None]
    metrics = any_of_k_metrics(samples, [nacl, nacl])
    assert metrics.matched == 1
    assert metrics.rmse < 1e-6


def test_near_minimum_selections_prefer_symmetry_and_recurrence_within_the_window() -> None:
    from pymatgen.core import Lattice, Structure

    cubic = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    sheared = Structure(Lattice.from_parameters(3.0, 3.9, 4.6, 70, 80, 100), ["Cu"], [[0, 0, 0]])
    relaxed = [[sheared], [cubic], [cubic]]
    # The distortion is 10 meV/atom lower: inside a 20 meV window symmetry wins, outside not.
    energies = [[-1.01], [-1.0], [-0.9]]
    assert best_by_energy(relaxed, energies) == [sheared]
    assert most_symmetric_near_minimum(relaxed, energies, 0.02) == [cubic]
    assert most_symmetric_near_minimum(relaxed, energies, 0.005) == [sheared]
    # cubic recurs twice (the -0.9 copy counts towards its frequency) and wins on frequency.
    assert largest_cluster_near_minimum(relaxed, energies, 0.02) == [cubic]
    assert largest_cluster_near_minimum(relaxed, energies, 0.005) == [sheared]
    assert most_symmetric_near_minimum([[None]], [[float("nan")]], 0.02) == [None]


def test_guidance_formation_energy_subtracts_elemental_references() -> None:
    import math

    from pymatgen.core import Lattice, Structure

    from crystalforge.evals.csp_guidance import formation_energies

    nacl = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = formation_energies([nacl, None, nacl], [-4.0, -1.0, math.nan], {"Na": -1.0, "Cl": -2.0})
    assert out[0] == -2.5
    assert math.isnan(out[1])
    assert math.isnan(out[2])
