"""Materials Project access through mp-api, against a local server on 127.0.0.1."""

from __future__ import annotations

import pytest

pytest.importorskip("mp_api", reason="the mp extra (mp-api) is not installed")
pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.core.errors import DataError
from crystalforge.memory.chroma import ChromaMemory
from crystalforge.memory.mp import MPClient, MPReference
from tests.memory.mp_server import MPServer

KEY = "x" * 32  # a fake key: the server on 127.0.0.1 checks it arrives, nothing else


def test_search_sends_the_query_and_caches_results_in_the_store(tmp_path, caplog):
    store = ChromaMemory(tmp_path / "memory")
    with MPServer() as server:
        client = MPClient(store, api_key=KEY, endpoint=server.endpoint)
        rows = client.search(chemsys=["O", "Li"], ranges={"band_gap": (3.0, None)})
        assert [r["material_id"] for r in rows] == ["mp-1960"]
        summary = [r for r in server.requests if "summary" in r["path"]]
        assert summary[0]["query"]["chemsys"] == "Li-O"
        assert summary[0]["query"]["band_gap_min"] == "3.0"
        assert summary[0]["api_key"] == KEY
        client.search(chemsys=["O", "Li"], ranges={"band_gap": (3.0, None)})
        assert len([r for r in server.requests if "summary" in r["path"]]) == 1  # cached
    assert KEY not in caplog.text
    assert KEY not in repr(client)
    cached = store.search_references(chemsys=["Li", "O"])
    assert [(r["id"], r["source"]) for r in cached] == [("mp-1960", "mp")]
    assert store.structures_with_formula("Li2O1")[0][0] == "mp-1960"


def test_mp_reference_hull_from_the_server():
    with MPServer() as server:
        reference = MPReference(MPClient(api_key=KEY, endpoint=server.endpoint))
        assert reference.chemical_potentials(["Li", "O"]) == {"Li": -1.909, "O": -4.948}
        phases = reference.known_phases(["Li", "O"], exact=True)
        assert [p["material_id"] for p in phases] == ["mp-1960", "mp-841"]
        diagram = reference.phase_diagram(["Li", "O"])
        assert len(diagram.stable_entries) == 4
        assert reference.reference_structures("Li2O")[0].properties["material_id"] == "mp-1960"


def test_server_errors_become_clear_data_errors():
    with MPServer(fail_summary=True) as server:
        client = MPClient(api_key=KEY, endpoint=server.endpoint)
        with pytest.raises(DataError, match="Materials Project search"):
            client.search(chemsys="Li-O")
    with pytest.raises(ValueError, match="unknown range field 'volume'"):
        client.search(chemsys="Li-O", ranges={"volume": (1, 2)})


def test_no_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(DataError, match="MP_API_KEY"):
        MPClient()


def test_load_reference_uses_mp_when_the_key_is_set(monkeypatch):
    from crystalforge.memory import mp as mp_module
    from crystalforge.memory.reference_data import load_reference

    with MPServer() as server:
        monkeypatch.setenv("MP_API_KEY", KEY)
        monkeypatch.setenv("CRYSTALFORGE_MP_ENDPOINT", server.endpoint)
        monkeypatch.delenv("CRYSTALFORGE_DATA_DIR", raising=False)
        monkeypatch.setattr(mp_module, "_MP_REFERENCE", [])
        reference = load_reference()
        assert reference.name == "Materials Project (mp-api)"
        assert reference.known_phases(["Li", "O"], exact=True)[0]["material_id"] == "mp-1960"
