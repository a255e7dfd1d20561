"""Training rows and tensors for the diffusion model.

Rows follow the split convention of ``shared/data/README.md``: ``mp_20_biternary/val.csv.gz``
plus ``mpts_52/{test,val}.csv.gz`` minus every ``material_id`` of the held-out
``mp_20_biternary/test.csv.gz`` (read for its ids only), deduplicated by ``material_id``, then
restricted to cells of at most :data:`MAX_ATOMS` atoms. Each CIF becomes its Niggli-reduced cell:
lattice parameters (a, b, c in Å; α, β, γ in degrees), fractional coordinates in [0, 1) and
atomic numbers.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

TRAINING_FILES = ("mp_20_biternary/val.csv.gz", "mpts_52/test.csv.gz", "mpts_52/val.csv.gz")
"""Files whose rows (minus held-out ids) the model is trained on, in dedup order."""
HELD_OUT_FILE = "mp_20_biternary/test.csv.gz"
"""Held-out rows: never trained on; their ids are removed from the training files."""
MAX_ATOMS = 20
"""Largest cell (atoms) kept for training, as in MP-20."""


@dataclass(frozen=True)
class Crystal:
    """One cell as arrays.

    Attributes:
        lattice: Lattice parameters, shape ``(6,)``: a, b, c in Å, α, β, γ in degrees.
        frac: Fractional coordinates in [0, 1), shape ``(N, 3)``.
        numbers: Atomic numbers, shape ``(N,)``.
        energy: Formation energy per atom in eV/atom (NaN when unknown).
    """

    lattice: np.ndarray
    frac: np.ndarray
    numbers: np.ndarray
    energy: float


def crystal_from_structure(structure: Structure, energy: float = float("nan")) -> Crystal:
    """The Niggli-reduced cell of ``structure`` as a :class:`Crystal`."""
    reduced = structure.get_reduced_structure()
    lat = reduced.lattice
    return Crystal(
        lattice=np.array([*lat.abc, *lat.angles], dtype=np.float32),
        frac=np.mod(reduced.frac_coords, 1.0).astype(np.float32),
        numbers=np.array([site.specie.Z for site in reduced], dtype=np.int64),
        energy=float(energy),
    )


def training_frame(data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Training rows (``material_id``, ``cif``, ``formation_energy_per_atom``) and a summary."""
    import pandas as pd

    held_out = set(pd.read_csv(data_dir / HELD_OUT_FILE, usecols=["material_id"]).material_id)
    frames = []
    summary: dict[str, Any] = {"held_out_file": HELD_OUT_FILE, "held_out_ids": len(held_out)}
    for name in TRAINING_FILES:
        frame = pd.read_csv(
            data_dir / name, usecols=["material_id", "cif", "formation_energy_per_atom"]
        )
        kept = frame[~frame.material_id.isin(held_out)]
        summary[name] = {"rows": len(frame), "held_out_removed": len(frame) - len(kept)}
        frames.append(kept)
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("material_id", keep="first")
    summary["deduplicated_rows"] = len(rows)
    return rows.reset_index(drop=True), summary


def load_crystals(data_dir: Path, cache: Path | None = None) -> tuple[list[Crystal], list[str]]:
    """Parse the training rows into crystals of at most :data:`MAX_ATOMS` atoms.

    Args:
        data_dir: The shared data folder.
        cache: Optional ``.npz`` path; read if present, written after parsing otherwise.

    Returns:
        The crystals and their material ids, in row order.
    """
    if cache is not None and cache.exists():
        return _read_cache(cache)
    from pymatgen.core import Structure

    rows, summary = training_frame(data_dir)
    logger.info("training rows: %s", summary)
    crystals: list[Crystal] = []
    ids: list[str] = []
    for material_id, cif, energy in zip(
        rows.material_id, rows.cif, rows.formation_energy_per_atom, strict=True
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
        if len(structure) > MAX_ATOMS or not structure.is_ordered:
            continue
        crystals.append(crystal_from_structure(structure, energy))
        ids.append(str(material_id))
    if cache is not None:
        _write_cache(cache, crystals, ids)
    return crystals, ids


def _write_cache(path: Path, crystals: list[Crystal], ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.array([len(c.numbers) for c in crystals])
    np.savez_compressed(
        path,
        lattice=np.stack([c.lattice for c in crystals]),
        frac=np.concatenate([c.frac for c in crystals]),
        numbers=np.concatenate([c.numbers for c in crystals]),
        energy=np.array([c.energy for c in crystals]),
        counts=counts,
        ids=np.array(ids),
    )


def _read_cache(path: Path) -> tuple[list[Crystal], list[str]]:
    # Each ``data[key]`` of an npz decompresses the array again: read every array once.
    with np.load(path) as data:
        arrays = {key: data[key] for key in ("lattice", "frac", "numbers", "energy", "counts")}
        ids = [str(x) for x in data["ids"]]
    offsets = np.concatenate([[0], np.cumsum(arrays["counts"])])
    crystals = [
        Crystal(
            lattice=arrays["lattice"][i],
            frac=arrays["frac"][offsets[i] : offsets[i + 1]],
            numbers=arrays["numbers"][offsets[i] : offsets[i + 1]],
            energy=float(arrays["energy"][i]),
        )
        for i in range(len(arrays["counts"]))
    ]
    return crystals, ids
