"""WyFormer (Wyckoff Transformer, Kazeev et al., ICML 2025) as a generator, run out of process.

The PyPI package ``wyckoff-transformer`` declares Python 3.12 and pins its own torch stack, so it
runs in a virtual environment of its own (created by :func:`setup_environment`, i.e.
``python -m crystalforge.generators.wyformer setup``), never in crystalforge's. Each ``generate``
call starts that environment's Python with a short script that loads the weights on CPU and
writes WyFormer's Wyckoff genes (``{"group", "sites", "species", "numIons"}``) to a JSON file;
PyXtal then places atoms on exactly those sites here (as the autoregressive generator does).

WyFormer is **unconditional**: genes are sampled from the MP-20 distribution and then filtered
to the request (chemical system or element pool with required elements, atom range, space
groups). A narrow chemical system may match few or none of its samples: sampling stops after
``max_rounds`` rounds of ``samples_per_round`` genes, and the filter counts are logged. Every
candidate says ``parameters["conditioning"] == "filtered"``.

Settings: ``python`` (the environment's interpreter; default ``$CRYSTALFORGE_WYFORMER_PYTHON``
or ``~/.local/share/crystalforge/wyformer-venv/bin/python``) and ``model_path`` (the run folder
with ``best_model_params.pt`` etc.; default ``$CRYSTALFORGE_WYFORMER_MODEL``, else
``wyformer_mp20`` in the data directory setting or ``../shared/data``). Users bring their own
weights. A missing environment or weights folder, a time-out or a non-zero exit of the subprocess
raise :class:`~crystalforge.core.errors.GenerationFailed` saying what is missing and how to
create it (or the stderr tail), so a benchmark over all families counts a failed request instead
of stopping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import ConfigError, GenerationFailed
from crystalforge.generators.autoregressive.tokenizer import WyckoffGene
from crystalforge.generators.base import UniqueCandidates
from crystalforge.generators.packing import PUSH_SCALE, PUSH_STEPS, check_push
from crystalforge.generators.symmetry import centering_multiplicity

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.generators.base import Family, GenerationRequest

logger = logging.getLogger(__name__)

PACKAGE = "wyckoff-transformer==2.3.0"
DEFAULT_VENV = Path.home() / ".local" / "share" / "crystalforge" / "wyformer-venv"
MODEL_FILES = (
    "best_model_params.pt",
    "config.yaml",
    "wyckoff_processor.json",
    "spacegroup_distribution.json",
    "wyckoffs_enumerated_by_ss.json",
)
"""Files a WyFormer run folder must hold (see shared/data/README.md, ``wyformer_mp20``)."""

GENERATE_SCRIPT = """
import json, os, sys
os.environ.setdefault("WANDB_MODE", "disabled")
from pathlib import Path
import torch
from omegaconf import OmegaConf
from wyckoff_transformer.trainer import WyckoffTrainer
run, n, seed, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(seed)
torch.set_num_threads(1)
t = WyckoffTrainer.from_config(OmegaConf.load(run / "config.yaml"), device=torch.device("cpu"),
    use_cached_tensors=False, run_path=run, load_datasets=False)
t.model.load_state_dict(torch.load(run / "best_model_params.pt", map_location="cpu",
    weights_only=True))
genes = t.generate_structures(n_structures=n, calibrate=False)
with open(out, "w") as f:
    json.dump([g for g in genes if g is not None], f, default=int)
"""
"""Run by the WyFormer environment's Python: ``-c SCRIPT RUN_DIR N SEED OUT_JSON``."""


def default_python() -> Path:
    """The WyFormer interpreter: ``$CRYSTALFORGE_WYFORMER_PYTHON`` or the default venv's."""
    env = os.environ.get("CRYSTALFORGE_WYFORMER_PYTHON")
    return Path(env) if env else DEFAULT_VENV / "bin" / "python"


def default_model_path() -> Path | None:
    """``$CRYSTALFORGE_WYFORMER_MODEL``, else ``wyformer_mp20`` in the data dir, if present."""
    env = os.environ.get("CRYSTALFORGE_WYFORMER_MODEL")
    if env:
        return Path(env)
    from crystalforge.core.settings import Settings

    roots = [Settings().data_dir] if Settings().data_dir else []
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for root in roots:
        if root is not None and (root / "wyformer_mp20" / MODEL_FILES[0]).exists():
            return root / "wyformer_mp20"
    return None


@dataclass(frozen=True, kw_only=True)
class WyFormerGenerator:
    """Published WyFormer MP-20 model, sampled in its own environment (registry ``wyformer``).

    The same request and seed give the same structures (the subprocess seeds torch with
    ``request.seed`` plus the round number; PyXtal seeds derive from the request seed).
    """

    python: str | None = None
    """Interpreter of the WyFormer environment; ``None``: :func:`default_python`."""
    model_path: str | None = None
    """WyFormer run folder (see :data:`MODEL_FILES`); ``None``: :func:`default_model_path`."""
    samples_per_round: int = 1000
    """Genes sampled per subprocess call (WyFormer's CPU speed: ~1,000 in 12 s)."""
    max_rounds: int = 3
    """Subprocess calls per ``generate`` at most (the cap on filtering an unconditional model)."""
    pyxtal_attempts: int = 2
    """PyXtal placements tried per matching gene."""
    volume_factor: float = 1.0
    """Cell volume relative to the learned per-element volumes (``volume_prior``), else to
    PyXtal's sum of atomic volumes."""
    volume_prior: bool = True
    """Place atoms as ``autoregressive`` does: learned volume (see
    :func:`~crystalforge.generators.autoregressive.generator.place_gene`)."""
    min_distance_ratio: float = 0.5
    """Clash screen of the placement, as ``autoregressive`` and ``wyckoff`` (``0``: off)."""
    push_steps: int = PUSH_STEPS
    """Rounds of the symmetric hard-sphere push after placement, as ``wyckoff`` (``0``: off;
    see :mod:`~crystalforge.generators.packing`)."""
    push_scale: float = PUSH_SCALE
    """Contact distance of the push relative to the sum of covalent radii."""
    timeout_s: float = 300.0
    """Time-out of one subprocess call, seconds."""
    name: str = field(default="wyformer", init=False)
    family: Family = field(default="external", init=False)

    def __post_init__(self) -> None:
        if self.samples_per_round < 1 or self.max_rounds < 1 or self.pyxtal_attempts < 1:
            raise ConfigError(
                "samples_per_round, max_rounds and pyxtal_attempts must be >= 1, got "
                f"{self.samples_per_round!r}, {self.max_rounds!r}, {self.pyxtal_attempts!r}"
            )
        if not 0.0 <= self.min_distance_ratio < 2.0:
            raise ConfigError(
                f"min_distance_ratio must be in [0, 2), got {self.min_distance_ratio!r}"
            )
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s!r}")
        check_push(self.push_steps, self.push_scale)

    def _paths(self) -> tuple[Path, Path]:
        python = Path(self.python) if self.python else default_python()
        if not python.exists():
            raise GenerationFailed(
                f"WyFormer environment {str(python)!r} not found; create it with "
                "`python -m crystalforge.generators.wyformer setup` or set "
                "CRYSTALFORGE_WYFORMER_PYTHON / the python setting"
            )
        model = Path(self.model_path) if self.model_path else default_model_path()
        if model is None:
            raise GenerationFailed(
                "no WyFormer weights: set model_path (or CRYSTALFORGE_WYFORMER_MODEL) to a run "
                f"folder holding {list(MODEL_FILES)!r}"
            )
        if missing := [f for f in MODEL_FILES if not (model / f).exists()]:
            raise GenerationFailed(f"WyFormer run folder {str(model)!r} lacks {missing!r}")
        return python, model

    def sample_genes(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` raw WyFormer genes from one subprocess call (invalid ones already dropped).

        Raises:
            GenerationFailed: The environment or weights are missing, or the subprocess timed
                out, failed, or wrote unreadable output.
        """
        python, model = self._paths()
        with tempfile.TemporaryDirectory(prefix="wyformer-") as tmp:
            out = Path(tmp) / "genes.json"
            command = [str(python), "-c", GENERATE_SCRIPT, str(model), str(n), str(seed), str(out)]
            env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=self.timeout_s, env=env,
                    check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise GenerationFailed(
                    f"WyFormer subprocess timed out after {self.timeout_s:g} s (timeout_s)"
                ) from exc
            if result.returncode != 0:
                tail = (result.stderr or "").strip().splitlines()[-5:]
                raise GenerationFailed(
                    f"WyFormer subprocess exited with code {result.returncode}: {' | '.join(tail)}"
                )
            try:
                genes = json.loads(out.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise GenerationFailed(f"WyFormer wrote no readable genes: {exc}") from exc
        if not isinstance(genes, list):
            raise GenerationFailed(f"WyFormer output is not a list but {type(genes).__name__}")
        return genes

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Sample WyFormer genes, keep those the request admits, and build them with PyXtal.

        Raises:
            GenerationFailed: Impossible request, missing environment or weights, subprocess
                failure, or no gene matched.
        """
        import numpy as np

        from crystalforge.generators.autoregressive.generator import place_gene

        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        if request.max_atoms < max(request.min_atoms, 1):
            raise GenerationFailed(
                f"no cell size fits: min_atoms={request.min_atoms!r} > "
                f"max_atoms={request.max_atoms!r}"
            )
        rng = np.random.default_rng(request.seed % 2**63)
        kept = UniqueCandidates(self.name, request)
        out = kept.items
        stats = {"sampled": 0, "matched": 0, "pyxtal_failed": 0}
        for round_ in range(self.max_rounds):
            genes = self.sample_genes(self.samples_per_round, request.seed * 1000 + round_)
            stats["sampled"] += len(genes)
            for raw in genes:
                if len(out) >= request.num_structures:
                    break
                gene = _to_gene(raw)
                if gene is None or not _admits(request, gene):
                    continue
                stats["matched"] += 1
                seed = int(rng.integers(2**62))
                structure = None
                for attempt in range(self.pyxtal_attempts):
                    structure = place_gene(
                        gene,
                        seed + attempt,
                        volume_factor=self.volume_factor,
                        volume_prior=self.volume_prior,
                        min_distance_ratio=self.min_distance_ratio,
                        push_steps=self.push_steps,
                        push_scale=self.push_scale,
                    )
                    if structure is not None:
                        break
                if structure is None:
                    stats["pyxtal_failed"] += 1
                    continue
                parameters: dict[str, Scalar] = {
                    "wyckoff_gene": gene.text(),
                    "space_group": gene.space_group,
                    "conditioning": "filtered",
                    "wyformer_round": round_,
                    "pyxtal_seed": seed,
                    "volume_factor": self.volume_factor,
                    "volume_prior": self.volume_prior,
                    "push_steps": self.push_steps,
                }
                kept.add(structure, parameters)
            if len(out) >= request.num_structures:
                break
        stats["duplicates"] = kept.duplicates
        logger.info("wyformer: %d structures, filter counts %s", len(out), stats)
        if not out:
            raise GenerationFailed(
                "WyFormer is unconditional and none of its "
                f"{stats['sampled']} samples in {self.max_rounds} rounds matched the request "
                f"({stats}); raise max_rounds or use a conditional generator"
            )
        if len(out) < request.num_structures:
            logger.warning(
                "wyformer returned %d of %d structures after %d rounds (unconditional sampling "
                "filtered to the request)", len(out), request.num_structures, self.max_rounds,
            )  # fmt: skip
        return out


def _to_gene(raw: Any) -> WyckoffGene | None:
    """The gene of one WyFormer record; ``None`` when malformed."""
    try:
        group = int(raw["group"])
        sites = [
            (str(el), str(label))
            for el, labels in zip(raw["species"], raw["sites"], strict=True)
            for label in labels
        ]
    except (KeyError, TypeError, ValueError):
        return None
    if not 1 <= group <= 230 or not sites:
        return None
    return WyckoffGene.of(group, sites)


def _admits(request: GenerationRequest, gene: WyckoffGene) -> bool:
    """Whether a gene's elements, atom count and space group fit the request."""
    counts = gene.conventional_counts()
    centering = centering_multiplicity(gene.space_group)
    total = sum(counts.values())
    if total % centering or not request.min_atoms <= total // centering <= request.max_atoms:
        return False
    if request.space_groups and gene.space_group not in request.space_groups:
        return False
    elements = set(counts)
    if request.chemical_system:
        return elements == set(request.chemical_system)
    if not set(request.required_elements) <= elements:
        return False
    if elements & set(request.excluded_elements):
        return False
    if request.elements:
        return elements <= set(request.elements)
    if request.formula is not None or request.compositions:
        from pymatgen.core import Composition

        wanted = {
            Composition(f).reduced_formula
            for f in ((request.formula,) if request.formula else request.compositions)
        }
        return Composition(counts).reduced_formula in wanted
    return True


def setup_environment(venv: Path = DEFAULT_VENV, *, python: str | None = None) -> Path:
    """Create the WyFormer environment and install the package into it; returns its Python.

    ``wyckoff-transformer`` 2.3.0 declares ``Requires-Python >=3.12``; on 3.11 it is installed
    with ``--no-deps --ignore-requires-python`` followed by its declared dependencies (verified to
    work in shared/data/README.md). Needs network access to PyPI.

    Args:
        venv: Folder of the new virtual environment.
        python: Base interpreter (default: the one running this).

    Raises:
        GenerationFailed: A step of the installation failed (its output tail is in the message).
    """
    base = python or sys.executable
    steps: list[Sequence[str]] = [[base, "-m", "venv", str(venv)]]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    steps.append([*pip, "--no-deps", "--ignore-requires-python", PACKAGE])
    for step in steps:
        _run_step(step)
    requirements = _declared_requirements(venv / "bin" / "python")
    if requirements:
        _run_step([*pip, *requirements])
    return venv / "bin" / "python"


def _declared_requirements(python: Path) -> list[str]:
    script = (
        "import importlib.metadata as m, json;"
        "print(json.dumps([r for r in (m.requires('wyckoff-transformer') or []) "
        "if 'extra ==' not in r]))"
    )
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise GenerationFailed(f"cannot read wyckoff-transformer requirements: {result.stderr}")
    return list(json.loads(result.stdout))


def _run_step(command: Sequence[str]) -> None:
    logger.info("running %s", " ".join(command[:6]))
    started = time.monotonic()
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise GenerationFailed(f"{' '.join(command[:5])} failed ({result.returncode}): {tail}")
    logger.info("done in %.0f s", time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crystalforge.generators.wyformer setup [--venv DIR]``; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(description="Manage the WyFormer environment.")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create the venv and install wyckoff-transformer")
    setup.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "setup":
        path = setup_environment(args.venv)
        logger.info("WyFormer environment ready: set CRYSTALFORGE_WYFORMER_PYTHON=%s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
