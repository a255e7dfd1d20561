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

from crystalforge.core.candidate import Candidate
from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.compositions import CompositionChoice, enumerate_compositions

if TYPE_CHECKING:
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


@dataclass(frozen=True, kw_only=True)
class _Cell:
    """One composition at one number of formula units."""

    rank: int
    choice: CompositionChoice
    z: int

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(self.choice.species_and_counts(self.z)[1])


@dataclass(frozen=True)
class _CellPool:
    """Cells with draw probabilities ``1 / sqrt(1 + rank)`` per composition, spread over z."""

    cells: list[_Cell]
    probabilities: np.ndarray

    @classmethod
    def of(cls, cells: list[_Cell]) -> _CellPool:
        per_rank: dict[int, int] = {}
        for cell in cells:
            per_rank[cell.rank] = per_rank.get(cell.rank, 0) + 1
        weights = np.array([1 / math.sqrt(1 + c.rank) / per_rank[c.rank] for c in cells])
        return cls(cells, weights / weights.sum())

    def draw(self, rng: np.random.Generator) -> _Cell:
        return self.cells[int(rng.choice(len(self.cells), p=self.probabilities))]


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
    name: str = field(default="pyxtal", init=False)
    family: Family = field(default="wyckoff", init=False)

    def __post_init__(self) -> None:
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
        cells = _CellPool.of(self._cells(request))
        by_group = self._cells_by_group(request, cells.cells)
        deadline = time.monotonic() + self.timeout_s
        out: list[Candidate] = []
        seen: set[str] = set()
        attempts = failures = duplicates = 0
        timed_out = False
        for index in range(request.num_structures):
            rng = np.random.default_rng([request.seed % 2**64, index])
            for attempt in range(self.max_attempts_per_structure):
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                attempts += 1
                drawn = self._draw(rng, cells, by_group)
                pyxtal_seed = int(rng.integers(2**63))
                if drawn is None:
                    failures += 1
                    continue
                cell, space_group = drawn
                structure = self._build(cell, space_group, pyxtal_seed)
                if structure is None:
                    failures += 1
                    continue
                candidate = Candidate.create(
                    structure,
                    generator=self.name,
                    seed=request.seed,
                    parameters={
                        "index": index,
                        "attempt": attempt,
                        "space_group": space_group,
                        "formula": cell.choice.formula,
                        "z": cell.z,
                        "charge_balance": cell.choice.charge_balance,
                        "oxidation_states": cell.choice.oxidation_label(),
                        "pyxtal_seed": pyxtal_seed,
                        "volume_factor": self.volume_factor,
                    },
                    round=request.round,
                )
                if candidate.id in seen:
                    duplicates += 1
                    continue
                seen.add(candidate.id)
                out.append(candidate)
                break
            if timed_out:
                break
        logger.debug(
            "pyxtal: %d structures from %d attempts (%d failed, %d duplicates)",
            len(out), attempts, failures, duplicates,
        )  # fmt: skip
        why = (
            f"the {self.timeout_s:g} s time budget ran out"
            if timed_out
            else f"{failures} of {attempts} attempts failed and {duplicates} were duplicates"
        )
        if not out:
            raise GenerationFailed(f"pyxtal produced no structure: {why}")
        if len(out) < request.num_structures:
            logger.warning(
                "pyxtal returned %d of %d structures: %s", len(out), request.num_structures, why
            )
        return out

    def _cells(self, request: GenerationRequest) -> list[_Cell]:
        """Every (composition, z) that fits the request and ``max_cell_atoms``."""
        if request.min_atoms > self.max_cell_atoms:
            raise GenerationFailed(
                f"min_atoms={request.min_atoms!r} is beyond the {self.max_cell_atoms} atoms per "
                "cell pyxtal can place in reasonable time (set max_cell_atoms to raise it)"
            )
        choices = enumerate_compositions(request)
        cells = [
            _Cell(rank=rank, choice=choice, z=z)
            for rank, choice in enumerate(choices)
            for z in choice.z_options
            if z * choice.num_atoms <= self.max_cell_atoms
        ]
        if not cells:
            raise GenerationFailed(
                f"no composition fits in {self.max_cell_atoms} atoms per cell (max_cell_atoms)"
            )
        return cells

    def _cells_by_group(
        self, request: GenerationRequest, cells: list[_Cell]
    ) -> dict[int, _CellPool] | None:
        """For requested space groups, the cells each can host; ``None`` if none requested."""
        if not request.space_groups:
            return None
        if bad := [sg for sg in request.space_groups if not 1 <= sg <= 230]:
            raise GenerationFailed(f"space groups must be in 1-230, got {bad!r}")
        scanned = cells[:_SCANNED_CELLS]
        by_group = {
            sg: [c for c in scanned if _compatible(sg, c.counts)]
            for sg in sorted(set(request.space_groups))
        }
        if not any(by_group.values()):
            formulas = list(dict.fromkeys(c.choice.formula for c in scanned))
            shown = ", ".join(formulas[:5]) + (
                f" or {len(formulas) - 5} more" if len(formulas) > 5 else ""
            )
            groups = " or ".join(str(sg) for sg in sorted(set(request.space_groups)))
            low = max(request.min_atoms, 1)
            high = min(request.max_atoms, self.max_cell_atoms)
            raise GenerationFailed(
                f"space group {groups} cannot host {shown} with {low}-{high} atoms per cell"
            )
        return {sg: _CellPool.of(hosted) for sg, hosted in by_group.items() if hosted}

    def _draw(
        self,
        rng: np.random.Generator,
        cells: _CellPool,
        by_group: dict[int, _CellPool] | None,
    ) -> tuple[_Cell, int] | None:
        """A cell and a space group that can host it, or ``None`` if no group was found."""
        if by_group is not None:
            groups = sorted(by_group)
            space_group = groups[int(rng.integers(len(groups)))]
            return by_group[space_group].draw(rng), space_group
        cell = cells.draw(rng)
        for _ in range(_GROUP_DRAWS):
            space_group = _draw_space_group(rng)
            if _compatible(space_group, cell.counts):
                return cell, space_group
        return None

    def _build(self, cell: _Cell, space_group: int, seed: int) -> Structure | None:
        """PyXtal's random crystal for a cell, reduced to its primitive cell.

        Atom counts (and the request's atom limits) refer to the primitive cell, so that rock
        salt is a 2-atom cell and a spinel a 14-atom cell; PyXtal builds the conventional cell
        with ``centering_multiplicity`` times as many atoms. ``None`` if PyXtal could not place
        the atoms.
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
                    factor=self.volume_factor,
                    # A Generator, not an int: PyXtal's internal retries reuse random_state.
                    random_state=np.random.default_rng(seed),
                )
                structure = crystal.to_pymatgen()
                if multiplicity > 1 and isinstance(structure, Structure):
                    # PyXtal's positions are exact: a tight tolerance finds the primitive cell.
                    structure = structure.get_primitive_structure(tolerance=0.01)
            # RuntimeError: "long time to generate structure"; PyXtalError: compatibility and
            # volume errors; ValueError: degenerate lattices.
            except (RuntimeError, ValueError, PyXtalError) as exc:
                logger.debug(
                    "pyxtal failed for %s in %d: %s", cell.choice.formula, space_group, exc
                )
                return None
        if not isinstance(structure, Structure) or len(structure) != sum(counts):
            return None
        return structure


_PRIOR_GROUPS = np.array(sorted(SPACE_GROUP_PRIOR))
_PRIOR_WEIGHTS = np.array([SPACE_GROUP_PRIOR[g] for g in _PRIOR_GROUPS])
_PRIOR_WEIGHTS = _PRIOR_WEIGHTS / _PRIOR_WEIGHTS.sum()


def _draw_space_group(rng: np.random.Generator) -> int:
    if rng.random() < PRIOR_SHARE:
        return int(rng.choice(_PRIOR_GROUPS, p=_PRIOR_WEIGHTS))
    return int(rng.integers(2, 231))
