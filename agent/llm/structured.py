"""Ask a model for one structured answer: a tool call, or JSON output for models without tools.

Shared by every LLM step that needs typed arguments (compiling the request, planning a round,
writing the reflection memo). The model gets one tool whose JSON schema comes from a pydantic
model; the arguments are checked by a caller-supplied ``check`` function. Invalid arguments get
one repair round with the validation error shown to the model; a second failure raises
:class:`StructuredAnswerFailed` (callers fall back to the rule-based answer with a note). A server
that rejects tool calling is asked again for plain JSON output matching the same schema.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import ValidationError

from crystalforge.agent.llm.base import LLMError, Message, ToolsUnsupported

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crystalforge.agent.llm.base import Completion, LLMBackend, ToolSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StructuredAnswerFailed(LLMError):
    """The model's arguments were invalid twice (after one repair round)."""

    def __init__(self, message: str, *, tokens: int = 0, seconds: float = 0.0) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.seconds = seconds


@dataclass(frozen=True, kw_only=True)
class StructuredAnswer(Generic[T]):
    """A checked answer and what it cost."""

    value: T
    repaired: bool
    """True when the first answer was invalid and the repaired one was used."""
    first_error: str
    """The validation error of the first answer ('' when it was valid)."""
    tokens: int
    seconds: float
    """Summed model latency, seconds."""
    calls: int
    used_tools: bool
    """False when the server had no tool calling and JSON output was used."""


def short_error(exc: Exception) -> str:
    """A one-line description of a validation error (pydantic errors joined by ``;``)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def ask_structured(
    backend: LLMBackend,
    messages: Sequence[Message],
    tool: ToolSpec,
    check: Callable[[str], T],
) -> StructuredAnswer[T]:
    """Ask for one call of ``tool`` and check its arguments, with one repair round.

    Args:
        backend: The model.
        messages: System and user messages (the caller wraps retrieved text as data).
        tool: The one tool the model should call; its schema is also the JSON-output schema.
        check: Turns the argument JSON text into the value, raising ``ValueError`` or
            ``ValidationError`` with a message the model can act on.

    Returns:
        The checked value with token, latency and repair bookkeeping.

    Raises:
        StructuredAnswerFailed: Invalid arguments after the repair round.
        LLMError: The server failed (callers fall back).
    """
    history = list(messages)
    tokens = 0
    seconds = 0.0
    use_tools = True
    first_error = ""
    last_error = ""
    for attempt in range(2):
        try:
            completion = _ask(backend, history, tool, use_tools=use_tools)
        except ToolsUnsupported:
            use_tools = False
            completion = _ask(backend, history, tool, use_tools=False)
        tokens += completion.usage.total
        seconds += completion.latency_s
        arguments, reply_to = _arguments(completion, tool.name, use_tools=use_tools)
        try:
            if not arguments.strip():
                raise ValueError(f"no {tool.name} call and no JSON in the answer")
            value = check(arguments)
        except (ValueError, ValidationError) as exc:
            last_error = short_error(exc)
            first_error = first_error or last_error
            logger.info("%s arguments invalid (attempt %d): %s", tool.name, attempt + 1, last_error)
            history += _repair_messages(completion, reply_to, tool.name, last_error)
            continue
        return StructuredAnswer(
            value=value,
            repaired=attempt > 0,
            first_error=first_error,
            tokens=tokens,
            seconds=seconds,
            calls=attempt + 1,
            used_tools=use_tools,
        )
    raise StructuredAnswerFailed(
        f"the model's {tool.name} arguments were invalid after one repair round: {last_error}",
        tokens=tokens,
        seconds=seconds,
    )


def _ask(
    backend: LLMBackend, messages: list[Message], tool: ToolSpec, *, use_tools: bool
) -> Completion:
    if use_tools:
        return backend.complete(messages, tools=[tool])
    schema = json.dumps(tool.parameters)
    prompt = Message(
        role="system",
        content=f"Answer with one JSON object only, matching this JSON schema: {schema}",
    )
    return backend.complete([*messages, prompt], json_output=True)


def _arguments(completion: Completion, name: str, *, use_tools: bool) -> tuple[str, str | None]:
    """The JSON the model submitted and the tool-call id to answer (``None`` for text)."""
    if use_tools:
        for call in completion.tool_calls:
            if call.name == name:
                return call.arguments, call.id
        if completion.tool_calls or not completion.text:
            return "", None
    return completion.text or "", None


def _repair_messages(
    completion: Completion, reply_to: str | None, name: str, error: str
) -> list[Message]:
    text = f"Those arguments are invalid: {error}. Call {name} again with corrected arguments."
    assistant = Message(
        role="assistant", content=completion.text or "", tool_calls=completion.tool_calls
    )
    if reply_to is not None:
        return [assistant, Message(role="tool", tool_call_id=reply_to, content=text)]
    if completion.tool_calls:
        # Answer every call the model made (another tool's name) before the correction.
        answers = [
            Message(
                role="tool",
                tool_call_id=c.id,
                content=f"unknown tool {c.name!r}; the only tool is {name!r}",
            )
            for c in completion.tool_calls
        ]
        return [assistant, *answers, Message(role="user", content=text)]
    return [assistant, Message(role="user", content=text)]
