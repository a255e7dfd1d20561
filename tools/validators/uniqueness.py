"""Duplicates within a batch and against earlier candidates; novelty against known materials."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crystalforge.core.candidate import Verdict
from crystalforge.tools.validators.sanity import malformed_reason

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.reference_data import ReferenceHull

logger = logging.getLogger(__name__)


def _matcher(ltol: float, stol: float, angle_tol: float) -> StructureMatcher:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol)


def _fits(matcher: StructureMatcher, first: Structure, second: Structure) -> bool:
    try:
        return bool(matcher.fit(first, second))
    except ValueError as exc:  # e.g. a lattice pymatgen cannot reduce
        logger.info("StructureMatcher failed (%s); treating as different", exc)
        return False


@dataclass(frozen=True, kw_only=True)
class UniquenessValidator:
    """Fail structures that duplicate an earlier one (pymatgen ``StructureMatcher``).

    Within the batch the first occurrence passes and later duplicates fail with
    ``"duplicate of <id>"``; every candidate is also compared with ``known`` (earlier candidates
    of the run). Comparisons happen only within one reduced formula, so a batch costs roughly
    the number of same-formula pairs. A ``known`` entry with the candidate's own id is ignored
    (re-validating a stored candidate is not a duplicate); filter exact re-proposals by id.

    Verdict metric: ``duplicate_of`` (the id matched, failures only).
    """

    name: str = "unique"
    ltol: float = 0.2
    """Fractional length tolerance."""
    stol: float = 0.3
    """Site tolerance (fraction of the average free length per atom)."""
    angle_tol: float = 5.0
    """Angle tolerance, degrees."""
    known: Sequence[tuple[str, Structure]] = ()
    """(id, structure) of earlier candidates of the run."""

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Judge each candidate against ``known`` and the candidates before it.

        Args:
            candidates: Candidates to check, in priority order.

        Returns:
            One verdict per candidate, in order.
        """
        matcher = _matcher(self.ltol, self.stol, self.angle_tol)
        known: dict[str, list[tuple[str, Structure]]] = {}
        for known_id, structure in self.known:
            if malformed_reason(structure) is None:
                known.setdefault(structure.composition.reduced_formula, []).append(
                    (known_id, structure)
                )
        seen: dict[str, list[tuple[str, Structure]]] = {}
        verdicts = []
        for candidate in candidates:
            structure = candidate.structure
            reason = malformed_reason(structure)
            duplicate_of = None
            if reason is None:
                formula = structure.composition.reduced_formula
                earlier = seen.setdefault(formula, [])
                for other_id, other in earlier:
                    if other_id == candidate.id or _fits(matcher, structure, other):
                        duplicate_of = other_id
                        break
                if duplicate_of is None:
                    for other_id, other in known.get(formula, []):
                        if other_id != candidate.id and _fits(matcher, structure, other):
                            duplicate_of = other_id
                            break
                if duplicate_of is None:
                    earlier.append((candidate.id, structure))
                else:
                    reason = f"duplicate of {duplicate_of}"
            verdicts.append(
                Verdict(
                    candidate_id=candidate.id,
                    validator=self.name,
                    passed=reason is None,
                    reason=reason,
                    metrics={"duplicate_of": duplicate_of} if duplicate_of else {},
                )
            )
        return verdicts


@dataclass(frozen=True, kw_only=True)
class NoveltyValidator:
    """Report whether a structure matches a known material; never fails a candidate.

    Compares with :meth:`ReferenceHull.reference_structures` of the candidate's formula (the
    ``mp_20_biternary`` and ``mpts_52`` structures, about 26k materials: smaller than the full
    Materials Project, so novelty is over-estimated). Run it on relaxed structures.

    Verdict metrics: ``novel`` (bool; ``None`` when the structure cannot be compared),
    ``matches_reference`` (material id or ``None``) and ``novelty_reference`` (the reference's
    name).
    """

    reference: ReferenceHull
    name: str = "novelty"
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Look each candidate up among the reference structures of its formula.

        Args:
            candidates: Candidates to look up.

        Returns:
            One (passing) verdict per candidate, in order.
        """
        matcher = _matcher(self.ltol, self.stol, self.angle_tol)
        verdicts = []
        for candidate in candidates:
            structure = candidate.structure
            novel: bool | None = None
            match: str | None = None
            if malformed_reason(structure) is None:
                novel = True
                formula = structure.composition.reduced_formula
                for known in self.reference.reference_structures(formula):
                    if _fits(matcher, structure, known):
                        novel = False
                        match = str(known.properties.get("material_id", "unknown"))
                        break
            verdicts.append(
                Verdict(
                    candidate_id=candidate.id,
                    validator=self.name,
                    passed=True,
                    metrics={
                        "novel": novel,
                        "matches_reference": match,
                        "novelty_reference": self.reference.name,
                    },
                )
            )
        return verdicts
