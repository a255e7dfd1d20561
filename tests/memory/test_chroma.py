"""The chromadb memory store on disk: collections, idempotent writes, bad stores, two writers."""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.core.candidate import Candidate, Verdict
from crystalforge.memory.chroma import ChromaMemory, MemoryStoreError
from crystalforge.memory.embeddings import embed_record, structure_record

if TYPE_CHECKING:
    from pathlib import Path


def rocksalt(a: float, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip


def cscl(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def store(tmp_path: Path) -> ChromaMemory:
    return ChromaMemory(tmp_path / "memory")


def test_collections_use_our_embeddings_never_the_onnx_default(store, monkeypatch):
    from chromadb.utils import embedding_functions

    def refuse(*args, **kwargs):
        raise AssertionError("chromadb's default (downloaded) embedding model was used")

    monkeypatch.setattr(embedding_functions.DefaultEmbeddingFunction, "__call__", refuse)
    record = structure_record(rocksalt(5.6))
    references = store.collection("references")
    references.add(ids=["x"], documents=[record])  # no embeddings given: ours computes them
    got = references.get(ids=["x"], include=["embeddings"])
    assert np.allclose(got["embeddings"][0], embed_record(record), atol=1e-6)
    for name in ("references", "candidates", "campaigns", "reviews"):
        assert (
            store.collection(name)
            .configuration_json["embedding_function"]["name"]
            .startswith("crystalforge-")
        )


def test_references_are_idempotent_by_id_and_searchable(store):
    entries = [
        {"structure": rocksalt(5.64), "material_id": "mp-22862", "source": "t", "band_gap": 5.0,
         "e_above_hull": 0.0},
        {"structure": rocksalt(4.21, "Mg", "O"), "material_id": "mp-1265", "source": "t",
         "band_gap": 4.5, "e_above_hull": 0.0},
        {"structure": rocksalt(6.3, "K"), "source": "t", "band_gap": 5.0},  # no id: content id
    ]  # fmt: skip
    assert store.add_references(entries) == {"added": 3, "existing": 0}
    assert store.add_references(entries) == {"added": 0, "existing": 3}
    assert store.count("references") == 3
    assert [r["id"] for r in store.search_references(chemsys=["Na", "Cl"])] == ["mp-22862"]
    assert store.search_references(chemsys="Mg-O", ranges={"band_gap": (4.0, None)})[0]["id"] == (
        "mp-1265"
    )
    assert store.search_references(chemsys="Mg-O", ranges={"band_gap": (4.8, None)}) == []
    [(found_id, found)] = store.structures_with_formula("Cl1Na1")
    assert found_id == "mp-22862"
    assert found.composition.reduced_formula == "NaCl"
    batch = store.structures_with_formulas(["Cl1Na1", "Mg1O1", "Au1"])
    assert [i for i, _ in batch["Cl1Na1"]] == ["mp-22862"]
    assert [i for i, _ in batch["Mg1O1"]] == ["mp-1265"]
    assert batch["Au1"] == []
    near = store.similar_structures(rocksalt(5.7), k=3)
    assert near[0]["id"] == "mp-22862"
    assert store.info()["counts"]["references"] == 3


def test_candidates_campaigns_and_reviews(store):
    candidate = Candidate.create(rocksalt(5.6), generator="fake", seed=1)
    verdicts = [
        Verdict(candidate_id=candidate.id, validator="hull", passed=False, reason="too high")
    ]
    store.add_candidates("run-a", [{"candidate": candidate, "verdicts": verdicts, "passed": False,
                                    "failed_stage": "hull"}])  # fmt: skip
    assert [i for i, _ in store.structures_with_formula("Cl1Na1")] == [candidate.id]
    assert store.structures_with_formula("Cl1Na1", exclude_run="run-a") == []
    store.add_campaign("run-a", {"spec": {"chemical_system": ["Na", "Cl"]}, "request": "NaCl",
                                 "reflections": ["try rocksalt"]})  # fmt: skip
    store.add_campaign("run-b", {"spec": {"chemical_system": ["Mg", "Si"]}, "request": "MgSi"})
    nearest = store.similar_campaigns({"chemical_system": ["Na", "Cl", "K"]}, k=2)
    assert [c["run_id"] for c in nearest] == ["run-a", "run-b"]
    assert nearest[0]["reflections"] == ["try rocksalt"]
    review = store.add_review(candidate.id, "reject", "looks like a known phase", run_id="run-a")
    assert store.reviews_of(candidate.id)[0]["id"] == review
    with pytest.raises(ValueError, match="'maybe'"):
        store.add_review(candidate.id, "maybe")  # type: ignore[arg-type]


def test_corrupt_store_gets_a_clear_message_and_is_left_alone(tmp_path: Path):
    folder = tmp_path / "memory"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(MemoryStoreError, match="corrupt"):
        ChromaMemory(folder)
    assert (folder / "chroma.sqlite3").read_bytes().startswith(b"this is not")  # nothing lost
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(MemoryStoreError, match="is a file"):
        ChromaMemory(a_file)


def test_half_written_store_truncated_sqlite(tmp_path: Path):
    folder = tmp_path / "memory"
    first = ChromaMemory(folder)
    first.add_references([{"structure": rocksalt(5.6), "material_id": "mp-1"}])
    data = (folder / "chroma.sqlite3").read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "chroma.sqlite3").write_bytes(data[: len(data) // 3])
    with pytest.raises(MemoryStoreError, match="broken"):
        ChromaMemory(broken)


def _writer(path: str, worker: int, batches: int) -> None:
    store = ChromaMemory(path)
    rng = np.random.default_rng(worker)
    for b in range(batches):
        entries = [
            {"structure": cscl(3.0 + rng.random()), "material_id": f"w{worker}-{b}-{i}",
             "source": f"worker{worker}"}
            for i in range(10)
        ]  # fmt: skip
        store.add_references(entries)
        store.similar_structures(entries[0]["structure"], k=3)
        store.add_campaign(f"run-{worker}-{b}", {"spec": {"chemical_system": ["Na", "Cl"]}})


def test_two_processes_writing_one_store_do_not_corrupt_it(tmp_path: Path):
    path = str(tmp_path / "memory")
    ChromaMemory(path)  # created once, then written by two processes at the same time
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(path, k, 8)) for k in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0]
    store = ChromaMemory(path)
    assert store.count("references") == 160
    assert store.info()["reference_sources"] == {"worker1": 80, "worker2": 80}
    assert store.count("campaigns") == 16
    hits = store.similar_structures(cscl(3.5), k=160)
    assert len(hits) == 160  # the vector index holds every row written by both
