"""``crystalforge eval memory``: ingest time, query latency and novelty-check time of the store.

1. **Ingest**: ``crystalforge data import`` of the structure sets (``mp_20_biternary`` and
   ``mpts_52`` test+val, deduplicated by material id: about 26k structures) into a fresh store.
2. **Query latency** at that size: nearest-neighbour queries (k = 10, crystal embedding) for
   structures drawn from the store, and chemical-system searches (metadata filter); p50/p95.
4. Query latency at **10x** the size: synthetic entries are added (perturbed copies of the stored
   embeddings with their documents and metadata, ``source="synthetic"``), then step 2 again.
3. **Novelty check** (at 1x) of candidates: half are stored references with jittered coordinates and
   a 2% strain (should match), half have their two most common species swapped (usually
   novel); each is screened by :class:`~crystalforge.tools.validators.uniqueness.NoveltyValidator`
   against the store through its formula index (StructureMatcher ltol 0.2, stol 0.3,
   angle_tol 5). Reported as seconds per 1,000 candidates.

``--quick`` ingests 1,500 rows, runs 40 queries per size and checks 100 candidates;
``--limit`` caps the rows ingested. The "10x" step adds at most :data:`MAX_SYNTHETIC_ROWS`
synthetic rows (its note states the factor reached). Each row is printed to stderr as soon as
it is measured. The store lives in a temporary folder, deleted afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.core.errors import DataError
from crystalforge.evals.base import SuiteResult

if TYPE_CHECKING:
    from crystalforge.evals.base import SuiteOptions
    from crystalforge.memory.chroma import ChromaMemory

logger = logging.getLogger(__name__)

COLUMNS = ("measure", "size", "n", "p50 ms", "p95 ms", "total s", "per 1,000 s", "note")

MAX_SYNTHETIC_ROWS = 30_000
"""Synthetic rows added for the "10x" step at most: 10x of the full 26k set (234k rows, about
17 CPU-minutes of writes) does not fit a CI or shared-machine budget; the row's ``note`` gives
the factor reached. ``--quick`` (1,500 -> 15,000) is a true 10x."""


def _emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep a row and print it at once (stderr), so a long run shows partial results."""
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)


def _percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _query_rows(store: ChromaMemory, size: int, n: int, rng: np.random.Generator) -> list[dict]:
    got = store.collection("references").get(
        where={"has_structure": True}, include=["documents", "metadatas"], limit=5000
    )
    docs = got["documents"] or []
    metas = got["metadatas"] or []
    picks = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    nn_times, sys_times = [], []
    for i in picks:
        started = time.perf_counter()
        store.similar_to_record(docs[i], k=10)
        nn_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.search_references(chemsys=str(metas[i]["chemsys"]).split("-"), limit=25)
        sys_times.append(time.perf_counter() - started)
    rows = []
    for name, times in (("query: 10 nearest", nn_times), ("query: chemical system", sys_times)):
        p50, p95 = _percentiles(times)
        rows.append(
            {
                "measure": name,
                "size": size,
                "n": len(times),
                "p50 ms": round(p50, 2),
                "p95 ms": round(p95, 2),
                "total s": round(sum(times), 2),
                "per 1,000 s": None,
                "note": "",
            }
        )
    return rows


def _add_synthetic(store: ChromaMemory, target: int, rng: np.random.Generator) -> float:
    collection = store.collection("references")
    base = collection.get(include=["documents", "metadatas", "embeddings"])
    docs, metas = base["documents"] or [], base["metadatas"] or []
    vectors = np.asarray(base["embeddings"])
    started = time.perf_counter()
    added, copy = 0, 0
    need = target - len(docs)
    while added < need:
        copy += 1
        count = min(len(docs), need - added)
        noise = rng.normal(scale=0.02, size=(count, vectors.shape[1]))
        batch = vectors[:count] + noise
        batch /= np.linalg.norm(batch, axis=1, keepdims=True)
        ids = [f"syn{copy}-{i}" for i in range(count)]
        meta = [{**(m or {}), "source": "synthetic"} for m in metas[:count]]
        store._upsert("references", ids, list(docs[:count]), meta, list(batch))
        added += count
    return time.perf_counter() - started


def _candidates(store: ChromaMemory, n: int, rng: np.random.Generator) -> list[Any]:
    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.embeddings import record_to_structure

    got = store.collection("references").get(
        where={"$and": [{"has_structure": True}, {"source": {"$ne": "synthetic"}}]},
        include=["documents"],
        limit=20_000,
    )
    docs = got["documents"] or []
    picks = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    out = []
    for j, i in enumerate(picks):
        structure = record_to_structure(docs[i])
        if j % 2 == 0:  # a known material, slightly perturbed: should match
            structure.apply_strain(0.02)
            structure.perturb(0.02)
            generator = "known-perturbed"
        else:  # swap the two most common species: a new formula or a new decoration
            counts = structure.composition.get_el_amt_dict()
            common = sorted(counts, key=lambda el: -counts[el])[:2]
            if len(common) == 2:
                structure.replace_species({common[0]: common[1], common[1]: common[0]})
            generator = "species-swapped"
        out.append(Candidate.create(structure, generator=generator))
    return out


class _NoStructures:
    """A reference hull with no structures: novelty then comes from the store alone."""

    name = "none (memory store only)"

    def reference_structures(self, formula: str) -> list[Any]:
        del formula
        return []


def run(options: SuiteOptions) -> SuiteResult:
    """Measure ingest, query latency (1x and 10x) and novelty-check time.

    Args:
        options: ``data_dir`` (required), ``quick``, ``limit`` (rows ingested), ``seed``.

    Raises:
        DataError: no reference data folder.
        MissingExtraError: chromadb is not installed.
    """
    if options.data_dir is None:
        raise DataError("eval memory needs the offline reference data (--data-dir)")
    from crystalforge.memory.chroma import ChromaMemory
    from crystalforge.memory.importer import STRUCTURE_SETS, import_data_dir
    from crystalforge.tools.validators.uniqueness import NoveltyValidator

    rng = np.random.default_rng(options.seed)
    limit = options.limit if options.limit is not None else (1500 if options.quick else None)
    n_queries = 40 if options.quick else 200
    n_candidates = 100 if options.quick else 1000
    folder = Path(tempfile.mkdtemp(prefix="crystalforge-memory-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        store = ChromaMemory(folder / "store")
        report = import_data_dir(store, options.data_dir, sets=STRUCTURE_SETS, limit=limit)
        size = store.count("references")
        _emit(
            rows,
            {
                "measure": "ingest (parse CIF, embed, write)",
                "size": size,
                "n": report.rows,
                "p50 ms": None,
                "p95 ms": None,
                "total s": round(report.seconds, 1),
                "per 1,000 s": round(report.seconds / max(1, report.rows) * 1000, 2),
                "note": f"{report.duplicates} duplicate ids, {len(report.bad)} unreadable",
            },
        )
        for row in _query_rows(store, size, n_queries, rng):
            _emit(rows, row)
        candidates = _candidates(store, n_candidates, rng)
        validator = NoveltyValidator(reference=_NoStructures(), store=store)  # type: ignore[arg-type]
        started = time.perf_counter()
        verdicts = validator.validate(candidates)
        seconds = time.perf_counter() - started
        matched = dict.fromkeys(("known-perturbed", "species-swapped"), 0)
        for candidate, verdict in zip(candidates, verdicts, strict=True):
            if verdict.metrics.get("novel") is False:
                matched[candidate.generator] += 1
        _emit(
            rows,
            {
                "measure": "novelty check (formula index + StructureMatcher)",
                "size": size,
                "n": len(candidates),
                "p50 ms": None,
                "p95 ms": None,
                "total s": round(seconds, 2),
                "per 1,000 s": round(seconds / max(1, len(candidates)) * 1000, 2),
                "note": (
                    f"matched {matched['known-perturbed']}/{(len(candidates) + 1) // 2} perturbed "
                    f"known, {matched['species-swapped']}/{len(candidates) // 2} swapped"
                ),
            },
        )
        target = min(10 * size, size + MAX_SYNTHETIC_ROWS)
        synthetic_s = _add_synthetic(store, target, rng)
        big = store.count("references")
        _emit(
            rows,
            {
                "measure": "add synthetic entries (precomputed embeddings)",
                "size": big,
                "n": big - size,
                "p50 ms": None,
                "p95 ms": None,
                "total s": round(synthetic_s, 1),
                "per 1,000 s": round(synthetic_s / max(1, big - size) * 1000, 2),
                "note": f"perturbed copies; {target / size:.1f}x the ingested size",
            },
        )
        for row in _query_rows(store, big, n_queries, rng):
            _emit(rows, row)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return SuiteResult(
        suite="memory",
        title="Memory store: ingest, query latency (1x and 10x), novelty-check time",
        columns=COLUMNS,
        rows=rows,
        notes=[
            "Store: chromadb PersistentClient on local disk, cosine HNSW, crystalforge's own "
            "composition + structure embedding (122 dims).",
            "Novelty is screened at 1x (before the synthetic copies), against the store only.",
        ],
        metadata={
            "seed": options.seed,
            "rows_limit": limit,
            "queries_per_size": n_queries,
            "candidates": n_candidates,
            "sets": list(STRUCTURE_SETS),
            "import": json.loads(json.dumps(report.per_file)),
        },
    )
