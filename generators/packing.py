"""Push overlapping atoms apart before a structure goes to CHGNet (a hard-sphere pre-relaxation).

Random structure search places atoms at random free coordinates, so a fresh cell often has some
atoms much closer than any bond and others far from every neighbour. AIRSS (Pickard & Needs,
J. Phys.: Condens. Matter 23, 053201, 2011) removes the worst of this before the expensive
relaxation by pushing atoms apart until no two are closer than a minimum separation. This module
does the same at fixed cell: each pair closer than its contact distance is moved apart along
the line joining them, half the overlap for each atom, until the largest overlap is below a
tolerance or the step budget is spent.

Every displacement is averaged over the symmetry operations of the starting cell, so atoms on
special Wyckoff positions stay on them and the space group is kept exactly (without this,
rounding differences between equivalent atoms grow over the rounds and the cell drifts to P1).
Two atoms on the very same point cannot be separated and are left for the clash screen.

Contact distances come from covalent radii (Cordero et al., Dalton Trans. 2008, via pymatgen):
``scale`` times ``r_i + r_j`` for most pairs (0.85: atoms may sit a little closer than covalent
bonds, which leaves room in cells scaled to the learned volume), and ``anion_factor`` times that
for two anions of an ionic cell (two O atoms of an oxide sit about twice their covalent
separation apart, not 1.3 Å).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from crystalforge.core.errors import ConfigError

if TYPE_CHECKING:
    from pymatgen.core import Structure

ANIONS = frozenset({"N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I"})
"""Elements treated as anions when the cell also holds a metal."""
PUSH_STEPS = 100
"""Push rounds the generators that push use by default."""
PUSH_SCALE = 0.85
"""Default contact distance relative to the sum of covalent radii."""


def covalent_radius(element: str) -> float:
    """Covalent radius in Å (pymatgen's table; 1.5 Å for elements it lacks)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return float(CovalentRadius.radius.get(element, 1.5))


def check_push(steps: int, scale: float) -> None:
    """Raise :class:`~crystalforge.core.errors.ConfigError` for push settings no cell can use."""
    if not (isinstance(steps, int) and steps >= 0):
        raise ConfigError(f"push_steps must be an integer >= 0, got {steps!r}")
    if not (0.0 < scale <= 2.0):
        raise ConfigError(f"push_scale must be in (0, 2], got {scale!r}")


def contact_distances(
    symbols: list[str], *, scale: float = PUSH_SCALE, anion_factor: float = 2.0
) -> np.ndarray:
    """Pair contact distances in Å, shape ``(n, n)``.

    Args:
        symbols: Element of each site.
        scale: Multiplies every covalent-radius sum.
        anion_factor: Extra factor for two anions when the cell also holds a metal.
    """
    from pymatgen.core import Element

    radii = np.array([covalent_radius(s) for s in symbols])
    contact = scale * (radii[:, None] + radii[None, :])
    if any(Element(s).is_metal for s in set(symbols)):
        anion = np.array([s in ANIONS for s in symbols])
        both = anion[:, None] & anion[None, :]
        contact = np.where(both, contact * anion_factor, contact)
    return contact


def push_apart(
    structure: Structure,
    *,
    scale: float = PUSH_SCALE,
    anion_factor: float = 2.0,
    steps: int = PUSH_STEPS,
    tolerance: float = 0.02,
    max_move: float = 0.3,
    damping: float = 0.5,
) -> tuple[Structure, float]:
    """A copy of ``structure`` with overlapping atoms pushed apart at fixed lattice.

    Args:
        structure: The cell (not modified).
        scale: Multiplies the covalent-radius contact distances.
        anion_factor: See :func:`contact_distances`.
        steps: Largest number of push rounds.
        tolerance: Stop when no pair overlaps by more than this (Å).
        max_move: Largest displacement of one atom in one round (Å).
        damping: Share of the half-overlap moved per round (below 1 keeps crowded cells, where
            pushes conflict, from oscillating).

    Returns:
        The copy with the least summed squared overlap seen over the rounds, and its largest
        remaining overlap in Å (0 when none).
    """
    from pymatgen.core import Structure
    from pymatgen.optimization.neighbors import find_points_in_spheres

    symbols = [site.specie.symbol for site in structure]
    contact = contact_distances(symbols, scale=scale, anion_factor=anion_factor)
    lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
    inverse = np.linalg.inv(lattice)
    frac = np.mod(structure.frac_coords, 1.0)
    cutoff = float(contact.max()) + 1e-6
    pbc = np.array([1, 1, 1], dtype=np.int64)
    operations = _site_permutations(structure)
    best = (math.inf, 0.0, frac)
    for _ in range(max(steps, 0) + 1):
        cart = np.ascontiguousarray(frac @ lattice)
        centers, neighbours, images, distances = find_points_in_spheres(
            cart, cart, r=cutoff, pbc=pbc, lattice=lattice, tol=1e-8
        )
        limits = contact[centers, neighbours]
        hit = (distances > 1e-6) & (distances < limits)
        overlap = limits[hit] - distances[hit]
        worst = float(overlap.max()) if overlap.size else 0.0
        energy = float(np.sum(overlap**2))
        if energy < best[0]:
            best = (energy, worst, frac)
        if worst <= tolerance or _ == steps:
            break
        c = centers[hit]
        towards = cart[neighbours[hit]] + images[hit] @ lattice - cart[c]
        # Each pair is listed from both ends, so each atom moves by half the overlap.
        moves = -(0.5 * damping * overlap / distances[hit])[:, None] * towards
        displacement = np.zeros_like(cart)
        np.add.at(displacement, c, moves)
        shift = _symmetrized(displacement @ inverse, operations)
        length = np.linalg.norm(shift @ lattice, axis=1, keepdims=True)
        shift *= np.minimum(1.0, max_move / np.maximum(length, 1e-12))
        frac = np.mod(frac + shift, 1.0)
    _, worst, frac = best
    return Structure(structure.lattice, structure.species, frac), worst


def _site_permutations(
    structure: Structure, symprec: float = 1e-3
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cell's symmetry operations as (fractional rotation, image index of every site).

    An empty list (no symmetrization) when spglib finds no operations or a site has no image.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        ops = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations()
    except Exception:  # spglib fails on degenerate cells: push without symmetrizing
        return []
    frac = np.mod(structure.frac_coords, 1.0)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for op in ops:
        moved = np.mod(frac @ op.rotation_matrix.T + op.translation_vector, 1.0)
        delta = moved[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        image = np.argmin(np.linalg.norm(delta, axis=2), axis=1)
        if len(set(image.tolist())) != len(frac):
            return []
        out.append((op.rotation_matrix, image))
    return out


def _symmetrized(shift: np.ndarray, operations: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Average of a fractional displacement field over the operations (unchanged if none)."""
    if not operations:
        return shift
    total = np.zeros_like(shift)
    for rotation, image in operations:
        total[image] += shift @ rotation.T
    return total / len(operations)
