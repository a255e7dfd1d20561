"""`crystalforge eval memory` on a tiny slice: every measure is present and sane."""

from __future__ import annotations

import pytest

pytest.importorskip("chromadb", reason="the memory extra (chromadb) is not installed")

from crystalforge.evals.base import SuiteOptions
from crystalforge.evals.registry import load_suite


def test_memory_suite_measures_ingest_queries_and_novelty(data_dir):
    result = load_suite("memory")(SuiteOptions(quick=True, limit=60, data_dir=data_dir))
    by_measure = {(r["measure"], r["size"]): r for r in result.rows}
    sizes = sorted({r["size"] for r in result.rows})
    assert sizes == [60, 600]
    ingest = by_measure[("ingest (parse CIF, embed, write)", 60)]
    assert ingest["n"] == 60
    assert ingest["total s"] > 0
    for size in sizes:
        row = by_measure[("query: 10 nearest", size)]
        assert 0 < row["p50 ms"] <= row["p95 ms"]
    novelty = by_measure[("novelty check (formula index + StructureMatcher)", 60)]
    # Jittered, strained copies of stored references must be found again.
    assert novelty["note"].startswith("matched 30/30 perturbed known")


def test_memory_suite_needs_data():
    from crystalforge.core.errors import DataError

    with pytest.raises(DataError, match="reference data"):
        load_suite("memory")(SuiteOptions(quick=True))
