"""WyckoffPriorGenerator: the contract, sampling that follows the priors, fallback, bad input.

Pure unit tests: PyXtal runs locally and the priors are a bundled JSON; nothing to record.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.priors import FORMAT_VERSION, load_priors
from crystalforge.generators.registry import load_generator
from crystalforge.generators.wyckoff import WyckoffPriorGenerator, _matching_combinations
from tests.contracts.generator import make_generator_contract_tests


@pytest.fixture
def wyckoff_generator() -> WyckoffPriorGenerator:
    return WyckoffPriorGenerator()


TestWyckoffContract = make_generator_contract_tests("wyckoff_generator")


def _plans(generator: WyckoffPriorGenerator, request: GenerationRequest, n: int) -> list:
    """``n`` symmetry draws without building structures (the PyXtal step is the slow part)."""
    priors = generator.priors
    pool = generator._pool(request, priors)
    cache: dict = {}
    rng = np.random.default_rng(0)
    return [generator._plan(rng, pool, request, priors, cache) for _ in range(n)]


def test_space_group_draws_follow_the_priors() -> None:
    generator = WyckoffPriorGenerator(combination_share=0.0)
    request = GenerationRequest(num_structures=1, chemical_system=("Li", "Mn", "O"), max_atoms=16)
    plans = [p for p in _plans(generator, request, 200) if p is not None]
    assert len(plans) == 200
    assert {p.prior for p in plans} == {"space_group"}
    drawn = collections.Counter(p.space_group for p in plans)
    learned = load_priors().space_group_counts(num_elements=3)
    frequent = max(learned, key=lambda sg: learned[sg])
    rare = [sg for sg, n in learned.items() if 0 < n <= 2]
    assert drawn[frequent] > max(drawn[sg] for sg in rare)
    # Drawn groups are the commonly learned ones: their mean count beats a uniform pick's.
    drawn_mean = sum(learned.get(sg, 0) * n for sg, n in drawn.items()) / 200
    assert drawn_mean > 2 * sum(learned.values()) / len(learned)


def test_combination_draws_follow_the_priors() -> None:
    generator = WyckoffPriorGenerator(combination_share=1.0)
    request = GenerationRequest(num_structures=1, formula="NaCl", min_atoms=2, max_atoms=2)
    plans = _plans(generator, request, 200)
    assert {p.prior for p in plans if p} == {"combination"}
    drawn = collections.Counter(p.space_group for p in plans if p)
    combos = _matching_combinations(load_priors(), (1, 1), ())
    weights = collections.Counter()
    for combo in combos:
        weights[combo.space_group] += combo.count
    top, rare = weights.most_common()[0][0], weights.most_common()[-1][0]
    assert top in {221, 225}  # CsCl or rock salt
    assert drawn.most_common(1)[0][0] == top
    assert drawn[top] > drawn[rare]


def test_builds_on_the_drawn_wyckoff_sites() -> None:
    request = GenerationRequest(
        num_structures=3, seed=2, formula="LiMn2O4", min_atoms=14, max_atoms=14, space_groups=(227,)
    )
    out = WyckoffPriorGenerator(combination_share=1.0).generate(request)
    assert len(out) == 3
    for candidate in out:
        assert candidate.parameters["space_group"] == 227
        assert candidate.parameters["prior"] == "combination"
        assert candidate.formula == "LiMn2O4"
        assert len(candidate.structure) == 14
        # Spinel, in either of the two equivalent site choices learned for AB2C4 in Fd-3m.
        assert candidate.parameters["wyckoff_sites"] in {
            "Li:8a Mn:16d O:32e",
            "Li:8b Mn:16c O:32e",
        }


def test_falls_back_without_prior_data(tmp_path) -> None:
    empty = {
        "format": FORMAT_VERSION,
        "source": {},
        "space_groups": {"all": {}, "by_num_elements": {}, "by_num_atoms": {}},
        "num_atoms": {"all": {}, "by_num_elements": {}},
        "anonymous_formulas": {},
        "wyckoff_combinations": {},
        "element_site_orders": {},
    }
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(empty))
    request = GenerationRequest(num_structures=2, seed=1, chemical_system=("Na", "Cl"), max_atoms=8)
    out = WyckoffPriorGenerator(priors_path=str(path)).generate(request)
    assert len(out) == 2
    assert {c.parameters["prior"] for c in out} == {"fallback"}


def test_impossible_space_group_fails_fast() -> None:
    request = GenerationRequest(
        num_structures=2, chemical_system=("Li", "Mn", "O"), max_atoms=8, space_groups=(230,)
    )
    with pytest.raises(GenerationFailed, match="space group 230 cannot host"):
        WyckoffPriorGenerator().generate(request)
    with pytest.raises(GenerationFailed, match="1-230"):
        WyckoffPriorGenerator().generate(
            GenerationRequest(num_structures=1, chemical_system=("Na", "Cl"), space_groups=(231,))
        )
    with pytest.raises(GenerationFailed, match="oxidation states"):
        WyckoffPriorGenerator().generate(
            GenerationRequest(num_structures=1, chemical_system=("F", "Ne"))
        )


def test_registry_and_settings() -> None:
    generator = load_generator("wyckoff", combination_share=0.5)
    assert isinstance(generator, WyckoffPriorGenerator)
    assert generator.family == "wyckoff"
    with pytest.raises(ConfigError, match="combination_share"):
        WyckoffPriorGenerator(combination_share=1.5)


# -- volume prior and clash screen ---------------------------------------------------------------


def _priors_with_volumes(tmp_path, volumes: dict[str, float]) -> str:
    data = dict(load_priors().data, format=FORMAT_VERSION, element_volumes=volumes)
    path = tmp_path / "priors.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_volume_prior_scales_cells_to_the_learned_atom_volumes(tmp_path) -> None:
    path = _priors_with_volumes(tmp_path, {"Na": 20.0, "Cl": 30.0})
    request = GenerationRequest(num_structures=4, seed=3, formula="NaCl", max_atoms=8)
    scaled = WyckoffPriorGenerator(priors_path=path).generate(request)
    for candidate in scaled:
        formula_units = len(candidate.structure) // 2
        assert candidate.structure.volume == pytest.approx(50.0 * formula_units, rel=1e-6)
        assert candidate.parameters["volume_prior"] is True
    plain = WyckoffPriorGenerator(priors_path=path, volume_prior=False).generate(request)
    assert any(
        c.structure.volume != pytest.approx(50.0 * len(c.structure) // 2, rel=1e-3) for c in plain
    )


def test_volume_prior_is_skipped_for_unlearned_elements(tmp_path) -> None:
    path = _priors_with_volumes(tmp_path, {"Na": 20.0})  # no Cl
    request = GenerationRequest(num_structures=2, seed=3, formula="NaCl", max_atoms=8)
    with_prior = WyckoffPriorGenerator(priors_path=path).generate(request)
    without = WyckoffPriorGenerator(priors_path=path, volume_prior=False).generate(request)
    assert [c.structure.volume for c in with_prior] == pytest.approx(
        [c.structure.volume for c in without]
    )


def test_clash_screen() -> None:
    from pymatgen.core import Lattice, Structure

    from crystalforge.generators.wyckoff import _clashes

    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    assert not _clashes(rock_salt, 0.7)
    squeezed = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.5 Å
    assert _clashes(squeezed, 0.5)
    # A 1-atom cell clashes with its own periodic image when the cell is tiny.
    assert _clashes(Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]]), 0.5)
    assert not _clashes(Structure(Lattice.cubic(4.0), ["Na"], [[0, 0, 0]]), 0.5)
