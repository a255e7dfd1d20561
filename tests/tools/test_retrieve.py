"""LLM-facing retrieval tools over a real on-disk store."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.memory.chroma import ChromaMemory
from crystalforge.tools.retrieve import retrieval_tools


def _cell(a: float, species: list[str]) -> Structure:
    return Structure(Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def tools(tmp_path):
    store = ChromaMemory(tmp_path / "memory")
    store.add_references([
        {"structure": _cell(3.0, ["Cs", "Cl"]), "material_id": "mp-1", "band_gap": 5.0,
         "e_above_hull": 0.0, "source": "t"},
        {"structure": _cell(2.6, ["Li", "O"]), "material_id": "mp-2", "band_gap": 2.0,
         "e_above_hull": 0.3, "source": "t"},
        {"structure": _cell(3.4, ["Li", "Mn"]), "material_id": "mp-3", "band_gap": 0.0,
         "e_above_hull": 0.0, "source": "t"},
    ])  # fmt: skip
    store.add_campaign("run-1", {"spec": {"chemical_system": ["Li", "Mn", "O"]},
                                 "request": "a Li-Mn-O cathode",
                                 "reflections": ["smaller cells relaxed better"]})  # fmt: skip
    return {f.__name__: f for f in retrieval_tools(store)}


def test_search_references_by_system_and_ranges(tools):
    found = tools["search_references"](chemical_system=["Li", "Mn", "O"])
    assert [m["id"] for m in found["materials"]] == ["mp-3", "mp-2"]
    gapped = tools["search_references"](chemical_system=["Li", "O"], min_band_gap_ev=1.0,
                                        max_e_above_hull_ev_per_atom=0.1)  # fmt: skip
    assert gapped["count"] == 0
    assert tools["search_references"](formula="CsCl")["materials"][0]["id"] == "mp-1"
    assert "error" in tools["search_references"]()
    assert "Qq" in tools["search_references"](chemical_system=["Qq"])["error"]


def test_similar_crystals_and_bad_cif(tools):
    cif = _cell(3.05, ["Cs", "Cl"]).to(fmt="cif")
    near = tools["similar_crystals"](cif=cif, k=2)
    assert near["crystals"][0]["id"] == "mp-1"
    assert "unreadable CIF" in tools["similar_crystals"](cif="not a cif")["error"]
    assert "among" in tools["similar_crystals"](cif=cif, among="everything")["error"]


def test_recall_campaigns(tools):
    found = tools["recall_campaigns"](chemical_system=["Li", "Mn", "O"])
    assert found["campaigns"][0]["run_id"] == "run-1"
    assert found["campaigns"][0]["reflections"] == ["smaller cells relaxed better"]
