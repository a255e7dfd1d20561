"""The design graph on fast fakes (fake generator, table-driven energies), real SQLite checkpoints.

The real generator and CHGNet run through the same graph in test_design_e2e.py; these tests
cover the wiring, the loop back to plan, stop rules and resume without paying for relaxations.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from langgraph.checkpoint.sqlite import SqliteSaver

from crystalforge.agent.context import Context
from crystalforge.agent.graph import NODES, build_graph, graph
from crystalforge.agent.runner import resume_run, start_run
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget

if TYPE_CHECKING:
    from pathlib import Path


def _spec(**budget: int) -> DesignSpec:
    return DesignSpec(
        request="a stable Mg-O oxide",
        chemical_system=("Mg", "O"),
        max_atoms=8,
        targets=(PropertyTarget(name="e_above_hull", max=0.1),),
        num_candidates=50,  # more than the fakes can find: the loop must run to a budget
        budget=Budget(**({"max_rounds": 3, "samples_per_round": 4} | budget)),
    )


def _context(run_dir: Path, data_dir: Path | None) -> Context:
    return Context(run_dir=run_dir, data_dir=data_dir, generators=("fake",), relaxer="fake")


def test_graph_has_the_design_shape():
    drawn = graph.get_graph()
    assert set(NODES) <= set(drawn.nodes)
    edges = {(e.source, e.target) for e in drawn.edges}
    for edge in [("understand", "plan"), ("plan", "retrieve"), ("retrieve", "generate"),
                 ("generate", "validate"), ("validate", "reflect"), ("reflect", "plan"),
                 ("reflect", "report"), ("generate", "report")]:  # fmt: skip
        assert edge in edges, edge


def test_loop_runs_rounds_until_a_budget_and_reports(tmp_path: Path, data_dir: Path):
    seen: list[str] = []
    outcome = start_run(
        _spec(), _context(tmp_path / "run", data_dir), on_node=lambda n, _: seen.append(n)
    )
    assert seen.count("plan") == 3
    assert seen[-1] == "report"
    assert outcome.stop_reason == "round budget spent (3 rounds)"
    assert outcome.reference_name.startswith("MP-20 offline hull")
    assert outcome.ranked
    report = outcome.report_path.read_text()
    assert "### Round 2" in report
    assert "MP-20 offline hull" in report


def test_state_in_checkpoints_is_json(tmp_path: Path, data_dir: Path):
    run_dir = tmp_path / "run"
    start_run(_spec(max_rounds=1), _context(run_dir, data_dir))
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as conn:
        saver = SqliteSaver(conn)
        values = build_graph(saver).get_state({"configurable": {"thread_id": run_dir.name}}).values
    json.dumps(values)  # ids and summaries only: no Structure objects


def test_interrupted_graph_resumes_from_checkpoint(tmp_path: Path, data_dir: Path):
    run_dir = tmp_path / "run"
    spec = _spec(max_rounds=2)
    # Stop the first process before the first reflection, as a crash would.
    context = _context(run_dir, data_dir)
    run_dir.mkdir()
    with sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False) as conn:
        compiled = build_graph(SqliteSaver(conn))
        config = {"configurable": {"thread_id": run_dir.name}}
        inputs = {"request": spec.request, "spec": spec.model_dump(mode="json")}
        compiled.invoke(inputs, config, context=context, interrupt_before=["reflect"])
        assert compiled.get_state(config).next == ("reflect",)
    (run_dir / "run.json").write_text(
        json.dumps({"thread_id": run_dir.name, "request": spec.request,
                    "spec": spec.model_dump(mode="json"), "context": context.to_json()})
    )  # fmt: skip
    outcome = resume_run(run_dir)
    assert outcome.stop_reason == "round budget spent (2 rounds)"
    assert (run_dir / "report.md").exists()
