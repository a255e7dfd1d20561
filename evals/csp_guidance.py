"""Formation-energy guidance of the diffusion model, measured: ``python -m`` this module.

The same held-out compositions (:func:`crystalforge.evals.csp.sample_rows`, true atom counts)
are sampled with the same seed in several arms: unconditioned, and conditioned on a target
formation energy with classifier-free guidance weights ``w`` (``--weights``). The target of a
row is its DFT formation energy (the held-out label of the ground state) plus ``--shift``. Every
sample is relaxed with CHGNet (:func:`crystalforge.evals.csp.relax_all`); its formation energy
is the CHGNet energy per atom minus the MP elemental references. Because every arm has the same
compositions, per-row differences against the unconditioned arm measure what the guidance does.

Reported per arm: mean CHGNet formation energy, the mean paired difference to the unconditioned
arm with its standard error, mean distance to the target, and the CSP match counts (raw and
relaxed) against the held-out structures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

logger = logging.getLogger(__name__)


def formation_energies(
    structures: Sequence[Structure | None], energies: Sequence[float], mu: dict[str, float]
) -> list[float]:
    """CHGNet formation energy per atom (eV/atom) from energies per atom; NaN when unknown."""
    out: list[float] = []
    for structure, energy in zip(structures, energies, strict=True):
        if structure is None or not math.isfinite(energy):
            out.append(math.nan)
            continue
        composition = structure.composition.fractional_composition
        reference = sum(float(x) * mu[el.symbol] for el, x in composition.items())
        out.append(energy - reference)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the arms and print (and write) the table."""
    from crystalforge.evals.csp import match_metrics, relax_all, sample_rows
    from crystalforge.generators.diffusion.generator import (
        DEFAULT_CHECKPOINT,
        load_model,
        sample_structures,
    )
    from crystalforge.memory.reference_data import ReferenceData

    parser = argparse.ArgumentParser(description="Measure formation-energy guidance.")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--weights", default="0,2", help="comma-separated guidance weights")
    parser.add_argument("--shift", type=float, default=0.0, help="target = DFT + shift, eV/atom")
    parser.add_argument("--relax-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    rows = sample_rows(args.data_dir, args.rows, args.seed)
    loaded = load_model(args.checkpoint, args.device)
    seen = loaded.element_counts
    rows = [r for r in rows if not seen or all(seen.get(e, 0) for e in r.species)]
    mu = ReferenceData.from_dir(args.data_dir).elemental_references()
    rows = [r for r in rows if all(e in mu for e in r.species)]
    truth = [r.truth for r in rows]
    targets = [r.formation_energy + args.shift for r in rows]
    arms: list[tuple[str, float | None]] = [("unconditioned", None)]
    arms += [(f"target, w={w:g}", float(w)) for w in map(float, args.weights.split(","))]
    results: list[dict[str, Any]] = []
    base: np.ndarray | None = None
    for label, weight in arms:
        samples = sample_structures(
            loaded,
            [r.species for r in rows],
            seed=args.seed,
            target_formation_energy=None if weight is None else targets,
            guidance=weight or 0.0,
        )
        relaxed, energies = relax_all([list(samples)], args.relax_steps, args.device)
        form = np.array(formation_energies(relaxed[0], energies[0], mu))
        if base is None:
            base = form
        diff = form - base
        ok = np.isfinite(diff)
        raw, rel = match_metrics(list(samples), truth), match_metrics(relaxed[0], truth)
        results.append(
            {
                "arm": label,
                "rows": len(rows),
                "relaxed": int(np.isfinite(form).sum()),
                "mean_e_form_ev": float(np.nanmean(form)),
                "paired_diff_ev": float(diff[ok].mean()) if ok.any() else math.nan,
                "paired_diff_se_ev": float(diff[ok].std(ddof=1) / math.sqrt(ok.sum()))
                if ok.sum() > 1
                else math.nan,
                "mean_abs_to_target_ev": float(np.nanmean(np.abs(form - np.array(targets)))),
                "matched_raw": raw.matched,
                "matched_relaxed": rel.matched,
            }
        )
        logger.info("%s", results[-1])
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in results:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "arms": results,
            "material_ids": [r.material_id for r in rows],
            "args": {k: str(v) for k, v in vars(args).items()},
            "seconds": round(time.perf_counter() - started, 1),
        }
        args.out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
