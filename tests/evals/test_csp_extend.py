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
    ids, raw, relaxed, energies = read_samples(path)
    assert ids == ["mp-1"]
    assert raw[1] == [None]
    assert relaxed[0][0] == ROCK_SALT
    assert energies[0] == [-3.2]
    assert math.isnan(energies[1][0])


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


def test_a_dump_of_other_rows_is_refused(data_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.json.gz"
    write_samples(
        dump, [HeldOutRow("mp-x", ROCK_SALT, ["Na", "Cl"], 0.0)], [[CSCL]], [[CSCL]], [[-1.0]]
    )
    args = ["--dump", str(dump), "--out", str(tmp_path / "out.gz"), "--data-dir", str(data_dir)]
    with pytest.raises(DataError, match="other rows"):
        main(args)
