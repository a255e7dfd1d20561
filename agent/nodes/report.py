"""report: write the run directory's outputs."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.nodes.retrieve import record_run
from crystalforge.agent.nodes.review import apply_reviews
from crystalforge.agent.report import write_report
from crystalforge.agent.resources import reference_for
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.spec import DesignSpec


def report(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write ranked table, CIFs, verdicts, report and figures (idempotent: files are rewritten)."""
    assert state.spec is not None, "understand runs before report"
    context = runtime.context
    reference = reference_for(context)
    memory_notes = record_run(state, context)  # issue 9: remember this campaign
    outcome = write_report(
        run_dir=context.run_dir,
        request=state.request,
        spec=DesignSpec.model_validate(state.spec),
        reference=reference,
        reference_name=state.reference_name or reference.name,
        references=state.references,
        results=apply_reviews(list(state.results), list(state.reviews)),
        plans=list(state.plans),
        memos=list(state.memos),
        stop_reason=state.stop_reason or "finished",
        validator_calls=state.validator_calls,
        elapsed_s=state.elapsed_s,
        notes=list(state.notes) + memory_notes,
        llm_tokens=state.llm_tokens,
    )
    return {"report_path": str(outcome.report_path)}
