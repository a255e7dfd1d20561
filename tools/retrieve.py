"""LLM-facing retrieval tools over the memory store: references, similar crystals, campaigns.

Each tool is a plain function with an annotated signature and a Google docstring (the
signature is the JSON schema, the docstring the description), bound to one store by
:func:`retrieval_tools`. Results are small JSON-ready dicts; a request the store cannot answer
(unknown element, unparsable formula or CIF) comes back as ``{"error": "..."}`` for the model
to read and repair, never as an exception.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from crystalforge.memory.chroma import ChromaMemory

logger = logging.getLogger(__name__)

MAX_RESULTS = 25
_REFERENCE_FIELDS = (
    "reduced_formula",
    "chemsys",
    "n_sites",
    "spacegroup",
    "formation_energy_per_atom",
    "e_above_hull",
    "band_gap",
    "source",
)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    out = {"id": row["id"], **{k: row[k] for k in _REFERENCE_FIELDS if k in row}}
    if "distance" in row:
        out["distance"] = round(float(row["distance"]), 4)
    return out


def retrieval_tools(store: ChromaMemory) -> list[Callable[..., dict[str, Any]]]:
    """The retrieval tools bound to ``store``.

    Returns:
        ``search_references``, ``similar_crystals`` and ``recall_campaigns``.
    """

    def search_references(
        chemical_system: list[str] | None = None,
        formula: str | None = None,
        min_band_gap_ev: float | None = None,
        max_band_gap_ev: float | None = None,
        max_e_above_hull_ev_per_atom: float | None = None,
        limit: int = 10,
    ) -> dict[str, Any]:
        """Find known materials in the reference store, most stable first.

        Args:
            chemical_system: Element symbols, e.g. ["Li", "Mn", "O"]; materials of the system
                and of its subsystems are returned.
            formula: A chemical formula, e.g. "LiMnO2".
            min_band_gap_ev: Smallest band gap, eV.
            max_band_gap_ev: Largest band gap, eV.
            max_e_above_hull_ev_per_atom: Largest DFT energy above the hull, eV/atom.
            limit: How many to return (at most 25).
        """
        ranges: dict[str, tuple[float | None, float | None]] = {}
        if min_band_gap_ev is not None or max_band_gap_ev is not None:
            ranges["band_gap"] = (min_band_gap_ev, max_band_gap_ev)
        if max_e_above_hull_ev_per_atom is not None:
            ranges["e_above_hull"] = (None, max_e_above_hull_ev_per_atom)
        try:
            rows = store.search_references(
                chemsys=chemical_system,
                formula=formula,
                ranges=ranges,
                limit=max(1, min(limit, MAX_RESULTS)),
            )
        except ValueError as exc:
            return {"error": str(exc)}
        return {"count": len(rows), "materials": [_summary(r) for r in rows]}

    def similar_crystals(cif: str, k: int = 5, among: str = "references") -> dict[str, Any]:
        """Find the stored crystals most similar to a structure (composition and packing).

        Args:
            cif: The structure as CIF text.
            k: How many to return (at most 25).
            among: "references" (known materials) or "candidates" (earlier runs' candidates).
        """
        from crystalforge.memory.cif import CifError, cif_to_record

        if among not in ("references", "candidates"):
            return {"error": f"among must be 'references' or 'candidates', not {among!r}"}
        try:
            record = cif_to_record(cif)
        except CifError as exc:
            return {"error": str(exc)}
        rows = store.similar_to_record(
            record,
            k=max(1, min(k, MAX_RESULTS)),
            collection="references" if among == "references" else "candidates",
        )
        return {"count": len(rows), "crystals": [_summary(r) for r in rows]}

    def recall_campaigns(
        chemical_system: list[str] | None = None,
        required_elements: list[str] | None = None,
        k: int = 3,
    ) -> dict[str, Any]:
        """Recall earlier design campaigns with a similar spec and what they learned.

        Args:
            chemical_system: Element symbols of the new request's chemical system.
            required_elements: Elements the new request requires.
            k: How many campaigns (at most 10).
        """
        spec = {
            "chemical_system": chemical_system or [],
            "required_elements": required_elements or [],
        }
        try:
            found = store.similar_campaigns(spec, k=max(1, min(k, 10)))
        except ValueError as exc:
            return {"error": str(exc)}
        return {
            "count": len(found),
            "campaigns": [
                {
                    "run_id": c["run_id"],
                    "request": c["request"],
                    "distance": round(c["distance"], 4),
                    "reflections": c["reflections"][:6],
                    "focus_compositions": c["focus_compositions"],
                    "outcome": c["outcome"],
                }
                for c in found
            ],
        }

    return [search_references, similar_crystals, recall_campaigns]
