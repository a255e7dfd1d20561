"""A seeded, millisecond generator of simple valid crystals, for tests of the agent graph.

It reads a request exactly as the real generators do (through
:func:`~crystalforge.generators.compositions.enumerate_compositions`) but builds cells from a
few textbook prototypes (CsCl, rocksalt, fluorite, cubic perovskite) or, for anything else, by
scattering the atoms over the points of a grid. Lattices are scaled by covalent radii so that no
two atoms are closer than the sum of their radii. It needs neither PyXtal nor a model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import smact
from pymatgen.core import Lattice, Structure

from crystalforge.core.candidate import Candidate
from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.compositions import CompositionChoice, enumerate_compositions

if TYPE_CHECKING:
    from crystalforge.generators.base import Family, GenerationRequest

_DEFAULT_RADIUS = 1.5  # Å, for elements without a covalent radius in SMACT
_ATTEMPTS_PER_STRUCTURE = 5  # redraws when a structure repeats an earlier one

_Sites = list[tuple[int, tuple[float, float, float]]]
"""(index of the element in the composition, fractional coordinates) per site."""


@functools.cache
def _radius(symbol: str) -> float:
    """Covalent radius in Å."""
    return smact.Element(symbol).covalent_radius or _DEFAULT_RADIUS


@dataclass(frozen=True, kw_only=True)
class FakeGenerator:
    """Seeded simple crystals in milliseconds (registry name ``"fake"``, family ``"fake"``).

    Structure ``i`` depends only on ``request.seed`` and ``i``. Compositions follow the request
    as for the real generators (charge-balanced, within the atom range); the cell is a prototype
    when the composition and size match one, else atoms on a shuffled grid.
    """

    min_spacing_factor: float = 1.15
    """Nearest-neighbour distance as a multiple of the sum of covalent radii (at least)."""
    name: str = field(default="fake", init=False)
    family: Family = field(default="fake", init=False)

    def __post_init__(self) -> None:
        if not self.min_spacing_factor >= 1.0:
            raise ConfigError(
                f"min_spacing_factor must be >= 1.0 so atoms do not overlap, "
                f"got {self.min_spacing_factor!r}"
            )

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose ``request.num_structures`` simple structures.

        Raises:
            GenerationFailed: The request admits no composition (see
                :func:`~crystalforge.generators.compositions.enumerate_compositions`).
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        choices = enumerate_compositions(request)
        weights = np.array([1 / math.sqrt(1 + rank) for rank in range(len(choices))])
        probabilities = weights / weights.sum()
        out: list[Candidate] = []
        seen: set[str] = set()
        for index in range(request.num_structures):
            rng = np.random.default_rng([request.seed % 2**64, index])
            for attempt in range(_ATTEMPTS_PER_STRUCTURE):
                choice = choices[int(rng.choice(len(choices), p=probabilities))]
                z = int(rng.choice(choice.z_options))
                prototype, structure = self._build(choice, z, rng)
                candidate = Candidate.create(
                    structure,
                    generator=self.name,
                    seed=request.seed,
                    parameters={
                        "index": index,
                        "attempt": attempt,
                        "prototype": prototype,
                        "formula": choice.formula,
                        "z": z,
                        "charge_balance": choice.charge_balance,
                    },
                    round=request.round,
                )
                if candidate.id not in seen:
                    seen.add(candidate.id)
                    out.append(candidate)
                    break
        return out

    def _build(
        self, choice: CompositionChoice, z: int, rng: np.random.Generator
    ) -> tuple[str, Structure]:
        """A prototype or grid cell for ``z`` formula units of ``choice``."""
        symbols, counts = choice.species_and_counts(z)
        radii = [_radius(s) for s in symbols]
        # A random stretch so that different seeds give different cells of one prototype.
        stretch = self.min_spacing_factor * float(rng.uniform(1.0, 1.2))
        prototype = _prototype(counts, radii)
        if prototype is not None:
            name, a, sites = prototype
            lattice = Lattice.cubic(a * stretch)
        else:
            name = "grid"
            lattice, sites = _grid(counts, max(radii), stretch, rng)
        species = [symbols[i] for i, _ in sites]
        coords = [xyz for _, xyz in sites]
        return name, Structure(lattice, species, coords)


def _prototype(counts: list[int], radii: list[float]) -> tuple[str, float, _Sites] | None:
    """A cubic prototype for these atom counts: (name, lattice constant in Å, sites).

    The lattice constant makes every pair at least the sum of its radii apart.
    """
    if len(counts) == 2 and counts == [1, 1]:
        r_a, r_b = radii
        a = max(2 * (r_a + r_b) / math.sqrt(3), 2 * r_a, 2 * r_b)
        return "CsCl", a, [(0, (0.0, 0.0, 0.0)), (1, (0.5, 0.5, 0.5))]
    fcc = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)]
    if len(counts) == 2 and counts == [4, 4]:
        r_a, r_b = radii
        a = max(2 * (r_a + r_b), 2 * math.sqrt(2) * max(r_a, r_b))
        shifted = [((x + 0.5) % 1, y, z) for x, y, z in fcc]
        return "rocksalt", a, [(0, p) for p in fcc] + [(1, p) for p in shifted]
    if len(counts) == 2 and sorted(counts) == [4, 8]:
        # Fluorite (CaF2) or antifluorite (Li2O): the minority element on the fcc sites.
        on_fcc = counts.index(4)
        on_tet = 1 - on_fcc
        r_f, r_t = radii[on_fcc], radii[on_tet]
        a = max(4 * (r_f + r_t) / math.sqrt(3), 4 * r_t, 2 * math.sqrt(2) * r_f)
        tetrahedral = [(x, y, z) for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
        return "fluorite", a, [(on_fcc, p) for p in fcc] + [(on_tet, p) for p in tetrahedral]
    if len(counts) == 3 and sorted(counts) == [1, 1, 3]:
        anion = counts.index(3)
        small, large = sorted((i for i in range(3) if i != anion), key=lambda i: radii[i])
        r_a, r_b, r_x = radii[large], radii[small], radii[anion]
        a = max(
            2 * (r_b + r_x),  # B-X
            math.sqrt(2) * (r_a + r_x),  # A-X
            2 * math.sqrt(2) * r_x,  # X-X
            2 * (r_a + r_b) / math.sqrt(3),  # A-B
            2 * r_a,  # A-A
        )
        faces = [(0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)]
        sites: _Sites = [(large, (0.0, 0.0, 0.0)), (small, (0.5, 0.5, 0.5))]
        return "perovskite", a, sites + [(anion, p) for p in faces]
    return None


def _grid(
    counts: list[int], max_radius: float, stretch: float, rng: np.random.Generator
) -> tuple[Lattice, _Sites]:
    """Atoms on a shuffled subset of an orthorhombic grid with spacing >= 2 * max_radius."""
    n_atoms = sum(counts)
    side = math.ceil(n_atoms ** (1 / 3))
    shape = [side, side, side]
    for axis in (2, 1):  # drop layers the atoms do not need
        while shape[axis] > 1 and math.prod(shape) // shape[axis] * (shape[axis] - 1) >= n_atoms:
            shape[axis] -= 1
    spacing = 2 * max_radius * stretch * rng.uniform(1.0, 1.1, size=3)
    lattice = Lattice.orthorhombic(*(spacing * shape))
    points = [
        (i / shape[0], j / shape[1], k / shape[2])
        for i in range(shape[0])
        for j in range(shape[1])
        for k in range(shape[2])
    ]
    chosen = rng.permutation(len(points))[:n_atoms]
    labels = rng.permutation([i for i, n in enumerate(counts) for _ in range(n)])
    return lattice, [(int(e), points[p]) for e, p in zip(labels, chosen, strict=True)]
