"""Bad input through the real default pipeline: every structure gets a verdict, fast.

One batch mixes a good rocksalt cell with overlapping atoms, a 1,000-atom cell, a slab with
30 Å of vacuum, NaN coordinates, an unknown (dummy) species and a disordered site. The bad ones
must be stopped by the cheap sanity stage with a reason naming the problem; only the good one
reaches the (real) CHGNet relaxer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, DummySpecies, Element, Lattice, Structure

from crystalforge.core.candidate import Candidate
from crystalforge.tools.validators.pipeline import default_pipeline

pytest.importorskip("chgnet")

A = 5.64
"""Conventional rocksalt NaCl lattice constant, Å."""


class NaClReference:
    """Na and Cl at 0 eV, NaCl at -2.0 eV/atom; chemical potentials Na -1.3, Cl -1.8 eV/atom."""

    name = "test Na-Cl hull (1 entry)"

    def chemical_potentials(self, elements: Any) -> dict[str, float]:
        mu = {"Na": -1.3, "Cl": -1.8}
        return {el: mu[el] for el in elements if el in mu}

    def phase_diagram(self, chemsys: Any) -> PhaseDiagram:
        system = sorted(set(chemsys))
        entries = [PDEntry(Composition(el), 0.0) for el in system]
        if set(system) >= {"Na", "Cl"}:
            entries.append(PDEntry(Composition("NaCl"), -4.0))
        return PhaseDiagram(entries, elements=[Element(e) for e in system])

    def known_phases(self, chemsys: Any, *, max_e_above_hull: Any = 0.1, exact: bool = False):
        return []

    def reference_structures(self, formula: str) -> list[Structure]:
        return []


def conventional_nacl() -> Structure:
    """The 8-atom conventional rocksalt cell (built directly: ``from_spacegroup`` takes ~3 s)."""
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    shifted = [[(x + 0.5) % 1.0, y, z] for x, y, z in fcc]
    return Structure(Lattice.cubic(A), ["Na"] * 4 + ["Cl"] * 4, fcc + shifted)


def good() -> Structure:
    h = 0.98 * A / 2  # primitive rocksalt, 2% compressed
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Na", "Cl"], [[0] * 3, [0.5] * 3])


def overlapping() -> Structure:
    return Structure(Lattice.cubic(A), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])


def huge() -> Structure:
    return conventional_nacl() * (5, 5, 5)  # 1,000 atoms


def slab(vacuum: float = 30.0) -> Structure:
    bulk = conventional_nacl() * (1, 1, 3)  # 24 atoms, 16.9 Å thick
    thickness = bulk.lattice.c
    lattice = Lattice.orthorhombic(A, A, thickness + vacuum)
    cart = bulk.cart_coords
    return Structure(lattice, bulk.species, cart, coords_are_cartesian=True)


def nan_coordinates() -> Structure:
    return Structure(Lattice.cubic(A), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]])


def unknown_species() -> Structure:
    return Structure(Lattice.cubic(A), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def disordered() -> Structure:
    return Structure(Lattice.cubic(A), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


BAD = {
    "overlapping": (overlapping, "min distance"),
    "huge": (huge, "1000 atoms > 200"),
    "slab": (slab, "vacuum layer"),
    "nan": (nan_coordinates, "non-finite"),
    "unknown": (unknown_species, "unknown species X"),
    "disordered": (disordered, "partial occupancy"),
}


def test_slab_builder_has_the_intended_vacuum() -> None:
    structure = slab()
    assert len(structure) == 24
    assert structure.lattice.c == pytest.approx(3 * A + 30.0)
    assert 4.0 < structure.volume / len(structure) < 150.0  # not caught by the volume check


def test_bad_input_gets_verdicts_in_one_fast_run() -> None:
    candidates = {"good": Candidate.create(good(), generator="test")}
    for label, (build, _) in BAD.items():
        candidates[label] = Candidate.create(build(), generator="test")
    pipeline = default_pipeline(NaClReference(), device="cpu")  # the real CHGNet relaxer
    assert "uncertainty" in [stage.name for stage in pipeline.stages]
    started = time.perf_counter()
    results = pipeline.run(list(candidates.values()))
    seconds = time.perf_counter() - started

    assert len(results) == len(candidates)
    by_label = dict(zip(candidates, results, strict=True))
    good_result = by_label["good"]
    assert good_result.passed, good_result.reason
    assert "chgnet_relax" in [v.validator for v in good_result.verdicts]
    props = good_result.candidate.properties
    assert props["converged"] is True
    assert isinstance(props["e_above_hull"], float)
    assert isinstance(props["e_hull_disagreement"], float)
    for label, (_, expected) in BAD.items():
        result = by_label[label]
        assert not result.passed, label
        # Stopped by the first, cheap stage: it never reached CHGNet.
        assert result.failed_stage == "sanity", (label, result.failed_stage, result.reason)
        assert [v.validator for v in result.verdicts] == ["sanity"]
        assert result.reason is not None
        assert expected in result.reason, (label, result.reason)
    # One 2-atom relaxation; ~50 s measured on the busy 2-core machine (load 7), mostly CHGNet.
    assert seconds < 300
