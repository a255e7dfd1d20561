"""Learn the Wyckoff priors of :mod:`crystalforge.generators.priors` from the training rows.

Usage (from the project root)::

    python -m crystalforge.generators.train_priors --data-dir ../shared/data \
        --out generators/data/wyckoff_priors.json

Rows used (the convention of ``shared/data/README.md``, "How crystalforge uses these files"):
``mp_20_biternary/val.csv.gz`` plus ``mpts_52/test.csv.gz`` and ``mpts_52/val.csv.gz``, minus every
``material_id`` of the held-out ``mp_20_biternary/test.csv.gz``, deduplicated by ``material_id``
(first occurrence wins, in that file order). The held-out file is read for its ids only. Every
remaining row is used (no subsampling); the output is deterministic (sorted keys, no timestamps).

Each CIF is parsed with pymatgen and analysed with spglib through
:class:`~pymatgen.symmetry.analyzer.SpacegroupAnalyzer` (``symprec`` 0.1 Å,
``angle_tolerance`` 5°); Wyckoff letters are those of the symmetrized structure in the standard
setting, the setting PyXtal uses. Measured 2026-11-23: about 7 ms per row, 2-3 minutes in all on
one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalforge.generators.priors import (
    FORMAT_VERSION,
    combination_key,
    general_multiplicity,
    wyckoff_label,
)
from crystalforge.generators.symmetry import CENTERING_MULTIPLICITY

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

TRAINING_FILES = ("mp_20_biternary/val.csv.gz", "mpts_52/test.csv.gz", "mpts_52/val.csv.gz")
"""Files whose rows (minus held-out ids) the priors are learned from, in dedup order."""
HELD_OUT_FILE = "mp_20_biternary/test.csv.gz"
"""Held-out rows: never learned from; their ids are removed from the training files."""
SYMPREC = 0.1
"""spglib distance tolerance, Å."""
ANGLE_TOLERANCE = 5.0
"""spglib angle tolerance, degrees."""


def training_rows(data_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The training rows (``material_id``, ``cif``, ``source``) and a summary of the selection."""
    held_out = set(pd.read_csv(data_dir / HELD_OUT_FILE, usecols=["material_id"]).material_id)
    frames = []
    summary: dict[str, Any] = {"held_out_file": HELD_OUT_FILE, "held_out_ids": len(held_out)}
    per_file: dict[str, dict[str, int]] = {}
    for name in TRAINING_FILES:
        frame = pd.read_csv(
            data_dir / name, index_col=0, usecols=["Unnamed: 0", "material_id", "cif"]
        )
        kept = frame[~frame.material_id.isin(held_out)].assign(source=name)
        per_file[name] = {"rows": len(frame), "held_out_removed": len(frame) - len(kept)}
        frames.append(kept)
    rows = pd.concat(frames, ignore_index=True)
    before = len(rows)
    rows = rows.drop_duplicates("material_id", keep="first").reset_index(drop=True)
    summary.update(files=per_file, duplicates_removed=before - len(rows), training_rows=len(rows))
    return rows, summary


def analyse(cif: str) -> dict[str, Any] | None:
    """Space group, Wyckoff groups per element and cell size of one CIF; ``None`` if unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
        if not structure.is_ordered:
            return None
        analyzer = SpacegroupAnalyzer(structure, symprec=SYMPREC, angle_tolerance=ANGLE_TOLERANCE)
        symmetrized = analyzer.get_symmetrized_structure()
        number = analyzer.get_space_group_number()
        symbol = analyzer.get_space_group_symbol()
    # pymatgen's wyckoff_symbols count the sites of the input cell; the letter is spglib's
    # (standard setting), and the conventional multiplicity comes from PyXtal's tables.
    by_element: dict[str, list[str]] = defaultdict(list)
    for sites, symbol_ in zip(
        symmetrized.equivalent_sites, symmetrized.wyckoff_symbols, strict=True
    ):
        by_element[sites[0].specie.symbol].append(wyckoff_label(number, symbol_[-1]))
    conventional_atoms = sum(int(letter[:-1]) for v in by_element.values() for letter in v)
    centering = CENTERING_MULTIPLICITY.get(symbol[0], 1)
    if conventional_atoms % centering:
        return None
    composition = structure.composition
    return {
        "space_group": number,
        "sites": dict(by_element),
        "num_atoms": conventional_atoms // centering,
        "num_elements": len(by_element),
        "anonymous_formula": composition.anonymized_formula,
    }


def learn(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate analysed rows into the prior tables (all counts)."""
    sg_all: Counter[int] = Counter()
    sg_by_elements: dict[int, Counter[int]] = defaultdict(Counter)
    sg_by_atoms: dict[int, Counter[int]] = defaultdict(Counter)
    atoms_all: Counter[int] = Counter()
    atoms_by_elements: dict[int, Counter[int]] = defaultdict(Counter)
    anonymous: Counter[str] = Counter()
    combinations: dict[int, Counter[str]] = defaultdict(Counter)
    element_orders: dict[str, Counter[int]] = defaultdict(Counter)
    for record in records:
        sg, n_el, n_at = record["space_group"], record["num_elements"], record["num_atoms"]
        sg_all[sg] += 1
        sg_by_elements[n_el][sg] += 1
        sg_by_atoms[n_at][sg] += 1
        atoms_all[n_at] += 1
        atoms_by_elements[n_el][n_at] += 1
        anonymous[record["anonymous_formula"]] += 1
        combinations[sg][combination_key(record["sites"].values())] += 1
        general = general_multiplicity(sg)
        for element, letters in record["sites"].items():
            for letter in letters:
                element_orders[element][general // int(letter[:-1])] += 1

    def table(counter: Counter[Any]) -> dict[str, int]:
        return {str(k): v for k, v in sorted(counter.items())}

    def nested(counters: dict[Any, Counter[Any]]) -> dict[str, dict[str, int]]:
        return {str(k): table(v) for k, v in sorted(counters.items())}

    return {
        "space_groups": {
            "all": table(sg_all),
            "by_num_elements": nested(sg_by_elements),
            "by_num_atoms": nested(sg_by_atoms),
        },
        "num_atoms": {"all": table(atoms_all), "by_num_elements": nested(atoms_by_elements)},
        "anonymous_formulas": table(anonymous),
        "wyckoff_combinations": nested(combinations),
        "element_site_orders": nested(element_orders),
    }


_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+'([^']+)'")
_CELL_VOLUME = re.compile(r"_cell_volume\s+([0-9.eE+-]+)")
_FORMULA_TERM = re.compile(r"([A-Z][a-z]?)([0-9.]*)")


def cell_record(cif: str) -> dict[str, Any] | None:
    """Atoms per element and cell volume (Å^3) of a pymatgen-written CIF, from its header.

    Reads ``_chemical_formula_sum`` and ``_cell_volume`` (every MP-20 / MPTS-52 CIF has both)
    with regular expressions, about 1000x faster than parsing the structure; ``None`` when
    either is missing.
    """
    formula, volume = _FORMULA_SUM.search(cif), _CELL_VOLUME.search(cif)
    if formula is None or volume is None:
        return None
    counts: dict[str, float] = {}
    for element, number in _FORMULA_TERM.findall(formula.group(1)):
        counts[element] = counts.get(element, 0.0) + float(number or 1)
    return {"element_counts": counts, "volume": float(volume.group(1))} if counts else None


def element_volumes(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Volume per atom of each element, Å^3, fitted so that cell volume ~ sum of atom volumes.

    Non-negative least squares of ``V_cell = sum_el n_el * v_el`` over all records (rows
    weighted by ``1 / atoms`` so that large cells do not dominate); elements seen in fewer than
    5 rows are left out (the generator falls back to PyXtal's own volume for them). Rounded to
    0.01 Å^3 so that the JSON is stable.
    """
    from scipy.optimize import nnls

    usable = [r for r in records if "element_counts" in r]
    seen: Counter[str] = Counter(el for r in usable for el in r["element_counts"])
    elements = sorted(el for el, n in seen.items() if n >= 5)
    index = {el: i for i, el in enumerate(elements)}
    rows = [r for r in usable if all(el in index for el in r["element_counts"])]
    if not rows:
        return {}
    matrix = np.zeros((len(rows), len(elements)))
    target = np.zeros(len(rows))
    for i, record in enumerate(rows):
        atoms = sum(record["element_counts"].values())
        for el, n in record["element_counts"].items():
            matrix[i, index[el]] = n / atoms
        target[i] = record["volume"] / atoms
    solution, _residual = nnls(matrix, target)
    return {el: round(float(v), 2) for el, v in zip(elements, solution, strict=True) if v > 0}


def main(argv: Sequence[str] | None = None) -> int:
    """Learn the priors and write them as JSON; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "data" / "wyckoff_priors.json"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N rows only (testing)")
    parser.add_argument(
        "--reuse-tables",
        type=Path,
        default=None,
        help=(
            "keep the spglib tables of this priors JSON (learned from the same rows) and only "
            "refit element_volumes; minutes instead of an hour on a loaded machine"
        ),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    rows, summary = training_rows(args.data_dir)
    if args.limit is not None:
        rows = rows.head(args.limit)
        summary["limit"] = args.limit
    cells = [c for c in (cell_record(cif) for cif in rows.cif) if c is not None]
    volumes = element_volumes(cells)
    if args.reuse_tables is not None:
        previous = json.loads(args.reuse_tables.read_text())
        if previous.get("source", {}).get("training_rows") != summary["training_rows"]:
            parser.error(f"{args.reuse_tables} was learned from other rows; retrain without it")
        tables = {
            k: v for k, v in previous.items() if k not in ("format", "source", "element_volumes")
        }
        summary = {**previous["source"], "element_volume_rows": len(cells), "tables_reused": True}
        payload = {"format": FORMAT_VERSION, "source": summary, **tables}
        payload["element_volumes"] = volumes
        return _write(args.out, payload, started, len(cells), 0)
    records = []
    skipped = 0
    for index, cif in enumerate(rows.cif):
        try:
            record = analyse(cif)
        except (ValueError, KeyError) as exc:  # unreadable CIF or spglib failure
            logger.warning("skipping row %d (%s): %s", index, rows.material_id[index], exc)
            record = None
        if record is None:
            skipped += 1
            continue
        records.append(record)
        if (index + 1) % 2000 == 0:
            logger.info("%d / %d rows, %.0f s", index + 1, len(rows), time.perf_counter() - started)
    summary.update(
        analysed=len(records),
        skipped=skipped,
        symprec=SYMPREC,
        angle_tolerance=ANGLE_TOLERANCE,
        rule=(
            "mp_20_biternary/val + mpts_52/test + mpts_52/val, minus material_ids of "
            "mp_20_biternary/test, deduplicated by material_id; num_atoms per primitive cell; "
            "element_volumes: NNLS fit of volume per atom"
        ),
    )
    summary["element_volume_rows"] = len(cells)
    payload = {"format": FORMAT_VERSION, "source": summary, **learn(records)}
    payload["element_volumes"] = volumes
    return _write(args.out, payload, started, len(records), skipped)


def _write(out: Path, payload: dict[str, Any], started: float, rows: int, skipped: int) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n")
    logger.info(
        "wrote %s (%d bytes) from %d rows (%d skipped) in %.0f s",
        out, out.stat().st_size, rows, skipped, time.perf_counter() - started,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
