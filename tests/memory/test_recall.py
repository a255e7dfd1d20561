"""A second run on a similar request starts from what the first one learned (issue 9)."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.agent.context import Context
from crystalforge.agent.runner import start_run
from crystalforge.core.candidate import Candidate
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget
from crystalforge.memory.chroma import open_memory
from crystalforge.tools.validators.uniqueness import NoveltyValidator


def _spec(request: str, system: tuple[str, ...]) -> DesignSpec:
    return DesignSpec(
        request=request,
        chemical_system=system,
        max_atoms=8,
        targets=(PropertyTarget(name="e_above_hull", max=0.1),),
        num_candidates=50,
        budget=Budget(max_rounds=2, samples_per_round=4),
    )


def _context(run_dir, data_dir) -> Context:
    return Context(run_dir=run_dir, data_dir=data_dir, generators=("fake",), relaxer="fake")


@pytest.fixture
def mgo_is_stable(monkeypatch, data_dir):
    """The fake relaxer gives MgO an energy just below the reference hull, so runs find hits."""
    from functools import partial

    from crystalforge.agent.nodes import validate
    from crystalforge.memory.reference_data import load_reference
    from crystalforge.tools.validators.fake import FakeEnergyValidator

    mu = load_reference(data_dir).chemical_potentials(["Mg", "O"])
    energies = {"MgO": 0.5 * (mu["Mg"] + mu["O"]) - 3.2}  # MP-20 MgO: about -3.05 eV/atom
    monkeypatch.setattr(
        validate, "FakeEnergyValidator", partial(FakeEnergyValidator, energies=energies)
    )


def test_second_run_recalls_the_first_campaign_and_starts_from_it(
    tmp_path, data_dir, mgo_is_stable
):
    first = start_run(
        _spec("a stable Mg-O oxide", ("Mg", "O")), _context(tmp_path / "r1", data_dir)
    )
    store = open_memory()
    assert store.count("campaigns") == 1
    assert store.count("candidates") >= 1
    campaign = store.similar_campaigns({"chemical_system": ["Mg", "O"]}, k=1)[0]
    assert campaign["run_id"] == "r1"
    assert campaign["focus_compositions"], "the first run must have learned something to recall"
    assert "recorded this campaign" in first.report_path.read_text()

    second = start_run(
        _spec("an Mg-O compound, stable", ("Mg", "O")), _context(tmp_path / "r2", data_dir)
    )
    report = second.report_path.read_text()
    assert "recalled campaign r1" in report
    assert "first round starts from the recalled campaign" in report
    # The first plan of run 2 spends its exploit share on what run 1 found.
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from crystalforge.agent.graph import build_graph

    with sqlite3.connect(tmp_path / "r2" / "checkpoints.sqlite", check_same_thread=False) as conn:
        values = (
            build_graph(SqliteSaver(conn)).get_state({"configurable": {"thread_id": "r2"}}).values
        )
    plan0 = values["plans"][0]
    exploit = [t for t in plan0["tasks"] if t["purpose"] == "exploit"]
    assert exploit
    assert set(exploit[0]["compositions"]) <= set(campaign["focus_compositions"])
    assert any("recalled from campaign r1" in line for line in plan0["rationale"])
    assert values["recalled"][0]["run_id"] == "r1"
    json.dumps(values["recalled"])  # state stays JSON


def test_an_unrelated_request_recalls_nothing(tmp_path, data_dir):
    start_run(_spec("a stable Mg-O oxide", ("Mg", "O")), _context(tmp_path / "r1", data_dir))
    other = start_run(_spec("a Cu-Sn alloy", ("Cu", "Sn")), _context(tmp_path / "r3", data_dir))
    assert "recalled campaign" not in other.report_path.read_text()


def test_runs_work_without_the_memory_store(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("CRYSTALFORGE_MEMORY_ENABLED", "false")
    outcome = start_run(
        _spec("a stable Mg-O oxide", ("Mg", "O")), _context(tmp_path / "r", data_dir)
    )
    assert "memory store not used: disabled" in outcome.report_path.read_text()


def test_missing_extra_degrades_with_a_note(tmp_path, monkeypatch):
    from crystalforge.agent.nodes import retrieve
    from crystalforge.memory import chroma

    monkeypatch.setattr(chroma, "memory_available", lambda: False)
    store, note = retrieve.memory_for(Context(run_dir=tmp_path / "r"))
    assert store is None
    assert "'memory' extra is not installed" in note


def test_novelty_against_earlier_runs_candidates(tmp_path):
    store = open_memory(tmp_path / "memory")
    known = Structure(Lattice.cubic(3.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    earlier = Candidate.create(known, generator="fake")
    store.add_candidates("old-run", [{"candidate": earlier, "verdicts": [], "passed": True}])

    class NoStructures:
        name = "none"

        def reference_structures(self, formula):
            return []

    strained = known.copy()
    strained.apply_strain(0.03)
    other = Structure(Lattice.cubic(3.0), ["Cs", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    candidates = [Candidate.create(s, generator="fake") for s in (strained, other)]
    verdicts = NoveltyValidator(reference=NoStructures(), store=store).validate(candidates)
    assert [v.candidate_id for v in verdicts] == [c.id for c in candidates]
    assert verdicts[0].metrics["novel"] is False
    assert verdicts[0].metrics["matches_reference"] == earlier.id
    assert verdicts[0].metrics["matches_source"] == "memory"
    assert verdicts[1].metrics["novel"] is True
    # The same run's own candidates are the uniqueness stage's business, not novelty's.
    own = NoveltyValidator(reference=NoStructures(), store=store, run_id="old-run")
    assert own.validate(candidates[:1])[0].metrics["novel"] is True
