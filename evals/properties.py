"""``crystalforge eval properties``: measured error of the property stage.

Band gap: our composition model (:mod:`crystalforge.tools.validators.band_gap`, the one the
``properties`` stage uses) on the held-out ``mp_20_biternary/test`` rows (never trained or tuned
on), against the DFT (GGA/GGA+U) ``band_gap`` column: MAE overall, on metals (gap 0) and on
gapped materials, RMSE and metal-vs-gapped accuracy, next to two baselines (always 0 eV, and
the training mean). ``--quick``: a seeded 1,000-row subset.

Bulk modulus and magnetic moment: the offline data has no labels for either, so the suite
relaxes a few hand-built textbook solids with CHGNet, runs the ``properties`` stage on them
and compares the equation-of-state bulk modulus with room-temperature experimental values
(listed in :data:`SOLIDS`; a sanity check, not a benchmark). ``--quick``: three solids.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.errors import DataError
from crystalforge.evals.base import Scalar, SuiteOptions, SuiteResult

if TYPE_CHECKING:
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

SUITE = "properties"
N_QUICK_ROWS = 1000

COLUMNS = (
    "method",
    "n",
    "mae_ev",
    "mae_metal_ev",
    "mae_gapped_ev",
    "rmse_ev",
    "class_accuracy",
)

SOLIDS: tuple[tuple[str, str, float, float], ...] = (
    # (name, builder key, lattice constant Å (experiment), experimental bulk modulus GPa)
    ("Si (diamond)", "diamond:Si", 5.431, 98.0),
    ("NaCl (rocksalt)", "rocksalt:Na:Cl", 5.640, 24.0),
    ("Cu (fcc)", "fcc:Cu", 3.615, 137.0),
    ("C (diamond)", "diamond:C", 3.567, 443.0),
    ("GaAs (zincblende)", "zincblende:Ga:As", 5.653, 75.5),
    ("MgO (rocksalt)", "rocksalt:Mg:O", 4.212, 160.0),
    ("LiF (rocksalt)", "rocksalt:Li:F", 4.026, 67.0),
    ("Al (fcc)", "fcc:Al", 4.050, 76.0),
    ("Fe (bcc)", "bcc:Fe", 2.866, 170.0),
    ("W (bcc)", "bcc:W", 3.165, 310.0),
)
"""Hand-built solids and experimental bulk moduli (room temperature; Kittel, *Introduction to
Solid State Physics*, 8th ed., table 3 of ch. 3, and standard handbook values; ±5%)."""

N_QUICK_SOLIDS = 3


def build_solid(key: str, a: float) -> Structure:
    """Primitive cell of a textbook structure, ``key`` like ``"rocksalt:Na:Cl"``, ``a`` in Å.

    Raises:
        ValueError: unknown structure type in ``key``.
    """
    from pymatgen.core import Lattice, Structure

    kind, *species = key.split(":")
    h = a / 2
    fcc = Lattice([[0, h, h], [h, 0, h], [h, h, 0]])
    if kind == "fcc":
        return Structure(fcc, species, [[0, 0, 0]])
    if kind == "bcc":
        return Structure(Lattice([[-h, h, h], [h, -h, h], [h, h, -h]]), species, [[0, 0, 0]])
    if kind == "rocksalt":
        return Structure(fcc, species, [[0, 0, 0], [0.5, 0.5, 0.5]])
    if kind == "diamond":
        return Structure(fcc, species * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    if kind == "zincblende":
        return Structure(fcc, species, [[0, 0, 0], [0.25, 0.25, 0.25]])
    raise ValueError(f"unknown structure type {kind!r} in {key!r}; expected fcc, bcc, ...")


def band_gap_rows(options: SuiteOptions) -> tuple[list[dict[str, Scalar]], dict[str, Any]]:
    """Band-gap table rows (ours, then the two baselines) and metadata; see the module docstring.

    Raises:
        DataError: no offline data.
    """
    from crystalforge.tools.validators.band_gap import featurize, load_band_gap_model
    from crystalforge.tools.validators.train_band_gap import gap_metrics, test_rows, training_rows

    if options.data_dir is None:
        raise DataError("the properties suite needs the offline data (mp_20_biternary/test)")
    held = test_rows(options.data_dir)
    index = np.arange(len(held.gaps))
    if options.quick or options.limit is not None:
        n = min(options.limit or N_QUICK_ROWS, len(index))
        index = np.sort(np.random.default_rng(options.seed).choice(index, n, replace=False))
    truth = held.gaps[index]
    started = time.perf_counter()
    predicted, _ = load_band_gap_model().predict_features(
        featurize([held.compositions[i] for i in index])
    )
    seconds = time.perf_counter() - started
    train_mean = float(training_rows(options.data_dir).gaps.mean())
    rows: list[dict[str, Scalar]] = []
    for method, values in (
        ("band gap: ours (composition MLP ensemble)", predicted),
        ("band gap: always 0 eV (majority class)", np.zeros_like(truth)),
        (f"band gap: training mean ({train_mean:.2f} eV)", np.full_like(truth, train_mean)),
    ):
        m = gap_metrics(values, truth)
        rows.append(
            {
                "method": method,
                "n": m["n"],
                "mae_ev": round(m["mae"], 4),
                "mae_metal_ev": round(m["mae_metal"], 4),
                "mae_gapped_ev": round(m["mae_gapped"], 4),
                "rmse_ev": round(m["rmse"], 4),
                "class_accuracy": round(m["class_accuracy"], 4),
            }
        )
    meta = {
        "band_gap_rows": len(index),
        "band_gap_gapped_rows": int((truth > 0).sum()),
        "band_gap_seconds": seconds,
        "band_gap_ids": [held.ids[i] for i in index] if len(index) <= N_QUICK_ROWS else "all",
    }
    return rows, meta


def _bulk_moduli(options: SuiteOptions) -> tuple[list[str], list[dict[str, Any]]]:
    from crystalforge.core.candidate import Candidate
    from crystalforge.tools.validators.chgnet import CHGNetRelaxer
    from crystalforge.tools.validators.properties import PropertyValidator

    solids = SOLIDS[:N_QUICK_SOLIDS] if options.quick else SOLIDS
    candidates = [
        Candidate.create(build_solid(key, a), generator="hand-built") for _, key, a, _ in solids
    ]
    started = time.perf_counter()
    relaxed = CHGNetRelaxer(device=options.device).validate(candidates)
    candidates = [
        c.evolve(structure=v.structure, properties=v.metrics)
        for c, v in zip(candidates, relaxed, strict=True)
    ]
    stage = PropertyValidator(device=options.device)
    verdicts = stage.validate(candidates)
    seconds = time.perf_counter() - started
    notes, items = [], []
    errors = []
    for (name, _, _, expt), verdict in zip(solids, verdicts, strict=True):
        m = verdict.metrics
        b = m.get("bulk_modulus")
        item = {
            "solid": name,
            "bulk_modulus_gpa": b,
            "experiment_gpa": expt,
            "magnetic_moment": m.get("magnetic_moment"),
            "band_gap": m.get("band_gap"),
            "note": m.get("properties_note"),
        }
        items.append(item)
        if isinstance(b, float):
            errors.append(abs(b - expt) / expt)
            notes.append(
                f"bulk modulus {name}: CHGNet EOS {b:.0f} GPa vs experiment {expt:.0f} GPa "
                f"({100 * (b - expt) / expt:+.0f}%); magmom {m.get('magnetic_moment', 0):.2f} "
                "μB/atom"
            )
        else:
            notes.append(f"bulk modulus {name}: not computed ({m.get('properties_note')})")
    if errors:
        notes.append(
            f"bulk modulus: mean |relative error| {100 * float(np.mean(errors)):.0f}% over "
            f"{len(errors)} hand-built solids ({seconds:.0f} s incl. relaxation; EOS part "
            f"{stage.timings.get('eos', 0.0):.1f} s). No bulk-modulus or magnetic-moment labels "
            "exist in the offline data."
        )
    return notes, items


def run(options: SuiteOptions) -> SuiteResult:
    """Run the suite.

    Args:
        options: ``quick`` (1,000 band-gap rows, three solids), ``limit`` (band-gap rows),
            ``seed`` (row subset), ``device`` and ``data_dir`` (required).

    Returns:
        Band-gap rows in the table; bulk-modulus comparisons in the notes and metadata.

    Raises:
        DataError: no offline data.
    """
    rows, meta = band_gap_rows(options)
    notes = [
        "Band gap: held-out mp_20_biternary/test rows, DFT (GGA/GGA+U) labels; the model sees "
        "the composition only (polymorphs share a prediction). Published MEGNet: 0.31 eV MAE "
        "on gapped MP materials (structure model; different split)."
    ]
    bulk_notes, solids = _bulk_moduli(options)
    return SuiteResult(
        suite=SUITE,
        title="Property stage: band-gap error on held-out rows, CHGNet EOS bulk modulus",
        columns=COLUMNS,
        rows=rows,
        notes=notes + bulk_notes,
        metadata={**meta, "solids": solids, "quick": options.quick, "seed": options.seed},
    )
