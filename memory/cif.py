"""Read CIF text into a structure record quickly, with pymatgen as the fallback.

The reference CIFs (``mp_20_biternary``, ``mpts_52``) are P1 files written by pymatgen. Parsing
them with pymatgen's CifParser costs about 11 ms each on the reference machine (5 minutes for
26k structures); :func:`parse_p1_cif` reads exactly that layout (cell lengths and angles, the
``_atom_site`` loop, one ordered species per site, occupancy 1) in well under a millisecond and
returns ``None`` for anything else, which :func:`cif_to_record` hands to pymatgen.
"""

from __future__ import annotations

import logging
import math
import re
import warnings

import numpy as np

from crystalforge.memory.embeddings import structure_record

logger = logging.getLogger(__name__)

_CELL = re.compile(
    r"^_cell_(length_a|length_b|length_c|angle_alpha|angle_beta|angle_gamma)\s+([-0-9.eE+]+)", re.M
)
_SPACE_GROUP = re.compile(r"^_symmetry_Int_Tables_number\s+(\d+)", re.M)


class CifError(ValueError):
    """A CIF that cannot be read into a structure."""


def lattice_from_parameters(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Lattice vectors as rows (Å), in pymatgen's ``Lattice.from_parameters`` convention."""
    alpha_r, beta_r, gamma_r = (math.radians(x) for x in (alpha, beta, gamma))
    cos_a, cos_b, cos_g = math.cos(alpha_r), math.cos(beta_r), math.cos(gamma_r)
    sin_a, sin_b = math.sin(alpha_r), math.sin(beta_r)
    val = (cos_a * cos_b - cos_g) / (sin_a * sin_b)
    val = max(-1.0, min(1.0, val))
    gamma_star = math.acos(val)
    return np.array(
        [
            [a * sin_b, 0.0, a * cos_b],
            [-b * sin_a * math.cos(gamma_star), b * sin_a * math.sin(gamma_star), b * cos_a],
            [0.0, 0.0, c],
        ]
    )


def parse_p1_cif(text: str) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """Lattice ``(3, 3)`` Å, species and fractional coordinates ``(N, 3)`` of a P1 CIF.

    Returns:
        ``None`` when the text is not a plain ordered P1 CIF in pymatgen's layout.
    """
    group = _SPACE_GROUP.search(text)
    if group is None or group.group(1) != "1":
        return None
    cell = dict(_CELL.findall(text))
    if len(cell) != 6:
        return None
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "_atom_site_type_symbol")
    except StopIteration:
        return None
    headers: list[str] = []
    i = start
    while i < len(lines) and lines[i].strip().startswith("_atom_site"):
        headers.append(lines[i].strip())
        i += 1
    try:
        col_type = headers.index("_atom_site_type_symbol")
        col_x = headers.index("_atom_site_fract_x")
        col_y = headers.index("_atom_site_fract_y")
        col_z = headers.index("_atom_site_fract_z")
    except ValueError:
        return None
    col_occ = headers.index("_atom_site_occupancy") if "_atom_site_occupancy" in headers else None
    species: list[str] = []
    frac: list[tuple[float, float, float]] = []
    for line in lines[i:]:
        parts = line.split()
        if not parts or parts[0].startswith(("_", "loop_", "#")):
            break
        if len(parts) != len(headers):
            return None
        if col_occ is not None and abs(float(parts[col_occ]) - 1.0) > 1e-6:
            return None
        symbol = parts[col_type]
        if not symbol.isalpha():
            return None
        species.append(symbol)
        frac.append((float(parts[col_x]), float(parts[col_y]), float(parts[col_z])))
    if not species:
        return None
    lattice = lattice_from_parameters(
        *(
            float(cell[k])
            for k in (
                "length_a",
                "length_b",
                "length_c",
                "angle_alpha",
                "angle_beta",
                "angle_gamma",
            )
        )
    )
    return lattice, species, np.asarray(frac)


def cif_to_record(text: str) -> str:
    """The structure record (:func:`~crystalforge.memory.embeddings.structure_record`) of a CIF.

    Raises:
        CifError: pymatgen cannot read it either (the message says why).
    """
    import json

    parsed = parse_p1_cif(text)
    if parsed is not None:
        lattice, species, frac = parsed
        if abs(np.linalg.det(lattice)) > 1e-6:
            return json.dumps(
                {
                    "lattice": np.round(lattice, 6).tolist(),
                    "species": species,
                    "frac": np.round(frac, 6).tolist(),
                },
                separators=(",", ":"),
            )
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(text, fmt="cif")
    except Exception as exc:  # pymatgen raises ValueError, KeyError, IndexError, ...
        raise CifError(f"unreadable CIF ({type(exc).__name__}: {exc})") from exc
    if len(structure) == 0:
        raise CifError("CIF has no atoms")
    return structure_record(structure)
