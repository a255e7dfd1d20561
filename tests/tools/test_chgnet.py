"""The real CHGNet relaxer (bundled weights, CPU), and CHGNet elemental references."""

from __future__ import annotations

import json
import time

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet", reason="CHGNet relaxation needs the 'chgnet' extra")

from crystalforge.core.candidate import Candidate
from crystalforge.memory.reference_data import ElementalOnlyReference
from crystalforge.tools.validators.chgnet import CHGNetRelaxer, load_chgnet
from crystalforge.tools.validators.hull import HullValidator
from tests.contracts.validator import make_validator_contract_tests

pytestmark = pytest.mark.chgnet


def rocksalt(cation: str, anion: str, a: float) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [cation, anion], [[0, 0, 0], [0.5] * 3]
    )


def make(structure: Structure, seed: int = 0) -> Candidate:
    return Candidate.create(structure, generator="test", seed=seed)


@pytest.fixture(scope="module")
def chgnet_relaxer() -> CHGNetRelaxer:
    load_chgnet("cpu")
    return CHGNetRelaxer(device="cpu", fmax_ev_per_a=0.1, max_steps=300)


TestCHGNetContract = make_validator_contract_tests("chgnet_relaxer")


# Starting 4-7% off the DFT (PBE, Materials Project) lattice constants, Å.
CASES = [("Mg", "O", 4.45, 4.25), ("Li", "F", 3.85, 4.07), ("Na", "Cl", 5.40, 5.69)]


def test_rocksalts_relax_to_sane_cells_and_energies(chgnet_relaxer: CHGNetRelaxer) -> None:
    candidates = [make(rocksalt(c, a, start)) for c, a, start, _ in CASES]
    progress: list[tuple[int, int]] = []
    relaxer = CHGNetRelaxer(device="cpu", progress=lambda d, t: progress.append((d, t)))
    verdicts = relaxer.validate(candidates)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    for (cation, _, start, expected), verdict in zip(CASES, verdicts, strict=True):
        assert verdict.passed, verdict.reason
        metrics = verdict.metrics
        assert metrics["converged"] is True
        assert isinstance(metrics["steps"], int)
        assert 0 < metrics["steps"] < 300
        assert metrics["max_force_ev_per_a"] <= 0.1  # type: ignore[operator]
        energy = metrics["energy_per_atom"]
        assert isinstance(energy, float)
        assert -8.0 < energy < -2.0
        assert metrics["energy_total_ev"] == pytest.approx(2 * energy)
        assert 0 <= metrics["magmom_mean"] < 0.1  # type: ignore[operator]
        relaxed = verdict.structure
        assert relaxed is not None
        a = relaxed.lattice.a * 2**0.5  # conventional lattice constant from the primitive cell
        assert a == pytest.approx(expected, rel=0.03), cation
        assert metrics["volume_change"] == pytest.approx((a / start) ** 3 - 1, abs=0.02)


def test_not_converged_within_max_steps_still_passes() -> None:
    candidate = make(rocksalt("Mg", "O", 4.8))
    (verdict,) = CHGNetRelaxer(device="cpu", max_steps=1).validate([candidate])
    assert verdict.passed
    assert verdict.reason is None
    assert verdict.metrics["converged"] is False
    assert verdict.metrics["steps"] == 1


def test_failures_are_verdicts(chgnet_relaxer: CHGNetRelaxer) -> None:
    americium = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])  # beyond CHGNet's Z <= 94
    isolated = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    verdicts = chgnet_relaxer.validate([make(americium), make(isolated)])
    assert [v.passed for v in verdicts] == [False, False]
    assert str(verdicts[0].reason).startswith("CHGNet failed: RuntimeError")
    assert verdicts[1].reason == "2 isolated atom(s) with no neighbour within 6 Å"


def test_elemental_only_reference_and_hull(tmp_path) -> None:
    cache = tmp_path / "refs.json"
    reference = ElementalOnlyReference(cache_path=cache, device="cpu")
    started = time.perf_counter()
    mu = reference.chemical_potentials(["Mg", "O"])
    first = time.perf_counter() - started
    # MP (PBE) references: Mg -1.60, O -4.95 eV/atom; CHGNet lands close to them.
    assert mu["Mg"] == pytest.approx(-1.6, abs=0.15)
    assert mu["O"] == pytest.approx(-4.95, abs=0.3)
    data = json.loads(cache.read_text())
    assert data["model"] == "chgnet-0.3.0"
    assert data["elements"]["O"]["prototype"] == "diatomic"
    assert data["elements"]["Mg"]["prototype"] in {"hcp", "fcc", "bcc"}
    started = time.perf_counter()
    assert ElementalOnlyReference(cache_path=cache).chemical_potentials(["O", "Mg"]) == mu
    assert time.perf_counter() - started < first

    candidate = make(rocksalt("Mg", "O", 4.25)).evolve(properties={"energy_per_atom": -6.0})
    (verdict,) = HullValidator(reference=reference).validate([candidate])
    assert verdict.passed
    formation = -6.0 - (mu["Mg"] + mu["O"]) / 2
    assert verdict.metrics["formation_energy"] == pytest.approx(formation)
    assert verdict.metrics["e_above_hull"] == pytest.approx(formation)  # elements-only hull
    assert verdict.metrics["reference"] == reference.name
