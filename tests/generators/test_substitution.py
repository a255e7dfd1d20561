"""SubstitutionGenerator: the contract, charge balance, parents, and bad input.

Pure unit tests: parents come from an in-memory reference of FakeGenerator structures (and, in
one test, from the offline data folder); nothing calls a service, so there is nothing to record.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.compositions import enumerate_compositions
from crystalforge.generators.fake import FakeGenerator
from crystalforge.generators.registry import load_generator
from crystalforge.generators.substitution import SubstitutionGenerator
from tests.contracts.generator import CONTRACT_REQUEST, make_generator_contract_tests

PARENT_SYSTEMS = [("Na", "Mn", "O"), ("Li", "Co", "O"), ("Li", "Fe", "O"), ("Na", "Fe", "O")]


class InMemoryReference:
    """Known phases and structures of a few systems, from FakeGenerator."""

    def __init__(self, systems: list[tuple[str, ...]]) -> None:
        self.structures: list[Structure] = []
        for number, system in enumerate(systems):
            request = GenerationRequest(
                num_structures=8, seed=number, chemical_system=system, min_atoms=4, max_atoms=12
            )
            for index, candidate in enumerate(FakeGenerator().generate(request)):
                structure = candidate.structure.copy()
                structure.properties["material_id"] = f"fake-{'-'.join(system)}-{index}"
                self.structures.append(structure)
        self.calls = 0

    def known_phases(
        self, chemsys: Any, *, max_e_above_hull: float | None = 0.1, exact: bool = False
    ) -> list[dict[str, Any]]:
        self.calls += 1
        wanted = set(chemsys)
        return [
            {
                "material_id": s.properties["material_id"],
                "formula": s.composition.reduced_formula,
                "e_above_hull": 0.0,
            }
            for s in self.structures
            if {el.symbol for el in s.composition.elements} == wanted
        ]

    def reference_structures(self, formula: str) -> list[Structure]:
        return [s for s in self.structures if s.composition.reduced_formula == formula]


@pytest.fixture(scope="module")
def reference() -> InMemoryReference:
    return InMemoryReference(PARENT_SYSTEMS)


@pytest.fixture
def substitution_generator(reference: InMemoryReference) -> SubstitutionGenerator:
    return SubstitutionGenerator(reference=reference)


TestSubstitutionContract = make_generator_contract_tests("substitution_generator")


def test_keeps_charge_balance_and_the_chemical_system(reference: InMemoryReference) -> None:
    request = dataclasses.replace(CONTRACT_REQUEST, num_structures=12)
    out = SubstitutionGenerator(reference=reference).generate(request)
    allowed = {c.formula: c for c in enumerate_compositions(request)}
    assert len(out) == 12
    for candidate in out:
        assert {el.symbol for el in candidate.structure.composition.elements} == {"Li", "Mn", "O"}
        assert candidate.formula in allowed
        assert allowed[candidate.formula].charge_balance == "common"
        assert candidate.parameters["charge_balance"] == "common"
        assert str(candidate.parent_id).startswith("fake-")
        parent_formula = str(candidate.parameters["parent_formula"])
        substitution = str(candidate.parameters["substitution"])
        assert substitution  # at least one element replaced
        for pair in substitution.split():
            old, new = pair.split("->")
            assert old in parent_formula
            assert new in {"Li", "Mn", "O"}


def test_parents_of_the_request_are_used_first() -> None:
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    rocksalt.properties["material_id"] = "mp-22862"

    class Unused:
        def known_phases(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            raise AssertionError("the reference must not be searched when parents are given")

        def reference_structures(self, formula: str) -> list[Structure]:
            raise AssertionError("the reference must not be searched when parents are given")

    request = GenerationRequest(
        num_structures=3, chemical_system=("K", "Cl"), max_atoms=4, parents=(rocksalt,)
    )
    (candidate,) = SubstitutionGenerator(reference=Unused()).generate(request)
    assert candidate.formula == "KCl"
    assert candidate.parent_id == "mp-22862"
    assert candidate.parameters["substitution"] == "Na->K"
    assert candidate.structure.volume > rocksalt.volume  # K+ is larger than Na+


def test_no_parent_fails_with_reason() -> None:
    request = dataclasses.replace(CONTRACT_REQUEST, num_structures=2)
    with pytest.raises(GenerationFailed, match="has none for these systems"):
        SubstitutionGenerator(reference=InMemoryReference([])).generate(request)
    # Known phases, but none that substitutes onto Li-Mn-O within 4-12 atoms.
    with pytest.raises(GenerationFailed, match="no parent"):
        SubstitutionGenerator(reference=InMemoryReference([("Li", "Mn", "O")])).generate(
            dataclasses.replace(request, min_atoms=20, max_atoms=24)
        )
    with pytest.raises(GenerationFailed, match="oxidation states"):
        SubstitutionGenerator(reference=InMemoryReference([])).generate(
            GenerationRequest(num_structures=1, chemical_system=("F", "Ne"))
        )


def test_registry_and_settings() -> None:
    generator = load_generator("substitution", substitutes_per_element=3)
    assert isinstance(generator, SubstitutionGenerator)
    assert generator.family == "substitution"
    with pytest.raises(ConfigError, match="max_parent_systems"):
        SubstitutionGenerator(max_parent_systems=0)


def test_offline_reference_parents(data_dir) -> None:
    from crystalforge.memory.reference_data import load_reference

    request = GenerationRequest(
        num_structures=10, seed=0, chemical_system=("Li", "Mn", "O"), max_atoms=16
    )
    out = SubstitutionGenerator(reference=load_reference(data_dir)).generate(request)
    assert len(out) == 10
    for candidate in out:
        assert str(candidate.parent_id).startswith("mp-")
        assert {el.symbol for el in candidate.structure.composition.elements} == {"Li", "Mn", "O"}
        assert len(candidate.structure) <= 16
