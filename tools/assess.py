"""Judge a validated candidate against the targets and constraints of a DesignSpec."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crystalforge.core.candidate import Candidate
    from crystalforge.core.spec import DesignSpec

PREDICTED_BY = {
    "e_above_hull": "hull",
    "formation_energy": "hull",
    "band_gap": "properties",
    "bulk_modulus": "properties",
    "magnetic_moment": "properties",
    "density": "properties",
}
"""Properties a validator computes, and which. density and volume_per_atom also come from the
cell itself; magnetic_moment falls back to ``chgnet_relax``'s ``magmom_mean``."""

_METRIC_FOR = (
    ("e_above_hull", "e_above_hull"),
    ("formation_energy", "formation_energy"),
    ("band_gap", "band_gap"),
    ("bulk_modulus", "bulk_modulus"),
    ("magmom_mean", "magnetic_moment"),
    ("magnetic_moment", "magnetic_moment"),
)
"""(candidate property key, spec property name); a later key overrides an earlier one."""

_UNEVALUABLE_SCALE = 1.0
"""Score penalty per target that cannot be evaluated (ranks them after evaluated ones)."""


@dataclass(frozen=True, kw_only=True)
class Assessment:
    """How a candidate stands against a spec."""

    meets_hard: bool
    """Validation passed and every evaluable hard target and constraint holds."""
    unmet: tuple[str, ...]
    unevaluated: tuple[str, ...]
    values: dict[str, float]
    """Property values used (canonical units)."""
    score: float
    """Lower is better: distance outside hard targets x 10 + soft distances + e_above_hull."""


def property_values(candidate: Candidate) -> dict[str, float]:
    """Property values of a candidate in the canonical units of :data:`~core.spec.PROPERTIES`."""
    structure = candidate.structure
    values: dict[str, float] = {
        "density": float(structure.density),
        "volume_per_atom": float(structure.volume / len(structure)),
    }
    props = candidate.properties
    for key, name in _METRIC_FOR:
        value = props.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values[name] = float(value)
    return values


def assess(spec: DesignSpec, candidate: Candidate, *, passed: bool) -> Assessment:
    """Compare a candidate (after validation) with the spec's targets and constraints."""
    values = property_values(candidate)
    unmet: list[str] = []
    unevaluated: list[str] = []
    hard_distance = 0.0
    soft_distance = 0.0
    for target in spec.targets:
        value = values.get(target.name)
        if value is None:
            unevaluated.append(target.describe())
            if target.hard:
                hard_distance += _UNEVALUABLE_SCALE
            continue
        gap = target.distance(value)
        if target.hard:
            hard_distance += gap
            if gap > 0:
                unmet.append(f"{target.describe()} (got {value:.3g})")
        else:
            soft_distance += gap
    unmet.extend(_constraint_violations(spec, candidate))
    e_hull = values.get("e_above_hull", 1.0)
    score = 10.0 * hard_distance + soft_distance + max(e_hull, -1.0)
    if not passed:
        score += 100.0
    meets = passed and not unmet and not [t for t in spec.hard_targets if t.name not in values]
    return Assessment(
        meets_hard=meets,
        unmet=tuple(unmet),
        unevaluated=tuple(unevaluated),
        values=values,
        score=round(score, 6),
    )


def _constraint_violations(spec: DesignSpec, candidate: Candidate) -> list[str]:
    """Composition, size and symmetry constraints a structure breaks (generators should not)."""
    problems: list[str] = []
    elements = {el.symbol for el in candidate.structure.composition.elements}
    n_atoms = len(candidate.structure)
    if spec.chemical_system and elements != set(spec.chemical_system):
        problems.append(
            f"elements {'-'.join(sorted(elements))} are not the system "
            f"{'-'.join(spec.chemical_system)}"
        )
    excluded = elements & set(spec.excluded_elements)
    if excluded:
        problems.append(f"contains excluded {', '.join(sorted(excluded))}")
    missing = set(spec.required_elements) - elements
    if missing:
        problems.append(f"lacks required {', '.join(sorted(missing))}")
    if spec.allowed_elements is not None and not elements <= set(spec.allowed_elements):
        problems.append(
            f"contains elements outside {', '.join(spec.allowed_elements)}: "
            f"{', '.join(sorted(elements - set(spec.allowed_elements)))}"
        )
    if not spec.min_atoms <= n_atoms <= spec.max_atoms:
        problems.append(f"{n_atoms} atoms, outside {spec.min_atoms}-{spec.max_atoms}")
    if spec.formula and candidate.structure.composition.reduced_formula != spec.formula:
        problems.append(f"formula {candidate.formula} is not {spec.formula}")
    sg = candidate.properties.get("relaxed_space_group_number") or candidate.properties.get(
        "space_group_number"
    )
    if spec.space_groups and isinstance(sg, int) and sg not in spec.space_groups:
        problems.append(f"space group {sg} not in {list(spec.space_groups)}")
    return problems
