"""``crystalforge eval throughput``: batched vs one-by-one CHGNet relaxation, on the same cells.

Cells: ``n`` structures (64 by default, 8 with ``--quick``, capped by ``--limit``) drawn in a
seeded order from the held-out ``mp_20_biternary`` test rows with 5-20 atoms, each rattled
(Gaussian 0.05 Å per coordinate) and strained (symmetric, entries up to 2%) with the same seed,
so that every relaxation has work to do. All three methods relax the same cells in one process,
one after the other, with the same fmax (0.1 eV/Å), step budget (300) and CHGNet 0.3.0 weights:

1. ``StructOptimizer`` one by one (CHGNet's ASE path: FIRE + ``FrechetCellFilter``), with the
   torch thread count the batched engine uses (``torch.set_num_threads``; one by default, see
   below);
2. ``StructOptimizer`` one by one with CHGNet's out-of-the-box threading: torch's default
   intra-op thread count at start-up (one per core, here 2; CHGNet sets none). OpenBLAS stays at
   the one thread crystalforge sets before numpy loads, for every row. This row runs on the
   first :data:`OOTB_CELLS` cells only (on a shared machine it can be 20x slower than row 1);
   its speed-up is against row 1's time on the same cells;
3. :class:`~crystalforge.tools.validators.batch_relax.BatchRelaxer`, all cells in batches of
   up to ``max_atoms_per_batch`` atoms.

The table gives structures/s for each and the speed-up over row 1, and for row 3 the energy
agreement with row 1 (median, 90th percentile and max of |ΔE| in meV/atom): the batched engine
is correct if it lands where CHGNet's own optimizer lands.

Threads: on the reference machine (2 cores shared with other jobs) two torch threads per
process are several times *slower* than one when the other core is busy (OpenMP threads wait
on each other), which is why the default is one thread for both engines; pass another count
with ``CRYSTALFORGE_THROUGHPUT_THREADS``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.errors import DataError
from crystalforge.evals.base import Scalar, SuiteOptions, SuiteResult

if TYPE_CHECKING:
    from pathlib import Path

    from pymatgen.core import Structure

    from crystalforge.tools.validators.chgnet import DeviceChoice

logger = logging.getLogger(__name__)

DEFAULT_CELLS = 64
QUICK_CELLS = 8
MIN_ATOMS = 5
MAX_ATOMS = 20
RATTLE_A = 0.05
"""Standard deviation of the Gaussian displacement per Cartesian coordinate, Å."""
STRAIN = 0.02
"""Largest entry of the symmetric random strain."""
FMAX_EV_PER_A = 0.1
OOTB_CELLS = 8
"""Cells relaxed with the out-of-the-box thread setting (``CRYSTALFORGE_THROUGHPUT_OOTB_CELLS``)."""
MAX_STEPS = 300

COLUMNS = (
    "method",
    "torch_threads",
    "structures",
    "seconds",
    "structures_per_s",
    "speedup_vs_row1",
    "converged",
    "mean_steps",
    "dE_median_mev_per_atom",
    "dE_p90_mev_per_atom",
    "dE_max_mev_per_atom",
)


def load_cells(data_dir: Path, *, n: int, seed: int) -> list[Structure]:
    """``n`` rattled and strained MP-20 test cells with 5-20 atoms, in a seeded order.

    Args:
        data_dir: The reference data folder (holds ``mp_20_biternary/test.csv.gz``).
        n: Number of cells.
        seed: Seeds the row order, the rattle and the strain.

    Returns:
        The cells.

    Raises:
        DataError: the CSV cannot be read.
    """
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    path = data_dir / "mp_20_biternary" / "test.csv.gz"
    try:
        table = pd.read_csv(path, index_col=0, usecols=["material_id", "cif"])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the held-out MP-20 rows {str(path)!r}: {exc}") from exc
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    cifs = table["cif"].to_numpy()
    cells: list[Structure] = []
    for row in order:
        if len(cells) >= n:
            break
        structure = Structure.from_str(str(cifs[row]), fmt="cif")
        if not MIN_ATOMS <= len(structure) <= MAX_ATOMS:
            continue
        strain = rng.uniform(-STRAIN, STRAIN, size=(3, 3))
        deform = np.eye(3) + (strain + strain.T) / 2
        cart = structure.cart_coords @ deform + rng.normal(0.0, RATTLE_A, (len(structure), 3))
        cells.append(
            Structure(
                Lattice(structure.lattice.matrix @ deform),
                structure.species,
                cart,
                coords_are_cartesian=True,
            )
        )
    return cells


def _percentile(values: list[float], q: float) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else None


def _one_by_one(cells: list[Structure], device: Any) -> tuple[float, list[Any]]:
    from crystalforge.tools.validators.chgnet import relax_structure

    started = time.perf_counter()
    results = [
        relax_structure(cell, fmax_ev_per_a=FMAX_EV_PER_A, max_steps=MAX_STEPS, device=device)
        for cell in cells
    ]
    return time.perf_counter() - started, results


def run(options: SuiteOptions) -> SuiteResult:
    """Relax the same cells one by one (two thread settings) and batched; compare.

    Args:
        options: ``quick`` (8 cells), ``limit`` (cap), ``seed``, ``device`` and ``data_dir``
            (required).

    Returns:
        Rates (structures/s), speed-ups and the energy agreement.

    Raises:
        DataError: no reference data folder.
    """
    if options.data_dir is None:
        raise DataError(
            "throughput needs the offline reference data (--data-dir or CRYSTALFORGE_DATA_DIR) "
            "for its MP-20 test cells"
        )
    import torch

    from crystalforge.tools.validators.batch_relax import BatchRelaxer
    from crystalforge.tools.validators.chgnet import load_chgnet, resolve_device

    n = QUICK_CELLS if options.quick else DEFAULT_CELLS
    if options.limit is not None:
        n = min(n, options.limit)
    cells = load_cells(options.data_dir, n=n, seed=options.seed)
    count = len(cells)
    device: DeviceChoice = "cuda" if resolve_device(options.device) == "cuda" else "cpu"
    default_threads = torch.get_num_threads()
    threads = int(os.environ.get("CRYSTALFORGE_THROUGHPUT_THREADS", "1"))
    load_chgnet(device)

    torch.set_num_threads(threads)
    one_seconds, reference = _one_by_one(cells, device)
    ootb_count = min(count, int(os.environ.get("CRYSTALFORGE_THROUGHPUT_OOTB_CELLS", OOTB_CELLS)))
    torch.set_num_threads(default_threads)
    ootb_seconds, ootb = _one_by_one(cells[:ootb_count], device)
    one_seconds_subset = sum(r.seconds for r in reference[:ootb_count])
    relaxer = BatchRelaxer(
        fmax_ev_per_a=FMAX_EV_PER_A, max_steps=MAX_STEPS, device=device, num_threads=threads
    )
    started = time.perf_counter()
    batched = relaxer.relax(cells)
    batch_seconds = time.perf_counter() - started
    torch.set_num_threads(default_threads)

    deltas = [
        1000.0 * abs(b.energy_per_atom - r.energy_per_atom)
        for b, r in zip(batched, reference, strict=True)
    ]
    same_steps = sum(b.steps == r.steps for b, r in zip(batched, reference, strict=True))

    def row(
        method: str,
        n_threads: int,
        seconds: float,
        converged: int,
        steps: list[int],
        baseline: float = one_seconds,
    ) -> dict[str, Scalar]:
        return {
            "method": method,
            "torch_threads": n_threads,
            "structures": len(steps),
            "seconds": round(seconds, 2),
            "structures_per_s": round(len(steps) / seconds, 3) if seconds > 0 else None,
            "speedup_vs_row1": round(baseline / seconds, 2) if seconds > 0 else None,
            "converged": converged,
            "mean_steps": round(float(np.mean(steps)), 1) if steps else None,
            "dE_median_mev_per_atom": None,
            "dE_p90_mev_per_atom": None,
            "dE_max_mev_per_atom": None,
        }

    rows = [
        row(
            "StructOptimizer one by one (same threads)",
            threads,
            one_seconds,
            sum(r.converged for r in reference),
            [r.steps for r in reference],
        ),
        row(
            "StructOptimizer one by one (out-of-the-box threads)",
            default_threads,
            ootb_seconds,
            sum(r.converged for r in ootb),
            [r.steps for r in ootb],
            baseline=one_seconds_subset,
        ),
        row(
            "BatchRelaxer (batched)",
            threads,
            batch_seconds,
            sum(b.converged for b in batched),
            [b.steps for b in batched],
        ),
    ]
    median, p90, worst = (_percentile(deltas, q) for q in (50, 90, 100))
    summary = ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.4f}'}"
        for name, value in (("median", median), ("p90", p90), ("max", worst))
    )
    rows[-1]["dE_median_mev_per_atom"] = None if median is None else round(median, 4)
    rows[-1]["dE_p90_mev_per_atom"] = None if p90 is None else round(p90, 4)
    rows[-1]["dE_max_mev_per_atom"] = None if worst is None else round(worst, 4)
    errors = [b.error for b in batched if b.error]
    notes = [
        f"{count} MP-20 test cells ({MIN_ATOMS}-{MAX_ATOMS} atoms), seed {options.seed}, rattled "
        f"{RATTLE_A} Å and strained up to {STRAIN:.0%}; fmax {FMAX_EV_PER_A} eV/Å, "
        f"{MAX_STEPS} steps, device {device}.",
        f"Energy agreement, batched vs StructOptimizer (same cells), |ΔE| meV/atom: {summary}; "
        f"same step count on {same_steps}/{count}.",
        f"Out-of-the-box = torch's default intra-op threads ({default_threads}); "
        "OpenBLAS is one thread in every row. Row 2 ran on the first "
        f"{ootb_count} cells; its speed-up is against row 1 on those cells "
        f"({one_seconds_subset:.1f} s).",
    ]
    if errors:
        notes.append(f"batched errors: {errors}")
    return SuiteResult(
        suite="throughput",
        title="CHGNet relaxation throughput: batched vs one by one",
        columns=COLUMNS,
        rows=rows,
        notes=notes,
        metadata={
            "seed": options.seed,
            "cells": count,
            "atoms": [len(c) for c in cells],
            "device": device,
            "torch_threads": threads,
            "torch_default_threads": default_threads,
            "max_atoms_per_batch": relaxer.max_atoms_per_batch,
            "delta_mev_per_atom": [round(d, 5) for d in deltas],
            "steps_reference": [r.steps for r in reference],
            "steps_batched": [b.steps for b in batched],
        },
    )
