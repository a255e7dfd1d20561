"""validate: run the validation pipeline over this round's candidates, persisting each result.

The node is idempotent, as LangGraph requires of code that may re-run on resume: candidates with
a stored result are not validated again, so a run killed mid-validation loses at most the
structures that were being relaxed at that moment.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.nodes.reflect import hit_key
from crystalforge.agent.nodes.retrieve import memory_for
from crystalforge.agent.resources import reference_for, store_for
from crystalforge.agent.state import (
    CandidateSummary,
    State,
)
from crystalforge.core.spec import DesignSpec
from crystalforge.tools.assess import assess
from crystalforge.tools.validators.fake import FakeEnergyValidator
from crystalforge.tools.validators.pipeline import default_pipeline

if TYPE_CHECKING:
    from crystalforge.core.candidate import Candidate
    from crystalforge.tools.validators.pipeline import CandidateResult

RELAX_STAGE = "chgnet_relax"


def summarize(
    spec: DesignSpec,
    candidate: Candidate,
    *,
    passed: bool,
    failed_stage: str | None,
    reason: str | None,
) -> CandidateSummary:
    """The state-sized summary of one validated candidate, assessed against the spec."""
    props = candidate.properties
    assessment = assess(spec, candidate, passed=passed)
    sg = props.get("relaxed_space_group_number", props.get("space_group_number"))

    def number(key: str) -> float | None:
        value = props.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    converged = props.get("converged")
    return CandidateSummary(
        id=candidate.id,
        formula=candidate.formula,
        round=candidate.round,
        generator=candidate.generator,
        n_atoms=len(candidate.structure),
        space_group=int(sg) if isinstance(sg, int | float) else None,
        passed=passed,
        failed_stage=failed_stage,
        reason=reason,
        e_above_hull=number("e_above_hull"),
        formation_energy=number("formation_energy"),
        energy_per_atom=number("energy_per_atom"),
        converged=bool(converged) if converged is not None else None,
        meets_hard=assessment.meets_hard,
        unmet=list(assessment.unmet),
        unevaluated=list(assessment.unevaluated),
        score=assessment.score,
        seconds=number("relax_seconds") or 0.0,
    )


def validate(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Validate the candidates of this round that have no stored result yet."""
    assert state.spec is not None, "understand runs before validate"
    spec = DesignSpec.model_validate(state.spec)
    context = runtime.context
    store = store_for(context)
    started = time.perf_counter()
    todo = [store.load_candidate(i) for i in state.round_ids if not store.has_result(i)]
    # Small cells first: they relax in fewer, cheaper steps, so hits (and early stops) come sooner.
    todo.sort(key=lambda c: len(c.structure))
    earlier = [
        (r.candidate.id, r.candidate.structure)
        for r in store.results(list(state.candidate_ids))
        if r.candidate.id not in state.round_ids
    ]
    remaining = max(0, spec.budget.max_validator_calls - state.validator_calls)
    pipeline = default_pipeline(
        reference_for(context),
        fmax_ev_per_a=context.relax_fmax_ev_per_a,
        max_steps=context.relax_max_steps,
        device=context.device,
        known=earlier,
        allowed_space_groups=spec.space_groups,
        max_atoms=spec.max_atoms,
        relaxer=FakeEnergyValidator() if context.relaxer == "fake" else None,
        progress=lambda done, total: context.report("validate", done, total),
        memory=memory_for(context)[0],
        run_id=context.run_dir.name,
    )

    # Hits so far (earlier rounds and this one), to end the round early once there are enough.
    hits = {hit_key(r) for r in state.results if r["meets_hard"]}

    def persist(result: CandidateResult) -> None:
        store.save_result(
            result.candidate,
            result.verdicts,
            passed=result.passed,
            failed_stage=result.failed_stage,
        )
        summary = summarize(
            spec,
            result.candidate,
            passed=result.passed,
            failed_stage=result.failed_stage,
            reason=result.reason,
        )
        if summary["meets_hard"]:
            hits.add(hit_key(summary))

    def enough() -> bool:
        spent = state.elapsed_s + time.perf_counter() - started
        return len(hits) >= spec.num_candidates or spent >= spec.budget.max_wall_time_s

    if todo:
        pipeline.run(todo, on_result=persist, max_expensive=remaining, stop_when=enough)
    round_results = list(store.results(list(state.round_ids)))
    relaxed = sum(1 for r in round_results if any(v.validator == RELAX_STAGE for v in r.verdicts))
    summaries = [
        summarize(spec, r.candidate, passed=r.passed, failed_stage=r.failed_stage, reason=r.reason)
        for r in round_results
    ]
    return {
        "results": summaries,
        "validator_calls": state.validator_calls + relaxed,
        "elapsed_s": state.elapsed_s + time.perf_counter() - started,
    }
