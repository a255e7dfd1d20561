"""The LLM backend protocol and the plain data it exchanges.

Backends are synchronous (graph nodes are). Tests switch real requests off with
:data:`ALLOW_LLM_REQUESTS`; a backend that talks to a server calls
:func:`check_allow_llm_requests` before every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crystalforge.core.errors import RunError, SetupError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import BaseModel

ALLOW_LLM_REQUESTS = True
"""Module flag; ``tests/conftest.py`` sets it to False so no test calls a model by accident."""


class LLMRequestsBlocked(SetupError):
    """A backend tried to call a model while :data:`ALLOW_LLM_REQUESTS` is False."""


def check_allow_llm_requests() -> None:
    """Raise unless real LLM requests are allowed (they are not in tests by default)."""
    if not ALLOW_LLM_REQUESTS:
        raise LLMRequestsBlocked(
            "LLM requests are disabled (crystalforge.agent.llm.base.ALLOW_LLM_REQUESTS is "
            "False); tests use ScriptedLLM or a local server fixture"
        )


class LLMError(RunError):
    """The model server failed or answered something unusable."""


class ToolsUnsupported(LLMError):
    """The server rejected a request with tools: use JSON output instead."""


Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """A model's request to call one tool."""

    id: str
    name: str
    arguments: str
    """JSON text, as the model wrote it (may be malformed)."""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ``ValueError`` when they are not a JSON object."""
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError(f"tool arguments must be a JSON object, got {type(value).__name__}")
        return value


@dataclass(frozen=True, kw_only=True)
class Message:
    """One chat message."""

    role: Role
    content: str = ""
    tool_call_id: str | None = None
    """For ``role="tool"``: which call this answers."""
    tool_calls: tuple[ToolCall, ...] = ()
    """For ``role="assistant"``: the calls the model made."""


@dataclass(frozen=True, kw_only=True)
class ToolSpec:
    """A tool as the model sees it: name, description and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]

    @classmethod
    def from_model(cls, name: str, model: type[BaseModel]) -> ToolSpec:
        """A tool whose arguments are ``model``; the model's docstring is the description."""
        description = (model.__doc__ or name).strip()
        return cls(name=name, description=description, parameters=model.model_json_schema())


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Token counts of one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, kw_only=True)
class Completion:
    """What a model answered."""

    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0


class LLMBackend(Protocol):
    """A chat model with optional tool calling."""

    @property
    def model(self) -> str:
        """Model name, for reports."""
        ...

    def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        json_output: bool = False,
        stream: bool = False,
    ) -> Completion:
        """One completion.

        Args:
            messages: The conversation so far.
            tools: Tools the model may call.
            json_output: Ask for a JSON object as the text (for models without tool calling).
            stream: Receive the answer as server-sent events (assembled into one completion);
                backends without streaming ignore it.
        """
        ...
