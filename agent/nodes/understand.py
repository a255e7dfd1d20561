"""understand: compile the request into a DesignSpec."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.llm.compile_spec import compile_with_llm
from crystalforge.agent.llm.factory import backend_for
from crystalforge.agent.request_parser import parse_request
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.spec import DesignSpec


def understand(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Compile ``state.request`` (embedded parser, or the LLM when ``llm="openai"``).

    A spec given in the input (scripted campaigns, or compiled by the CLI) is validated and kept.

    Raises:
        RequestError: the request cannot be compiled (the message says why).
        ClarificationNeeded: the request is ambiguous; the message is the question.
    """
    if state.spec:
        return {"spec": DesignSpec.model_validate(state.spec).model_dump(mode="json")}
    backend = backend_for(runtime.context)
    if backend is not None:
        compiled = compile_with_llm(backend, state.request)
        return {
            "spec": compiled.spec.model_dump(mode="json"),
            "notes": [f"request compiled by {compiled.source}", *compiled.notes],
            **state.llm_cost(
                tokens=compiled.tokens, seconds=compiled.llm_seconds, calls=compiled.calls
            ),
        }
    spec = parse_request(state.request)
    return {"spec": spec.model_dump(mode="json"), "notes": ["request compiled by the parser"]}
