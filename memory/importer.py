"""``crystalforge data import <dir>``: load the offline reference data into the memory store.

Reads the layout of ``shared/data/README.md``:

* structure sets (CIF + DFT labels): ``mp_20_biternary/{test,val}.csv.gz`` and
  ``mpts_52/{test,val}.csv.gz`` by default (about 26k distinct materials, the novelty reference),
  optionally ``perov_5`` and ``carbon_24`` (ids prefixed ``perov5-`` / ``carbon24-``);
* hull entries without coordinates: the four ``mp20_hulls`` parquets (composition records,
  ``has_structure`` False; they serve chemical-system searches, not structure matching).

Rows are deduplicated by material id, first file first (the order above), and written in
batches, so the import is idempotent: running it again adds nothing, and an interrupted import
resumes where it stopped. A CIF that does not parse is reported with its id and reason and
skipped; the rest of the file is imported. The held-out convention is kept as metadata:
``held_out`` is True for ``mp_20_biternary/test`` rows and for ``mpts_52`` rows with those ids.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystalforge.core.errors import DataError
from crystalforge.memory.cif import CifError, cif_to_record
from crystalforge.memory.embeddings import composition_record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crystalforge.memory.chroma import ChromaMemory

logger = logging.getLogger(__name__)

DataSet = Literal["mp_20_biternary", "mpts_52", "perov_5", "carbon_24", "mp20_hulls"]
DEFAULT_SETS: tuple[DataSet, ...] = ("mp_20_biternary", "mpts_52", "mp20_hulls")
STRUCTURE_SETS: tuple[DataSet, ...] = ("mp_20_biternary", "mpts_52")
"""The ~26k structures with coordinates that the novelty screen compares against."""
ALL_SETS: tuple[DataSet, ...] = ("mp_20_biternary", "mpts_52", "perov_5", "carbon_24", "mp20_hulls")
_ID_PREFIX = {"perov_5": "perov5-", "carbon_24": "carbon24-"}
_PARQUETS = ("mace", "orb", "uma", "ensemble")
BATCH = 1000
"""Rows embedded and written per batch."""


@dataclass
class ImportReport:
    """What an import did."""

    added: int = 0
    existing: int = 0
    """Rows whose id was already stored (a repeated import)."""
    duplicates: int = 0
    """Rows skipped because an earlier file had the same material id."""
    bad: list[tuple[str, str]] = field(default_factory=list)
    """(material id, reason) of rows that could not be read."""
    seconds: float = 0.0
    per_file: dict[str, int] = field(default_factory=dict)
    """Rows read per file."""

    @property
    def rows(self) -> int:
        """Rows read in all."""
        return sum(self.per_file.values())


def _rows(
    root: Path, dataset: DataSet, held_out: set[str]
) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(file, row) pairs; a row is a ready entry dict, or an error string for a bad row."""
    import pandas as pd

    if dataset == "mp20_hulls":
        for name in _PARQUETS:
            relative = f"mp20_hulls/{name}_above_hull_dataset.parquet"
            path = root / relative
            try:
                frame = pd.read_parquet(
                    path,
                    columns=[
                        "material_id",
                        "species_at_sites",
                        "formation_energy_per_atom",
                        "band_gap",
                    ],
                )
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
            for mid, species, energy, gap in zip(
                frame["material_id"].tolist(),
                frame["species_at_sites"].tolist(),
                frame["formation_energy_per_atom"].tolist(),
                frame["band_gap"].tolist(),
                strict=True,
            ):
                yield (
                    relative,
                    {
                        "material_id": str(mid),
                        "record": composition_record(Counter(str(s) for s in species)),
                        "formation_energy_per_atom": _finite(energy),
                        "band_gap": _finite(gap),
                        "source": "mp20_hulls",
                        "held_out": False,
                    },
                )
        return
    for split in ("test", "val"):
        relative = f"{dataset}/{split}.csv.gz"
        path = root / relative
        try:
            frame = pd.read_csv(path, index_col=0)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
        if "cif" not in frame or "material_id" not in frame:
            raise DataError(f"{str(path)!r} has no 'cif' and 'material_id' columns")
        prefix = _ID_PREFIX.get(dataset, "")
        for row in frame.to_dict("records"):
            mid = prefix + str(row["material_id"])
            try:
                record = cif_to_record(str(row["cif"]))
            except CifError as exc:
                yield relative, f"{mid}\t{exc}"
                continue
            entry: dict[str, Any] = {
                "material_id": mid,
                "record": record,
                "source": dataset,
                "split": split,
                "held_out": (dataset == "mp_20_biternary" and split == "test")
                or (dataset == "mpts_52" and mid in held_out),
            }
            for column, key in (
                ("formation_energy_per_atom", "formation_energy_per_atom"),
                ("band_gap", "band_gap"),
                ("e_above_hull", "e_above_hull"),
                ("energy_above_hull", "e_above_hull"),
                ("spacegroup.number", "spacegroup"),
                ("energy_per_atom", "energy_per_atom"),
                ("heat_ref", "heat_ref"),
                ("ind_gap", "band_gap"),
                ("year", "year"),
            ):
                if column in row:
                    value = _finite(row[column])
                    if value is not None:
                        entry[key] = int(value) if key in ("spacegroup", "year") else value
            yield relative, entry


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def import_data_dir(
    store: ChromaMemory,
    root: Path | str,
    *,
    sets: Sequence[DataSet] = DEFAULT_SETS,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ImportReport:
    """Import a reference data folder into ``store`` (idempotent).

    Args:
        store: The memory store.
        root: The data folder (layout of ``shared/data/README.md``).
        sets: Which data sets, in priority order for duplicate ids.
        limit: Stop after this many rows in all (for quick benchmarks and tests).
        progress: ``(file, rows read from it, rows read in all)`` after each batch.

    Returns:
        Counts, bad rows and the wall time.

    Raises:
        DataError: the folder, or a file of a requested set, is missing or unreadable.
        ValueError: an unknown set name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"reference data folder {str(root)!r} does not exist")
    for name in sets:
        if name not in ALL_SETS:
            raise ValueError(f"unknown data set {name!r}; expected one of {ALL_SETS}")
    started = time.perf_counter()
    held_out = _held_out_ids(root) if "mpts_52" in sets else set()
    report = ImportReport()
    seen: set[str] = set()
    batch: list[dict[str, Any]] = []
    total_rows = 0

    def flush(file: str) -> None:
        if not batch:
            return
        counts = store.add_references(batch)
        report.added += counts["added"]
        report.existing += counts["existing"]
        batch.clear()
        if progress is not None:
            progress(file, report.per_file.get(file, 0), report.rows)

    current = ""
    for dataset in sets:
        for file, row in _rows(root, dataset, held_out):
            if file != current:
                flush(current)
                current = file
            if limit is not None and total_rows >= limit:
                break
            total_rows += 1
            report.per_file[file] = report.per_file.get(file, 0) + 1
            if isinstance(row, str):
                mid, _, reason = row.partition("\t")
                report.bad.append((mid, reason))
                logger.warning("skipping %s in %s: %s", mid, file, reason)
                continue
            if row["material_id"] in seen:
                report.duplicates += 1
                continue
            seen.add(row["material_id"])
            batch.append(row)
            if len(batch) >= BATCH:
                flush(file)
        flush(current)
    report.seconds = time.perf_counter() - started
    logger.info(
        "imported %d references (%d already stored, %d bad) from %s in %.1f s",
        report.added,
        report.existing,
        len(report.bad),
        root,
        report.seconds,
    )
    return report


def _held_out_ids(root: Path) -> set[str]:
    import pandas as pd

    path = root / "mp_20_biternary/test.csv.gz"
    if not path.exists():
        return set()
    return set(pd.read_csv(path, usecols=["material_id"])["material_id"].astype(str))


def count_rows(root: Path | str, sets: Sequence[DataSet] = DEFAULT_SETS) -> dict[str, int]:
    """Rows per file of the requested sets (for a progress bar's totals), without parsing CIFs."""
    import gzip

    import pandas as pd

    root = Path(root)
    out: dict[str, int] = {}
    for dataset in sets:
        if dataset == "mp20_hulls":
            import pyarrow.parquet as pq

            for name in _PARQUETS:
                relative = f"mp20_hulls/{name}_above_hull_dataset.parquet"
                if (root / relative).exists():
                    out[relative] = pq.ParquetFile(root / relative).metadata.num_rows
            continue
        for split in ("test", "val"):
            relative = f"{dataset}/{split}.csv.gz"
            path = root / relative
            if path.exists():
                with gzip.open(path, "rt") as handle:
                    out[relative] = len(pd.read_csv(handle, usecols=["material_id"]))
    return out
