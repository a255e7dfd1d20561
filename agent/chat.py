"""``crystalforge chat``: a multi-turn conversation over design runs.

:func:`run_chat` reads user turns from any iterator and writes replies through a callback, so
the CLI drives it from stdin and tests from a list. Each turn is interpreted by
:func:`interpret`, a small grammar rather than keyword guessing:

- ``quit``/``exit``; ``help``;
- while a run waits for review: ``approve 1 3, reject 2: too much Mn; note 4: check Mn``,
  ``approve all``, ``skip`` (references are list numbers, ids or id prefixes);
- ``show me the two most stable`` / ``show the top 5`` / ``list the hits``: answered from the
  current run's data, ranked by energy above the hull;
- ``why was candidate 3 rejected?`` / ``why did c-0123abcd fail?``: the reviewer's note or the
  failed validation stage and its reason, from the run store;
- ``new request: ...`` starts over; anything else refines the current spec with
  :func:`~crystalforge.agent.request_parser.refine_spec` ("now without manganese") and reruns,
  or, when there is no spec yet, is compiled as a request.

A request that needs a clarifying question gets it back; the next turn answers it. The whole
conversation (spec, current run, pending question, what "candidate 3" refers to) is saved to a
session file after every turn, so ``crystalforge chat --resume <session>`` continues it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crystalforge.core.errors import ClarificationNeeded, CrystalForgeError, RequestError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from crystalforge.agent.report import RunOutcome
    from crystalforge.agent.state import CandidateSummary
    from crystalforge.core.spec import DesignSpec

logger = logging.getLogger(__name__)

IntentKind = Literal["quit", "help", "review", "show", "why", "new", "refine"]

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "a couple": 2, "a few": 3,
}  # fmt: skip

_QUIT_RE = re.compile(r"^\s*(?:quit|exit|bye|q)\s*[.!]?\s*$", re.IGNORECASE)
_HELP_RE = re.compile(r"^\s*(?:help|\?)\s*$", re.IGNORECASE)
_NEW_RE = re.compile(r"^\s*(?:new request|start over|new design)\s*[:,-]?\s*(?P<text>.*)$", re.I)
_VERB = r"(?:approve|accept|reject|note|annotate)"
_REVIEW_START_RE = re.compile(rf"^\s*(?:{_VERB}|skip|continue)\b", re.IGNORECASE)
_REVIEW_CLAUSE_RE = re.compile(
    rf"(?P<verb>{_VERB})\s+(?P<refs>all|[\w-]+(?:(?:\s*,\s*|\s+and\s+|\s+)(?!{_VERB}\b)[\w-]+)*)"
    rf"(?:\s*:\s*(?P<note>.*?))?\s*(?=(?:[,;.]|\s+and)\s*{_VERB}\b|[;.]?\s*$)",
    re.IGNORECASE,
)
_SHOW_RE = re.compile(
    r"^\s*(?:please\s+)?(?:show|list|give|tell)\b(?:\s+me)?(?:\s+the)?\s*(?:top\s+)?"
    r"(?P<n>\d+|one|two|three|four|five|six|seven|eight|nine|ten|a couple|a few)?\s*"
    r"(?P<what>.*)$",
    re.IGNORECASE,
)
_WHY_RE = re.compile(
    r"^\s*why\b.*?(?:candidate|number|no\.?|#)?\s*(?P<ref>c-[0-9a-f]{4,}|\d+)\b",
    re.IGNORECASE,
)

HELP = """\
Start with a design request, e.g. "a stable Li-Mn-O oxide with at most 12 atoms".
Then refine it ("now without manganese", "band gap above 1 eV", "find 5 candidates"),
ask about the results ("show me the two most stable", "why was candidate 3 rejected?"),
or start over ("new request: ..."). When a run waits for review: "approve 1 3, reject 2: too
much Mn", "note 4: check the Mn site", "approve all" or "skip". "quit" leaves; the
conversation is saved and continues with `crystalforge chat --resume <session file>`."""


@dataclass(frozen=True)
class Intent:
    """What one user turn asks for."""

    kind: IntentKind
    text: str = ""
    count: int | None = None
    ref: str | None = None
    approve: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    notes: tuple[tuple[str, str], ...] = ()


def _refs(text: str) -> list[str]:
    return [r for r in re.split(r"\s*,\s*|\s+and\s+|\s+", text.strip()) if r]


def parse_review_answer(text: str) -> Intent:
    """Read "approve 1 3, reject 2: too much Mn; note 4: check Mn" into an :class:`Intent`.

    A note after ``reject``/``approve`` refs is the reason for each of them; ``note``/``annotate``
    attaches it alone. ``all`` stands for every proposal. ``skip``/``continue`` decide nothing.

    Raises:
        RequestError: Text that starts like a review answer but has an unreadable clause.
    """
    if re.match(r"^\s*(?:skip|continue)\b", text, re.IGNORECASE):
        return Intent(kind="review", text=text)
    approve: list[str] = []
    reject: list[str] = []
    notes: list[tuple[str, str]] = []
    consumed = 0
    for match in _REVIEW_CLAUSE_RE.finditer(text):
        between = text[consumed : match.start()]
        if re.search(r"\w", re.sub(r"\band\b", "", between)):
            raise RequestError(f"I could not read {between.strip()!r} in the review answer")
        consumed = match.end()
        verb = match["verb"].lower()
        refs = _refs(match["refs"])
        note = (match["note"] or "").strip()
        if verb in ("approve", "accept"):
            approve += refs
        elif verb == "reject":
            reject += refs
        elif not note:
            raise RequestError(f"'{match.group(0).strip()}' has no note; write 'note 4: text'")
        if note:
            notes += [(ref, note) for ref in refs]
    rest = text[consumed:]
    if re.search(r"\w", rest) or not (approve or reject or notes):
        raise RequestError(
            f"I could not read the review answer {text!r}; e.g. 'approve 1 3, reject 2: too "
            "much Mn', 'note 4: check Mn', 'approve all' or 'skip'"
        )
    return Intent(
        kind="review",
        text=text,
        approve=tuple(approve),
        reject=tuple(reject),
        notes=tuple(notes),
    )


def interpret(text: str, *, has_spec: bool, awaiting_review: bool) -> Intent:
    """Classify one user turn (see the module docstring for the grammar)."""
    if _QUIT_RE.match(text):
        return Intent(kind="quit")
    if _HELP_RE.match(text):
        return Intent(kind="help")
    if awaiting_review and _REVIEW_START_RE.match(text):
        return parse_review_answer(text)
    if has_spec:
        show = _SHOW_RE.match(text)
        if show and re.search(
            r"stable|best|top|hits?|candidates?|results?|proposals?", show["what"] + text, re.I
        ):
            n = show["n"]
            count = None if n is None else int(n) if n.isdigit() else _NUMBER_WORDS[n.lower()]
            return Intent(kind="show", text=show["what"], count=count)
        why = _WHY_RE.match(text)
        if why:
            return Intent(kind="why", ref=why["ref"])
    new = _NEW_RE.match(text)
    if new:
        return Intent(kind="new", text=new["text"].strip())
    return Intent(kind="refine" if has_spec else "new", text=text.strip())


@dataclass(kw_only=True)
class ChatOptions:
    """How the chat's design runs are made (the ``design`` command's options)."""

    runs_dir: Path = Path("runs")
    data_dir: Path | None = None
    use_reference_data: bool = True
    review: bool = False
    llm: Literal["embedded", "openai"] | None = None
    model: str | None = None
    base_url: str | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] | None = None
    relaxer: Literal["chgnet", "fake"] = "chgnet"
    generators: tuple[str, ...] | None = None
    candidates: int | None = None
    max_atoms: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    """Budget fields overriding the request's (``max_rounds``, ``samples_per_round``, ...)."""
    session: Path | None = None
    """Session file (default: ``chat-<UTC time>.json`` in ``runs_dir``)."""
    resume: Path | None = None
    """A session file to continue."""

    @classmethod
    def from_cli(cls, options: dict[str, Any]) -> ChatOptions:
        """From the ``chat`` command's parsed arguments."""
        from crystalforge.core.settings import Settings

        settings = Settings()
        budget = {
            "max_rounds": options.get("rounds"),
            "samples_per_round": options.get("samples"),
            "max_validator_calls": options.get("max_relaxations"),
            "max_wall_time_s": (options["max_minutes"] * 60)
            if options.get("max_minutes")
            else None,
        }
        return cls(
            runs_dir=settings.runs_dir,
            data_dir=options.get("data_dir"),
            use_reference_data=not options.get("no_reference_data"),
            review=bool(options.get("review")),
            llm=options.get("llm"),
            model=options.get("model"),
            base_url=options.get("base_url"),
            seed=options.get("seed") or 0,
            device=options.get("device"),
            generators=options.get("generators"),
            candidates=options.get("candidates"),
            max_atoms=options.get("max_atoms"),
            budget={k: v for k, v in budget.items() if v is not None},
            session=options.get("session"),
            resume=options.get("resume"),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (no secrets live here)."""
        data = asdict(self)
        for key in ("runs_dir", "data_dir", "session", "resume"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["generators"] = list(self.generators) if self.generators else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatOptions:
        """Inverse of :meth:`to_json`."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("runs_dir", "data_dir", "session", "resume"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if values.get("generators"):
            values["generators"] = tuple(values["generators"])
        return cls(**values)


@dataclass(kw_only=True)
class ChatSession:
    """The durable state of one conversation."""

    path: Path
    options: ChatOptions
    spec: dict[str, Any] | None = None
    """The current DesignSpec (JSON)."""
    run_dir: str | None = None
    """The current run folder."""
    runs: list[str] = field(default_factory=list)
    pending_question: dict[str, str] | None = None
    """``{"request", "question"}`` while a clarifying question waits for its answer."""
    listing: list[str] = field(default_factory=list)
    """Candidate ids of the last list shown, so "candidate 3" means its third row."""
    history: list[dict[str, str]] = field(default_factory=list)

    def save(self) -> None:
        """Write the session file atomically."""
        from crystalforge.memory.run_store import write_json_atomic

        write_json_atomic(
            self.path,
            {
                "version": 1,
                "options": self.options.to_json(),
                "spec": self.spec,
                "run_dir": self.run_dir,
                "runs": self.runs,
                "pending_question": self.pending_question,
                "listing": self.listing,
                "history": self.history,
            },
        )

    @classmethod
    def load(cls, path: Path) -> ChatSession:
        """A saved session.

        Raises:
            RequestError: The file is missing or not a chat session.
        """
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise RequestError(f"chat session {str(path)!r} does not exist") from None
        except json.JSONDecodeError as exc:
            raise RequestError(f"chat session {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != 1:
            raise RequestError(f"{str(path)!r} is not a crystalforge chat session")
        return cls(
            path=Path(path),
            options=ChatOptions.from_json(data.get("options") or {}),
            spec=data.get("spec"),
            run_dir=data.get("run_dir"),
            runs=list(data.get("runs") or []),
            pending_question=data.get("pending_question"),
            listing=list(data.get("listing") or []),
            history=list(data.get("history") or []),
        )


class Chat:
    """One conversation: turns in, replies out; the session file is kept up to date."""

    def __init__(self, session: ChatSession, output: Callable[[str], None]) -> None:
        self.session = session
        self._out = output

    # -- plumbing ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Send a reply (and keep it in the history)."""
        self.session.history.append({"role": "assistant", "text": text})
        self._out(text)

    def pending(self) -> dict[str, Any] | None:
        """The review payload the current run waits on, if any."""
        from crystalforge.agent.runner import pending_review

        if not self.session.run_dir or not Path(self.session.run_dir).exists():
            return None
        return pending_review(Path(self.session.run_dir))

    def _results(self) -> list[CandidateSummary]:
        from crystalforge.agent.nodes.review import apply_reviews
        from crystalforge.agent.runner import run_values

        if not self.session.run_dir:
            return []
        values = run_values(Path(self.session.run_dir))
        return apply_reviews(list(values.get("results") or []), list(values.get("reviews") or []))

    # -- turns ------------------------------------------------------------------------------
    def handle(self, text: str) -> bool:
        """Answer one user turn; False when the user leaves."""
        self.session.history.append({"role": "user", "text": text})
        try:
            return self._handle(text)
        except ClarificationNeeded as exc:
            self.say(exc.question)
        except CrystalForgeError as exc:
            self.say(f"Sorry: {exc}")
        finally:
            self.session.save()
        return True

    def _handle(self, text: str) -> bool:
        if not text.strip():
            return True
        pending = self.pending()
        if self.session.pending_question is not None and not _QUIT_RE.match(text):
            self._answer_question(text)
            return True
        intent = interpret(
            text, has_spec=self.session.spec is not None, awaiting_review=bool(pending)
        )
        if intent.kind == "quit":
            self.say(f"Bye. Continue later with `crystalforge chat --resume {self.session.path}`.")
            return False
        if intent.kind == "help":
            self.say(HELP)
        elif intent.kind == "review":
            assert pending is not None
            self._review(intent, pending)
        elif intent.kind == "show":
            self._show(intent.count or 5, intent.text)
        elif intent.kind == "why":
            self._why(intent.ref or "")
        elif intent.kind == "new":
            self._new_request(intent.text)
        else:
            self._refine(intent.text)
        return True

    def _compile(self, text: str) -> tuple[DesignSpec, list[str], int]:
        from crystalforge.agent.api import compile_request

        backend = None
        options = self.session.options
        if options.llm == "openai":
            from crystalforge.agent.llm.openai_backend import OpenAIBackend
            from crystalforge.core.settings import Settings

            settings = Settings()
            backend = OpenAIBackend(
                model_name=options.model or settings.llm_model,
                base_url=options.base_url or settings.llm_base_url,
                api_key=settings.openai_api_key,
            )
        compiled = compile_request(
            text, num_candidates=options.candidates, max_atoms=options.max_atoms, backend=backend
        )
        return (
            compiled.spec,
            [f"request compiled by {compiled.source}", *compiled.notes],
            compiled.tokens,
        )

    def _new_request(self, text: str) -> None:
        if not text:
            self.say("What should I design? e.g. 'a stable Li-Mn-O oxide with at most 12 atoms'.")
            return
        try:
            spec, notes, tokens = self._compile(text)
        except ClarificationNeeded as exc:
            self.session.pending_question = {"request": text, "question": exc.question}
            self.say(exc.question)
            return
        self._run(spec, notes=notes, tokens=tokens)

    def _answer_question(self, answer: str) -> None:
        from crystalforge.agent.request_parser import parse_request

        assert self.session.pending_question is not None
        original = self.session.pending_question["request"]
        question = self.session.pending_question["question"]
        attempts = [answer]
        unchosen = [
            q for q in re.findall(r"'([^']+)'", question)
            if q.lower() in original.lower() and q.lower() not in answer.lower()
        ]  # fmt: skip
        if unchosen:
            trimmed = original
            for fragment in unchosen:
                trimmed = re.sub(re.escape(fragment), " ", trimmed, flags=re.IGNORECASE)
            attempts.append(f"{trimmed.strip()}. {answer}")
        attempts.append(f"{original}. {answer}")
        for attempt in attempts:
            try:
                parse_request(attempt)
            except RequestError:
                continue
            self.session.pending_question = None
            spec, notes, tokens = self._compile(attempt)
            self._run(spec, notes=[*notes, f"clarified: {question} -> {answer}"], tokens=tokens)
            return
        self.say(f"I still cannot tell. {question} (Or write the whole request again.)")

    def _refine(self, text: str) -> None:
        from crystalforge.agent.request_parser import refine_spec
        from crystalforge.core.spec import DesignSpec

        assert self.session.spec is not None
        spec = DesignSpec.model_validate(self.session.spec)
        try:
            refined, changes = refine_spec(spec, text)
        except ClarificationNeeded:
            raise
        except RequestError as exc:
            if _looks_like_request(text):
                self._new_request(text)
                return
            self.say(f"Sorry: {exc}")
            return
        self.say("Refined the request: " + "; ".join(changes) + ". Running it again.")
        self._run(refined, notes=[f"refined in chat: {text}", *[f"change: {c}" for c in changes]])

    # -- runs -------------------------------------------------------------------------------
    def _context(self, spec: DesignSpec) -> Any:
        from crystalforge.agent.context import Context
        from crystalforge.agent.runner import new_run_dir
        from crystalforge.core.settings import Settings
        from crystalforge.memory.reference_data import resolve_data_dir

        options = self.session.options
        settings = Settings()
        run_dir = new_run_dir(options.runs_dir, spec.request)
        data_dir = resolve_data_dir(options.data_dir) if options.use_reference_data else None
        context = Context.from_settings(
            settings,
            run_dir=run_dir,
            seed=options.seed,
            device=options.device,
            llm=options.llm,
            llm_model=options.model,
            llm_base_url=options.base_url,
            review=options.review,
            relaxer=options.relaxer,
            generators=options.generators,
        )
        return replace(context, data_dir=data_dir)

    def _run(self, spec: DesignSpec, *, notes: list[str], tokens: int = 0) -> None:
        from crystalforge.agent.runner import start_run
        from crystalforge.core.spec import Budget

        if self.session.options.budget:
            budget = Budget.model_validate(
                {**spec.budget.model_dump(), **self.session.options.budget}
            )
            spec = spec.model_copy(update={"budget": budget})
        context = self._context(spec)
        self.say("Design spec:\n  " + "\n  ".join(spec.describe()))
        self.say(f"Running in {context.run_dir} ...")
        self.session.spec = spec.model_dump(mode="json")
        self.session.run_dir = str(context.run_dir)
        self.session.runs.append(str(context.run_dir))
        self.session.save()
        outcome = start_run(spec, context, notes=notes, llm_tokens=tokens, on_node=self._on_node)
        self._report(outcome)

    def _on_node(self, node: str, update: dict[str, Any]) -> None:
        if node == "plan" and update.get("plans"):
            plan = update["plans"][-1]
            tasks = ", ".join(f"{t['generator']} x{t['num_structures']}" for t in plan["tasks"])
            self._out(f"  round {plan['round']}: {tasks}")

    def _report(self, outcome: RunOutcome) -> None:
        if outcome.pending_review is not None:
            self.show_proposals(outcome.pending_review)
            return
        self.say(
            f"Done ({outcome.stop_reason}). {len(outcome.hits)} distinct candidates meet every "
            f"hard constraint (wanted {outcome.spec.num_candidates}). Report: {outcome.report_path}"
        )
        self._show(5, "")

    def show_proposals(self, payload: dict[str, Any]) -> None:
        """List a review's proposals and how to answer."""
        lines = [f"Round {payload['round']} is waiting for your review:"]
        for p in payload["proposals"]:
            unc = p.get("uncertainty") or {}
            spread = unc.get("e_hull_disagreement")
            extra = f" ±{spread:.3f}" if spread is not None else ""
            lines.append(
                f"  {p['index']}. {p['formula']} {p['id']} SG {p['space_group'] or '?'}, "
                f"E_hull {_f(p['e_above_hull'])} eV/atom{extra}"
                f"{' (meets every target)' if p['meets_hard'] else ''} [{p['generator']}]"
            )
        if payload.get("error"):
            lines.append(f"  (last answer not applied: {payload['error']})")
        lines.append("Answer e.g. 'approve 1 3, reject 2: too much Mn', 'note 4: ...' or 'skip'.")
        self.session.listing = [p["id"] for p in payload["proposals"]]
        self.say("\n".join(lines))

    def _review(self, intent: Intent, pending: dict[str, Any]) -> None:
        from crystalforge.agent.nodes.review import decisions_from_refs
        from crystalforge.agent.runner import submit_review

        proposals = pending["proposals"]
        approve = (
            [str(p["index"]) for p in proposals] if "all" in intent.approve else intent.approve
        )
        reject = [str(p["index"]) for p in proposals] if "all" in intent.reject else intent.reject
        notes = [(ref, note) for ref, note in intent.notes if ref != "all"]
        response = decisions_from_refs(
            proposals, approve=list(approve), reject=list(reject), notes=notes
        )
        assert self.session.run_dir is not None
        summary = ", ".join(f"{d.action} {d.id}" for d in response.decisions) or "no decisions"
        self.say(f"Applying: {summary}. Continuing the run ...")
        outcome = submit_review(Path(self.session.run_dir), response, on_node=self._on_node)
        self._report(outcome)

    # -- questions about the run ------------------------------------------------------------
    def _show(self, count: int, what: str) -> None:
        results = self._results()
        if re.search(r"\bhits?\b", what, re.IGNORECASE):
            pool = [r for r in results if r["meets_hard"]]
        else:
            pool = [r for r in results if r["passed"] and r["e_above_hull"] is not None]
        ranked = sorted(pool, key=lambda r: float(r["e_above_hull"] or 0.0))[:count]
        if not ranked:
            self.say("No validated candidate to show yet.")
            return
        self.session.listing = [r["id"] for r in ranked]
        lines = [f"The {len(ranked)} most stable (lowest energy above hull):"]
        for i, r in enumerate(ranked, start=1):
            status = r.get("review") or ("meets every target" if r["meets_hard"] else "misses")
            lines.append(
                f"  {i}. {r['formula']} {r['id']} SG {r['space_group'] or '?'}, "
                f"{r['n_atoms']} atoms, E_hull {_f(r['e_above_hull'])} eV/atom ({status})"
            )
        self.say("\n".join(lines))

    def _why(self, ref: str) -> None:
        results = {r["id"]: r for r in self._results()}
        cid = ref
        if ref.isdigit():
            index = int(ref)
            if not 1 <= index <= len(self.session.listing):
                self.say(
                    f"There is no candidate {index} in the last list "
                    f"({len(self.session.listing)} shown)."
                )
                return
            cid = self.session.listing[index - 1]
        matches = [i for i in results if i.startswith(cid)]
        if len(matches) != 1:
            self.say(f"I do not know candidate {ref!r} in the current run.")
            return
        r = results[matches[0]]
        name = f"{r['formula']} ({r['id']})"
        if r.get("review") == "rejected":
            note = r.get("review_note")
            self.say(
                f"{name} was rejected by the reviewer" + (f": {note}" if note else " (no note).")
            )
        elif not r["passed"]:
            self.say(f"{name} was rejected by the {r['failed_stage']} stage: {r['reason']}.")
        elif r["unmet"]:
            self.say(f"{name} passed validation but misses: {'; '.join(r['unmet'])}.")
        else:
            self.say(
                f"{name} was not rejected: it passed every stage (E_hull "
                f"{_f(r['e_above_hull'])} eV/atom)"
                + (f"; reviewer note: {r.get('review_note')}" if r.get("review_note") else "")
                + "."
            )


def _f(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _looks_like_request(text: str) -> bool:
    """Whether ``text`` compiles on its own as a full request (it names chemistry)."""
    from crystalforge.agent.request_parser import parse_request

    try:
        parse_request(text)
    except RequestError:
        return False
    return True


def run_chat(
    inputs: Iterable[str],
    output: Callable[[str], None],
    *,
    options: ChatOptions | None = None,
) -> ChatSession:
    """Hold a conversation until the inputs end or the user quits.

    Args:
        inputs: User turns (the CLI reads stdin; tests pass a list).
        output: Where replies go, one string per reply.
        options: How runs are made; ``options.resume`` continues a saved session and
            ``options.session`` names the file of a new one.

    Returns:
        The session (also saved to ``session.path``).
    """
    options = options or ChatOptions()
    if options.resume is not None:
        session = ChatSession.load(options.resume)
        output(f"Continuing the conversation in {session.path}.")
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        path = options.session or options.runs_dir / f"chat-{stamp}.json"
        session = ChatSession(path=path, options=options)
        output(
            "crystalforge chat: describe the crystals you want ('help' for more, 'quit' to leave)."
            f" Session: {path}"
        )
    chat = Chat(session, output)
    pending = chat.pending()
    if pending is not None:
        chat.show_proposals(pending)
    elif session.pending_question:
        output(session.pending_question["question"])
    session.save()
    for line in inputs:
        if not chat.handle(line):
            break
    session.save()
    return session
