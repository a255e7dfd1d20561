"""plan: decide what the next round generates, from the spec and the last reflection."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.llm.base import LLMError, Message, ToolSpec
from crystalforge.agent.llm.factory import backend_for
from crystalforge.agent.llm.structured import ask_structured
from crystalforge.agent.nodes.retrieve import recall_for_plan, record_progress
from crystalforge.agent.prompts import PLANNER_SYSTEM, neutralise, quote_data
from crystalforge.agent.state import (
    GenerationTask,
    Plan,
    State,
)
from crystalforge.core.spec import DesignSpec
from crystalforge.generators.router import FamilyYield, Router
from crystalforge.memory.yields import CampaignYields, describe
from crystalforge.tools.generate import ROUND_PLAN_TOOL, CheckedPlan, check_round_plan
from crystalforge.tools.validate import candidate_facts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystalforge.agent.llm.base import LLMBackend
    from crystalforge.agent.llm.structured import StructuredAnswer
    from crystalforge.agent.state import CandidateSummary, Memo

logger = logging.getLogger(__name__)

SUBSTITUTION = "substitution"
"""The generator that substitutes into parent structures (near-misses, references)."""

EXPLOIT_SHARE = 0.5
"""Share of a round's samples spent on compositions and space groups that worked before."""


def round_seed(base_seed: int, round_index: int) -> int:
    """A seed per round, derived from the run's base seed (stable across processes)."""
    digest = hashlib.sha256(f"{base_seed}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def yield_history(memos: list[Memo]) -> list[FamilyYield]:
    """What each generator yielded in earlier rounds, as the router reads it."""
    return [
        FamilyYield(
            family=name,
            samples=int(stats["samples"]),
            survivors=int(stats["survivors"]),
            seconds=float(stats["seconds"]),
            round=memo["round"],
        )
        for memo in memos
        for name, stats in memo.get("generator_stats", {}).items()
    ]


def remembered_campaigns(entries: Sequence[dict[str, Any]]) -> list[CampaignYields]:
    """The earlier campaigns' yields kept in state (``State.memory_yields``).

    Entries that do not parse are skipped with a warning.
    """
    out = []
    for entry in entries:
        try:
            out.append(CampaignYields.from_json(entry))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring remembered generator yields %.200r: %s", entry, exc)
    return out


def memory_prior(campaigns: Sequence[CampaignYields]) -> list[FamilyYield]:
    """Earlier campaigns' yields as the router reads them.

    One record per campaign and generator, weighted by the campaign's similarity to this
    request and named by its run id.
    """
    return [
        FamilyYield(
            family=name,
            samples=totals.samples,
            survivors=totals.survivors,
            seconds=totals.seconds,
            weight=campaign.weight,
            source=campaign.run_id,
        )
        for campaign in campaigns
        for name, totals in sorted(campaign.yields.items())
    ]


def _memory_line(campaigns: Sequence[CampaignYields], generators: Sequence[str]) -> str | None:
    """What the router's prior took from memory, for the rationale (``None``: nothing)."""
    used = [
        dataclasses.replace(c, yields={g: t for g, t in c.yields.items() if g in generators})
        for c in campaigns
    ]
    used = [c for c in used if c.yields]
    if not used:
        return None
    return (
        f"router prior {describe(used)} (counted as a round older than this run's first, "
        f"at most {Router().memory_strength:g} samples per generator)"
    )


def make_plan(
    spec: DesignSpec,
    memo: Memo | None,
    *,
    round_index: int,
    context: Context,
    history: list[FamilyYield] | None = None,
    remembered: Sequence[CampaignYields] = (),
) -> Plan:
    """The plan of one round.

    Round 0 explores the whole space the spec allows. Later rounds follow the memo: when it
    names compositions or space groups that came close, :data:`EXPLOIT_SHARE` of the samples
    go to them and the rest keep exploring. The router splits the exploring samples over the
    generators by their yields in this run's earlier rounds and, as a weaker prior, in the
    ``remembered`` earlier campaigns.
    """
    samples = spec.budget.samples_per_round
    history = history or []
    rationale: list[str] = []
    generators = list(context.generators)
    focus_compositions = list(memo["focus_compositions"]) if memo else []
    focus_space_groups = list(memo["focus_space_groups"]) if memo else []
    if spec.space_groups:
        # The spec fixes the groups; a memo may only narrow them.
        focus_space_groups = [g for g in focus_space_groups if g in spec.space_groups]
    prefer = memo.get("prefer_generator") if memo else None
    avoid = set(memo.get("avoid_generators", [])) if memo else set()
    parents = list(memo.get("parents", [])) if memo else []
    max_atoms = (memo.get("max_atoms") if memo else None) or spec.max_atoms
    max_atoms = max(spec.min_atoms, min(max_atoms, spec.max_atoms))
    elements = list(memo.get("focus_elements", [])) if memo else []
    exploiter = prefer if prefer in generators and prefer not in avoid else generators[0]
    narrowing: dict[str, Any] = {}
    if max_atoms < spec.max_atoms:
        narrowing["max_atoms"] = max_atoms
        rationale.append(f"atoms per cell capped at {max_atoms} (spec: {spec.max_atoms})")
    if elements:
        narrowing["elements"] = elements
        rationale.append("element pool restricted to " + "-".join(elements))
    tasks: list[GenerationTask] = []
    exploit = 0
    if focus_compositions or focus_space_groups or parents:
        exploit = max(1, round(samples * EXPLOIT_SHARE))
        substitute = 0
        if parents and SUBSTITUTION in generators and SUBSTITUTION not in avoid:
            substitute = exploit if exploiter == SUBSTITUTION else max(1, exploit // 2)
            tasks.append(
                GenerationTask(
                    generator=SUBSTITUTION,
                    num_structures=substitute,
                    compositions=focus_compositions,
                    space_groups=focus_space_groups,
                    purpose="exploit",
                    parents=parents,
                    **narrowing,  # type: ignore[typeddict-item]
                )
            )
            rationale.append(
                f"{substitute} samples substitute into the near-misses {', '.join(parents)}"
            )
        if exploit - substitute > 0:
            tasks.append(
                GenerationTask(
                    generator=exploiter,
                    num_structures=exploit - substitute,
                    compositions=focus_compositions,
                    space_groups=focus_space_groups,
                    purpose="exploit",
                    **narrowing,  # type: ignore[typeddict-item]
                )
            )
            rationale.append(
                f"{exploit - substitute} of {samples} samples to {exploiter} on what came "
                f"closest: {', '.join(focus_compositions) or 'any composition'}"
                + (f" in space groups {focus_space_groups}" if focus_space_groups else "")
            )
    explore = samples - exploit
    if explore > 0:
        explorers = [g for g in generators if g not in avoid] or generators
        if avoid & set(generators) and explorers != generators:
            rationale.append(f"no samples for {', '.join(sorted(avoid))} (all rejected last round)")
        allocation = Router().allocate(
            explore,
            explorers,
            history,
            memory=memory_prior(remembered),
            seed=round_seed(context.seed, round_index),
        )
        for name in explorers:
            n = allocation.samples.get(name, 0)
            if n:
                tasks.append(
                    GenerationTask(
                        generator=name,
                        num_structures=n,
                        compositions=[],
                        space_groups=list(spec.space_groups),
                        purpose="explore",
                        **narrowing,  # type: ignore[typeddict-item]
                    )
                )
        rationale.append(f"{explore} samples explore the space of the spec")
        if len(explorers) > 1:
            if line := _memory_line(remembered, explorers):
                rationale.append(line)
            rationale.append(f"router: {allocation.rationale}")
    if memo:
        rationale.extend(neutralise(change) for change in memo["changes"])
    return Plan(
        round=round_index,
        seed=round_seed(context.seed, round_index),
        tasks=tasks,
        max_atoms=max_atoms,
        rationale=rationale,
    )


def llm_plan(
    backend: LLMBackend,
    spec: DesignSpec,
    memo: Memo | None,
    rules: Plan,
    *,
    context: Context,
    results: list[CandidateSummary],
    references: list[dict[str, Any]],
    history: list[FamilyYield],
    remembered: Sequence[CampaignYields] = (),
) -> tuple[Plan, StructuredAnswer[CheckedPlan] | None, str | None]:
    """The model's plan of the round, checked and clamped; the rule plan on failure.

    The model sees the spec, the budgets, the available generators, their yields, the last
    memo, the near-misses and the reference phases (all retrieved text quoted as data) and the
    rule plan as a suggestion. Its plan must pass :func:`~crystalforge.tools.generate.
    check_round_plan`; one repair round, then the rule plan with a note.

    Returns:
        The plan, the model's answer (``None`` on failure) and a note when it fell back.
    """
    samples = spec.budget.samples_per_round
    passed = sorted((r for r in results if r["passed"]), key=lambda r: r["score"])[:8]
    facts = [
        f"Request: {spec.request}",
        "Spec: " + "; ".join(spec.describe()),
        f"Round {rules['round']}; sample budget this round: {samples} structures in total.",
        f"Available generators: {', '.join(context.generators)}.",
        quote_data(
            "generator yields so far",
            [
                {"generator": y.family, "round": y.round, "samples": y.samples, "hits": y.survivors}
                for y in history
            ],
        ),
        *(
            [quote_data("generator yields in earlier similar campaigns", describe(remembered))]
            if remembered
            else []
        ),
        quote_data("last reflection memo", dict(memo) if memo else None),
        quote_data("best validated candidates", [candidate_facts(r) for r in passed]),
        quote_data(
            "reference phases",
            [
                {k: p.get(k) for k in ("material_id", "formula", "e_above_hull")}
                for p in references[:10]
            ],
        ),
        quote_data("rule-based plan (a suggestion)", {"tasks": rules["tasks"]}),
    ]
    messages = [
        Message(role="system", content=PLANNER_SYSTEM.format(tool=ROUND_PLAN_TOOL.name)),
        Message(role="user", content="\n\n".join(facts)),
    ]
    tool = ToolSpec(
        name=ROUND_PLAN_TOOL.name,
        description=ROUND_PLAN_TOOL.description,
        parameters=ROUND_PLAN_TOOL.parameters,
    )
    ids = {r["id"] for r in results}
    try:
        answer = ask_structured(
            backend,
            messages,
            tool,
            lambda arguments: check_round_plan(
                arguments,
                spec=spec,
                available=context.generators,
                samples=samples,
                candidate_ids=ids,
            ),
        )
    except LLMError as exc:
        note = f"round {rules['round']}: LLM plan rejected or unavailable ({exc}); rule plan used"
        return rules, None, note
    checked = answer.value
    tasks: list[GenerationTask] = []
    for t in checked.tasks:
        task = GenerationTask(
            generator=t.generator,
            num_structures=t.num_structures,
            compositions=list(t.compositions),
            space_groups=list(t.space_groups) or list(spec.space_groups),
            purpose=t.purpose if t.purpose in ("explore", "exploit") else "explore",
        )
        if t.parents:
            task["parents"] = list(t.parents)
        if t.max_atoms is not None and t.max_atoms < spec.max_atoms:
            task["max_atoms"] = t.max_atoms
        tasks.append(task)
    rationale = [f"planned by {backend.model}" + (" (repaired)" if answer.repaired else "")]
    rationale += [neutralise(line) for line in checked.rationale]
    rationale += checked.notes
    if checked.references:
        rationale.append("references asked for: " + ", ".join(checked.references[:10]))
    plan_ = Plan(
        round=rules["round"],
        seed=rules["seed"],
        tasks=tasks,
        max_atoms=max((t.get("max_atoms", spec.max_atoms) for t in tasks), default=spec.max_atoms),
        rationale=rationale,
    )
    if checked.references:
        plan_["references"] = list(checked.references[:10])
    return plan_, answer, None


def plan(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the plan of the next round into the state.

    The rule plan is always computed: it is the embedded planner, the LLM's suggestion and its
    fallback. With ``llm="openai"`` the model plans within the checks of ``check_round_plan``.
    """
    assert state.spec is not None, "understand runs before plan"
    spec = DesignSpec.model_validate(state.spec)
    memo = state.memos[-1] if state.memos else None
    round_index = state.round + 1 if state.plans else 0
    history = yield_history(list(state.memos))
    context = runtime.context
    recall: dict[str, Any] = {}
    progress_note = None
    if memo is None and not state.plans:  # issue 9: start from what similar campaigns learned
        memo, recall = recall_for_plan(state, context)
    elif state.memos:  # issue 5: an interrupted run is remembered with its rounds so far
        progress_note = record_progress(state, context)
    remembered = remembered_campaigns(recall.get("memory_yields", state.memory_yields))
    chosen = make_plan(
        spec,
        memo,
        round_index=round_index,
        context=context,
        history=history,
        remembered=remembered,
    )
    update: dict[str, Any] = {"round": round_index}
    backend = backend_for(context)
    if backend is not None:
        if state.llm_tokens >= spec.budget.max_llm_tokens:
            update["notes"] = [
                f"round {round_index}: LLM token budget spent ({state.llm_tokens}); rule plan used"
            ]
        else:
            chosen, answer, note = llm_plan(
                backend,
                spec,
                memo,
                chosen,
                context=context,
                results=list(state.results),
                references=list(state.references),
                history=history,
                remembered=remembered,
            )
            if note:
                update["notes"] = [note]
            if answer is not None:
                update |= state.llm_cost(
                    tokens=answer.tokens, seconds=answer.seconds, calls=answer.calls
                )
    update["plans"] = [chosen]
    if recall:
        update["recalled"] = recall.get("recalled", [])
        update["memory_yields"] = recall.get("memory_yields", [])
        update["notes"] = [*recall.get("notes", []), *update.get("notes", [])]
    if progress_note:
        update["notes"] = [*update.get("notes", []), progress_note]
    return update
