"""Template retrieval for CSP and the diffusion model's template-started sampling."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

torch = pytest.importorskip("torch")

from crystalforge.core.errors import DataError  # noqa: E402
from crystalforge.generators.base import GenerationRequest  # noqa: E402
from crystalforge.generators.diffusion.data import crystal_from_structure  # noqa: E402
from crystalforge.generators.diffusion.generator import (  # noqa: E402
    DiffusionGenerator,
    load_model,
    sample_structures,
)
from crystalforge.generators.diffusion.templates import (  # noqa: E402
    TemplateLibrary,
    best_renaming,
    training_library,
)
from crystalforge.generators.priors import FORMAT_VERSION, WyckoffPriors  # noqa: E402
from tests.generators.test_diffusion_generator import write_tiny_checkpoint  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path


def rock_salt(a: str, b: str, lattice: float) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def cesium_chloride(a: str, b: str, lattice: float) -> Structure:
    return Structure(Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    cells = [
        cesium_chloride("Cs", "Cl", 4.1),  # Cs is far from K on Pettifor's scale
        rock_salt("Na", "Cl", 5.64).get_primitive_structure(),
        rock_salt("Li", "F", 4.03).get_primitive_structure(),  # same structure type as NaCl
        Structure(Lattice.cubic(4.0), ["Ti", "O", "O"], [[0, 0, 0], [0.3, 0.3, 0], [0.7, 0.7, 0]]),
    ]
    crystals = [crystal_from_structure(s) for s in cells]
    volumes = {"Na": 20.0, "Cl": 25.0, "K": 30.0, "Br": 30.0, "Li": 8.0, "F": 10.0, "Cs": 40.0}
    priors = WyckoffPriors({"format": FORMAT_VERSION, "element_volumes": volumes})
    return TemplateLibrary(crystals, ["mp-cscl", "mp-nacl", "mp-lif", "mp-tio2"], priors)


def test_renaming_keeps_counts_and_pairs_chemically_close_elements() -> None:
    distance, mapping = best_renaming(Counter({"Na": 1, "Cl": 1}), Counter({"K": 1, "Br": 1}))  # type: ignore[misc]
    assert mapping == {"Na": "K", "Cl": "Br"}  # not Na -> Br
    assert distance == 1 + 1  # Pettifor Mendeleev numbers: Na 11 / K 10, Cl 99 / Br 98
    assert best_renaming(Counter({"Na": 1, "Cl": 1}), Counter({"Ti": 1, "O": 2})) is None
    assert best_renaming(Counter({"Na": 1, "Cl": 1}), Counter({"Na": 1, "Cl": 1}))[0] == 0  # type: ignore[index]


def test_nearest_ranks_by_distance_and_drops_repeated_structure_types(
    library: TemplateLibrary,
) -> None:
    found = library.nearest(["K", "Br"], 5)
    # NaCl and LiF are one structure type: only the closer one (NaCl) is kept; CsCl comes next.
    assert [t.material_id for t in found] == ["mp-nacl", "mp-cscl"]
    assert [t.rank for t in found] == [1, 2]
    assert found[0].distance < found[1].distance
    first = found[0].structure
    assert first.composition.reduced_formula == "KBr"
    assert sorted(first.composition.as_dict()) == ["Br", "K"]
    # Scaled by the learned volumes: KBr (30 + 30) over NaCl (20 + 25) Å^3 per formula unit.
    nacl = rock_salt("Na", "Cl", 5.64).get_primitive_structure()
    assert first.volume == pytest.approx(nacl.volume * 60 / 45, rel=1e-4)
    assert found[0].species == [site.specie.symbol for site in first]
    assert library.nearest(["K", "K", "Br", "Br"], 3) == []  # no cell with counts (2, 2)
    assert [t.material_id for t in library.nearest(["Zr", "S", "S"], 3)] == ["mp-tio2"]


def test_template_start_is_seeded_and_small_steps_stay_near_the_template(tmp_path: Path) -> None:
    loaded = load_model(str(write_tiny_checkpoint(tmp_path / "tiny.pt")), "cpu")
    template = rock_salt("Na", "Cl", 5.64).get_primitive_structure()
    species = [[s.specie.symbol for s in template]] * 2
    kwargs = {"seed": 1, "steps": 50, "templates": [template, template]}
    near = sample_structures(loaded, species, template_step=2, **kwargs)  # type: ignore[arg-type]
    again = sample_structures(loaded, species, template_step=2, **kwargs)  # type: ignore[arg-type]
    far = sample_structures(loaded, species, template_step=1000, **kwargs)  # type: ignore[arg-type]
    assert [s.lattice.abc for s in near] == [s.lattice.abc for s in again]
    assert near[0].lattice.abc == pytest.approx(template.lattice.abc, rel=0.05)
    shift = np.abs(near[0].frac_coords - template.frac_coords)
    assert np.minimum(shift, 1 - shift).max() < 0.05
    assert far[0].lattice.abc != pytest.approx(template.lattice.abc, rel=0.05)
    with pytest.raises(ValueError, match="other atoms"):
        sample_structures(loaded, [["Na", "Na"]], seed=0, templates=[template])
    with pytest.raises(ValueError, match="start_step"):
        sample_structures(loaded, species[:1], seed=0, templates=[template], template_step=0)


def test_csp_requests_start_from_templates_then_sample_freely(
    tmp_path: Path, library: TemplateLibrary
) -> None:
    checkpoint = str(write_tiny_checkpoint(tmp_path / "tiny.pt"))
    generator = DiffusionGenerator(
        checkpoint_path=checkpoint, steps=8, device="cpu", template_library=library
    )
    # The tiny checkpoint knows Na, Cl, Li, F, Mn, O. NaF: LiF (distance 1; NaCl, 3, is the
    # same structure type) and CsCl (6).
    out = generator.generate(
        GenerationRequest(num_structures=4, seed=0, formula="NaF", max_atoms=2)
    )
    assert [c.parameters.get("template") for c in out[:2]] == ["mp-lif", "mp-cscl"]
    assert [c.parameters["template_rank"] for c in out[:2]] == [1, 2]
    assert all(c.parameters["template_step"] == 0 for c in out[:2])
    # Step 0 (default): the renamed template itself, exact symmetry kept.
    assert out[0].structure.get_space_group_info()[1] == 225
    denoised = DiffusionGenerator(
        checkpoint_path=checkpoint,
        steps=8,
        device="cpu",
        template_library=library,
        template_step=100,
    ).generate(GenerationRequest(num_structures=1, seed=0, formula="NaF", max_atoms=2))
    assert denoised[0].parameters["template_step"] == 100
    assert denoised[0].structure.lattice.abc != pytest.approx(out[0].structure.lattice.abc)
    assert all("template" not in c.parameters for c in out[2:])
    assert all(c.structure.composition.reduced_formula == "NaF" for c in out)
    free = DiffusionGenerator(
        checkpoint_path=checkpoint, steps=8, device="cpu", template_library=library, templates=0
    )
    request = GenerationRequest(num_structures=2, seed=0, formula="NaF", max_atoms=2)
    assert all("template" not in c.parameters for c in free.generate(request))
    # De novo requests never use templates.
    denovo = generator.generate(GenerationRequest(num_structures=2, seed=0, elements=("Na", "F")))
    assert all("template" not in c.parameters for c in denovo)


def test_checkpoint_without_its_split_samples_freely_and_says_why(tmp_path: Path) -> None:
    checkpoint = str(write_tiny_checkpoint(tmp_path / "tiny.pt"))  # records no val_rows
    generator = DiffusionGenerator(
        checkpoint_path=checkpoint, steps=4, device="cpu", data_dir=str(tmp_path)
    )
    out = generator.generate(
        GenerationRequest(num_structures=2, seed=0, formula="NaCl", max_atoms=2)
    )
    assert out
    for candidate in out:
        assert "does not record its training split" in str(candidate.parameters["templates"])


def test_bad_template_settings_are_config_errors() -> None:
    from crystalforge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="templates must be >= 0"):
        DiffusionGenerator(templates=-1)
    with pytest.raises(ConfigError, match=r"template_step must be in 0\.\.1000"):
        DiffusionGenerator(template_step=-1)


def test_training_library_refuses_a_split_it_cannot_recompute(data_dir: Path) -> None:
    with pytest.raises(DataError, match="cannot be recomputed"):
        training_library(data_dir.resolve(), 0, 7)


def test_training_library_leaves_out_held_out_and_validation_rows(data_dir: Path) -> None:
    """The committed checkpoint's library: its 10,992 training cells, none held out."""
    import pandas as pd

    from crystalforge.evals.csp import _validation_ids
    from crystalforge.generators.diffusion.generator import DEFAULT_CHECKPOINT

    info = load_model(str(DEFAULT_CHECKPOINT), "cpu").info
    library = training_library(data_dir.resolve(), info["seed"], info["val_rows"])
    assert len(library) == info["train_rows"]
    ids = set(library._ids)
    held_out = set(
        pd.read_csv(data_dir / "mp_20_biternary/test.csv.gz", usecols=["material_id"]).material_id
    )
    assert not ids & held_out
    assert not ids & _validation_ids(data_dir, info["seed"])
