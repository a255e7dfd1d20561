"""Start and resume design runs: run folders, the SQLite checkpointer, and progress events.

A run folder holds ``run.json`` (request, compiled spec, per-run context: no secrets),
``checkpoints.sqlite`` (LangGraph's SQLite saver, thread id = folder name), the candidate store
and the report. ``resume_run`` reopens all of it and continues from the last checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from crystalforge.agent.context import Context, ProgressCallback
from crystalforge.agent.graph import build_graph
from crystalforge.agent.nodes.reflect import distinct_hits
from crystalforge.agent.nodes.review import ReviewResponse, apply_reviews, parse_response
from crystalforge.agent.report import RunOutcome, rank
from crystalforge.agent.state import InputState
from crystalforge.core.errors import ReviewError, RunError, RunNotFound
from crystalforge.core.spec import DesignSpec
from crystalforge.memory.run_store import write_json_atomic

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints.sqlite"

NodeCallback = Callable[[str, dict[str, Any]], None]
"""``(node name, its state update)``: called after each node finishes."""


@dataclass(frozen=True, kw_only=True)
class RunHandle:
    """Where a run lives and how to continue it."""

    run_dir: Path
    thread_id: str

    @property
    def config(self) -> RunnableConfig:
        """LangGraph config addressing this run's thread."""
        return RunnableConfig(configurable={"thread_id": self.thread_id}, recursion_limit=500)


def new_run_dir(runs_dir: Path, request: str) -> Path:
    """A fresh, human-readable run folder name: ``<UTC time>-<slug of the request>``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request).strip("-")[:40] or "run"
    path = runs_dir / f"{stamp}-{slug}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = runs_dir / f"{stamp}-{slug}-{suffix}"
    return path


@contextmanager
def _checkpointer(run_dir: Path) -> Iterator[SqliteSaver]:
    conn = sqlite3.connect(run_dir / CHECKPOINTS, check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


def start_run(
    spec: DesignSpec,
    context: Context,
    *,
    on_node: NodeCallback | None = None,
    notes: list[str] | None = None,
    llm_tokens: int = 0,
    llm_seconds: float = 0.0,
    llm_calls: int = 0,
) -> RunOutcome:
    """Run a design from a compiled spec in ``context.run_dir`` (created; must not exist).

    ``notes``, ``llm_tokens``, ``llm_seconds`` and ``llm_calls`` carry what compiling the request
    said and cost.
    """
    run_dir = context.run_dir
    if (run_dir / RUN_FILE).exists():
        raise RunError(
            f"{str(run_dir)!r} already holds a run; use `crystalforge resume {run_dir}` "
            "or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = RunHandle(run_dir=run_dir, thread_id=run_dir.name)
    write_json_atomic(
        run_dir / RUN_FILE,
        {
            "thread_id": handle.thread_id,
            "request": spec.request,
            "spec": spec.model_dump(mode="json"),
            "context": context.to_json(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    inputs = InputState(
        request=spec.request,
        spec=spec.model_dump(mode="json"),
        notes=list(notes or []),
        llm_tokens=llm_tokens,
        llm_seconds=llm_seconds,
        llm_calls=llm_calls,
    )
    return _drive(handle, inputs, context, on_node)


def load_run(
    run_dir: Path, *, progress: ProgressCallback | None = None
) -> tuple[RunHandle, Context]:
    """The handle and context of an existing run folder."""
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.exists():
        raise RunNotFound(f"{str(run_dir)!r} is not a crystalforge run folder (no {RUN_FILE})")
    data = json.loads(run_file.read_text())
    context = Context.from_json(data["context"], progress=progress)
    # The folder may have moved since the run started: trust where it is now.
    context = Context.from_json({**context.to_json(), "run_dir": str(run_dir)}, progress=progress)
    return RunHandle(run_dir=Path(run_dir), thread_id=data["thread_id"]), context


def resume_run(
    run_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    on_node: NodeCallback | None = None,
) -> RunOutcome:
    """Continue an interrupted run from its last checkpoint (a finished run just reports)."""
    handle, context = load_run(run_dir, progress=progress)
    return _drive(handle, None, context, on_node)


def pending_review(run_dir: Path) -> dict[str, Any] | None:
    """The review payload a run is waiting on, or ``None`` when it waits for nothing."""
    handle, _ = load_run(run_dir)
    with _checkpointer(handle.run_dir) as saver:
        snapshot = build_graph(saver).get_state(handle.config)
    return _interrupt_value(snapshot.interrupts)


def run_values(run_dir: Path) -> dict[str, Any]:
    """The last checkpointed graph state of a run (empty before its first checkpoint)."""
    handle, _ = load_run(run_dir)
    with _checkpointer(handle.run_dir) as saver:
        return dict(build_graph(saver).get_state(handle.config).values)


def submit_review(
    run_dir: Path,
    answer: ReviewResponse | dict[str, Any] | str,
    *,
    progress: ProgressCallback | None = None,
    on_node: NodeCallback | None = None,
) -> RunOutcome:
    """Resume a run that waits for review with the reviewer's decisions.

    The answer is checked against the pending proposals first, so an unknown id or action is
    a :class:`ReviewError` naming it and the run stays where it was. The run then continues
    (in this process) until the next review or the end.

    Raises:
        ReviewError: The run waits for no review, or the answer does not fit the proposals.
    """
    handle, context = load_run(run_dir, progress=progress)
    pending = pending_review(run_dir)
    if pending is None:
        raise ReviewError(f"run {str(run_dir)!r} is not waiting for a review")
    response = parse_response(answer, pending["proposals"])
    return _drive(handle, Command(resume=response.model_dump(mode="json")), context, on_node)


def _interrupt_value(interrupts: Any) -> dict[str, Any] | None:
    for item in interrupts or ():
        value = getattr(item, "value", None)
        if isinstance(value, dict) and value.get("kind") == "review":
            return cast("dict[str, Any]", value)
    return None


def _drive(
    handle: RunHandle,
    inputs: InputState | Command[Any] | None,
    context: Context,
    on_node: NodeCallback | None,
) -> RunOutcome:
    with _checkpointer(handle.run_dir) as saver:
        graph = build_graph(saver)
        snapshot = graph.get_state(handle.config)
        if inputs is None and not snapshot.next and snapshot.values.get("report_path"):
            values = dict(snapshot.values)
        else:
            if inputs is None and not snapshot.values:
                raise RunNotFound(f"run {str(handle.run_dir)!r} has no checkpoint to resume from")
            for chunk in graph.stream(
                inputs, handle.config, context=context, stream_mode="updates"
            ):
                for node, update in chunk.items():
                    if on_node is not None and isinstance(update, dict):
                        on_node(node, update)
            snapshot = graph.get_state(handle.config)
            values = dict(snapshot.values)
    pending = _interrupt_value(snapshot.interrupts)
    return outcome_from_values(handle.run_dir, values, pending_review=pending)


def outcome_from_values(
    run_dir: Path, values: dict[str, Any], *, pending_review: dict[str, Any] | None = None
) -> RunOutcome:
    """The outcome of a run from its graph state (final, or stopped for review)."""
    results = apply_reviews(list(values.get("results") or []), list(values.get("reviews") or []))
    return RunOutcome(
        run_dir=run_dir,
        spec=DesignSpec.model_validate(values["spec"]),
        reference_name=values.get("reference_name") or "unknown",
        stop_reason=values.get("stop_reason")
        or ("waiting for review" if pending_review is not None else "finished"),
        ranked=rank(results),
        hits=distinct_hits(results),
        report_path=Path(values.get("report_path") or run_dir / "report.md"),
        pending_review=pending_review,
    )
