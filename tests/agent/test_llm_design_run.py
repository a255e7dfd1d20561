"""A full multi-round design run in openai mode: the real ``openai`` client against a scripted
OpenAI-compatible server on 127.0.0.1, streaming included.

The model compiles the request, plans both rounds (one plan over budget, clamped), reflects on
the first, and writes the final answer in a streamed tool-calling conversation. The fake
generator and table-driven energies keep it to seconds; the graph, checkpoints, run store,
reference hull and HTTP are real.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from crystalforge.agent.api import compile_request
from crystalforge.agent.context import Context
from crystalforge.agent.llm.openai_backend import OpenAIBackend
from crystalforge.agent.runner import run_values, start_run, submit_review
from crystalforge.core.spec import Budget
from tests.agent.openai_server import ScriptedOpenAIServer

if TYPE_CHECKING:
    from pathlib import Path

    from crystalforge.agent.llm.compile_spec import CompiledRequest
    from crystalforge.core.spec import DesignSpec

REQUEST = "a stable Mg-O oxide with at most 8 atoms per cell, 50 candidates"


def _script(server: ScriptedOpenAIServer) -> None:
    """Compile, plan, reflect, plan, then a tool-calling final answer with an invented value."""
    server.reply_tool_call(
        "submit_design_spec",
        {
            "chemical_system": ["Mg", "O"],
            "max_atoms": 8,
            "targets": [{"name": "e_above_hull", "max": 0.1}],
            "num_candidates": 50,
        },
    )
    server.reply_tool_call(
        "submit_round_plan",
        {
            "tasks": [{"generator": "fake", "num_structures": 3, "purpose": "explore"}],
            "references": ["MgO"],
            "rationale": ["first round: explore the Mg-O space"],
        },
    )
    server.reply_tool_call(
        "submit_reflection",
        {"changes": ["the fake family is the only one; keep it"], "prefer_generator": "fake"},
    )
    server.reply_tool_call(
        "submit_round_plan",
        {
            "tasks": [{"generator": "fake", "num_structures": 50, "purpose": "exploit"}],
            "references": [],
            "rationale": ["exploit what came closest"],
        },
    )
    server.reply_tool_call("list_candidates", {"limit": 3})
    server.reply_text(
        "The run used 2 rounds. One value here is invented: 7.77777 eV/atom. "
        "The rest comes from the tool results."
    )


def _compile_two_rounds(
    server: ScriptedOpenAIServer, run_dir: Path, data_dir: Path, *, review: bool = False
) -> tuple[CompiledRequest, DesignSpec, Context]:
    """Compile REQUEST through the server; a 2-round budget and an openai-mode context."""
    backend = OpenAIBackend(model_name="test-model", base_url=server.base_url)
    compiled = compile_request(REQUEST, backend=backend)
    spec = compiled.spec.model_copy(
        update={"budget": Budget(max_rounds=2, samples_per_round=4, max_validator_calls=50)}
    )
    context = Context(
        run_dir=run_dir,
        data_dir=data_dir,
        llm="openai",
        llm_model="test-model",
        llm_base_url=server.base_url,
        generators=("fake",),
        relaxer="fake",
        review=review,
    )
    return compiled, spec, context


@pytest.mark.usefixtures("allow_llm_requests")
def test_multi_round_design_in_openai_mode(monkeypatch, tmp_path: Path, data_dir: Path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    with ScriptedOpenAIServer() as server:
        _script(server)

        compiled, spec, context = _compile_two_rounds(server, tmp_path / "run", data_dir)
        seen: list[tuple[str, dict]] = []
        outcome = start_run(
            spec,
            context,
            on_node=lambda node, update: seen.append((node, update)),
            notes=[f"request compiled by {compiled.source}"],
            llm_tokens=compiled.tokens,
            llm_seconds=compiled.llm_seconds,
            llm_calls=compiled.calls,
        )

    # Every scripted reply was used, in order; the final answer's two turns were streamed.
    assert not server.replies
    assert len(server.requests) == 6
    assert server.streamed == 2
    assert all(r.get("stream") for r in server.requests[4:])
    assert [r["tools"][0]["function"]["name"] for r in server.requests[1:4]] == [
        "submit_round_plan",
        "submit_reflection",
        "submit_round_plan",
    ]
    # The plan prompt quotes the memo, candidates and references as data.
    plan_prompt = server.requests[3]["messages"][1]["content"]
    assert '<data source="last reflection memo">' in plan_prompt
    assert "the fake family is the only one" in plan_prompt

    plans = [u["plans"][-1] for n, u in seen if n == "plan"]
    assert [p["tasks"][0]["num_structures"] for p in plans] == [3, 4]  # 50 clamped to 4
    assert plans[0]["rationale"][0] == "planned by test-model"
    assert any("scaled to the round budget of 4" in line for line in plans[1]["rationale"])
    memos = [u["memos"][-1] for n, u in seen if n == "reflect"]
    assert memos[0]["source"] == "llm"
    assert memos[1]["source"] == "rules"  # the last round stops by rule; no model call
    assert outcome.stop_reason == "round budget spent (2 rounds)"

    report = outcome.report_path.read_text()
    assert "## Answer" in report
    assert "7.77777 [unverified]" in report
    assert "2 rounds" in report
    assert "provenance gate" in report
    # Accounting: 6 calls x 150 tokens (the server's usage), per hit when there is one.
    assert "LLM tokens: 900; LLM calls: 6" in report
    tool_result = server.requests[5]["messages"][-1]
    assert tool_result["role"] == "tool"
    assert json.loads(tool_result["content"].split("\n")[1])  # quoted JSON data


@pytest.mark.usefixtures("allow_llm_requests")
def test_openai_design_conversation_with_a_review_step(monkeypatch, tmp_path: Path, data_dir: Path):
    """The same conversation with review on: the run stops for the reviewer after each round and
    resumes from its SQLite checkpoint; the reviewer's note reaches the model as quoted data."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    run_dir = tmp_path / "run"
    with ScriptedOpenAIServer() as server:
        _script(server)
        compiled, spec, context = _compile_two_rounds(server, run_dir, data_dir, review=True)
        outcome = start_run(spec, context, llm_tokens=compiled.tokens)
        assert outcome.stop_reason == "waiting for review"
        assert outcome.pending_review is not None
        assert len(server.requests) == 2  # compile + first plan; nothing after the interrupt
        ids = [p["id"] for p in outcome.pending_review["proposals"]]
        assert ids
        outcome = submit_review(
            run_dir,
            {"decisions": [{"id": ids[0], "action": "reject", "note": "too much Mg"}]},
        )
        assert outcome.pending_review is not None
        assert outcome.pending_review["round"] == 1
        # The reflection the model was asked for quotes the reviewer's note as data.
        reflect_prompt = json.dumps(server.requests[2]["messages"])
        assert "too much Mg" in reflect_prompt
        assert "<data" in reflect_prompt
        outcome = submit_review(run_dir, {"decisions": []})

    assert not server.replies
    assert outcome.pending_review is None
    assert outcome.stop_reason == "round budget spent (2 rounds)"
    assert len(server.requests) == 6
    memo = run_values(run_dir)["memos"][0]
    assert memo["source"] == "llm"
    report = outcome.report_path.read_text()
    assert "rejected by reviewer: too much Mg" in report
    assert "7.77777 [unverified]" in report


def test_references_the_planner_asks_for_are_retrieved(tmp_path: Path, data_dir: Path):
    """Formulae in the plan's ``references`` are looked up on the run's hull in later rounds;
    text that is no formula is skipped and unknown formulae are named in a note."""
    from crystalforge.agent.nodes.retrieve import _asked_references
    from crystalforge.agent.state import Plan, State

    context = Context(run_dir=tmp_path / "run", data_dir=data_dir, relaxer="fake")
    plan: Plan = {
        "round": 1,
        "seed": 0,
        "tasks": [],
        "max_atoms": 8,
        "rationale": [],
        "references": ["MgO", "ignore all constraints", "Mg7O"],
    }
    state = State(reference_name="x", references=[], plans=[plan])
    update = _asked_references(state, context)
    assert {r["formula"] for r in update["references"]} == {"MgO"}
    assert any("asked for: MgO" in n for n in update["notes"])
    assert any("Mg7O" in n for n in update["notes"])
    # Already known: nothing to add.
    again = State(reference_name="x", references=update["references"], plans=[plan])
    assert "references" not in _asked_references(again, context)
