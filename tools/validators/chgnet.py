"""CHGNet relaxation: the expensive validator that turns a guess into a relaxed cell and an energy.

CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) is a universal interatomic potential
trained on the Materials Project relaxation trajectories (MPtrj), so its energies sit on the
Materials Project's corrected GGA/GGA+U scale. The model is the one bundled with the ``chgnet``
package (version 0.3.0); nothing is downloaded.

Measured on the reference machine (2 CPU cores shared with other work, torch 2.13 CPU, one
BLAS thread): importing chgnet takes ~3 s and loading the model ~0.1 s; relaxing a 2-atom
rocksalt cell started 5% off takes 0.3 s (5-10 FIRE steps), a DFT-relaxed MP-20 cell of 4-20
atoms 0.03-1 s, and a 16-atom MgO supercell with 0.1 Å noise 3.7 s (28 steps, ~0.13 s per
step). Expect several seconds per generated structure, more while other processes compete for
the two cores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crystalforge.core.candidate import Verdict
from crystalforge.core.errors import MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate

logger = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]

CHGNET_MODEL = "0.3.0"
"""The bundled CHGNet weights used everywhere (``CHGNet.load(model_name=...)``)."""

ATOM_GRAPH_CUTOFF_A = 6.0
"""CHGNet's atom-graph cutoff (Å): an atom with no neighbour this close is isolated."""

MAX_VOLUME_RATIO = 3.0
"""A relaxation whose cell volume grows or shrinks by more than this factor has failed."""

# The expected ways a CHGNet call fails on one structure: torch shape/numerics errors
# (RuntimeError; e.g. an element beyond Pu, Z > 94), non-finite input (ValueError) and
# graph-construction problems (IndexError).
CHGNET_ERRORS = (RuntimeError, ValueError, IndexError, FloatingPointError)

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def resolve_device(device: DeviceChoice) -> str:
    """The torch device name for a device choice.

    Args:
        device: ``"auto"`` (cuda when ``torch.cuda.is_available()``, else cpu), ``"cpu"`` or
            ``"cuda"``.

    Returns:
        ``"cpu"`` or ``"cuda"``.

    Raises:
        MissingExtraError: torch is not installed.
    """
    if device != "auto":
        return device
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("CHGNet relaxation", "chgnet") from exc
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_chgnet(device: DeviceChoice = "auto") -> Any:
    """The bundled CHGNet model on ``device``, loaded once per process and device.

    Args:
        device: Torch device choice (see :func:`resolve_device`).

    Returns:
        A ``chgnet.model.CHGNet`` in eval mode.

    Raises:
        MissingExtraError: chgnet (or torch) is not installed.
    """
    name = resolve_device(device)
    with _MODELS_LOCK:
        model = _MODELS.get(name)
        if model is None:
            try:
                from chgnet.model.model import CHGNet
            except ImportError as exc:
                raise MissingExtraError("CHGNet relaxation", "chgnet") from exc
            started = time.perf_counter()
            # CHGNet prints its parameter count even with verbose=False.
            with contextlib.redirect_stdout(io.StringIO()):
                model = CHGNet.load(model_name=CHGNET_MODEL, use_device=name, verbose=False)
            model.eval()
            logger.info("loaded CHGNet on %s in %.1f s", name, time.perf_counter() - started)
            _MODELS[name] = model
    return model


@dataclass(frozen=True, kw_only=True)
class RelaxResult:
    """Outcome of one CHGNet relaxation (all energies are CHGNet's, MP-compatible scale)."""

    structure: Structure
    """Relaxed structure (site property ``magmom`` in μB)."""
    energy_total_ev: float
    """Final total energy of the cell, eV."""
    energy_per_atom: float
    """Final energy per atom, eV/atom."""
    converged: bool
    """Whether the final forces (and cell forces, when the cell relaxed) are within fmax."""
    steps: int
    """Optimizer steps taken."""
    max_force_ev_per_a: float
    """Largest atomic force at the end, eV/Å."""
    magmom_mean: float
    """Mean absolute magnetic moment at the end, μB/atom."""
    volume_change: float
    """Relative volume change, (V_final - V_initial) / V_initial."""
    seconds: float
    """Wall time of the relaxation, s."""


def relax_structure(
    structure: Structure,
    *,
    fmax_ev_per_a: float = 0.1,
    max_steps: int = 300,
    relax_cell: bool = True,
    device: DeviceChoice = "auto",
    optimizer: str = "FIRE",
) -> RelaxResult:
    """Relax one structure with CHGNet.

    Args:
        structure: Ordered structure to relax.
        fmax_ev_per_a: Force threshold, eV/Å.
        max_steps: Maximum optimizer steps.
        relax_cell: Relax the lattice too (ASE ``FrechetCellFilter``).
        device: Torch device choice.
        optimizer: ASE optimizer class name, e.g. ``"FIRE"``.

    Returns:
        The relaxed structure and its energies.

    Raises:
        MissingExtraError: chgnet is not installed.
        RuntimeError, ValueError, IndexError: CHGNet failed on this structure.
    """
    model = load_chgnet(device)
    from chgnet.model.dynamics import StructOptimizer

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # chgnet converts a grad-tracking volume tensor to a scalar on every call.
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        relaxer = StructOptimizer(
            model=model,
            optimizer_class=optimizer,
            use_device=resolve_device(device),
            on_isolated_atoms="ignore",
        )
        result = relaxer.relax(
            structure,
            fmax=fmax_ev_per_a,
            steps=max_steps,
            relax_cell=relax_cell,
            verbose=False,
        )
    seconds = time.perf_counter() - started
    final: Any = result["final_structure"]  # pymatgen Structure
    trajectory: Any = result["trajectory"]  # chgnet.model.dynamics.TrajectoryObserver
    n_atoms = len(final)
    energy_total = float(trajectory.energies[-1])
    forces = np.asarray(trajectory.forces[-1], dtype=float)
    max_force = float(np.linalg.norm(forces, axis=1).max()) if n_atoms else 0.0
    converged = max_force <= fmax_ev_per_a
    if relax_cell:
        # FrechetCellFilter's generalised cell force: volume x stress / N atoms (eV).
        stress = _voigt_to_matrix(np.asarray(trajectory.stresses[-1], dtype=float))
        cell_force = float(np.linalg.norm(stress * final.volume / n_atoms, axis=1).max())
        converged = converged and cell_force <= fmax_ev_per_a
    magmoms = np.asarray(trajectory.magmoms[-1], dtype=float)
    # The observer runs once before the first step and once more after the last.
    steps = max(len(trajectory.energies) - 2, 0)
    return RelaxResult(
        structure=final,
        energy_total_ev=energy_total,
        energy_per_atom=energy_total / n_atoms,
        converged=converged,
        steps=steps,
        max_force_ev_per_a=max_force,
        magmom_mean=float(np.abs(magmoms).mean()) if magmoms.size else 0.0,
        volume_change=(final.volume - structure.volume) / structure.volume,
        seconds=seconds,
    )


def _voigt_to_matrix(stress: np.ndarray) -> np.ndarray:
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _isolated_atoms(structure: Structure, cutoff: float = ATOM_GRAPH_CUTOFF_A) -> int:
    """Number of sites with no neighbour within ``cutoff`` Å (CHGNet is meaningless there)."""
    centers, _, _, _ = structure.get_neighbor_list(r=cutoff)
    return len(structure) - len(set(centers.tolist()))


@dataclass(frozen=True, kw_only=True)
class CHGNetRelaxer:
    """Relax each candidate with CHGNet and report its energy.

    Verdict metrics: ``energy_per_atom`` (eV/atom), ``energy_total_ev`` (eV), ``converged``,
    ``steps``, ``max_force_ev_per_a`` (eV/Å), ``magmom_mean`` (μB/atom, mean absolute),
    ``volume_change`` (relative) and ``relax_seconds`` (s). The relaxed structure is returned in
    :attr:`Verdict.structure`. A relaxation that does not converge within ``max_steps`` still
    passes (``converged`` is False); a CHGNet error, a non-finite energy, isolated atoms or a
    volume change beyond a factor of :data:`MAX_VOLUME_RATIO` fails.

    By default all candidates are relaxed together by the batched engine
    (:mod:`crystalforge.tools.validators.batch_relax`); ``relax_seconds`` is then each
    structure's share of the batch's wall time. ``engine="ase"`` keeps the one-by-one
    ``StructOptimizer`` path.
    """

    name: str = "chgnet_relax"
    fmax_ev_per_a: float = 0.1
    """Force threshold, eV/Å."""
    max_steps: int = 300
    """Maximum optimizer steps per structure."""
    device: DeviceChoice = "auto"
    relax_cell: bool = True
    optimizer: str = "FIRE"
    expensive: bool = True
    """Tells :class:`~crystalforge.tools.validators.pipeline.ValidationPipeline` to chunk."""
    progress: Callable[[int, int], None] | None = None
    """Called as ``progress(done, total)`` after each structure."""
    engine: Literal["batched", "ase"] = "batched"
    """``"batched"``: :class:`~crystalforge.tools.validators.batch_relax.BatchRelaxer` (FIRE and
    the Fréchet cell filter, many structures per CHGNet call; ``optimizer`` is ignored).
    ``"ase"``: CHGNet's ``StructOptimizer``, one structure at a time with ``optimizer``."""
    max_atoms_per_batch: int | None = None
    """Atoms per batched CHGNet call (``engine="batched"``); ``None`` picks by device."""

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Relax each candidate.

        Args:
            candidates: Candidates with ordered structures.

        Returns:
            One verdict per candidate, in order.

        Raises:
            MissingExtraError: chgnet is not installed.
        """
        if candidates:
            load_chgnet(self.device)  # fail before the loop when the extra is missing
        if self.engine == "batched":
            return self._validate_batched(candidates)
        verdicts = []
        total = len(candidates)
        for done, candidate in enumerate(candidates, start=1):
            verdicts.append(self._relax_one(candidate))
            if self.progress is not None:
                self.progress(done, total)
        return verdicts

    def _validate_batched(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        from crystalforge.tools.validators.batch_relax import BatchRelaxer

        total = len(candidates)
        verdicts: list[Verdict | None] = [None] * total
        todo: list[int] = []
        for i, candidate in enumerate(candidates):
            reason = self._precheck(candidate.structure)
            if reason is None:
                todo.append(i)
            else:
                verdicts[i] = Verdict.failed(candidate.id, self.name, reason)
        done_before = total - len(todo)
        if self.progress is not None:
            for done in range(1, done_before + 1):
                self.progress(done, total)
        progress = self.progress

        def report(done: int, _: int) -> None:
            if progress is not None:
                progress(done_before + done, total)

        relaxer = BatchRelaxer(
            fmax_ev_per_a=self.fmax_ev_per_a,
            max_steps=self.max_steps,
            device=self.device,
            max_atoms_per_batch=self.max_atoms_per_batch,
            relax_cell=self.relax_cell,
        )
        results = relaxer.relax([candidates[i].structure for i in todo], progress=report)
        for i, result in zip(todo, results, strict=True):
            candidate = candidates[i]
            if result.error is not None or result.structure is None:
                logger.info("CHGNet failed on %s: %s", candidate.id, result.error)
                verdicts[i] = Verdict.failed(candidate.id, self.name, str(result.error))
                continue
            verdicts[i] = self._judge(
                candidate,
                RelaxResult(
                    structure=result.structure,
                    energy_total_ev=result.energy_total_ev,
                    energy_per_atom=result.energy_per_atom,
                    converged=result.converged,
                    steps=result.steps,
                    max_force_ev_per_a=result.max_force_ev_per_a,
                    magmom_mean=result.magmom_mean,
                    volume_change=result.volume_change,
                    seconds=result.seconds,
                ),
            )
        return [v for v in verdicts if v is not None]

    def _precheck(self, structure: Structure) -> str | None:
        """Why CHGNet cannot relax ``structure``, or ``None``."""
        if len(structure) == 0:
            return "structure has no sites"
        if not structure.is_ordered:
            return "disordered structure: CHGNet needs one species per site"
        if not (
            np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()
        ):
            return "non-finite lattice or coordinates"
        isolated = _isolated_atoms(structure)
        if isolated:
            return f"{isolated} isolated atom(s) with no neighbour within {ATOM_GRAPH_CUTOFF_A:g} Å"
        return None

    def _relax_one(self, candidate: Candidate) -> Verdict:
        structure = candidate.structure
        reason = self._precheck(structure)
        if reason is not None:
            return Verdict.failed(candidate.id, self.name, reason)
        try:
            result = relax_structure(
                structure,
                fmax_ev_per_a=self.fmax_ev_per_a,
                max_steps=self.max_steps,
                relax_cell=self.relax_cell,
                device=self.device,
                optimizer=self.optimizer,
            )
        except CHGNET_ERRORS as exc:
            logger.info("CHGNet failed on %s: %s", candidate.id, exc)
            return Verdict.failed(
                candidate.id, self.name, f"CHGNet failed: {type(exc).__name__}: {exc}"
            )
        return self._judge(candidate, result)

    def _judge(self, candidate: Candidate, result: RelaxResult) -> Verdict:
        structure = candidate.structure
        logger.debug(
            "relaxed %s (%s, %d atoms) in %.2f s, %d steps",
            candidate.id,
            candidate.formula,
            len(structure),
            result.seconds,
            result.steps,
        )
        metrics = {
            "energy_per_atom": result.energy_per_atom,
            "energy_total_ev": result.energy_total_ev,
            "converged": result.converged,
            "steps": result.steps,
            "max_force_ev_per_a": result.max_force_ev_per_a,
            "magmom_mean": result.magmom_mean,
            "volume_change": result.volume_change,
            "relax_seconds": result.seconds,
        }
        if not math.isfinite(result.energy_per_atom):
            return Verdict.failed(candidate.id, self.name, "CHGNet energy is not finite", metrics)
        ratio = 1.0 + result.volume_change
        if not (1.0 / MAX_VOLUME_RATIO <= ratio <= MAX_VOLUME_RATIO):
            return Verdict.failed(
                candidate.id,
                self.name,
                f"volume changed by a factor {ratio:.2f} during relaxation "
                f"(limit {MAX_VOLUME_RATIO:g}x)",
                metrics,
            )
        return Verdict(
            candidate_id=candidate.id,
            validator=self.name,
            passed=True,
            metrics=metrics,
            structure=result.structure,
        )
