"""The generators eval suite: system draw, intervals, families (fast); a tiny real run (slow)."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from crystalforge.core.errors import SetupError
from crystalforge.evals import generators as generators_suite
from crystalforge.evals.base import SuiteOptions, split_families
from crystalforge.evals.generators import (
    BASELINE,
    COLUMNS,
    bootstrap_ratio,
    default_families,
    held_out_systems,
    parse_family,
    run,
    tuning_systems,
    wilson_interval,
)
from crystalforge.generators.registry import available_generators

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


def test_tuning_systems_come_from_training_rows_and_never_from_held_out_ones(data_dir: Path):
    systems = tuning_systems(data_dir, 6, seed=0)
    assert len(systems) == 6
    assert systems == tuning_systems(data_dir, 6, seed=0)
    frames = {
        split: pd.read_csv(data_dir / "mp_20_biternary" / f"{split}.csv.gz", usecols=["elements"])
        for split in ("test", "val")
    }
    held_out = {tuple(sorted(ast.literal_eval(e))) for e in frames["test"]["elements"]}
    training = {tuple(sorted(ast.literal_eval(e))) for e in frames["val"]["elements"]}
    assert all(len(s) == 3 and s in training and s not in held_out for s in systems)


def test_family_labels_carry_settings_for_ablations():
    assert parse_family("wyckoff") == ("wyckoff", {})
    assert parse_family("wyckoff[push_steps=0; push_scale=1.0;priors_path='x.json']") == (
        "wyckoff",
        {"push_steps": 0, "push_scale": 1.0, "priors_path": "x.json"},
    )
    assert split_families("pyxtal, wyckoff[push_steps=0;a=1],diffusion") == (
        "pyxtal",
        "wyckoff[push_steps=0;a=1]",
        "diffusion",
    )
    with pytest.raises(SetupError, match=r"must end with '\]'"):
        parse_family("wyckoff[push_steps=0")
    with pytest.raises(SetupError, match="not key=value"):
        parse_family("wyckoff[push_steps]")


def test_bad_variant_settings_fail_before_any_cell_runs(data_dir: Path):
    with pytest.raises(SetupError, match=r"wyckoff\[push_steps=-1\].*push_steps must be"):
        run(SuiteOptions(data_dir=data_dir, families=("wyckoff[push_steps=-1]",), systems=1))
    with pytest.raises(SetupError, match=r"no setting\(s\) \['nope'\]"):
        run(SuiteOptions(data_dir=data_dir, families=("wyckoff[nope=1]",), systems=1))


def test_wilson_interval_matches_known_values():
    # 5 of 10: the textbook Wilson 95 % interval is 0.237-0.763.
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-3)
    low, high = wilson_interval(0, 20)
    assert low == 0.0
    assert 0.15 < high < 0.17
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # More trials, narrower interval around the same share.
    five, fifty = wilson_interval(5, 10), wilson_interval(50, 100)
    assert fifty[1] - fifty[0] < five[1] - five[0]


def test_bootstrap_ratio_over_systems():
    baseline = [(10, 1)] * 10
    doubled = [(10, 2)] * 10
    ratio, low, high = bootstrap_ratio(doubled, baseline)
    assert ratio == pytest.approx(2.0)
    assert low == pytest.approx(2.0)
    assert high == pytest.approx(2.0)
    # All of the family's hits in one system: the point estimate stays, the interval widens.
    lumpy = [(10, 20 if i == 0 else 0) for i in range(10)]
    ratio, low, high = bootstrap_ratio(lumpy, baseline)
    assert ratio == pytest.approx(2.0)
    assert low is not None
    assert high is not None
    assert low < 1.0 < high
    assert bootstrap_ratio(doubled, [(10, 0)] * 10)[0] is None  # baseline without hits


def test_default_families_are_installed_registered_and_baseline_first():
    families = default_families()
    assert families[0] == BASELINE
    assert "fake" not in families
    assert set(families) <= set(available_generators())
    assert {"wyckoff", "substitution"} <= set(families)


def test_unknown_family_is_rejected_with_the_valid_names(data_dir: Path):
    with pytest.raises(SetupError, match=r"unknown generator.*'nope'.*wyckoff"):
        run(SuiteOptions(data_dir=data_dir, families=("nope",), per_family=1, systems=1))


@pytest.mark.slow
def test_quick_run_reports_every_family(data_dir: Path, tmp_path: Path):
    result = run(SuiteOptions(quick=True, limit=2, data_dir=data_dir, out_dir=tmp_path))
    assert [str(r["family"]).split()[0] for r in result.rows] == default_families()
    assert (tmp_path / "generators-shares.png").stat().st_size > 0
    assert result.columns == COLUMNS
    generated = result.rows[0]["generated"]
    assert isinstance(generated, int)
    assert generated > 0
    for row in result.rows:
        for column in ("valid %", "S.U.N. %"):
            value = row[column]
            assert value is None or (isinstance(value, float | int) and 0 <= value <= 100)


def _fake_cell(calls: list[str], fail_after: int | None = None):
    """A stand-in for the CHGNet-scored cell: counts calls, can crash after ``fail_after``."""

    def score(family: str, system: tuple[str, ...], spec: generators_suite._CellSpec):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("killed")
        calls.append(f"{family}|{'-'.join(system)}")
        sun = 2 if family == "wyckoff" else 1
        return generators_suite._Cell(
            family=family, system=system, generated=4, valid=4, smact=4, unique=4, novel=4,
            metastable=sun, sun=sun, generation_s=0.1, relax_s=1.0, relaxed=4,
        )  # fmt: skip

    return score


def _killed_after_five_cells(
    data_dir: Path, tmp_path: Path, monkeypatch, fingerprint: str, calls: list[str]
) -> SuiteOptions:
    """Options for 3 systems x 3 families whose scoring (a fake) dies after 5 cells."""
    monkeypatch.setattr(generators_suite, "code_fingerprint", lambda family=None: fingerprint)
    monkeypatch.setattr(generators_suite, "_score_cell", _fake_cell(calls, fail_after=5))
    return SuiteOptions(
        data_dir=data_dir, out_dir=tmp_path, families=("wyckoff",), per_family=4, systems=3
    )


def test_killed_run_resumes_from_the_cell_log(data_dir: Path, tmp_path: Path, monkeypatch):
    first: list[str] = []
    options = _killed_after_five_cells(data_dir, tmp_path, monkeypatch, "tree-a", first)
    with pytest.raises(RuntimeError, match="killed"):
        run(options)
    assert len(first) == 5  # 3 systems x 3 families = 9 cells; 5 were finished and logged
    log = tmp_path / generators_suite.CELL_LOG
    assert len(log.read_text().splitlines()) == 5
    with log.open("a") as handle:
        handle.write("{not json\n")  # a torn last line of a killed writer
    second: list[str] = []
    monkeypatch.setattr(generators_suite, "_score_cell", _fake_cell(second))
    result = run(options)
    assert len(second) == 4
    assert not set(first) & set(second)
    rows = {str(r["family"]).split()[0]: r for r in result.rows}
    assert list(rows) == ["pyxtal", "pyxtal-uniform", "wyckoff"]
    assert rows["wyckoff"]["generated"] == 12
    assert rows["wyckoff"]["S.U.N. %"] == 50.0
    assert str(rows["wyckoff"]["S.U.N. / pyxtal"]).startswith("2.00")
    assert str(rows["wyckoff"]["S.U.N. / pyxtal-uniform"]).startswith("2.00")
    # Other settings are another experiment: nothing is read back.
    third: list[str] = []
    monkeypatch.setattr(generators_suite, "_score_cell", _fake_cell(third))
    run(SuiteOptions(**{**options.__dict__, "per_family": 5}))
    assert len(third) == 9
    # So is other generator or validator code (a retrained checkpoint, an edited stage).
    monkeypatch.setattr(
        generators_suite,
        "code_fingerprint",
        lambda family=None: "tree-b" if family == "wyckoff" else "tree-a",
    )
    fourth: list[str] = []
    monkeypatch.setattr(generators_suite, "_score_cell", _fake_cell(fourth))
    run(options)
    assert sorted(fourth) == sorted(c for c in first + second if c.startswith("wyckoff"))


def test_code_fingerprint_covers_only_the_model_packages_a_family_uses():
    fingerprint = generators_suite.code_fingerprint
    assert len(fingerprint().split("+")[0]) == 12
    # pyxtal and wyckoff do not use the autoregressive package; wyformer imports its tokenizer.
    assert fingerprint("pyxtal").split("+")[0] == fingerprint("wyckoff").split("+")[0]
    assert fingerprint("pyxtal") != fingerprint("autoregressive")
    assert fingerprint("wyformer").split("+")[0] != fingerprint("pyxtal").split("+")[0]


def test_workers_must_be_positive(data_dir: Path):
    with pytest.raises(SetupError, match="workers must be >= 1, got 0"):
        run(SuiteOptions(data_dir=data_dir, families=("wyckoff",), workers=0))


def test_unconditional_batches_have_no_chemical_system(data_dir: Path, monkeypatch):
    requests = []

    class Recorder:
        def generate(self, request):
            requests.append(request)
            raise generators_suite.GenerationFailed("recorded")

    monkeypatch.setattr(generators_suite, "_generator", lambda family: Recorder())
    monkeypatch.setattr(generators_suite, "code_fingerprint", lambda family=None: "tree")
    result = run(
        SuiteOptions(data_dir=data_dir, unconditional=True, systems=3, per_family=5, seed=2)
    )
    assert [str(r["family"]) for r in result.rows] == list(generators_suite.UNCONDITIONAL_FAMILIES)
    assert len(requests) == 3 * len(generators_suite.UNCONDITIONAL_FAMILIES)
    assert {r.seed for r in requests} == {2000, 2001, 2002}
    assert all(r.chemical_system is None and r.elements is None for r in requests)
    assert all(r.num_structures == 5 and r.max_atoms == 20 for r in requests)
    assert result.rows[0]["S.U.N. / pyxtal"] == "n/a (not in run)"
    assert "unconditionally" in result.title


def test_partial_tabulates_only_finished_systems(data_dir: Path, tmp_path: Path, monkeypatch):
    calls: list[str] = []
    options = _killed_after_five_cells(data_dir, tmp_path, monkeypatch, "tree", calls)
    with pytest.raises(SetupError, match="no system has all"):
        run(SuiteOptions(**{**options.__dict__, "partial": True}))
    with pytest.raises(RuntimeError, match="killed"):
        run(options)
    assert len(calls) == 5  # system 1 complete (3 families), system 2 with 2 of 3
    result = run(SuiteOptions(**{**options.__dict__, "partial": True}))
    assert len(calls) == 5  # nothing computed
    assert all(r["generated"] == 4 for r in result.rows)
    assert len(result.metadata["partial_systems_left_out"]) == 2
    assert any(note.startswith("PARTIAL: 2 of 3 systems") for note in result.notes)


def test_pooled_sun_pairs_systems_across_runs_and_skips_other_code(tmp_path: Path) -> None:
    import json

    from crystalforge.evals.generators import main, pooled_sun

    def cell(family: str, system: str, generated: int, sun: int, code: str = "new") -> str:
        body = {"family": family, "system": system.split("-"), "generated": generated, "sun": sun}
        return json.dumps({"spec": {"per_family": generated, "seed": 0}, "code": code,
                           "cell": body})  # fmt: skip

    first = tmp_path / "a.jsonl"
    first.write_text("\n".join([
        cell("model", "A-B-C", 10, 6), cell("prior", "A-B-C", 10, 3),
        cell("model", "D-E-F", 10, 2), cell("prior", "D-E-F", 10, 4),
        cell("model", "G-H-I", 10, 9),  # no paired prior cell: left out
        cell("prior", "G-H-I", 10, 0, code="old"),  # other code: left out
    ]))  # fmt: skip
    second = tmp_path / "b.jsonl"
    second.write_text(cell("model", "A-B-C", 20, 10) + "\n" + cell("prior", "A-B-C", 20, 5))
    codes = {"model": {"new"}, "prior": {"new"}}
    out = pooled_sun([first, second], "model", "prior", codes=codes)
    assert out["model"]["systems"] == out["prior"]["systems"] == 3
    assert (out["model"]["sun"], out["model"]["generated"]) == (18, 40)
    assert (out["prior"]["sun"], out["prior"]["generated"]) == (12, 40)
    ratio, low, high = out["ratio"]
    assert ratio == pytest.approx(1.5)
    assert low is not None
    assert high is not None
    assert low <= ratio <= high
    assert out["per_system"] == [
        {"system": "A-B-C", "model": [10, 6], "prior": [10, 3]},
        {"system": "D-E-F", "model": [10, 2], "prior": [10, 4]},
        {"system": "A-B-C", "model": [20, 10], "prior": [20, 5]},
    ]
    with pytest.raises(SystemExit):
        main(["pool"])  # family, baseline and logs are required


def test_pool_command_reads_cells_of_a_pinned_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--code FAMILY=FINGERPRINT`` pools a run logged before the generator code changed."""
    import json

    from crystalforge.evals.generators import main

    def cell(family: str, system: str, sun: int, code: str) -> str:
        body = {"family": family, "system": system.split("-"), "generated": 10, "sun": sun}
        return json.dumps({"spec": {"per_family": 10, "seed": 0}, "code": code, "cell": body})

    log = tmp_path / "cells.jsonl"
    log.write_text("\n".join([
        cell("wyckoff", "A-B-C", 4, "then"), cell("pyxtal", "A-B-C", 2, "then"),
        cell("wyckoff", "D-E-F", 6, "then"), cell("pyxtal", "D-E-F", 3, "then"),
    ]))  # fmt: skip
    assert main(["pool", "wyckoff", "pyxtal", str(log)]) == 0
    assert "| wyckoff | 0 | 0 / 0" in capsys.readouterr().out  # none of the current code
    pinned = ["--code", "wyckoff=then", "--code", "pyxtal=then"]
    assert main(["pool", "wyckoff", "pyxtal", *pinned, str(log)]) == 0
    out = capsys.readouterr().out
    assert "| wyckoff | 2 | 10 / 20 (50.0 %)" in out
    assert "| pyxtal | 2 | 5 / 20 (25.0 %)" in out
    assert "code: wyckoff then, pyxtal then" in out
    assert "wyckoff / pyxtal S.U.N. share: 2.00" in out
    log.write_text(log.read_text() + "\n" + cell("wyckoff", "G-H-I", 1, "later") + "\n"
                   + cell("pyxtal", "G-H-I", 1, "then"))  # fmt: skip
    both = ["--code", "wyckoff=then,later", "--code", "pyxtal=then"]
    plot = tmp_path / "pool.png"
    assert main(["pool", "wyckoff", "pyxtal", *both, "--plot", str(plot), str(log)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"plot: {plot}" in out
    assert "| wyckoff | 3 | 11 / 30" in out  # both fingerprints of wyckoff, paired by system
    assert "code: wyckoff later+then, pyxtal then" in out
    for bad in ("diffusion=then", "wyckoff=", "wyckoff=,"):
        with pytest.raises(SystemExit):
            main(["pool", "wyckoff", "pyxtal", "--code", bad, str(log)])
        assert "FAMILY=FINGERPRINT" in capsys.readouterr().err
