"""The run's candidate store: real files in a temporary folder."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from crystalforge.core.candidate import Candidate, Verdict, structure_hash
from crystalforge.memory.run_store import RunStore


def _rocksalt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_hash_ignores_site_order_and_wrapping():
    s = _rocksalt()
    shuffled = Structure.from_sites(list(reversed(s.sites)))
    assert structure_hash(s) == structure_hash(shuffled)
    moved = s.copy()
    moved.translate_sites([0], [1.0, 0, 0], frac_coords=True, to_unit_cell=False)
    assert structure_hash(s) == structure_hash(moved)
    strained = s.copy()
    strained.apply_strain(0.01)
    assert structure_hash(s) != structure_hash(strained)


def test_candidate_and_result_round_trip(tmp_path):
    store = RunStore(tmp_path)
    candidate = Candidate.create(
        _rocksalt(), generator="fake", seed=3, parameters={"space_group": 225}
    )
    store.save_candidate(candidate)
    loaded = store.load_candidate(candidate.id)
    assert loaded.id == candidate.id
    assert loaded.parameters == {"space_group": 225}
    assert loaded.structure == candidate.structure

    relaxed = candidate.evolve(properties={"energy_per_atom": -5.9, "e_above_hull": 0.01})
    verdicts = [
        Verdict(candidate_id=candidate.id, validator="sanity", passed=True),
        Verdict(
            candidate_id=candidate.id,
            validator="hull",
            passed=False,
            reason="too high",
            metrics={"e_above_hull": 0.5},
        ),
    ]
    assert not store.has_result(candidate.id)
    store.save_result(relaxed, verdicts, passed=False, failed_stage="hull")
    result = store.load_result(candidate.id)
    assert result.candidate.properties["e_above_hull"] == 0.01
    assert result.reason == "too high"
    assert [r.candidate.id for r in store.results()] == [candidate.id]
    # No temporary files are left behind by the atomic writes.
    assert not list(tmp_path.rglob("*.tmp"))
