"""Charge-balanced compositions for a :class:`~crystalforge.generators.base.GenerationRequest`.

Every generator that samples compositions itself (pyxtal, the fake) starts from
:func:`enumerate_compositions`, so that all of them read a request the same way:

* ``request.formula``: only that formula; ``request.compositions``: only those formulae. Their
  charge balance is reported but not required (the caller asked for them explicitly).
* otherwise ``request.chemical_system`` (every element present) or subsets of
  ``request.elements`` that contain ``request.required_elements`` (2-4 elements; all-metal
  subsets only from an all-metal pool), or with neither, the required elements alone.
  Stoichiometries with up to :data:`MAX_COEFFICIENT` atoms per element are kept when they
  charge-balance.

Charge balance uses SMACT's ICSD-2024 oxidation-state counts (species reported at least 3
times). The *common* states (at least 10 % of an element's reports, SMACT's "medium"
commonality) are tried first; only a system with no common balance falls back to the *rare*
ones. Cations must be less electronegative than anions (SMACT's Pauling test). Mixed valence is
allowed for SMACT's mixed-valence elements between neighbouring states of one sign (so
LiMn2O4 = Li+ Mn3+ Mn4+ O2-). All-metal systems and single elements are accepted with
oxidation state 0, as SMACT accepts alloys.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import smact
from pymatgen.core import Composition, Element
from smact import metals
from smact.screening import MIXED_VALENCE_ELEMENTS

from crystalforge.core.errors import GenerationFailed

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from crystalforge.generators.base import GenerationRequest

ChargeBalance = Literal["common", "rare", "metallic", "none"]
"""How a composition balances: with common or only rare ICSD oxidation states, as a metal or
element (oxidation state 0), or not at all (an explicitly requested formula)."""

MAX_COEFFICIENT = 8
"""Largest number of atoms of one element in an enumerated reduced formula."""
MAX_ELEMENTS = 4
"""Largest number of elements in a composition drawn from an element pool."""
MAX_SUBSETS = 64
"""Element subsets of a pool searched at most; larger pools are sampled with the request seed."""
MAX_PER_SUBSET = 64
"""Choices kept per element subset of a pool (the simplest)."""
MAX_CHOICES = 4096
"""Choices kept for a chemical system (the simplest)."""
_MAX_GRID = 50_000  # stoichiometries tried per element set; bounds 5+ element systems

_CONSENSUS = 3  # ICSD reports needed for an oxidation state to count at all (SMACT default)
_COMMON_SHARE = 0.10  # share of an element's reports needed to be "common" (SMACT "medium")
_ICSD_COUNTS = Path(smact.data_directory) / "oxidation_states_icsd24_counts.json"

_Option = tuple[int, ...]
"""Oxidation states of one element in one assignment: one state, or two neighbouring states."""


@dataclass(frozen=True, kw_only=True)
class CompositionChoice:
    """A reduced composition a generator may build, with the cell sizes that fit the request."""

    composition: Composition
    """Reduced composition, elements in order of electronegativity."""
    z_options: tuple[int, ...]
    """Formula units per cell with ``min_atoms <= z * num_atoms <= max_atoms``, ascending."""
    oxidation_states: tuple[tuple[str, tuple[int, ...]], ...]
    """Per element the oxidation state(s) that balance it (two for mixed valence, 0 for metals);
    empty when ``charge_balance == "none"``."""
    charge_balance: ChargeBalance
    """How the composition balances, see :data:`ChargeBalance`."""

    @property
    def formula(self) -> str:
        """Reduced formula, e.g. ``Li2MnO3``."""
        return self.composition.reduced_formula

    @property
    def num_atoms(self) -> int:
        """Atoms in one formula unit of the reduced formula."""
        return round(self.composition.num_atoms)

    @property
    def elements(self) -> tuple[str, ...]:
        """Element symbols in composition order."""
        return tuple(el.symbol for el in self.composition.elements)

    def species_and_counts(self, z: int) -> tuple[list[str], list[int]]:
        """Element symbols and atom counts for a cell of ``z`` formula units."""
        return list(self.elements), [round(n) * z for n in self.composition.values()]

    def oxidation_label(self) -> str:
        """Oxidation states as text, e.g. ``"Li+1 Mn+3/+4 O-2"``; ``""`` if unbalanced."""
        return " ".join(
            el + "/".join(f"{s:+d}" if s else "0" for s in states)
            for el, states in self.oxidation_states
        )


def enumerate_compositions(
    request: GenerationRequest,
    *,
    max_coefficient: int = MAX_COEFFICIENT,
    max_elements: int = MAX_ELEMENTS,
    max_subsets: int = MAX_SUBSETS,
    max_per_subset: int = MAX_PER_SUBSET,
) -> list[CompositionChoice]:
    """The compositions a request allows, simplest first, with diversity across element sets.

    Choices from one element set are ordered by atoms in the reduced formula, then by the largest
    coefficient; several element sets (pool mode) are interleaved round-robin, so the simplest
    formula of every set comes before the second simplest of any. Sets that balance only with
    rare oxidation states come after all others. The result is deterministic for a request.

    Args:
        request: What to generate; its composition fields and atom range are read.
        max_coefficient: Largest atom count of one element in an enumerated reduced formula.
        max_elements: Largest element subset taken from a pool (not applied to a chemical system).
        max_subsets: Pool subsets searched at most (sampled with ``request.seed`` beyond that).
        max_per_subset: Choices kept per pool subset (the simplest); a chemical system keeps
            up to :data:`MAX_CHOICES`.

    Returns:
        The choices, never empty.

    Raises:
        GenerationFailed: The request admits no composition; the message says why.
    """
    min_atoms = max(request.min_atoms, 1)
    if request.max_atoms < min_atoms:
        raise GenerationFailed(
            f"no cell size fits: min_atoms={request.min_atoms!r} > max_atoms={request.max_atoms!r}"
        )
    if request.formula is not None or request.compositions:
        formulas = (request.formula,) if request.formula is not None else request.compositions
        return _explicit_choices(formulas, request, min_atoms)

    subsets, pool_mode = _element_subsets(request, max_elements, max_subsets)
    per_subset: list[list[CompositionChoice]] = []
    limit = max_per_subset if pool_mode else MAX_CHOICES
    for symbols in subsets:
        found = _subset_choices(symbols, min_atoms, request.max_atoms, max_coefficient, limit)
        if found:
            per_subset.append(found)
    if not per_subset:
        raise GenerationFailed(_explain_nothing(subsets, pool_mode, request, max_coefficient))
    ranked = [
        ((choice.charge_balance == "rare", rank, choice.num_atoms, index), choice)
        for index, choices in enumerate(per_subset)
        for rank, choice in enumerate(choices)
    ]
    ranked.sort(key=lambda item: item[0])
    return [choice for _, choice in ranked]


def charge_balance_of(formula: str) -> ChargeBalance:
    """How ``formula`` balances: ``"common"``, ``"rare"``, ``"metallic"`` or ``"none"``.

    The same rule :func:`enumerate_compositions` applies, for a formula a model proposed.

    Raises:
        GenerationFailed: ``formula`` is not a formula of known elements.
    """
    composition = _parse_formula(formula).reduced_composition
    symbols = _by_electronegativity(el.symbol for el in composition.elements)
    coeffs = tuple(round(composition[s]) for s in symbols)
    return _balance_any(symbols, coeffs)[1]


def z_options(num_atoms: int, min_atoms: int, max_atoms: int) -> tuple[int, ...]:
    """Formula units ``z`` with ``min_atoms <= z * num_atoms <= max_atoms``."""
    first = max(1, -(-min_atoms // num_atoms))
    return tuple(range(first, max_atoms // num_atoms + 1))


# -- request reading ---------------------------------------------------------------------------


def _check_symbols(symbols: Iterable[str], what: str) -> None:
    for symbol in symbols:
        if not Element.is_valid_symbol(symbol):
            raise GenerationFailed(f"{what} contains {symbol!r}, which is not an element")


def _element_subsets(
    request: GenerationRequest, max_elements: int, max_subsets: int
) -> tuple[list[tuple[str, ...]], bool]:
    """Element sets to enumerate (each in electronegativity order) and whether they are a pool."""
    required = set(request.required_elements)
    excluded = set(request.excluded_elements)
    _check_symbols(required, "required_elements")
    if clash := required & excluded:
        raise GenerationFailed(f"elements {sorted(clash)} are both required and excluded")
    if request.chemical_system is not None:
        system = set(request.chemical_system)
        _check_symbols(system, "chemical_system")
        if not system:
            raise GenerationFailed("the chemical system is empty")
        if clash := system & excluded:
            raise GenerationFailed(f"chemical system contains excluded elements {sorted(clash)}")
        if missing := required - system:
            raise GenerationFailed(
                f"required elements {sorted(missing)} are not in the chemical system "
                f"{'-'.join(sorted(system))}"
            )
        return [_by_electronegativity(system)], False
    if request.elements is None:
        if not required:
            raise GenerationFailed(
                "no element pool: set chemical_system, elements, required_elements or formula"
            )
        return [_by_electronegativity(required)], False
    pool = set(request.elements) - excluded
    _check_symbols(pool, "elements")
    if missing := required - pool:
        raise GenerationFailed(
            f"required elements {sorted(missing)} are not in the element pool {sorted(pool)}"
        )
    if not pool:
        raise GenerationFailed("the element pool is empty after removing excluded elements")
    if len(required) > max_elements:
        return [_by_electronegativity(required)], True
    optional = sorted(pool - required)
    smallest = max(len(required), 2 if len(pool) > 1 else 1)
    # An all-metal subset of a pool with non-metals would flood the list with alloys; alloys come
    # only from all-metal pools.
    allow_alloys = all(symbol in metals for symbol in pool)
    subsets: list[tuple[str, ...]] = []
    for size in range(smallest, max_elements + 1):
        for extra in itertools.combinations(optional, size - len(required)):
            subset = required | set(extra)
            if len(subset) > 1 and not allow_alloys and all(s in metals for s in subset):
                continue
            subsets.append(_by_electronegativity(subset))
    if len(subsets) > max_subsets:
        rng = np.random.default_rng(request.seed % 2**64)
        keep = sorted(rng.choice(len(subsets), size=max_subsets, replace=False).tolist())
        subsets = [subsets[i] for i in keep]
    return subsets, True


def _explicit_choices(
    formulas: Sequence[str], request: GenerationRequest, min_atoms: int
) -> list[CompositionChoice]:
    """Choices for formulae the request names, checked against its element constraints."""
    choices: list[CompositionChoice] = []
    rejected: list[str] = []
    for formula in formulas:
        composition = _parse_formula(formula)
        symbols = {el.symbol for el in composition.elements}
        if reason := _constraint_violation(symbols, request):
            rejected.append(f"{formula}: {reason}")
            continue
        n_atoms = round(composition.num_atoms)
        zs = z_options(n_atoms, min_atoms, request.max_atoms)
        if not zs:
            rejected.append(
                f"{composition.reduced_formula} has {n_atoms} atoms per formula unit and no "
                f"multiple of it lies in {min_atoms}-{request.max_atoms} atoms per cell"
            )
            continue
        ordered = _by_electronegativity(symbols)
        coeffs = tuple(round(composition[s]) for s in ordered)
        choices.append(_make_choice(ordered, coeffs, zs, *_balance_any(ordered, coeffs)))
    if not choices:
        raise GenerationFailed("no requested formula is usable: " + "; ".join(rejected))
    return choices


def _parse_formula(formula: str) -> Composition:
    try:
        composition = Composition(formula)
    except ValueError as exc:
        raise GenerationFailed(f"cannot parse formula {formula!r}: {exc}") from None
    if not composition.elements or not all(isinstance(e, Element) for e in composition.elements):
        raise GenerationFailed(f"formula {formula!r} contains something that is not an element")
    integer_formula, _ = composition.get_integer_formula_and_factor()
    return Composition(integer_formula).reduced_composition


def _constraint_violation(symbols: set[str], request: GenerationRequest) -> str | None:
    if request.chemical_system is not None and symbols != set(request.chemical_system):
        return f"elements differ from the chemical system {'-'.join(request.chemical_system)}"
    if request.elements is not None and not symbols <= set(request.elements):
        return f"elements {sorted(symbols - set(request.elements))} are not in the element pool"
    if missing := set(request.required_elements) - symbols:
        return f"required elements {sorted(missing)} are missing"
    if banned := symbols & set(request.excluded_elements):
        return f"contains excluded elements {sorted(banned)}"
    return None


# -- charge balance --------------------------------------------------------------------------


@functools.cache
def _icsd_counts() -> dict[str, dict[int, int]]:
    """Non-zero ICSD-2024 oxidation states with at least ``_CONSENSUS`` reports, per element."""
    rows = json.loads(_ICSD_COUNTS.read_text())
    counts: dict[str, dict[int, int]] = {}
    for row in rows:
        state, count = int(row["oxidation_state"]), int(row["results_count"])
        if state != 0 and count >= _CONSENSUS:
            counts.setdefault(str(row["element"]), {})[state] = count
    return counts


@functools.cache
def oxidation_states(symbol: str, *, rare: bool = False) -> tuple[int, ...]:
    """ICSD-2024 oxidation states of an element, most frequently reported first.

    Args:
        symbol: Element symbol.
        rare: Include states below 10 % of the element's reports (still at least 3 reports).

    Returns:
        The states; empty for elements with none (noble gases, most heavy actinides).
    """
    counts = _icsd_counts().get(symbol, {})
    total = sum(counts.values())
    kept = [s for s, n in counts.items() if rare or n >= _COMMON_SHARE * total]
    return tuple(sorted(kept, key=lambda s: (-counts[s], s)))


@functools.cache
def _electronegativity(symbol: str) -> float | None:
    return smact.Element(symbol).pauling_eneg


def _by_electronegativity(symbols: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(symbols, key=lambda s: (_electronegativity(s) or 5.0, s)))


@functools.cache
def _assignments(symbols: tuple[str, ...], rare: bool) -> tuple[tuple[_Option, ...], ...]:
    """Oxidation-state assignments that pass the Pauling test, preferred ones first.

    Preference: fewer mixed-valence elements, then more frequently reported states.
    """
    per_element: list[list[tuple[int, _Option]]] = []
    for symbol in symbols:
        states = oxidation_states(symbol, rare=rare)
        options: list[tuple[int, _Option]] = [(rank, (s,)) for rank, s in enumerate(states)]
        if symbol in MIXED_VALENCE_ELEMENTS:
            ordered = sorted(states)
            for low, high in itertools.pairwise(ordered):
                if low * high > 0:
                    rank = states.index(low) + states.index(high)
                    options.append((rank, (low, high)))
        if not options:
            return ()
        per_element.append(options)
    scored: list[tuple[tuple[int, int], tuple[_Option, ...]]] = []
    for combo in itertools.product(*per_element):
        assignment = tuple(option for _, option in combo)
        if _pauling_ok(symbols, assignment):
            mixed = sum(len(option) > 1 for option in assignment)
            scored.append(((mixed, sum(rank for rank, _ in combo)), assignment))
    scored.sort(key=lambda item: item[0])
    return tuple(assignment for _, assignment in scored)


def _pauling_ok(symbols: tuple[str, ...], assignment: tuple[_Option, ...]) -> bool:
    """Cations and anions both present, every cation less electronegative than every anion."""
    cations = [_electronegativity(s) for s, o in zip(symbols, assignment, strict=True) if o[0] > 0]
    anions = [_electronegativity(s) for s, o in zip(symbols, assignment, strict=True) if o[0] < 0]
    if not cations or not anions:
        return False
    known_cations = [x for x in cations if x is not None]
    known_anions = [x for x in anions if x is not None]
    if not known_cations or not known_anions:
        return True  # SMACT has no electronegativity to judge by
    return max(known_cations) < min(known_anions)


@functools.cache
def _charges(option: _Option, count: int) -> frozenset[int]:
    """Total charges ``count`` atoms can carry with ``option`` (mixed valence needs both)."""
    if len(option) == 1:
        return frozenset({option[0] * count})
    low, high = option
    return frozenset(a * low + (count - a) * high for a in range(1, count))


def _balance(
    symbols: tuple[str, ...], coeffs: tuple[int, ...], rare: bool
) -> tuple[_Option, ...] | None:
    """The preferred assignment that makes ``coeffs`` neutral, or ``None``."""
    return _balance_rows(symbols, np.array([coeffs]), rare)[0]


def _balance_rows(
    symbols: tuple[str, ...], coeffs: np.ndarray, rare: bool
) -> list[tuple[_Option, ...] | None]:
    """Per row of ``coeffs`` (shape [m, k]), the preferred neutral assignment or ``None``."""
    result: list[tuple[_Option, ...] | None] = [None] * len(coeffs)
    open_rows = np.arange(len(coeffs))
    for assignment in _assignments(symbols, rare):
        if open_rows.size == 0:
            break
        neutral = _neutral(coeffs[open_rows], assignment)
        for row in open_rows[neutral].tolist():
            result[row] = assignment
        open_rows = open_rows[~neutral]
    return result


def _neutral(coeffs: np.ndarray, assignment: tuple[_Option, ...]) -> np.ndarray:
    """Which rows of ``coeffs`` (shape [m, k]) can be neutral with ``assignment``."""
    charge = np.zeros(len(coeffs), dtype=np.int64)
    pairs: list[int] = []
    for j, option in enumerate(assignment):
        if len(option) == 1:
            charge += coeffs[:, j] * option[0]
        else:
            pairs.append(j)
            charge += coeffs[:, j] * option[0]  # every atom at the low state ...
    if not pairs:
        return charge == 0
    # ... and a_j atoms raised by the step d_j, 1 <= a_j <= c_j - 1, must cancel the rest.
    steps = {assignment[j][1] - assignment[j][0] for j in pairs}
    if len(steps) == 1:
        step = steps.pop()
        need = -charge
        raised = need // step
        most = sum(coeffs[:, j] - 1 for j in pairs)
        mixable = np.all(coeffs[:, pairs] >= 2, axis=1)
        return mixable & (need % step == 0) & (raised >= len(pairs)) & (raised <= most)
    neutral = np.zeros(len(coeffs), dtype=bool)
    for row, counts in enumerate(coeffs.tolist()):
        totals = {0}
        for option, count in zip(assignment, counts, strict=True):
            totals = {t + q for t in totals for q in _charges(option, count)}
        neutral[row] = 0 in totals
    return neutral


def _is_metallic(symbols: tuple[str, ...]) -> bool:
    return len(symbols) == 1 or all(s in metals for s in symbols)


def _balance_any(
    symbols: tuple[str, ...], coeffs: tuple[int, ...]
) -> tuple[tuple[_Option, ...], ChargeBalance]:
    """Oxidation states of a given formula: common, then rare, then metallic, else none."""
    for rare in (False, True):
        if (assignment := _balance(symbols, coeffs, rare)) is not None:
            return assignment, "rare" if rare else "common"
    if _is_metallic(symbols):
        return tuple((0,) for _ in symbols), "metallic"
    return (), "none"


def _make_choice(
    symbols: tuple[str, ...],
    coeffs: tuple[int, ...],
    zs: tuple[int, ...],
    assignment: tuple[_Option, ...],
    balance: ChargeBalance,
) -> CompositionChoice:
    return CompositionChoice(
        composition=Composition(dict(zip(symbols, coeffs, strict=True))),
        z_options=zs,
        oxidation_states=tuple(zip(symbols, assignment, strict=False)),
        charge_balance=balance,
    )


@functools.cache
def _stoichiometries(k: int, max_total: int, max_coefficient: int) -> np.ndarray:
    """Reduced coefficient rows (gcd 1) with at most ``max_total`` atoms, simplest first.

    Returns:
        Integer array of shape [m, k].
    """
    if k == 1:
        return np.ones((1 if max_total >= 1 else 0, 1), dtype=np.int64)
    max_coefficient = min(max_coefficient, int(_MAX_GRID ** (1 / k)))
    grid = np.array(
        list(itertools.product(range(1, max_coefficient + 1), repeat=k)), dtype=np.int64
    )
    grid = grid[(grid.sum(axis=1) <= max_total) & (np.gcd.reduce(grid, axis=1) == 1)]
    # lexsort sorts by the last key first: total atoms, then largest coefficient, then the tuple.
    order = np.lexsort((*grid.T[::-1], grid.max(axis=1), grid.sum(axis=1)))
    return grid[order]


def _subset_choices(
    symbols: tuple[str, ...],
    min_atoms: int,
    max_atoms: int,
    max_coefficient: int,
    limit: int | None = None,
) -> list[CompositionChoice]:
    """Balanced formulae of exactly these elements that fit the atom range, simplest first.

    Rare oxidation states are used only for element sets that no common states balance at
    any size (so the atom range never decides the chemistry). At most ``limit`` choices (the
    simplest) when given.
    """
    grid = _stoichiometries(len(symbols), max_atoms, max_coefficient)
    totals = grid.sum(axis=1)
    # Some multiple z of the formula must land in [min_atoms, max_atoms].
    grid = grid[(max_atoms // totals) * totals >= min_atoms]
    rows: list[tuple[int, ...]] = [tuple(row) for row in grid.tolist()]
    found: list[tuple[tuple[int, ...], tuple[_Option, ...]]] = []
    balance: ChargeBalance = "metallic"
    if _is_metallic(symbols):
        found = [(row, tuple((0,) for _ in symbols)) for row in rows[:limit]]
    else:
        rare = not _balances_commonly(symbols)
        balance = "rare" if rare else "common"
        assignments = _balance_rows(symbols, grid, rare)
        found = [
            (row, assignment)
            for row, assignment in zip(rows, assignments, strict=True)
            if assignment is not None
        ][:limit]
    return [
        _make_choice(symbols, coeffs, z_options(sum(coeffs), min_atoms, max_atoms), a, balance)
        for coeffs, a in found
    ]


@functools.cache
def _balances_commonly(symbols: tuple[str, ...]) -> bool:
    """Whether common oxidation states balance some stoichiometry of these elements."""
    grid = _stoichiometries(len(symbols), len(symbols) * MAX_COEFFICIENT, MAX_COEFFICIENT)
    return any(a is not None for a in _balance_rows(symbols, grid, rare=False))


def _explain_nothing(
    subsets: list[tuple[str, ...]],
    pool_mode: bool,
    request: GenerationRequest,
    max_coefficient: int,
) -> str:
    """Why no subset gave a composition: charge balance, or the atom range."""
    smallest: CompositionChoice | None = None
    for symbols in subsets[:8]:
        found = _subset_choices(symbols, 1, len(symbols) * max_coefficient, max_coefficient)
        if found and (smallest is None or found[0].num_atoms < smallest.num_atoms):
            smallest = found[0]
    atoms = f"{max(request.min_atoms, 1)}-{request.max_atoms} atoms per cell"
    if smallest is not None:
        return (
            f"no charge-balanced composition fits {atoms}; the smallest, {smallest.formula}, "
            f"has {smallest.num_atoms} atoms per formula unit"
        )
    systems = ", ".join("-".join(s) for s in subsets[:8]) + (", ..." if len(subsets) > 8 else "")
    states = "; ".join(
        f"{s} {' '.join(f'{x:+d}' for x in oxidation_states(s, rare=True)) or 'none known'}"
        for s in sorted({s for subset in subsets for s in subset})
    )
    where = f"any subset of the element pool ({systems})" if pool_mode else systems
    return (
        f"none of the common oxidation states of {where} balance, nor do the rare ones "
        f"(ICSD states: {states}), with cations less electronegative than anions"
    )
