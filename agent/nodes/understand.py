"""understand: compile the request into a DesignSpec."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime  # noqa: TC002 - LangGraph reads node hints at runtime

from crystalforge.agent.context import Context  # noqa: TC001 - read at runtime
from crystalforge.agent.request_parser import parse_request
from crystalforge.agent.state import State  # noqa: TC001 - read at runtime
from crystalforge.core.spec import DesignSpec


def understand(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Compile ``state.request`` with the embedded parser, or validate a given spec.

    Raises:
        RequestError: the request cannot be compiled (the message says why).
        ClarificationNeeded: the request is ambiguous; the message is the question.
    """
    del runtime  # the embedded planner needs no per-run knobs here
    spec = DesignSpec.model_validate(state.spec) if state.spec else parse_request(state.request)
    return {"spec": spec.model_dump(mode="json")}
