"""Symmetry priors learned from known crystals, for :mod:`crystalforge.generators.wyckoff`.

The JSON at :data:`DEFAULT_PRIORS_PATH` is written by
:mod:`crystalforge.generators.train_priors` from the training rows of the offline data (MP-20
binary/ternary val plus MPTS-52 test/val, minus the held-out MP-20 test ids). It holds counts of:

* space groups, overall and by number of elements and by atoms per primitive cell;
* atoms per primitive cell, overall and by number of elements;
* anonymous formulas (pymatgen's ``anonymized_formula``, e.g. ``ABC2``);
* Wyckoff combinations per space group: the Wyckoff positions of each element of a structure
  (conventional-cell labels such as ``4c``), elements anonymised (see :func:`combination_key`);
* per element, the site-symmetry order of its sites (general multiplicity / site multiplicity:
  1 on the general position, larger on special positions);
* per element, a fitted volume per atom (Å^3; cell volume ~ sum of its atoms' volumes).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import ConfigError
from crystalforge.generators.symmetry import _group

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

FORMAT_VERSION = 2
"""Version of the JSON layout; bumped when a table changes meaning (2 added
``element_volumes``)."""
_READABLE_FORMATS = (1, FORMAT_VERSION)
"""Layouts this module reads (format 1 lacks ``element_volumes``: no volume prior)."""
DEFAULT_PRIORS_PATH = Path(__file__).parent / "data" / "wyckoff_priors.json"
"""The priors shipped with the package."""

_Group = tuple[str, ...]
"""The Wyckoff labels of one element, sorted, e.g. ``("4c", "4c")``."""


def _label_key(label: str) -> tuple[int, str]:
    return int(label[:-1]), label[-1]


def _group_sum(group: Iterable[str]) -> int:
    return sum(int(label[:-1]) for label in group)


def combination_key(groups: Iterable[Iterable[str]]) -> str:
    """Canonical text of a Wyckoff combination with anonymous elements.

    Each element's labels are sorted by multiplicity and letter and joined with ``,``; the
    elements are ordered by atoms (most first), then by text, and joined with ``|``. Example:
    ``"8d|4c,4c|4a"``.
    """
    texts = [(_group_sum(g), ",".join(sorted(g, key=_label_key))) for g in groups]
    texts.sort(key=lambda item: (-item[0], item[1]))
    return "|".join(text for _, text in texts)


def parse_combination(key: str) -> tuple[_Group, ...]:
    """The per-element label groups of a :func:`combination_key`."""
    return tuple(tuple(part.split(",")) for part in key.split("|"))


@functools.cache
def general_multiplicity(space_group: int) -> int:
    """Multiplicity of the general position of a space group (conventional cell)."""
    return int(_group(space_group)[0].multiplicity)  # pyright: ignore[reportAttributeAccessIssue]


@functools.cache
def _multiplicities(space_group: int) -> dict[str, int]:
    return {
        wp.letter: int(wp.multiplicity)  # pyright: ignore[reportAttributeAccessIssue]
        for wp in _group(space_group).Wyckoff_positions
    }


def wyckoff_label(space_group: int, letter: str) -> str:
    """The conventional-cell label of a Wyckoff letter, e.g. ``wyckoff_label(62, "c") == "4c"``.

    Raises:
        KeyError: The space group has no such letter.
    """
    return f"{_multiplicities(space_group)[letter]}{letter}"


@dataclass(frozen=True)
class WyckoffCombination:
    """One Wyckoff combination of the priors, its element groups and how often it occurred."""

    space_group: int
    groups: tuple[_Group, ...]
    """Labels per (anonymous) element, most atoms first."""
    count: int

    @property
    def sums(self) -> tuple[int, ...]:
        """Conventional-cell atoms per element group, sorted descending."""
        return tuple(sorted((_group_sum(g) for g in self.groups), reverse=True))


def _ints(table: Mapping[str, int]) -> dict[int, int]:
    return {int(k): int(v) for k, v in table.items()}


@dataclass(frozen=True)
class WyckoffPriors:
    """Read access to the learned prior tables (all raw counts).

    Build with :func:`load_priors`; lookups for unseen keys return empty tables, so that the
    caller can fall back.
    """

    data: dict[str, Any]
    path: str = ""

    def __post_init__(self) -> None:
        if self.data.get("format") not in _READABLE_FORMATS:
            raise ConfigError(
                f"priors {self.path!r} have format {self.data.get('format')!r}, expected "
                f"{FORMAT_VERSION}; regenerate them with crystalforge.generators.train_priors"
            )

    @property
    def source(self) -> dict[str, Any]:
        """What the priors were learned from (files, rows, rule)."""
        return dict(self.data["source"])

    def space_group_counts(
        self, *, num_elements: int | None = None, num_atoms: int | None = None
    ) -> dict[int, int]:
        """Space-group counts, overall or among structures with this many elements or atoms."""
        table = self.data["space_groups"]
        if num_elements is not None:
            return _ints(table["by_num_elements"].get(str(num_elements), {}))
        if num_atoms is not None:
            return _ints(table["by_num_atoms"].get(str(num_atoms), {}))
        return _ints(table["all"])

    def num_atoms_counts(self, *, num_elements: int | None = None) -> dict[int, int]:
        """Counts of atoms per primitive cell, overall or for this many elements."""
        table = self.data["num_atoms"]
        if num_elements is not None:
            return _ints(table["by_num_elements"].get(str(num_elements), {}))
        return _ints(table["all"])

    def anonymous_formula_count(self, anonymous_formula: str) -> int:
        """How often an anonymous formula (pymatgen's ``anonymized_formula``) occurred."""
        return int(self.data["anonymous_formulas"].get(anonymous_formula, 0))

    def combinations(self, space_group: int) -> list[WyckoffCombination]:
        """The Wyckoff combinations seen in a space group, most frequent first."""
        return list(self._combinations().get(space_group, ()))

    def matching_combinations(self, sums: tuple[int, ...]) -> list[WyckoffCombination]:
        """Combinations whose per-element atom counts (conventional cell) are ``sums``.

        ``sums`` is sorted descending. Combinations of every space group are returned, most
        frequent first.
        """
        return list(self._by_sums().get(sums, ()))

    def element_site_orders(self, element: str) -> dict[int, int]:
        """How often ``element`` sat on a site of each site-symmetry order (1 = general)."""
        return _ints(self.data["element_site_orders"].get(element, {}))

    def element_volume(self, element: str) -> float | None:
        """Fitted volume per atom of ``element`` in Å^3; ``None`` when not learned."""
        value = self.data.get("element_volumes", {}).get(element)
        return None if value is None else float(value)

    def cell_volume(self, element_counts: Mapping[str, float]) -> float | None:
        """Predicted cell volume in Å^3 (sum of fitted atom volumes); ``None`` if any is unknown.

        Args:
            element_counts: Atoms per element in the cell.
        """
        volumes = [self.element_volume(el) for el in element_counts]
        if any(v is None for v in volumes):
            return None
        return float(sum(n * v for n, v in zip(element_counts.values(), volumes, strict=True) if v))

    @functools.cached_property
    def _combination_table(self) -> dict[int, tuple[WyckoffCombination, ...]]:
        out: dict[int, tuple[WyckoffCombination, ...]] = {}
        for sg, table in self.data["wyckoff_combinations"].items():
            combos = [
                WyckoffCombination(int(sg), parse_combination(key), int(count))
                for key, count in table.items()
            ]
            combos.sort(key=lambda c: (-c.count, c.groups))
            out[int(sg)] = tuple(combos)
        return out

    def _combinations(self) -> dict[int, tuple[WyckoffCombination, ...]]:
        return self._combination_table

    @functools.cached_property
    def _sums_table(self) -> dict[tuple[int, ...], tuple[WyckoffCombination, ...]]:
        out: dict[tuple[int, ...], list[WyckoffCombination]] = defaultdict(list)
        for combos in self._combination_table.values():
            for combo in combos:
                out[combo.sums].append(combo)
        return {
            k: tuple(sorted(v, key=lambda c: (-c.count, c.space_group, c.groups)))
            for k, v in out.items()
        }

    def _by_sums(self) -> dict[tuple[int, ...], tuple[WyckoffCombination, ...]]:
        return self._sums_table


@functools.cache
def _load(path: str) -> WyckoffPriors:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no Wyckoff priors at {path!r}; write them with "
            "`python -m crystalforge.generators.train_priors`"
        ) from None
    return WyckoffPriors(data, path)


def load_priors(path: Path | str | None = None) -> WyckoffPriors:
    """The priors at ``path`` (default: the shipped :data:`DEFAULT_PRIORS_PATH`), cached.

    Raises:
        ConfigError: The file is missing or has another format version.
    """
    return _load(str(Path(path) if path is not None else DEFAULT_PRIORS_PATH))
