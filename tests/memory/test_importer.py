"""`crystalforge data import` / `data info`: idempotent, bad CIFs reported, held-out flags kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.agent.cli import main
from crystalforge.memory.chroma import ChromaMemory
from crystalforge.memory.importer import import_data_dir

if TYPE_CHECKING:
    from pathlib import Path


def _cif(a: float, species: tuple[str, str]) -> str:
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")


def _write(folder: Path, rows: list[dict], spacegroup: bool = True) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if spacegroup:
        frame["spacegroup.number"] = 221
    frame.to_csv(folder, compression="gzip")


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write(root / "mp_20_biternary/test.csv.gz", [
        {"material_id": "mp-1", "formation_energy_per_atom": -1.0, "band_gap": 1.0,
         "e_above_hull": 0.0, "cif": _cif(3.0, ("Cs", "Cl"))},
        {"material_id": "mp-bad", "formation_energy_per_atom": -1.0, "band_gap": 1.0,
         "e_above_hull": 0.0, "cif": "data_broken\n_cell_length_a 3\nnot a cif at all"},
    ])  # fmt: skip
    _write(root / "mp_20_biternary/val.csv.gz", [
        {"material_id": "mp-2", "formation_energy_per_atom": -0.5, "band_gap": 0.0,
         "e_above_hull": 0.01, "cif": _cif(3.2, ("Na", "Cl"))},
    ])  # fmt: skip
    _write(root / "mpts_52/test.csv.gz", [
        {"material_id": "mp-1", "formation_energy_per_atom": -1.0, "energy_above_hull": 0.0,
         "year": 1990, "cif": _cif(3.0, ("Cs", "Cl"))},  # same id as above: deduplicated
        {"material_id": "mp-3", "formation_energy_per_atom": -2.0, "energy_above_hull": 0.2,
         "year": 2001, "cif": _cif(4.0, ("Mg", "O"))},
    ], spacegroup=False)  # fmt: skip
    _write(root / "mpts_52/val.csv.gz", [
        {"material_id": "mp-4", "formation_energy_per_atom": -2.5, "energy_above_hull": 0.0,
         "year": 1970, "cif": _cif(4.2, ("Ca", "O"))},
    ], spacegroup=False)  # fmt: skip
    return root


def test_import_is_idempotent_reports_bad_cifs_and_keeps_held_out(tmp_path, data_folder):
    store = ChromaMemory(tmp_path / "memory")
    sets = ("mp_20_biternary", "mpts_52")
    first = import_data_dir(store, data_folder, sets=sets)
    assert (first.added, first.duplicates, first.rows) == (4, 1, 6)
    assert [mid for mid, _ in first.bad] == ["mp-bad"]
    assert "unreadable CIF" in first.bad[0][1]
    again = import_data_dir(store, data_folder, sets=sets)
    assert (again.added, again.existing) == (0, 4)
    assert store.count("references") == 4
    meta = store.collection("references").get(ids=["mp-1", "mp-3"], include=["metadatas"])
    by_id = dict(zip(meta["ids"], meta["metadatas"], strict=True))
    assert by_id["mp-1"]["held_out"] is True
    assert by_id["mp-1"]["source"] == "mp_20_biternary"
    assert by_id["mp-3"]["held_out"] is False
    assert by_id["mp-3"]["e_above_hull"] == 0.2


def test_cli_data_import_and_info(tmp_path, data_folder, capsys):
    memory = tmp_path / "memory"
    args = ["data", "import", str(data_folder), "--sets", "mp_20_biternary,mpts_52",
            "--memory-dir", str(memory)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr()
    assert "Imported 4 references" in out.out
    assert "skipped mp-bad: unreadable CIF" in out.err
    assert main(args) == 0
    assert "Imported 0 references" in capsys.readouterr().out
    assert main(["data", "info", "--memory-dir", str(memory)]) == 0
    info = capsys.readouterr().out
    assert "references" in info
    assert "mpts_52" in info
    assert main(["data", "import", str(data_folder), "--sets", "nope", "--memory-dir",
                 str(memory)]) == 2  # fmt: skip
    assert "Unknown data set 'nope'" in capsys.readouterr().err


def test_cli_reports_a_corrupt_store(tmp_path, capsys):
    memory = tmp_path / "memory"
    memory.mkdir()
    (memory / "chroma.sqlite3").write_bytes(b"garbage" * 50)
    assert main(["data", "info", "--memory-dir", str(memory)]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_import_real_shared_data_sample(tmp_path, data_dir):
    store = ChromaMemory(tmp_path / "memory")
    report = import_data_dir(store, data_dir, sets=("mp_20_biternary",), limit=300)
    assert report.added == 300
    assert not report.bad
    gate = store.search_references(chemsys=["Ga", "Te"])
    assert any(r["id"] == "mp-10009" for r in gate)
