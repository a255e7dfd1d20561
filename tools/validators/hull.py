"""Formation energy and energy above the convex hull of a reference phase diagram.

Convention (measured, see ``shared/data/README.md`` "Placing CHGNet energies on this hull"):
the formation energy is the CHGNet energy per atom minus the composition-weighted elemental
reference energies, with **no** MP2020 correction. On 120 ``mp_20_biternary`` test rows, CHGNet
static energies placed this way reproduce the DFT formation energies to 0.028 eV/atom MAE
(0.024 on oxides) and the DFT e_above_hull to 0.027 eV/atom MAE; adding pymatgen's
``MaterialsProject2020Compatibility`` makes the formation-energy error 0.159 eV/atom (0.53 on
oxides), because CHGNet, trained on MPtrj, already predicts energies on the corrected scale of
these labels. Re-check this if the model or the reference changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Element

from crystalforge.core.candidate import Verdict
from crystalforge.memory.reference_data import (
    ElementalOnlyReference,
    ReferenceData,
    ReferenceHull,
    decomposition_text,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crystalforge.core.candidate import Candidate


@dataclass(frozen=True, kw_only=True)
class HullValidator:
    """Place relaxed candidates on the reference hull.

    Needs ``candidate.properties["energy_per_atom"]`` (eV/atom, from ``chgnet_relax``).

    Verdict metrics: ``formation_energy`` (eV/atom), ``e_above_hull`` (eV/atom; negative when
    the candidate lies below the reference hull), ``decomposition`` (the competing phases, e.g.
    ``"0.500 Li2O [mp-1960] + 0.500 MnO [mp-19006]"``) and ``reference`` (the hull's name).
    Fails when there is no energy, an element has no reference energy, or
    ``max_e_above_hull_ev`` is set and exceeded.
    """

    reference: ReferenceHull
    max_e_above_hull_ev: float | None = None
    """Largest accepted energy above the hull, eV/atom (``None``: report only)."""
    name: str = "hull"
    exclude_ids: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Candidate id -> reference material ids left out of the hull when placing that candidate.

    For benchmarks on materials that are themselves hull entries: without this, a held-out
    material is compared with its own DFT entry. Used when the reference's ``phase_diagram``
    accepts ``exclude_ids`` (:class:`~crystalforge.memory.reference_data.ReferenceData`); for
    other references the excluded entries are filtered out of the diagram here.
    """

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Compute formation energy and e_above_hull of each candidate.

        Args:
            candidates: Candidates carrying ``energy_per_atom``.

        Returns:
            One verdict per candidate, in order.
        """
        elements = {
            el.symbol
            for candidate in candidates
            for el in candidate.structure.composition.element_composition.elements
            if Element.is_valid_symbol(getattr(el, "symbol", ""))
        }
        potentials = self.reference.chemical_potentials(sorted(elements)) if elements else {}
        return [self._place(candidate, potentials) for candidate in candidates]

    def _diagram(self, symbols: list[str], exclude: Sequence[str]) -> PhaseDiagram:
        if not exclude:
            return self.reference.phase_diagram(symbols)
        if isinstance(self.reference, ReferenceData | ElementalOnlyReference):
            return self.reference.phase_diagram(symbols, exclude_ids=exclude)
        diagram = self.reference.phase_diagram(symbols)
        excluded = set(exclude)
        kept = [
            e
            for e in diagram.all_entries
            if getattr(e.attribute, "material_id", None) not in excluded
        ]
        if len(kept) == len(diagram.all_entries):
            return diagram
        return PhaseDiagram(kept, elements=diagram.elements)

    def _place(self, candidate: Candidate, potentials: dict[str, float]) -> Verdict:
        energy = candidate.properties.get("energy_per_atom")
        if (
            not isinstance(energy, int | float)
            or isinstance(energy, bool)
            or not math.isfinite(energy)
        ):
            return Verdict.failed(
                candidate.id, self.name, "no energy: energy_per_atom missing (run a relaxer first)"
            )
        composition = candidate.structure.composition.element_composition  # no oxidation states
        if len(composition) == 0:
            return Verdict.failed(candidate.id, self.name, "structure has no sites")
        symbols = [getattr(el, "symbol", str(el)) for el in composition.elements]
        missing = [s for s in symbols if s not in potentials]
        if missing:
            return Verdict.failed(
                candidate.id,
                self.name,
                f"no reference energy for {', '.join(missing)} in {self.reference.name}",
            )
        formation = float(energy) - sum(
            composition.get_atomic_fraction(el) * potentials[s]
            for el, s in zip(composition.elements, symbols, strict=True)
        )
        try:
            diagram = self._diagram(symbols, self.exclude_ids.get(candidate.id, ()))
            decomposition, e_hull = diagram.get_decomp_and_e_above_hull(
                PDEntry(composition, formation * composition.num_atoms), allow_negative=True
            )
        except ValueError as exc:
            return Verdict.failed(candidate.id, self.name, f"hull analysis failed: {exc}")
        e_hull = float(e_hull) if e_hull is not None else math.nan
        metrics: dict[str, Any] = {
            "formation_energy": formation,
            "e_above_hull": e_hull,
            "decomposition": decomposition_text(dict(decomposition or {})),
            "reference": self.reference.name,
        }
        limit = self.max_e_above_hull_ev
        if limit is not None and not e_hull <= limit:
            return Verdict.failed(
                candidate.id,
                self.name,
                f"e_above_hull {e_hull:.3f} eV/atom > {limit:g} eV/atom ({self.reference.name})",
                metrics,
            )
        return Verdict(candidate_id=candidate.id, validator=self.name, passed=True, metrics=metrics)
