"""Geometric sanity checks: the cheapest validator, run first.

Rejects structures no later stage can handle: no sites, unknown (dummy) species, partial
occupancies, non-finite numbers, degenerate lattices, too many atoms, implausible volume per
atom and overlapping atoms. Later validators call :func:`malformed_reason` themselves before
handing a structure to spglib or CHGNet, because spglib crashes the process (segmentation
fault) on NaN coordinates.
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
    (Å^3/atom) and ``min_distance_a`` (Å).
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
        return None
