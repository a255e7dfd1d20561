"""ExternalGenerator with stand-in executables: valid extxyz/CIF output, exit 3, hang, garbage."""

from __future__ import annotations

import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.base import GenerationRequest, Generator
from crystalforge.generators.external import (
    ExternalGenerator,
    ExternalGeneratorError,
    crystallm,
    mattergen,
)

if TYPE_CHECKING:
    from pathlib import Path

REQUEST = GenerationRequest(num_structures=2, seed=5, chemical_system=("Cl", "Na"))

EXTXYZ_WRITER = """
import sys, pathlib
from ase.build import bulk
from ase.io import write
out = pathlib.Path(sys.argv[1])
frames = [bulk("NaCl", "rocksalt", a=5.6 + 0.1 * i) for i in range(int(sys.argv[2]))]
write(out / "generated_crystals.extxyz", frames, format="extxyz")
print("args", sys.argv[1:], file=sys.stderr)
"""
CIF_WRITER = """
import sys, pathlib
from pymatgen.core import Lattice, Structure
out = pathlib.Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    s = Structure(Lattice.cubic(4.0 + 0.2 * i), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.to(filename=str(out / f"sample_{i}.cif"))
"""
FAILING = "import sys; print('CUDA out of memory', file=sys.stderr); sys.exit(3)"
HANGING = "import time; time.sleep(60)"
GARBAGE = """
import sys, pathlib
(pathlib.Path(sys.argv[1]) / "generated_crystals.extxyz").write_text("not a crystal\\n")
"""


def _stand_in(tmp_path: Path, body: str, **kwargs) -> ExternalGenerator:
    script = tmp_path / "stand_in.py"
    script.write_text(textwrap.dedent(body))
    return ExternalGenerator(
        executable=sys.executable,
        arguments=(str(script), "{out_dir}", "{num_structures}"),
        **kwargs,
    )


def test_parses_extxyz_output(tmp_path: Path) -> None:
    generator = _stand_in(tmp_path, EXTXYZ_WRITER, name="mattergen")
    assert isinstance(generator, Generator)
    out = generator.generate(REQUEST)
    assert len(out) == 2
    assert {c.formula for c in out} == {"NaCl"}
    assert len({c.id for c in out}) == 2
    assert out[0].generator == "mattergen"


def test_parses_cif_output(tmp_path: Path) -> None:
    generator = _stand_in(tmp_path, CIF_WRITER, output_format="cif")
    out = generator.generate(REQUEST)
    assert [c.formula for c in out] == ["CsCl", "CsCl"]


def test_non_zero_exit_names_command_code_and_stderr(tmp_path: Path) -> None:
    generator = _stand_in(tmp_path, FAILING)
    with pytest.raises(ExternalGeneratorError) as info:
        generator.generate(REQUEST)
    assert info.value.exit_code == 3
    assert "CUDA out of memory" in info.value.stderr_tail
    assert "stand_in.py" in str(info.value)
    assert isinstance(info.value, GenerationFailed)


def test_time_out_is_a_typed_error(tmp_path: Path) -> None:
    generator = _stand_in(tmp_path, HANGING, timeout_s=1.0)
    with pytest.raises(ExternalGeneratorError, match=r"timed out after 1\.0 s"):
        generator.generate(REQUEST)


def test_garbage_output_is_a_typed_error(tmp_path: Path) -> None:
    generator = _stand_in(tmp_path, GARBAGE)
    with pytest.raises(ExternalGeneratorError, match="no parsable extxyz"):
        generator.generate(REQUEST)


def test_missing_executable_is_a_typed_error(tmp_path: Path) -> None:
    generator = ExternalGenerator(executable=str(tmp_path / "nope"))
    with pytest.raises(ExternalGeneratorError, match="could not start"):
        generator.generate(REQUEST)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="output_format"):
        ExternalGenerator(executable="x", output_format="pdb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout_s"):
        ExternalGenerator(executable="x", timeout_s=0)


def test_real_cli_conventions(tmp_path: Path) -> None:
    command = mattergen("/env/bin/mattergen-generate").command(REQUEST, tmp_path)
    assert command == [
        "/env/bin/mattergen-generate",
        str(tmp_path),
        "--pretrained-name=chemical_system",
        "--batch_size=2",
        "--num_batches=1",
        "--properties_to_condition_on={'chemical_system': 'Cl-Na'}",
    ]
    request = GenerationRequest(num_structures=3, formula="NaCl")
    command = crystallm().command(request, tmp_path)
    assert "--formula=NaCl" in command
    assert "--num-samples=3" in command


def test_registry_builds_the_adapters() -> None:
    from crystalforge.generators.registry import load_generator

    generator = load_generator("mattergen", executable="/env/bin/mattergen-generate")
    assert generator.name == "mattergen"
    assert generator.family == "external"
    assert load_generator("crystallm").name == "crystallm"
