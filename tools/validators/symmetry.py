"""Space-group analysis (spglib through pymatgen's SpacegroupAnalyzer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crystalforge.core.candidate import Verdict
from crystalforge.tools.validators.sanity import malformed_reason

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystalforge.core.candidate import Candidate


@dataclass(frozen=True, kw_only=True)
class SymmetryValidator:
    """Determine each structure's space group; optionally require one of a set.

    Verdict metrics: ``{prefix}space_group_number`` and ``{prefix}space_group_symbol``
    (Hermann-Mauguin). Fails only when ``allowed_space_groups`` is non-empty and the group is
    not in it, or when the symmetry cannot be determined. Use ``metric_prefix="relaxed_"`` (and
    another ``name``) for a second pass on relaxed structures, so that keys stay unique.
    """

    name: str = "symmetry"
    symprec: float = 0.1
    """Distance tolerance, Å."""
    angle_tolerance: float = 5.0
    """Angle tolerance, degrees."""
    allowed_space_groups: tuple[int, ...] = ()
    """International space-group numbers accepted (empty: any)."""
    metric_prefix: str = ""

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Analyse each candidate's structure.

        Args:
            candidates: Candidates to analyse.

        Returns:
            One verdict per candidate, in order.
        """
        return [self._check(candidate) for candidate in candidates]

    def _check(self, candidate: Candidate) -> Verdict:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        # spglib dies with a segmentation fault on NaN coordinates: check before calling it.
        reason = malformed_reason(candidate.structure)
        if reason is not None:
            return Verdict.failed(candidate.id, self.name, reason)
        try:
            analyzer = SpacegroupAnalyzer(
                candidate.structure, symprec=self.symprec, angle_tolerance=self.angle_tolerance
            )
            number = int(analyzer.get_space_group_number())
            symbol = str(analyzer.get_space_group_symbol())
        except ValueError as exc:  # includes pymatgen's SymmetryUndeterminedError
            return Verdict.failed(
                candidate.id,
                self.name,
                f"symmetry could not be determined (symprec {self.symprec:g} Å): {exc}",
            )
        metrics = {
            f"{self.metric_prefix}space_group_number": number,
            f"{self.metric_prefix}space_group_symbol": symbol,
        }
        if self.allowed_space_groups and number not in self.allowed_space_groups:
            allowed = ", ".join(map(str, self.allowed_space_groups))
            return Verdict.failed(
                candidate.id,
                self.name,
                f"space group {symbol} ({number}) is not among the allowed {allowed}",
                metrics,
            )
        return Verdict(candidate_id=candidate.id, validator=self.name, passed=True, metrics=metrics)
