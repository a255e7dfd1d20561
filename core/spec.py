"""The DesignSpec: a design request compiled into typed constraints, targets and budgets.

A DesignSpec is plain data (a frozen pydantic model): it is stored in graph state and in run
files as JSON. Hard targets are filters; soft targets only rank. Ranges are closed intervals in
the canonical unit of each property (see :data:`PROPERTIES`).
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymatgen.core import Element

PropertyName = Literal[
    "e_above_hull",
    "formation_energy",
    "band_gap",
    "bulk_modulus",
    "density",
    "volume_per_atom",
    "magnetic_moment",
]

PROPERTIES: dict[str, tuple[str, str]] = {
    "e_above_hull": ("eV/atom", "energy above the convex hull of the reference phase diagram"),
    "formation_energy": ("eV/atom", "formation energy per atom"),
    "band_gap": ("eV", "electronic band gap"),
    "bulk_modulus": ("GPa", "bulk modulus"),
    "density": ("g/cm^3", "mass density"),
    "volume_per_atom": ("Å^3/atom", "cell volume per atom"),
    "magnetic_moment": ("μB/atom", "magnetic moment per atom"),
}
"""Property name -> (canonical unit, description). Every target is stored in these units."""

DEFAULT_MAX_ATOMS = 20
"""Atoms-per-cell limit when a request gives none (MP-20 and CHGNet speed on a laptop)."""

DEFAULT_E_ABOVE_HULL_EV = 0.1
"""Metastability threshold (eV/atom) applied when a request says nothing about stability."""


def _check_element(symbol: str) -> str:
    if not Element.is_valid_symbol(symbol):
        raise ValueError(f"unknown element symbol {symbol!r}")
    return symbol


class PropertyTarget(BaseModel):
    """A closed range on one property, in its canonical unit; ``None`` leaves a side open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PropertyName
    min: float | None = None
    max: float | None = None
    hard: bool = True
    """Hard targets filter candidates; soft targets only rank them."""
    source: str = "request"
    """Where the target came from: the request text, or a default the planner applied."""

    @property
    def unit(self) -> str:
        """Canonical unit of the property."""
        return PROPERTIES[self.name][0]

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError(f"target {self.name!r} has neither a lower nor an upper bound")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"target {self.name!r} has a non-finite bound {bound!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"contradictory range for {self.name!r}: lower bound {self.min:g} is above "
                f"upper bound {self.max:g} {self.unit}"
            )
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` (canonical unit) lies in the range."""
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)

    def distance(self, value: float) -> float:
        """How far ``value`` lies outside the range (0 inside), in the canonical unit."""
        if self.min is not None and value < self.min:
            return self.min - value
        if self.max is not None and value > self.max:
            return value - self.max
        return 0.0

    def describe(self) -> str:
        """Human-readable form, e.g. ``band_gap in [1, 3] eV``."""
        unit = self.unit
        if self.min is not None and self.max is not None:
            text = f"{self.name} in [{self.min:g}, {self.max:g}] {unit}"
        elif self.min is not None:
            text = f"{self.name} >= {self.min:g} {unit}"
        else:
            text = f"{self.name} <= {self.max:g} {unit}"
        return text if self.hard else f"{text} (soft)"


class Budget(BaseModel):
    """Limits on one design run; the run stops when any is spent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rounds: int = Field(default=3, ge=1, le=100)
    """Generate-validate-reflect rounds."""
    samples_per_round: int = Field(default=12, ge=1, le=10_000)
    """Structures asked of the generators per round."""
    max_validator_calls: int = Field(default=40, ge=1)
    """CHGNet relaxations over the whole run."""
    max_wall_time_s: float = Field(default=240.0, gt=0)
    """Working time (generation and validation) over the whole run, seconds. The default keeps
    a default run within about five minutes on a 2-core laptop, start-up included."""
    max_llm_tokens: int = Field(default=200_000, ge=0)
    """LLM tokens over the whole run (unused by the embedded planner)."""
    patience_rounds: int = Field(default=2, ge=1)
    """Stop after this many rounds without a new hit."""


class DesignSpec(BaseModel):
    """A compiled design request.

    Element sets are sorted tuples of symbols. ``allowed_elements`` is ``None`` when any element
    not excluded may appear; a chemical system sets it to exactly the system's elements.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: str = ""
    """The request text as the user wrote it."""
    required_elements: tuple[str, ...] = ()
    allowed_elements: tuple[str, ...] | None = None
    excluded_elements: tuple[str, ...] = ()
    chemical_system: tuple[str, ...] | None = None
    """Elements of the chemical system (every candidate uses all of them), sorted."""
    formula: str | None = None
    """Reduced formula when the request names one, e.g. ``LiMnO2``."""
    min_atoms: int = Field(default=1, ge=1)
    max_atoms: int = Field(default=DEFAULT_MAX_ATOMS, ge=1)
    space_groups: tuple[int, ...] = ()
    """Allowed international space-group numbers (empty: any)."""
    targets: tuple[PropertyTarget, ...] = ()
    num_candidates: int = Field(default=3, ge=1, le=1000)
    """How many candidates meeting every hard constraint are wanted."""
    budget: Budget = Field(default_factory=Budget)

    @field_validator("required_elements", "excluded_elements", "chemical_system")
    @classmethod
    def _sort_elements(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        return tuple(sorted({_check_element(s) for s in value}))

    @field_validator("allowed_elements")
    @classmethod
    def _sort_allowed(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        return tuple(sorted({_check_element(s) for s in value}))

    @field_validator("space_groups")
    @classmethod
    def _check_space_groups(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for number in value:
            if not 1 <= number <= 230:
                raise ValueError(f"space group {number!r} is not in 1-230")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.min_atoms > self.max_atoms:
            raise ValueError(
                f"contradictory atom limits: at least {self.min_atoms} and at most "
                f"{self.max_atoms} atoms per cell"
            )
        clash = set(self.required_elements) & set(self.excluded_elements)
        if clash:
            raise ValueError(f"elements both required and excluded: {sorted(clash)}")
        if self.chemical_system is not None:
            clash = set(self.chemical_system) & set(self.excluded_elements)
            if clash:
                raise ValueError(
                    f"elements of the chemical system {'-'.join(self.chemical_system)!r} "
                    f"are excluded: {sorted(clash)}"
                )
        if self.allowed_elements is not None:
            missing = set(self.required_elements) - set(self.allowed_elements)
            if missing:
                raise ValueError(f"required elements {sorted(missing)} are not allowed")
        names = [t.name for t in self.targets]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise ValueError(f"more than one target for {sorted(duplicated)}")
        return self

    def target(self, name: str) -> PropertyTarget | None:
        """The target on ``name``, if any."""
        return next((t for t in self.targets if t.name == name), None)

    @property
    def hard_targets(self) -> tuple[PropertyTarget, ...]:
        """Targets that filter candidates."""
        return tuple(t for t in self.targets if t.hard)

    def element_pool(self) -> tuple[str, ...] | None:
        """Elements a candidate may contain, or ``None`` if unrestricted."""
        pool = self.chemical_system or self.allowed_elements
        if pool is None:
            return None
        return tuple(e for e in pool if e not in self.excluded_elements)

    def describe(self) -> list[str]:
        """One line per constraint, for reports and logs."""
        lines: list[str] = []
        if self.chemical_system:
            lines.append(f"chemical system: {'-'.join(self.chemical_system)}")
        if self.formula:
            lines.append(f"formula: {self.formula}")
        if self.required_elements:
            lines.append(f"required elements: {', '.join(self.required_elements)}")
        if self.allowed_elements is not None and not self.chemical_system:
            lines.append(f"allowed elements: {', '.join(self.allowed_elements)}")
        if self.excluded_elements:
            lines.append(f"excluded elements: {', '.join(self.excluded_elements)}")
        lines.append(f"atoms per cell: {self.min_atoms}-{self.max_atoms}")
        if self.space_groups:
            lines.append(f"space groups: {', '.join(map(str, self.space_groups))}")
        lines.extend(f"target: {t.describe()} [{t.source}]" for t in self.targets)
        lines.append(f"candidates wanted: {self.num_candidates}")
        return lines
