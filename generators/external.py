"""Heavyweight published generators run out of process, behind the Generator protocol.

MatterGen and CrystaLLM need their own environments (CUDA torch, hydra, pinned versions), so
they never import into ours. :class:`ExternalGenerator` builds a command line, runs it with the
generator's own executable (a path inside its venv or conda env) in a fresh temporary
directory with a time-out, and parses the files it writes: extxyz (MatterGen writes
``generated_crystals.extxyz``) or CIF files (CrystaLLM). Failures become
:class:`ExternalGeneratorError` naming the command, exit code and the tail of stderr.
See ``docs/generators-external.md`` for plugging in a real installation.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from crystalforge.core.candidate import Candidate
from crystalforge.core.errors import ConfigError, GenerationFailed

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from crystalforge.generators.base import Family, GenerationRequest

logger = logging.getLogger(__name__)

OutputFormat = Literal["extxyz", "cif"]
"""File formats an external generator writes."""
STDERR_TAIL = 2000
"""Characters of stderr quoted in an error."""


class ExternalGeneratorError(GenerationFailed):
    """An external generator timed out, exited non-zero or wrote nothing parsable."""

    def __init__(
        self, reason: str, *, command: list[str], exit_code: int | None, stderr: str
    ) -> None:
        tail = stderr[-STDERR_TAIL:]
        super().__init__(
            f"{reason}: command {shlex.join(command)!r}, exit code {exit_code!r}, "
            f"stderr tail: {tail!r}"
        )
        self.command = command
        self.exit_code = exit_code
        self.stderr_tail = tail


@dataclass(frozen=True, kw_only=True)
class ExternalGenerator:
    """Run ``executable`` with ``arguments`` and parse the structures it writes.

    ``arguments`` are format strings filled with ``out_dir`` (the temporary output folder),
    ``num_structures``, ``seed``, ``chemical_system`` (e.g. ``Li-Mn-O``) and ``formula``.
    """

    executable: str
    """Program to run, e.g. ``/opt/mattergen/.venv/bin/mattergen-generate``."""
    arguments: tuple[str, ...] = ()
    """Argument templates, e.g. ``("{out_dir}", "--batch_size={num_structures}")``."""
    output_format: OutputFormat = "extxyz"
    """What the program writes into ``out_dir``."""
    timeout_s: float = 3600.0
    """Wall-clock limit of one run in seconds."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables for the program."""
    name: str = "external"
    family: Family = field(default="external", init=False)

    def __post_init__(self) -> None:
        if not self.executable:
            raise ConfigError("executable must name a program, got ''")
        if self.output_format not in ("extxyz", "cif"):
            raise ConfigError(
                f"output_format must be 'extxyz' or 'cif', got {self.output_format!r}"
            )
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s!r}")

    def command(self, request: GenerationRequest, out_dir: Path) -> list[str]:
        """The command line for ``request`` writing into ``out_dir``."""
        values = {
            "out_dir": str(out_dir),
            "num_structures": request.num_structures,
            "seed": request.seed,
            "chemical_system": "-".join(request.chemical_system or ()),
            "formula": request.formula or "",
        }
        return [self.executable, *(a.format(**values) for a in self.arguments)]

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Run the program once and return up to ``request.num_structures`` candidates.

        Raises:
            ExternalGeneratorError: Time-out, non-zero exit, or no parsable structure.
        """
        import os

        if request.num_structures <= 0:
            return []
        with tempfile.TemporaryDirectory(prefix=f"crystalforge-{self.name}-") as tmp:
            out_dir = Path(tmp) / "out"
            out_dir.mkdir()
            command = self.command(request, out_dir)
            logger.info("running %s", shlex.join(command))
            try:
                done = subprocess.run(  # the user configures the program
                    command,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                    env={**os.environ, **dict(self.env)},
                    cwd=tmp,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
                raise ExternalGeneratorError(
                    f"timed out after {self.timeout_s} s",
                    command=command,
                    exit_code=None,
                    stderr=stderr or "",
                ) from None
            except OSError as exc:
                raise ExternalGeneratorError(
                    f"could not start: {exc}", command=command, exit_code=None, stderr=""
                ) from exc
            if done.returncode != 0:
                raise ExternalGeneratorError(
                    "exited with an error",
                    command=command,
                    exit_code=done.returncode,
                    stderr=done.stderr,
                )
            structures = self._parse(out_dir, command, done.stderr)
        out: list[Candidate] = []
        seen: set[str] = set()
        for index, structure in enumerate(structures):
            candidate = Candidate.create(
                structure,
                generator=self.name,
                seed=request.seed,
                parameters={"index": index, "executable": self.executable},
                round=request.round,
            )
            if candidate.id not in seen:
                seen.add(candidate.id)
                out.append(candidate)
            if len(out) == request.num_structures:
                break
        return out

    def _parse(self, out_dir: Path, command: list[str], stderr: str) -> list[Structure]:
        from pymatgen.core import Structure

        structures: list[Structure] = []
        errors: list[str] = []
        suffixes = (".extxyz", ".xyz") if self.output_format == "extxyz" else (".cif",)
        files = sorted(p for p in out_dir.rglob("*") if p.suffix in suffixes)
        for path in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if self.output_format == "extxyz":
                        structures.extend(_read_extxyz(path))
                    else:
                        structures.append(Structure.from_file(path))
            except Exception as exc:  # any parser failure is unparsable output
                errors.append(f"{path.name}: {exc}")
        if not structures:
            found = [p.name for p in files] or "no output files"
            raise ExternalGeneratorError(
                f"no parsable {self.output_format} structure in the output ({found}; {errors})",
                command=command,
                exit_code=0,
                stderr=stderr,
            )
        return structures


def _read_extxyz(path: Path) -> list[Structure]:
    """All periodic frames of an extxyz file as pymatgen structures."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = read(path, index=":", format="extxyz")
    frames = frames if isinstance(frames, list) else [frames]
    out = []
    for atoms in frames:
        if not all(atoms.pbc) or atoms.cell.volume <= 0:
            raise ValueError("frame without a periodic cell")
        out.append(AseAtomsAdaptor.get_structure(atoms))  # pyright: ignore[reportArgumentType]
    return out


def mattergen(
    executable: str = "mattergen-generate",
    *,
    pretrained_name: str = "chemical_system",
    timeout_s: float = 3600.0,
) -> ExternalGenerator:
    """MatterGen's ``mattergen-generate`` (one batch of ``num_structures``).

    With ``pretrained_name="chemical_system"`` the request's chemical system is passed as
    ``--properties_to_condition_on={'chemical_system': 'Li-Mn-O'}``; MatterGen writes
    ``generated_crystals.extxyz`` into the results folder.
    """
    arguments = ["{out_dir}", f"--pretrained-name={pretrained_name}"]
    arguments += ["--batch_size={num_structures}", "--num_batches=1"]
    if pretrained_name == "chemical_system":
        arguments.append("--properties_to_condition_on={{'chemical_system': '{chemical_system}'}}")
    return ExternalGenerator(
        executable=executable,
        arguments=tuple(arguments),
        output_format="extxyz",
        timeout_s=timeout_s,
        name="mattergen",
    )


def crystallm(
    executable: str = "python", *, script: str = "bin/generate_cifs.py", timeout_s: float = 3600.0
) -> ExternalGenerator:
    """A CrystaLLM wrapper script that writes CIF files into ``{out_dir}``.

    CrystaLLM's own flow is ``bin/make_prompt_file.py`` then ``bin/sample.py`` (writes
    ``sample_*.cif``) then ``bin/postprocess.py``; ``script`` is a wrapper that runs those for
    ``--formula`` and ``--num-samples`` into ``--out-dir`` (see the docs page).
    """
    return ExternalGenerator(
        executable=executable,
        arguments=(
            script,
            "--formula={formula}",
            "--num-samples={num_structures}",
            "--seed={seed}",
            "--out-dir={out_dir}",
        ),
        output_format="cif",
        timeout_s=timeout_s,
        name="crystallm",
    )
