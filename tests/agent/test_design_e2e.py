"""End-to-end design runs with the real generator, real CHGNet and the real reference hull.

Small cells and small budgets keep each run to tens of seconds on two CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from crystalforge.agent.cli import main

if TYPE_CHECKING:
    from pathlib import Path

pytest.importorskip("chgnet", reason="needs the chgnet extra")
pytestmark = pytest.mark.chgnet


def test_design_run_writes_a_complete_run_folder(data_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "design",
            "a stable Mg-O oxide, at most 4 atoms per cell, find 1 candidate",
            "--out", str(out), "--samples", "4", "--rounds", "2", "--data-dir", str(data_dir),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "Ranked candidates" in printed

    for name in ("run.json", "ranked.csv", "verdicts.json", "report.md", "checkpoints.sqlite"):
        assert (out / name).exists(), name
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["reference_hull"].startswith("MP-20 offline hull")
    candidates = verdicts["candidates"]
    assert candidates, "at least one candidate was validated"
    assert len(list((out / "cif").glob("*.cif"))) == len(candidates)
    for c in candidates:
        assert c["provenance"]["generator"] in {"wyckoff", "pyxtal", "substitution"}
        assert c["provenance"]["seed"] is not None
        assert c["provenance"]["parameters"]
        assert {v["validator"] for v in c["verdicts"]} >= {"sanity"}
    relaxed = [c for c in candidates if "e_above_hull" in c["properties"]]
    assert relaxed, "some candidate reached the hull stage"
    # Rock-salt MgO is the only Mg-O phase with <= 4 atoms: CHGNet should find it near the hull.
    best = min(c["properties"]["e_above_hull"] for c in relaxed)
    assert best <= 0.1
    report = (out / "report.md").read_text()
    assert "MP-20 offline hull" in report
    assert "stop reason" in report
    assert (out / "e_above_hull.png").stat().st_size > 1000
    # No secret ever lands in run files.
    assert "sk-" not in (out / "run.json").read_text()


def test_killed_run_resumes_without_losing_validated_candidates(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "crystalforge", "design",
        "a Li-Mn-O oxide, at most 8 atoms per cell, find 5 candidates",
        "--out", str(out), "--samples", "6", "--rounds", "1", "--data-dir", str(data_dir),
    ]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results_dir = out / "results"
    deadline = time.monotonic() + 480
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any('"chgnet_relax"' in p.read_text() for p in results_dir.glob("c-*.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed mid-validation"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    before = {p.name: p.read_text() for p in results_dir.glob("c-*.json")}
    relaxed = [n for n, text in before.items() if '"chgnet_relax"' in text]
    assert relaxed, "at least one CHGNet-relaxed candidate was on disk when the run was killed"
    assert not (out / "report.md").exists()

    assert main(["resume", str(out)]) == 0
    after = {p.name: p.read_text() for p in results_dir.glob("c-*.json")}
    # Every result written before the kill is still there, untouched (not re-validated).
    for name, text in before.items():
        assert after[name] == text
    verdict_ids = {c["id"] for c in json.loads((out / "verdicts.json").read_text())["candidates"]}
    assert {name.removesuffix(".json") for name in before} <= verdict_ids
    assert (out / "report.md").exists()


def test_resume_of_a_finished_run_only_reports(data_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--samples", "2", "--rounds", "1", "--data-dir", str(data_dir)]
    assert main(["design", "a Mg-O oxide, at most 2 atoms per cell", *args]) == 0
    stamp = (out / "verdicts.json").stat().st_mtime
    capsys.readouterr()
    assert main(["resume", str(out)]) == 0
    assert "Ranked candidates" in capsys.readouterr().out
    assert (out / "verdicts.json").stat().st_mtime == stamp
