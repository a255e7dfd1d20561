"""The backend of a run, from its context; tests may substitute a scripted model.

``Context`` is saved with the run and holds no live objects, so a process-wide override
(:func:`use_backend`) is how a test or a demo plugs a :class:`~crystalforge.agent.llm.scripted.
ScriptedLLM` into the graph nodes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crystalforge.agent.context import Context
    from crystalforge.agent.llm.base import LLMBackend

_override: LLMBackend | None = None


@contextmanager
def use_backend(backend: LLMBackend) -> Iterator[LLMBackend]:
    """Make every ``llm="openai"`` node of this process use ``backend`` inside the block."""
    global _override
    previous, _override = _override, backend
    try:
        yield backend
    finally:
        _override = previous


def backend_for(context: Context) -> LLMBackend | None:
    """The model of a run: ``None`` for the embedded planner, else the override or the server."""
    if context.llm != "openai":
        return None
    if _override is not None:
        return _override
    from crystalforge.agent.llm.openai_backend import OpenAIBackend
    from crystalforge.core.settings import Settings

    return OpenAIBackend(
        model_name=context.llm_model,
        base_url=context.llm_base_url,
        api_key=Settings().openai_api_key,
    )
