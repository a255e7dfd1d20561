"""crystalforge chat: a scripted conversation on fast fakes (fake generator and energies).

Covers the turn grammar, a clarifying question answered in the next turn, review answers,
questions answered from run data, a refinement that reruns, and resuming a saved session.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from crystalforge.agent.chat import ChatOptions, interpret, parse_review_answer, run_chat
from crystalforge.agent.nodes.review import load_reviews
from crystalforge.agent.request_parser import parse_request, refine_spec
from crystalforge.core.errors import RequestError

if TYPE_CHECKING:
    from pathlib import Path


def _options(tmp_path: Path, data_dir: Path, **extra: object) -> ChatOptions:
    return ChatOptions(
        runs_dir=tmp_path / "runs",
        data_dir=data_dir,
        relaxer="fake",
        generators=("fake",),
        budget={"max_rounds": 1, "samples_per_round": 4},
        **extra,  # type: ignore[arg-type]
    )


def test_review_answers_parse_into_decisions():
    intent = parse_review_answer("approve 1 3, reject 2: too much Mn; note 4: check the Mn site")
    assert intent.approve == ("1", "3")
    assert intent.reject == ("2",)
    assert intent.notes == (("2", "too much Mn"), ("4", "check the Mn site"))
    assert parse_review_answer("skip").approve == ()
    assert parse_review_answer("approve all").approve == ("all",)
    with pytest.raises(RequestError, match="no note"):
        parse_review_answer("note 4")
    with pytest.raises(RequestError, match="could not read"):
        parse_review_answer("approve 1 and then maybe 2, reject")


def test_turns_are_classified():
    def kind(text: str, *, spec: bool = True, review: bool = False) -> str:
        return interpret(text, has_spec=spec, awaiting_review=review).kind

    assert kind("a stable Li-Mn-O oxide", spec=False) == "new"
    assert kind("now without manganese") == "refine"
    assert interpret("show me the two most stable", has_spec=True, awaiting_review=False).count == 2
    assert kind("list the hits") == "show"
    assert (
        interpret("why was candidate 3 rejected?", has_spec=True, awaiting_review=False).ref == "3"
    )
    assert kind("approve 1", review=True) == "review"
    assert kind("approve 1") == "refine", "review answers only while a review is pending"
    assert kind("new request: a Ti-O oxide") == "new"
    assert kind("quit") == "quit"


def test_refinements_change_only_what_they_say():
    spec = parse_request("a stable Li-Mn-O oxide, at most 16 atoms per cell")
    refined, changes = refine_spec(spec, "now without manganese")
    assert refined.chemical_system == ("Li", "O")
    assert refined.excluded_elements == ("Mn",)
    assert "Mn" not in refined.required_elements
    assert refined.max_atoms == 16
    assert changes == ["excluded element: Mn"]
    refined, _ = refine_spec(spec, "band gap above 1 eV and find 5 candidates")
    assert refined.target("band_gap").min == 1.0  # type: ignore[union-attr]
    assert refined.num_candidates == 5
    assert refined.target("e_above_hull") == spec.target("e_above_hull")
    with pytest.raises(RequestError, match="could not read a change"):
        refine_spec(spec, "make it nicer")
    with pytest.raises(RequestError, match="leave the chemical system with Li"):
        refine_spec(refined, "without oxygen and without manganese")


def test_a_conversation_with_a_question_a_review_and_a_refinement(tmp_path: Path, data_dir: Path):
    replies: list[str] = []
    turns = [
        "a metallic Mg-O compound with a band gap above 3 eV, at most 8 atoms",  # contradictory
        "band gap above 3 eV",  # the answer: the run starts and stops for review
        "approve 1 3, reject 2: too much Mg",
        "show me the two most stable",
        "why was candidate 2 rejected?",
        "now with at most 6 atoms",  # a refinement: a second run
        "skip",
        "quit",
    ]
    session = run_chat(
        iter(turns), replies.append, options=_options(tmp_path, data_dir, review=True)
    )
    text = "\n".join(replies)
    assert "which do you want?" in replies[1]
    assert "target: band_gap >= 3 eV" in text
    assert "waiting for your review" in text
    assert len(session.runs) == 2
    first_run = session.runs[0]
    reviews = load_reviews(tmp_path / "runs" / first_run.split("/")[-1])
    assert {r["action"] for r in reviews} == {"approve", "reject"}
    assert next(r for r in reviews if r["action"] == "reject")["note"] == "too much Mg"
    two = next(r for r in replies if r.startswith("The 2 most stable"))
    energies = [float(line.split("E_hull ")[1].split()[0]) for line in two.splitlines()[1:]]
    assert energies == sorted(energies)
    assert len(energies) == 2
    # "candidate 2" is the second row of the list just shown; the answer comes from run data.
    second_id = two.splitlines()[2].split()[2]
    why = replies[replies.index(two) + 1]
    assert f"({second_id})" in why
    assert "rejected by the reviewer: too much Mg" in why or "misses" in why
    assert "Refined the request: atoms per cell: 1-6" in text
    saved = json.loads(session.path.read_text())
    assert saved["spec"]["max_atoms"] == 6
    assert saved["history"][0] == {"role": "user", "text": turns[0]}


def test_why_answers_from_the_review_note(tmp_path: Path, data_dir: Path):
    replies: list[str] = []
    run_chat(
        iter(["a stable Mg-O oxide", "reject 1: known phase"]),
        replies.append,
        options=_options(tmp_path, data_dir, review=True),
    )
    proposals = next(r for r in replies if "waiting for your review" in r)
    first_id = proposals.splitlines()[1].split()[2]
    replies.clear()
    # The listing after the run is the ranked one; ask by id to be exact.
    session_file = next((tmp_path / "runs").glob("chat-*.json"))
    run_chat(
        iter([f"why was {first_id} rejected?"]),
        replies.append,
        options=ChatOptions(resume=session_file),
    )
    assert any(f"({first_id}) was rejected by the reviewer: known phase" in r for r in replies)


def test_resume_continues_a_run_waiting_for_review(tmp_path: Path, data_dir: Path):
    replies: list[str] = []
    options = _options(tmp_path, data_dir, review=True, session=tmp_path / "s.json")
    run_chat(iter(["a stable Mg-O oxide"]), replies.append, options=options)  # stops: review
    assert "waiting for your review" in replies[-1]
    replies.clear()
    session = run_chat(
        iter(["approve all", "quit"]),
        replies.append,
        options=ChatOptions(resume=tmp_path / "s.json"),
    )
    assert replies[0].startswith("Continuing the conversation")
    assert "waiting for your review" in replies[1], "the pending review is shown again"
    assert any(r.startswith("Done (") for r in replies)
    assert all(
        r["action"] == "approve"
        for r in load_reviews(tmp_path / "runs" / session.runs[0].split("/")[-1])
    )


@pytest.mark.usefixtures("allow_llm_requests")
def test_chat_in_openai_mode_uses_the_model_then_answers_from_run_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path
):
    """The chat's ``--llm openai`` path: the real openai client against a scripted server on
    127.0.0.1 compiles the request, plans the round and writes the answer; the follow-up is
    answered from run data without another model call."""
    from tests.agent.openai_server import ScriptedOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    replies: list[str] = []
    with ScriptedOpenAIServer() as server:
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
                "references": [],
                "rationale": ["explore Mg-O"],
            },
        )
        server.reply_text("One round ran on the Mg-O system.")
        options = _options(tmp_path, data_dir, llm="openai", model="test-model")
        options.base_url = server.base_url
        run_chat(
            iter(["a stable Mg-O oxide, at most 8 atoms", "show me the two most stable", "quit"]),
            replies.append,
            options=options,
        )
    assert not server.replies, "every scripted reply was used"
    assert len(server.requests) == 3
    assert server.requests[0]["tools"][0]["function"]["name"] == "submit_design_spec"
    assert server.requests[1]["tools"][0]["function"]["name"] == "submit_round_plan"
    text = "\n".join(replies)
    assert "request compiled by" in text or "Design spec" in text
    assert "round 0: fake x3" in text
    two = next(r for r in replies if r.startswith("The 2 most stable"))
    energies = [float(line.split("E_hull ")[1].split()[0]) for line in two.splitlines()[1:]]
    assert energies == sorted(energies)
