"""Clarifying questions: a contradictory request gets a question, or a noted default."""

from __future__ import annotations

import pytest

from crystalforge.agent.api import compile_request
from crystalforge.agent.cli import main
from crystalforge.core.errors import ClarificationNeeded

CONTRADICTORY = "a metallic Li-Mn-O oxide with a band gap above 3 eV"


def test_scripted_run_exits_2_with_the_question(capsys, tmp_path):
    code = main(["design", CONTRADICTORY, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Question:" in err
    assert "metallic" in err
    assert "--assume-defaults" in err
    assert not (tmp_path / "run").exists()


def test_the_question_is_exposed_for_the_chat():
    with pytest.raises(ClarificationNeeded) as info:
        compile_request(CONTRADICTORY)
    assert info.value.question.endswith("which do you want?")
    assert info.value.drop == "metallic"


def test_assume_defaults_takes_the_number_and_says_so():
    compiled = compile_request(CONTRADICTORY, assume_defaults=True)
    gap = compiled.spec.target("band_gap")
    assert gap is not None
    assert gap.min == 3.0
    assert gap.max is None
    assert compiled.spec.request == CONTRADICTORY
    assert compiled.notes[0].startswith("assumed: the number wins")


def test_a_question_without_a_default_still_stops():
    with pytest.raises(ClarificationNeeded, match="no default exists"):
        compile_request("a Ti-O or Zr-O oxide", assume_defaults=True)
