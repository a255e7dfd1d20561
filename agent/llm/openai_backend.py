"""An OpenAI-compatible chat backend on the ``openai`` client.

``base_url`` covers OpenAI, vLLM, Ollama (``http://localhost:11434/v1``), llama.cpp's server and
LM Studio. The key and base URL default to the client's own ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``; a local server usually accepts any key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai

from crystalforge.agent.llm.base import (
    Completion,
    LLMError,
    Message,
    ToolCall,
    ToolSpec,
    ToolsUnsupported,
    Usage,
    check_allow_llm_requests,
)
from crystalforge.core.errors import SetupError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import SecretStr


@dataclass(kw_only=True)
class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server."""

    model_name: str
    base_url: str | None = None
    """``None``: the client's default (``OPENAI_BASE_URL`` or api.openai.com)."""
    api_key: SecretStr | None = None
    """``None``: the client's ``OPENAI_API_KEY``; local servers get a placeholder."""
    timeout_s: float = 120.0
    temperature: float = 0.0
    _client: openai.OpenAI | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> str:
        """Model name, for reports."""
        return self.model_name

    def _openai(self) -> openai.OpenAI:
        if self._client is None:
            key = self.api_key.get_secret_value() if self.api_key is not None else None
            try:
                self._client = openai.OpenAI(
                    api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=1
                )
            except openai.OpenAIError as exc:
                raise SetupError(
                    f"cannot create the OpenAI client: {exc}. Set OPENAI_API_KEY (any value for "
                    "a local server) and OPENAI_BASE_URL or --base-url"
                ) from None
        return self._client

    def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        json_output: bool = False,
        stream: bool = False,
    ) -> Completion:
        """One chat completion (see :class:`~crystalforge.agent.llm.base.LLMBackend`)."""
        check_allow_llm_requests()
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "messages": [_to_openai(m) for m in messages],
            "temperature": self.temperature,
        }
        if tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        if json_output:
            kwargs["response_format"] = {"type": "json_object"}
        started = time.perf_counter()
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        try:
            if stream:
                return self._streamed(kwargs, started)
            response = self._openai().chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if tools:
                raise ToolsUnsupported(f"the server rejected tool calling: {exc}") from None
            raise LLMError(f"the model server rejected the request: {exc}") from None
        except openai.OpenAIError as exc:
            raise LLMError(f"the model server failed: {exc}") from None
        latency = time.perf_counter() - started
        if not response.choices:
            raise LLMError("the model server returned no choices")
        message = response.choices[0].message
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "")
            for c in (message.tool_calls or [])
            if c.type == "function"
        )
        usage = response.usage
        return Completion(
            text=message.content,
            tool_calls=calls,
            usage=Usage(
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            ),
            latency_s=latency,
        )

    def _streamed(self, kwargs: dict[str, Any], started: float) -> Completion:
        """Assemble a streamed answer: text deltas, tool-call deltas by index, final usage."""
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        prompt_tokens = completion_tokens = 0
        for chunk in self._openai().chat.completions.create(**kwargs):
            if chunk.usage is not None:
                prompt_tokens = chunk.usage.prompt_tokens
                completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    if part.id:
                        call["id"] = part.id
                    if part.function is not None:
                        call["name"] += part.function.name or ""
                        call["arguments"] += part.function.arguments or ""
        return Completion(
            text="".join(text) if text else None,
            tool_calls=tuple(
                ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
                for i, c in sorted(calls.items())
            ),
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
            latency_s=time.perf_counter() - started,
        )


def _to_openai(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        data["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        data["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in message.tool_calls
        ]
    return data
