"""plan: decide what the next round generates, from the spec and the last reflection."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.nodes.retrieve import recall_for_plan
from crystalforge.agent.state import (
    GenerationTask,
    Plan,
    State,
)
from crystalforge.core.spec import DesignSpec
from crystalforge.generators.router import FamilyYield, Router

if TYPE_CHECKING:
    from crystalforge.agent.state import Memo

EXPLOIT_SHARE = 0.5
"""Share of a round's samples spent on compositions and space groups that worked before."""


def round_seed(base_seed: int, round_index: int) -> int:
    """A seed per round, derived from the run's base seed (stable across processes)."""
    digest = hashlib.sha256(f"{base_seed}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def yield_history(memos: list[Memo]) -> list[FamilyYield]:
    """What each generator yielded in earlier rounds, as the router reads it."""
    return [
        FamilyYield(
            family=name,
            samples=int(stats["samples"]),
            survivors=int(stats["survivors"]),
            seconds=float(stats["seconds"]),
            round=memo["round"],
        )
        for memo in memos
        for name, stats in memo.get("generator_stats", {}).items()
    ]


def make_plan(
    spec: DesignSpec,
    memo: Memo | None,
    *,
    round_index: int,
    context: Context,
    history: list[FamilyYield] | None = None,
) -> Plan:
    """The plan of one round.

    Round 0 explores the whole space the spec allows. Later rounds follow the memo: when it
    names compositions or space groups that came close, :data:`EXPLOIT_SHARE` of the samples
    go to them and the rest keep exploring.
    """
    samples = spec.budget.samples_per_round
    history = history or []
    rationale: list[str] = []
    generators = list(context.generators)
    focus_compositions = list(memo["focus_compositions"]) if memo else []
    focus_space_groups = list(memo["focus_space_groups"]) if memo else []
    if spec.space_groups:
        # The spec fixes the groups; a memo may only narrow them.
        focus_space_groups = [g for g in focus_space_groups if g in spec.space_groups]
    tasks: list[GenerationTask] = []
    exploit = 0
    if focus_compositions or focus_space_groups:
        exploit = max(1, round(samples * EXPLOIT_SHARE))
        tasks.append(
            GenerationTask(
                generator=generators[0],
                num_structures=exploit,
                compositions=focus_compositions,
                space_groups=focus_space_groups,
                purpose="exploit",
            )
        )
        rationale.append(
            f"{exploit} of {samples} samples on what came closest: "
            f"{', '.join(focus_compositions) or 'any composition'}"
            + (f" in space groups {focus_space_groups}" if focus_space_groups else "")
        )
    explore = samples - exploit
    if explore > 0:
        allocation = Router().allocate(
            explore, generators, history, seed=round_seed(context.seed, round_index)
        )
        for name in generators:
            n = allocation.samples.get(name, 0)
            if n:
                tasks.append(
                    GenerationTask(
                        generator=name,
                        num_structures=n,
                        compositions=[],
                        space_groups=list(spec.space_groups),
                        purpose="explore",
                    )
                )
        rationale.append(f"{explore} samples explore the whole space of the spec")
        if len(generators) > 1:
            rationale.append(f"router: {allocation.rationale}")
    if memo:
        rationale.extend(memo["changes"])
    return Plan(
        round=round_index,
        seed=round_seed(context.seed, round_index),
        tasks=tasks,
        max_atoms=spec.max_atoms,
        rationale=rationale,
    )


def plan(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the plan of the next round into the state."""
    assert state.spec is not None, "understand runs before plan"
    spec = DesignSpec.model_validate(state.spec)
    memo = state.memos[-1] if state.memos else None
    round_index = state.round + 1 if state.plans else 0
    recall: dict[str, Any] = {}
    if memo is None and not state.plans:  # issue 9: start from what similar campaigns learned
        memo, recall = recall_for_plan(state, runtime.context)
    return {
        **recall,
        "plans": [
            make_plan(
                spec,
                memo,
                round_index=round_index,
                context=runtime.context,
                history=yield_history(list(state.memos)),
            )
        ],
        "round": round_index,
    }
