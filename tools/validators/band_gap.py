"""Band gap from composition: Magpie-like element statistics and a small two-head MLP of our own.

The MEGNet band-gap model in the offline data loads but mispredicts with the installable matgl
(``shared/data/README.md``), so crystalforge ships its own predictor, trained by
:mod:`crystalforge.tools.validators.train_band_gap` on DFT (GGA/GGA+U) gaps of Materials Project
materials, with the held-out ``mp_20_biternary/test`` rows never seen (model card:
``docs/models/band-gap.md``).

Features (:func:`featurize`, ``(n, FEATURE_COUNT)``): for each of :data:`ELEMENT_PROPERTIES`
(pymatgen ``Element`` data plus valence-shell electron counts), the fraction-weighted mean, mean
absolute deviation, minimum, maximum, range and the value of the majority element; the
fractional composition vector over Z = 1..94; stoichiometry norms (p = 0, 2, 3, 5, 7, 10);
the fraction of valence electrons in s, p, d and f shells; and the largest and mean ionic
character (Pauling, ``1 - exp(-ΔX²/4)``). Features depend on the composition only, so
polymorphs share a prediction.

Model: an ensemble of MLPs with two heads, P(gap > 0) and the gap of gapped materials (eV);
the prediction is the regression head when the ensemble-mean probability exceeds a threshold
chosen on our own validation split, else 0 eV. Inference is numpy only (no torch needed); the
weights are ``band_gap_mlp.npz`` next to this module.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Composition

logger = logging.getLogger(__name__)

CHECKPOINT = Path(__file__).with_name("band_gap_mlp.npz")
"""The shipped weights (written by ``train_band_gap``)."""

MAX_Z = 94
"""Largest atomic number with a fraction feature (Pu); heavier elements make the input invalid."""

ELEMENT_PROPERTIES = (
    "Z",
    "row",
    "group",
    "atomic_mass",
    "X",
    "atomic_radius",
    "average_ionic_radius",
    "mendeleev_no",
    "melting_point",
    "molar_volume",
    "electron_affinity",
    "ionization_energy",
    "log_density_of_solid",
    "van_der_waals_radius",
    "max_oxidation_state",
    "min_oxidation_state",
    "is_metal",
    "n_s_valence",
    "n_p_valence",
    "n_d_valence",
    "n_f_valence",
    "n_valence",
    "n_s_unfilled",
    "n_p_unfilled",
    "n_d_unfilled",
    "n_f_unfilled",
    "n_unfilled",
)
"""Per-element properties whose composition statistics are features."""

STATISTICS = ("mean", "avg_dev", "min", "max", "range", "mode")
STOICH_NORMS = (0, 2, 3, 5, 7, 10)
FEATURE_COUNT = len(ELEMENT_PROPERTIES) * len(STATISTICS) + MAX_Z + len(STOICH_NORMS) + 4 + 2
"""Width of a feature row."""

_CAPACITY = {"s": 2, "p": 6, "d": 10, "f": 14}


def _valence_counts(symbol: str) -> dict[str, float]:
    """Valence s/p (outermost shell), d (shell n-1) and f (shell n-2) electrons, Magpie-style."""
    from pymatgen.core import Element

    shells = Element(symbol).full_electronic_structure
    n_max = max(n for n, _, _ in shells)
    counts = {"s": 0.0, "p": 0.0, "d": 0.0, "f": 0.0}
    for n, orbital, electrons in shells:
        shell = {"s": n_max, "p": n_max, "d": n_max - 1, "f": n_max - 2}[orbital]
        if n == shell:
            counts[orbital] += electrons
    return counts


def _element_value(symbol: str, prop: str) -> float:
    """One element property as a float (NaN when pymatgen has none)."""
    from pymatgen.core import Element

    element = Element(symbol)
    if prop.startswith("n_"):
        counts = _valence_counts(symbol)
        kind = prop[2]
        if prop == "n_valence":
            return sum(counts.values())
        if prop == "n_unfilled":
            return sum(_CAPACITY[k] - c for k, c in counts.items() if c > 0)
        if prop.endswith("_unfilled"):
            c = counts[kind]
            return float(_CAPACITY[kind] - c) if c > 0 else 0.0
        return counts[kind]
    if prop == "log_density_of_solid":
        value = element.density_of_solid
        return math.log10(float(value)) if value else math.nan
    if prop == "is_metal":
        return float(element.is_metal)
    try:
        value = getattr(element, prop)
    except (AttributeError, ValueError, KeyError):
        return math.nan
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


@functools.cache
def element_table() -> np.ndarray:
    """Element properties, ``(MAX_Z + 1, len(ELEMENT_PROPERTIES))``; row Z, missing -> column mean.

    Row 0 is unused (zeros).
    """
    from pymatgen.core import Element

    table = np.full((MAX_Z + 1, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        # pymatgen warns for every missing value (no density for gases, no X for noble gases).
        warnings.simplefilter("ignore", UserWarning)
        for z in range(1, MAX_Z + 1):
            symbol = Element.from_Z(z).symbol
            table[z] = [_element_value(symbol, prop) for prop in ELEMENT_PROPERTIES]
    means = np.nanmean(table[1:], axis=0)
    rows, cols = np.where(np.isnan(table))
    table[rows, cols] = means[cols]
    table[0] = 0.0
    return table


def composition_arrays(composition: Composition) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and atomic fractions of a composition.

    Raises:
        ValueError: empty composition, a non-element species, or Z > :data:`MAX_Z`.
    """
    amounts = composition.element_composition.get_el_amt_dict()
    if not amounts:
        raise ValueError("empty composition: nothing to featurize")
    from pymatgen.core import Element

    zs = []
    for symbol in amounts:
        try:
            z = Element(symbol).Z
        except ValueError as exc:
            raise ValueError(f"unknown element {symbol!r} in {composition}") from exc
        if z > MAX_Z:
            raise ValueError(f"element {symbol} (Z={z}) is beyond Z={MAX_Z}, outside the model")
        zs.append(z)
    fractions = np.array(list(amounts.values()), dtype=float)
    return np.array(zs, dtype=int), fractions / fractions.sum()


def featurize_one(composition: Composition) -> np.ndarray:
    """Feature row of one composition, ``(FEATURE_COUNT,)``.

    Raises:
        ValueError: see :func:`composition_arrays`.
    """
    zs, fr = composition_arrays(composition)
    values = element_table()[zs]  # (k, P)
    mean = fr @ values
    avg_dev = fr @ np.abs(values - mean)
    vmin, vmax = values.min(axis=0), values.max(axis=0)
    mode = values[int(np.argmax(fr))]
    stats = np.concatenate([mean, avg_dev, vmin, vmax, vmax - vmin, mode])
    fractions = np.zeros(MAX_Z)
    fractions[zs - 1] = fr
    norms = [float(len(zs))] + [float((fr**p).sum() ** (1.0 / p)) for p in STOICH_NORMS[1:]]
    idx = {name: i for i, name in enumerate(ELEMENT_PROPERTIES)}
    total = max(mean[idx["n_valence"]], 1e-9)
    shell_fractions = [mean[idx[f"n_{k}_valence"]] / total for k in "spdf"]
    chi = values[:, idx["X"]]
    ionic = 1.0 - np.exp(-0.25 * (chi[:, None] - chi[None, :]) ** 2)
    pair = np.outer(fr, fr)
    ionic_features = [float(ionic.max()), float((pair * ionic).sum())]
    return np.concatenate([stats, fractions, norms, shell_fractions, ionic_features])


def featurize(compositions: Sequence[Composition]) -> np.ndarray:
    """Feature matrix, ``(len(compositions), FEATURE_COUNT)``.

    Raises:
        ValueError: a composition cannot be featurized (named in the message).
    """
    if not compositions:
        return np.zeros((0, FEATURE_COUNT))
    return np.stack([featurize_one(c) for c in compositions])


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class BandGapModel:
    """The trained ensemble (numpy inference).

    Attributes:
        mean: Feature standardisation mean, ``(FEATURE_COUNT,)``.
        scale: Feature standardisation scale, ``(FEATURE_COUNT,)``.
        layers: Per member, the (weight ``(in, out)``, bias ``(out,)``) of each hidden layer.
        heads: Per member, the output layer (weight ``(hidden, 2)``, bias ``(2,)``): column 0
            is the logit of P(gap > 0), column 1 the gap of gapped materials, eV (softplus).
        threshold: Probability above which the regression head is reported.
    """

    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]
    heads: tuple[tuple[np.ndarray, np.ndarray], ...]
    threshold: float

    @classmethod
    def load(cls, path: Path = CHECKPOINT) -> BandGapModel:
        """Read a checkpoint written by :meth:`save`.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
            ValueError: the checkpoint's feature width is not :data:`FEATURE_COUNT`.
        """
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        n_members = int(arrays["n_members"])
        n_hidden = int(arrays["n_hidden"])
        layers = tuple(
            tuple((arrays[f"m{m}_w{i}"], arrays[f"m{m}_b{i}"]) for i in range(n_hidden))
            for m in range(n_members)
        )
        heads = tuple((arrays[f"m{m}_wh"], arrays[f"m{m}_bh"]) for m in range(n_members))
        if arrays["mean"].shape != (FEATURE_COUNT,):
            raise ValueError(
                f"checkpoint {path} has {arrays['mean'].shape[0]} features, "
                f"expected {FEATURE_COUNT} (retrain with train_band_gap)"
            )
        return cls(
            mean=arrays["mean"],
            scale=arrays["scale"],
            layers=layers,
            heads=heads,
            threshold=float(arrays["threshold"]),
        )

    def save(self, path: Path) -> None:
        """Write the weights as float32 ``.npz``."""
        arrays: dict[str, np.ndarray] = {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "threshold": np.array(self.threshold),
            "n_members": np.array(len(self.layers)),
            "n_hidden": np.array(len(self.layers[0])),
        }
        for m, (member, head) in enumerate(zip(self.layers, self.heads, strict=True)):
            for i, (w, b) in enumerate(member):
                arrays[f"m{m}_w{i}"] = w.astype(np.float32)
                arrays[f"m{m}_b{i}"] = b.astype(np.float32)
            arrays[f"m{m}_wh"] = head[0].astype(np.float32)
            arrays[f"m{m}_bh"] = head[1].astype(np.float32)
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Band gap (eV) and P(gap > 0) for feature rows ``(n, FEATURE_COUNT)``; each ``(n,)``."""
        x = (features - self.mean) / self.scale
        probs, gaps = [], []
        for member, (wh, bh) in zip(self.layers, self.heads, strict=True):
            h = x
            for w, b in member:
                h = _silu(h @ w + b)
            out = h @ wh + bh
            probs.append(1.0 / (1.0 + np.exp(-out[:, 0])))
            gaps.append(np.logaddexp(0.0, out[:, 1]))  # softplus
        p = np.mean(probs, axis=0)
        gap = np.mean(gaps, axis=0)
        return np.where(p > self.threshold, gap, 0.0), p

    def predict(self, compositions: Sequence[Composition]) -> tuple[np.ndarray, np.ndarray]:
        """Band gap (eV) and P(gap > 0) per composition, each ``(n,)``.

        Raises:
            ValueError: a composition cannot be featurized.
        """
        return self.predict_features(featurize(compositions))


@functools.cache
def load_band_gap_model() -> BandGapModel:
    """The shipped model, loaded once per process."""
    return BandGapModel.load(CHECKPOINT)
