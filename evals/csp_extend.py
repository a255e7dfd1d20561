r"""Grow ``k`` of a finished ``crystalforge eval csp`` diffusion run, or refine its relaxations.

``eval csp --json PATH`` dumps every sample to ``csp-samples-<method>.json.gz`` next to
``PATH``. This command reads that dump, draws ``--more`` diffusion samples for the same held-out
rows with another sampler seed, relaxes them with the same CHGNet settings, and with
``--refine`` relaxes every relaxed sample again as the suite's refinement does (fmax
:data:`~crystalforge.evals.csp.REFINE_FMAX`, at most
:data:`~crystalforge.evals.csp.REFINE_STEPS` more steps; samples already refined in the dump are
kept). It writes the merged dump and prints how the one-prediction-per-row selection (lowest
CHGNet energy among the first ``k`` samples, after the first relaxation and after refinement)
and the oracle any-of-``k`` grow with ``k``::

    python -m crystalforge.evals.csp_extend --more 5 --sample-seed 1 \
        --dump docs/results/csp-k5/csp-samples-diffusion.json.gz \
        --out docs/results/csp-k10/csp-samples-diffusion.json.gz
    python -m crystalforge.evals.csp_extend --more 0 --refine \
        --dump docs/results/csp-k10/csp-samples-diffusion.json.gz \
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import DataError
from crystalforge.evals.csp import (
    REFINE_FMAX,
    REFINE_STEPS,
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

Draws = list[list["Structure | None"]]
"""``draws[j][i]``: sample ``j`` of row ``i``."""


@dataclass
class SampleDump:
    """What ``eval csp`` dumps: ids, raw and relaxed samples, energies, refinement if run."""

    material_ids: list[str]
    raw: Draws
    relaxed: Draws
    energies: list[list[float]]
    refined: Draws | None = None
    refined_energies: list[list[float]] | None = None

    @property
    def refinement(self) -> tuple[Draws, list[list[float]]] | None:
        """Refined samples and their energies, or ``None`` when the dump has none."""
        if self.refined is None or self.refined_energies is None:
            return None
        return self.refined, self.refined_energies


def read_samples(path: Path) -> SampleDump:
    """Read a dump written by :func:`crystalforge.evals.csp.write_samples`.

    Raises:
        DataError: The file is not such a dump.
    """
    from pymatgen.core import Structure

    try:
        with gzip.open(path, "rt") as handle:
            payload: dict[str, Any] = json.load(handle)

        def structures(key: str) -> Draws:
            return [
                [None if d is None else Structure.from_dict(d) for d in draw]
                for draw in payload[key]
            ]

        def numbers(key: str) -> list[list[float]]:
            return [[math.nan if e is None else float(e) for e in draw] for draw in payload[key]]

        refined = "refined" in payload
        return SampleDump(
            material_ids=[str(x) for x in payload["material_ids"]],
            raw=structures("raw"),
            relaxed=structures("relaxed"),
            energies=numbers("energies_ev_per_atom"),
            refined=structures("refined") if refined else None,
            refined_energies=numbers("refined_energies_ev_per_atom") if refined else None,
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{str(path)!r} is not a csp sample dump: {exc}") from exc


def growth_table(
    truth: Sequence[Structure], relaxed: Draws, energies: list[list[float]]
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
    """Extend or refine a dump, write the merged one and print the growth table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dump", type=Path, required=True, help="csp-samples-diffusion.json.gz")
    parser.add_argument("--more", type=int, default=5, help="extra samples per row (0: none)")
    parser.add_argument("--sample-seed", type=int, default=1, help="seed of the extra samples")
    parser.add_argument("--row-seed", type=int, default=0, help="the eval's --seed (row draw)")
    parser.add_argument(
        "--refine", action="store_true", help="relax every relaxed sample again, tighter"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="merged dump to write")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.more < 0:
        parser.error(f"--more must be >= 0, got {args.more}")
    if args.more == 0 and not args.refine:
        parser.error("nothing to do: give --more N (N >= 1) or --refine")
    dump = read_samples(args.dump)
    rows = sample_rows(args.data_dir, len(dump.material_ids), args.row_seed)
    if [row.material_id for row in rows] != dump.material_ids:
        raise DataError(
            f"{str(args.dump)!r} holds other rows than --row-seed {args.row_seed} draws; "
            "pass the --seed of the eval that wrote it"
        )
    old = len(dump.raw)
    if args.more:
        extra = diffusion_samples(rows, args.more, args.sample_seed, args.device, None)
        extra_relaxed, extra_energies = relax_all(extra, RELAX_STEPS, args.device)
        dump.raw += extra
        dump.relaxed += extra_relaxed
        dump.energies += extra_energies
    if args.refine or dump.refined is not None:
        done = len(dump.refined) if dump.refined is not None else 0
        more, more_energies = relax_all(
            dump.relaxed[done:], REFINE_STEPS, args.device, fmax=REFINE_FMAX
        )
        dump.refined = (dump.refined or []) + more
        dump.refined_energies = (dump.refined_energies or []) + more_energies
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_samples(args.out, rows, dump.raw, dump.relaxed, dump.energies, dump.refinement)
    print_growth(rows, dump, old, args)
    return 0


def print_growth(rows: Sequence[Any], dump: SampleDump, old: int, args: argparse.Namespace) -> None:
    """The Markdown growth table of a merged dump."""
    truth = [row.truth for row in rows]
    n = len(rows)
    print(f"{n} held-out rows; samples 1-{old} from {args.dump}", end="")
    print(f", {old + 1}-{len(dump.raw)} with sampler seed {args.sample_seed}" if args.more else "")

    def share(count: int) -> str:
        return f"{count}/{n} ({100 * count / n:.0f} %)"

    columns = ["k", "lowest CHGNet energy of the first k (match@1)"]
    refined = None
    if dump.refinement is not None:
        refined = growth_table(truth, *dump.refinement)
        columns.append("the same after refinement (match@1)")
    columns.append("any of the first k relaxed (oracle)")
    if refined is not None:
        columns.append("any of the first k refined (oracle)")
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for index, (k, best, anyk) in enumerate(growth_table(truth, dump.relaxed, dump.energies)):
        cells = [str(k), share(best)]
        if refined is not None:
            cells.append(share(refined[index][1]))
        cells.append(share(anyk))
        if refined is not None:
            cells.append(share(refined[index][2]))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
