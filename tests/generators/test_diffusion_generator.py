"""The diffusion generator: contract, CSP and de novo requests, guidance settings, bad input.

Most tests use a tiny randomly initialized checkpoint written to a temporary folder (fast,
no data needed); one test runs the committed checkpoint when it is present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

torch = pytest.importorskip("torch")

from crystalforge.core.errors import ConfigError, DataError, GenerationFailed  # noqa: E402
from crystalforge.generators.base import GenerationRequest  # noqa: E402
from crystalforge.generators.diffusion.generator import (  # noqa: E402
    DEFAULT_CHECKPOINT,
    DiffusionGenerator,
    formula_atoms,
    load_model,
    sample_structures,
)
from crystalforge.generators.diffusion.model import Denoiser, LatticeStats, ModelConfig  # noqa: E402
from crystalforge.generators.diffusion.train import save_checkpoint  # noqa: E402
from crystalforge.generators.registry import load_generator  # noqa: E402
from tests.contracts.generator import make_generator_contract_tests  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

TRAINED_ELEMENTS = ("Cl", "F", "Li", "Mn", "Na", "O")


def write_tiny_checkpoint(path: Path) -> Path:
    """A randomly initialized 16-wide, 1-layer model that knows :data:`TRAINED_ELEMENTS`."""
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(hidden=16, layers=1, frequencies=2, rbf=4))
    # log(length / N^(1/3)) around log(2.6 Å), angles around 90 degrees.
    stats = LatticeStats((0.95, 0.95, 0.95, 0.0, 0.0, 0.0), (0.15, 0.15, 0.15, 0.1, 0.1, 0.1))
    model.set_lattice_stats(stats)
    save_checkpoint(
        path,
        model,
        stats=stats,
        energy=(-1.5, 1.0),
        elements=dict.fromkeys(TRAINED_ELEMENTS, 10),
        info={"train_rows": 0, "seed": 0},
    )
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("diffusion") / "tiny.pt"))


@pytest.fixture(scope="module")
def diffusion_generator(tiny_checkpoint: str) -> DiffusionGenerator:
    return DiffusionGenerator(checkpoint_path=tiny_checkpoint, steps=8, device="cpu")


TestDiffusionContract = make_generator_contract_tests("diffusion_generator")


def test_csp_keeps_the_formula_and_cycles_cell_sizes(
    diffusion_generator: DiffusionGenerator,
) -> None:
    request = GenerationRequest(num_structures=4, seed=3, formula="LiMnO2", max_atoms=8)
    out = diffusion_generator.generate(request)
    assert len(out) == 4
    for candidate in out:
        assert candidate.structure.composition.reduced_formula == "LiMnO2"
        assert candidate.parameters["task"] == "csp"
        z = candidate.parameters["z"]
        assert isinstance(z, int)
        assert len(candidate.structure) == 4 * z
    assert {c.parameters["z"] for c in out} == {1, 2}


def test_sampling_is_batched_and_seeded(tiny_checkpoint: str) -> None:
    loaded = load_model(tiny_checkpoint, "cpu")
    cells = [["Na", "Cl"], ["Li", "Li", "O"], ["Na", "Cl"]]
    a = sample_structures(loaded, cells, seed=5, steps=4, batch_size=1)
    b = sample_structures(loaded, cells, seed=5, steps=4, batch_size=1)
    assert [s.composition.formula for s in a] == ["Na1 Cl1", "Li2 O1", "Na1 Cl1"]
    assert [s.lattice.abc for s in a] == [s.lattice.abc for s in b]
    assert a[0].lattice.abc != a[2].lattice.abc  # another draw of the same atoms


def test_guidance_setting_is_recorded(tiny_checkpoint: str) -> None:
    generator = DiffusionGenerator(
        checkpoint_path=tiny_checkpoint,
        steps=4,
        device="cpu",
        target_formation_energy=-2.0,
        guidance=1.0,
    )
    out = generator.generate(GenerationRequest(num_structures=2, seed=0, formula="NaCl"))
    assert out
    assert {c.parameters["guidance"] for c in out} == {1.0}
    assert {c.parameters["target_formation_energy"] for c in out} == {-2.0}


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"guidance": 1.0}, "needs target_formation_energy"),
        ({"steps": 0}, "steps must be in 1..1000"),
        ({"guidance": -1.0, "target_formation_energy": 0.0}, "guidance must be"),
        ({"device": "tpu"}, "device must be"),
        ({"samples_per_structure": 0}, "samples_per_structure"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DiffusionGenerator(**settings)


def test_missing_checkpoint_names_path_and_command(tmp_path: Path) -> None:
    missing = tmp_path / "none.pt"
    generator = DiffusionGenerator(checkpoint_path=str(missing), device="cpu")
    with pytest.raises(DataError, match=r"none\.pt.*diffusion\.train"):
        generator.generate(GenerationRequest(num_structures=1, formula="NaCl"))


def test_not_a_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(DataError, match="not a diffusion checkpoint"):
        load_model(str(bad), "cpu")


def test_unseen_element_is_named(diffusion_generator: DiffusionGenerator) -> None:
    request = GenerationRequest(num_structures=2, chemical_system=("O", "Tc"))
    with pytest.raises(GenerationFailed, match=r"\['Tc'\] never occur"):
        diffusion_generator.generate(request)
    with pytest.raises(GenerationFailed, match=r"\['Tc'\] never occur"):
        diffusion_generator.generate(GenerationRequest(num_structures=1, formula="TcO2"))


def test_impossible_atom_count_raises(diffusion_generator: DiffusionGenerator) -> None:
    request = GenerationRequest(num_structures=1, formula="Li2MnO3", max_atoms=5)
    with pytest.raises(GenerationFailed, match="Li2MnO3"):
        diffusion_generator.generate(request)


def test_request_with_unseen_pool_element_uses_the_others(
    diffusion_generator: DiffusionGenerator,
) -> None:
    request = GenerationRequest(
        num_structures=2, seed=1, elements=("Li", "O", "Tc"), required_elements=("O",)
    )
    out = diffusion_generator.generate(request)
    assert out
    assert all("Tc" not in c.formula for c in out)


def test_formula_atoms() -> None:
    assert formula_atoms("Li2O") == ["Li", "Li", "O"]
    with pytest.raises(GenerationFailed, match="fractional"):
        formula_atoms("Li0.5O")


def test_registry_entry(tiny_checkpoint: str) -> None:
    generator = load_generator("diffusion", checkpoint_path=tiny_checkpoint, steps=3)
    assert isinstance(generator, DiffusionGenerator)
    assert generator.family == "diffusion"
    assert generator.name == "diffusion"


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason=f"{DEFAULT_CHECKPOINT} not shipped")
def test_committed_checkpoint_predicts_rock_salt_cells() -> None:
    loaded = load_model(str(DEFAULT_CHECKPOINT), "cpu")
    assert loaded.element_counts["Na"] > 0
    generator = DiffusionGenerator(steps=50, device="cpu")
    request = GenerationRequest(num_structures=2, seed=0, formula="NaCl", max_atoms=4)
    out = generator.generate(request)
    assert len(out) == 2
    for candidate in out:
        structure = candidate.structure
        assert structure.composition.reduced_formula == "NaCl"
        # A trained model puts Na-Cl at a bonding distance (2.8 Å in rock salt), not anywhere.
        assert 2.0 < structure.distance_matrix[structure.distance_matrix > 0].min() < 3.6
