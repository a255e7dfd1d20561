"""Property stage: band gap (our model), bulk modulus (CHGNet EOS), magnetic moment, density.

Runs after the hull stage on relaxed candidates and never fails one: a property that cannot be
computed is left out of the verdict's metrics and the reason is given in ``properties_note``, so
:func:`crystalforge.tools.assess.assess` reports the target as unevaluated instead of guessing.

Metrics (canonical units of :data:`crystalforge.core.spec.PROPERTIES`):

* ``band_gap`` (eV) and ``band_gap_p_gapped`` (probability that the gap is > 0) from the
  composition model of :mod:`crystalforge.tools.validators.band_gap` (held-out MAE in
  ``docs/models/band-gap.md``). Polymorphs share a prediction.
* ``bulk_modulus`` (GPa), ``eos_v0_per_atom`` (Å³/atom) and ``eos_fit_rmse_mev`` (meV/atom)
  from a Birch-Murnaghan fit (``pymatgen.analysis.eos``) to static CHGNet energies of the cell
  scaled isotropically over ``volume_strains`` (default ±6% in volume, 7 points; fractional
  coordinates fixed, so internal relaxation under strain is ignored, which overestimates B for
  cells with free internal parameters). All strained cells of all candidates go through the
  batched CHGNet engine together (:class:`~crystalforge.tools.validators.batch_relax.BatchRelaxer`
  with zero steps: one forward pass per batch of up to ``max_atoms_per_batch`` atoms).
* ``magnetic_moment`` (μB/atom): mean absolute CHGNet site magnetic moment of the unstrained
  cell (CHGNet predicts magnitudes from its MPtrj magmom head; no sign, no ordering).
* ``density`` (g/cm³) of the relaxed cell.

No bulk-modulus or magnetic-moment labels exist in the offline data; the sanity table of hand-
built solids against experiment is in ``docs/validation.md``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.candidate import Verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.tools.validators.chgnet import DeviceChoice

logger = logging.getLogger(__name__)

DEFAULT_VOLUME_STRAINS = (-0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06)
"""Relative volume changes of the EOS points (the unstrained cell is one of them)."""

MAX_EOS_FIT_RMSE_MEV = 5.0
"""A Birch-Murnaghan fit with a larger RMS residual (meV/atom) is not reported."""


@dataclass(frozen=True, kw_only=True)
class EOSResult:
    """Birch-Murnaghan fit of one structure."""

    bulk_modulus_gpa: float
    v0_per_atom: float
    """Equilibrium volume, Å³/atom."""
    rmse_mev: float
    """RMS residual of the fit, meV/atom."""


def strained_cells(structure: Structure, volume_strains: Sequence[float]) -> list[Structure]:
    """Copies of ``structure`` scaled isotropically to ``V0 (1 + strain)``; fractions kept."""
    cells = []
    for strain in volume_strains:
        cell = structure.copy()
        cell.scale_lattice(structure.volume * (1.0 + strain))
        cells.append(cell)
    return cells


def fit_birch_murnaghan(
    volumes: Sequence[float] | np.ndarray, energies: Sequence[float] | np.ndarray, n_atoms: int
) -> EOSResult | str:
    """Birch-Murnaghan fit of total energies (eV) against cell volumes (Å³).

    Returns:
        The fit, or the reason it is not trustworthy (minimum outside the sampled range,
        non-positive modulus, residual above :data:`MAX_EOS_FIT_RMSE_MEV`, fit failure).
    """
    from pymatgen.analysis.eos import EOS, EOSError

    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if not (np.isfinite(v).all() and np.isfinite(e).all()):
        return "non-finite CHGNet energy on a strained cell"
    order = np.argsort(v)
    lowest = int(np.argmin(e[order]))
    if lowest in (0, len(v) - 1):
        side = "smaller" if lowest == 0 else "larger"
        return (
            f"EOS minimum lies outside the sampled {v.min() / n_atoms:.2f}-"
            f"{v.max() / n_atoms:.2f} Å³/atom (lower energy at {side} volume; cell not relaxed?)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # leastsq's maxfev notice
            fit: Any = EOS("birch_murnaghan").fit(list(v), list(e))
        b0 = float(fit.b0_GPa)
        v0 = float(fit.v0)
        residual = e - np.asarray(fit.func(v), dtype=float)
    except (EOSError, RuntimeError, ValueError, TypeError) as exc:
        return f"EOS fit failed: {exc}"
    rmse_mev = float(np.sqrt(np.mean(residual**2))) / n_atoms * 1000.0
    if not (math.isfinite(b0) and b0 > 0):
        return f"EOS fit gave a non-positive bulk modulus ({b0:.3g} GPa)"
    if not v.min() <= v0 <= v.max():
        return (
            f"EOS minimum at {v0 / n_atoms:.2f} Å³/atom lies outside the sampled "
            f"{v.min() / n_atoms:.2f}-{v.max() / n_atoms:.2f} Å³/atom (cell not relaxed?)"
        )
    if rmse_mev > MAX_EOS_FIT_RMSE_MEV:
        return f"EOS fit residual {rmse_mev:.1f} meV/atom > {MAX_EOS_FIT_RMSE_MEV:g}"
    return EOSResult(bulk_modulus_gpa=b0, v0_per_atom=v0 / n_atoms, rmse_mev=rmse_mev)


@dataclass(frozen=True, kw_only=True)
class PropertyValidator:
    """Band gap, bulk modulus, magnetic moment and density of each candidate (never fails).

    See the module docstring for the metrics and how each is computed.
    """

    name: str = "properties"
    device: DeviceChoice = "auto"
    eos: bool = True
    """Fit the bulk modulus (and take magmoms) from CHGNet; off: band gap and density only."""
    volume_strains: tuple[float, ...] = DEFAULT_VOLUME_STRAINS
    max_atoms_per_batch: int | None = None
    """Atoms per batched CHGNet call; ``None`` lets the engine size it by device."""
    max_eos_atoms: int = 100
    """Cells larger than this get no EOS (cost grows with atoms x strain points)."""
    expensive: bool = True
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    """Wall time of the last call by part, s (``band_gap``, ``eos``); for benchmarks."""

    def __post_init__(self) -> None:
        if self.eos and (len(self.volume_strains) < 5 or 0.0 not in self.volume_strains):
            raise ValueError(
                f"volume_strains must hold at least 5 points including 0.0, got "
                f"{self.volume_strains!r}"
            )

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Compute the properties of each candidate.

        Args:
            candidates: Candidates (normally relaxed by ``chgnet_relax``).

        Returns:
            One passing verdict per candidate, in order.

        Raises:
            MissingExtraError: ``eos`` is on and chgnet is not installed.
        """
        metrics: list[dict[str, Scalar]] = [{} for _ in candidates]
        notes: list[list[str]] = [[] for _ in candidates]
        started = time.perf_counter()
        self._band_gaps(candidates, metrics, notes)
        self.timings["band_gap"] = time.perf_counter() - started
        for m, candidate in zip(metrics, candidates, strict=True):
            structure = candidate.structure
            if len(structure) and math.isfinite(structure.volume) and structure.volume > 0:
                m["density"] = float(structure.density)
        started = time.perf_counter()
        if self.eos:
            self._equations_of_state(candidates, metrics, notes)
        self.timings["eos"] = time.perf_counter() - started
        verdicts = []
        for candidate, m, note in zip(candidates, metrics, notes, strict=True):
            if note:
                m["properties_note"] = "; ".join(note)
            verdicts.append(
                Verdict(candidate_id=candidate.id, validator=self.name, passed=True, metrics=m)
            )
        return verdicts

    def _band_gaps(
        self,
        candidates: Sequence[Candidate],
        metrics: list[dict[str, Scalar]],
        notes: list[list[str]],
    ) -> None:
        from crystalforge.tools.validators.band_gap import featurize_one, load_band_gap_model

        model = load_band_gap_model()
        rows, where = [], []
        for i, candidate in enumerate(candidates):
            try:
                rows.append(featurize_one(candidate.structure.composition))
                where.append(i)
            except ValueError as exc:
                notes[i].append(f"no band gap: {exc}")
        if not rows:
            return
        gaps, probs = model.predict_features(np.stack(rows))
        for i, gap, p in zip(where, gaps, probs, strict=True):
            metrics[i]["band_gap"] = float(gap)
            metrics[i]["band_gap_p_gapped"] = float(p)

    def _equations_of_state(
        self,
        candidates: Sequence[Candidate],
        metrics: list[dict[str, Scalar]],
        notes: list[list[str]],
    ) -> None:
        from crystalforge.tools.validators.batch_relax import BatchRelaxer

        cells: list[Structure] = []
        owners: list[int] = []
        for i, candidate in enumerate(candidates):
            structure = candidate.structure
            if len(structure) > self.max_eos_atoms:
                notes[i].append(
                    f"no bulk modulus: {len(structure)} atoms > {self.max_eos_atoms} for the EOS"
                )
                continue
            if not structure.is_ordered or len(structure) == 0:
                notes[i].append("no bulk modulus or magmoms: empty or disordered structure")
                continue
            cells.extend(strained_cells(structure, self.volume_strains))
            owners.extend([i] * len(self.volume_strains))
        if not cells:
            return
        # Zero steps: each structure is evaluated once (energy, forces, stress, magmoms) in
        # batches of many cells, and returned unchanged.
        relaxer = BatchRelaxer(
            max_steps=0,
            relax_cell=False,
            device=self.device,
            max_atoms_per_batch=self.max_atoms_per_batch,
        )
        results = relaxer.relax(cells)
        k = len(self.volume_strains)
        centre = self.volume_strains.index(0.0)
        for start in range(0, len(results), k):
            i = owners[start]
            group = results[start : start + k]
            errors = [r.error for r in group if r.error is not None]
            if errors:
                notes[i].append(f"no bulk modulus: CHGNet failed on a strained cell: {errors[0]}")
                continue
            n = len(candidates[i].structure)
            unstrained = group[centre]
            metrics[i]["magnetic_moment"] = unstrained.magmom_mean
            fit = fit_birch_murnaghan(
                [c.volume for c in cells[start : start + k]],
                [r.energy_total_ev for r in group],
                n,
            )
            if isinstance(fit, str):
                notes[i].append(f"no bulk modulus: {fit}")
                continue
            metrics[i]["bulk_modulus"] = fit.bulk_modulus_gpa
            metrics[i]["eos_v0_per_atom"] = fit.v0_per_atom
            metrics[i]["eos_fit_rmse_mev"] = fit.rmse_mev
