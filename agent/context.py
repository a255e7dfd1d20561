"""Per-run knobs, separate from graph state (LangGraph's ``context_schema``).

The context is not checkpointed: a run writes it to ``run.json`` so that ``crystalforge resume``
rebuilds the same one. Precedence: explicit argument > this context > environment > default;
:func:`Context.from_settings` applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from crystalforge.core.settings import Device, LLMChoice, Settings  # noqa: TC001 - LangGraph reads context_schema hints

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``: called as long work advances (the CLI draws a bar)."""


@dataclass(frozen=True, kw_only=True)
class Context:
    """Settings of one run."""

    run_dir: Path
    """Where the run's checkpoint, candidate store and report live."""
    data_dir: Path | None = None
    """Reference data folder; ``None`` means elemental references only."""
    device: Device = "auto"
    llm: LLMChoice = "embedded"
    llm_model: str = "gpt-4o-mini"
    """Model name for ``llm="openai"``."""
    llm_base_url: str | None = None
    """OpenAI-compatible server; ``None``: the client's ``OPENAI_BASE_URL`` or OpenAI."""
    seed: int = 0
    """Base seed: round r of generator g uses a seed derived from it."""
    relax_fmax_ev_per_a: float = 0.1
    relax_max_steps: int = 300
    generators: tuple[str, ...] = ("wyckoff", "pyxtal", "substitution")
    """Generators the planner may call, by registry name; the first takes the exploit share,
    the router splits the exploration share over all of them by their yield."""
    relaxer: Literal["chgnet", "fake"] = "chgnet"
    """``fake`` swaps CHGNet for table-driven energies: for fast tests of the graph only."""
    review: bool = False
    """Stop after each validation round for a person to approve, reject or annotate proposals."""
    progress: ProgressCallback | None = field(default=None, compare=False)
    """Progress sink; not saved with the run."""

    @classmethod
    def from_settings(cls, settings: Settings, *, run_dir: Path, **explicit: Any) -> Context:
        """A context from settings, with explicit (non-None) arguments taking precedence."""
        values: dict[str, Any] = {
            "run_dir": run_dir,
            "data_dir": settings.data_dir,
            "device": settings.device,
            "llm": settings.llm,
            "llm_model": settings.llm_model,
            "llm_base_url": settings.llm_base_url,
            "relax_fmax_ev_per_a": settings.relax_fmax_ev_per_a,
            "relax_max_steps": settings.relax_max_steps,
        }
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form without the progress callback (no secrets live here).

        ``data_dir`` is written as an absolute path, so ``crystalforge resume`` from another
        working directory finds the same reference data (``run_dir`` is re-set on resume).
        """
        data = asdict(self)
        data.pop("progress")
        data["run_dir"] = str(self.run_dir)
        data["data_dir"] = str(self.data_dir.resolve()) if self.data_dir else None
        data["generators"] = list(self.generators)
        return data

    @classmethod
    def from_json(
        cls, data: dict[str, Any], *, progress: ProgressCallback | None = None
    ) -> Context:
        """Inverse of :meth:`to_json`."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["run_dir"] = Path(values["run_dir"])
        values["data_dir"] = Path(values["data_dir"]) if values.get("data_dir") else None
        if values.get("generators"):
            values["generators"] = tuple(values["generators"])
        return cls(**values, progress=progress)

    def report(self, stage: str, done: int, total: int) -> None:
        """Forward progress to the sink, if any."""
        if self.progress is not None:
            self.progress(stage, done, total)
