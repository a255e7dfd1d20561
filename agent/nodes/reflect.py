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

import math
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal, cast

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime
from pydantic import BaseModel, ConfigDict, Field

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.llm.base import LLMError, Message, ToolSpec
from crystalforge.agent.llm.factory import backend_for
from crystalforge.agent.llm.structured import ask_structured
from crystalforge.agent.nodes.review import apply_reviews, review_memo
from crystalforge.agent.prompts import REFLECT_SYSTEM, neutralise, quote_data
from crystalforge.agent.state import (
    CandidateSummary,
    Memo,
    State,
)
from crystalforge.core.spec import DEFAULT_E_ABOVE_HULL_EV, DesignSpec
from crystalforge.tools.validate import candidate_facts

if TYPE_CHECKING:
    from crystalforge.agent.llm.base import LLMBackend
    from crystalforge.agent.llm.structured import StructuredAnswer

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
    llm_tokens: int = 0,
) -> Memo:
    """The reflection on round ``round_index`` given every result so far.

    Besides the failure counts and the focus, the memo carries the steering the next plan
    follows (see :func:`steering`): the family with the best yield, families to avoid, near-miss
    parents to substitute into, a tighter atom count and a narrower element pool.
    """
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

    steer = steering(spec, results, this_round, near=near, threshold=threshold)
    changes.extend(steer.pop("changes"))  # type: ignore[arg-type]

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
    elif llm_tokens > 0 and llm_tokens >= budget.max_llm_tokens:
        stop_reason = f"LLM token budget spent ({llm_tokens} of {budget.max_llm_tokens} tokens)"
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
        source="rules",
        **steer,  # type: ignore[typeddict-item]
    )


ATOM_LIMIT_MIN_FAILURES = 2
"""Larger cells must fail at least this often before the memo lowers the atom limit."""


def steering(
    spec: DesignSpec,
    results: list[CandidateSummary],
    this_round: list[CandidateSummary],
    *,
    near: list[CandidateSummary],
    threshold: float,
) -> dict[str, Any]:
    """The rule-based steering of the next round, with one line of ``changes`` per decision.

    Rules:

    - prefer the family with the best yield this round (hits per sample, then the share that
      passed validation, then the lowest energy above hull);
    - avoid a family whose every structure was rejected before relaxation while another
      family's passed;
    - substitute into the best near-misses that are not yet hits (``parents``);
    - lower the atom limit to the largest cell that came close when every larger relaxed cell
      missed the stability target (at least :data:`ATOM_LIMIT_MIN_FAILURES` of them);
    - with an open element pool, restrict it to the elements of the near-misses.
    """
    changes: list[str] = []
    families: dict[str, list[CandidateSummary]] = {}
    for r in this_round:
        families.setdefault(r["generator"], []).append(r)

    def merit(rows: list[CandidateSummary]) -> tuple[float, float, float]:
        hits = sum(r["meets_hard"] for r in rows) / len(rows)
        passed = sum(r["passed"] for r in rows) / len(rows)
        energies = [r["e_above_hull"] for r in rows if r["e_above_hull"] is not None]
        return (hits, passed, -min(energies) if energies else -math.inf)

    prefer: str | None = None
    if families:
        ranked = sorted(families, key=lambda g: merit(families[g]), reverse=True)
        best = merit(families[ranked[0]])
        if best[0] > 0 or best[1] > 0:
            prefer = ranked[0]
            if len(families) > 1:
                changes.append(
                    f"shift samples to {prefer}: best yield this round "
                    f"({sum(r['meets_hard'] for r in families[prefer])} hits, "
                    f"{sum(r['passed'] for r in families[prefer])} passed of "
                    f"{len(families[prefer])})"
                )
    any_passed = any(r["passed"] for r in this_round)
    avoid = sorted(
        g
        for g, rows in families.items()
        if any_passed and all(not r["passed"] and r["e_above_hull"] is None for r in rows)
    )
    for g in avoid:
        stages = Counter(r["failed_stage"] for r in families[g])
        top = stages.most_common(1)[0][0]
        changes.append(
            f"every {g} structure ({len(families[g])}) was rejected before relaxation, most often "
            f"by {top}: move its samples to the other families"
        )

    parents = [r["id"] for r in near if not r["meets_hard"]][:2]
    if parents:
        changes.append("substitute into the best near-misses: " + ", ".join(parents))

    max_atoms: int | None = None
    relaxed = [r for r in results if r["passed"] and r["e_above_hull"] is not None]
    close = {r["id"] for r in near}
    if near and relaxed:
        limit = max(r["n_atoms"] for r in near)
        larger = [r for r in relaxed if r["n_atoms"] > limit]
        if (
            len(larger) >= ATOM_LIMIT_MIN_FAILURES
            and all(r["id"] not in close for r in larger)
            and limit < spec.max_atoms
        ):
            max_atoms = limit
            changes.append(
                f"all {len(larger)} relaxed cells above {limit} atoms missed the stability "
                f"target (<= {threshold:g} eV/atom): cap the next round at {limit} atoms"
            )
    elif relaxed and not near:
        small = [r for r in relaxed if r["n_atoms"] <= spec.max_atoms // 2]
        large = [r for r in relaxed if r["n_atoms"] > spec.max_atoms // 2]
        if small and len(large) >= ATOM_LIMIT_MIN_FAILURES:
            mean_small = statistics.fmean(r["e_above_hull"] or 0.0 for r in small)
            mean_large = statistics.fmean(r["e_above_hull"] or 0.0 for r in large)
            if mean_small < mean_large:
                max_atoms = max(spec.min_atoms, spec.max_atoms // 2)
                changes.append(
                    f"cells above {max_atoms} atoms sit higher above the hull (mean "
                    f"{mean_large:.3f} vs {mean_small:.3f} eV/atom): cap the next round at "
                    f"{max_atoms} atoms"
                )

    focus_elements: list[str] = []
    if spec.chemical_system is None and near:
        from pymatgen.core import Composition

        used = sorted({str(e) for r in near for e in Composition(r["formula"]).elements})
        pool = spec.element_pool() or ()
        if pool and set(used) < set(pool) and set(spec.required_elements) <= set(used):
            focus_elements = used
            changes.append("restrict the element pool to " + "-".join(used))
    return {
        "prefer_generator": prefer,
        "avoid_generators": avoid,
        "parents": parents,
        "max_atoms": max_atoms,
        "focus_elements": focus_elements,
        "changes": changes,
    }


def _stalled(previous: list[Memo], new_hits: int, best: list[str], patience: int) -> bool:
    """No new hit and the same best candidate for ``patience`` consecutive rounds."""
    if new_hits > 0 or len(previous) < patience:
        return False
    recent = previous[-patience:]
    top = best[0] if best else None
    return all(m["new_hits"] == 0 and (m["best"][:1] or [None])[0] == top for m in recent)


class MemoDraft(BaseModel):
    """Submit the reflection on this round: what failed, why, and what the next round changes.

    Every id, composition, space group and generator must appear in the data you were given.
    """

    model_config = ConfigDict(extra="forbid")

    changes: list[str] = Field(description="One sentence per finding and what to change.")
    focus_compositions: list[str] = Field(
        default_factory=list, description="Reduced formulae to exploit next round."
    )
    focus_space_groups: list[int] = Field(
        default_factory=list, description="Space-group numbers to exploit next round."
    )
    prefer_generator: str | None = Field(
        default=None, description="The generator family that should get the exploit share."
    )
    avoid_generators: list[str] = Field(
        default_factory=list, description="Families to give no samples next round."
    )
    parents: list[str] = Field(
        default_factory=list, description="Candidate ids of near-misses to substitute into."
    )
    max_atoms: int | None = Field(
        default=None, ge=1, description="Atoms-per-cell limit for the next round."
    )


REFLECT_TOOL = "submit_reflection"


def check_memo_draft(
    arguments: str,
    *,
    spec: DesignSpec,
    results: list[CandidateSummary],
    generators: tuple[str, ...],
) -> MemoDraft:
    """Validate the model's memo against the run: known ids, families and the spec.

    Raises:
        ValueError: Something the memo names is not in the run or outside the spec.
    """
    draft = MemoDraft.model_validate_json(arguments)
    ids = {r["id"] for r in results}
    formulas = {r["formula"] for r in results}
    unknown = [p for p in draft.parents if p not in ids]
    if unknown:
        raise ValueError(f"parents {unknown} are not candidate ids of this run")
    strange = [f for f in draft.focus_compositions if f not in formulas]
    if strange:
        raise ValueError(
            f"focus compositions {strange} were not generated in this run; known: "
            f"{sorted(formulas)[:20]}"
        )
    families = [g for g in [draft.prefer_generator, *draft.avoid_generators] if g is not None]
    bad = [g for g in families if g not in generators]
    if bad:
        raise ValueError(f"unknown generators {bad}; valid generators: {list(generators)}")
    if spec.space_groups:
        outside = [g for g in draft.focus_space_groups if g not in spec.space_groups]
        if outside:
            raise ValueError(f"space groups {outside} are outside the spec's {spec.space_groups}")
    if draft.max_atoms is not None and draft.max_atoms > spec.max_atoms:
        raise ValueError(f"max_atoms {draft.max_atoms} exceeds the spec's {spec.max_atoms}")
    return draft


def llm_memo(
    backend: LLMBackend,
    spec: DesignSpec,
    rules: Memo,
    results: list[CandidateSummary],
    *,
    generators: tuple[str, ...],
    review_notes: list[str],
) -> tuple[Memo, StructuredAnswer[MemoDraft] | None, str | None]:
    """The model's memo merged into the rule memo (counts and stop rules stay the rules').

    Returns:
        The memo, the model's answer (``None`` on failure) and a note when it fell back.
    """
    this_round = [r for r in results if r["round"] == rules["round"]]
    messages = [
        Message(role="system", content=REFLECT_SYSTEM.format(tool=REFLECT_TOOL)),
        Message(
            role="user",
            content="\n\n".join(
                [
                    f"Request: {spec.request}",
                    "Spec: " + "; ".join(spec.describe()),
                    quote_data("this round's verdicts", [candidate_facts(r) for r in this_round]),
                    quote_data("rule-based memo", dict(rules)),
                    quote_data("review notes", review_notes),
                ]
            ),
        ),
    ]
    tool = ToolSpec.from_model(REFLECT_TOOL, MemoDraft)
    try:
        answer = ask_structured(
            backend,
            messages,
            tool,
            lambda a: check_memo_draft(a, spec=spec, results=results, generators=generators),
        )
    except LLMError as exc:
        note = f"round {rules['round']}: LLM reflection unavailable ({exc}); rules used"
        return rules, None, note
    draft = answer.value
    memo = cast(
        "Memo",
        {
            **rules,
            "changes": [neutralise(c) for c in draft.changes] or rules["changes"],
            "focus_compositions": draft.focus_compositions or rules["focus_compositions"],
            "focus_space_groups": draft.focus_space_groups or rules["focus_space_groups"],
            "prefer_generator": draft.prefer_generator or rules.get("prefer_generator"),
            "avoid_generators": draft.avoid_generators,
            "parents": draft.parents or rules.get("parents", []),
            "max_atoms": draft.max_atoms or rules.get("max_atoms"),
            "source": "llm",
        },
    )
    return memo, answer, None


def sanitized(memo: Memo) -> Memo:
    """The memo with instruction-looking text neutralised (review notes are quoted into it)."""
    return cast("Memo", {**memo, "changes": [neutralise(c) for c in memo["changes"]]})


def reflect(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the memo of this round; set the stop reason when the run should end.

    The rules always run (they own the counts and the stop rules); with ``llm="openai"`` the
    model's memo then replaces the findings and the steering, after validation.
    """
    assert state.spec is not None, "understand runs before reflect"
    spec = DesignSpec.model_validate(state.spec)
    # Reviewer decisions (review node) veto hits and steer the focus; see nodes/review.py.
    results = apply_reviews(list(state.results), list(state.reviews))
    memo = make_memo(
        spec,
        results,
        list(state.memos),
        round_index=state.round,
        validator_calls=state.validator_calls,
        elapsed_s=state.elapsed_s,
        llm_tokens=state.llm_tokens,
    )
    memo = sanitized(review_memo(memo, results, list(state.reviews)))
    update: dict[str, Any] = {}
    backend = backend_for(runtime.context)
    if backend is not None and memo["stop_reason"] is None:
        notes = [r["note"] for r in state.reviews if r["note"]]
        memo, answer, note = llm_memo(
            backend, spec, memo, results, generators=runtime.context.generators, review_notes=notes
        )
        if note:
            update["notes"] = [note]
        if answer is not None:
            update |= state.llm_cost(
                tokens=answer.tokens, seconds=answer.seconds, calls=answer.calls
            )
    return {**update, "memos": [memo], "stop_reason": memo["stop_reason"]}


def route_after_reflect(state: State) -> Literal["plan", "report"]:
    """Back to plan for another round, or on to the report."""
    return "report" if state.stop_reason else "plan"


def route_after_generate(state: State) -> Literal["validate", "report"]:
    """Validate what was generated, or report why nothing could be."""
    return "report" if state.stop_reason else "validate"
