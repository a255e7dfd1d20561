"""Contract tests every Validator must pass.

Usage, in a test module that defines a fixture returning the validator under test::

    from tests.contracts.validator import make_validator_contract_tests

    @pytest.fixture
    def sanity_validator():
        return SanityValidator()

    TestSanityContract = make_validator_contract_tests("sanity_validator")

The contract: one :class:`Verdict` per candidate, in the same order and with the same ids; the
verdict names the validator; failures carry a reason; metrics are JSON-ready scalars; a bad
structure mixed into the batch (overlapping atoms, NaN coordinates, no sites) yields verdicts,
never an exception; an empty batch gives an empty list.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.core.candidate import Candidate, Verdict


def contract_structures() -> dict[str, Structure]:
    """Small good and bad structures (2 atoms or fewer, so that CHGNet stays quick)."""
    nacl = Structure(
        Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]]),
        ["Na", "Cl"],
        [[0, 0, 0], [0.5, 0.5, 0.5]],
    )
    silicon = Structure(
        Lattice([[0, 2.73, 2.73], [2.73, 0, 2.73], [2.73, 2.73, 0]]),
        ["Si", "Si"],
        [[0, 0, 0], [0.25, 0.25, 0.25]],
    )
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    nan_coords = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]])
    return {
        "nacl": nacl,
        "overlapping": overlapping,
        "silicon": silicon,
        "nan": nan_coords,
        "nacl_again": nacl.copy(),
    }


def contract_candidates() -> list[Candidate]:
    """Candidates of :func:`contract_structures`, good and bad mixed, one repeated."""
    return [
        Candidate.create(structure, generator="contract", seed=i)
        for i, structure in enumerate(contract_structures().values())
    ]


def _is_json_scalar(value: object) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    return isinstance(value, float)


def make_validator_contract_tests(fixture_name: str) -> type:
    """A test class checking the Validator contract on the fixture ``fixture_name``."""

    class ValidatorContract:
        @pytest.fixture
        def validator(self, request: pytest.FixtureRequest):
            return request.getfixturevalue(fixture_name)

        _cache: ClassVar[dict[str, tuple[list[Verdict], list[Candidate]]]] = {}

        @pytest.fixture
        def verdicts_and_candidates(self, validator):
            # Validate the contract batch once per class (CHGNet makes it cost seconds).
            if fixture_name not in self._cache:
                candidates = contract_candidates()
                self._cache[fixture_name] = (validator.validate(candidates), candidates)
            return self._cache[fixture_name]

        def test_has_a_name(self, validator) -> None:
            assert isinstance(validator.name, str)
            assert validator.name

        def test_one_verdict_per_candidate_in_order(self, verdicts_and_candidates) -> None:
            verdicts, candidates = verdicts_and_candidates
            assert len(verdicts) == len(candidates)
            assert [v.candidate_id for v in verdicts] == [c.id for c in candidates]

        def test_verdicts_are_well_formed(self, validator, verdicts_and_candidates) -> None:
            verdicts, _ = verdicts_and_candidates
            for verdict in verdicts:
                assert isinstance(verdict, Verdict)
                assert verdict.validator == validator.name
                assert isinstance(verdict.passed, bool)
                if not verdict.passed:
                    assert isinstance(verdict.reason, str)
                    assert verdict.reason
                assert verdict.structure is None or isinstance(verdict.structure, Structure)
                for key, value in verdict.metrics.items():
                    assert isinstance(key, str)
                    assert _is_json_scalar(value), (key, value)
                json.dumps(verdict.to_json())

        def test_bad_structures_do_not_raise(self, verdicts_and_candidates) -> None:
            verdicts, candidates = verdicts_and_candidates
            by_seed = {c.seed: v for c, v in zip(candidates, verdicts, strict=True)}
            assert by_seed[1] is not None  # overlapping atoms
            assert by_seed[3] is not None  # NaN coordinates
            for verdict in verdicts:
                for value in verdict.metrics.values():
                    if isinstance(value, float) and verdict.passed:
                        assert not math.isnan(value)

        def test_empty_batch(self, validator) -> None:
            assert validator.validate([]) == []

        def test_structure_without_sites_does_not_raise(self, validator) -> None:
            empty = Candidate.create(
                Structure(Lattice.cubic(4.0), [], []), generator="contract", seed=99
            )
            verdicts = validator.validate([empty])
            assert len(verdicts) == 1
            assert verdicts[0].candidate_id == empty.id

    ValidatorContract.__name__ = f"ValidatorContract[{fixture_name}]"
    return ValidatorContract
