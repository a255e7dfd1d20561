"""Structures from known crystals by data-driven ion substitution.

For a request the generator lists the charge-balanced target compositions (from
:func:`~crystalforge.generators.compositions.enumerate_compositions`) and then finds *parent*
structures whose elements map one-to-one onto a target element set, so that the renamed parent
has one of those compositions. The likelihood of replacing a parent ion by a target ion comes
from pymatgen's ionic substitution statistics
(:class:`~pymatgen.analysis.structure_prediction.substitution_probability.SubstitutionProbability`,
Hautier et al., Inorg. Chem. 50, 656 (2011); its data ship with pymatgen, so it works offline).

Parents come from ``request.parents`` when given; otherwise from a reference (the offline
MP-20/MPTS-52 data by default): for each target element the most probable substituting ions
are looked up, their combinations give related chemical systems (for Li-Mn-O: Na-Mn-O, Li-Fe-O,
Li-Co-O, ...), and the known phases of those systems within ``max_parent_e_above_hull_ev`` of
the hull that have structures are the parents. Each (parent, substitution) is weighted by the
product of the conditional substitution probabilities; distinct ones are drawn without
replacement (Gumbel top-k with the request seed). The substituted cell is rescaled by the ratio
of the cubed ionic radii. Candidates carry the parent's ``material_id`` as ``parent_id`` and the
substitution in ``parameters``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.analysis.structure_prediction.substitution_probability import (
    SubstitutionProbability,
)
from pymatgen.core import Composition, Element, Species, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalforge.core.candidate import Candidate
from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.compositions import CompositionChoice, enumerate_compositions

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from crystalforge.generators.base import Family, GenerationRequest

logger = logging.getLogger(__name__)

_MAX_TARGET_SYSTEMS = 16  # element sets of a pool request searched at most
_RELATIVE_FLOOR = 1e-3  # given parents: drop mappings this much less probable than the best


class StructureSource(Protocol):
    """What the generator needs of a reference (``ReferenceHull`` satisfies it)."""

    def known_phases(
        self,
        chemsys: Iterable[str],
        *,
        max_e_above_hull: float | None = 0.1,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """Known materials of a chemical system (``material_id``, ``formula``, ``e_above_hull``)."""
        ...

    def reference_structures(self, formula: str) -> list[Structure]:
        """Known structures with this reduced formula (``properties["material_id"]`` set)."""
        ...


@functools.cache
def _probability_table() -> SubstitutionProbability:
    """The substitution statistics of pymatgen (a few seconds to load, so cached)."""
    return SubstitutionProbability()


@functools.cache
def _table_species() -> tuple[Species, ...]:
    return tuple(sorted(_probability_table().species, key=str))


@functools.cache
def _substitutes(target: str, states: tuple[int, ...], top: int) -> tuple[tuple[str, float], ...]:
    """Parent elements most likely to be replaced by ``target`` in these states, with scores.

    The score of a parent element is the largest ``P(parent ion | target ion)`` over the states
    and the parent's ions of the same sign; ``target`` itself is always included.
    """
    table = _probability_table()
    best: dict[str, float] = {}
    for state in states:
        if state == 0:
            continue
        ion = Species(target, state)
        for parent in _table_species():
            parent_state = parent.oxi_state or 0
            if parent_state * state <= 0:
                continue
            try:
                p = float(table.cond_prob(parent, ion))
            except ZeroDivisionError:
                # pymatgen's table has no occurrences of this ion (P(ion) = 0): no evidence.
                continue
            symbol = parent.symbol
            if p > best.get(symbol, 0.0):
                best[symbol] = p
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:top]
    if target not in dict(ranked):
        ranked.append((target, best.get(target, 1.0)))
    return tuple(ranked)


def _radius(symbol: str, states: tuple[int, ...]) -> float:
    """Ionic radius (Å) of the first state with one, else the atomic radius."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for state in states:
            if state == 0:
                continue
            try:
                radius = Species(symbol, state).ionic_radius
            except (ValueError, KeyError):
                radius = None
            if radius:
                return float(radius)
        radius = Element(symbol).atomic_radius
    return float(radius) if radius else 1.5


@dataclass(frozen=True)
class _Option:
    """One parent with one element substitution."""

    parent: Structure
    parent_id: str
    mapping: tuple[tuple[str, str], ...]
    """(parent element, target element) pairs, parent elements sorted."""
    choice: CompositionChoice
    weight: float
    e_above_hull: float | None


@dataclass(frozen=True, kw_only=True)
class SubstitutionGenerator:
    """Ions substituted into known structures (registry and family ``"substitution"``).

    Same request, same structures; structures are distinct, so a request whose search finds fewer
    (parent, substitution) pairs than ``num_structures`` returns fewer (with a warning), and none
    raises :class:`~crystalforge.core.errors.GenerationFailed`.
    """

    reference: StructureSource | None = None
    """Where parents come from when the request has none; ``None``: the offline reference data
    (:func:`crystalforge.memory.reference_data.load_reference`)."""
    substitutes_per_element: int = 8
    """Most probable parent elements considered per target element (besides itself)."""
    max_parent_systems: int = 160
    """Related chemical systems searched per request, most probable first."""
    max_parent_e_above_hull_ev: float = 0.1
    """Parents at most this far above the reference hull, eV/atom."""
    rescale_volume: bool = True
    """Scale the cell by the ratio of the summed cubed ionic radii after substitution."""
    deduplicate: bool = True
    """Skip products that pymatgen's ``StructureMatcher`` (default tolerances, as the
    uniqueness validator) matches to an earlier product: parents of one structure type often
    give the same product."""
    name: str = field(default="substitution", init=False)
    family: Family = field(default="substitution", init=False)

    def __post_init__(self) -> None:
        if self.substitutes_per_element < 1:
            raise ConfigError(
                f"substitutes_per_element must be >= 1, got {self.substitutes_per_element!r}"
            )
        if self.max_parent_systems < 1:
            raise ConfigError(f"max_parent_systems must be >= 1, got {self.max_parent_systems!r}")
        if not self.max_parent_e_above_hull_ev >= 0:
            raise ConfigError(
                f"max_parent_e_above_hull_ev must be >= 0, got {self.max_parent_e_above_hull_ev!r}"
            )

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose up to ``request.num_structures`` substituted known structures.

        Raises:
            GenerationFailed: The request admits no composition, no reference structures are
                available, or no parent maps onto an allowed composition.
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        if bad := [sg for sg in request.space_groups if not 1 <= sg <= 230]:
            raise GenerationFailed(f"space groups must be in 1-230, got {bad!r}")
        choices = enumerate_compositions(request)
        allowed = {c.formula: c for c in choices}
        systems = list(dict.fromkeys(frozenset(c.elements) for c in choices))
        systems = systems[:_MAX_TARGET_SYSTEMS]
        states = _states_by_element(choices)
        if request.parents:
            options = self._options_from_parents(request.parents, systems, states, allowed)
            where = f"the {len(request.parents)} given parent structure(s)"
        else:
            source = self._source()
            options = self._options_from_reference(source, systems, states, allowed)
            where = f"the reference structures ({source!r}) of related chemical systems"
            if not options and _is_empty(source, systems):
                raise GenerationFailed(
                    f"substitution needs known structures, and the reference {source!r} has none "
                    "for these systems (no reference data folder? set CRYSTALFORGE_DATA_DIR or "
                    "pass GenerationRequest.parents)"
                )
        options = [o for o in options if _fits(o, request)]
        if not options:
            targets = ", ".join("-".join(sorted(s)) for s in systems[:5])
            raise GenerationFailed(
                f"substitution found no parent in {where} that maps onto a charge-balanced "
                f"composition of {targets} with {max(request.min_atoms, 1)}-{request.max_atoms} "
                "atoms per cell"
                + (f" in space groups {request.space_groups}" if request.space_groups else "")
            )
        rng = np.random.default_rng(request.seed % 2**64)
        keys = np.log([o.weight for o in options]) + rng.gumbel(size=len(options))
        order = np.argsort(-keys, kind="stable")
        out: list[Candidate] = []
        seen: set[str] = set()
        by_formula: dict[str, list[Structure]] = {}
        matcher = StructureMatcher() if self.deduplicate else None
        duplicates = 0
        for position in order:
            if len(out) == request.num_structures:
                break
            option = options[int(position)]
            structure = self._substitute(option, states)
            mapping = dict(option.mapping)
            candidate = Candidate.create(
                structure,
                generator=self.name,
                seed=request.seed,
                parameters={
                    "index": len(out),
                    "substitution": " ".join(f"{p}->{t}" for p, t in mapping.items() if p != t),
                    "parent_formula": option.parent.composition.reduced_formula,
                    "parent_e_above_hull": option.e_above_hull,
                    "formula": option.choice.formula,
                    "charge_balance": option.choice.charge_balance,
                    "oxidation_states": option.choice.oxidation_label(),
                    "weight": option.weight,
                },
                parent_id=option.parent_id,
                round=request.round,
            )
            if candidate.id in seen:
                continue
            earlier = by_formula.setdefault(option.choice.formula, [])
            if matcher is not None and any(_matches(matcher, structure, e) for e in earlier):
                duplicates += 1
                continue
            earlier.append(structure)
            seen.add(candidate.id)
            out.append(candidate)
        if len(out) < request.num_structures:
            logger.warning(
                "substitution returned %d of %d structures: only %d (parent, substitution) pairs "
                "fit the request, %d of them duplicates",
                len(out), request.num_structures, len(options), duplicates,
            )  # fmt: skip
        return out

    # -- parents -----------------------------------------------------------------------------

    def _source(self) -> StructureSource:
        if self.reference is not None:
            return self.reference
        from crystalforge.memory.reference_data import load_reference

        return load_reference()

    def _options_from_reference(
        self,
        source: StructureSource,
        systems: Sequence[frozenset[str]],
        states: dict[str, tuple[int, ...]],
        allowed: dict[str, CompositionChoice],
    ) -> list[_Option]:
        """Options from known phases of related systems, most probable systems first."""
        ranked: list[tuple[float, tuple[tuple[str, str], ...]]] = []
        for system in systems:
            targets = sorted(system)
            per_target = [
                _substitutes(t, states.get(t, ()), self.substitutes_per_element) for t in targets
            ]
            for combo in itertools.product(*per_target):
                parents = [p for p, _ in combo]
                if len(set(parents)) < len(parents) or parents == targets:
                    continue
                weight = math.prod(w for _, w in combo)
                ranked.append((weight, tuple(zip(parents, targets, strict=True))))
        ranked.sort(key=lambda item: (-item[0], item[1]))
        options: list[_Option] = []
        for weight, pairs in ranked[: self.max_parent_systems]:
            mapping = dict(pairs)
            for phase in source.known_phases(
                sorted(mapping), max_e_above_hull=self.max_parent_e_above_hull_ev, exact=True
            ):
                choice = allowed.get(_renamed(phase["formula"], mapping))
                if choice is None:
                    continue
                for structure in source.reference_structures(phase["formula"]):
                    if structure.properties.get("material_id") == phase["material_id"]:
                        options.append(
                            _Option(
                                structure,
                                str(phase["material_id"]),
                                tuple(sorted(pairs)),
                                choice,
                                weight,
                                phase.get("e_above_hull"),
                            )
                        )
        return options

    def _options_from_parents(
        self,
        parents: Sequence[Structure],
        systems: Sequence[frozenset[str]],
        states: dict[str, tuple[int, ...]],
        allowed: dict[str, CompositionChoice],
    ) -> list[_Option]:
        """Options from the request's parents: bijections onto a target element set.

        Per parent, mappings less than ``_RELATIVE_FLOOR`` times as probable as its best one
        (e.g. a cation onto an anion site) are dropped.
        """
        options: list[_Option] = []
        for number, parent in enumerate(parents):
            parent_elements = sorted(el.symbol for el in parent.composition.elements)
            parent_id = str(parent.properties.get("material_id", f"parent-{number}"))
            found: list[_Option] = []
            for system in systems:
                if len(system) != len(parent_elements):
                    continue
                scores = {
                    t: dict(_substitutes(t, states.get(t, ()), 10_000)) for t in sorted(system)
                }
                for targets in itertools.permutations(sorted(system)):
                    mapping = dict(zip(parent_elements, targets, strict=True))
                    choice = allowed.get(_renamed(parent.composition.reduced_formula, mapping))
                    if choice is None:
                        continue
                    weight = math.prod(scores[t].get(p, 1e-9) for p, t in mapping.items())
                    pairs = tuple(sorted(mapping.items()))
                    found.append(_Option(parent, parent_id, pairs, choice, weight, None))
            best = max((o.weight for o in found), default=0.0)
            options.extend(o for o in found if o.weight >= _RELATIVE_FLOOR * best)
        return options

    def _substitute(self, option: _Option, states: dict[str, tuple[int, ...]]) -> Structure:
        """The parent with its elements renamed and (optionally) its volume rescaled."""
        mapping = dict(option.mapping)
        structure = option.parent.copy()
        structure.remove_oxidation_states()
        if self.rescale_volume:
            parent_states = dict(option.choice.oxidation_states)
            before = after = 0.0
            for site in structure:
                parent = site.specie.symbol
                target = mapping[parent]
                target_states = parent_states.get(target, states.get(target, ()))
                before += _radius(parent, target_states) ** 3
                after += _radius(target, target_states) ** 3
            ratio = after / before if before > 0 else 1.0
        else:
            ratio = 1.0
        structure.replace_species({Element(p): Element(t) for p, t in mapping.items() if p != t})
        if ratio != 1.0:
            structure.scale_lattice(structure.volume * ratio)
        structure.properties = {}
        return structure


def _is_empty(source: StructureSource, systems: Sequence[frozenset[str]]) -> bool:
    """Whether the reference knows no phase of the target systems or their subsystems.

    That means it has no data (e.g. the elemental-only fallback without a data folder).
    """
    return not any(source.known_phases(sorted(s), max_e_above_hull=None) for s in systems)


def _matches(matcher: StructureMatcher, first: Structure, second: Structure) -> bool:
    try:
        return bool(matcher.fit(first, second))
    except ValueError:  # a lattice pymatgen cannot reduce: treat as different
        return False


def _renamed(formula: str, mapping: dict[str, str]) -> str:
    """Reduced formula of ``formula`` with its elements renamed by ``mapping``."""
    composition = Composition(formula)
    return Composition(
        {mapping.get(el.symbol, el.symbol): amount for el, amount in composition.items()}
    ).reduced_formula


def _states_by_element(choices: Sequence[CompositionChoice]) -> dict[str, tuple[int, ...]]:
    """Oxidation states each element takes among the choices, first seen first."""
    states: dict[str, dict[int, None]] = {}
    for choice in choices:
        for element, element_states in choice.oxidation_states:
            for state in element_states:
                states.setdefault(element, {})[state] = None
    return {el: tuple(s) for el, s in states.items()}


def _fits(option: _Option, request: GenerationRequest) -> bool:
    """Whether the parent's cell size and space group fit the request."""
    if not max(request.min_atoms, 1) <= len(option.parent) <= request.max_atoms:
        return False
    if request.space_groups:
        try:
            number = SpacegroupAnalyzer(option.parent, symprec=0.1).get_space_group_number()
        except ValueError:
            return False
        return number in request.space_groups
    return True
