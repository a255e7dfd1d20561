"""``crystalforge eval hull-accuracy``: CHGNet energy above hull against held-out DFT labels.

Rows: a seeded mix of ``mp_20_biternary`` test rows (all within 0.08 eV/atom of the MP hull by
MP-20's construction: the positives) and ``mpts_52`` test rows with ``energy_above_hull`` above
0.1 eV/atom and at most 20 atoms (the negatives), half and half. Each DFT-relaxed structure is
relaxed with CHGNet (:class:`~crystalforge.tools.validators.chgnet.CHGNetRelaxer`, the pipeline's
settings) and placed on the MP-20 offline hull by
:class:`~crystalforge.tools.validators.hull.HullValidator` with the material's **own entry left
out of the hull** (every evaluated row is itself a hull entry in the union recipe; scoring it
against its own DFT energy would hide errors). The result is compared with the DFT column
(``e_above_hull`` / ``energy_above_hull``, MP's hull): MAE overall and per DFT class, and
precision, recall and F1 of "E_hull <= 0.1 eV/atom" (stable is the positive class).

Reference rows in the same table: static CHGNet 0.3.0 energies on the DFT structures (no
relaxation), static CHGNet 0.2.0 energies on the CHGNet-relaxed structures (the uncertainty
stage's second opinion), and the DFT formation energies themselves placed on our hull (how far
our hull is from MP's; a floor for every other row).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.errors import DataError
from crystalforge.evals.base import Scalar, SuiteOptions, SuiteResult

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import pandas as pd

    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.reference_data import ReferenceData

logger = logging.getLogger(__name__)

SUITE = "hull-accuracy"
STABLE_THRESHOLD_EV = 0.1
"""A material is "stable" when its energy above the hull is at most this, eV/atom."""
N_POSITIVES = 100
"""``mp_20_biternary`` test rows in the full suite."""
N_NEGATIVES = 100
"""``mpts_52`` test rows above the threshold in the full suite."""
N_QUICK = 12
"""Rows with ``--quick`` (half of each kind)."""
MAX_ATOMS = 20
"""Largest cell of an ``mpts_52`` negative (MP-20's limit)."""
CHUNK = 10
"""Structures per relaxation call (progress is printed between calls)."""

ANCHOR = (
    "Matbench Discovery anchor (WBM test set, ~16% stable, threshold 0 eV/atom, "
    "DFT-relaxed -> CHGNet-relaxed): CHGNet F1 0.613, MAE 0.063 eV/atom. Not directly "
    "comparable: this mix is 50% stable, its threshold is 0.1 eV/atom, and its structures are "
    "MP materials that CHGNet's training set (MPtrj) likely contains."
)

COLUMNS = (
    "method",
    "n",
    "failed",
    "mae_ev",
    "mae_dft_stable_ev",
    "mae_dft_unstable_ev",
    "precision",
    "recall",
    "f1",
    "accuracy",
)

_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+(?:'([^'\n]*)'|(\S+))")
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)([0-9.]*)")


@dataclass
class _Item:
    material_id: str
    source: str
    dft_e_hull: float
    dft_formation: float
    candidate: Candidate
    predictions: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Scalar] = field(default_factory=dict)


def _cell_atoms(cif: str) -> float:
    match = _FORMULA_SUM.search(cif)
    if match is None:
        return math.inf
    return sum(float(n) if n else 1.0 for _, n in _FORMULA_TOKEN.findall(match[1] or match[2]))


def sample_rows(
    data_dir: Path, *, n_positives: int, n_negatives: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seeded positives (``mp_20_biternary`` test) and negatives (``mpts_52`` test).

    Returns:
        Two frames with columns ``material_id``, ``cif``, ``formation_energy_per_atom`` and
        ``dft_e_hull`` (eV/atom).
    """
    import pandas as pd

    try:
        mp20 = pd.read_csv(data_dir / "mp_20_biternary" / "test.csv.gz", index_col=0)
        mpts = pd.read_csv(data_dir / "mpts_52" / "test.csv.gz", index_col=0)
    except OSError as exc:
        raise DataError(f"cannot read the held-out CSVs under {str(data_dir)!r}: {exc}") from exc
    positives: Any = mp20.rename(columns={"e_above_hull": "dft_e_hull"})
    negatives: Any = mpts.rename(columns={"energy_above_hull": "dft_e_hull"})
    negatives = negatives[negatives["dft_e_hull"] > STABLE_THRESHOLD_EV]
    negatives = negatives[negatives["cif"].map(_cell_atoms) <= MAX_ATOMS]
    negatives = negatives[~negatives["material_id"].isin(set(positives["material_id"]))]
    keep = ["material_id", "cif", "formation_energy_per_atom", "dft_e_hull"]
    return (
        positives.sample(min(n_positives, len(positives)), random_state=seed)[keep],
        negatives.sample(min(n_negatives, len(negatives)), random_state=seed)[keep],
    )


def classification(
    dft: Sequence[float], predicted: Sequence[float], threshold: float = STABLE_THRESHOLD_EV
) -> dict[str, float | int | None]:
    """MAE (overall, per DFT class) and precision/recall/F1/accuracy of "E_hull <= threshold".

    Args:
        dft: Reference energies above the hull, eV/atom.
        predicted: Predicted energies above the hull (same order; non-finite ones are skipped).
        threshold: Stability threshold, eV/atom.

    Returns:
        ``n``, ``mae_ev``, ``mae_dft_stable_ev``, ``mae_dft_unstable_ev``, ``precision``,
        ``recall``, ``f1`` and ``accuracy`` (``None`` where undefined).
    """
    pairs = [
        (d, p) for d, p in zip(dft, predicted, strict=True) if math.isfinite(d) and math.isfinite(p)
    ]
    true = np.array([d <= threshold for d, _ in pairs], dtype=bool)
    pred = np.array([p <= threshold for _, p in pairs], dtype=bool)
    errors = np.array([abs(p - d) for d, p in pairs], dtype=float)
    tp = int((true & pred).sum())
    fp = int((~true & pred).sum())
    fn = int((true & ~pred).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else None
    )

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    return {
        "n": len(pairs),
        "mae_ev": mean(errors),
        "mae_dft_stable_ev": mean(errors[true]),
        "mae_dft_unstable_ev": mean(errors[~true]),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float((true == pred).mean()) if pairs else None,
    }


def _place(
    reference: ReferenceData, items: Sequence[_Item], energies: Sequence[float], key: str
) -> None:
    """Put ``energies`` (eV/atom, per item) on the hull without each item's own entry."""
    from crystalforge.tools.validators.hull import HullValidator

    candidates = [
        item.candidate.evolve(properties={"energy_per_atom": energy})
        for item, energy in zip(items, energies, strict=True)
    ]
    validator = HullValidator(
        reference=reference,
        exclude_ids={item.candidate.id: (item.material_id,) for item in items},
    )
    for item, verdict in zip(items, validator.validate(candidates), strict=True):
        value = verdict.metrics.get("e_above_hull")
        ok = verdict.passed and isinstance(value, float) and math.isfinite(value)
        item.predictions[key] = float(value) if ok else math.nan  # type: ignore[arg-type]


def _progress(label: str, done: int, total: int, started: float) -> None:
    print(
        f"[{SUITE}] {label}: {done}/{total} ({time.perf_counter() - started:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def run(options: SuiteOptions) -> SuiteResult:
    """Relax held-out rows with CHGNet and score their energy above hull against DFT.

    Args:
        options: ``quick`` (12 rows), ``limit`` (cap on rows, split half and half), ``seed``,
            ``device``, ``data_dir`` (required) and ``out_dir`` (the parity plot).

    Returns:
        One row per method (see the module docstring), notes with the anchor, the parity plot.

    Raises:
        DataError: no reference data folder.
    """
    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.reference_data import ReferenceData
    from crystalforge.tools.validators.chgnet import CHGNET_MODEL, CHGNetRelaxer
    from crystalforge.tools.validators.uncertainty import ALT_CHGNET_MODEL, static_energies

    if options.data_dir is None:
        raise DataError("hull-accuracy needs the offline reference data (--data-dir)")
    reference = ReferenceData.from_dir(options.data_dir)
    total = N_QUICK if options.quick else N_POSITIVES + N_NEGATIVES
    if options.limit is not None:
        total = max(0, min(total, options.limit))
    n_pos = (total + 1) // 2 if options.quick or options.limit is not None else N_POSITIVES
    n_neg = total - n_pos
    positives, negatives = sample_rows(
        options.data_dir, n_positives=n_pos, n_negatives=n_neg, seed=options.seed
    )
    items: list[_Item] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Issues encountered while parsing CIF")
        for source, frame in (("mp_20_biternary/test", positives), ("mpts_52/test", negatives)):
            records: list[dict[str, Any]] = frame.to_dict("records")
            for row in records:
                structure = Structure.from_str(str(row["cif"]), fmt="cif")
                candidate = Candidate.create(
                    structure,
                    generator=SUITE,
                    seed=options.seed,
                    parameters={"material_id": str(row["material_id"]), "source": source},
                )
                items.append(
                    _Item(
                        material_id=str(row["material_id"]),
                        source=source,
                        dft_e_hull=float(row["dft_e_hull"]),
                        dft_formation=float(row["formation_energy_per_atom"]),
                        candidate=candidate,
                    )
                )
    mu = reference.elemental_references()

    # The hull-mismatch floor: DFT energies on our hull (own entry left out).
    dft_energies = []
    for item in items:
        composition = item.candidate.structure.composition
        symbols = [el.symbol for el in composition]
        dft_energies.append(
            item.dft_formation
            + sum(composition.get_atomic_fraction(el) * mu[el.symbol] for el in composition)
            if all(symbol in mu for symbol in symbols)
            else math.nan
        )
    _place(reference, items, dft_energies, "dft")

    # Static CHGNet on the DFT structures.
    started = time.perf_counter()
    static = static_energies(
        [item.candidate.structure for item in items], model_name=CHGNET_MODEL, device=options.device
    )
    static_seconds = time.perf_counter() - started
    _place(reference, items, static, "static")

    # CHGNet relaxation (the pipeline's relaxer and settings), in chunks for progress.
    relaxer = CHGNetRelaxer(device=options.device)
    started = time.perf_counter()
    relaxed_candidates: list[Candidate] = []
    energies: list[float] = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        verdicts = relaxer.validate([item.candidate for item in chunk])
        for item, verdict in zip(chunk, verdicts, strict=True):
            energy = verdict.metrics.get("energy_per_atom")
            ok = verdict.passed and isinstance(energy, float) and math.isfinite(energy)
            energies.append(float(energy) if ok else math.nan)  # type: ignore[arg-type]
            item.extra = {
                "converged": verdict.metrics.get("converged"),
                "steps": verdict.metrics.get("steps"),
                "relax_seconds": verdict.metrics.get("relax_seconds"),
                "relax_error": None if verdict.passed else verdict.reason,
            }
            relaxed_candidates.append(
                item.candidate.evolve(structure=verdict.structure, properties=verdict.metrics)
            )
        _progress("relaxed", start + len(chunk), len(items), started)
    relax_seconds = time.perf_counter() - started
    for item, candidate in zip(items, relaxed_candidates, strict=True):
        item.candidate = candidate
    _place(reference, items, energies, "relaxed")

    # The uncertainty stage's second opinion: CHGNet 0.2.0 static on the relaxed structures.
    started = time.perf_counter()
    alt = static_energies(
        [item.candidate.structure for item in items],
        model_name=ALT_CHGNET_MODEL,
        device=options.device,
    )
    alt = [a if math.isfinite(e) else math.nan for a, e in zip(alt, energies, strict=True)]
    alt_seconds = time.perf_counter() - started
    _place(reference, items, alt, "alt")

    methods = (
        ("relaxed", f"CHGNet {CHGNET_MODEL} relaxed"),
        ("static", f"CHGNet {CHGNET_MODEL} static (DFT structure)"),
        ("alt", f"CHGNet {ALT_CHGNET_MODEL} static on the {CHGNET_MODEL}-relaxed structure"),
        ("dft", "DFT energy on our hull (hull-mismatch floor)"),
    )
    dft = [item.dft_e_hull for item in items]
    rows: list[dict[str, Scalar]] = []
    for key, label in methods:
        predicted = [item.predictions.get(key, math.nan) for item in items]
        scores = classification(dft, predicted)
        rows.append(
            {"method": label, "failed": len(items) - int(scores["n"] or 0), **scores}  # type: ignore[dict-item]
        )

    flips = [
        (r <= STABLE_THRESHOLD_EV) != (a <= STABLE_THRESHOLD_EV)
        for item in items
        if math.isfinite(r := item.predictions.get("relaxed", math.nan))
        and math.isfinite(a := item.predictions.get("alt", math.nan))
    ]
    wrong_when_flip = [
        (item.predictions["relaxed"] <= STABLE_THRESHOLD_EV)
        != (item.dft_e_hull <= STABLE_THRESHOLD_EV)
        for item in items
        if math.isfinite(r := item.predictions.get("relaxed", math.nan))
        and math.isfinite(a := item.predictions.get("alt", math.nan))
        and (r <= STABLE_THRESHOLD_EV) != (a <= STABLE_THRESHOLD_EV)
    ]
    converged = sum(1 for item in items if item.extra.get("converged") is True)
    notes = [
        f"{len(positives)} mp_20_biternary test rows (DFT e_above_hull <= 0.08) + "
        f"{len(negatives)} mpts_52 test rows (DFT energy_above_hull > {STABLE_THRESHOLD_EV:g}, "
        f"<= {MAX_ATOMS} atoms), seed {options.seed}; positive class: E_hull <= "
        f"{STABLE_THRESHOLD_EV:g} eV/atom.",
        f"Hull: {reference.name}, each material's own entry left out when it is scored; "
        "the DFT column is MP's own e_above_hull (its full hull), so the last row is the floor "
        "set by our smaller hull.",
        f"Relaxation: {relax_seconds:.0f} s for {len(items)} structures "
        f"({converged} converged within 300 FIRE steps at fmax 0.1 eV/Å); static 0.3.0 "
        f"{static_seconds:.0f} s, static 0.2.0 {alt_seconds:.0f} s.",
        f"Model disagreement: the 0.3.0 and 0.2.0 verdicts differ on {sum(flips)} of "
        f"{len(flips)} rows; where they differ the 0.3.0 verdict is wrong on "
        f"{sum(wrong_when_flip)} of {len(wrong_when_flip)}.",
        ANCHOR,
    ]
    band_gap = _band_gap_summary(options)
    notes.append(
        f"Band gap (the properties stage's composition model) on {band_gap['n']} held-out "
        f"mp_20_biternary/test rows: MAE {band_gap['mae_ev']:.3f} eV (metals "
        f"{band_gap['mae_metal_ev']:.3f}, gapped {band_gap['mae_gapped_ev']:.3f}; always-0 "
        "baseline in `crystalforge eval properties`)."
    )
    figures = []
    if options.out_dir is not None and items:
        figures.append(str(_parity_plot(items, options.out_dir / "hull-accuracy-parity.png")))
    return SuiteResult(
        suite=SUITE,
        title="CHGNet energy above hull vs held-out DFT (MP-20 offline hull)",
        columns=COLUMNS,
        rows=rows,
        notes=notes,
        figures=figures,
        metadata={
            "seed": options.seed,
            "quick": options.quick,
            "limit": options.limit,
            "n_positives": len(positives),
            "n_negatives": len(negatives),
            "threshold_ev": STABLE_THRESHOLD_EV,
            "reference": reference.name,
            "models": {"relaxer": CHGNET_MODEL, "alternative": ALT_CHGNET_MODEL},
            "seconds": {
                "relax": relax_seconds,
                "static": static_seconds,
                "alternative_static": alt_seconds,
            },
            "items": [_item_json(item) for item in items],
            "band_gap": band_gap,
        },
    )


def _band_gap_summary(options: SuiteOptions) -> dict[str, Scalar]:
    """Our band-gap model on held-out rows (all 7,118; 1,000 seeded with ``--quick``)."""
    from dataclasses import replace

    from crystalforge.evals.properties import band_gap_rows

    rows, _ = band_gap_rows(replace(options, limit=None))
    return rows[0]


def _item_json(item: _Item) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "material_id": item.material_id,
        "formula": item.candidate.formula,
        "n_atoms": len(item.candidate.structure),
        "source": item.source,
        "dft_e_hull": item.dft_e_hull,
        **{f"e_hull_{key}": clean(value) for key, value in item.predictions.items()},
        **item.extra,
    }


def _parity_plot(items: Sequence[_Item], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    dft = np.array([item.dft_e_hull for item in items])
    for key, label, style in (
        ("static", "static (DFT structure)", {"marker": "x", "color": "0.6", "s": 18}),
        ("relaxed", "relaxed", {"marker": "o", "color": "C0", "s": 14, "alpha": 0.8}),
    ):
        predicted = np.array([item.predictions.get(key, math.nan) for item in items])
        ax.scatter(dft, predicted, label=f"CHGNet {label}", **style)  # type: ignore[arg-type]
    finite = [
        v
        for item in items
        for v in (item.dft_e_hull, *item.predictions.values())
        if math.isfinite(v)
    ]
    low, high = min([*finite, -0.1]) - 0.05, max([*finite, 0.2]) + 0.05
    ax.plot([low, high], [low, high], color="k", lw=0.8)
    ax.axvline(STABLE_THRESHOLD_EV, color="C3", lw=0.6, ls="--")
    ax.axhline(STABLE_THRESHOLD_EV, color="C3", lw=0.6, ls="--")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("DFT E_hull (MP), eV/atom")
    ax.set_ylabel("CHGNet E_hull (MP-20 offline hull, own entry excluded), eV/atom")
    ax.set_title(f"hull-accuracy: {len(items)} held-out structures")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
