"""The one settings object of crystalforge.

Precedence, everywhere: explicit argument > per-run context > environment > default. Settings
read the environment (prefix ``CRYSTALFORGE_``); the CLI and the Python API turn their explicit
arguments into a per-run :class:`crystalforge.agent.context.Context` that wins over these.

Secrets (``OPENAI_API_KEY``, ``MP_API_KEY``) are :class:`~pydantic.SecretStr`: they print as
``**********`` and are never written to run files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
LLMChoice = Literal["embedded", "openai"]


class Settings(BaseSettings):
    """Process-wide defaults, read from ``CRYSTALFORGE_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="CRYSTALFORGE_", extra="ignore", validate_default=True, frozen=True
    )

    data_dir: Path | None = Field(
        default=None,
        description=(
            "Folder with the offline reference data (layout of shared/data/README.md). "
            "When unset, ../shared/data beside the working directory or the package is tried."
        ),
    )
    memory_dir: Path | None = Field(
        default=None,
        description=(
            "The chromadb memory store (references, candidates, campaigns, reviews). "
            "Unset: $XDG_DATA_HOME/crystalforge/memory or ~/.local/share/crystalforge/memory."
        ),
    )
    memory_enabled: bool = Field(
        default=True,
        description=(
            "Use the memory store in design runs (recall earlier campaigns, record this one); "
            "it is skipped with a note when the `memory` extra is not installed."
        ),
    )
    runs_dir: Path = Field(
        default=Path("runs"), description="Where `crystalforge design` writes run folders."
    )
    device: Device = Field(
        default="auto", description="Torch device for CHGNet: auto picks cuda when available."
    )
    llm: LLMChoice = Field(
        default="embedded",
        description="Planner backend: the embedded rule-based planner or an OpenAI-compatible API.",
    )
    llm_model: str = Field(default="gpt-4o-mini", description="Model name for --llm openai.")
    llm_base_url: str | None = Field(
        default=None,
        description=(
            "OpenAI-compatible server for --llm openai (vLLM, Ollama, llama.cpp, LM Studio); "
            "unset: the client's OPENAI_BASE_URL or OpenAI."
        ),
    )
    relax_fmax_ev_per_a: float = Field(
        default=0.1, gt=0, description="CHGNet relaxation force threshold (eV/Å)."
    )
    relax_max_steps: int = Field(
        default=300, gt=0, description="Maximum optimizer steps per CHGNet relaxation."
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "CRYSTALFORGE_OPENAI_API_KEY"),
        description="Key for --llm openai (the openai client's own variable).",
        repr=False,
    )
    mp_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MP_API_KEY", "CRYSTALFORGE_MP_API_KEY"),
        description="Materials Project API key; enables mp-api retrieval.",
        repr=False,
    )
