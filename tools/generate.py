"""The planner's tool: ``submit_round_plan``, and the checks that keep a model's plan in bounds.

The model proposes which generator families to call, how many samples each, the compositions,
space groups and parents to focus on, and which references to retrieve. :func:`check_round_plan`
rejects what cannot be right (an unknown generator, a composition outside the spec, a parent id
that is not a candidate of this run) with a message naming the value and the valid choices, so
the caller can show it to the model for one repair; it clamps what can be clamped (sample
counts over the round's budget) and says so in notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from crystalforge.tools.base import LLMTool, function_tool

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from crystalforge.core.spec import DesignSpec

TOOL_NAME = "submit_round_plan"


class PlannedTask(BaseModel):
    """One call to one generator family."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field(description="A generator name from the available list.")
    num_structures: int = Field(ge=1, description="Structures to ask of it this round.")
    compositions: list[str] = Field(
        default_factory=list, description="Reduced formulae to focus on; empty: the whole spec."
    )
    space_groups: list[int] = Field(
        default_factory=list, description="Space-group numbers (1-230) to focus on; empty: any."
    )
    parents: list[str] = Field(
        default_factory=list,
        description="Candidate ids of this run to substitute into (substitution generator).",
    )
    max_atoms: int | None = Field(
        default=None, ge=1, description="A tighter atoms-per-cell limit than the spec's."
    )
    purpose: str = Field(default="explore", description="'explore' or 'exploit'.")


def submit_round_plan(
    tasks: list[PlannedTask], references: list[str], rationale: list[str]
) -> dict[str, object]:
    """Submit the plan of the next generation round.

    Args:
        tasks: Generator calls; their num_structures sum to at most the round's sample budget.
        references: Formulae or material ids of known phases to retrieve as substitution
            parents and for comparison (may be empty).
        rationale: One short sentence per decision, saying which memo finding it follows.
    """
    return {"tasks": tasks, "references": references, "rationale": rationale}


ROUND_PLAN_TOOL: LLMTool = function_tool(submit_round_plan)
"""The tool as the model sees it (schema from the signature, description from the docstring)."""


@dataclass(frozen=True, kw_only=True)
class CheckedPlan:
    """A model's plan after the checks: tasks within budget, and what was clamped."""

    tasks: list[PlannedTask]
    references: list[str]
    rationale: list[str]
    notes: list[str] = field(default_factory=list)


def check_round_plan(
    arguments: str,
    *,
    spec: DesignSpec,
    available: Sequence[str],
    samples: int,
    candidate_ids: Collection[str],
) -> CheckedPlan:
    """Validate the model's ``submit_round_plan`` arguments against the spec and budgets.

    Args:
        arguments: The JSON the model wrote.
        spec: The design spec (elements, atom counts, space groups).
        available: Generator names the run may use.
        samples: The round's sample budget.
        candidate_ids: Ids of this run's candidates (valid parents).

    Returns:
        The plan, with sample counts scaled down to the budget when they exceed it.

    Raises:
        ValueError: The arguments are malformed or name something outside the spec or the
            available generators; the message says what and lists the valid values.
    """
    from pymatgen.core import Composition

    parsed = ROUND_PLAN_TOOL.parse(arguments)
    tasks: list[PlannedTask] = list(parsed.tasks)  # type: ignore[attr-defined]
    if not tasks:
        raise ValueError("the plan has no tasks; give at least one generator call")
    notes: list[str] = []
    pool = set(spec.chemical_system or spec.element_pool() or ())
    for task in tasks:
        if task.generator not in available:
            raise ValueError(
                f"unknown generator {task.generator!r}; valid generators: {sorted(available)}"
            )
        for formula in task.compositions:
            try:
                elements = {str(e) for e in Composition(formula).elements}
            except (ValueError, KeyError):
                raise ValueError(f"composition {formula!r} is not a chemical formula") from None
            if pool and not elements <= pool:
                raise ValueError(
                    f"composition {formula!r} uses {sorted(elements - pool)}, outside the spec's "
                    f"elements {sorted(pool)}"
                )
            excluded = sorted(set(spec.excluded_elements) & elements)
            if excluded:
                raise ValueError(f"composition {formula!r} uses excluded elements {excluded}")
        bad_groups = [g for g in task.space_groups if not 1 <= g <= 230]
        if bad_groups:
            raise ValueError(f"space groups {bad_groups} are not numbers 1-230")
        if spec.space_groups:
            outside = [g for g in task.space_groups if g not in spec.space_groups]
            if outside:
                raise ValueError(
                    f"space groups {outside} are outside the spec's {list(spec.space_groups)}"
                )
        unknown = [p for p in task.parents if p not in candidate_ids]
        if unknown:
            raise ValueError(f"parents {unknown} are not candidate ids of this run")
        if task.max_atoms is not None and task.max_atoms > spec.max_atoms:
            notes.append(
                f"model asked {task.generator} for up to {task.max_atoms} atoms; clamped to the "
                f"spec's {spec.max_atoms}"
            )
            task.max_atoms = spec.max_atoms
    total = sum(t.num_structures for t in tasks)
    if total > samples:
        scale = samples / total
        for task in tasks:
            task.num_structures = max(1, int(task.num_structures * scale))
        while sum(t.num_structures for t in tasks) > samples and any(
            t.num_structures > 1 for t in tasks
        ):
            biggest = max(tasks, key=lambda t: t.num_structures)
            biggest.num_structures -= 1
        tasks = [t for t in tasks if t.num_structures > 0][: max(samples, 1)]
        while sum(t.num_structures for t in tasks) > samples:
            tasks.pop()
        notes.append(f"model asked for {total} samples; scaled to the round budget of {samples}")
    return CheckedPlan(
        tasks=tasks,
        references=list(parsed.references),  # type: ignore[attr-defined]
        rationale=list(parsed.rationale),  # type: ignore[attr-defined]
        notes=notes,
    )
