"""FakeGenerator: the contract, prototypes, distances and speed.

Pure unit tests: the fake calls no service, so there is nothing to record.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.fake import FakeGenerator, _radius
from tests.contracts.generator import make_generator_contract_tests


@pytest.fixture
def fake_generator() -> FakeGenerator:
    return FakeGenerator()


TestFakeContract = make_generator_contract_tests("fake_generator")


@pytest.mark.parametrize(
    ("formula", "atoms", "prototype", "space_group"),
    [
        ("NaCl", 2, "CsCl", 221),
        ("NaCl", 8, "rocksalt", 225),
        ("CaF2", 12, "fluorite", 225),
        ("Li2O", 12, "fluorite", 225),
        ("SrTiO3", 5, "perovskite", 221),
    ],
)
def test_prototypes(formula: str, atoms: int, prototype: str, space_group: int) -> None:
    request = GenerationRequest(num_structures=3, formula=formula, min_atoms=atoms, max_atoms=atoms)
    for candidate in FakeGenerator().generate(request):
        assert candidate.parameters["prototype"] == prototype
        assert candidate.formula == formula
        assert SpacegroupAnalyzer(candidate.structure).get_space_group_number() == space_group


@pytest.mark.parametrize(
    "system",
    [
        ("Li", "Mn", "O"),
        ("Cs", "F"),
        ("Ba", "Ti", "O"),
        ("H", "Li"),
        ("Na", "K"),
        ("Cs", "I", "Pb"),
    ],
)
def test_no_two_atoms_closer_than_their_covalent_radii(system: tuple[str, ...]) -> None:
    request = GenerationRequest(num_structures=10, seed=3, chemical_system=system, max_atoms=16)
    out = FakeGenerator().generate(request)
    assert len(out) == 10
    for candidate in out:
        structure = candidate.structure
        distances = structure.distance_matrix
        for i, j in itertools.combinations(range(len(structure)), 2):
            limit = _radius(structure[i].specie.symbol) + _radius(structure[j].specie.symbol)
            assert distances[i, j] >= limit, (candidate.formula, i, j)


def test_follows_the_formula_and_atom_range() -> None:
    request = GenerationRequest(num_structures=6, formula="Li2MnO3", min_atoms=6, max_atoms=12)
    out = FakeGenerator().generate(request)
    assert {c.formula for c in out} == {"Li2MnO3"}
    assert {len(c.structure) for c in out} <= {6, 12}


def test_structure_i_does_not_depend_on_num_structures() -> None:
    small = GenerationRequest(num_structures=3, seed=5, chemical_system=("Li", "Mn", "O"))
    large = GenerationRequest(num_structures=8, seed=5, chemical_system=("Li", "Mn", "O"))
    generator = FakeGenerator()
    assert [c.id for c in generator.generate(small)] == [
        c.id for c in generator.generate(large)[:3]
    ]


def test_is_fast() -> None:
    request = GenerationRequest(num_structures=100, seed=1, chemical_system=("Li", "Mn", "O"))
    FakeGenerator().generate(request)  # warm the composition tables
    start = time.perf_counter()
    assert len(FakeGenerator().generate(request)) == 100
    assert time.perf_counter() - start < 1.0


def test_does_not_import_pyxtal() -> None:
    code = (
        "import sys\n"
        "from crystalforge.generators.base import GenerationRequest\n"
        "from crystalforge.generators.fake import FakeGenerator\n"
        "request = GenerationRequest(num_structures=2, chemical_system=('Na', 'Cl'))\n"
        "FakeGenerator().generate(request)\n"
        "assert 'pyxtal' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_uncharge_balanced_system_fails_with_reason() -> None:
    request = GenerationRequest(num_structures=2, chemical_system=("F", "Ne"))
    with pytest.raises(GenerationFailed, match="oxidation states"):
        FakeGenerator().generate(request)


def test_rejects_overlapping_spacing() -> None:
    with pytest.raises(ConfigError, match="min_spacing_factor"):
        FakeGenerator(min_spacing_factor=0.5)
