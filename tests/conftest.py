"""Shared fixtures. Real LLM and network calls are off in tests; data-dependent tests skip
with a reason when ../shared/data is absent."""

from __future__ import annotations

import os

# Before numpy loads (see crystalforge/__init__.py): one BLAS thread, as the CLI uses.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The offline reference data used by tests: $CRYSTALFORGE_DATA_DIR or ../shared/data."""
    env = os.environ.get("CRYSTALFORGE_DATA_DIR")
    candidate = Path(env) if env else REPO.parent / "shared" / "data"
    return candidate if (candidate / "README.md").exists() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The reference data folder, or a skip naming what is missing."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "offline reference data not found (set CRYSTALFORGE_DATA_DIR or ../shared/data)"
        )
    return path


@pytest.fixture(autouse=True)
def _no_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never talk to OpenAI or the Materials Project.
    for name in ("OPENAI_API_KEY", "MP_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _memory_in_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Design runs in tests read and write a memory store of their own, never the user's.
    monkeypatch.setenv("CRYSTALFORGE_MEMORY_DIR", str(tmp_path_factory.mktemp("memory")))


@pytest.fixture(autouse=True)
def _block_llm_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real model calls fail loudly in tests; the local-server tests opt back in with
    # the allow_llm_requests fixture.
    from crystalforge.agent.llm import base

    monkeypatch.setattr(base, "ALLOW_LLM_REQUESTS", False)


@pytest.fixture
def allow_llm_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let backends send requests (to a server the test itself runs on 127.0.0.1)."""
    from crystalforge.agent.llm import base

    monkeypatch.setattr(base, "ALLOW_LLM_REQUESTS", True)
