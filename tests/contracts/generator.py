"""Contract tests every Generator must pass.

Usage, in a test module that defines a fixture returning the generator under test::

    from tests.contracts.generator import make_generator_contract_tests

    @pytest.fixture
    def fake_generator():
        return FakeGenerator()

    TestFakeContract = make_generator_contract_tests("fake_generator")

The contract, for a feasible request: exactly ``num_structures`` candidates (the protocol allows
fewer only when a request admits fewer distinct structures; the contract request admits many),
with distinct ids; the same request gives the same structures and another seed other ones; every
candidate is a valid pymatgen Structure made of all chemical-system elements and nothing else,
with ``min_atoms <= atoms <= max_atoms``; provenance names the generator, seed, parameters and
round; the request is not mutated; an impossible request raises GenerationFailed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import ClassVar, get_args

import pytest
from pymatgen.core import Structure

from crystalforge.core.candidate import Candidate, structure_hash
from crystalforge.core.errors import GenerationFailed
from crystalforge.generators.base import Family, GenerationRequest, Generator

CONTRACT_REQUEST = GenerationRequest(
    num_structures=4,
    seed=11,
    chemical_system=("Li", "Mn", "O"),
    min_atoms=4,
    max_atoms=12,
    round=2,
)
"""A small feasible request: Li-Mn-O oxides of 4-12 atoms."""


def make_generator_contract_tests(
    fixture_name: str, *, request: GenerationRequest = CONTRACT_REQUEST
) -> type:
    """A test class checking the Generator contract on the fixture ``fixture_name``.

    Args:
        fixture_name: Name of a pytest fixture that returns the generator under test.
        request: A feasible request with a ``chemical_system``, admitting at least
            ``2 * num_structures`` distinct structures.
    """
    assert request.chemical_system, "the contract request needs a chemical system"

    class GeneratorContract:
        # Generate each request once per class; determinism is checked against a fresh call.
        _cache: ClassVar[dict[GenerationRequest, list[Candidate]]] = {}

        @pytest.fixture
        def generator(self, request: pytest.FixtureRequest) -> Generator:
            return request.getfixturevalue(fixture_name)

        def _generate(self, generator: Generator, gen_request: GenerationRequest):
            if gen_request not in self._cache:
                self._cache[gen_request] = generator.generate(gen_request)
            return self._cache[gen_request]

        def test_is_a_generator(self, generator) -> None:
            assert isinstance(generator, Generator)
            assert isinstance(generator.name, str)
            assert generator.name
            assert generator.family in get_args(Family)

        def test_returns_the_requested_number(self, generator) -> None:
            out = self._generate(generator, request)
            assert 0 < len(out) <= request.num_structures
            assert len(out) == request.num_structures  # the contract request is feasible
            assert len({c.id for c in out}) == len(out)

        def test_candidates_are_valid_structures(self, generator) -> None:
            allowed = set(request.chemical_system or ())
            for candidate in self._generate(generator, request):
                assert isinstance(candidate, Candidate)
                structure = candidate.structure
                assert isinstance(structure, Structure)
                assert request.min_atoms <= len(structure) <= request.max_atoms
                assert {el.symbol for el in structure.composition.elements} == allowed
                assert structure.volume > 0
                assert all(math.isfinite(x) for x in structure.frac_coords.flatten())
                assert structure.is_valid(tol=0.5), candidate.formula

        def test_provenance(self, generator) -> None:
            for candidate in self._generate(generator, request):
                assert candidate.generator == generator.name
                assert candidate.seed == request.seed
                assert candidate.round == request.round
                assert candidate.id == structure_hash(candidate.structure)
                assert candidate.parameters
                json.dumps(candidate.provenance())

        def test_same_request_same_structures(self, generator) -> None:
            first = [c.id for c in self._generate(generator, request)]
            again = [c.id for c in generator.generate(request)]
            assert again == first

        def test_other_seed_other_structures(self, generator) -> None:
            first = [c.id for c in self._generate(generator, request)]
            other_request = dataclasses.replace(request, seed=request.seed + 1)
            other = [c.id for c in self._generate(generator, other_request)]
            assert other
            assert set(other) != set(first)

        def test_request_not_mutated(self, generator) -> None:
            before = dataclasses.replace(request)
            generator.generate(dataclasses.replace(request, num_structures=1))
            self._generate(generator, request)
            assert request == before
            with pytest.raises(dataclasses.FrozenInstanceError):
                request.num_structures = 0  # type: ignore[misc]

        def test_zero_structures(self, generator) -> None:
            assert generator.generate(dataclasses.replace(request, num_structures=0)) == []

        def test_impossible_request_raises(self, generator) -> None:
            impossible = dataclasses.replace(request, min_atoms=10, max_atoms=5)
            with pytest.raises(GenerationFailed):
                generator.generate(impossible)

        def test_element_pool_request(self, generator) -> None:
            pool = (*sorted(request.chemical_system or ()), "F")
            required = pool[:1]
            pooled = GenerationRequest(
                num_structures=2,
                seed=request.seed,
                elements=pool,
                required_elements=required,
                min_atoms=request.min_atoms,
                max_atoms=request.max_atoms,
            )
            out = generator.generate(pooled)
            assert out
            for candidate in out:
                symbols = {el.symbol for el in candidate.structure.composition.elements}
                assert symbols <= set(pool)
                assert set(required) <= symbols

    GeneratorContract.__name__ = f"GeneratorContract[{fixture_name}]"
    return GeneratorContract
