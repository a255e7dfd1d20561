"""The command line: exit codes and messages for bad input (fast: no relaxation happens)."""

from __future__ import annotations

import pytest

from crystalforge.agent.cli import main


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("a stable Xy-O oxide", "Xy"),
        ("band gap above 3 eV and below 1 eV in the Li-Mn-O system", "band"),
        ("   ", "empty"),
        ("a Li-Mn-O oxide with at most 0 atoms per cell", "atom"),
    ],
)
def test_bad_requests_fail_clearly(request_text, expected, capsys, tmp_path):
    code = main(["design", request_text, "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    message = captured.err.lower()
    assert expected.lower() in message
    assert "traceback" not in message
    assert not (tmp_path / "run").exists(), "a rejected request must not create a run folder"


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert main(["resume", str(tmp_path)]) == 1
    assert "not a crystalforge run folder" in capsys.readouterr().err


def test_campaign_with_unknown_keys(capsys, tmp_path):
    campaign = tmp_path / "c.yaml"
    campaign.write_text("request: a Li-O oxide\nrounds: 1\ncolour: blue\n")
    assert main(["run", str(campaign)]) == 2
    assert "unknown campaign keys ['colour']" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("design", "run", "resume", "review", "chat"):
        assert command in out


def test_impossible_request_ends_quickly_with_the_reason(capsys, tmp_path, data_dir):
    # Li2MnO3 has no Wyckoff arrangement in Fm-3m at <= 16 atoms: no relaxation is attempted.
    code = main(
        ["design", "Li2MnO3 in space group 225, at most 16 atoms", "--out", str(tmp_path / "r"),
         "--data-dir", str(data_dir)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "space group 225 cannot host Li2MnO3" in " ".join(err.split())
    assert (tmp_path / "r" / "report.md").exists()
