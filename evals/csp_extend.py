r"""Grow ``k`` of a finished ``crystalforge eval csp`` diffusion run without redoing its samples.

``eval csp --json PATH`` dumps every sample to ``csp-samples-<method>.json.gz`` next to
``PATH``. This command reads that dump, draws ``--more`` diffusion samples for the same held-out
rows with another sampler seed, relaxes them with the same CHGNet settings, writes the merged
dump and prints how the one-prediction-per-row selection (lowest CHGNet energy among the first
``k`` relaxed samples) and the oracle any-of-``k`` grow with ``k``::

    python -m crystalforge.evals.csp_extend --more 5 --sample-seed 1 \
        --dump docs/results/csp-k5/csp-samples-diffusion.json.gz \
        --out docs/results/csp-k10/csp-samples-diffusion.json.gz

The rows are re-drawn from the dump's own seed and checked against its material ids, so a
dump of other rows is refused.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import DataError
from crystalforge.evals.csp import (
    RELAX_STEPS,
    any_of_k_metrics,
    best_by_energy,
    diffusion_samples,
    match_metrics,
    relax_all,
    sample_rows,
    write_samples,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure


def read_samples(
    path: Path,
) -> tuple[
    list[str], list[list[Structure | None]], list[list[Structure | None]], list[list[float]]
]:
    """Material ids, raw samples, relaxed samples and energies of a dump (``[j][i]``)."""
    from pymatgen.core import Structure

    try:
        with gzip.open(path, "rt") as handle:
            payload: dict[str, Any] = json.load(handle)
        ids = [str(x) for x in payload["material_ids"]]

        def structures(key: str) -> list[list[Structure | None]]:
            return [
                [None if d is None else Structure.from_dict(d) for d in draw]
                for draw in payload[key]
            ]

        energies = [
            [math.nan if e is None else float(e) for e in draw]
            for draw in payload["energies_ev_per_atom"]
        ]
        return ids, structures("raw"), structures("relaxed"), energies
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{str(path)!r} is not a csp sample dump: {exc}") from exc


def growth_table(
    truth: Sequence[Structure],
    relaxed: list[list[Structure | None]],
    energies: list[list[float]],
) -> list[tuple[int, int, int]]:
    """For k = 1..K: (k, matched by lowest energy of the first k, matched by any of them)."""
    return [
        (
            k,
            match_metrics(best_by_energy(relaxed[:k], energies[:k]), truth).matched,
            any_of_k_metrics(relaxed[:k], truth).matched,
        )
        for k in range(1, len(relaxed) + 1)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Extend a dump, write the merged one and print the growth table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dump", type=Path, required=True, help="csp-samples-diffusion.json.gz")
    parser.add_argument("--more", type=int, default=5, help="extra samples per row")
    parser.add_argument("--sample-seed", type=int, default=1, help="seed of the extra samples")
    parser.add_argument("--row-seed", type=int, default=0, help="the eval's --seed (row draw)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="merged dump to write")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.more < 1:
        parser.error(f"--more must be >= 1, got {args.more}")
    ids, raw, relaxed, energies = read_samples(args.dump)
    rows = sample_rows(args.data_dir, len(ids), args.row_seed)
    if [row.material_id for row in rows] != ids:
        raise DataError(
            f"{str(args.dump)!r} holds other rows than --row-seed {args.row_seed} draws; "
            "pass the --seed of the eval that wrote it"
        )
    extra = diffusion_samples(rows, args.more, args.sample_seed, args.device, None)
    extra_relaxed, extra_energies = relax_all(extra, RELAX_STEPS, args.device)
    raw, relaxed, energies = raw + extra, relaxed + extra_relaxed, energies + extra_energies
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_samples(args.out, rows, raw, relaxed, energies)
    truth = [row.truth for row in rows]
    print(
        f"{len(rows)} held-out rows; samples 1-{len(raw) - args.more} from {args.dump}, "
        f"{len(raw) - args.more + 1}-{len(raw)} with sampler seed {args.sample_seed}"
    )
    print(
        "| k | lowest CHGNet energy of the first k (match@1) | any of the first k relaxed (oracle) "
        "|"
    )
    print("| --- | --- | --- |")
    n = len(rows)
    for k, best, anyk in growth_table(truth, relaxed, energies):
        print(
            f"| {k} | {best}/{n} ({100 * best / n:.0f} %) | {anyk}/{n} ({100 * anyk / n:.0f} %) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
