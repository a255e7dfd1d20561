"""The generators eval suite: system draw (fast) and a tiny real run (slow: CHGNet)."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from crystalforge.evals.base import SuiteOptions
from crystalforge.evals.generators import COLUMNS, FAMILIES, held_out_systems, run

if TYPE_CHECKING:
    from pathlib import Path


def test_systems_are_held_out_ternaries_and_seeded(data_dir: Path):
    systems = held_out_systems(data_dir, 10, seed=0)
    assert len(systems) == 10
    assert systems == held_out_systems(data_dir, 10, seed=0)
    assert systems != held_out_systems(data_dir, 10, seed=1)
    test_rows = pd.read_csv(data_dir / "mp_20_biternary" / "test.csv.gz", usecols=["elements"])
    held_out = {tuple(sorted(ast.literal_eval(e))) for e in test_rows["elements"]}
    assert all(len(s) == 3 and s in held_out for s in systems)


@pytest.mark.slow
def test_quick_run_reports_every_family(data_dir: Path, tmp_path: Path):
    result = run(SuiteOptions(quick=True, limit=2, data_dir=data_dir, out_dir=tmp_path))
    assert [r["family"].split()[0] for r in result.rows] == list(FAMILIES)
    assert result.columns == COLUMNS
    baseline = result.rows[0]
    assert baseline["generated"] > 0
    for row in result.rows:
        for column in ("valid %", "S.U.N. %"):
            value = row[column]
            assert value is None or 0 <= value <= 100
