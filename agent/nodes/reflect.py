"""reflect: read the round's verdicts against the spec and write the memo the next plan follows.

This is the embedded, rule-based reflection. Its rules, in order:

1. Count what failed: the validation stage that rejected a structure, or the hard target a
   validated structure missed.
2. Focus: the compositions and space groups of the hits and of the best near-misses (validated,
   within ``NEAR_MISS_EV`` of the stability target) become the next round's exploit share.
3. Stop when enough distinct candidates meet every hard constraint, a budget is spent, or
   ``patience_rounds`` rounds brought no new hit and no better near-miss.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Literal

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.nodes.review import apply_reviews, review_memo
from crystalforge.agent.state import (
    CandidateSummary,
    Memo,
    State,
)
from crystalforge.core.spec import DEFAULT_E_ABOVE_HULL_EV, DesignSpec

NEAR_MISS_EV = 0.15
"""A validated structure this close (eV/atom) above the stability target counts as a near-miss."""

MAX_FOCUS = 3
"""Compositions and space groups carried into the next round's focus."""


def hit_key(summary: CandidateSummary) -> tuple[str, int | None, float | None]:
    """Identity of a hit for counting: formula, relaxed space group and energy to 1 meV/atom.

    Relaxation sends many starting points to the same minimum; these keys count that minimum once.
    """
    energy = summary["energy_per_atom"]
    return (
        summary["formula"],
        summary["space_group"],
        None if energy is None else round(energy, 3),
    )


def distinct_hits(results: list[CandidateSummary]) -> list[CandidateSummary]:
    """Hits with duplicates (same :func:`hit_key`) removed, best score first."""
    hits: dict[tuple[str, int | None, float | None], CandidateSummary] = {}
    for summary in sorted((r for r in results if r["meets_hard"]), key=lambda r: r["score"]):
        hits.setdefault(hit_key(summary), summary)
    return list(hits.values())


def _stability_threshold(spec: DesignSpec) -> float:
    target = spec.target("e_above_hull")
    if target is not None and target.max is not None:
        return target.max
    return DEFAULT_E_ABOVE_HULL_EV


def make_memo(
    spec: DesignSpec,
    results: list[CandidateSummary],
    previous: list[Memo],
    *,
    round_index: int,
    validator_calls: int,
    elapsed_s: float,
) -> Memo:
    """The reflection on round ``round_index`` given every result so far."""
    this_round = [r for r in results if r["round"] == round_index]
    failures: Counter[str] = Counter()
    for r in this_round:
        if not r["passed"]:
            failures[f"rejected by {r['failed_stage']}"] += 1
        for unmet in r["unmet"]:
            failures[f"missed {unmet.split(' (got')[0]}"] += 1
    hits = distinct_hits(results)
    new_hits = len(hits) - (previous[-1]["hits"] if previous else 0)

    yield_by_generator: dict[str, float] = {}
    generator_stats: dict[str, dict[str, float]] = {}
    for generator in sorted({r["generator"] for r in this_round}):
        mine = [r for r in this_round if r["generator"] == generator]
        survivors = sum(r["meets_hard"] for r in mine)
        yield_by_generator[generator] = round(survivors / len(mine), 3)
        generator_stats[generator] = {
            "samples": len(mine),
            "survivors": survivors,
            "seconds": round(sum(r.get("seconds", 0.0) for r in mine), 3),
        }

    threshold = _stability_threshold(spec)
    validated = [r for r in results if r["passed"] and r["e_above_hull"] is not None]
    near = sorted(
        (r for r in validated if r["meets_hard"] or r["e_above_hull"] <= threshold + NEAR_MISS_EV),  # type: ignore[operator]
        key=lambda r: r["score"],
    )
    focus_compositions = list(dict.fromkeys(r["formula"] for r in near))[:MAX_FOCUS]
    focus_space_groups = [
        g for g in dict.fromkeys(r["space_group"] for r in near) if g is not None
    ][:MAX_FOCUS]
    best = [r["id"] for r in sorted((r for r in results if r["passed"]), key=lambda r: r["score"])][
        :MAX_FOCUS
    ]

    changes: list[str] = []
    round_validated = [r for r in this_round if r["passed"] and r["e_above_hull"] is not None]
    rejected_early = sum(n for k, n in failures.items() if k.startswith("rejected by"))
    if this_round and rejected_early > len(this_round) / 2:
        top = failures.most_common(1)[0][0]
        changes.append(
            f"{rejected_early} of {len(this_round)} structures were rejected before relaxation "
            f"(most often {top}); draw more samples"
        )
    if round_validated:
        median = statistics.median(r["e_above_hull"] for r in round_validated)  # type: ignore[misc]
        changes.append(
            f"median energy above hull this round {median:.3f} eV/atom "
            f"(target <= {threshold:g}) over {len(round_validated)} relaxed structures"
        )
    if focus_compositions:
        changes.append(
            "exploit: "
            + ", ".join(focus_compositions)
            + (f" in space groups {focus_space_groups}" if focus_space_groups else "")
        )
    else:
        changes.append(
            f"nothing came within {NEAR_MISS_EV:g} eV/atom of the target; keep exploring"
        )

    budget = spec.budget
    stop_reason: str | None = None
    if len(hits) >= spec.num_candidates:
        stop_reason = (
            f"enough candidates: {len(hits)} distinct structures meet every hard constraint "
            f"({spec.num_candidates} wanted)"
        )
    elif validator_calls >= budget.max_validator_calls:
        stop_reason = f"validator budget spent ({validator_calls} CHGNet relaxations)"
    elif elapsed_s >= budget.max_wall_time_s:
        stop_reason = f"wall-time budget spent ({elapsed_s:.0f} s)"
    elif round_index + 1 >= budget.max_rounds:
        stop_reason = f"round budget spent ({round_index + 1} rounds)"
    elif _stalled(previous, new_hits, best, budget.patience_rounds):
        stop_reason = f"no improvement in {budget.patience_rounds} rounds"

    return Memo(
        round=round_index,
        evaluated=len(this_round),
        hits=len(hits),
        new_hits=new_hits,
        failures=dict(failures.most_common()),
        yield_by_generator=yield_by_generator,
        generator_stats=generator_stats,
        best=best,
        changes=changes,
        focus_compositions=focus_compositions,
        focus_space_groups=focus_space_groups,
        stop_reason=stop_reason,
    )


def _stalled(previous: list[Memo], new_hits: int, best: list[str], patience: int) -> bool:
    """No new hit and the same best candidate for ``patience`` consecutive rounds."""
    if new_hits > 0 or len(previous) < patience:
        return False
    recent = previous[-patience:]
    top = best[0] if best else None
    return all(m["new_hits"] == 0 and (m["best"][:1] or [None])[0] == top for m in recent)


def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the memo of this round; set the stop reason when the run should end."""
    del runtime
    assert state.spec is not None, "understand runs before reflect"
    # Reviewer decisions (review node) veto hits and steer the focus; see nodes/review.py.
    results = apply_reviews(list(state.results), list(state.reviews))
    memo = make_memo(
        DesignSpec.model_validate(state.spec),
        results,
        list(state.memos),
        round_index=state.round,
        validator_calls=state.validator_calls,
        elapsed_s=state.elapsed_s,
    )
    memo = review_memo(memo, results, list(state.reviews))
    return {"memos": [memo], "stop_reason": memo["stop_reason"]}


def route_after_reflect(state: State) -> Literal["plan", "report"]:
    """Back to plan for another round, or on to the report."""
    return "report" if state.stop_reason else "plan"


def route_after_generate(state: State) -> Literal["validate", "report"]:
    """Validate what was generated, or report why nothing could be."""
    return "report" if state.stop_reason else "validate"
