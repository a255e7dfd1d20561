"""Reference data: folder resolution, a synthetic data folder, and the real offline hull."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from crystalforge.core.errors import DataError
from crystalforge.memory.reference_data import (
    HULL_PARQUETS,
    ElementalOnlyReference,
    ReferenceData,
    ReferenceHull,
    chemsys_of,
    default_cache_dir,
    elemental_prototypes,
    formula_key,
    load_reference,
    resolve_data_dir,
)
from crystalforge.tools.validators.sanity import min_interatomic_distance

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"offline reference data not found at {REAL_DATA}"
)

# -- folder resolution -------------------------------------------------------------------------


def test_explicit_missing_folder_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        resolve_data_dir(missing)


def test_explicit_folder_wins_over_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRYSTALFORGE_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "explicit").mkdir()
    assert resolve_data_dir(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_environment_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRYSTALFORGE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("CRYSTALFORGE_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="CRYSTALFORGE_DATA_DIR"):
        resolve_data_dir()


def test_working_directory_fallback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CRYSTALFORGE_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_repository_fallback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CRYSTALFORGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    expected = REAL_DATA.resolve() if REAL_DATA.is_dir() else None
    assert resolve_data_dir() == expected


def test_from_dir_checks_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a reference data folder"):
        ReferenceData.from_dir(tmp_path)


# -- a synthetic data folder -------------------------------------------------------------------


def _cif(structure: Structure) -> str:
    return str(CifWriter(structure))


def _li2o() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.65), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]]
    )


def _lithium() -> Structure:
    return Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with 2 CSV materials, 2 parquet materials (1 duplicate) and 2 elements."""
    root = tmp_path_factory.mktemp("data")
    refs = {
        "Li": {"energy": -5.7267686, "composition": {"Li": 3.0}, "correction": 0.0},
        "O": {"energy": -39.5735, "composition": {"O": 8.0}, "correction": 0.0},
    }
    (root / "mp_elemental_refs").mkdir()
    with gzip.open(
        root / "mp_elemental_refs/2023-02-07-mp-elemental-reference-entries.json.gz", "wt"
    ) as f:
        json.dump(refs, f)
    biternary = pd.DataFrame(
        {
            "material_id": ["mp-1960"],
            "formation_energy_per_atom": [-2.06],
            "band_gap": [5.0],
            "pretty_formula": ["Li2O"],
            "e_above_hull": [0.0],
            "elements": ["['Li', 'O']"],
            "cif": [_cif(_li2o())],
            "spacegroup.number": [225],
        }
    )
    (root / "mp_20_biternary").mkdir()
    biternary.to_csv(root / "mp_20_biternary/test.csv.gz")
    biternary.iloc[:0].to_csv(root / "mp_20_biternary/val.csv.gz")
    mpts = pd.DataFrame(
        {
            "material_id": ["mp-135", "mp-1960"],
            "theoretical": [False, False],
            "energy_above_hull": [0.0, 0.0],
            "formation_energy_per_atom": [0.0, -2.06],
            "year": [1950, 1950],
            "cif": [_cif(_lithium()), _cif(_li2o())],
        }
    )
    (root / "mpts_52").mkdir()
    mpts.to_csv(root / "mpts_52/test.csv.gz")
    mpts.iloc[:0].to_csv(root / "mpts_52/val.csv.gz")
    (root / "mp20_hulls").mkdir()
    parquet = pd.DataFrame(
        {
            "material_id": ["mp-1960", "mp-841"],
            "pretty_formula": ["Li2O", "LiO"],
            "species_at_sites": [["Li", "Li", "O"], ["Li"] * 4 + ["O"] * 4],
            "formation_energy_per_atom": [-9.9, -1.65],  # the CSV value of mp-1960 wins
        }
    )
    for relative in HULL_PARQUETS:
        parquet.to_parquet(root / relative)
    return root


def test_synthetic_loading_and_deduplication(synthetic_dir: Path) -> None:
    ref = ReferenceData.from_dir(synthetic_dir)
    assert isinstance(ref, ReferenceHull)
    assert ref.name == "MP-20 offline hull (3 entries)"
    refs = ref.elemental_references()
    assert refs["Li"] == pytest.approx(-1.9089229)
    assert refs["O"] == pytest.approx(-4.9466875)
    assert ref.chemical_potentials(["Li", "Po"]) == {"Li": refs["Li"]}
    entries = ref.hull_entries(["O", "Li"])
    assert sorted(e.composition.reduced_formula for e in entries) == [
        "Li",
        "Li",
        "Li2O",
        "Li2O2",  # pymatgen writes LiO as Li2O2 (peroxide)
        "O2",
    ]
    li2o = next(e for e in entries if e.composition.reduced_formula == "Li2O")
    assert li2o.energy == pytest.approx(-2.06 * 12)  # conventional cell: Li8O4
    assert getattr(li2o.attribute, "source", None) == "mp_20_biternary/test"


def test_synthetic_known_phases(synthetic_dir: Path) -> None:
    ref = ReferenceData.from_dir(synthetic_dir)
    phases = ref.known_phases("Li-O", max_e_above_hull=None)
    assert [p["material_id"] for p in phases] == ["mp-135", "mp-1960", "mp-841"]
    li2o = phases[1]
    assert li2o["spacegroup"] == 225
    assert li2o["e_above_hull"] == pytest.approx(0.0)
    assert li2o["hull"] == ref.name
    exact = ref.known_phases(["Li", "O"], exact=True, max_e_above_hull=0.0)
    assert [p["formula"] for p in exact] == ["Li2O", "Li2O2"]
    assert ref.phase_diagram(["O", "Li"]) is ref.phase_diagram("Li-O")


def test_synthetic_reference_structures(synthetic_dir: Path) -> None:
    ref = ReferenceData.from_dir(synthetic_dir)
    (structure,) = ref.reference_structures("Li4O2")
    assert structure.properties["material_id"] == "mp-1960"
    assert structure.composition.reduced_formula == "Li2O"
    (lithium,) = ref.reference_structures("Li")
    assert lithium.properties["material_id"] == "mp-135"  # unquoted _chemical_formula_sum
    assert ref.reference_structures("LiO") == []  # parquet rows have no structure


def test_formula_key_and_chemsys() -> None:
    assert formula_key({"O": 4, "Li": 8}) == formula_key({"Li": 2, "O": 1}) == "Li2O1"
    assert chemsys_of("O-Li") == chemsys_of(["Li", "O", "O"]) == ("Li", "O")
    with pytest.raises(ValueError, match="Xx"):
        chemsys_of("Li-Xx")


# -- elemental references only (no CHGNet needed here) -----------------------------------------


def test_elemental_prototypes_have_nearest_neighbours_at_twice_the_radius() -> None:
    prototypes = elemental_prototypes("Cu")
    assert sorted(prototypes) == ["bcc", "diamond", "fcc", "hcp", "sc"]
    radius = 1.28  # metallic radius of Cu, Å
    for name, structure in prototypes.items():
        distance, _ = min_interatomic_distance(structure)
        assert distance == pytest.approx(2 * radius, rel=1e-6), name
    (molecule,) = elemental_prototypes("O").values()
    assert molecule.distance_matrix[0, 1] == pytest.approx(1.21)
    assert molecule.lattice.abc == pytest.approx((10.0, 10.0, 10.0))


def test_elemental_only_reference_without_chgnet(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "crystalforge"
    ref = ElementalOnlyReference()
    assert ref.cache_path == tmp_path / "crystalforge" / "chgnet_elemental_refs.json"
    assert isinstance(ref, ReferenceHull)
    assert ref.name == "elemental references only (CHGNet-relaxed prototypes)"
    diagram = ref.phase_diagram(["Li", "O"])
    assert len(diagram.all_entries) == 2
    assert ref.known_phases("Li-O") == []
    assert ref.reference_structures("Li2O") == []


# -- the real offline data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> ReferenceData:
    reference = load_reference(REAL_DATA)
    assert isinstance(reference, ReferenceData)
    return reference


@needs_data
def test_real_hull_name_and_load_time(real: ReferenceData) -> None:
    started = time.perf_counter()
    name = real.name
    elapsed = time.perf_counter() - started
    assert name == "MP-20 offline hull (47,421 entries)"
    assert real.load_seconds < 15
    assert elapsed < 20
    assert load_reference(REAL_DATA) is real


@needs_data
def test_real_elemental_references(real: ReferenceData) -> None:
    refs = real.elemental_references()
    assert len(refs) == 89
    assert refs["Li"] == pytest.approx(-1.9089, abs=1e-4)
    assert refs["Fe"] == pytest.approx(-8.4700, abs=1e-4)
    assert refs["O"] == pytest.approx(-4.9467, abs=1e-4)
    assert "Po" not in refs


@needs_data
def test_real_known_phases_of_li_o(real: ReferenceData) -> None:
    phases = real.known_phases("Li-O", max_e_above_hull=0.0, exact=True)
    ids = {p["material_id"] for p in phases}
    assert {"mp-1960", "mp-841"} <= ids  # Li2O and Li2O2 are on the hull
    assert all(p["e_above_hull"] == pytest.approx(0.0, abs=1e-9) for p in phases)


@needs_data
def test_real_reference_structures(real: ReferenceData) -> None:
    structures = real.reference_structures("GaTe")
    assert "mp-10009" in {s.properties["material_id"] for s in structures}
    assert real.reference_structures("Xe3Kr7") == []
