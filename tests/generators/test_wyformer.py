"""WyFormer adapter: a stand-in executable plays the WyFormer environment (fast); the real
environment runs only in the slow test, which skips when it is absent."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from typing import TYPE_CHECKING

import pytest

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.registry import load_generator
from crystalforge.generators.wyformer import (
    MODEL_FILES,
    WyFormerGenerator,
    default_model_path,
    default_python,
)
from tests.contracts.generator import CONTRACT_REQUEST, make_generator_contract_tests

if TYPE_CHECKING:
    from pathlib import Path

# Genes in WyFormer's output format. P1 and P-1 general positions have free coordinates, so
# PyXtal can repeat them; Na-Cl is rock salt (conventional 8 atoms, primitive 2).
GENES = [
    {"group": 1, "sites": [["1a"], ["1a"], ["1a", "1a"]], "species": ["Li", "Mn", "O"],
     "numIons": [1, 1, 2]},
    {"group": 2, "sites": [["2i"], ["2i"], ["2i", "2i"]], "species": ["Li", "Mn", "O"],
     "numIons": [2, 2, 4]},
    {"group": 225, "sites": [["4a"], ["4b"]], "species": ["Na", "Cl"], "numIons": [4, 4]},
    {"group": 221, "sites": [["3c"], ["1a"]], "species": ["Pb", "Eu"], "numIons": [3, 1]},
    {"group": 1, "sites": [["1a", "1a"], ["1a", "1a", "1a"]], "species": ["Li", "O"],
     "numIons": [2, 3]},
]  # fmt: skip

STUB = """#!{python}
import json, sys, time
# argv: -c SCRIPT RUN_DIR N SEED OUT
run, n, seed, out = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
mode = open(run + "/mode").read().strip()
if mode == "fail":
    sys.stderr.write("Traceback ...\\nRuntimeError: CUDA error: no kernel image\\n")
    raise SystemExit(3)
if mode == "sleep":
    time.sleep(30)
genes = json.load(open(run + "/genes.json"))
with open(run + "/calls", "a") as f:
    f.write(f"{{n}} {{seed}}\\n")
json.dump((genes * (n // len(genes) + 1))[:n], open(out, "w"))
"""


def _fake_env(tmp_path: Path, mode: str = "ok", genes: list | None = None) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    python = tmp_path / "wyformer-python"
    python.write_text(STUB.format(python=sys.executable))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "run"
    model.mkdir()
    for name in MODEL_FILES:
        (model / name).write_text("")
    (model / "mode").write_text(mode)
    (model / "genes.json").write_text(json.dumps(GENES if genes is None else genes))
    return python, model


def _generator(tmp_path: Path, mode: str = "ok", **kw) -> WyFormerGenerator:
    python, model = _fake_env(tmp_path, mode)
    return WyFormerGenerator(python=str(python), model_path=str(model), samples_per_round=40, **kw)


@pytest.fixture
def stub_wyformer(tmp_path: Path) -> WyFormerGenerator:
    return _generator(tmp_path)


TestWyFormerContract = make_generator_contract_tests("stub_wyformer")


def test_filters_genes_to_the_chemical_system(tmp_path: Path) -> None:
    request = GenerationRequest(num_structures=3, seed=1, chemical_system=("Cl", "Na"))
    # Rock salt has no free coordinate: at the learned volume every placement is the same
    # structure, and duplicates are dropped.
    assert len(_generator(tmp_path).generate(request)) == 1
    out = _generator(tmp_path / "raw", volume_prior=False).generate(request)  # PyXtal volume
    assert len(out) == 3
    for candidate in out:
        assert candidate.structure.composition.reduced_formula == "NaCl"
        assert len(candidate.structure) == 2  # primitive rock salt
        assert candidate.parameters["conditioning"] == "filtered"
        assert candidate.parameters["space_group"] == 225
        assert candidate.generator == "wyformer"


def test_space_group_filter(tmp_path: Path) -> None:
    request = dataclasses.replace(CONTRACT_REQUEST, space_groups=(2,), min_atoms=1)
    out = _generator(tmp_path).generate(request)
    assert out
    assert {c.parameters["space_group"] for c in out} == {2}


def test_no_match_is_a_clear_failure_after_capped_rounds(tmp_path: Path) -> None:
    generator = _generator(tmp_path, max_rounds=2)
    with pytest.raises(GenerationFailed, match=r"unconditional.*80 samples in 2 rounds"):
        generator.generate(GenerationRequest(num_structures=2, chemical_system=("Fe", "S")))
    calls = (tmp_path / "run" / "calls").read_text().split("\n")
    assert [c for c in calls if c] == ["40 0", "40 1"]


def test_exit_code_becomes_generation_failed(tmp_path: Path) -> None:
    with pytest.raises(GenerationFailed, match=r"exited with code 3.*no kernel image"):
        _generator(tmp_path, "fail").generate(CONTRACT_REQUEST)


def test_timeout_becomes_generation_failed(tmp_path: Path) -> None:
    with pytest.raises(GenerationFailed, match=r"timed out after 0\.5 s"):
        _generator(tmp_path, "sleep", timeout_s=0.5).generate(CONTRACT_REQUEST)


def test_missing_environment_names_the_setup_command(tmp_path: Path) -> None:
    _, model = _fake_env(tmp_path)
    generator = WyFormerGenerator(python=str(tmp_path / "nope" / "python"), model_path=str(model))
    with pytest.raises(GenerationFailed, match="wyformer setup"):
        generator.generate(CONTRACT_REQUEST)


def test_incomplete_weights_folder_names_the_missing_files(tmp_path: Path) -> None:
    python, model = _fake_env(tmp_path)
    (model / "config.yaml").unlink()
    generator = WyFormerGenerator(python=str(python), model_path=str(model))
    with pytest.raises(GenerationFailed, match=r"lacks \['config.yaml'\]"):
        generator.generate(CONTRACT_REQUEST)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        WyFormerGenerator(timeout_s=0)
    with pytest.raises(ConfigError, match="max_rounds"):
        WyFormerGenerator(max_rounds=0)


def test_registry_entry() -> None:
    generator = load_generator("wyformer", max_rounds=1)
    assert isinstance(generator, WyFormerGenerator)
    assert generator.name == "wyformer"


@pytest.mark.slow
def test_real_wyformer_environment() -> None:
    python, model = default_python(), default_model_path()
    if not python.exists():
        pytest.skip(
            f"WyFormer environment {python} absent: "
            "python -m crystalforge.generators.wyformer setup"
        )
    if model is None:
        pytest.skip("WyFormer weights absent (CRYSTALFORGE_WYFORMER_MODEL or shared/data)")
    generator = WyFormerGenerator(samples_per_round=500, max_rounds=2)
    genes = generator.sample_genes(200, seed=0)
    assert len(genes) > 150  # upstream formal validity ~0.95
    assert {"group", "sites", "species"} <= set(genes[0])
    out = generator.generate(
        GenerationRequest(
            num_structures=2,
            seed=0,
            elements=("Al", "Ba", "Ca", "Fe", "K", "Li", "Mg", "Na", "O", "Sr", "Ti", "Zn"),
            required_elements=("O",),
        )
    )
    assert out
    assert os.environ.get("WANDB_MODE") != "online"
