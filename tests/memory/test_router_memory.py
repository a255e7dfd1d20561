"""The router's first round learns from an earlier run's generator yields (issue 5).

Two design runs on one chromadb store on disk (the per-test memory folder under tmp), fake
relaxer: run 1's ``fake`` structures come out below the hull and its ``pyxtal`` ones far above
it, so its campaign record says fake survives and pyxtal does not. Run 2's first explore
allocation must differ from the prior-only one because of that, and its report must name run
1's numbers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from langgraph.checkpoint.sqlite import SqliteSaver

from crystalforge.agent.context import Context
from crystalforge.agent.graph import build_graph
from crystalforge.agent.nodes.plan import memory_prior, remembered_campaigns, round_seed
from crystalforge.agent.nodes.retrieve import record_progress
from crystalforge.agent.runner import start_run
from crystalforge.agent.state import Memo, State
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget
from crystalforge.generators.router import Router
from crystalforge.memory.chroma import open_memory
from crystalforge.memory.yields import earlier_yields, parse_yields
from crystalforge.tools.validators.fake import FakeEnergyValidator

if TYPE_CHECKING:
    from pathlib import Path

    from langchain_core.runnables import RunnableConfig

    from crystalforge.core.candidate import Candidate

GENERATORS: tuple[str, ...] = ("fake", "pyxtal")
SAMPLES = 10


def _spec(request: str) -> DesignSpec:
    return DesignSpec(
        request=request,
        chemical_system=("Mg", "O"),
        max_atoms=8,
        targets=(PropertyTarget(name="e_above_hull", max=0.1),),
        num_candidates=50,
        budget=Budget(max_rounds=1, samples_per_round=SAMPLES),
    )


def _context(run_dir: Path, data_dir: Path) -> Context:
    return Context(run_dir=run_dir, data_dir=data_dir, generators=GENERATORS, relaxer="fake")


def _values(run_dir: Path) -> dict[str, Any]:
    with sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False) as conn:
        config: RunnableConfig = {"configurable": {"thread_id": run_dir.name}}
        return dict(build_graph(SqliteSaver(conn)).get_state(config).values)


def _explore(plan: dict[str, Any]) -> dict[str, int]:
    out = dict.fromkeys(GENERATORS, 0)
    for task in plan["tasks"]:
        if task["purpose"] == "explore":
            out[task["generator"]] += task["num_structures"]
    return out


class _FakeStructuresAreStable(FakeEnergyValidator):
    """``fake`` structures 3.5 eV/atom lower than the stand-in's formation energy (below the
    MgO hull); every other generator's keep it (several eV/atom above the hull)."""

    def energy_per_atom(self, candidate: Candidate) -> float:
        shift = -3.5 if candidate.generator == "fake" else 0.0
        return super().energy_per_atom(candidate) + shift


@pytest.fixture
def fake_survives(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    from crystalforge.agent.nodes import validate
    from crystalforge.memory.reference_data import load_reference

    mu = load_reference(data_dir).chemical_potentials(["Mg", "O"])
    monkeypatch.setattr(
        validate, "FakeEnergyValidator", partial(_FakeStructuresAreStable, chemical_potentials=mu)
    )


def test_second_runs_first_allocation_follows_the_first_runs_yields(
    tmp_path: Path, data_dir: Path, fake_survives: None
) -> None:
    start_run(_spec("a stable Mg-O oxide"), _context(tmp_path / "r1", data_dir))
    store = open_memory()
    [record] = store.similar_campaigns({"chemical_system": ["Mg", "O"]}, k=1)
    recorded = parse_yields(record["generator_yields"])
    assert recorded is not None
    assert set(recorded) == set(GENERATORS)
    assert recorded["fake"].survivors > 0, "the fixture must make fake structures survive"
    assert recorded["pyxtal"].survivors == 0

    second = start_run(_spec("an Mg-O compound, stable"), _context(tmp_path / "r2", data_dir))
    values = _values(tmp_path / "r2")
    assert [c["run_id"] for c in values["memory_yields"]] == ["r1"]
    assert values["memory_yields"][0]["same_system"] is True
    plan0 = values["plans"][0]
    explore = _explore(plan0)
    budget = sum(explore.values())
    assert budget >= 4, f"too few explore samples for the router to show anything: {explore}"
    seed = round_seed(0, 0)
    without_memory = Router().allocate(budget, list(GENERATORS), seed=seed).samples
    with_memory = (
        Router()
        .allocate(
            budget,
            list(GENERATORS),
            memory=memory_prior(remembered_campaigns(values["memory_yields"])),
            seed=seed,
        )
        .samples
    )
    assert explore == {g: with_memory[g] for g in GENERATORS}
    assert explore["fake"] > without_memory["fake"], (explore, without_memory)

    fake, pyxtal = recorded["fake"], recorded["pyxtal"]
    expected = (
        f"router prior from 1 earlier campaign in Mg-O (r1): fake {fake.survivors}/"
        f"{fake.samples} survived, pyxtal 0/{pyxtal.samples} survived"
    )
    assert any(line.startswith(expected) for line in plan0["rationale"]), plan0["rationale"]
    report = second.report_path.read_text()
    assert expected in report
    assert f"memory: {fake.survivors}/{fake.samples} survived in 1 earlier campaign" in report


def test_missing_or_corrupt_yields_are_skipped_with_a_warning(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_memory()
    spec = _spec("a stable Mg-O oxide").model_dump(mode="json")
    store.add_campaign("old", {"spec": spec, "request": "old"})  # before yields were kept
    store.add_campaign("garbled", {"spec": spec, "generator_yields": "not a mapping"})
    store.add_campaign(
        "impossible", {"spec": spec, "generator_yields": {"fake": {"samples": 2, "survivors": 9}}}
    )
    good = {"fake": {"samples": 4, "survivors": 3, "seconds": 0.5, "rounds": 1}}
    store.add_campaign("good", {"spec": spec, "generator_yields": good})
    with caplog.at_level(logging.WARNING, logger="crystalforge.memory.yields"):
        got = earlier_yields(store, spec)
    assert [c.run_id for c in got] == ["good"]
    assert got[0].yields["fake"].survivors == 3
    warned = " ".join(r.getMessage() for r in caplog.records)
    for run_id in ("old", "garbled", "impossible"):
        assert f"campaign {run_id}" in warned

    # A design run over that store neither crashes nor learns from the bad records.
    outcome = start_run(_spec("an Mg-O compound"), _context(tmp_path / "r", data_dir))
    report = outcome.report_path.read_text()
    assert "router prior from 1 earlier campaign in Mg-O (good): fake 3/4 survived" in report


def test_a_running_campaign_is_recorded_with_its_yields_so_far(tmp_path: Path) -> None:
    spec = _spec("a stable Mg-O oxide").model_dump(mode="json")
    memo = Memo(
        round=0,
        evaluated=5,
        hits=1,
        new_hits=1,
        failures={},
        yield_by_generator={"fake": 0.2},
        generator_stats={"fake": {"samples": 5, "survivors": 1, "seconds": 0.25}},
        best=[],
        changes=["keep exploring"],
        focus_compositions=[],
        focus_space_groups=[],
        stop_reason=None,
    )
    state = State(request="a stable Mg-O oxide", spec=spec, memos=[memo, memo], round=1)
    assert record_progress(state, Context(run_dir=tmp_path / "running")) is None
    [record] = open_memory().similar_campaigns(spec, k=1)
    assert record["run_id"] == "running"
    assert record["outcome"]["in_progress"] is True
    assert record["outcome"]["rounds_reflected"] == 2
    assert json.loads(record["generator_yields"]) == {
        "fake": {"samples": 10, "survivors": 2, "seconds": 0.5, "rounds": 2}
    }
