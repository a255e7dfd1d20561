"""Growing k of a CSP sample dump: the dump format and the best-of-k table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.core.errors import DataError
from crystalforge.evals.csp import HeldOutRow, write_samples
from crystalforge.evals.csp_extend import growth_table, main, read_samples

if TYPE_CHECKING:
    from pathlib import Path

ROCK_SALT = Structure.from_spacegroup(
    "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
)
CSCL = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_dump_round_trips_with_missing_samples(tmp_path: Path) -> None:
    rows = [HeldOutRow("mp-1", ROCK_SALT, ["Na", "Cl"], -2.0)]
    path = tmp_path / "dump.json.gz"
    write_samples(path, rows, [[CSCL], [None]], [[ROCK_SALT], [None]], [[-3.2], [math.nan]])
    dump = read_samples(path)
    assert dump.material_ids == ["mp-1"]
    assert dump.raw[1] == [None]
    assert dump.relaxed[0][0] == ROCK_SALT
    assert dump.energies[0] == [-3.2]
    assert math.isnan(dump.energies[1][0])
    assert dump.refined is None
    assert dump.refined_energies is None


def test_refined_samples_round_trip(tmp_path: Path) -> None:
    rows = [HeldOutRow("mp-1", ROCK_SALT, ["Na", "Cl"], -2.0)]
    path = tmp_path / "dump.json.gz"
    refined = ([[ROCK_SALT]], [[-3.3]])
    write_samples(path, rows, [[CSCL]], [[CSCL]], [[-3.2]], refined)
    dump = read_samples(path)
    assert dump.refined == [[ROCK_SALT]]
    assert dump.refined_energies == [[-3.3]]


def test_growth_table_counts_lowest_energy_and_any_of_the_first_k() -> None:
    truth = [ROCK_SALT, ROCK_SALT]
    # Row 1: the match comes second and is lower in energy; row 2: it comes second but higher.
    relaxed = [[CSCL, CSCL], [ROCK_SALT, ROCK_SALT]]
    energies = [[-3.0, -3.0], [-3.5, -2.0]]
    assert growth_table(truth, relaxed, energies) == [(1, 0, 0), (2, 1, 2)]


def test_a_file_that_is_not_a_dump_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a csp sample dump"):
        read_samples(bad)
    with pytest.raises(SystemExit):
        main(["--dump", str(bad), "--out", str(tmp_path / "x.gz"), "--more", "0"])
    with pytest.raises(DataError, match="not a csp sample dump"):
        main(["--dump", str(bad), "--out", str(tmp_path / "x.gz"), "--more", "0", "--refine"])


def test_a_dump_of_other_rows_is_refused(data_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.json.gz"
    write_samples(
        dump, [HeldOutRow("mp-x", ROCK_SALT, ["Na", "Cl"], 0.0)], [[CSCL]], [[CSCL]], [[-1.0]]
    )
    args = ["--dump", str(dump), "--out", str(tmp_path / "out.gz"), "--data-dir", str(data_dir)]
    with pytest.raises(DataError, match="other rows"):
        main(args)


def test_refine_relaxes_every_sample_again_and_adds_a_column(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("chgnet")
    from crystalforge.evals.csp import sample_rows

    (row,) = sample_rows(data_dir, 1, 0)
    rattled = row.truth.copy()
    rattled.perturb(0.15, min_distance=0.05)
    dump, out = tmp_path / "dump.json.gz", tmp_path / "out.json.gz"
    write_samples(dump, [row], [[rattled]], [[rattled]], [[0.0]])
    args = ["--dump", str(dump), "--out", str(out), "--data-dir", str(data_dir)]
    assert main([*args, "--more", "0", "--refine"]) == 0
    merged = read_samples(out)
    assert merged.refined is not None
    assert merged.refined_energies is not None
    refined = merged.refined[0][0]
    assert refined is not None
    assert math.isfinite(merged.refined_energies[0][0])
    # The refined structure moved back towards the DFT one it was rattled from.
    assert refined != rattled
    table = capsys.readouterr().out
    assert "after refinement" in table
    assert "| 1 |" in table
