"""The design graph: wiring only.

    understand -> plan -> retrieve -> generate -> validate -> [review] -> reflect -> report
                   ^                      |                                  |
                   |                      +---- (nothing) -------------------+--> report
                   +------------- (another round) ---------------------------+

``review`` runs only with ``Context.review`` on: it interrupts the run (LangGraph
``interrupt()``) until a person approves, rejects or annotates the round's proposals.

Routers return ``Literal`` node names. ``graph`` (no checkpointer) is what ``langgraph.json``
points at; runs use :func:`build_graph` with LangGraph's SQLite saver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langgraph.graph import END, START, StateGraph

from crystalforge.agent.context import Context
from crystalforge.agent.nodes.generate import generate
from crystalforge.agent.nodes.plan import plan
from crystalforge.agent.nodes.reflect import reflect, route_after_generate, route_after_reflect
from crystalforge.agent.nodes.report import report
from crystalforge.agent.nodes.retrieve import retrieve
from crystalforge.agent.nodes.review import review, route_after_validate
from crystalforge.agent.nodes.understand import understand
from crystalforge.agent.nodes.validate import validate
from crystalforge.agent.state import InputState, State

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.graph.state import CompiledStateGraph

NODES = ("understand", "plan", "retrieve", "generate", "validate", "review", "reflect", "report")
"""Node names, in the order of one round."""


def build_graph(
    checkpointer: BaseCheckpointSaver[str] | None = None,
) -> CompiledStateGraph[State, Context, InputState, State]:
    """Compile the design graph, optionally with a checkpointer (needed for resume)."""
    builder = StateGraph(State, context_schema=Context, input_schema=InputState)
    builder.add_node("understand", understand)
    builder.add_node("plan", plan)
    builder.add_node("retrieve", retrieve)
    builder.add_node("generate", generate)
    builder.add_node("validate", validate)
    builder.add_node("review", review)
    builder.add_node("reflect", reflect)
    builder.add_node("report", report)
    builder.add_edge(START, "understand")
    builder.add_edge("understand", "plan")
    builder.add_edge("plan", "retrieve")
    builder.add_edge("retrieve", "generate")
    builder.add_conditional_edges("generate", route_after_generate)
    builder.add_conditional_edges("validate", route_after_validate)
    builder.add_edge("review", "reflect")
    builder.add_conditional_edges("reflect", route_after_reflect)
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer, name="crystalforge-design")


graph = build_graph()
