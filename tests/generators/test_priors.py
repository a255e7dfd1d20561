"""Wyckoff priors: the shipped JSON, its tables, and the training script on a tiny data folder.

Pure unit tests over a bundled JSON and temporary CSVs; nothing to record.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystalforge.core.errors import ConfigError
from crystalforge.generators import train_priors
from crystalforge.generators.priors import (
    DEFAULT_PRIORS_PATH,
    FORMAT_VERSION,
    combination_key,
    load_priors,
    parse_combination,
    wyckoff_label,
)


def test_shipped_priors_load_and_are_small() -> None:
    assert DEFAULT_PRIORS_PATH.stat().st_size < 2_000_000
    priors = load_priors()
    source = priors.source
    assert source["held_out_file"] == "mp_20_biternary/test.csv.gz"
    assert source["training_rows"] > 15_000
    assert source["analysed"] + source["skipped"] == source["training_rows"]
    overall = priors.space_group_counts()
    assert sum(overall.values()) == source["analysed"]
    top = sorted(overall, key=lambda sg: -overall[sg])[:6]
    assert {14, 62, 225} <= set(top)  # the usual most common inorganic space groups
    assert priors.num_atoms_counts(num_elements=3)
    assert priors.anonymous_formula_count("ABC2") > priors.anonymous_formula_count("AB7C8")


def test_combination_tables() -> None:
    priors = load_priors()
    rocksalt = priors.matching_combinations((4, 4))
    assert any(c.space_group == 225 and set(c.groups) == {("4a",), ("4b",)} for c in rocksalt)
    counts = [c.count for c in rocksalt]
    assert counts == sorted(counts, reverse=True)
    assert all(c.sums == (4, 4) for c in rocksalt)
    assert priors.combinations(62)
    assert priors.combinations(999) == []
    # Oxygen sits on low-symmetry sites more than caesium does.
    oxygen, caesium = priors.element_site_orders("O"), priors.element_site_orders("Cs")
    assert oxygen[1] / sum(oxygen.values()) > caesium[1] / sum(caesium.values())


def test_combination_key_is_canonical() -> None:
    key = combination_key([["4c", "4c"], ["8d"], ["4a"]])
    assert key == combination_key([["4a"], ["4c", "4c"], ["8d"]])
    assert key == "4c,4c|8d|4a"
    assert parse_combination(key) == (("4c", "4c"), ("8d",), ("4a",))
    assert wyckoff_label(227, "a") == "8a"
    assert wyckoff_label(166, "e") == "9e"


def test_wrong_format_and_missing_file(tmp_path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": FORMAT_VERSION + 1}))
    with pytest.raises(ConfigError, match="format"):
        load_priors(path)
    with pytest.raises(ConfigError, match="train_priors"):
        load_priors(tmp_path / "absent.json")


def _cif(structure: Structure) -> str:
    return structure.to(fmt="cif")


def _write(path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        frame.to_csv(handle)


def test_training_skips_held_out_rows_and_is_deterministic(tmp_path) -> None:
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0] * 3, [0.5] * 3]
    )
    cscl = Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perovskite = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    data = tmp_path / "data"
    _write(
        data / "mp_20_biternary/test.csv.gz",
        pd.DataFrame({"material_id": ["mp-held"], "cif": [_cif(cscl)]}),
    )
    _write(
        data / "mp_20_biternary/val.csv.gz",
        pd.DataFrame({"material_id": ["mp-1", "mp-held"], "cif": [_cif(rocksalt), _cif(cscl)]}),
    )
    _write(
        data / "mpts_52/test.csv.gz",
        pd.DataFrame({"material_id": ["mp-1", "mp-2"], "cif": [_cif(rocksalt), _cif(perovskite)]}),
    )
    _write(
        data / "mpts_52/val.csv.gz", pd.DataFrame({"material_id": ["mp-held"], "cif": [_cif(cscl)]})
    )
    out = tmp_path / "priors.json"
    assert train_priors.main(["--data-dir", str(data), "--out", str(out)]) == 0
    first = out.read_bytes()
    assert train_priors.main(["--data-dir", str(data), "--out", str(out)]) == 0
    assert out.read_bytes() == first
    priors = load_priors(out)
    assert priors.source["training_rows"] == 2  # mp-1 once, mp-2; never mp-held
    assert priors.space_group_counts() == {225: 1, 221: 1}
    assert 221 not in priors.space_group_counts(num_elements=2)  # CsCl was held out
    assert priors.num_atoms_counts() == {2: 1, 5: 1}
    assert priors.anonymous_formula_count("AB") == 1
    assert priors.anonymous_formula_count("ABC3") == 1
    assert [c.groups for c in priors.combinations(225)] == [(("4a",), ("4b",))]


def test_element_volumes_fit_recovers_known_atom_volumes() -> None:
    from crystalforge.generators.train_priors import element_volumes

    truth = {"Li": 8.0, "O": 12.0, "Mn": 10.0}
    rng = np.random.default_rng(0)
    records = []
    for _ in range(60):
        counts = {el: float(rng.integers(1, 5)) for el in truth}
        volume = sum(n * truth[el] for el, n in counts.items())
        records.append({"element_counts": counts, "volume": volume * rng.normal(1, 0.01)})
    fitted = element_volumes(records)
    assert fitted == pytest.approx(truth, rel=0.05)
    # Elements seen in fewer than 5 rows are not fitted.
    records.append({"element_counts": {"Li": 1.0, "Xe": 1.0}, "volume": 30.0})
    assert "Xe" not in element_volumes(records)
