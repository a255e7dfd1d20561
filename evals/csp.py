"""CSP metrics: match rate and RMSE with StructureMatcher, the DiffCSP protocol.

:func:`match_metrics` compares one predicted structure per composition with the held-out truth
using ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``; RMSE is pymatgen's
``get_rms_dist`` (normalized by ``(V / N)^(1/3)``) averaged over matched pairs, as in DiffCSP.
The suite that runs a CSP model on held-out ``mp_20_biternary/test`` rows is not written yet
(no trained model; see ``docs/models/diffusion.md``), so this module is not registered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

STOL = 0.5
"""StructureMatcher site tolerance (DiffCSP)."""
ANGLE_TOL = 10.0
"""StructureMatcher angle tolerance, degrees (DiffCSP)."""
LTOL = 0.3
"""StructureMatcher fractional length tolerance (DiffCSP)."""


@dataclass(frozen=True)
class MatchMetrics:
    """Match rate (share of pairs matched) and mean normalized RMSE over matched pairs."""

    pairs: int
    matched: int
    rmse: float
    """Mean of pymatgen's normalized RMS displacement over matched pairs (NaN if none)."""

    @property
    def match_rate(self) -> float:
        """Matched pairs over all pairs (0 when there are none)."""
        return self.matched / self.pairs if self.pairs else 0.0


def match_metrics(
    predicted: Sequence[Structure | None], truth: Sequence[Structure]
) -> MatchMetrics:
    """Match rate and RMSE of ``predicted[i]`` against ``truth[i]``.

    Args:
        predicted: One prediction per truth; ``None`` counts as a failed (unmatched) sample.
        truth: Reference structures.

    Returns:
        The metrics.

    Raises:
        ValueError: The two sequences differ in length.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if len(predicted) != len(truth):
        raise ValueError(
            f"predicted and truth must pair up, got {len(predicted)} and {len(truth)} structures"
        )
    matcher = StructureMatcher(stol=STOL, angle_tol=ANGLE_TOL, ltol=LTOL)
    rms: list[float] = []
    for pred, ref in zip(predicted, truth, strict=True):
        if pred is None:
            continue
        try:
            dist = matcher.get_rms_dist(pred, ref)
        except Exception:  # pymatgen raises on degenerate lattices: count as unmatched
            dist = None
        if dist is not None:
            rms.append(float(dist[0]))
    rmse = sum(rms) / len(rms) if rms else math.nan
    return MatchMetrics(pairs=len(truth), matched=len(rms), rmse=rmse)
