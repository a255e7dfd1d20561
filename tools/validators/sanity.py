"""Geometric sanity checks: the cheapest validator, run first.

Rejects structures no later stage can handle: no sites, unknown (dummy) species, partial
occupancies, non-finite numbers, degenerate lattices, too many atoms, implausible volume per
atom, vacuum layers (slabs) and overlapping atoms. Later validators call
:func:`malformed_reason` themselves before handing a structure to spglib or CHGNet, because
spglib crashes the process (segmentation fault) on NaN coordinates.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Element

from crystalforge.core.candidate import Verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate

MIN_CELL_VOLUME_A3 = 1e-3
"""Cells smaller than this (Å^3) are degenerate (collinear or coplanar lattice vectors)."""


def malformed_reason(structure: Structure) -> str | None:
    """Why a structure cannot be analysed at all, or ``None`` when it can.

    Checks: at least one site, finite lattice and coordinates, a non-degenerate lattice. Cheap;
    safe on any input.
    """
    if len(structure) == 0:
        return "structure has no sites"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.isfinite(matrix).all():
        return "lattice has non-finite entries"
    if not np.isfinite(np.asarray(structure.frac_coords, dtype=float)).all():
        return "non-finite atomic coordinates"
    volume = abs(float(np.linalg.det(matrix)))
    if volume < MIN_CELL_VOLUME_A3:
        return f"degenerate lattice (cell volume {volume:.3g} Å^3)"
    return None


def shortest_lattice_vector(structure: Structure) -> float:
    """Length of the shortest non-zero lattice vector, Å (an atom's distance to its own image)."""
    reduced = np.asarray(structure.lattice.get_lll_reduced_lattice().matrix, dtype=float)
    lengths = [
        float(np.linalg.norm(np.asarray(coeffs) @ reduced))
        for coeffs in itertools.product((-1, 0, 1), repeat=3)
        if any(coeffs)
    ]
    return min(lengths)


def vacuum_gap(structure: Structure) -> tuple[float, str]:
    """Widest empty layer of the cell, atom centre to atom centre, Å, and the lattice vector.

    For each lattice vector, the atoms are projected onto the normal of the planes spanned by
    the two other vectors (the fractional coordinate along it times the interplanar spacing);
    the largest gap between consecutive projections, periodic wrap included, is the thickness
    of a slab of space no atom occupies. Large in slabs and isolated layers, a few Å in bulk
    crystals (van der Waals gaps of layered bulk crystals are ~3 Å).

    Returns:
        The gap in Å and the lattice vector it lies along (``"a"``, ``"b"`` or ``"c"``).
    """
    reciprocal = np.asarray(structure.lattice.reciprocal_lattice_crystallographic.matrix)
    frac = np.asarray(structure.frac_coords, dtype=float)
    best, axis = 0.0, "a"
    for index, name in enumerate("abc"):
        spacing = 1.0 / float(np.linalg.norm(reciprocal[index]))
        coords = np.sort(np.mod(frac[:, index], 1.0))
        gaps = np.diff(np.concatenate([coords, coords[:1] + 1.0]))
        gap = float(gaps.max()) * spacing
        if gap > best:
            best, axis = gap, name
    return best, axis


def min_interatomic_distance(structure: Structure) -> tuple[float, str]:
    """Shortest periodic distance between any two atoms (or an atom and its image).

    Returns:
        The distance in Å and the pair of species, e.g. ``(1.98, "Na-Cl")``.
    """
    best = shortest_lattice_vector(structure)
    symbol = structure[0].species_string
    pair = f"{symbol}-{symbol}"  # every atom sits this far from its own periodic image
    if len(structure) > 1:
        distances = np.asarray(structure.distance_matrix, dtype=float)
        np.fill_diagonal(distances, np.inf)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        if distances[i, j] < best:
            best = float(distances[i, j])
            pair = f"{structure[int(i)].species_string}-{structure[int(j)].species_string}"
    return best, pair


@dataclass(frozen=True, kw_only=True)
class SanityValidator:
    """Reject malformed or physically implausible structures.

    Defaults come from MP-20: volume per atom there spans 5.8-202 Å^3/atom (99.9% below
    92 Å^3/atom; diamond is 5.7), and no real crystal has atoms closer than ~0.7 Å (H-H).

    Verdict metrics (of the structure as generated): ``n_atoms``, ``volume_per_atom_a3``
    (Å^3/atom), ``min_distance_a`` (Å) and ``vacuum_gap_a`` (Å).
    """

    name: str = "sanity"
    min_distance_a: float = 0.5
    """Shortest allowed distance between atoms (periodic images included), Å."""
    min_volume_per_atom_a3: float = 4.0
    """Smallest allowed cell volume per atom, Å^3/atom."""
    max_volume_per_atom_a3: float = 150.0
    """Largest allowed cell volume per atom, Å^3/atom."""
    max_atoms: int = 200
    """Largest allowed number of sites per cell."""
    max_vacuum_a: float | None = 10.0
    """Widest allowed empty layer (see :func:`vacuum_gap`), Å; ``None`` disables the check.

    Beyond CHGNet's 6 Å graph cutoff nothing interacts across the gap, so the cell is a slab or
    an isolated layer, not a bulk crystal. Measured on 4,500 random ``mp_20_biternary`` and
    ``mpts_52`` structures: median 1.5 Å, 99th percentile 3.5 Å; the 0.2% above 10 Å are 2D
    monolayers (MoS2-type, SnS; up to 19.8 Å), which this check rejects on purpose.
    """

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Check each candidate's structure.

        Args:
            candidates: Candidates to check.

        Returns:
            One verdict per candidate, in order.
        """
        return [self._check(candidate) for candidate in candidates]

    def _check(self, candidate: Candidate) -> Verdict:
        structure = candidate.structure
        metrics: dict[str, float | int] = {"n_atoms": len(structure)}
        reason = self._reason(structure, metrics)
        return Verdict(
            candidate_id=candidate.id,
            validator=self.name,
            passed=reason is None,
            reason=reason,
            metrics=metrics,
        )

    def _reason(self, structure: Structure, metrics: dict[str, float | int]) -> str | None:
        reason = malformed_reason(structure)
        if reason is not None:
            return reason
        unknown = sorted(
            {
                str(sp)
                for sp in structure.composition.elements
                if not Element.is_valid_symbol(getattr(sp, "symbol", ""))
            }
        )
        if unknown:
            return f"unknown species {', '.join(unknown)}"
        if not structure.is_ordered:
            partial = sum(1 for site in structure if not site.is_ordered)
            return f"{partial} site(s) with partial occupancy (disordered structures unsupported)"
        n_atoms = len(structure)
        if n_atoms > self.max_atoms:
            return f"{n_atoms} atoms > {self.max_atoms} atoms"
        volume_per_atom = float(structure.volume) / n_atoms
        metrics["volume_per_atom_a3"] = volume_per_atom
        if volume_per_atom < self.min_volume_per_atom_a3:
            return (
                f"volume per atom {volume_per_atom:.2f} Å^3 < {self.min_volume_per_atom_a3:g} Å^3"
            )
        if volume_per_atom > self.max_volume_per_atom_a3:
            return (
                f"volume per atom {volume_per_atom:.1f} Å^3 > {self.max_volume_per_atom_a3:g} Å^3"
            )
        distance, pair = min_interatomic_distance(structure)
        metrics["min_distance_a"] = distance
        if distance < self.min_distance_a:
            return f"min distance {distance:.2f} Å < {self.min_distance_a:g} Å ({pair})"
        if self.max_vacuum_a is not None:
            gap, axis = vacuum_gap(structure)
            metrics["vacuum_gap_a"] = gap
            if gap > self.max_vacuum_a:
                return (
                    f"vacuum layer of {gap:.1f} Å along {axis} > {self.max_vacuum_a:g} Å "
                    "(a slab or isolated layer, not a bulk crystal)"
                )
        return None
