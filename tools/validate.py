"""LLM-facing tools over a run's validation results: what the final answer is written from.

The results are the state-sized candidate summaries of this run (see
``crystalforge.agent.state.CandidateSummary``), passed in as plain dicts: this layer does not
import the agent. Every number a tool returns is recorded by the caller as provenance for the
final answer's gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crystalforge.tools.base import LLMTool, ToolFailure, function_tool

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

FACT_KEYS = (
    "id",
    "formula",
    "round",
    "generator",
    "n_atoms",
    "space_group",
    "passed",
    "failed_stage",
    "reason",
    "e_above_hull",
    "formation_energy",
    "energy_per_atom",
    "meets_hard",
    "unmet",
    "unevaluated",
    "review",
    "review_note",
)
"""Fields of a candidate summary a tool shows the model."""


def candidate_facts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of one candidate as a tool result (energies in eV/atom, rounded to 1 meV)."""
    facts: dict[str, Any] = {}
    for key in FACT_KEYS:
        if key not in summary:
            continue
        value = summary[key]
        if isinstance(value, float):
            value = round(value, 3)
        facts[key] = value
    return facts


def candidate_tools(results: Sequence[Mapping[str, Any]]) -> list[LLMTool]:
    """``get_candidate`` and ``list_candidates`` over ``results`` (ranked best first)."""
    by_id = {r["id"]: r for r in results}

    def get_candidate(candidate_id: str) -> dict[str, Any] | ToolFailure:
        """Every recorded fact about one candidate of this run: verdicts, energies, targets.

        Args:
            candidate_id: The candidate's id, e.g. c-0123456789ab.
        """
        summary = by_id.get(candidate_id)
        if summary is None:
            known = ", ".join(list(by_id)[:10])
            return ToolFailure(error=f"no candidate {candidate_id!r} in this run; ids: {known}")
        return candidate_facts(summary)

    def list_candidates(limit: int = 5, hits_only: bool = False) -> list[dict[str, Any]]:
        """The best candidates of this run, best first (hits, then by distance to the targets).

        Args:
            limit: How many to list (1-20).
            hits_only: Only candidates that meet every hard constraint.
        """
        chosen = [r for r in results if r.get("meets_hard") or not hits_only]
        return [candidate_facts(r) for r in chosen[: max(1, min(limit, 20))]]

    return [function_tool(get_candidate), function_tool(list_candidates)]
