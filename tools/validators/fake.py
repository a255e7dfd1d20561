"""A fast stand-in for CHGNet relaxation, for tests of the graph and the pipeline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crystalforge.core.candidate import Verdict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crystalforge.core.candidate import Candidate


def _unit_interval(text: str) -> float:
    """A deterministic number in [0, 1) from a string (stable across processes)."""
    digest = hashlib.sha1(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, kw_only=True)
class FakeEnergyValidator:
    """Pretend to relax: return the input structure with a looked-up or made-up energy.

    Named ``chgnet_relax`` and marked expensive, so it drops into a pipeline in place of
    :class:`~crystalforge.tools.validators.chgnet.CHGNetRelaxer` and emits the same metrics.

    Energy per atom (eV/atom): ``energies[reduced formula]`` when given; otherwise
    ``sum_i x_i mu_i + offset`` with ``mu = chemical_potentials`` (0 for missing elements), where
    ``offset`` is a deterministic function of the candidate id in
    [``offset_min_ev``, ``offset_max_ev``), i.e. a formation energy in that range.
    """

    name: str = "chgnet_relax"
    energies: Mapping[str, float] = field(default_factory=dict)
    """Reduced formula -> energy per atom, eV/atom."""
    chemical_potentials: Mapping[str, float] = field(default_factory=dict)
    """Element -> reference energy, eV/atom (e.g. a reference's ``chemical_potentials``)."""
    offset_min_ev: float = -0.5
    offset_max_ev: float = 0.3
    fail_formulas: frozenset[str] = frozenset()
    """Reduced formulas whose "relaxation" fails (to exercise failure paths)."""
    expensive: bool = True
    progress: Callable[[int, int], None] | None = None

    def energy_per_atom(self, candidate: Candidate) -> float:
        """The energy this stand-in assigns to a candidate, eV/atom."""
        composition = candidate.structure.composition
        formula = composition.reduced_formula
        if formula in self.energies:
            return float(self.energies[formula])
        reference = sum(
            composition.get_atomic_fraction(el) * self.chemical_potentials.get(str(el), 0.0)
            for el in composition.elements
        )
        span = self.offset_max_ev - self.offset_min_ev
        return reference + self.offset_min_ev + span * _unit_interval(candidate.id)

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Assign each candidate an energy.

        Args:
            candidates: Candidates to "relax".

        Returns:
            One verdict per candidate, in order; the structure is returned unchanged.
        """
        verdicts = []
        for done, candidate in enumerate(candidates, start=1):
            structure = candidate.structure
            if len(structure) == 0 or structure.composition.reduced_formula in self.fail_formulas:
                verdicts.append(
                    Verdict(
                        candidate_id=candidate.id,
                        validator=self.name,
                        passed=False,
                        reason="fake relaxation failed",
                    )
                )
            else:
                energy = self.energy_per_atom(candidate)
                verdicts.append(
                    Verdict(
                        candidate_id=candidate.id,
                        validator=self.name,
                        passed=True,
                        metrics={
                            "energy_per_atom": energy,
                            "energy_total_ev": energy * len(structure),
                            "converged": True,
                            "steps": 0,
                            "max_force_ev_per_a": 0.0,
                            "magmom_mean": 0.0,
                            "volume_change": 0.0,
                            "relax_seconds": 0.0,
                        },
                        structure=structure,
                    )
                )
            if self.progress is not None:
                self.progress(done, len(candidates))
        return verdicts
