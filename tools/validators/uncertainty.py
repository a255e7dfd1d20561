"""Model disagreement as an uncertainty signal: a second CHGNet version's opinion of the hull.

The ``chgnet`` package bundles two MPtrj-trained versions, 0.3.0 (the relaxer's model) and the
older 0.2.0. Where they disagree about a relaxed structure's energy above the hull, the
prediction is less trustworthy; where they disagree about "stable or not" the verdict is a
coin toss that only DFT can settle. A static 0.2.0 energy on the 0.3.0-relaxed structure is
cheap (one forward pass, no relaxation), so this stage runs on every relaxed candidate and never
fails one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.candidate import Verdict
from crystalforge.core.errors import MissingExtraError
from crystalforge.tools.validators.chgnet import CHGNET_ERRORS, DeviceChoice, resolve_device
from crystalforge.tools.validators.hull import HullValidator
from crystalforge.tools.validators.sanity import malformed_reason

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.reference_data import ReferenceHull

logger = logging.getLogger(__name__)

ALT_CHGNET_MODEL = "0.2.0"
"""The second bundled CHGNet version used for the disagreement (``CHGNet.load(model_name=)``)."""

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_chgnet_version(model_name: str = ALT_CHGNET_MODEL, device: DeviceChoice = "auto") -> Any:
    """A bundled CHGNet version on ``device``, loaded once per process (nothing is downloaded).

    Args:
        model_name: ``"0.3.0"``, ``"0.2.0"`` or ``"r2scan"`` (the versions shipped in
            ``chgnet/pretrained``).
        device: Torch device choice.

    Returns:
        A ``chgnet.model.CHGNet`` in eval mode.

    Raises:
        MissingExtraError: chgnet (or torch) is not installed.
        ValueError: an unknown model name.
    """
    name = resolve_device(device)
    with _MODELS_LOCK:
        model = _MODELS.get((model_name, name))
        if model is None:
            try:
                from chgnet.model.model import CHGNet
            except ImportError as exc:
                raise MissingExtraError("CHGNet model disagreement", "chgnet") from exc
            # CHGNet prints its parameter count even with verbose=False.
            with contextlib.redirect_stdout(io.StringIO()):
                model = CHGNet.load(model_name=model_name, use_device=name, verbose=False)
            model.eval()
            _MODELS[(model_name, name)] = model
    return model


def static_energies(
    structures: Sequence[Structure],
    *,
    model_name: str = ALT_CHGNET_MODEL,
    device: DeviceChoice = "auto",
) -> list[float]:
    """CHGNet energies per atom (eV/atom) of fixed structures, one forward pass each.

    Structures CHGNet cannot handle get ``nan`` instead of raising.

    Args:
        structures: Ordered, finite structures.
        model_name: Bundled CHGNet version.
        device: Torch device choice.

    Returns:
        One energy per structure, in order.
    """
    model = load_chgnet_version(model_name, device) if structures else None
    energies = []
    for structure in structures:
        if malformed_reason(structure) is not None or not structure.is_ordered:
            energies.append(math.nan)
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prediction: Any = model.predict_structure(structure, task="e")  # type: ignore[union-attr]
            energies.append(float(np.asarray(prediction["e"]).reshape(-1)[0]))
        except CHGNET_ERRORS as exc:
            logger.info("CHGNet %s failed on %s: %s", model_name, structure.formula, exc)
            energies.append(math.nan)
    return energies


@dataclass(frozen=True, kw_only=True)
class ModelDisagreementValidator:
    """Compare the hull verdict with a second CHGNet version's; never fails a candidate.

    Run after ``hull``: needs ``candidate.properties["e_above_hull"]`` (from the relaxer's model)
    and the relaxed structure. The alternative energy is a static prediction of
    :data:`ALT_CHGNET_MODEL` on that structure, placed on the same reference hull with the same
    convention as :class:`~crystalforge.tools.validators.hull.HullValidator`.

    Verdict metrics: ``e_above_hull_alt`` (eV/atom), ``e_hull_disagreement`` (eV/atom,
    absolute difference) and ``verdict_flips`` (whether "E_hull <= threshold_ev" differs between
    the two versions); ``None`` when the alternative energy cannot be computed.
    """

    reference: ReferenceHull
    name: str = "uncertainty"
    threshold_ev: float = 0.1
    """Stability threshold of the verdict compared, eV/atom above the hull."""
    model_name: str = ALT_CHGNET_MODEL
    device: DeviceChoice = "auto"
    energy_fn: Callable[[Sequence[Structure]], list[float]] | None = field(
        default=None, compare=False
    )
    """Replacement for the alternative model (eV/atom per structure), e.g. in tests."""

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Place each candidate on the hull with the alternative model.

        Args:
            candidates: Relaxed candidates carrying ``e_above_hull``.

        Returns:
            One (passing) verdict per candidate, in order.

        Raises:
            MissingExtraError: chgnet is not installed (only without ``energy_fn``).
        """
        if not candidates:
            return []
        structures = [c.structure for c in candidates]
        if self.energy_fn is not None:
            energies = list(self.energy_fn(structures))
        else:
            energies = static_energies(structures, model_name=self.model_name, device=self.device)
        alt = [
            c.evolve(properties={"energy_per_atom": e})
            for c, e in zip(candidates, energies, strict=True)
        ]
        placed = HullValidator(reference=self.reference, name=self.name).validate(alt)
        verdicts = []
        for candidate, verdict in zip(candidates, placed, strict=True):
            primary = _number(candidate.properties.get("e_above_hull"))
            secondary = _number(verdict.metrics.get("e_above_hull")) if verdict.passed else None
            metrics: dict[str, float | bool | None] = {
                "e_above_hull_alt": secondary,
                "e_hull_disagreement": None,
                "verdict_flips": None,
            }
            if primary is not None and secondary is not None:
                metrics["e_hull_disagreement"] = abs(primary - secondary)
                metrics["verdict_flips"] = verdict_flips(primary, secondary, self.threshold_ev)
            verdicts.append(
                Verdict(
                    candidate_id=candidate.id, validator=self.name, passed=True, metrics=metrics
                )
            )
        return verdicts


def verdict_flips(e_hull: float, e_hull_alt: float, threshold_ev: float = 0.1) -> bool:
    """Whether "E_hull <= threshold" differs between two predictions (eV/atom)."""
    return (e_hull <= threshold_ev) != (e_hull_alt <= threshold_ev)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
