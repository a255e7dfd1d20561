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
    from crystalforge.memory.base import StructureIndex
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


class _ReducedFits:
    """``StructureMatcher.fit`` with each structure reduced once, and a site-count screen.

    ``fit`` reduces both structures (primitive cell, Niggli) on every call; comparing one
    candidate with many known structures of its formula repeats that work. Here each structure
    is reduced once (keyed by its id) and compared with ``skip_structure_reduction=True``.
    Without ``attempt_supercell`` (our setting) two structures whose reduced cells hold different
    numbers of sites never match (``_strict_match`` requires a square site mask), so such pairs
    are skipped before the lattice search. The answers are those of ``fit``.
    """

    def __init__(self, matcher: StructureMatcher) -> None:
        self._matcher = matcher
        self._reduced: dict[str, Structure | None] = {}

    def _reduce(self, key: str, structure: Structure) -> Structure | None:
        if key not in self._reduced:
            try:
                # pymatgen's own reduction, the one ``fit`` applies (private but stable API).
                self._reduced[key] = self._matcher._get_reduced_structure(structure, True, True)
            except ValueError as exc:
                logger.info("could not reduce %s (%s); comparing unreduced", key, exc)
                self._reduced[key] = None
        return self._reduced[key]

    def __call__(self, first_id: str, first: Structure, second_id: str, second: Structure) -> bool:
        """Whether ``first`` and ``second`` match (ids key the reduction cache)."""
        one, two = self._reduce(first_id, first), self._reduce(second_id, second)
        if one is None or two is None:
            return _fits(self._matcher, first, second)
        if len(one) != len(two):
            return False
        try:
            return bool(self._matcher.fit(one, two, skip_structure_reduction=True))
        except ValueError as exc:
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
        fits = _ReducedFits(_matcher(self.ltol, self.stol, self.angle_tol))
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
                    if other_id == candidate.id or fits(candidate.id, structure, other_id, other):
                        duplicate_of = other_id
                        break
                if duplicate_of is None:
                    for other_id, other in known.get(formula, []):
                        if other_id != candidate.id and fits(
                            candidate.id, structure, f"known:{other_id}", other
                        ):
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

    Known materials are looked up through a formula index, so each candidate is matched
    (pymatgen ``StructureMatcher``, ltol 0.2, stol 0.3, angle_tol 5) only against structures
    with its reduced formula:

    * :meth:`ReferenceHull.reference_structures` of the reference hull (offline: the
      ``mp_20_biternary`` and ``mpts_52`` structures, about 26k materials, smaller than the
      full Materials Project, so novelty is over-estimated);
    * when ``store`` is given, the memory store's references and the candidates of every
      earlier run (:meth:`StructureIndex.structures_with_formula`), except those of ``run_id``
      (the uniqueness stage handles a run's own candidates).

    Structures of one formula are fetched once per batch. Run it on relaxed structures.

    Verdict metrics: ``novel`` (bool; ``None`` when the structure cannot be compared),
    ``matches_reference`` (material or candidate id, or ``None``), ``matches_source``
    (``"reference"`` or ``"memory"``) and ``novelty_reference`` (what was searched).
    """

    reference: ReferenceHull
    name: str = "novelty"
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    store: StructureIndex | None = None
    """Memory store with references and earlier runs' candidates (``None``: reference only)."""
    run_id: str | None = None
    """This run's id, whose own candidates in the store are not compared."""

    @property
    def searched(self) -> str:
        """What novelty is measured against, for reports."""
        if self.store is None:
            return self.reference.name
        return f"{self.reference.name} + memory store (references, earlier runs)"

    def _known(self, formula: str) -> list[tuple[str, str, Structure]]:
        from pymatgen.core import Composition

        from crystalforge.memory.reference_data import formula_key

        found: list[tuple[str, str, Structure]] = []
        ids: set[str] = set()
        for known in self.reference.reference_structures(formula):
            known_id = str(known.properties.get("material_id", "unknown"))
            ids.add(known_id)
            found.append((known_id, "reference", known))
        if self.store is not None:
            key = formula_key(Composition(formula).get_el_amt_dict())
            for known_id, known in self.store.structures_with_formula(key, exclude_run=self.run_id):
                if known_id not in ids:
                    ids.add(known_id)
                    found.append((known_id, "memory", known))
        return found

    def _prefetch(self, candidates: Sequence[Candidate]) -> None:
        """Fetch the store's structures of every formula in the batch in one query each."""
        batch = getattr(self.store, "structures_with_formulas", None)
        if batch is None:
            return
        from crystalforge.memory.reference_data import formula_key

        keys = {
            formula_key(c.structure.composition.get_el_amt_dict())
            for c in candidates
            if malformed_reason(c.structure) is None
        }
        if keys:
            batch(keys, exclude_run=self.run_id)

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Look each candidate up among the known structures of its formula.

        Args:
            candidates: Candidates to look up.

        Returns:
            One (passing) verdict per candidate, in order.
        """
        fits = _ReducedFits(_matcher(self.ltol, self.stol, self.angle_tol))
        index: dict[str, list[tuple[str, str, Structure]]] = {}
        self._prefetch(candidates)
        verdicts = []
        for candidate in candidates:
            structure = candidate.structure
            novel: bool | None = None
            match: str | None = None
            source: str | None = None
            if malformed_reason(structure) is None:
                novel = True
                formula = structure.composition.reduced_formula
                if formula not in index:
                    index[formula] = self._known(formula)
                for known_id, known_source, known in index[formula]:
                    if known_id != candidate.id and fits(
                        f"candidate:{candidate.id}", structure, f"{known_source}:{known_id}", known
                    ):
                        novel, match, source = False, known_id, known_source
                        break
            verdicts.append(
                Verdict(
                    candidate_id=candidate.id,
                    validator=self.name,
                    passed=True,
                    metrics={
                        "novel": novel,
                        "matches_reference": match,
                        "matches_source": source,
                        "novelty_reference": self.searched,
                    },
                )
            )
        return verdicts
