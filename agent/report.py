"""The run directory's outputs: ranked table, CIFs, verdicts with provenance, report and figures.

Files written into the run directory:

- ``ranked.csv``: every validated candidate, best first (the table the CLI prints);
- ``cif/<rank>-<formula>-<id>.cif``: the final (relaxed) structure of every candidate;
- ``verdicts.json``: every verdict of every stage, with provenance (generator, seed, parameters);
- ``report.md``: request, compiled spec, reference hull, rounds, stop reason, top candidates;
- ``e_above_hull.png`` (and ``hull.png`` for binary and ternary systems): pictures of the result.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crystalforge.agent.nodes.reflect import distinct_hits
from crystalforge.memory.run_store import RunStore, write_json_atomic

if TYPE_CHECKING:
    from pathlib import Path

    from crystalforge.agent.state import CandidateSummary, Memo, Plan
    from crystalforge.core.spec import DesignSpec
    from crystalforge.memory.reference_data import ReferenceHull

logger = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "rank",
    "id",
    "formula",
    "space_group",
    "n_atoms",
    "e_above_hull",
    "formation_energy",
    "meets_hard",
    "status",
    "generator",
    "round",
)


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """What a finished run produced, for printing and for the Python API."""

    run_dir: Path
    spec: DesignSpec
    reference_name: str
    stop_reason: str
    ranked: list[CandidateSummary]
    """Every validated candidate, best first."""
    hits: list[CandidateSummary]
    """Distinct candidates meeting every hard constraint, best first."""
    report_path: Path
    pending_review: dict[str, Any] | None = None
    """The review payload when the run stopped for a person's review (see nodes/review.py)."""


def rank(results: list[CandidateSummary]) -> list[CandidateSummary]:
    """Hits first, then by score (distance outside targets, then energy above hull)."""
    return sorted(results, key=lambda r: (not r["meets_hard"], not r["passed"], r["score"]))


def status_of(summary: CandidateSummary) -> str:
    """One word or phrase for the table."""
    review = summary.get("review")
    note = summary.get("review_note")
    if review == "rejected":
        return "rejected by reviewer" + (f": {note}" if note else "")
    if review == "approved" or note:
        base = status_of({k: v for k, v in summary.items() if k not in ("review", "review_note")})  # type: ignore[arg-type]
        mark = " (approved by reviewer)" if review == "approved" else ""
        return base + mark + (f"; reviewer note: {note}" if note else "")
    if summary["meets_hard"]:
        return "hit"
    if not summary["passed"]:
        return f"rejected: {summary['reason'] or summary['failed_stage']}"
    if summary["unmet"]:
        return "missed " + "; ".join(summary["unmet"])
    return "unverified: " + "; ".join(summary["unevaluated"])


def short_status(summary: CandidateSummary) -> str:
    """A few words for narrow tables: ``hit``, ``missed e_above_hull``, ``rejected (sanity)``."""
    review = summary.get("review")
    if review == "rejected":
        return "rejected (reviewer)"
    if review == "approved":
        if summary["meets_hard"]:
            return "approved"
        rest = {k: v for k, v in summary.items() if k != "review"}
        return "approved, " + short_status(rest)  # type: ignore[arg-type]
    if summary["meets_hard"]:
        return "hit"
    if not summary["passed"]:
        return f"rejected ({summary['failed_stage']})"
    if summary["unmet"]:
        return "missed " + ", ".join(u.split(" ")[0] for u in summary["unmet"])
    return "unverified"


def table_rows(ranked: list[CandidateSummary]) -> list[dict[str, Any]]:
    """Rows of the ranked table (also what the CLI prints)."""
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(ranked, start=1):
        rows.append(
            {
                "rank": i,
                "id": r["id"],
                "formula": r["formula"],
                "space_group": r["space_group"],
                "n_atoms": r["n_atoms"],
                "e_above_hull": _fmt(r["e_above_hull"]),
                "formation_energy": _fmt(r["formation_energy"]),
                "meets_hard": r["meets_hard"],
                "status": status_of(r),
                "short_status": short_status(r),
                "generator": r["generator"],
                "round": r["round"],
            }
        )
    return rows


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def write_report(
    *,
    run_dir: Path,
    request: str,
    spec: DesignSpec,
    reference: ReferenceHull | None,
    reference_name: str,
    references: list[dict[str, Any]],
    results: list[CandidateSummary],
    plans: list[Plan],
    memos: list[Memo],
    stop_reason: str,
    validator_calls: int,
    elapsed_s: float,
    notes: list[str] | None = None,
    llm_tokens: int = 0,
    llm_seconds: float = 0.0,
    llm_calls: int = 0,
    final_answer: str | None = None,
    gate_notes: list[str] | None = None,
) -> RunOutcome:
    """Write every output file of a run and return what it found."""
    store = RunStore(run_dir)
    ranked = rank(results)
    hits = distinct_hits(results)
    rows = table_rows(ranked)

    with (run_dir / "ranked.csv").open("w", newline="") as handle:
        writer: csv.DictWriter[str] = csv.DictWriter(
            handle, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)

    cif_dir = run_dir / "cif"
    cif_dir.mkdir(exist_ok=True)
    verdicts: list[dict[str, Any]] = []
    for i, summary in enumerate(ranked, start=1):
        stored = store.load_result(summary["id"])
        name = f"{i:03d}-{summary['formula']}-{summary['id']}.cif"
        stored.candidate.structure.to(filename=str(cif_dir / name))
        verdicts.append(
            {
                "rank": i,
                "id": summary["id"],
                "formula": summary["formula"],
                "cif": f"cif/{name}",
                "provenance": stored.candidate.provenance(),
                "properties": dict(stored.candidate.properties),
                "passed": stored.passed,
                "failed_stage": stored.failed_stage,
                "meets_hard": summary["meets_hard"],
                "unmet": summary["unmet"],
                "unevaluated": summary["unevaluated"],
                "verdicts": [v.to_json() for v in stored.verdicts],
                "reference_hull": reference_name,
            }
        )
    write_json_atomic(
        run_dir / "verdicts.json",
        {
            "reference_hull": reference_name,
            "spec": spec.model_dump(mode="json"),
            "candidates": verdicts,
        },
    )

    figures = _figures(run_dir, spec, ranked, reference)
    report_path = run_dir / "report.md"
    report_path.write_text(
        _markdown(
            request=request,
            spec=spec,
            reference_name=reference_name,
            references=references,
            rows=rows,
            hits=hits,
            plans=plans,
            memos=memos,
            stop_reason=stop_reason,
            validator_calls=validator_calls,
            elapsed_s=elapsed_s,
            figures=figures,
            notes=notes or [],
            llm_tokens=llm_tokens,
            llm_seconds=llm_seconds,
            llm_calls=llm_calls,
            final_answer=final_answer,
            gate_notes=gate_notes or [],
        )
    )
    return RunOutcome(
        run_dir=run_dir,
        spec=spec,
        reference_name=reference_name,
        stop_reason=stop_reason,
        ranked=ranked,
        hits=hits,
        report_path=report_path,
    )


def _markdown(
    *,
    request: str,
    spec: DesignSpec,
    reference_name: str,
    references: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    hits: list[CandidateSummary],
    plans: list[Plan],
    memos: list[Memo],
    stop_reason: str,
    validator_calls: int,
    elapsed_s: float,
    figures: list[str],
    notes: list[str],
    llm_tokens: int,
    llm_seconds: float = 0.0,
    llm_calls: int = 0,
    final_answer: str | None = None,
    gate_notes: list[str] | None = None,
) -> str:
    lines = ["# crystalforge design report", "", f"**Request:** {request or '(compiled spec)'}", ""]
    lines += ["## Compiled spec", ""] + [f"- {line}" for line in spec.describe()] + [""]
    lines += [
        "## Reference",
        "",
        f"Stability is measured against: **{reference_name}**.",
        "Energies are CHGNet (bundled weights) placed on this hull through elemental reference "
        "energies, without MP2020 corrections (CHGNet energies already sit on the corrected scale "
        "of MP formation energies; see docs/design-notes.md).",
        "",
    ]
    if references:
        lines += ["Known phases of the system (lowest energy above hull first):", ""]
        lines += ["| id | formula | E_hull (eV/atom) | E_form (eV/atom) |", "|---|---|---|---|"]
        lines += [
            f"| {p['material_id']} | {p['formula']} | {p['e_above_hull']:.3f} | "
            f"{p['formation_energy_per_atom']:.3f} |"
            for p in references[:10]
        ]
        lines.append("")
    lines += [
        "## Outcome",
        "",
        f"- stop reason: {stop_reason}",
        f"- distinct candidates meeting every hard constraint: {len(hits)} "
        f"(wanted {spec.num_candidates})",
        f"- validated structures: {len(rows)}; CHGNet relaxations: {validator_calls}; "
        f"working time: {elapsed_s:.0f} s; LLM tokens: {llm_tokens}; LLM calls: {llm_calls}; "
        f"LLM latency: {llm_seconds:.1f} s",
        f"- per hit: {_per_hit(validator_calls, len(hits))} relaxations, "
        f"{_per_hit(elapsed_s, len(hits))} s, {_per_hit(llm_tokens, len(hits))} LLM tokens, "
        f"{_per_hit(llm_seconds, len(hits), digits=1)} s of LLM latency",
        "",
    ]
    if final_answer:
        lines += ["## Answer", "", final_answer, ""]
        lines += [f"_{note}_" for note in gate_notes or []]
        if gate_notes:
            lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    lines += ["## Ranked candidates", ""]
    shown = rows[:20]
    if shown:
        lines += [
            "| rank | id | formula | SG | atoms | E_hull | E_form | status | generator | round |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['rank']} | {r['id']} | {r['formula']} | {r['space_group'] or ''} | "
            f"{r['n_atoms']} | {r['e_above_hull']} | {r['formation_energy']} | {r['status']} | "
            f"{r['generator']} | {r['round']} |"
            for r in shown
        ]
        if len(rows) > len(shown):
            lines.append(f"\n{len(rows) - len(shown)} more in ranked.csv.")
    else:
        lines.append("No structure was validated.")
    lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    lines += ["", "## Rounds", ""]
    for plan in plans:
        memo = next((m for m in memos if m["round"] == plan["round"]), None)
        tasks = ", ".join(
            f"{t['generator']} x{t['num_structures']} ({t['purpose']})" for t in plan["tasks"]
        )
        lines.append(f"### Round {plan['round']}")
        lines.append("")
        lines.append(f"- plan: {tasks}")
        lines += [f"- why: {why}" for why in plan["rationale"]]
        if memo:
            lines.append(
                f"- reflection: {memo['evaluated']} validated, {memo['new_hits']} new hits; "
                f"failures: {json.dumps(memo['failures'])}"
            )
            lines += [f"  - {change}" for change in memo["changes"]]
        lines.append("")
    lines += [
        "## Files",
        "",
        "`ranked.csv` (the table), `cif/` (one CIF per candidate, relaxed where it got that far), "
        "`verdicts.json` (every verdict with its provenance), `checkpoints.sqlite` (resume with "
        "`crystalforge resume <this folder>`).",
        "",
    ]
    return "\n".join(lines)


def _per_hit(total: float, hits: int, *, digits: int = 0) -> str:
    return f"{total / hits:.{digits}f}" if hits else "n/a (no hit)"


def _figures(
    run_dir: Path, spec: DesignSpec, ranked: list[CandidateSummary], reference: ReferenceHull | None
) -> list[str]:
    """Draw the pictures; a figure that cannot be drawn is logged, not fatal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    scored = [r for r in ranked if r["e_above_hull"] is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(scored)), 4.0))
        labels = [f"{r['formula']}\n{r['id'][2:8]}" for r in scored]
        values = [r["e_above_hull"] for r in scored]
        colours = ["tab:green" if r["meets_hard"] else "tab:gray" for r in scored]
        ax.bar(range(len(scored)), values, color=colours)  # type: ignore[arg-type]
        target = spec.target("e_above_hull")
        if target is not None and target.max is not None:
            ax.axhline(
                target.max, color="tab:red", linestyle="--", label=f"target <= {target.max:g}"
            )
            ax.legend()
        ax.set_xticks(range(len(scored)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("CHGNet energy above hull (eV/atom)")
        ax.set_title("Candidates, best first (green: meets every hard constraint)")
        fig.tight_layout()
        fig.savefig(run_dir / "e_above_hull.png", dpi=120)
        plt.close(fig)
        names.append("e_above_hull.png")
    if reference is not None and spec.chemical_system and 2 <= len(spec.chemical_system) <= 3:
        try:
            _hull_figure(run_dir / "hull.png", spec, ranked, reference)
            names.append("hull.png")
        except (ValueError, KeyError, RuntimeError) as exc:
            logger.warning("could not draw the hull diagram: %s", exc)
    return names


def _hull_figure(
    path: Path, spec: DesignSpec, ranked: list[CandidateSummary], reference: ReferenceHull
) -> None:
    """The reference hull of a binary or ternary system with the candidates placed on it.

    Binary: formation energy against composition, the hull as a line. Ternary: the Gibbs
    triangle with the hull's tie lines. Candidates are coloured by energy above hull; hits are
    stars. Known phases on the hull are labelled.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from pymatgen.core import Composition

    assert spec.chemical_system is not None
    elements = list(spec.chemical_system)
    diagram = reference.phase_diagram(elements)
    placed = [r for r in ranked if r["passed"] and r["formation_energy"] is not None]

    def fractions(formula: str | Composition) -> list[float]:
        comp = Composition(formula)
        return [comp.get_atomic_fraction(el) for el in elements]

    fig, ax = plt.subplots(figsize=(7.0, 6.0))
    if len(elements) == 2:
        stable = sorted(
            diagram.stable_entries, key=lambda e: e.composition.get_atomic_fraction(elements[1])
        )
        xs = [e.composition.get_atomic_fraction(elements[1]) for e in stable]
        ys = [diagram.get_form_energy_per_atom(e) for e in stable]
        ax.plot(xs, ys, "-o", color="black", label="reference hull")
        for x, y, e in zip(xs, ys, stable, strict=True):
            ax.annotate(e.composition.reduced_formula, (x, y), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=8)  # fmt: skip
        cx = [fractions(r["formula"])[1] for r in placed]
        cy = [float(r["formation_energy"] or 0.0) for r in placed]
        ax.set_xlabel(f"fraction of {elements[1]}")
        ax.set_ylabel("formation energy (eV/atom)")
    else:
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])

        def xy(formula: str | Composition) -> np.ndarray:
            return np.array(fractions(formula)) @ corners

        ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", lw=1)
        for facet in diagram.facets:
            pts = np.array([xy(diagram.qhull_entries[i].composition) for i in facet])
            ax.plot(*np.vstack([pts, pts[:1]]).T, color="0.6", lw=0.8, zorder=1)
        for entry in diagram.stable_entries:
            x, y = xy(entry.composition)
            ax.plot(x, y, "o", color="black", ms=5, zorder=3)
            ax.annotate(entry.composition.reduced_formula, (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
        points = np.array([xy(r["formula"]) for r in placed]).reshape(-1, 2)
        cx, cy = [float(x) for x in points[:, 0]], [float(y) for y in points[:, 1]]
        ax.set_axis_off()
        ax.set_aspect("equal", adjustable="box")
    e_hull = [min(max(r["e_above_hull"] or 0.0, 0.0), 0.5) for r in placed]
    hits = [r["meets_hard"] for r in placed]
    if placed:
        scatter = ax.scatter(
            [x for x, h in zip(cx, hits, strict=True) if not h],
            [y for y, h in zip(cy, hits, strict=True) if not h],
            c=[e for e, h in zip(e_hull, hits, strict=True) if not h],
            cmap="viridis_r", vmin=0, vmax=0.5, marker="s", s=30, zorder=4, label="candidates",
        )  # fmt: skip
        ax.scatter(
            [x for x, h in zip(cx, hits, strict=True) if h],
            [y for y, h in zip(cy, hits, strict=True) if h],
            c=[e for e, h in zip(e_hull, hits, strict=True) if h],
            cmap="viridis_r", vmin=0, vmax=0.5, marker="*", s=160, edgecolors="red",
            zorder=5, label="hits",
        )  # fmt: skip
        fig.colorbar(scatter, ax=ax, shrink=0.7, label="E above hull (eV/atom, clipped at 0.5)")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{'-'.join(elements)}: reference hull ({reference.name}) and candidates",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
