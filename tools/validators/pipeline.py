"""The validation pipeline: cheap stages on the whole batch, expensive ones chunk by chunk.

Validators run in order, cheapest first, and a candidate that fails a stage goes no further. The
cheap prefix (every stage before the first expensive one) runs on the whole batch, so that
batch-level checks such as uniqueness see every candidate. The remaining stages run on
``chunk_size`` candidates at a time, and ``on_result`` is called for each candidate as soon as
its last stage is done: a caller that persists results there loses at most one chunk when the
run is killed.

After each stage the candidate is evolved with the verdict's structure (when the stage changed
it, e.g. relaxation) and its metrics merged into ``candidate.properties``; metric keys are
unique across the default stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crystalforge.core.candidate import Verdict
from crystalforge.core.errors import ValidationFailed
from crystalforge.tools.validators.chgnet import CHGNetRelaxer, DeviceChoice
from crystalforge.tools.validators.composition import SmactValidator
from crystalforge.tools.validators.hull import HullValidator
from crystalforge.tools.validators.properties import PropertyValidator
from crystalforge.tools.validators.sanity import SanityValidator
from crystalforge.tools.validators.symmetry import SymmetryValidator
from crystalforge.tools.validators.uncertainty import ModelDisagreementValidator
from crystalforge.tools.validators.uniqueness import NoveltyValidator, UniquenessValidator

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pymatgen.core import Structure

    from crystalforge.core.candidate import Candidate
    from crystalforge.memory.base import StructureIndex
    from crystalforge.memory.reference_data import ReferenceHull
    from crystalforge.tools.validators.base import Validator

logger = logging.getLogger(__name__)


BUDGET_STAGE = "budget"
"""Name of the verdict given to candidates left out of the expensive stages by a budget."""

EXPENSIVE_STAGES = frozenset({"chgnet_relax"})
"""Validator names treated as expensive even without an ``expensive = True`` attribute."""


def is_expensive(stage: Validator) -> bool:
    """Whether a stage runs chunk by chunk (``stage.expensive`` or a name in EXPENSIVE_STAGES)."""
    return bool(getattr(stage, "expensive", False)) or stage.name in EXPENSIVE_STAGES


@dataclass(frozen=True, kw_only=True)
class CandidateResult:
    """The outcome of validating one candidate."""

    candidate: Candidate
    """The final candidate: relaxed structure (if it got that far) and merged properties."""
    verdicts: tuple[Verdict, ...]
    """One verdict per stage that ran, in stage order."""
    passed: bool
    """Whether every stage passed."""
    failed_stage: str | None = None
    """Name of the stage that failed it, if any."""

    @property
    def reason(self) -> str | None:
        """The reason of the failed verdict, if any."""
        return next((v.reason for v in self.verdicts if not v.passed), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: id, formula, provenance, properties, structure and verdicts."""
        return {
            "candidate_id": self.candidate.id,
            "formula": self.candidate.formula,
            "provenance": self.candidate.provenance(),
            "properties": dict(self.candidate.properties),
            "structure": self.candidate.structure.as_dict(),
            "verdicts": [v.to_json() for v in self.verdicts],
            "passed": self.passed,
            "failed_stage": self.failed_stage,
        }


@dataclass
class _Progress:
    candidate: Candidate
    verdicts: list[Verdict] = field(default_factory=list)
    failed_stage: str | None = None

    def result(self) -> CandidateResult:
        return CandidateResult(
            candidate=self.candidate,
            verdicts=tuple(self.verdicts),
            passed=self.failed_stage is None,
            failed_stage=self.failed_stage,
        )


@dataclass(frozen=True, kw_only=True)
class ValidationPipeline:
    """Validators in order, cheapest first; see the module docstring for the schedule."""

    stages: Sequence[Validator]
    chunk_size: int = 2
    """Candidates per chunk of the expensive stages."""
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    """Called as ``progress(done, total)`` whenever a candidate's result is final."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size!r}")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")

    def run(
        self,
        candidates: Sequence[Candidate],
        *,
        on_result: Callable[[CandidateResult], None] | None = None,
        max_expensive: int | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> list[CandidateResult]:
        """Validate candidates.

        Args:
            candidates: Candidates to validate.
            on_result: Called with each candidate's result as soon as it is final (failures of
                the cheap stages right after those stages, the others chunk by chunk).
            max_expensive: At most this many candidates enter the expensive stages (a budget);
                the rest get a failed ``budget`` verdict saying so. ``None``: no limit.
            stop_when: Checked between chunks of the expensive stages; when it returns True the
                run ends early and the candidates not yet validated get no result at all
                (they are left out of the returned list, not failed).

        Returns:
            One result per candidate, in input order (fewer only when ``stop_when`` fired).

        Raises:
            ValidationFailed: a stage returned the wrong number or order of verdicts.
            SetupError: a stage cannot run (e.g. a missing extra); results already passed to
                ``on_result`` stay valid.
        """
        split = next((i for i, s in enumerate(self.stages) if is_expensive(s)), len(self.stages))
        cheap, costly = self.stages[:split], self.stages[split:]
        states = [_Progress(candidate) for candidate in candidates]
        results: list[CandidateResult | None] = [None] * len(states)
        total = len(states)
        done = 0

        def finish(index: int) -> None:
            nonlocal done
            result = states[index].result()
            results[index] = result
            done += 1
            if on_result is not None:
                on_result(result)
            if self.progress is not None:
                self.progress(done, total)

        self._run_stages(cheap, states)
        pending = []
        for index, state in enumerate(states):
            if state.failed_stage is not None or not costly:
                finish(index)
            else:
                pending.append(index)
        logger.info(
            "%d of %d candidates passed %s; %d go to %s",
            len(pending),
            total,
            ", ".join(s.name for s in cheap) or "no cheap stage",
            len(pending),
            ", ".join(s.name for s in costly) or "no further stage",
        )
        if max_expensive is not None and len(pending) > max_expensive:
            for index in pending[max_expensive:]:
                state = states[index]
                state.verdicts.append(
                    Verdict(
                        candidate_id=state.candidate.id,
                        validator=BUDGET_STAGE,
                        passed=False,
                        reason=f"not relaxed: the budget of {max_expensive} more relaxations "
                        "was spent on earlier candidates",
                    )
                )
                state.failed_stage = BUDGET_STAGE
                finish(index)
            pending = pending[:max_expensive]
        for start in range(0, len(pending), self.chunk_size):
            if stop_when is not None and stop_when():
                logger.info("stopping early: %d candidates left unvalidated", len(pending) - start)
                break
            chunk = pending[start : start + self.chunk_size]
            self._run_stages(costly, [states[i] for i in chunk])
            for index in chunk:
                finish(index)
        return [r for r in results if r is not None]

    @staticmethod
    def _run_stages(stages: Sequence[Validator], states: Sequence[_Progress]) -> None:
        for stage in stages:
            active = [s for s in states if s.failed_stage is None]
            if not active:
                return
            verdicts = stage.validate([s.candidate for s in active])
            if len(verdicts) != len(active) or any(
                v.candidate_id != s.candidate.id for v, s in zip(verdicts, active, strict=False)
            ):
                raise ValidationFailed(
                    f"validator {stage.name!r} returned {len(verdicts)} verdicts for "
                    f"{len(active)} candidates, or in another order"
                )
            for state, verdict in zip(active, verdicts, strict=True):
                state.verdicts.append(verdict)
                state.candidate = state.candidate.evolve(
                    structure=verdict.structure, properties=verdict.metrics
                )
                if not verdict.passed:
                    state.failed_stage = stage.name


def default_pipeline(
    reference: ReferenceHull,
    *,
    fmax_ev_per_a: float = 0.1,
    max_steps: int = 300,
    device: DeviceChoice = "auto",
    max_e_above_hull_ev: float | None = None,
    allowed_space_groups: Sequence[int] = (),
    max_atoms: int = 200,
    known: Sequence[tuple[str, Structure]] = (),
    novelty: bool = True,
    relaxer: Validator | None = None,
    chunk_size: int = 2,
    progress: Callable[[int, int], None] | None = None,
    uncertainty: bool = True,
    properties: bool = True,
    memory: StructureIndex | None = None,
    run_id: str | None = None,
) -> ValidationPipeline:
    """The standard pipeline.

    sanity -> smact -> symmetry -> unique -> chgnet_relax -> relaxed_symmetry -> hull
    (-> properties) (-> uncertainty) (-> novelty). ``relaxed_symmetry`` records
    ``relaxed_space_group_number`` and ``relaxed_space_group_symbol`` of the relaxed structure
    and never fails; neither do ``properties`` (band gap, bulk modulus, magnetic moment,
    density; :mod:`~crystalforge.tools.validators.properties`) and ``uncertainty`` (the E_hull
    of a second CHGNet version and whether the verdict flips).

    Args:
        reference: Reference hull for ``hull`` and ``novelty``.
        fmax_ev_per_a: CHGNet force threshold, eV/Å.
        max_steps: CHGNet optimizer steps per structure.
        device: Torch device choice for CHGNet.
        max_e_above_hull_ev: Fail candidates above this, eV/atom (``None``: report only).
        allowed_space_groups: Space-group numbers accepted before relaxation (empty: any).
        max_atoms: Largest cell accepted by the sanity check.
        known: (id, structure) of earlier candidates of the run, for ``unique``.
        novelty: Add the (never failing) novelty stage.
        relaxer: Replacement for the CHGNet stage (e.g. ``FakeEnergyValidator`` in tests).
        chunk_size: Candidates per chunk of the expensive stages.
        progress: ``progress(done, total)`` as candidate results become final.
        uncertainty: Add the (never failing) model-disagreement stage: a static CHGNet 0.2.0
            energy of each relaxed structure on the same hull. Its threshold is
            ``max_e_above_hull_ev`` when set, else 0.1 eV/atom. Only with the CHGNet relaxer
            (``relaxer=None``): a replacement relaxer's energies are not CHGNet's, so comparing
            them with CHGNet 0.2.0 would measure nothing.
        memory: Memory store for ``novelty``: also compare with its references and the
            candidates of earlier runs (``None``: the reference hull's structures only).
        run_id: This run's id (its own candidates in ``memory`` are not compared).
        properties: Add the (never failing) property stage. Its CHGNet part (bulk modulus from
            an equation of state, magnetic moments) runs only with the CHGNet relaxer; with a
            replacement relaxer it computes the band gap and density only.

    Returns:
        The pipeline.
    """
    stages: list[Validator] = [
        SanityValidator(max_atoms=max_atoms),
        # Mixed valence on: the generators propose spinels (LiMn2O4, Fe3O4) on purpose, and
        # SMACT's default rejects them. Evaluation suites report the default definition too.
        SmactValidator(mixed_valence=True),
        SymmetryValidator(allowed_space_groups=tuple(allowed_space_groups)),
        UniquenessValidator(known=tuple(known)),
        relaxer or CHGNetRelaxer(fmax_ev_per_a=fmax_ev_per_a, max_steps=max_steps, device=device),
        SymmetryValidator(name="relaxed_symmetry", metric_prefix="relaxed_"),
        HullValidator(reference=reference, max_e_above_hull_ev=max_e_above_hull_ev),
    ]
    if properties:
        stages.append(PropertyValidator(device=device, eos=relaxer is None))
    if uncertainty and relaxer is None:
        stages.append(
            ModelDisagreementValidator(
                reference=reference,
                device=device,
                threshold_ev=0.1 if max_e_above_hull_ev is None else max_e_above_hull_ev,
            )
        )
    if novelty:
        stages.append(NoveltyValidator(reference=reference, store=memory, run_id=run_id))
    return ValidationPipeline(stages=stages, chunk_size=chunk_size, progress=progress)
