"""retrieve: known phases of the chemical system, from the reference data."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.resources import reference_for
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.spec import DesignSpec

MAX_REFERENCES = 25
"""Known phases kept in state for the planner and the report."""

MAX_POOL_FOR_LOOKUP = 6
"""Above this many elements, a pool is too broad for a useful phase list."""


def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Name the reference hull and list the known phases the candidates compete with.

    Runs once per run: later rounds keep the first answer.
    """
    if state.reference_name is not None:
        return {}
    assert state.spec is not None, "understand runs before retrieve"
    spec = DesignSpec.model_validate(state.spec)
    reference = reference_for(runtime.context)
    pool = spec.chemical_system or spec.element_pool()
    references: list[dict[str, Any]] = []
    if pool and len(pool) <= MAX_POOL_FOR_LOOKUP:
        phases = reference.known_phases(pool)
        references = sorted(phases, key=lambda p: (p["e_above_hull"], p["formula"]))
        references = references[:MAX_REFERENCES]
    return {"reference_name": reference.name, "references": references}
