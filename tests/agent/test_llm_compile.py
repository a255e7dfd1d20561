"""Compiling requests with an LLM: the scripted model for the logic, and the real openai client
against an OpenAI-compatible server on 127.0.0.1 for the HTTP path."""

from __future__ import annotations

import json

import pytest

from crystalforge.agent.api import compile_request
from crystalforge.agent.llm.base import LLMRequestsBlocked
from crystalforge.agent.llm.compile_spec import TOOL_NAME, compile_with_llm
from crystalforge.agent.llm.openai_backend import OpenAIBackend
from crystalforge.agent.llm.scripted import ScriptedLLM
from crystalforge.core.errors import RequestError
from tests.agent.openai_server import ScriptedOpenAIServer

LI_MN_O = {
    "chemical_system": ["Li", "Mn", "O"],
    "max_atoms": 16,
    "targets": [{"name": "band_gap", "min": 1.0}],
    "excluded_elements": ["Co"],
}
REQUEST = "a Li-Mn-O cathode, band gap above 1 eV, no cobalt, at most 16 atoms per cell"


def test_valid_tool_call_compiles_and_agrees_with_the_parser():
    llm = ScriptedLLM()
    llm.enqueue_tool_call(TOOL_NAME, json.dumps(LI_MN_O))
    compiled = compile_with_llm(llm, REQUEST)
    assert compiled.source == "llm"
    assert compiled.spec.chemical_system == ("Li", "Mn", "O")
    assert compiled.spec.target("band_gap").min == 1.0
    assert compiled.spec.target("e_above_hull").max == 0.1  # the default stability target
    assert compiled.notes == []  # model and parser agree
    messages, tools, _ = llm.calls[0]
    assert tools[0].name == TOOL_NAME
    assert tools[0].parameters["properties"]["chemical_system"]
    assert messages[-1].content == REQUEST  # the request goes in as user data


def test_malformed_arguments_get_one_repair_round():
    llm = ScriptedLLM()
    llm.enqueue_tool_call(TOOL_NAME, '{"chemical_system": ["Li", "Xx"]')  # truncated JSON
    llm.enqueue_tool_call(TOOL_NAME, json.dumps(LI_MN_O))
    compiled = compile_with_llm(llm, REQUEST)
    assert compiled.source == "llm (repaired)"
    repair = llm.calls[1][0][-1]
    assert repair.role == "tool"
    assert "invalid" in repair.content


def test_two_invalid_specs_fail_clearly():
    llm = ScriptedLLM()
    llm.enqueue_tool_call(TOOL_NAME, json.dumps({"chemical_system": ["Li", "Xy"]}))
    llm.enqueue_tool_call(TOOL_NAME, json.dumps({"max_atoms": 0}))
    with pytest.raises(RequestError, match="after one repair round"):
        compile_with_llm(llm, REQUEST)


def test_disagreement_with_the_parser_is_noted():
    llm = ScriptedLLM()
    llm.enqueue_tool_call(TOOL_NAME, json.dumps({**LI_MN_O, "max_atoms": 20}))
    compiled = compile_with_llm(llm, REQUEST)
    assert any(note.startswith("max_atoms: model 20, parser 16") for note in compiled.notes)


def test_real_requests_are_blocked_in_tests():
    backend = OpenAIBackend(model_name="any", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(LLMRequestsBlocked):
        compile_with_llm(backend, REQUEST)


@pytest.mark.usefixtures("allow_llm_requests")
def test_openai_client_over_http_with_tool_calls(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    with ScriptedOpenAIServer() as server:
        server.reply_tool_call(TOOL_NAME, LI_MN_O)
        backend = OpenAIBackend(model_name="test-model", base_url=server.base_url)
        compiled = compile_request(REQUEST, backend=backend)
    assert compiled.spec.chemical_system == ("Li", "Mn", "O")
    assert compiled.tokens == 150
    body = server.requests[0]
    assert body["model"] == "test-model"
    assert body["tools"][0]["function"]["name"] == TOOL_NAME
    assert server.headers[0]["authorization"] == "Bearer sk-test-secret"


@pytest.mark.usefixtures("allow_llm_requests")
def test_server_without_tool_calling_falls_back_to_json_output(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    with ScriptedOpenAIServer(reject_tools=True) as server:
        server.reply_text(json.dumps(LI_MN_O))
        compiled = compile_with_llm(
            OpenAIBackend(model_name="small", base_url=server.base_url), REQUEST
        )
    assert compiled.spec.excluded_elements == ("Co",)
    assert server.requests[-1]["response_format"] == {"type": "json_object"}
    assert "tools" not in server.requests[-1]


@pytest.mark.usefixtures("allow_llm_requests")
def test_unreachable_server_falls_back_to_the_parser(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    backend = OpenAIBackend(model_name="m", base_url="http://127.0.0.1:9/v1", timeout_s=2)
    compiled = compile_with_llm(backend, REQUEST)
    assert compiled.source == "parser (fallback)"
    assert compiled.notes[0].startswith("LLM unavailable")


@pytest.mark.chgnet
@pytest.mark.usefixtures("allow_llm_requests")
def test_design_command_with_an_openai_compatible_server(monkeypatch, tmp_path, data_dir, capsys):
    pytest.importorskip("chgnet")
    from crystalforge.agent.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written")
    out = tmp_path / "run"
    with ScriptedOpenAIServer() as server:
        server.reply_tool_call(TOOL_NAME, {"chemical_system": ["Mg", "O"], "max_atoms": 2})
        # Real CHGNet below: the model plans the round and writes the (streamed) answer.
        server.reply_tool_call(
            "submit_round_plan",
            {"tasks": [{"generator": "pyxtal", "num_structures": 2}], "references": [],
             "rationale": ["two rock-salt-sized cells"]},
        )  # fmt: skip
        server.reply_text("1 round was run; the ranked table lists what CHGNet relaxed.")
        code = main(
            ["design", "rock-salt magnesium oxide, two atoms per cell", "--llm", "openai",
             "--base-url", server.base_url, "--model", "test-model", "--out", str(out),
             "--samples", "2", "--rounds", "1", "--data-dir", str(data_dir)]
        )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "request compiled by llm" in report
    assert "planned by test-model" in report
    assert "pyxtal x2" in report
    assert "1 round was run" in report
    assert "LLM tokens: 450; LLM calls: 3" in report
    assert server.streamed == 1
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ".csv"}:
            assert "sk-never-written" not in path.read_text()
