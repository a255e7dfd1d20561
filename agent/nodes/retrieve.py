"""retrieve: known phases of the chemical system, and the memory of earlier campaigns.

Three pieces of the loop use the memory store (:mod:`crystalforge.memory.chroma`):

* :func:`recall_for_plan` (called by ``plan`` before the first round): earlier campaigns with a
  similar spec and what they learned. The nearest one within :data:`RECALL_MAX_DISTANCE`
  becomes a starting memo: its hit and near-miss compositions (those the new spec allows) and
  space groups get the first round's exploit share, and its reflections are quoted in the plan
  and the report's notes. The generator yields of the nearest campaigns, weighted by
  similarity (:mod:`crystalforge.memory.yields`), become the router's prior.
* :func:`retrieve` (this node): the reference hull's known phases; when the hull knows none
  (elemental references only), the memory store's references of the chemical system.
* :func:`record_run` (called by ``report``): the campaign (spec, plans, reflections, outcome,
  generator yields) and every validated candidate with its verdicts go into the store, so later
  runs recall them and screen novelty against them. :func:`record_progress` (called by
  ``plan`` before every later round) upserts the campaign alone, so an interrupted run's
  rounds so far are remembered too.

Without the ``memory`` extra, or with a store that cannot be opened, each piece degrades to
nothing and says so once in the notes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.resources import reference_for
from crystalforge.agent.state import Memo, State
from crystalforge.core.errors import SetupError
from crystalforge.core.settings import Settings
from crystalforge.core.spec import DesignSpec
from crystalforge.memory.yields import K as YIELDS_K
from crystalforge.memory.yields import totals_of_rounds, weigh_campaigns

if TYPE_CHECKING:
    from crystalforge.memory.chroma import ChromaMemory

logger = logging.getLogger(__name__)

MAX_REFERENCES = 25
"""Known phases kept in state for the planner and the report."""

MAX_POOL_FOR_LOOKUP = 6
"""Above this many elements, a pool is too broad for a useful phase list."""

RECALL_K = 3
"""Earlier campaigns recalled per run."""

RECALL_MAX_DISTANCE = 0.35
"""Cosine distance between spec embeddings below which a campaign counts as similar."""

MEMORY_OFF_NOTE = "memory store not used: "


def memory_for(context: Context) -> tuple[ChromaMemory | None, str | None]:
    """The memory store of a run, or ``None`` and why not (a note for the report)."""
    del context  # one store per machine; the location is a setting
    settings = Settings()
    if not settings.memory_enabled:
        return None, MEMORY_OFF_NOTE + "disabled (CRYSTALFORGE_MEMORY_ENABLED=false)"
    from crystalforge.memory.chroma import memory_available, open_memory

    if not memory_available():
        return None, MEMORY_OFF_NOTE + (
            "the 'memory' extra is not installed (pip install 'crystalforge[memory]'); "
            "no recall of earlier campaigns, novelty against the reference data only"
        )
    try:
        return open_memory(), None
    except SetupError as exc:
        logger.warning("memory store unavailable: %s", exc)
        return None, MEMORY_OFF_NOTE + str(exc)


def _allowed(formula: str, spec: DesignSpec) -> bool:
    from pymatgen.core import Composition

    try:
        elements = {el.symbol for el in Composition(formula).elements}
    except ValueError:
        return False
    pool = spec.element_pool()
    if pool is not None and not elements <= set(pool):
        return False
    if elements & set(spec.excluded_elements):
        return False
    if not set(spec.required_elements) <= elements:
        return False
    return not (spec.formula and Composition(spec.formula).reduced_formula != formula)


def recalled_memo(spec: DesignSpec, campaign: dict[str, Any]) -> Memo | None:
    """A starting memo from an earlier campaign: what it focused on, filtered by ``spec``."""
    compositions = [f for f in campaign.get("focus_compositions") or [] if _allowed(f, spec)]
    groups = [int(g) for g in campaign.get("focus_space_groups") or []]
    if spec.space_groups:
        groups = [g for g in groups if g in spec.space_groups]
    if not compositions and not groups:
        return None
    label = f"campaign {campaign['run_id']} ({campaign.get('request', '')!r})"
    changes = [f"recalled from {label}: start from {', '.join(compositions) or 'its space groups'}"]
    changes += [f"recalled from {label}: {text}" for text in campaign.get("reflections") or []][:4]
    return Memo(
        round=-1,
        evaluated=0,
        hits=0,
        new_hits=0,
        failures={},
        yield_by_generator={},
        generator_stats={},
        best=[],
        changes=changes,
        focus_compositions=compositions[:3],
        focus_space_groups=groups[:3],
        stop_reason=None,
    )


def recall_for_plan(state: State, context: Context) -> tuple[Memo | None, dict[str, Any]]:
    """Earlier campaigns like this one, for the first plan.

    Returns:
        The starting memo (``None`` when nothing similar is remembered) and the state update
        (``recalled``: summaries of the campaigns; ``notes`` for the report).
    """
    assert state.spec is not None
    spec = DesignSpec.model_validate(state.spec)
    store, note = memory_for(context)
    if store is None:
        return None, {"notes": [note] if note else []}
    try:
        campaigns = store.similar_campaigns(
            state.spec, k=max(RECALL_K, YIELDS_K), exclude_run=context.run_dir.name
        )
    except Exception as exc:  # a store problem must not stop a design run
        logger.warning("cannot recall campaigns: %s", exc)
        return None, {"notes": [f"could not recall earlier campaigns: {exc}"]}
    yields = [c.to_json() for c in weigh_campaigns(state.spec, campaigns)]
    similar = [c for c in campaigns[:RECALL_K] if c["distance"] <= RECALL_MAX_DISTANCE]
    recalled = [
        {
            "run_id": c["run_id"],
            "request": c["request"],
            "distance": round(c["distance"], 3),
            "reflections": list(c["reflections"])[:6],
            "focus_compositions": list(c["focus_compositions"]),
            "focus_space_groups": list(c["focus_space_groups"]),
            "hits": int((c.get("outcome") or {}).get("hits", 0)),
        }
        for c in similar
    ]
    memo = recalled_memo(spec, similar[0]) if similar else None
    notes = [
        f"recalled campaign {c['run_id']} ({c['request']!r}, spec distance {c['distance']:.2f}, "
        f"{c['hits']} hits): " + ("; ".join(c["reflections"][:3]) or "no reflections")
        for c in recalled
    ]
    if memo is not None:
        notes.append("first round starts from the recalled campaign: " + memo["changes"][0])
    return memo, {"recalled": recalled, "notes": notes, "memory_yields": yields}


def retrieve(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Name the reference hull and list the known phases the candidates compete with.

    Runs once per run: later rounds keep the first answer. When the hull knows no phase of the
    system, references from the memory store fill in.
    """
    if state.reference_name is not None:
        return _asked_references(state, runtime.context)
    assert state.spec is not None, "understand runs before retrieve"
    spec = DesignSpec.model_validate(state.spec)
    reference = reference_for(runtime.context)
    pool = spec.chemical_system or spec.element_pool()
    references: list[dict[str, Any]] = []
    notes: list[str] = []
    if pool and len(pool) <= MAX_POOL_FOR_LOOKUP:
        phases = reference.known_phases(pool)
        references = sorted(phases, key=lambda p: (p["e_above_hull"], p["formula"]))
        references = references[:MAX_REFERENCES]
        if not references:
            store, _ = memory_for(runtime.context)
            if store is not None:
                rows = store.search_references(chemsys=pool, limit=MAX_REFERENCES)
                references = [
                    {
                        "material_id": r["id"],
                        "formula": r.get("reduced_formula"),
                        "n_atoms": r.get("n_sites"),
                        "formation_energy_per_atom": r.get("formation_energy_per_atom"),
                        "e_above_hull": r.get("e_above_hull"),
                        "spacegroup": r.get("spacegroup"),
                        "source": f"memory:{r.get('source', 'unknown')}",
                        "hull": "memory store (not the run's hull)",
                    }
                    for r in rows
                ]
                if references:
                    notes.append(
                        f"{len(references)} reference materials of {'-'.join(pool)} "
                        "came from the memory store"
                    )
    update: dict[str, Any] = {"reference_name": reference.name, "references": references}
    if notes:
        update["notes"] = notes
    return update


def _asked_references(state: State, context: Context) -> dict[str, Any]:
    """Add the known phases among the formulae the current plan asked for (LLM planner)."""
    from pymatgen.core import Composition

    asked = state.plans[-1].get("references", []) if state.plans else []
    have = {str(r.get("formula")) for r in state.references}
    wanted = []
    for formula in asked:
        try:
            reduced = Composition(formula).reduced_formula
        except (ValueError, KeyError):
            continue  # the planner's text, not ours to trust: skip what is not a formula
        if reduced not in have:
            wanted.append(reduced)
    if not wanted:
        return {}
    reference = reference_for(context)
    found: list[dict[str, Any]] = []
    for reduced in dict.fromkeys(wanted):
        elements = sorted(str(el) for el in Composition(reduced).elements)
        found += [p for p in reference.known_phases(elements) if p["formula"] == reduced]
    missing = [f for f in dict.fromkeys(wanted) if f not in {p["formula"] for p in found}]
    notes = []
    if found:
        notes.append(
            "references the planner asked for: "
            + ", ".join(sorted({str(p["formula"]) for p in found}))
        )
    if missing:
        notes.append(f"not in {reference.name}: " + ", ".join(missing))
    update: dict[str, Any] = {"notes": notes}
    if found:
        update["references"] = [*state.references, *found]
    return update


def campaign_record(state: State, *, in_progress: bool = False) -> dict[str, Any]:
    """The campaign record of a run as the memory store keeps it.

    Args:
        state: The run's state (its rounds so far).
        in_progress: The run has not reported yet (a checkpoint of its rounds so far).

    Returns:
        ``spec``, ``request``, ``plans``, ``reflections``, ``focus_compositions``,
        ``focus_space_groups``, ``outcome`` and ``generator_yields`` (per generator: samples,
        survivors, seconds and rounds, summed over the reflected rounds).
    """
    from crystalforge.agent.nodes.reflect import distinct_hits

    results = list(state.results)
    hits = distinct_hits(results)
    last = state.memos[-1] if state.memos else None
    focus = [h["formula"] for h in hits] + list(last["focus_compositions"] if last else [])
    groups = [h["space_group"] for h in hits if h["space_group"]] + list(
        last["focus_space_groups"] if last else []
    )
    reflections = [text for memo in state.memos for text in memo["changes"]]
    outcome: dict[str, Any] = {
        "stop_reason": state.stop_reason,
        "hits": len(hits),
        "evaluated": len(results),
        "best": [h["id"] for h in hits[:5]],
    }
    if in_progress:
        outcome["in_progress"] = True
        outcome["rounds_reflected"] = len(state.memos)
    return {
        "spec": state.spec,
        "request": state.request,
        "plans": [{"round": p["round"], "rationale": p["rationale"]} for p in state.plans],
        "reflections": list(dict.fromkeys(reflections))[:20],
        "focus_compositions": list(dict.fromkeys(focus))[:6],
        "focus_space_groups": list(dict.fromkeys(groups))[:6],
        "outcome": outcome,
        "generator_yields": totals_of_rounds(m.get("generator_stats", {}) for m in state.memos),
    }


def record_progress(state: State, context: Context) -> str | None:
    """Upsert the campaign record of a run that is still going (no candidates).

    A run interrupted later is then remembered with its rounds so far; the final
    :func:`record_run` replaces the record.

    Returns:
        A note for the report when the record could not be written, else ``None``.
    """
    if not state.memos:
        return None
    store, _ = memory_for(context)
    if store is None:
        return None  # recall already said why, once
    try:
        store.add_campaign(context.run_dir.name, campaign_record(state, in_progress=True))
    except Exception as exc:  # a store problem must not stop a design run
        logger.warning("cannot record the run's progress in the memory store: %s", exc)
        return f"progress after round {state.round} not recorded in the memory store: {exc}"
    return None


def record_run(state: State, context: Context) -> list[str]:
    """Write the campaign and its validated candidates into the memory store.

    Idempotent (upserts keyed by run id and candidate id), so a resumed run that reports again
    does not duplicate anything.

    Returns:
        Notes for the report (what was recorded, or why nothing was).
    """
    store, note = memory_for(context)
    if store is None:
        return [note] if note else []
    from crystalforge.agent.resources import store_for

    run_id = context.run_dir.name
    try:
        run_store = store_for(context)
        entries = [
            {
                "candidate": r.candidate,
                "verdicts": r.verdicts,
                "passed": r.passed,
                "failed_stage": r.failed_stage,
            }
            for r in run_store.results(list(dict.fromkeys(state.candidate_ids)))
        ]
        written = store.add_candidates(run_id, entries)
        store.add_campaign(run_id, campaign_record(state))
    except Exception as exc:  # recording must not lose the run's report
        logger.warning("cannot record the run in the memory store: %s", exc)
        return [f"run not recorded in the memory store: {exc}"]
    return [f"recorded this campaign and {written} candidates in the memory store {store.path}"]
