"""Rule-based reflection and planning: scripted verdict patterns change the next plan.

Pure functions over summaries, so no recorded traffic is involved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalforge.agent.context import Context
from crystalforge.agent.nodes.plan import make_plan, yield_history
from crystalforge.agent.nodes.reflect import distinct_hits, make_memo
from crystalforge.agent.state import CandidateSummary
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget

if TYPE_CHECKING:
    from pathlib import Path

SPEC = DesignSpec(
    request="test",
    chemical_system=("Li", "Mn", "O"),
    targets=(PropertyTarget(name="e_above_hull", max=0.1),),
    num_candidates=2,
    budget=Budget(max_rounds=5, samples_per_round=10, max_validator_calls=100, patience_rounds=2),
)


def summary(
    i: int,
    formula: str,
    e_hull: float | None,
    *,
    round: int = 0,
    passed: bool = True,
    sg: int | None = 12,
    failed_stage: str | None = None,
) -> CandidateSummary:
    meets = passed and e_hull is not None and e_hull <= 0.1
    return CandidateSummary(
        id=f"c-{i:012d}",
        formula=formula,
        round=round,
        generator="pyxtal",
        n_atoms=8,
        space_group=sg,
        passed=passed,
        failed_stage=failed_stage,
        reason=None if passed else "min distance 0.3 Å < 0.5 Å",
        e_above_hull=e_hull,
        formation_energy=-1.0,
        energy_per_atom=-5.0 - i / 1000,
        converged=True,
        meets_hard=meets,
        unmet=[] if meets or not passed else [f"e_above_hull <= 0.1 eV/atom (got {e_hull})"],
        unevaluated=[],
        score=(e_hull or 0) + (0 if passed else 100),
    )


def test_near_misses_become_next_rounds_focus(tmp_path: Path):
    results = [
        summary(1, "LiMnO2", 0.18, sg=166),
        summary(2, "Li2MnO3", 0.9, sg=12),
        summary(3, "LiMn2O4", None, passed=False, failed_stage="sanity", sg=None),
    ]
    memo = make_memo(SPEC, results, [], round_index=0, validator_calls=2, elapsed_s=10)
    assert memo["hits"] == 0
    assert memo["focus_compositions"] == ["LiMnO2"]
    assert memo["focus_space_groups"] == [166]
    assert memo["failures"]["rejected by sanity"] == 1
    assert memo["stop_reason"] is None

    plan = make_plan(SPEC, memo, round_index=1, context=Context(run_dir=tmp_path))
    exploit = [t for t in plan["tasks"] if t["purpose"] == "exploit"]
    assert exploit
    assert exploit[0]["compositions"] == ["LiMnO2"]
    assert exploit[0]["space_groups"] == [166]
    assert sum(t["num_structures"] for t in plan["tasks"]) == 10


def test_nothing_close_keeps_exploring(tmp_path: Path):
    results = [summary(1, "Li2MnO3", 0.9), summary(2, "LiMnO2", 0.6)]
    memo = make_memo(SPEC, results, [], round_index=0, validator_calls=2, elapsed_s=10)
    assert memo["focus_compositions"] == []
    assert any("keep exploring" in c for c in memo["changes"])
    plan = make_plan(SPEC, memo, round_index=1, context=Context(run_dir=tmp_path))
    assert {t["purpose"] for t in plan["tasks"]} == {"explore"}


def test_stops_when_enough_distinct_hits():
    results = [summary(1, "LiMnO2", 0.02), summary(2, "LiMnO2", 0.02), summary(3, "Li2MnO3", 0.05)]
    # Candidates 1 and 2 relaxed to different energies, so three distinct hits >= 2 wanted.
    memo = make_memo(SPEC, results, [], round_index=0, validator_calls=3, elapsed_s=10)
    assert memo["stop_reason"] is not None
    assert memo["stop_reason"].startswith("enough candidates")


def test_relaxations_to_the_same_minimum_count_once():
    a = summary(1, "LiMnO2", 0.02)
    b = {**summary(2, "LiMnO2", 0.02), "energy_per_atom": a["energy_per_atom"]}
    assert len(distinct_hits([a, b])) == 1  # type: ignore[list-item]


def test_budget_and_patience_stop_rules():
    results = [summary(1, "Li2MnO3", 0.9)]
    memo = make_memo(SPEC, results, [], round_index=0, validator_calls=100, elapsed_s=1)
    assert memo["stop_reason"] == "validator budget spent (100 CHGNet relaxations)"
    memo = make_memo(SPEC, results, [], round_index=4, validator_calls=1, elapsed_s=1)
    assert memo["stop_reason"] == "round budget spent (5 rounds)"
    first = make_memo(SPEC, results, [], round_index=0, validator_calls=1, elapsed_s=1)
    second = make_memo(SPEC, results, [first], round_index=1, validator_calls=1, elapsed_s=1)
    third = make_memo(SPEC, results, [first, second], round_index=2, validator_calls=1, elapsed_s=1)
    assert second["stop_reason"] is None
    assert third["stop_reason"] == "no improvement in 2 rounds"


def test_explore_samples_shift_to_the_generator_with_the_better_yield(tmp_path: Path):
    good = [summary(i, "LiMnO2", 0.05) | {"generator": "pyxtal", "id": f"c-a{i:011d}"}
            for i in range(6)]  # fmt: skip
    bad = [summary(i, "Li2MnO3", 0.9) | {"generator": "fake", "id": f"c-b{i:011d}"}
           for i in range(6)]  # fmt: skip
    spec = SPEC.model_copy(update={"num_candidates": 50})
    memo = make_memo(spec, good + bad, [], round_index=0, validator_calls=12, elapsed_s=10)  # type: ignore[arg-type]
    assert memo["generator_stats"]["pyxtal"]["survivors"] == 6
    assert memo["generator_stats"]["fake"]["survivors"] == 0
    context = Context(run_dir=tmp_path, generators=("pyxtal", "fake"))
    plan = make_plan(spec, memo, round_index=1, context=context, history=yield_history([memo]))
    explore = {
        t["generator"]: t["num_structures"] for t in plan["tasks"] if t["purpose"] == "explore"
    }
    assert explore["pyxtal"] > explore.get("fake", 0)
    assert explore.get("fake", 0) >= 1  # the router's floor keeps some evidence coming
    assert any(line.startswith("router:") for line in plan["rationale"])
