"""What the rest of crystalforge needs from memory: small protocols, no chromadb import.

:class:`~crystalforge.memory.chroma.ChromaMemory` implements both; tests and the design run can
pass anything with these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from pymatgen.core import Structure

CollectionName = Literal["references", "candidates", "campaigns", "reviews"]
COLLECTIONS: tuple[CollectionName, ...] = ("references", "candidates", "campaigns", "reviews")
ReviewDecision = Literal["approve", "reject", "annotate"]


@runtime_checkable
class StructureIndex(Protocol):
    """Known structures by reduced-formula key (the novelty screen's prefilter)."""

    def structures_with_formula(
        self, formula_key: str, *, exclude_run: str | None = None
    ) -> list[tuple[str, Structure]]:
        """``(id, structure)`` of every stored reference and candidate with this formula key.

        Args:
            formula_key: :func:`crystalforge.memory.reference_data.formula_key` of the formula.
            exclude_run: Leave out candidates recorded by this run (a run's own earlier
                candidates are the uniqueness validator's business).
        """
        ...


@runtime_checkable
class Retriever(Protocol):
    """Reference and campaign retrieval for the planner, the generators and the LLM tools."""

    def search_references(
        self,
        *,
        chemsys: Iterable[str] | None = None,
        formula: str | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
        limit: int = 25,
    ) -> list[dict[str, Any]]:
        """References of a chemical system (and its subsystems) or formula within ranges."""
        ...

    def similar_structures(
        self, structure: Structure, *, k: int = 10, collection: CollectionName = "references"
    ) -> list[dict[str, Any]]:
        """The ``k`` stored crystals nearest to ``structure``, nearest first."""
        ...

    def similar_campaigns(
        self, spec: Mapping[str, Any], *, k: int = 3, exclude_run: str | None = None
    ) -> list[dict[str, Any]]:
        """Earlier campaigns whose spec is nearest to ``spec``, nearest first."""
        ...


@runtime_checkable
class MemoryStore(StructureIndex, Retriever, Protocol):
    """A persistent store of references, candidates, campaigns and reviews."""

    def add_references(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Store reference materials; idempotent by content id. Returns added/existing counts."""
        ...

    def add_candidates(self, run_id: str, entries: Sequence[Mapping[str, Any]]) -> int:
        """Store validated candidates of a run with verdicts and provenance."""
        ...

    def add_campaign(self, run_id: str, record: Mapping[str, Any]) -> None:
        """Store a campaign: spec, plan, reflections and outcome."""
        ...

    def add_review(
        self, candidate_id: str, decision: ReviewDecision, note: str = "", *, run_id: str = ""
    ) -> str:
        """Store a human decision on a candidate; returns the review id."""
        ...

    def info(self) -> dict[str, Any]:
        """Counts per collection and per source."""
        ...
