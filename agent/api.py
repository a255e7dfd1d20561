"""The Python API: ``crystalforge.design(...)``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from crystalforge.agent.context import Context, ProgressCallback
from crystalforge.agent.llm.compile_spec import CompiledRequest, compile_with_llm
from crystalforge.agent.request_parser import parse_request
from crystalforge.agent.runner import new_run_dir, start_run
from crystalforge.core.errors import ClarificationNeeded, RequestError
from crystalforge.core.settings import Settings
from crystalforge.memory.reference_data import resolve_data_dir

if TYPE_CHECKING:
    from crystalforge.agent.llm.base import LLMBackend
    from crystalforge.agent.report import RunOutcome
    from crystalforge.core.spec import Budget, DesignSpec


def compile_request(
    request: str,
    *,
    num_candidates: int | None = None,
    budget: Budget | None = None,
    max_atoms: int | None = None,
    backend: LLMBackend | None = None,
    assume_defaults: bool = False,
) -> CompiledRequest:
    """Compile a request; explicit arguments override the text.

    With a ``backend`` the LLM compiles it (cross-checked against the embedded parser),
    otherwise the embedded parser does.

    Args:
        request: The request text.
        num_candidates: Candidates wanted (overrides the text).
        budget: Budget (overrides the text).
        max_atoms: Atoms-per-cell limit (overrides the text).
        backend: The LLM, or ``None`` for the embedded parser.
        assume_defaults: When the request needs a clarification that has a safe default
            (e.g. "metallic with a band gap above 3 eV": the number wins), take the default
            and say so in the notes instead of raising.

    Raises:
        ClarificationNeeded: The request is ambiguous or contradictory and either no default
            exists or ``assume_defaults`` is off; ``.question`` is the question to ask.
    """
    assumed: list[str] = []
    text = request
    for _ in range(4):
        try:
            if backend is not None:
                compiled = compile_with_llm(backend, text)
            else:
                compiled = CompiledRequest(spec=parse_request(text), source="parser")
            break
        except ClarificationNeeded as exc:
            if not assume_defaults or exc.drop is None or exc.drop not in text:
                if assume_defaults and exc.drop is None:
                    raise ClarificationNeeded(
                        f"{exc.question} (no default exists for this question, so "
                        "--assume-defaults cannot answer it)"
                    ) from None
                raise
            assumed.append(f"assumed: {exc.assumption} (asked: {exc.question})")
            text = text.replace(exc.drop, "", 1)
    else:  # pragma: no cover - four defaults in one request
        raise RequestError(f"too many ambiguities to assume defaults for: {request!r}")
    if assumed:
        compiled = replace(
            compiled,
            spec=compiled.spec.model_copy(update={"request": request}),
            notes=[*assumed, *compiled.notes],
        )
    spec = compiled.spec
    updates: dict[str, object] = {}
    if num_candidates is not None:
        updates["num_candidates"] = num_candidates
    if budget is not None:
        updates["budget"] = budget
    if max_atoms is not None:
        updates["max_atoms"] = max_atoms
    if updates:
        # model_validate re-runs the consistency checks on the overridden values.
        try:
            spec = type(spec).model_validate({**spec.model_dump(), **updates})
        except ValueError as exc:
            raise RequestError(f"the options contradict the request: {exc}") from None
    return replace(compiled, spec=spec)


def design(
    request: str | DesignSpec,
    *,
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    use_reference_data: bool = True,
    seed: int = 0,
    device: str | None = None,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> RunOutcome:
    """Run one design: compile, generate, validate, reflect and report.

    Args:
        request: A plain-language request or a compiled :class:`DesignSpec`.
        out: Run folder (default: a new folder under ``settings.runs_dir``).
        data_dir: Reference data folder (default: resolved as in
            :func:`~crystalforge.memory.reference_data.resolve_data_dir`).
        use_reference_data: False judges stability against elemental references only.
        seed: Base seed of the run.
        device: ``auto``, ``cpu`` or ``cuda`` for CHGNet (default: the setting).
        settings: Settings to use (default: read from the environment).
        progress: Progress sink ``(stage, done, total)``.

    Returns:
        The outcome: ranked candidates, hits, stop reason and where the report is.
    """
    settings = settings or Settings()
    spec = request if not isinstance(request, str) else compile_request(request).spec
    run_dir = Path(out) if out is not None else new_run_dir(settings.runs_dir, spec.request)
    resolved = (
        resolve_data_dir(Path(data_dir) if data_dir else None) if use_reference_data else None
    )
    context = Context.from_settings(
        settings, run_dir=run_dir, seed=seed, device=device, progress=progress
    )
    context = replace(context, data_dir=resolved)
    return start_run(spec, context)
