"""The planner: scripted failure patterns steer the next plan; the LLM plan is checked and clamped.

Pure functions over candidate summaries and a ScriptedLLM, so each test is milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crystalforge.agent.context import Context
from crystalforge.agent.llm.scripted import ScriptedLLM
from crystalforge.agent.nodes.plan import llm_plan, make_plan, yield_history
from crystalforge.agent.nodes.reflect import llm_memo, make_memo
from crystalforge.agent.state import CandidateSummary
from crystalforge.core.spec import Budget, DesignSpec, PropertyTarget

GENERATORS = ("wyckoff", "pyxtal", "substitution")

SPEC = DesignSpec(
    request="a stable Li-Mn-O oxide",
    chemical_system=("Li", "Mn", "O"),
    max_atoms=20,
    targets=(PropertyTarget(name="e_above_hull", max=0.1),),
    num_candidates=3,
    budget=Budget(max_rounds=5, samples_per_round=12, max_validator_calls=100),
)


def context() -> Context:
    return Context(run_dir=Path("unused"), generators=GENERATORS)


def row(
    i: int,
    *,
    generator: str = "pyxtal",
    formula: str = "LiMnO2",
    e_hull: float | None = 0.3,
    n_atoms: int = 8,
    passed: bool = True,
    failed_stage: str | None = None,
    round: int = 0,
) -> CandidateSummary:
    meets = passed and e_hull is not None and e_hull <= 0.1
    return CandidateSummary(
        id=f"c-{i:012d}",
        formula=formula,
        round=round,
        generator=generator,
        n_atoms=n_atoms,
        space_group=12,
        passed=passed,
        failed_stage=failed_stage,
        reason=None if passed else f"rejected by {failed_stage}",
        e_above_hull=e_hull if passed else None,
        formation_energy=-1.5 if passed else None,
        energy_per_atom=-6.0 - i / 1000,
        converged=True,
        meets_hard=meets,
        unmet=[] if meets or not passed else [f"e_above_hull <= 0.1 eV/atom (got {e_hull})"],
        unevaluated=[],
        score=(e_hull or 0.0) if passed else 100.0,
        seconds=1.0,
    )


def next_plan(results: list[CandidateSummary], spec: DesignSpec = SPEC):
    memo = make_memo(spec, results, [], round_index=0, validator_calls=10, elapsed_s=5.0)
    plan = make_plan(spec, memo, round_index=1, context=context(), history=yield_history([memo]))
    return memo, plan


def samples_of(plan, generator: str) -> int:
    return sum(t["num_structures"] for t in plan["tasks"] if t["generator"] == generator)


def test_all_wyckoff_candidates_failing_smact_moves_samples_away_from_wyckoff():
    results = [
        row(i, generator="wyckoff", passed=False, failed_stage="smact") for i in range(6)
    ] + [row(10 + i, generator="pyxtal", e_hull=0.15 + i / 100) for i in range(4)]
    memo, plan = next_plan(results)
    assert memo.get("avoid_generators") == ["wyckoff"]
    assert memo.get("prefer_generator") == "pyxtal"
    assert samples_of(plan, "wyckoff") == 0
    assert sum(t["num_structures"] for t in plan["tasks"]) == SPEC.budget.samples_per_round
    exploit = [t for t in plan["tasks"] if t["purpose"] == "exploit"]
    assert {t["generator"] for t in exploit} <= {"pyxtal", "substitution"}
    assert any("smact" in line for line in plan["rationale"])
    # Without the failure pattern wyckoff keeps its share: the test can fail.
    healthy = [row(i, generator="wyckoff", e_hull=0.4) for i in range(6)] + results[6:]
    _, plan2 = next_plan(healthy)
    assert samples_of(plan2, "wyckoff") > 0


def test_everything_unstable_above_12_atoms_caps_the_next_round_at_12():
    small = [row(i, n_atoms=n, e_hull=0.12) for i, n in enumerate((4, 8, 12))]
    large = [row(10 + i, n_atoms=n, e_hull=0.6) for i, n in enumerate((14, 16, 18, 20))]
    memo, plan = next_plan(small + large)
    assert memo.get("max_atoms") == 12
    assert plan["max_atoms"] == 12
    assert all(t.get("max_atoms") == 12 for t in plan["tasks"])
    assert any("12 atoms" in line for line in plan["rationale"])


def test_large_cells_that_come_close_keep_the_atom_limit():
    rows = [row(i, n_atoms=n, e_hull=0.12) for i, n in enumerate((4, 16, 20))]
    memo, plan = next_plan(rows)
    assert memo.get("max_atoms") is None
    assert plan["max_atoms"] == SPEC.max_atoms


def test_best_near_miss_is_substituted_into():
    rows = [row(1, formula="LiMnO2", e_hull=0.14), row(2, formula="Li2MnO3", e_hull=0.5)]
    memo, plan = next_plan(rows)
    assert memo.get("parents") == ["c-000000000001"]
    substitution = [t for t in plan["tasks"] if t.get("parents")]
    assert substitution
    assert substitution[0]["generator"] == "substitution"
    assert substitution[0].get("parents") == ["c-000000000001"]


def test_open_element_pool_is_restricted_to_the_near_misses_elements():
    spec = SPEC.model_copy(
        update={"chemical_system": None, "allowed_elements": ("Fe", "Li", "Mn", "Ni", "O")}
    )
    rows = [row(1, formula="LiMnO2", e_hull=0.12), row(2, formula="NiFeO3", e_hull=0.9)]
    memo, plan = next_plan(rows, spec)
    assert memo.get("focus_elements") == ["Li", "Mn", "O"]
    assert all(t.get("elements") == ["Li", "Mn", "O"] for t in plan["tasks"])


def test_llm_token_budget_is_a_stop_rule():
    spec = SPEC.model_copy(
        update={"budget": SPEC.budget.model_copy(update={"max_llm_tokens": 500})}
    )
    rows = [row(1, e_hull=0.5)]
    memo = make_memo(
        spec, rows, [], round_index=0, validator_calls=1, elapsed_s=1.0, llm_tokens=600
    )
    assert memo["stop_reason"] == "LLM token budget spent (600 of 500 tokens)"
    memo = make_memo(spec, rows, [], round_index=0, validator_calls=1, elapsed_s=1.0, llm_tokens=0)
    assert memo["stop_reason"] is None


def _llm_plan(model: ScriptedLLM, results: list[CandidateSummary]):
    memo = make_memo(SPEC, results, [], round_index=0, validator_calls=4, elapsed_s=2.0)
    rules = make_plan(SPEC, memo, round_index=1, context=context(), history=[])
    return llm_plan(
        model, SPEC, memo, rules, context=context(), results=results, references=[], history=[]
    ), rules


def plan_args(*tasks: dict, rationale: list[str] | None = None) -> str:
    return json.dumps(
        {"tasks": list(tasks), "references": [], "rationale": rationale or ["follow the memo"]}
    )


def test_llm_plan_is_used_when_valid():
    model = ScriptedLLM()
    model.enqueue_tool_call(
        "submit_round_plan",
        plan_args(
            {"generator": "substitution", "num_structures": 6, "parents": ["c-000000000001"]},
            {"generator": "pyxtal", "num_structures": 6, "compositions": ["LiMnO2"]},
        ),
    )
    (plan, answer, note), _ = _llm_plan(model, [row(1, e_hull=0.14)])
    assert note is None
    assert answer is not None
    assert [t["generator"] for t in plan["tasks"]] == ["substitution", "pyxtal"]
    assert plan["tasks"][0].get("parents") == ["c-000000000001"]
    # The model saw a typed tool whose description is the function's docstring.
    _, tools, _ = model.calls[0]
    assert tools[0].name == "submit_round_plan"
    assert tools[0].description.startswith("Submit the plan of the next generation round")
    schema = tools[0].parameters
    assert "generator" in json.dumps(schema)
    assert "tasks" in schema["required"]


def test_unknown_generator_gets_one_repair_with_the_valid_list():
    model = ScriptedLLM()
    model.enqueue_tool_call(
        "submit_round_plan", plan_args({"generator": "mattergen", "num_structures": 4})
    )
    model.enqueue_tool_call(
        "submit_round_plan", plan_args({"generator": "wyckoff", "num_structures": 4})
    )
    (plan, answer, note), _ = _llm_plan(model, [row(1)])
    assert note is None
    assert answer is not None
    assert answer.repaired
    assert [t["generator"] for t in plan["tasks"]] == ["wyckoff"]
    repair = model.calls[1][0][-1].content
    assert "mattergen" in repair
    assert "wyckoff" in repair
    assert "substitution" in repair


def test_invalid_twice_falls_back_to_the_rule_plan_with_a_note():
    model = ScriptedLLM()
    for _ in range(2):
        model.enqueue_tool_call(
            "submit_round_plan", plan_args({"generator": "nope", "num_structures": 4})
        )
    (plan, answer, note), rules = _llm_plan(model, [row(1)])
    assert answer is None
    assert plan == rules
    assert note is not None
    assert "rule plan used" in note
    assert "nope" in note


def test_plan_over_budget_is_clamped_and_outside_the_spec_is_rejected():
    model = ScriptedLLM()
    model.enqueue_tool_call(
        "submit_round_plan",
        plan_args({"generator": "wyckoff", "num_structures": 40, "compositions": ["NaCl"]}),
    )
    model.enqueue_tool_call(
        "submit_round_plan",
        plan_args(
            {"generator": "wyckoff", "num_structures": 40},
            {"generator": "pyxtal", "num_structures": 20, "max_atoms": 50},
        ),
    )
    (plan, answer, _), _ = _llm_plan(model, [row(1)])
    assert answer is not None
    assert answer.repaired
    assert "NaCl" in answer.first_error
    assert "outside the spec" in answer.first_error
    assert sum(t["num_structures"] for t in plan["tasks"]) <= SPEC.budget.samples_per_round
    assert all(t.get("max_atoms", SPEC.max_atoms) <= SPEC.max_atoms for t in plan["tasks"])
    assert any("scaled to the round budget of 12" in line for line in plan["rationale"])


def test_model_without_tool_calling_plans_through_json_output():
    from crystalforge.agent.llm.base import ToolsUnsupported

    class NoTools(ScriptedLLM):
        def complete(self, messages, *, tools=(), json_output=False, stream=False):
            if tools:
                raise ToolsUnsupported("no tools here")
            return super().complete(messages, json_output=json_output)

    model = NoTools()
    model.enqueue_text(plan_args({"generator": "pyxtal", "num_structures": 5}))
    (plan, answer, note), _ = _llm_plan(model, [row(1)])
    assert note is None
    assert answer is not None
    assert not answer.used_tools
    assert plan["tasks"][0]["generator"] == "pyxtal"
    assert model.calls[-1][2] is True  # json_output requested


def test_llm_memo_steers_and_unknown_ids_are_repaired():
    results = [row(1, e_hull=0.14), row(2, generator="wyckoff", e_hull=0.6)]
    rules = make_memo(SPEC, results, [], round_index=0, validator_calls=2, elapsed_s=1.0)
    model = ScriptedLLM()
    model.enqueue_tool_call(
        "submit_reflection", json.dumps({"changes": ["x"], "parents": ["c-999999999999"]})
    )
    model.enqueue_tool_call(
        "submit_reflection",
        json.dumps(
            {
                "changes": ["wyckoff cells sit 0.6 eV/atom above the hull; favour pyxtal"],
                "prefer_generator": "pyxtal",
                "avoid_generators": ["wyckoff"],
                "parents": ["c-000000000001"],
                "max_atoms": 8,
            }
        ),
    )
    memo, answer, note = llm_memo(
        model, SPEC, rules, results, generators=GENERATORS, review_notes=[]
    )
    assert note is None
    assert answer is not None
    assert answer.repaired
    assert memo.get("source") == "llm"
    assert memo.get("max_atoms") == 8
    plan = make_plan(SPEC, memo, round_index=1, context=context(), history=[])
    assert samples_of(plan, "wyckoff") == 0
    assert plan["max_atoms"] == 8
    assert any(t.get("parents") == ["c-000000000001"] for t in plan["tasks"])


@pytest.mark.parametrize("bad", [{"changes": []}, {"changes": ["a"], "max_atoms": 99}])
def test_llm_memo_failures_fall_back_to_the_rules(bad):
    results = [row(1, e_hull=0.14)]
    rules = make_memo(SPEC, results, [], round_index=0, validator_calls=2, elapsed_s=1.0)
    model = ScriptedLLM()
    model.enqueue_tool_call("submit_reflection", json.dumps(bad))
    model.enqueue_tool_call("submit_reflection", json.dumps(bad))
    memo, answer, note = llm_memo(
        model, SPEC, rules, results, generators=GENERATORS, review_notes=[]
    )
    if answer is None:
        assert memo == rules
        assert note is not None
        assert "rules used" in note
    else:  # an empty change list is valid; the rules' findings are kept
        assert memo["changes"] == rules["changes"]
