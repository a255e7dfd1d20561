"""The ``crystalforge`` command line: a thin layer over the Python API.

Only this module prints. Exit codes: 0 done, 1 the run failed, 2 bad request or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crystalforge import __version__
from crystalforge.core.errors import (
    ClarificationNeeded,
    CrystalForgeError,
    RequestError,
    ReviewError,
    SetupError,
)
from crystalforge.core.settings import Settings
from crystalforge.core.spec import Budget

if TYPE_CHECKING:
    from crystalforge.agent.report import RunOutcome

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

console = Console()
err_console = Console(stderr=True)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystalforge",
        description="Design new inorganic crystals: generate, validate with CHGNet, iterate.",
    )
    parser.add_argument("--version", action="version", version=f"crystalforge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More log output.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    design = sub.add_parser(
        "design",
        help="Run one design from a plain-language request.",
        description=(
            "Compile the request into a design spec, generate candidates, relax them with CHGNet, "
            "place them on the reference hull, reflect and iterate; write a run folder."
        ),
    )
    design.add_argument("request", help='e.g. "a stable Li-Mn-O oxide, at most 16 atoms per cell"')
    _add_run_options(design)

    chat = sub.add_parser(
        "chat",
        help="Talk to the assistant: a request, then follow-ups that refine it.",
        description=(
            "A multi-turn conversation on stdin/stdout. The first message is a design request; "
            "follow-ups refine it ('now without manganese'), ask about the results ('show me "
            "the two most stable', 'why was candidate 3 rejected?') or answer a review "
            "('approve 1 3, reject 2: too much Mn'). Type 'help' for more, 'quit' to leave. "
            "The conversation is saved after every turn; continue it with --resume."
        ),
    )
    chat.add_argument(
        "--resume", type=Path, metavar="SESSION", help="Continue a saved chat session file."
    )
    chat.add_argument(
        "--session",
        type=Path,
        help="Where to save the session (default: chat-<time>.json under ./runs/).",
    )
    _add_run_options(chat, out=False)

    run = sub.add_parser(
        "run",
        help="Run a scripted campaign from a YAML file.",
        description=(
            "YAML keys: request (required), and optionally candidates, rounds, samples, "
            "max_relaxations, max_minutes, max_atoms, seed, out, data_dir, device, review "
            "(true: stop after each round for `crystalforge review`)."
        ),
    )
    run.add_argument("campaign", type=Path, help="Campaign YAML file.")

    resume = sub.add_parser(
        "resume",
        help="Continue an interrupted run from its checkpoint.",
        description=(
            "Continue a run folder from its last checkpoint; validated candidates are kept."
        ),
    )
    resume.add_argument("run_dir", type=Path, help="The run folder (e.g. runs/2026...).")

    review = sub.add_parser(
        "review",
        help="Review a run's proposals: a local web page, or --approve/--reject/--note.",
        description=(
            "A run started with --review stops after each validation round until its proposals "
            "are reviewed. Without options this serves the review page on 127.0.0.1 (proposals "
            "with verdicts, a 3D structure viewer, the hull plot, approve/reject/annotate "
            "buttons); submitting resumes the run. With --approve/--reject/--note the decisions "
            "are applied and the run resumes here. IDs are candidate ids, unique prefixes, or "
            "the numbers of --list."
        ),
    )
    review.add_argument("run_dir", type=Path, help="The run folder waiting for review.")
    review.add_argument("--list", action="store_true", help="Print the pending proposals.")
    review.add_argument(
        "--approve", nargs="+", action="extend", default=[], metavar="ID", help="Approve these."
    )
    review.add_argument(
        "--reject", nargs="+", action="extend", default=[], metavar="ID", help="Reject these."
    )
    review.add_argument(
        "--note",
        nargs=2,
        action="append",
        default=[],
        metavar=("ID", "TEXT"),
        help="Attach a note (alone: annotate; with --approve/--reject: the reason).",
    )
    review.add_argument(
        "--skip", action="store_true", help="Continue without any decision on this round."
    )
    review.add_argument("--port", type=int, default=8765, help="Review page port (default 8765).")

    data = sub.add_parser(
        "data",
        help="Load reference data into the memory store, or say what it holds.",
        description=(
            "import: read a reference data folder (layout of shared/data/README.md) into the "
            "memory store, idempotently; info: what the store holds."
        ),
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_import = data_sub.add_parser("import", help="Import a reference data folder.")
    data_import.add_argument("dir", type=Path, help="The data folder, e.g. ../shared/data.")
    data_import.add_argument(
        "--sets",
        help=(
            "Comma-separated data sets (default mp_20_biternary,mpts_52,mp20_hulls; "
            "also perov_5, carbon_24)."
        ),
    )
    data_import.add_argument("--limit", type=int, help="Stop after this many rows (a quick look).")
    data_import.add_argument(
        "--memory-dir", type=Path, help="Memory store (default: $CRYSTALFORGE_MEMORY_DIR)."
    )
    data_info = data_sub.add_parser("info", help="What the memory store holds.")
    data_info.add_argument(
        "--memory-dir", type=Path, help="Memory store (default: $CRYSTALFORGE_MEMORY_DIR)."
    )

    evaluate = sub.add_parser(
        "eval",
        help="Run an evaluation suite or benchmark and print its table.",
        description="Run an evaluation suite; without a suite name, list the suites.",
    )
    evaluate.add_argument("suite", nargs="?", help="Suite name (omit to list them).")
    evaluate.add_argument("--quick", action="store_true", help="The small version that fits CI.")
    evaluate.add_argument("--json", type=Path, help="Also write the result (with provenance).")
    evaluate.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    evaluate.add_argument("--limit", type=int, help="Cap on structures or rows processed.")
    evaluate.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="Torch device."
    )
    evaluate.add_argument("--data-dir", type=Path, help="Reference data folder.")
    evaluate.add_argument(
        "--families",
        help="Comma-separated generator names (eval generators; default: all); a name may "
        "carry settings for an ablation, e.g. 'wyckoff,wyckoff[push_steps=0;volume_factor=1.1]'. "
        "eval csp: methods among diffusion, pyxtal, template, diffusion-template (default: all).",
    )
    evaluate.add_argument(
        "--per-family", type=int, help="Structures per family and system (eval generators)."
    )
    evaluate.add_argument("--systems", type=int, help="Chemical systems drawn (eval generators).")
    evaluate.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Processes sharing the work, one torch thread each (eval generators; default 1).",
    )
    evaluate.add_argument(
        "--unconditional",
        action="store_true",
        help="eval generators: seeded batches with no chemical system (--systems batches; "
        "default families autoregressive, wyformer) instead of held-out systems.",
    )
    evaluate.add_argument(
        "--tuning",
        action="store_true",
        help="eval generators: draw the systems from the training rows (systems no held-out "
        "row has); eval csp: draw the rows from the diffusion model's validation split; for "
        "tuning settings without touching held-out data.",
    )
    evaluate.add_argument(
        "--markdown", action="store_true", help="Print the table as Markdown (for the docs)."
    )
    evaluate.add_argument(
        "--partial",
        action="store_true",
        help="eval generators: tabulate the cells already finished next to --json (systems "
        "with every family done; the rest are named) and compute nothing.",
    )
    return parser


def generator_names(text: str) -> tuple[str, ...]:
    """``"wyckoff,diffusion"`` as registry names, checked.

    Raises:
        argparse.ArgumentTypeError: An empty list or a name the registry does not know (the
            message lists the known ones).
    """
    from crystalforge.generators.registry import available_generators

    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    known = available_generators()
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"generators must be comma-separated names among {known}, got {text!r}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return names


def _add_run_options(p: argparse.ArgumentParser, *, out: bool = True) -> None:
    if out:
        p.add_argument("--out", type=Path, help="Run folder (default: a new folder under ./runs/).")
    p.add_argument("--candidates", type=int, help="Candidates wanted (overrides the request).")
    p.add_argument("--rounds", type=int, help="Maximum generate-validate rounds (default 3).")
    p.add_argument("--samples", type=int, help="Structures generated per round (default 12).")
    p.add_argument(
        "--max-relaxations", type=int, help="CHGNet relaxations over the run (default 40)."
    )
    p.add_argument("--max-minutes", type=float, help="Working-time budget in minutes (default 4).")
    p.add_argument("--max-atoms", type=int, help="Atoms-per-cell limit (overrides the request).")
    p.add_argument("--seed", type=int, default=0, help="Base random seed (default 0).")
    p.add_argument(
        "--generators",
        type=generator_names,
        help="Comma-separated generator families the planner may call, the first taking the "
        "exploit share (default wyckoff,pyxtal,substitution; also autoregressive, diffusion, "
        "wyformer: see docs/generators.md).",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="CHGNet device (default: auto)."
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="Reference data folder (default: $CRYSTALFORGE_DATA_DIR, then ../shared/data).",
    )
    p.add_argument(
        "--llm",
        choices=("embedded", "openai"),
        help="Planner: the embedded parser (default, offline) or an OpenAI-compatible model.",
    )
    p.add_argument("--model", help="Model name for --llm openai (default gpt-4o-mini).")
    p.add_argument(
        "--base-url",
        help="OpenAI-compatible server for --llm openai, e.g. http://localhost:11434/v1.",
    )
    p.add_argument(
        "--assume-defaults",
        action="store_true",
        help=(
            "When the request needs a clarification with a safe default (a number against a "
            "word: the number wins), take it and note it instead of exiting 2."
        ),
    )
    p.add_argument(
        "--no-reference-data",
        action="store_true",
        help="Judge stability against elemental references only.",
    )
    p.add_argument(
        "--review",
        action="store_true",
        default=None,
        help="Stop after each validation round for review (`crystalforge review <run>`).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crystalforge`` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "design":
            return _design(vars(args))
        if args.command == "run":
            return _campaign(args.campaign)
        if args.command == "resume":
            return _resume(args.run_dir)
        if args.command == "review":
            return _review(args)
        if args.command == "chat":
            return _chat(vars(args))
        if args.command == "eval":
            return _eval(args)
        if args.command == "data":
            return _data(args)
    except ReviewError as exc:
        err_console.print(f"[bold red]Cannot apply the review:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except ClarificationNeeded as exc:
        hint = f" With --assume-defaults: {exc.assumption}." if exc.assumption is not None else ""
        err_console.print(f"[bold red]Question:[/] {escape(exc.question)}{escape(hint)}")
        return EXIT_USAGE
    except RequestError as exc:
        err_console.print(f"[bold red]Cannot design this:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except SetupError as exc:
        err_console.print(f"[bold red]Setup problem:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except CrystalForgeError as exc:
        err_console.print(f"[bold red]Run failed:[/] {escape(str(exc))}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err_console.print("Interrupted. Continue with `crystalforge resume <run folder>`.")
        return 130
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _data(args: argparse.Namespace) -> int:
    from crystalforge.memory.chroma import open_memory
    from crystalforge.memory.importer import ALL_SETS, DEFAULT_SETS, count_rows, import_data_dir

    store = open_memory(args.memory_dir)
    if args.data_command == "info":
        info = store.info()
        table = Table(title=f"memory store {info['path']}")
        table.add_column("collection")
        table.add_column("entries", justify="right")
        for name, count in info["counts"].items():
            table.add_row(name, f"{count:,}")
        console.print(table)
        if info["reference_sources"]:
            sources = Table(title="references by source")
            sources.add_column("source")
            sources.add_column("entries", justify="right")
            for name, count in sorted(info["reference_sources"].items()):
                sources.add_row(name, f"{count:,}")
            console.print(sources)
        else:
            console.print("No references yet: run `crystalforge data import ../shared/data`.")
        return EXIT_OK
    sets = tuple(s.strip() for s in args.sets.split(",")) if args.sets else DEFAULT_SETS
    unknown = [name for name in sets if name not in ALL_SETS]
    if unknown:
        err_console.print(
            f"[bold red]Unknown data set {unknown[0]!r}[/]; expected some of {', '.join(ALL_SETS)}"
        )
        return EXIT_USAGE
    totals = count_rows(args.dir, sets)  # type: ignore[arg-type]
    total = sum(totals.values()) if args.limit is None else min(args.limit, sum(totals.values()))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("importing", total=total)

        def advance(file: str, _in_file: int, done: int) -> None:
            bar.update(task, completed=done, description=f"importing {file}")

        report = import_data_dir(
            store,
            args.dir,
            sets=sets,  # type: ignore[arg-type]
            limit=args.limit,
            progress=advance,
        )
    console.print(
        f"Imported {report.added:,} references into {store.path} "
        f"({report.existing:,} already there, {report.duplicates:,} duplicate ids, "
        f"{len(report.bad):,} unreadable) from {report.rows:,} rows in {report.seconds:.1f} s."
    )
    for material_id, reason in report.bad[:10]:
        err_console.print(f"  skipped {escape(material_id)}: {escape(reason)}")
    if len(report.bad) > 10:
        err_console.print(f"  ... and {len(report.bad) - 10} more (see the log with -v)")
    return EXIT_OK


def _design(options: dict[str, Any]) -> int:
    from crystalforge.agent.api import compile_request
    from crystalforge.agent.context import Context
    from crystalforge.agent.runner import new_run_dir, start_run
    from crystalforge.memory.reference_data import resolve_data_dir

    settings = Settings()
    budget_updates = {
        "max_rounds": options.get("rounds"),
        "samples_per_round": options.get("samples"),
        "max_validator_calls": options.get("max_relaxations"),
        "max_wall_time_s": (options["max_minutes"] * 60) if options.get("max_minutes") else None,
    }
    text = str(options["request"])
    context = Context.from_settings(
        settings,
        run_dir=Path("."),  # replaced below, once the request has compiled
        seed=options.get("seed"),
        device=options.get("device"),
        llm=options.get("llm"),
        llm_model=options.get("model"),
        llm_base_url=options.get("base_url"),
        review=options.get("review"),
        generators=options.get("generators"),
    )
    backend = None
    if context.llm == "openai":
        from crystalforge.agent.llm.openai_backend import OpenAIBackend

        backend = OpenAIBackend(
            model_name=context.llm_model,
            base_url=context.llm_base_url,
            api_key=settings.openai_api_key,
        )
    compiled = compile_request(
        text,
        num_candidates=options.get("candidates"),
        max_atoms=options.get("max_atoms"),
        backend=backend,
        assume_defaults=bool(options.get("assume_defaults")),
    )
    spec = compiled.spec
    updates = {k: v for k, v in budget_updates.items() if v is not None}
    if updates:
        try:
            budget = Budget.model_validate({**spec.budget.model_dump(), **updates})
        except ValueError as exc:
            raise RequestError(f"invalid budget option: {exc}") from None
        spec = spec.model_copy(update={"budget": budget})
    data_dir = (
        None if options.get("no_reference_data") else resolve_data_dir(options.get("data_dir"))
    )
    out = options.get("out")
    run_dir = Path(out) if out else new_run_dir(settings.runs_dir, text)
    context = replace(context, run_dir=run_dir, data_dir=data_dir)

    console.print(f"[bold]crystalforge[/] {__version__}: {escape(text)}")
    for line in spec.describe():
        console.print(f"  {escape(line)}")
    if data_dir is None:
        console.print(
            "[yellow]No reference data: stability is judged against elemental references only.[/]"
        )
    notes = [f"request compiled by {compiled.source}", *compiled.notes]
    for note in compiled.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}")
    console.print(f"  run folder: {run_dir}")
    with _progress() as (progress_cb, on_node):
        outcome = start_run(
            spec,
            replace(context, progress=progress_cb),
            on_node=on_node,
            notes=notes,
            llm_tokens=compiled.tokens,
            llm_seconds=compiled.llm_seconds,
            llm_calls=compiled.calls,
        )
    return _print_outcome(outcome)


def _campaign(path: Path) -> int:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SetupError(f"campaign file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise SetupError(f"campaign file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "request" not in data:
        raise SetupError(f"campaign file {str(path)!r} must be a mapping with a 'request' key")
    known = {
        "request", "candidates", "rounds", "samples", "max_relaxations", "max_minutes",
        "max_atoms", "seed", "out", "data_dir", "device", "no_reference_data", "llm", "model",
        "base_url", "assume_defaults", "review", "generators",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise SetupError(f"unknown campaign keys {unknown}; valid keys: {sorted(known)}")
    options: dict[str, Any] = {"seed": 0, **data}
    if options.get("generators") is not None:
        value = options["generators"]
        text = ",".join(value) if isinstance(value, list) else str(value)
        try:
            options["generators"] = generator_names(text)
        except argparse.ArgumentTypeError as exc:
            raise SetupError(f"campaign file {str(path)!r}: {exc}") from None
    for key in ("out", "data_dir"):
        if options.get(key):
            options[key] = Path(options[key])
    return _design(options)


def _resume(run_dir: Path) -> int:
    from crystalforge.agent.runner import resume_run

    console.print(f"[bold]crystalforge[/] resuming {run_dir}")
    with _progress() as (progress_cb, on_node):
        outcome = resume_run(run_dir, progress=progress_cb, on_node=on_node)
    return _print_outcome(outcome)


def _eval(args: argparse.Namespace) -> int:
    from crystalforge.evals.base import SuiteOptions, split_families
    from crystalforge.evals.registry import available_suites, load_suite
    from crystalforge.memory.reference_data import resolve_data_dir

    if not args.suite:
        table = Table(title="Evaluation suites")
        table.add_column("suite", no_wrap=True)
        table.add_column("what it measures")
        for name, description in available_suites().items():
            table.add_row(name, description)
        console.print(table)
        return EXIT_OK
    runner = load_suite(args.suite)
    # Suites report progress (counts, rates, time left) at INFO: show it without -v.
    logging.getLogger("crystalforge.evals").setLevel(min(logging.INFO, logging.root.level))
    options = SuiteOptions(
        quick=args.quick,
        seed=args.seed,
        device=args.device,
        data_dir=resolve_data_dir(args.data_dir),
        out_dir=args.json.parent if args.json else Path.cwd(),
        limit=args.limit,
        families=split_families(args.families or ""),
        per_family=args.per_family,
        systems=args.systems,
        workers=args.workers,
        unconditional=args.unconditional,
        tuning=args.tuning,
        partial=args.partial,
    )
    result = runner(options)
    if args.markdown:
        console.print(escape(markdown_table(result.columns, result.rows)), soft_wrap=True)
    else:
        table = Table(title=result.title)
        for column in result.columns:
            table.add_column(column)
        for row in result.rows:
            table.add_row(*(_cell(row.get(column)) for column in result.columns))
        # Piped output has no terminal width; keep wide tables readable in logs.
        console.print(table, width=None if console.is_terminal else 160)
    for note in result.notes:
        console.print(escape(note))
    for figure in result.figures:
        console.print(f"figure: {figure}")
    if args.json:
        result.write_json(args.json)
        console.print(f"written: {args.json}")
    return EXIT_OK


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A suite's table as GitHub Markdown (for the docs)."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        cells = (_cell(row.get(column)).replace("|", "\\|") for column in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape("" if value is None else str(value))


@contextmanager
def _progress() -> Iterator[tuple[Any, Any]]:
    """A live progress bar per stage, and a printer of node events."""
    bars = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        task = tasks.get(stage)
        if task is None or (done == 0 and bars.tasks[task].finished):
            task = bars.add_task(stage, total=max(total, 1), rate="")
            tasks[stage] = task
        elapsed = bars.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.2f}/s" if elapsed > 0 and done else ""
        bars.update(task, completed=done, total=max(total, 1), rate=rate)

    def on_node(node: str, update: dict[str, Any]) -> None:
        line = _describe_update(node, update)
        if line:
            bars.console.print(line)

    with bars:
        yield on_progress, on_node


def _describe_update(node: str, update: dict[str, Any]) -> str | None:
    if node == "plan" and update.get("plans"):
        plan = update["plans"][-1]
        tasks = ", ".join(f"{t['generator']} x{t['num_structures']}" for t in plan["tasks"])
        return f"[bold]round {plan['round']}[/]: {tasks}"
    if node == "retrieve" and update.get("reference_name"):
        known = len(update.get("references", []))
        return f"  reference: {update['reference_name']} ({known} known phases)"
    if node == "generate":
        if update.get("stop_reason"):
            return f"  [red]{escape(update['stop_reason'])}[/]"
        return f"  generated {len(update.get('round_ids', []))} new structures"
    if node == "validate":
        results = update.get("results", [])
        passed = sum(r["passed"] for r in results)
        hits = sum(r["meets_hard"] for r in results)
        return f"  validated {len(results)}: {passed} passed every stage, {hits} meet every target"
    if node == "reflect" and update.get("memos"):
        memo = update["memos"][-1]
        text = "; ".join(memo["changes"])
        stop = f" -> stop: {memo['stop_reason']}" if memo["stop_reason"] else ""
        return f"  reflect: {escape(text + stop)}"
    return None


def _print_outcome(outcome: RunOutcome) -> int:
    """Print the ranked table; exit code 1 when nothing could be validated."""
    from crystalforge.agent.report import table_rows

    if outcome.pending_review is not None:
        _print_proposals(outcome.pending_review)
        run = outcome.run_dir
        console.print(
            f"[bold]Waiting for review.[/] Open the review page with "
            f"`crystalforge review {run}`, or decide here: `crystalforge review {run} "
            f'--approve 1 --reject 2 --note 2 "why"` (`--skip` continues without decisions).'
        )
        return EXIT_OK
    rows = table_rows(outcome.ranked)
    if not rows:
        err_console.print(
            f"[bold red]No candidate was validated:[/] {escape(outcome.stop_reason)}. "
            f"Report: {outcome.report_path}"
        )
        return EXIT_FAILED
    table = Table(title=f"Ranked candidates (reference: {outcome.reference_name})")
    for column in ("#", "id", "formula", "SG", "atoms", "E_hull eV/atom"):
        table.add_column(column, no_wrap=True)
    table.add_column("status", overflow="fold")
    for row in rows[:15]:
        table.add_row(
            str(row["rank"]),
            row["id"],
            row["formula"],
            str(row["space_group"] or ""),
            str(row["n_atoms"]),
            row["e_above_hull"],
            escape(row["short_status"]),
        )
    console.print(table)
    if len(rows) > 15:
        console.print(f"{len(rows) - 15} more in {outcome.run_dir / 'ranked.csv'}")
    console.print(
        f"[bold]{len(outcome.hits)}[/] distinct candidates meet every hard constraint "
        f"(wanted {outcome.spec.num_candidates}). Stop: {escape(outcome.stop_reason)}."
    )
    console.print(f"Report: {outcome.report_path}")
    return EXIT_OK


def _print_proposals(payload: dict[str, Any]) -> None:
    """The pending proposals of a review, as a table."""
    table = Table(title=f"Round {payload['round']} proposals of {payload['run']}")
    for column in ("#", "id", "formula", "SG", "atoms", "E_hull eV/atom", "±", "hit"):
        table.add_column(column, no_wrap=True)
    table.add_column("properties", overflow="fold")
    for p in payload["proposals"]:
        unc = p.get("uncertainty") or {}
        spread = unc.get("e_hull_disagreement")
        props = ", ".join(f"{k} {v:.3g}" for k, v in p["properties"].items())
        table.add_row(
            str(p["index"]),
            p["id"],
            p["formula"],
            str(p["space_group"] or ""),
            str(p["n_atoms"]),
            "" if p["e_above_hull"] is None else f"{p['e_above_hull']:.3f}",
            ""
            if spread is None
            else f"{spread:.3f}" + (" flips" if unc.get("verdict_flips") else ""),
            "yes" if p["meets_hard"] else "no",
            escape(props + (f" [{p['generator']}]" if p.get("generator") else "")),
        )
    # Piped output has no terminal width; keep the properties column readable in logs.
    console.print(table, width=None if console.is_terminal else 160)
    if payload.get("error"):
        console.print(f"[red]last answer not applied:[/] {escape(payload['error'])}")


def _review(args: argparse.Namespace) -> int:
    from crystalforge.agent.nodes.review import decisions_from_refs
    from crystalforge.agent.runner import pending_review, run_values, submit_review

    pending = pending_review(args.run_dir)
    deciding = bool(args.approve or args.reject or args.note or args.skip)
    if pending is None:
        if deciding:
            raise ReviewError(f"run {str(args.run_dir)!r} is not waiting for a review")
        values = run_values(args.run_dir)
        state = "finished" if values.get("report_path") else "not waiting for review"
        console.print(f"Run {args.run_dir} is {state}; nothing to review.")
        if values.get("report_path"):
            console.print(f"Report: {values['report_path']}")
        return EXIT_OK
    if args.list and not deciding:
        _print_proposals(pending)
        return EXIT_OK
    if deciding:
        response = decisions_from_refs(
            pending["proposals"],
            approve=args.approve,
            reject=args.reject,
            notes=[(ref, text) for ref, text in args.note],
        )
        console.print(f"[bold]crystalforge[/] applying {len(response.decisions)} decisions")
        with _progress() as (progress_cb, on_node):
            outcome = submit_review(args.run_dir, response, progress=progress_cb, on_node=on_node)
        return _print_outcome(outcome)
    from crystalforge.agent.review_server import serve

    serve(args.run_dir, port=args.port, announce=console.print)
    return EXIT_OK


def _chat(options: dict[str, Any]) -> int:
    from crystalforge.agent.chat import ChatOptions, run_chat

    chat_options = ChatOptions.from_cli(options)

    def lines() -> Iterator[str]:
        while True:
            try:
                yield console.input("[bold cyan]you>[/] ")
            except EOFError:
                return

    run_chat(
        lines(),
        lambda text: console.print(text, markup=False, highlight=False),
        options=chat_options,
    )
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
