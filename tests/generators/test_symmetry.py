"""PyXtalGenerator: the contract, space groups, budgets and bad input.

Pure unit tests: PyXtal runs locally in well under a second per structure here, so there is
nothing to record.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.symmetry import (
    SPACE_GROUP_PRIOR,
    PyXtalGenerator,
    UniformPyXtalGenerator,
)
from tests.contracts.generator import make_generator_contract_tests


@pytest.fixture
def pyxtal_generator() -> PyXtalGenerator:
    return PyXtalGenerator()


@pytest.fixture
def uniform_pyxtal_generator() -> UniformPyXtalGenerator:
    return UniformPyXtalGenerator()


TestPyXtalContract = make_generator_contract_tests("pyxtal_generator")
TestUniformPyXtalContract = make_generator_contract_tests("uniform_pyxtal_generator")


def test_uniform_baseline_draws_space_groups_without_the_prior() -> None:
    request = GenerationRequest(num_structures=30, seed=5, chemical_system=("Li", "Mn", "O"))
    with_prior = [c.parameters["space_group"] for c in PyXtalGenerator().generate(request)]
    plain = UniformPyXtalGenerator().generate(request)
    assert plain[0].generator == "pyxtal-uniform"
    assert all(c.parameters["space_group_prior_share"] == 0.0 for c in plain)
    in_prior = sum(c.parameters["space_group"] in SPACE_GROUP_PRIOR for c in plain)
    # 36 of 229 groups are in the prior: a uniform draw rarely lands there, the prior mostly does.
    assert in_prior < 0.6 * len(plain)
    assert sum(sg in SPACE_GROUP_PRIOR for sg in with_prior) > 0.6 * len(with_prior)
    with pytest.raises(ConfigError, match=r"space_group_prior_share must be in \[0, 1\], got 1.5"):
        PyXtalGenerator(space_group_prior_share=1.5)


def test_requested_space_group_is_used() -> None:
    # Atom limits count the primitive cell: rock salt has 2 atoms, not the conventional 8.
    request = GenerationRequest(
        num_structures=2, seed=1, formula="NaCl", min_atoms=2, max_atoms=2, space_groups=(225,)
    )
    for candidate in PyXtalGenerator().generate(request):
        assert candidate.parameters["space_group"] == 225
        assert candidate.formula == "NaCl"
        assert len(candidate.structure) == 2
        analyzer = SpacegroupAnalyzer(candidate.structure, symprec=0.01)
        assert analyzer.get_space_group_number() == 225


def test_centred_groups_give_primitive_cells() -> None:
    request = GenerationRequest(
        num_structures=2, seed=3, formula="LiMn2O4", max_atoms=14, space_groups=(227,)
    )
    for candidate in PyXtalGenerator().generate(request):
        assert len(candidate.structure) == 14  # the spinel primitive cell (56 conventional)
        assert SpacegroupAnalyzer(candidate.structure, symprec=0.01).get_space_group_number() == 227


def test_parameters_describe_the_draw() -> None:
    request = GenerationRequest(num_structures=3, seed=4, chemical_system=("Li", "Mn", "O"))
    for index, candidate in enumerate(PyXtalGenerator().generate(request)):
        params = candidate.parameters
        assert params["index"] == index
        assert 1 <= int(params["space_group"]) <= 230  # type: ignore[arg-type]
        assert params["formula"] == candidate.formula
        assert int(params["z"]) * candidate.structure.composition.reduced_composition.num_atoms == (  # type: ignore[arg-type]
            len(candidate.structure)
        )
        assert params["charge_balance"] == "common"
        assert isinstance(params["attempt"], int)


def test_structure_i_does_not_depend_on_num_structures() -> None:
    small = GenerationRequest(num_structures=2, seed=8, chemical_system=("Li", "Mn", "O"))
    generator = PyXtalGenerator()
    first = [c.id for c in generator.generate(small)]
    more = [c.id for c in generator.generate(dataclasses.replace(small, num_structures=3))]
    assert more[:2] == first


def test_all_metal_system_gives_alloys() -> None:
    request = GenerationRequest(num_structures=2, seed=2, chemical_system=("K", "Na"), max_atoms=8)
    out = PyXtalGenerator().generate(request)
    assert len(out) == 2
    assert {c.parameters["charge_balance"] for c in out} == {"metallic"}


def test_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    request = GenerationRequest(num_structures=2, seed=3, chemical_system=("Ba", "Ti", "O"))
    PyXtalGenerator().generate(request)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_prior_is_a_valid_space_group_table() -> None:
    assert all(1 <= sg <= 230 for sg in SPACE_GROUP_PRIOR)
    assert all(weight > 0 for weight in SPACE_GROUP_PRIOR.values())
    assert max(SPACE_GROUP_PRIOR, key=SPACE_GROUP_PRIOR.__getitem__) in {14, 62}


# -- budgets -------------------------------------------------------------------------------------


def test_time_budget_returns_early_and_fails_without_structures() -> None:
    request = GenerationRequest(num_structures=50, chemical_system=("Li", "Mn", "O"))
    start = time.perf_counter()
    with pytest.raises(GenerationFailed, match="time budget"):
        PyXtalGenerator(timeout_s=1e-9).generate(request)
    assert time.perf_counter() - start < 5


def _failing_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make PyXtal fail on every attempt after the first ``calls``."""
    real_build = PyXtalGenerator._build
    made: list[int] = []

    def build(self: PyXtalGenerator, *args: object):
        if len(made) >= calls:
            return None
        made.append(1)
        return real_build(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PyXtalGenerator, "_build", build)


def test_failed_attempts_give_fewer_structures_and_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _failing_after(1, monkeypatch)
    request = GenerationRequest(num_structures=3, chemical_system=("Li", "Mn", "O"))
    with caplog.at_level(logging.WARNING, logger="crystalforge.generators.symmetry"):
        out = PyXtalGenerator(max_attempts_per_structure=2).generate(request)
    assert len(out) == 1
    assert "returned 1 of 3 structures: 4 of 5 attempts failed" in caplog.text


def test_every_attempt_failing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_after(0, monkeypatch)
    request = GenerationRequest(num_structures=2, chemical_system=("Li", "Mn", "O"))
    with pytest.raises(GenerationFailed, match="no structure: 6 of 6 attempts failed"):
        PyXtalGenerator(max_attempts_per_structure=3).generate(request)


# -- bad input -----------------------------------------------------------------------------------


def test_space_group_that_cannot_host_the_formula() -> None:
    request = GenerationRequest(
        num_structures=2, formula="Li2MnO3", min_atoms=6, max_atoms=16, space_groups=(225,)
    )
    start = time.perf_counter()
    with pytest.raises(
        GenerationFailed, match="space group 225 cannot host Li2MnO3 with 6-16 atoms per cell"
    ):
        PyXtalGenerator().generate(request)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chemical_system": ("F", "Ne")}, "oxidation states"),
        ({"chemical_system": ("Kr", "S")}, "oxidation states"),
        ({"chemical_system": ("Li", "Mn", "O"), "max_atoms": 0}, "no cell size fits"),
        ({"chemical_system": ("Li", "Mn", "O"), "max_atoms": 3}, "smallest, LiMnO2"),
        ({"chemical_system": ("Li", "O"), "min_atoms": 500, "max_atoms": 500}, "max_cell_atoms"),
        ({"chemical_system": ("Li", "O"), "space_groups": (231,)}, "1-230"),
        ({"chemical_system": ("Li", "O"), "num_structures": -1}, "num_structures"),
    ],
)
def test_impossible_requests_fail_fast(kwargs: dict[str, object], message: str) -> None:
    request = GenerationRequest(**{"num_structures": 2, **kwargs})  # type: ignore[arg-type]
    start = time.perf_counter()
    with pytest.raises(GenerationFailed, match=message):
        PyXtalGenerator().generate(request)
    assert time.perf_counter() - start < 2


def test_large_max_atoms_is_capped() -> None:
    request = GenerationRequest(
        num_structures=1, seed=0, chemical_system=("Li", "O"), min_atoms=10, max_atoms=500
    )
    (candidate,) = PyXtalGenerator(max_cell_atoms=12).generate(request)
    assert 10 <= len(candidate.structure) <= 12


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts_per_structure": 0},
        {"volume_factor": 0.0},
        {"volume_factor": float("nan")},
        {"timeout_s": -1.0},
        {"max_cell_atoms": 0},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PyXtalGenerator(**kwargs)  # type: ignore[arg-type]
