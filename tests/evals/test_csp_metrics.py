"""CSP match metrics with the real StructureMatcher on small cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.evals.csp import match_metrics


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_perturbed_truth_matches_with_small_rmse_and_wrong_structure_does_not() -> None:
    truth = _rocksalt().get_primitive_structure()
    jiggled = truth.copy()
    jiggled.perturb(0.05, min_distance=0.01)
    rotated = truth.copy()
    rotated.translate_sites(list(range(len(rotated))), [0.3, 0.1, 0.2])
    cscl = Structure(Lattice.cubic(3.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    metrics = match_metrics([jiggled, rotated, cscl, None], [truth] * 4)
    assert metrics.pairs == 4
    assert metrics.matched == 2
    assert metrics.match_rate == 0.5
    assert 0 < metrics.rmse < 0.05


def test_no_matches_gives_nan_rmse() -> None:
    truth = _rocksalt()
    metrics = match_metrics([None], [truth])
    assert metrics.match_rate == 0
    assert math.isnan(metrics.rmse)


def test_lengths_must_pair_up() -> None:
    with pytest.raises(ValueError, match="must pair up"):
        match_metrics([], [_rocksalt()])
    assert np.isfinite(match_metrics([_rocksalt()], [_rocksalt()]).rmse)
