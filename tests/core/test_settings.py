"""Settings precedence and secret handling: pure logic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalforge.agent.context import Context
from crystalforge.core.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path


def test_environment_prefix(monkeypatch):
    monkeypatch.setenv("CRYSTALFORGE_DEVICE", "cpu")
    monkeypatch.setenv("CRYSTALFORGE_RELAX_MAX_STEPS", "123")
    settings = Settings()
    assert settings.device == "cpu"
    assert settings.relax_max_steps == 123


def test_secrets_never_print(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("MP_API_KEY", "mp-very-secret")
    settings = Settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in str(settings.model_dump())
    assert "very-secret" not in settings.model_dump_json()


def test_explicit_argument_beats_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CRYSTALFORGE_DEVICE", "cuda")
    context = Context.from_settings(Settings(), run_dir=tmp_path, device="cpu")
    assert context.device == "cpu"
    # None means "not given": the environment value stands.
    context = Context.from_settings(Settings(), run_dir=tmp_path, device=None)
    assert context.device == "cuda"


def test_context_round_trips_without_callback(tmp_path: Path):
    context = Context(run_dir=tmp_path, seed=7, progress=lambda *_: None)
    data = context.to_json()
    assert "progress" not in data
    again = Context.from_json(data)
    assert again.seed == 7
    assert again.run_dir == tmp_path
