"""Impossible requests fail fast with the reason, for every PyXtal-based and substitution generator.

Each case must raise :class:`GenerationFailed` naming what is wrong *before* any PyXtal attempt
(counted through the shared ``build_structure``), so that no request can spin in a retry loop.
Pure unit tests: the substitution generator's parents come from an in-memory reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from crystalforge.core.errors import GenerationFailed
from crystalforge.generators import symmetry, wyckoff
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.substitution import SubstitutionGenerator
from crystalforge.generators.symmetry import PyXtalGenerator
from crystalforge.generators.wyckoff import WyckoffPriorGenerator
from tests.generators.test_substitution import PARENT_SYSTEMS, InMemoryReference

if TYPE_CHECKING:
    from crystalforge.generators.base import Generator

CASES: dict[str, tuple[dict[str, Any], str]] = {
    # LiMnO2 / Li2MnO3 / ... cannot sit in Ia-3d with at most 8 atoms per primitive cell.
    "incompatible space group": (
        {"chemical_system": ("Li", "Mn", "O"), "max_atoms": 8, "space_groups": (230,)},
        r"space group 230 cannot host|in space groups \(230,\)",
    ),
    "no charge balance": ({"chemical_system": ("F", "Ne")}, "oxidation states"),
    "noble gas": ({"chemical_system": ("Kr", "S")}, "oxidation states"),
    "0 atoms": ({"chemical_system": ("Li", "Mn", "O"), "max_atoms": 0}, "no cell size fits"),
    "500 atoms": (
        {"chemical_system": ("Li", "O"), "min_atoms": 500, "max_atoms": 500},
        "max_cell_atoms|500-500",
    ),
    "space group 231": ({"chemical_system": ("Li", "O"), "space_groups": (231,)}, "1-230"),
    "negative count": ({"chemical_system": ("Li", "O"), "num_structures": -1}, "num_structures"),
}


def _generators() -> dict[str, Generator]:
    return {
        "pyxtal": PyXtalGenerator(),
        "wyckoff": WyckoffPriorGenerator(),
        "substitution": SubstitutionGenerator(reference=InMemoryReference(PARENT_SYSTEMS)),
    }


@pytest.fixture(scope="module")
def generators() -> dict[str, Generator]:
    return _generators()


@pytest.fixture
def pyxtal_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts PyXtal builds of both PyXtal-based generators."""
    calls: list[int] = []
    real = symmetry.build_structure

    def counting(*args: Any, **kwargs: Any):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(symmetry, "build_structure", counting)
    monkeypatch.setattr(wyckoff, "build_structure", counting)
    return calls


@pytest.mark.parametrize("family", ["pyxtal", "wyckoff", "substitution"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_request_fails_before_any_attempt(
    family: str, case: str, generators: dict[str, Generator], pyxtal_calls: list[int]
) -> None:
    kwargs, message = CASES[case]
    request = GenerationRequest(**{"num_structures": 3, **kwargs})
    with pytest.raises(GenerationFailed, match=message):
        generators[family].generate(request)
    assert pyxtal_calls == []


def test_counting_hook_sees_real_attempts(
    generators: dict[str, Generator], pyxtal_calls: list[int]
) -> None:
    """The hook the test above relies on does count attempts (so it can fail)."""
    request = GenerationRequest(num_structures=2, chemical_system=("Na", "Cl"), max_atoms=4)
    for family in ("pyxtal", "wyckoff"):
        assert len(generators[family].generate(request)) == 2
    assert len(pyxtal_calls) >= 4
