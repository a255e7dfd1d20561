"""Random symmetric crystals whose symmetry is sampled from priors learned on known crystals.

Like :class:`~crystalforge.generators.symmetry.PyXtalGenerator`, each structure is a seeded
random draw of a charge-balanced composition (from
:func:`~crystalforge.generators.compositions.enumerate_compositions`), a number of formula units,
a space group and PyXtal's placement of atoms on a random lattice. Unlike it, the draws follow
:mod:`~crystalforge.generators.priors` (learned from training rows of MP-20 and MPTS-52):

* a composition is drawn with weight ``(1 + count of its anonymous formula) ** formula_prior_power
  / sqrt(1 + rank)`` (a power below 1 keeps rarer stoichiometries in play)
  and a cell size with weight ``1 + count of that many atoms per primitive cell`` (for that
  number of elements);
* with probability ``combination_share``, and when known crystals with the same per-element
  atom counts exist, a whole Wyckoff combination (space group plus the Wyckoff positions of each
  element) is drawn with weight equal to its count, and elements are assigned to its site groups
  by their learned site-symmetry tendencies; PyXtal then places atoms on exactly those sites
  (``parameters["prior"] == "combination"``);
* otherwise a space group is drawn from the learned space-group frequencies of structures with
  as many elements (``"space_group"``), and PyXtal chooses the Wyckoff positions itself; where the
  priors have no data (e.g. 6+ elements, or no compatible group among 64 draws) the space group
  comes from PyXtalGenerator's hand-written prior (``"fallback"``);
* the built cell is scaled to the sum of learned per-element atom volumes (``volume_prior``),
  its atoms are pushed apart at fixed cell and symmetry until no pair is much closer than the
  sum of their covalent radii (``push_steps``, :mod:`~crystalforge.generators.packing`, as
  AIRSS does before relaxing), and it is rejected, as a failed attempt, when two atoms are
  still closer than ``min_distance_ratio`` times that sum (a cheap screen before CHGNet).

Cells, the PyXtal call and the attempt loop are shared with
:class:`~crystalforge.generators.symmetry.PyXtalGenerator`
(:func:`~crystalforge.generators.symmetry.request_cells`,
:func:`~crystalforge.generators.symmetry.build_structure`,
:func:`~crystalforge.generators.symmetry.generate_with_budget`).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Composition, Structure

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.packing import (
    PUSH_SCALE,
    PUSH_STEPS,
    check_push,
    covalent_radius,
    push_apart,
)
from crystalforge.generators.priors import (
    WyckoffCombination,
    WyckoffPriors,
    general_multiplicity,
    load_priors,
)
from crystalforge.generators.symmetry import (
    Cell,
    CellPool,
    _compatible,
    _draw_space_group,
    build_structure,
    cells_by_space_group,
    centering_multiplicity,
    generate_with_budget,
    request_cells,
)

if TYPE_CHECKING:
    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.generators.base import Family, GenerationRequest
    from crystalforge.generators.compositions import CompositionChoice

logger = logging.getLogger(__name__)

_GROUP_DRAWS = 64  # space-group draws per attempt before falling back
_SCANNED_CELLS = 512  # (composition, z) cells checked against requested space groups
_MAX_PERMUTED_GROUPS = 6  # element-to-site assignments are enumerated up to this many elements
_CENTERINGS = (1, 2, 3, 4)


@dataclass(frozen=True)
class _Plan:
    """What one attempt builds: a cell, a space group, and optionally sites per element."""

    cell: Cell
    space_group: int
    prior: str
    sites: tuple[tuple[str, ...], ...] | None = None
    combination_count: int = 0


@dataclass(frozen=True, kw_only=True)
class WyckoffPriorGenerator:
    """Symmetric crystals from learned Wyckoff priors (registry and family ``"wyckoff"``).

    Structure ``i`` of a request depends only on ``request.seed`` and ``i``. Atom counts refer to
    the primitive cell, as for :class:`~crystalforge.generators.symmetry.PyXtalGenerator`. Fewer
    than ``num_structures`` come back (with a warning) when the attempt or time budget runs out;
    none raises :class:`~crystalforge.core.errors.GenerationFailed`. Each candidate records in
    ``parameters["prior"]`` whether its symmetry came from a learned Wyckoff combination, the
    learned space-group frequencies or the fallback.
    """

    combination_share: float = 0.8
    """Probability of drawing a learned Wyckoff combination when one fits the cell."""
    formula_prior_power: float = 1.0
    """Exponent on the learned anonymous-formula counts in composition weights (0: ignore
    them; 0.5 measured more diverse but with fewer SMACT-valid structures, see
    ``docs/generators.md``)."""
    max_attempts_per_structure: int = 10
    """PyXtal attempts per requested structure before giving up on it."""
    volume_factor: float = 1.0
    """Cell volume relative to the sum of atomic volumes from radii (PyXtal's ``factor``)."""
    timeout_s: float = 60.0
    """Wall-clock budget for one ``generate`` call in seconds, checked between attempts."""
    max_cell_atoms: int = 120
    """Largest primitive cell attempted."""
    volume_prior: bool = True
    """Scale each built cell to the learned sum of per-element atom volumes times
    ``volume_factor`` (PyXtal's own estimate from radii is kept for unlearned elements)."""
    min_distance_ratio: float = 0.5
    """Reject a built cell (a failed attempt) when two atoms are closer than this fraction of
    the sum of their covalent radii; 0 disables the check."""
    push_steps: int = PUSH_STEPS
    """Rounds of the symmetric hard-sphere push (:mod:`~crystalforge.generators.packing`) that
    spreads atoms out after scaling, before the clash screen; ``0``: off."""
    push_scale: float = PUSH_SCALE
    """Contact distance of the push relative to the sum of covalent radii."""
    priors_path: str | None = None
    """JSON written by ``train_priors``; ``None``: the priors shipped with the package."""
    name: str = field(default="wyckoff", init=False)
    family: Family = field(default="wyckoff", init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.combination_share <= 1.0:
            raise ConfigError(
                f"combination_share must be in [0, 1], got {self.combination_share!r}"
            )
        if not (self.formula_prior_power >= 0 and math.isfinite(self.formula_prior_power)):
            raise ConfigError(f"formula_prior_power must be >= 0, got {self.formula_prior_power!r}")
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
        if not 0.0 <= self.min_distance_ratio < 2.0:
            raise ConfigError(
                f"min_distance_ratio must be in [0, 2), got {self.min_distance_ratio!r}"
            )
        check_push(self.push_steps, self.push_scale)

    @property
    def priors(self) -> WyckoffPriors:
        """The learned priors (loaded once per process)."""
        return load_priors(self.priors_path)

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose ``request.num_structures`` structures with learned symmetry.

        Raises:
            GenerationFailed: The request admits no structure (no charge-balanced composition
                in the atom range, requested space groups that cannot host any of them, a cell
                beyond ``max_cell_atoms``), or every attempt failed.
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        priors = self.priors
        pool = self._pool(request, priors)
        combos_cache: dict[tuple[int, ...], list[WyckoffCombination]] = {}

        def attempt(rng: np.random.Generator) -> tuple[Structure, dict[str, Scalar]] | None:
            plan = self._plan(rng, pool, request, priors, combos_cache)
            pyxtal_seed = int(rng.integers(2**63))
            structure = None if plan is None else self._build(plan, pyxtal_seed)
            if plan is None or structure is None:
                return None
            choice = plan.cell.choice
            parameters: dict[str, Scalar] = {
                "prior": plan.prior,
                "space_group": plan.space_group,
                "formula": choice.formula,
                "z": plan.cell.z,
                "charge_balance": choice.charge_balance,
                "oxidation_states": choice.oxidation_label(),
                "pyxtal_seed": pyxtal_seed,
                "volume_factor": self.volume_factor,
                "volume_prior": self.volume_prior,
                "push_steps": self.push_steps,
                "volume_a3": round(float(structure.volume), 3),
            }
            if plan.sites is not None:
                parameters["wyckoff_sites"] = " ".join(
                    f"{el}:{','.join(sites)}"
                    for el, sites in zip(choice.elements, plan.sites, strict=True)
                )
                parameters["combination_count"] = plan.combination_count
            return structure, parameters

        return generate_with_budget(
            request,
            attempt,
            name=self.name,
            max_attempts_per_structure=self.max_attempts_per_structure,
            timeout_s=self.timeout_s,
        )

    # -- drawing ---------------------------------------------------------------------------

    def _pool(self, request: GenerationRequest, priors: WyckoffPriors) -> CellPool:
        """Every (composition, z) that fits, weighted by the learned formula and size priors."""

        def weigh(rank: int, choice: CompositionChoice, zs: list[int]) -> list[float]:
            anonymous = Composition(choice.formula).anonymized_formula
            count = priors.anonymous_formula_count(anonymous)
            weight = (1 + count) ** self.formula_prior_power / math.sqrt(1 + rank)
            sizes = priors.num_atoms_counts(num_elements=len(choice.elements))
            size_weights = [1 + sizes.get(z * choice.num_atoms, 0) for z in zs]
            total = sum(size_weights)
            return [weight * w / total for w in size_weights]

        cells = request_cells(
            request, max_cell_atoms=self.max_cell_atoms, weigh=weigh, who=self.name
        )
        hosted = cells_by_space_group(request, cells, max_cell_atoms=self.max_cell_atoms)
        if hosted is not None:
            # Cells any requested group can host, in their original order.
            keep = {id(c) for group in hosted.values() for c in group}
            cells = [c for c in cells if id(c) in keep]
        return CellPool.of(cells)

    def _plan(
        self,
        rng: np.random.Generator,
        pool: CellPool,
        request: GenerationRequest,
        priors: WyckoffPriors,
        combos_cache: dict[tuple[int, ...], list[WyckoffCombination]],
    ) -> _Plan | None:
        cell = pool.draw(rng)
        counts = cell.counts
        if counts not in combos_cache:
            combos_cache[counts] = _matching_combinations(priors, counts, request.space_groups)
        combos = combos_cache[counts]
        if combos and rng.random() < self.combination_share:
            weights = np.array([c.count for c in combos], dtype=float)
            combo = combos[int(rng.choice(len(combos), p=weights / weights.sum()))]
            sites = _assign_sites(rng, priors, cell, combo)
            if sites is not None:
                return _Plan(cell, combo.space_group, "combination", sites, combo.count)
        if request.space_groups:
            groups = [g for g in sorted(set(request.space_groups)) if _compatible(g, counts)]
            if not groups:
                return None
            learned = priors.space_group_counts(num_elements=len(counts))
            weights = np.array([1.0 + learned.get(g, 0) for g in groups])
            space_group = groups[int(rng.choice(len(groups), p=weights / weights.sum()))]
            return _Plan(cell, space_group, "space_group" if learned else "fallback")
        learned = priors.space_group_counts(num_elements=len(counts))
        if learned:
            groups = sorted(learned)
            probabilities = np.array([learned[g] for g in groups], dtype=float)
            probabilities /= probabilities.sum()
            for _ in range(_GROUP_DRAWS):
                space_group = groups[int(rng.choice(len(groups), p=probabilities))]
                if _compatible(space_group, counts):
                    return _Plan(cell, space_group, "space_group")
        for _ in range(_GROUP_DRAWS):
            space_group = _draw_space_group(rng)
            if _compatible(space_group, counts):
                return _Plan(cell, space_group, "fallback")
        return None

    def _build(self, plan: _Plan, seed: int) -> Structure | None:
        """PyXtal's crystal for a plan, scaled to the learned volume and screened for clashes.

        Returns:
            The primitive cell, or ``None`` when PyXtal failed or two atoms end up closer than
            ``min_distance_ratio`` times the sum of their covalent radii.
        """
        structure = build_structure(
            plan.cell, plan.space_group, seed, volume_factor=self.volume_factor, sites=plan.sites
        )
        if structure is None:
            return None
        return scale_and_screen(
            structure,
            self.priors if self.volume_prior else None,
            volume_factor=self.volume_factor,
            min_distance_ratio=self.min_distance_ratio,
            push_steps=self.push_steps,
            push_scale=self.push_scale,
        )


def scale_and_screen(
    structure: Structure,
    priors: WyckoffPriors | None,
    *,
    volume_factor: float = 1.0,
    min_distance_ratio: float = 0.5,
    push_steps: int = 0,
    push_scale: float = PUSH_SCALE,
) -> Structure | None:
    """Scale a freshly placed cell to the learned volume, push atoms apart, reject clashes.

    Shared by every generator that lets PyXtal place atoms on sampled Wyckoff sites
    (``wyckoff``, ``autoregressive``).

    Args:
        structure: The cell PyXtal built (scaled in place).
        priors: Learned priors whose per-element atom volumes give the target volume;
            ``None`` keeps PyXtal's volume.
        volume_factor: Multiplies the learned volume.
        min_distance_ratio: Reject when two atoms (periodic images included) are closer than
            this times the sum of their covalent radii; ``0`` turns the screen off.
        push_steps: Rounds of :func:`~crystalforge.generators.packing.push_apart` (symmetric
            hard-sphere push at fixed cell, contact ``push_scale`` times the covalent-radius
            sum) after scaling; ``0``: no push.
        push_scale: Contact distance of the push relative to the covalent-radius sum.

    Returns:
        The structure (a new object when pushed), or ``None`` when it has clashing atoms.
    """
    if priors is not None:
        counts = {str(el): float(n) for el, n in structure.composition.items()}
        target = priors.cell_volume(counts)
        if target is not None and target > 0:
            structure.scale_lattice(target * volume_factor)
    if push_steps > 0:
        structure, _ = push_apart(structure, scale=push_scale, steps=push_steps)
    if min_distance_ratio > 0 and _clashes(structure, min_distance_ratio):
        logger.debug("%s has clashing atoms", structure.formula)
        return None
    return structure


def _clashes(structure: Structure, ratio: float) -> bool:
    """Whether two atoms (periodic images included) are closer than ``ratio`` x covalent radii."""
    symbols = [site.specie.symbol for site in structure]
    radii = np.array([covalent_radius(el) for el in symbols])
    cutoff = ratio * 2 * float(radii.max())
    centers, points, _images, distances = structure.get_neighbor_list(cutoff)
    if len(distances) == 0:
        return False
    limits = ratio * (radii[centers] + radii[points])
    return bool(np.any(distances < limits))


def _matching_combinations(
    priors: WyckoffPriors, counts: tuple[int, ...], space_groups: tuple[int, ...]
) -> list[WyckoffCombination]:
    """Learned combinations whose per-element atoms equal ``counts`` in their conventional cell."""
    allowed = set(space_groups)
    out: list[WyckoffCombination] = []
    for centering in _CENTERINGS:
        sums = tuple(sorted((c * centering for c in counts), reverse=True))
        for combo in priors.matching_combinations(sums):
            if allowed and combo.space_group not in allowed:
                continue
            if centering_multiplicity(combo.space_group) == centering:
                out.append(combo)
    return out


def _site_weight(priors: WyckoffPriors, element: str, space_group: int, label: str) -> float:
    """Smoothed probability that ``element`` sits on a site of this site-symmetry order."""
    orders = priors.element_site_orders(element)
    order = general_multiplicity(space_group) // int(label[:-1])
    return (orders.get(order, 0) + 1) / (sum(orders.values()) + 48)


def _assign_sites(
    rng: np.random.Generator, priors: WyckoffPriors, cell: Cell, combo: WyckoffCombination
) -> tuple[tuple[str, ...], ...] | None:
    """Site groups of ``combo`` per element of ``cell``, drawn by site tendencies.

    Only assignments where each element gets exactly its atom count are considered; each is
    weighted by the product over its sites of :func:`_site_weight`.
    """
    elements = cell.choice.elements
    multiplicity = centering_multiplicity(combo.space_group)
    wanted = [c * multiplicity for c in cell.counts]
    groups = combo.groups
    sums = [sum(int(label[:-1]) for label in g) for g in groups]
    if len(groups) != len(elements) or len(groups) > _MAX_PERMUTED_GROUPS:
        return None
    options: list[tuple[tuple[str, ...], ...]] = []
    weights: list[float] = []
    for order in itertools.permutations(range(len(groups))):
        if any(sums[j] != wanted[i] for i, j in enumerate(order)):
            continue
        assigned = tuple(groups[j] for j in order)
        weight = math.prod(
            _site_weight(priors, el, combo.space_group, label)
            for el, group in zip(elements, assigned, strict=True)
            for label in group
        )
        options.append(assigned)
        weights.append(weight)
    if not options:
        return None
    p = np.array(weights) / sum(weights)
    return options[int(rng.choice(len(options), p=p))]
