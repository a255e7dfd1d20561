"""generate: run the plan's generation tasks and store the new candidates."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.resources import store_for
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.errors import GenerationFailed
from crystalforge.core.spec import DesignSpec
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.registry import load_generator

if TYPE_CHECKING:
    from crystalforge.agent.state import GenerationTask
    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.run_store import RunStore

logger = logging.getLogger(__name__)


def task_request(
    spec: DesignSpec,
    task: GenerationTask,
    *,
    seed: int,
    round_index: int,
    store: RunStore | None = None,
) -> GenerationRequest:
    """The generator request of one task: the spec's space, narrowed by the task's focus.

    A task's ``parents`` (candidate ids) become the request's parent structures (the relaxed
    ones where stored), its ``max_atoms`` and ``elements`` narrow the spec's limits.
    """
    request = GenerationRequest.from_spec(
        spec, num_structures=task["num_structures"], seed=seed, round=round_index
    )
    parents = []
    if store is not None:
        for candidate_id in task.get("parents", []):
            if store.has_result(candidate_id):
                parents.append(store.load_result(candidate_id).candidate.structure)
    elements = tuple(task.get("elements", ())) or request.elements
    return dataclasses.replace(
        request,
        compositions=tuple(task["compositions"]),
        space_groups=tuple(task["space_groups"]) or request.space_groups,
        max_atoms=min(task.get("max_atoms", request.max_atoms), request.max_atoms),
        elements=elements,
        parents=tuple(parents),
    )


def generate(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Generate this round's candidates.

    A focused task that its generator cannot serve falls back to the unfocused space of the spec;
    when the spec's own space admits no structure, the run stops with the generator's reason.
    """
    assert state.spec is not None, "understand runs before generate"
    assert state.plans, "plan runs before generate"
    spec = DesignSpec.model_validate(state.spec)
    plan = state.plans[-1]
    store = store_for(runtime.context)
    started = time.perf_counter()
    new: list[Candidate] = []
    failures: list[str] = []
    seen = set(state.candidate_ids)
    for i, task in enumerate(plan["tasks"]):
        generator = load_generator(task["generator"])
        request = task_request(
            spec, task, seed=plan["seed"] + i, round_index=plan["round"], store=store
        )
        runtime.context.report(f"generate ({task['generator']})", 0, task["num_structures"])
        try:
            candidates = generator.generate(request)
        except GenerationFailed as exc:
            if not (task["compositions"] or task["space_groups"] != list(spec.space_groups)):
                failures.append(f"{task['generator']}: {exc}")
                continue
            logger.info("focused task failed (%s); falling back to the spec's space", exc)
            fallback = GenerationRequest.from_spec(
                spec, num_structures=task["num_structures"], seed=request.seed, round=plan["round"]
            )
            try:
                candidates = generator.generate(fallback)
            except GenerationFailed as exc2:
                failures.append(f"{task['generator']}: {exc2}")
                continue
        runtime.context.report(f"generate ({task['generator']})", len(candidates), len(candidates))
        for candidate in candidates:
            if candidate.id in seen:
                continue
            seen.add(candidate.id)
            store.save_candidate(candidate)
            new.append(candidate)
    update: dict[str, Any] = {
        "round_ids": [c.id for c in new],
        "candidate_ids": [c.id for c in new],
        "elapsed_s": state.elapsed_s + time.perf_counter() - started,
    }
    if not new and not state.results:
        update["stop_reason"] = "no structure could be generated: " + "; ".join(
            failures or ["every generated structure was a duplicate"]
        )
    return update
