"""ScriptedLLM: a backend that answers from a queue, shipped for tests and demos."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crystalforge.agent.llm.base import Completion, Message, ToolCall, ToolSpec, Usage

if TYPE_CHECKING:
    from collections.abc import Sequence

_ids = itertools.count(1)


@dataclass(kw_only=True)
class ScriptedLLM:
    """Answers each ``complete`` call with the next queued completion.

    Every call is recorded in :attr:`calls` (messages, tools and the JSON flag), so tests can
    assert what the model was shown.
    """

    model_name: str = "scripted"
    queue: deque[Completion] = field(default_factory=deque)
    calls: list[tuple[tuple[Message, ...], tuple[ToolSpec, ...], bool]] = field(
        default_factory=list
    )

    @property
    def model(self) -> str:
        """Model name, for reports."""
        return self.model_name

    def enqueue_text(self, text: str) -> None:
        """Queue a plain text answer."""
        self.queue.append(Completion(text=text, usage=Usage(prompt_tokens=10, completion_tokens=5)))

    def enqueue_tool_call(self, name: str, arguments: str) -> None:
        """Queue an answer that calls tool ``name`` with JSON ``arguments`` (may be malformed)."""
        call = ToolCall(id=f"call_{next(_ids)}", name=name, arguments=arguments)
        self.queue.append(
            Completion(
                text=None, tool_calls=(call,), usage=Usage(prompt_tokens=10, completion_tokens=5)
            )
        )

    @property
    def remaining_steps(self) -> int:
        """Queued answers not yet used."""
        return len(self.queue)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        json_output: bool = False,
        stream: bool = False,
    ) -> Completion:
        """The next queued completion; ``AssertionError`` when the script ran out."""
        del stream  # a scripted answer arrives whole either way
        self.calls.append((tuple(messages), tuple(tools), json_output))
        assert self.queue, "ScriptedLLM ran out of scripted completions"
        return self.queue.popleft()
