"""report: the final answer (LLM-written and provenance-gated, or composed by rules) and the files.

With ``llm="openai"`` the model writes the answer from tool results: a run summary given as
quoted data, plus ``get_candidate`` / ``list_candidates`` calls it may make (the answer is
streamed). Every number in the answer must come from those results or the run's state; the
provenance gate (:mod:`crystalforge.agent.provenance`) flags the rest, and instruction-looking
text is neutralised. The embedded planner composes the answer from the same summary by rules.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.llm.base import LLMError, Message, ToolSpec
from crystalforge.agent.llm.factory import backend_for
from crystalforge.agent.nodes.reflect import distinct_hits
from crystalforge.agent.nodes.retrieve import record_run
from crystalforge.agent.nodes.review import apply_reviews
from crystalforge.agent.prompts import ANSWER_SYSTEM, neutralise, quote_data
from crystalforge.agent.provenance import collect_numbers, gate
from crystalforge.agent.report import rank, write_report
from crystalforge.agent.resources import reference_for
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.spec import DesignSpec
from crystalforge.tools.base import ToolArgumentsInvalid, result_text
from crystalforge.tools.validate import candidate_facts, candidate_tools

if TYPE_CHECKING:
    from crystalforge.agent.llm.base import LLMBackend
    from crystalforge.agent.state import CandidateSummary

logger = logging.getLogger(__name__)

MAX_ANSWER_TURNS = 4
"""Model turns for the final answer (tool calls included) before falling back to rules."""


def run_summary(state: State, ranked: list[CandidateSummary]) -> dict[str, Any]:
    """The run's facts as the final answer's first tool result (energies in eV/atom)."""
    assert state.spec is not None
    spec = DesignSpec.model_validate(state.spec)
    hits = distinct_hits(ranked)
    return {
        "request": state.request,
        "stop_reason": state.stop_reason or "finished",
        "candidates_wanted": spec.num_candidates,
        "distinct_hits": len(hits),
        "hits": [candidate_facts(h) for h in hits[:10]],
        "best_candidates": [candidate_facts(r) for r in ranked[:5]],
        "validated_structures": len(ranked),
        "rounds": len(state.plans),
        "chgnet_relaxations": state.validator_calls,
        "working_time_s": round(state.elapsed_s, 1),
        "llm_tokens": state.llm_tokens,
        "reference_hull": state.reference_name,
    }


def rules_answer(summary: dict[str, Any]) -> str:
    """The embedded planner's answer, composed from the run summary only."""
    lines = [
        f"Found {summary['distinct_hits']} distinct candidates meeting every hard constraint "
        f"({summary['candidates_wanted']} wanted) after {summary['rounds']} rounds, "
        f"{summary['chgnet_relaxations']} CHGNet relaxations and "
        f"{summary['working_time_s']} s; stopped because: {summary['stop_reason']}."
    ]
    shown = summary["hits"] or summary["best_candidates"][:3]
    if shown and not summary["hits"]:
        lines.append("No candidate met every hard constraint; the closest were:")
    for facts in shown[:5]:
        energy = facts.get("e_above_hull")
        where = f"{energy:.3f} eV/atom above the hull" if energy is not None else "not relaxed"
        sg = f", space group {facts['space_group']}" if facts.get("space_group") else ""
        lines.append(f"- {facts['id']} {facts['formula']}{sg}: {where}")
    return "\n".join(lines)


def llm_answer(
    backend: LLMBackend, summary: dict[str, Any], ranked: list[CandidateSummary]
) -> tuple[str | None, list[Any], dict[str, float]]:
    """The model's answer, the tool results it read, and its cost (tokens, seconds, calls)."""
    tools = {t.name: t for t in candidate_tools(ranked)}
    specs = [
        ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
        for t in tools.values()
    ]
    messages = [
        Message(role="system", content=ANSWER_SYSTEM),
        Message(
            role="user",
            content=f"Request: {summary['request']}\n\n" + quote_data("run summary", summary),
        ),
    ]
    results: list[Any] = []
    cost = {"tokens": 0.0, "seconds": 0.0, "calls": 0.0}
    for _ in range(MAX_ANSWER_TURNS):
        completion = backend.complete(messages, tools=specs, stream=True)
        cost["tokens"] += completion.usage.total
        cost["seconds"] += completion.latency_s
        cost["calls"] += 1
        if not completion.tool_calls:
            return completion.text, results, cost
        messages.append(
            Message(
                role="assistant", content=completion.text or "", tool_calls=completion.tool_calls
            )
        )
        for call in completion.tool_calls:
            tool = tools.get(call.name)
            if tool is None:
                result: Any = {"error": f"unknown tool {call.name!r}; tools: {sorted(tools)}"}
            else:
                try:
                    result = tool.call(call.arguments)
                except ToolArgumentsInvalid as exc:
                    result = {"error": str(exc)}
            results.append(result)
            text = result_text(result)
            messages.append(
                Message(
                    role="tool",
                    tool_call_id=call.id,
                    content=quote_data(f"{call.name} result", json.loads(text)),
                )
            )
    return None, results, cost


def final_answer(
    state: State, ranked: list[CandidateSummary], backend: LLMBackend | None
) -> tuple[str, list[str], dict[str, Any]]:
    """The gated answer, notes on what the gate did, and a state update for LLM accounting."""
    summary = run_summary(state, ranked)
    update: dict[str, Any] = {}
    tool_results: list[Any] = []
    text: str | None = None
    notes: list[str] = []
    if (
        backend is not None
        and state.llm_tokens < DesignSpec.model_validate(state.spec).budget.max_llm_tokens
    ):
        try:
            text, tool_results, cost = llm_answer(backend, summary, ranked)
        except LLMError as exc:
            notes.append(f"LLM answer unavailable ({exc}); composed by rules")
        else:
            update = state.llm_cost(
                tokens=int(cost["tokens"]), seconds=cost["seconds"], calls=int(cost["calls"])
            )
            if not text:
                notes.append("the model gave no answer text; composed by rules")
    writer = "the model" if text else "rules"
    if not text:
        text = rules_answer(summary)
    sources = collect_numbers(
        summary,
        tool_results,
        state.spec,
        state.request,
        list(state.results),
        list(state.plans),
        list(state.memos),
        state.references,
        list(range(len(ranked) + 1)),
    )
    checked = gate(neutralise(text), sources)
    notes.append(
        f"answer written by {writer}; provenance gate: {checked.checked} numbers checked, "
        + (
            f"{len(checked.unbacked)} not found in this run's tool results or state, flagged "
            f"[unverified]: {', '.join(checked.unbacked)}"
            if checked.unbacked
            else "all found in this run's tool results or state"
        )
    )
    return checked.text, notes, update


def report(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write ranked table, CIFs, verdicts, report and figures (idempotent: files are rewritten)."""
    assert state.spec is not None, "understand runs before report"
    context = runtime.context
    reference = reference_for(context)
    memory_notes = record_run(state, context)  # issue 9: remember this campaign
    results = apply_reviews(list(state.results), list(state.reviews))
    answer, gate_notes, update = final_answer(state, rank(results), backend_for(context))
    tokens = update.get("llm_tokens", state.llm_tokens)
    outcome = write_report(
        run_dir=context.run_dir,
        request=state.request,
        spec=DesignSpec.model_validate(state.spec),
        reference=reference,
        reference_name=state.reference_name or reference.name,
        references=state.references,
        results=results,
        plans=list(state.plans),
        memos=list(state.memos),
        stop_reason=state.stop_reason or "finished",
        validator_calls=state.validator_calls,
        elapsed_s=state.elapsed_s,
        notes=[neutralise(n) for n in [*state.notes, *memory_notes]],
        llm_tokens=tokens,
        llm_seconds=update.get("llm_seconds", state.llm_seconds),
        llm_calls=update.get("llm_calls", state.llm_calls),
        final_answer=answer,
        gate_notes=gate_notes,
    )
    return {**update, "final_answer": answer, "report_path": str(outcome.report_path)}
