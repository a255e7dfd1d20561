"""Graph state: small JSON-ready summaries and ids, never structures.

``InputState`` is what callers pass in; ``State`` is what the nodes share. List fields with an
``operator.add`` reducer accumulate across rounds; the rest are replaced by the node that
returns them. Structures live in the run's :class:`~crystalforge.memory.run_store.RunStore`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypedDict


class CandidateSummary(TypedDict):
    """One validated candidate as the planner and the report see it."""

    id: str
    formula: str
    round: int
    generator: str
    n_atoms: int
    space_group: int | None
    """Space group of the final (relaxed) structure at symprec 0.1, when known."""
    passed: bool
    """Every validation stage passed."""
    failed_stage: str | None
    reason: str | None
    e_above_hull: float | None
    """eV/atom against the run's reference hull."""
    formation_energy: float | None
    """eV/atom."""
    energy_per_atom: float | None
    """CHGNet total energy, eV/atom."""
    converged: bool | None
    meets_hard: bool
    """Passed validation and meets every evaluable hard target of the spec."""
    unmet: list[str]
    """Hard targets it misses, as text."""
    unevaluated: list[str]
    """Targets no installed predictor can evaluate."""
    score: float
    """Ranking key, lower is better: summed distance outside the targets, then e_above_hull."""
    seconds: float
    """Validation time spent on it (relaxation), seconds."""
    review: NotRequired[Literal["approved", "rejected"]]
    """What a reviewer decided (set by :func:`~crystalforge.agent.nodes.review.apply_reviews`)."""
    review_note: NotRequired[str]
    """The reviewer's notes on it, joined."""


class ReviewRecord(TypedDict):
    """One reviewer decision on one candidate (the review node stores these)."""

    round: int
    id: str
    formula: str
    action: Literal["approve", "reject", "annotate"]
    note: str | None
    at: str
    """UTC time of the decision, ISO 8601."""


class GenerationTask(TypedDict):
    """One call to one generator."""

    generator: str
    """Registry name."""
    num_structures: int
    compositions: list[str]
    """Reduced formulae to focus on (empty: the whole space of the spec)."""
    space_groups: list[int]
    """Space groups to focus on (empty: the spec's, or any)."""
    purpose: str
    """Why: "explore" the spec's space, or "exploit" what worked."""
    parents: NotRequired[list[str]]
    """Candidate ids to substitute into or mutate (the best near-misses), when any."""
    max_atoms: NotRequired[int]
    """A tighter atoms-per-cell limit than the spec's, when the reflection asked for one."""
    elements: NotRequired[list[str]]
    """A narrower element pool than the spec's (restricting the chemical system), when any."""


class Plan(TypedDict):
    """What the next round will do."""

    round: int
    seed: int
    tasks: list[GenerationTask]
    max_atoms: int
    rationale: list[str]
    references: NotRequired[list[str]]
    """Reduced formulae of reference materials the (LLM) planner asked to see; the retrieve
    node adds the known phases among them to ``State.references``."""


class Memo(TypedDict):
    """The reflection after a round: what failed, why, and what to change."""

    round: int
    evaluated: int
    hits: int
    """Candidates meeting every hard target so far (whole run)."""
    new_hits: int
    failures: dict[str, int]
    """Validation stage (or unmet target) -> count this round."""
    yield_by_generator: dict[str, float]
    """Hits among validated structures per generator, this round."""
    generator_stats: dict[str, dict[str, float]]
    """Generator -> samples, survivors (hits) and validation seconds this round (router input)."""
    best: list[str]
    """Ids of the best near-misses, best first."""
    changes: list[str]
    """What the next plan should do differently, in words."""
    focus_compositions: list[str]
    focus_space_groups: list[int]
    stop_reason: str | None
    prefer_generator: NotRequired[str | None]
    """The family with the best yield this round: it gets the exploit share."""
    avoid_generators: NotRequired[list[str]]
    """Families whose every structure this round was rejected before relaxation."""
    parents: NotRequired[list[str]]
    """Near-miss candidate ids to substitute into next round."""
    max_atoms: NotRequired[int | None]
    """Atoms-per-cell limit for the next round when larger cells kept failing."""
    focus_elements: NotRequired[list[str]]
    """Elements the near-misses use: the next round's narrower pool (open element pools only)."""
    source: NotRequired[str]
    """``rules`` or ``llm``: who wrote the memo."""


@dataclass
class InputState:
    """What a caller passes to start a run."""

    request: str = ""
    """The design request in plain language."""
    spec: dict[str, Any] | None = None
    """A pre-compiled DesignSpec (scripted campaigns); skips parsing when given."""
    notes: Annotated[list[str], operator.add] = field(default_factory=list)
    """Remarks for the report (how the request was compiled, disagreements, fallbacks)."""
    llm_tokens: int = 0
    """LLM tokens spent so far (0 with the embedded planner)."""
    llm_seconds: float = 0.0
    """Summed LLM latency so far, seconds."""
    llm_calls: int = 0
    """LLM requests so far."""

    def llm_cost(self, *, tokens: int, seconds: float, calls: int) -> dict[str, Any]:
        """The state update that adds one model exchange's cost to the run's LLM counters."""
        return {
            "llm_tokens": self.llm_tokens + tokens,
            "llm_seconds": self.llm_seconds + seconds,
            "llm_calls": self.llm_calls + calls,
        }


@dataclass
class State(InputState):
    """Everything the nodes share."""

    round: int = 0
    plans: Annotated[list[Plan], operator.add] = field(default_factory=list)
    """One plan per round; the last is the current one."""
    reference_name: str | None = None
    """Name of the reference hull every stability number is measured against."""
    references: list[dict[str, Any]] = field(default_factory=list)
    """Known phases of the chemical system (id, formula, e_above_hull, ...)."""
    round_ids: list[str] = field(default_factory=list)
    """Candidates generated in the current round."""
    candidate_ids: Annotated[list[str], operator.add] = field(default_factory=list)
    results: Annotated[list[CandidateSummary], operator.add] = field(default_factory=list)
    memos: Annotated[list[Memo], operator.add] = field(default_factory=list)
    reviews: Annotated[list[ReviewRecord], operator.add] = field(default_factory=list)
    """Reviewer decisions, in the order given (the review node, with ``Context.review`` on)."""
    validator_calls: int = 0
    """CHGNet relaxations so far."""
    elapsed_s: float = 0.0
    """Working time so far (generation and validation), excluding time the run was stopped."""
    stop_reason: str | None = None
    final_answer: str | None = None
    """The answer to the request (LLM-written and provenance-gated, or composed by rules)."""
    report_path: str | None = None
    recalled: list[dict[str, Any]] = field(default_factory=list)
    """Earlier campaigns with a similar spec, recalled from the memory store before round 0."""
    memory_yields: list[dict[str, Any]] = field(default_factory=list)
    """Generator yields of earlier similar campaigns (``CampaignYields.to_json``), recalled
    before round 0: the router's prior in every round."""
