"""Composition plausibility by SMACT: charge balance and electronegativity ordering."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crystalforge.core.candidate import Verdict
from crystalforge.core.errors import MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Composition

    from crystalforge.core.candidate import Candidate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SmactValidator:
    """SMACT validity, exactly as :func:`smact.screening.smact_validity` defines it.

    A composition is valid when some assignment of one oxidation state per element is charge
    neutral and (with ``use_pauling_test``) puts anions on the more electronegative elements;
    all-metal compositions are valid (SMACT's alloy convention). With SMACT's defaults
    (ICSD-24 oxidation states, ``mixed_valence=False``) spinels with mixed valence such as
    LiMn2O4, Fe3O4 and Mn3O4 are *invalid*; set ``mixed_valence=True`` to accept them.

    Verdict metric: ``smact_valid`` (bool).
    """

    name: str = "smact"
    use_pauling_test: bool = True
    include_alloys: bool = True
    mixed_valence: bool = False
    oxidation_states_set: str | None = None
    """SMACT oxidation-state set name (``None``: SMACT's ICSD-24 default)."""

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Judge each candidate's composition.

        Args:
            candidates: Candidates to check.

        Returns:
            One verdict per candidate, in order.

        Raises:
            MissingExtraError: smact is not installed.
        """
        try:
            from smact.screening import smact_validity
        except ImportError as exc:
            raise MissingExtraError("SMACT composition screening", "smact") from exc
        verdicts = []
        for candidate in candidates:
            composition = candidate.structure.composition
            formula = composition.reduced_formula if len(composition) else "(empty)"
            reason = _unjudgeable(composition)
            valid = False
            if reason is None:
                try:
                    with warnings.catch_warnings():
                        # pymatgen warns about elements without a Pauling electronegativity.
                        warnings.simplefilter("ignore", UserWarning)
                        valid = bool(
                            smact_validity(
                                composition,
                                use_pauling_test=self.use_pauling_test,
                                include_alloys=self.include_alloys,
                                oxidation_states_set=self.oxidation_states_set,
                                mixed_valence=self.mixed_valence,
                            )
                        )
                except (KeyError, ValueError, ZeroDivisionError) as exc:
                    logger.info("SMACT cannot judge %s: %s", formula, exc)
                    reason = f"SMACT cannot judge {formula}: {exc}"
                else:
                    if not valid:
                        reason = (
                            f"{formula} is not SMACT-valid (no charge-neutral assignment of "
                            "oxidation states with anions more electronegative than cations)"
                        )
            verdicts.append(
                Verdict(
                    candidate_id=candidate.id,
                    validator=self.name,
                    passed=valid,
                    reason=reason,
                    metrics={"smact_valid": valid},
                )
            )
        return verdicts


def _unjudgeable(composition: Composition) -> str | None:
    if len(composition) == 0:
        return "empty composition"
    amounts = list(composition.get_el_amt_dict().values())
    if not all(math.isfinite(a) and abs(a - round(a)) < 1e-6 for a in amounts):
        return f"non-integer composition {composition.formula} (partial occupancy)"
    return None
