"""Candidates (a structure with its provenance) and Verdicts (what one validator said of one).

A candidate is identified by a hash of its content, so the same structure proposed twice has
one id. Graph state carries ids and small summaries; structures live in the run's candidate
store (:mod:`crystalforge.memory.run_store`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pymatgen.core import Structure

Scalar = float | int | str | bool | None


def structure_hash(structure: Structure, *, decimals: int = 4) -> str:
    """Content hash of a structure: species, lattice and fractional coordinates, rounded.

    Sites are sorted so that the order of sites does not change the hash. Two structures with
    the same hash are the same cell; the converse need not hold (use StructureMatcher for that).
    """
    lattice = [round(float(x), decimals) for x in structure.lattice.matrix.flatten()]
    sites = sorted(
        (site.species_string, *(round(float(x) % 1.0, decimals) % 1.0 for x in site.frac_coords))
        for site in structure
    )
    payload = json.dumps({"lattice": lattice, "sites": sites}, separators=(",", ":"))
    return "c-" + hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A proposed crystal with where it came from.

    Attributes are never mutated; validators that change the structure (relaxation) return it in
    their :class:`Verdict`, and the pipeline derives a new Candidate with :meth:`evolve`.
    """

    id: str
    """Content hash of the *generated* structure (stable across relaxation)."""
    structure: Structure
    generator: str
    """Registry name of the generator that proposed it."""
    seed: int | None = None
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    """Generator settings that produced it (space group, composition, ...)."""
    parent_id: str | None = None
    round: int = 0
    properties: Mapping[str, Scalar] = field(default_factory=dict)
    """Values computed by validators so far (energy_per_atom, e_above_hull, ...)."""

    @classmethod
    def create(
        cls,
        structure: Structure,
        *,
        generator: str,
        seed: int | None = None,
        parameters: Mapping[str, Scalar] | None = None,
        parent_id: str | None = None,
        round: int = 0,
    ) -> Candidate:
        """A new candidate whose id is the content hash of ``structure``."""
        return cls(
            id=structure_hash(structure),
            structure=structure,
            generator=generator,
            seed=seed,
            parameters=dict(parameters or {}),
            parent_id=parent_id,
            round=round,
        )

    def evolve(
        self, *, structure: Structure | None = None, properties: Mapping[str, Scalar] | None = None
    ) -> Candidate:
        """A copy with a new structure and/or extra properties merged in; the id is kept."""
        merged = {**self.properties, **(properties or {})}
        return replace(self, structure=structure or self.structure, properties=merged)

    @property
    def formula(self) -> str:
        """Reduced formula, e.g. ``LiMnO2``."""
        return self.structure.composition.reduced_formula

    def provenance(self) -> dict[str, Any]:
        """JSON-ready provenance: generator, seed, parameters, parent and round."""
        return {
            "generator": self.generator,
            "seed": self.seed,
            "parameters": dict(self.parameters),
            "parent_id": self.parent_id,
            "round": self.round,
        }


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What one validator concluded about one candidate.

    A failure of one structure is a Verdict with ``passed=False`` and a ``reason``, never an
    exception.
    """

    candidate_id: str
    validator: str
    passed: bool
    reason: str | None = None
    """Why it failed (shown to people and to the planner); ``None`` when it passed."""
    metrics: Mapping[str, Scalar] = field(default_factory=dict)
    """Numbers the validator computed, in units named by the key (``e_above_hull`` eV/atom)."""
    structure: Structure | None = None
    """A changed structure (e.g. relaxed); ``None`` when the validator did not change it."""

    @classmethod
    def failed(
        cls,
        candidate_id: str,
        validator: str,
        reason: str,
        metrics: Mapping[str, Scalar] | None = None,
    ) -> Verdict:
        """A failed verdict with its reason (and whatever metrics were computed before it failed).

        Args:
            candidate_id: The candidate judged.
            validator: Name of the stage.
            reason: Why it failed, for people and the planner; must not be empty.
            metrics: Numbers computed before the failure.

        Raises:
            ValueError: ``reason`` is empty.
        """
        if not reason:
            raise ValueError(f"a failed verdict needs a reason (candidate {candidate_id!r})")
        return cls(
            candidate_id=candidate_id,
            validator=validator,
            passed=False,
            reason=reason,
            metrics=dict(metrics or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (without the structure)."""
        return {
            "candidate_id": self.candidate_id,
            "validator": self.validator,
            "passed": self.passed,
            "reason": self.reason,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of :meth:`to_json`."""
        return cls(
            candidate_id=str(data["candidate_id"]),
            validator=str(data["validator"]),
            passed=bool(data["passed"]),
            reason=data.get("reason"),
            metrics=dict(data.get("metrics") or {}),
        )
