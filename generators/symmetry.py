"""Random symmetric crystals from PyXtal: the first symmetry-aware generator.

For each requested structure a seeded random draw picks a charge-balanced composition (from
:func:`~crystalforge.generators.compositions.enumerate_compositions`), a number of formula units
and a space group whose Wyckoff positions can host that many atoms; PyXtal then places the atoms
on random Wyckoff sites of a random lattice. Attempts that PyXtal cannot complete are dropped and
retried within bounded budgets of attempts and time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Structure
from pyxtal import pyxtal
from pyxtal.msg import Error as PyXtalError
from pyxtal.symmetry import Group

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import UniqueCandidates
from crystalforge.generators.compositions import CompositionChoice, enumerate_compositions

if TYPE_CHECKING:
    from collections.abc import Callable

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.generators.base import Family, GenerationRequest

logger = logging.getLogger(__name__)

SPACE_GROUP_PRIOR: dict[int, float] = {
    62: 8.0, 14: 7.5, 225: 6.0, 12: 5.0, 15: 5.0, 194: 4.5, 2: 4.5, 166: 4.0, 139: 4.0,
    221: 3.5, 227: 3.0, 63: 3.0, 167: 2.0, 11: 2.0, 148: 1.5, 216: 1.5, 191: 1.5, 129: 1.5,
    164: 1.5, 141: 1.2, 140: 1.0, 176: 1.0, 65: 1.0, 71: 1.0, 123: 1.0, 136: 1.0, 186: 1.0,
    13: 1.0, 4: 0.8, 60: 0.8, 61: 0.8, 88: 0.8, 36: 0.6, 19: 0.6, 9: 0.6, 1: 0.5,
}  # fmt: skip
"""Rough, hand-written shares (percent) of the most frequent space groups of inorganic crystals
in the ICSD. Relative weights only; not fitted to data."""
PRIOR_SHARE = 0.8
"""Probability of drawing a space group from :data:`SPACE_GROUP_PRIOR`; otherwise uniform over
2-230."""

_GROUP_DRAWS = 64  # space-group draws per attempt before the attempt counts as failed
_SCANNED_CELLS = 512  # (composition, z) cells checked against requested space groups


@functools.cache
def _group(number: int) -> Group:
    """PyXtal's space group (about 7 ms to build, so cached for the process)."""
    return Group(number)


CENTERING_MULTIPLICITY = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}
"""Lattice points per conventional cell, by the first letter of the Hermann-Mauguin symbol
(PyXtal builds rhombohedral groups in the hexagonal setting, hence R: 3)."""


@functools.cache
def centering_multiplicity(number: int) -> int:
    """How many primitive cells the conventional cell of space group ``number`` holds."""
    return CENTERING_MULTIPLICITY[str(_group(number).symbol)[0]]


@functools.cache
def _compatible(number: int, counts: tuple[int, ...]) -> bool:
    """Whether space group ``number`` can hold ``counts`` atoms per species in its primitive cell.

    PyXtal places atoms in the conventional cell, which holds ``centering_multiplicity``
    primitive cells: the counts are scaled by it before the Wyckoff check.
    """
    multiplicity = centering_multiplicity(number)
    conventional = [c * multiplicity for c in counts]
    compatible, _has_freedom = _group(number).check_compatible(conventional)
    return bool(compatible)


@dataclass(frozen=True)
class Cell:
    """One composition at one number of formula units, with its (unnormalised) draw weight.

    Shared by :class:`PyXtalGenerator` and
    :class:`~crystalforge.generators.wyckoff.WyckoffPriorGenerator`, which differ only in the
    weights.
    """

    choice: CompositionChoice
    z: int
    weight: float

    @property
    def counts(self) -> tuple[int, ...]:
        """Atoms per species in the primitive cell, in ``choice.elements`` order."""
        return tuple(self.choice.species_and_counts(self.z)[1])


@dataclass(frozen=True)
class CellPool:
    """Cells drawn with probabilities proportional to their weights."""

    cells: list[Cell]
    probabilities: np.ndarray

    @classmethod
    def of(cls, cells: list[Cell]) -> CellPool:
        """The pool of ``cells`` (non-empty), normalising their weights."""
        weights = np.array([c.weight for c in cells], dtype=float)
        return cls(cells, weights / weights.sum())

    def draw(self, rng: np.random.Generator) -> Cell:
        """One cell, drawn with ``rng``."""
        return self.cells[int(rng.choice(len(self.cells), p=self.probabilities))]


def request_cells(
    request: GenerationRequest,
    *,
    max_cell_atoms: int,
    weigh: Callable[[int, CompositionChoice, list[int]], list[float]],
    who: str,
) -> list[Cell]:
    """Every (composition, z) of ``request`` that fits in ``max_cell_atoms``, weighted.

    Args:
        request: The generation request (its atom range, elements, space groups).
        max_cell_atoms: Largest primitive cell the caller builds.
        weigh: ``weigh(rank, choice, zs)`` gives one weight per formula-unit count ``zs`` of the
            composition ranked ``rank`` by ``enumerate_compositions``.
        who: Generator name for error messages.

    Raises:
        GenerationFailed: Space groups outside 1-230, ``min_atoms`` beyond ``max_cell_atoms``,
            or no composition fits (the reason comes from ``enumerate_compositions``).
    """
    if bad := [sg for sg in request.space_groups if not 1 <= sg <= 230]:
        raise GenerationFailed(f"space groups must be in 1-230, got {bad!r}")
    if request.min_atoms > max_cell_atoms:
        raise GenerationFailed(
            f"min_atoms={request.min_atoms!r} is beyond the {max_cell_atoms} atoms per cell "
            f"{who} can place in reasonable time (set max_cell_atoms to raise it)"
        )
    cells: list[Cell] = []
    for rank, choice in enumerate(enumerate_compositions(request)):
        zs = [z for z in choice.z_options if z * choice.num_atoms <= max_cell_atoms]
        if zs:
            weights = weigh(rank, choice, zs)
            cells.extend(Cell(choice, z, w) for z, w in zip(zs, weights, strict=True))
    if not cells:
        raise GenerationFailed(
            f"no composition fits in {max_cell_atoms} atoms per cell (max_cell_atoms)"
        )
    return cells


def cells_by_space_group(
    request: GenerationRequest, cells: list[Cell], *, max_cell_atoms: int
) -> dict[int, list[Cell]] | None:
    """For requested space groups, the cells (of the first 512) each can host.

    Returns:
        Space group -> hostable cells (groups hosting none are left out); ``None`` when the
        request names no space group.

    Raises:
        GenerationFailed: No requested group can host any cell, naming groups and formulas.
    """
    if not request.space_groups:
        return None
    scanned = cells[:_SCANNED_CELLS]
    groups = sorted(set(request.space_groups))
    by_group = {sg: [c for c in scanned if _compatible(sg, c.counts)] for sg in groups}
    if not any(by_group.values()):
        formulas = list(dict.fromkeys(c.choice.formula for c in scanned))
        shown = ", ".join(formulas[:5]) + (
            f" or {len(formulas) - 5} more" if len(formulas) > 5 else ""
        )
        low = max(request.min_atoms, 1)
        high = min(request.max_atoms, max_cell_atoms)
        raise GenerationFailed(
            f"space group {' or '.join(map(str, groups))} cannot host {shown} with "
            f"{low}-{high} atoms per cell"
        )
    return {sg: hosted for sg, hosted in by_group.items() if hosted}


def build_structure(
    cell: Cell,
    space_group: int,
    seed: int,
    *,
    volume_factor: float,
    sites: tuple[tuple[str, ...], ...] | None = None,
) -> Structure | None:
    """PyXtal's random crystal for a cell, reduced to its primitive cell.

    Atom counts (and the request's atom limits) refer to the primitive cell, so that rock salt
    is a 2-atom cell and a spinel a 14-atom cell; PyXtal builds the conventional cell with
    ``centering_multiplicity`` times as many atoms.

    Args:
        cell: Composition and formula units.
        space_group: Space-group number (compatible with the cell).
        seed: Seed of PyXtal's random state.
        volume_factor: Cell volume relative to PyXtal's sum of atomic volumes.
        sites: Wyckoff labels per element (conventional cell), or ``None`` to let PyXtal pick.

    Returns:
        The structure, or ``None`` if PyXtal could not place the atoms.
    """
    species, counts = cell.choice.species_and_counts(cell.z)
    multiplicity = centering_multiplicity(space_group)
    crystal = pyxtal()
    # PyXtal reports progress with print() and warnings.warn(); keep both out of our output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            crystal.from_random(
                3,
                _group(space_group),
                species,
                [c * multiplicity for c in counts],
                factor=volume_factor,
                sites=None if sites is None else [list(s) for s in sites],
                # A Generator, not an int: PyXtal's internal retries reuse random_state.
                random_state=np.random.default_rng(seed),
            )
            structure = crystal.to_pymatgen()
            if multiplicity > 1 and isinstance(structure, Structure):
                # PyXtal's positions are exact: a tight tolerance finds the primitive cell.
                structure = structure.get_primitive_structure(tolerance=0.01)
        # RuntimeError: "long time to generate structure"; PyXtalError: compatibility and
        # volume errors; ValueError/KeyError/IndexError: degenerate lattices, bad site labels.
        except (RuntimeError, ValueError, KeyError, IndexError, PyXtalError) as exc:
            logger.debug("pyxtal failed for %s in %d: %s", cell.choice.formula, space_group, exc)
            return None
    if not isinstance(structure, Structure) or len(structure) != sum(counts):
        return None
    return structure


def generate_with_budget(
    request: GenerationRequest,
    attempt: Callable[[np.random.Generator], tuple[Structure, dict[str, Scalar]] | None],
    *,
    name: str,
    max_attempts_per_structure: int,
    timeout_s: float,
) -> list[Candidate]:
    """The attempt loop both PyXtal-based generators share.

    Structure ``i`` uses ``np.random.default_rng([seed, i])``, so it depends only on the seed
    and ``i``. Each call of ``attempt(rng)`` returns a structure and its parameters, or ``None``
    for a failed attempt; exact duplicates (same candidate id) are dropped and retried.

    Raises:
        GenerationFailed: Nothing was produced (time budget or every attempt failed).
    """
    deadline = time.monotonic() + timeout_s
    kept = UniqueCandidates(name, request)
    attempts = failures = 0
    timed_out = False
    for index in range(request.num_structures):
        rng = np.random.default_rng([request.seed % 2**64, index])
        for attempt_number in range(max_attempts_per_structure):
            if time.monotonic() > deadline:
                timed_out = True
                break
            attempts += 1
            made = attempt(rng)
            if made is None:
                failures += 1
                continue
            structure, parameters = made
            if kept.add(structure, {"index": index, "attempt": attempt_number, **parameters}):
                break
        if timed_out:
            break
    out = kept.items
    logger.debug(
        "%s: %d structures from %d attempts (%d failed, %d duplicates)",
        name, len(out), attempts, failures, kept.duplicates,
    )  # fmt: skip
    why = (
        f"the {timeout_s:g} s time budget ran out"
        if timed_out
        else f"{failures} of {attempts} attempts failed and {kept.duplicates} were duplicates"
    )
    if not out:
        raise GenerationFailed(f"{name} produced no structure: {why}")
    if len(out) < request.num_structures:
        logger.warning(
            "%s returned %d of %d structures: %s", name, len(out), request.num_structures, why
        )
    return out


@dataclass(frozen=True, kw_only=True)
class PyXtalGenerator:
    """Random symmetric crystals with PyXtal (registry name ``"pyxtal"``, family ``"wyckoff"``).

    Structure ``i`` of a request depends only on ``request.seed`` and ``i``: the same request
    gives the same structures, and a larger ``num_structures`` extends the list. Fewer than
    ``num_structures`` come back (with a warning logged) when the attempt or time budget runs
    out; none at all raises :class:`~crystalforge.core.errors.GenerationFailed`.

    Compositions are drawn with weight ``1 / sqrt(1 + rank)`` over the ordered list of
    :func:`~crystalforge.generators.compositions.enumerate_compositions` (simple ones more
    often), formula units uniformly among those that fit, and space groups from
    ``request.space_groups`` (uniformly) or else from :data:`SPACE_GROUP_PRIOR` mixed with a
    uniform draw, keeping only groups whose Wyckoff positions fit the atom counts.
    """

    max_attempts_per_structure: int = 10
    """PyXtal attempts per requested structure before giving up on it."""
    volume_factor: float = 1.0
    """Cell volume relative to the sum of atomic volumes from radii (PyXtal's ``factor``)."""
    timeout_s: float = 60.0
    """Wall-clock budget for one ``generate`` call in seconds, checked between attempts."""
    max_cell_atoms: int = 120
    """Largest cell attempted; PyXtal needs minutes for a few hundred atoms."""
    space_group_prior_share: float = PRIOR_SHARE
    """Probability of drawing from :data:`SPACE_GROUP_PRIOR`; otherwise uniform over 2-230.
    ``0`` is plain PyXtal random generation (registry name ``pyxtal-uniform``)."""
    name: str = field(default="pyxtal", init=False)
    family: Family = field(default="wyckoff", init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.space_group_prior_share <= 1:
            raise ConfigError(
                f"space_group_prior_share must be in [0, 1], got {self.space_group_prior_share!r}"
            )
        if self.max_attempts_per_structure < 1:
            raise ConfigError(
                f"max_attempts_per_structure must be >= 1, got {self.max_attempts_per_structure!r}"
            )
        if not (self.volume_factor > 0 and math.isfinite(self.volume_factor)):
            raise ConfigError(f"volume_factor must be positive, got {self.volume_factor!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s!r}")
        if self.max_cell_atoms < 1:
            raise ConfigError(f"max_cell_atoms must be >= 1, got {self.max_cell_atoms!r}")

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose ``request.num_structures`` random symmetric structures.

        Raises:
            GenerationFailed: The request admits no structure (no charge-balanced composition
                in the atom range, requested space groups that cannot host any of them, a cell
                beyond ``max_cell_atoms``), or every attempt failed.
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        cells = request_cells(
            request, max_cell_atoms=self.max_cell_atoms, weigh=_rank_weights, who=self.name
        )
        hosted = cells_by_space_group(request, cells, max_cell_atoms=self.max_cell_atoms)
        pool = CellPool.of(cells)
        by_group = None if hosted is None else {sg: CellPool.of(c) for sg, c in hosted.items()}

        def attempt(rng: np.random.Generator) -> tuple[Structure, dict[str, Scalar]] | None:
            drawn = self._draw(rng, pool, by_group)
            pyxtal_seed = int(rng.integers(2**63))
            if drawn is None:
                return None
            cell, space_group = drawn
            structure = self._build(cell, space_group, pyxtal_seed)
            if structure is None:
                return None
            return structure, {
                "space_group": space_group,
                "formula": cell.choice.formula,
                "z": cell.z,
                "charge_balance": cell.choice.charge_balance,
                "oxidation_states": cell.choice.oxidation_label(),
                "pyxtal_seed": pyxtal_seed,
                "volume_factor": self.volume_factor,
                "space_group_prior_share": self.space_group_prior_share,
            }

        return generate_with_budget(
            request,
            attempt,
            name=self.name,
            max_attempts_per_structure=self.max_attempts_per_structure,
            timeout_s=self.timeout_s,
        )

    def _draw(
        self,
        rng: np.random.Generator,
        cells: CellPool,
        by_group: dict[int, CellPool] | None,
    ) -> tuple[Cell, int] | None:
        """A cell and a space group that can host it, or ``None`` if no group was found."""
        if by_group is not None:
            groups = sorted(by_group)
            space_group = groups[int(rng.integers(len(groups)))]
            return by_group[space_group].draw(rng), space_group
        cell = cells.draw(rng)
        for _ in range(_GROUP_DRAWS):
            space_group = _draw_space_group(rng, self.space_group_prior_share)
            if _compatible(space_group, cell.counts):
                return cell, space_group
        return None

    def _build(self, cell: Cell, space_group: int, seed: int) -> Structure | None:
        """:func:`build_structure` with this generator's volume factor."""
        return build_structure(cell, space_group, seed, volume_factor=self.volume_factor)


def _rank_weights(rank: int, choice: CompositionChoice, zs: list[int]) -> list[float]:
    """``1 / sqrt(1 + rank)`` per composition, spread evenly over its formula units."""
    del choice
    return [1 / math.sqrt(1 + rank) / len(zs)] * len(zs)


_PRIOR_GROUPS = np.array(sorted(SPACE_GROUP_PRIOR))
_PRIOR_WEIGHTS = np.array([SPACE_GROUP_PRIOR[g] for g in _PRIOR_GROUPS])
_PRIOR_WEIGHTS = _PRIOR_WEIGHTS / _PRIOR_WEIGHTS.sum()


def _draw_space_group(rng: np.random.Generator, prior_share: float = PRIOR_SHARE) -> int:
    if rng.random() < prior_share:
        return int(rng.choice(_PRIOR_GROUPS, p=_PRIOR_WEIGHTS))
    return int(rng.integers(2, 231))


@dataclass(frozen=True, kw_only=True)
class UniformPyXtalGenerator(PyXtalGenerator):
    """Plain PyXtal random generation (registry name ``"pyxtal-uniform"``).

    Space groups are drawn uniformly from 2-230, keeping those whose Wyckoff positions fit the
    atom counts; no space-group prior. Otherwise the same as :class:`PyXtalGenerator`.
    """

    space_group_prior_share: float = 0.0
    name: str = field(default="pyxtal-uniform", init=False)
