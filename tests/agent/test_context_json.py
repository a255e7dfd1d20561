"""Context.to_json / from_json: a run written in one folder resumes from another."""

from __future__ import annotations

import os
from pathlib import Path

from crystalforge.agent.context import Context


def test_relative_data_dir_is_saved_absolute(tmp_path: Path, monkeypatch):
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "shared")
    context = Context(run_dir=tmp_path / "run", data_dir=Path("data"), generators=("wyckoff",))
    saved = context.to_json()
    assert saved["data_dir"] == str(data)
    assert "progress" not in saved
    monkeypatch.chdir(tmp_path)  # resume from elsewhere
    restored = Context.from_json(saved)
    assert restored.data_dir is not None
    assert restored.data_dir.is_dir()
    assert os.path.samefile(restored.data_dir, data)
    assert restored.generators == ("wyckoff",)
    assert restored == Context(run_dir=tmp_path / "run", data_dir=data, generators=("wyckoff",))
