"""How many samples to ask of each generator family in a round.

:class:`Router` splits a sample budget over families by Thompson sampling on each family's
observed *yield*: the share of its samples that survived validation, with a Beta posterior whose
prior is the family's prior weight (worth ``prior_strength`` pseudo-samples), divided by the
seconds it needs per sample when timings are known (so the score is survivors per second).
Every available family keeps a floor of ``min_share`` of the budget so that none is starved of
the evidence that would rescue it; unavailable families get nothing. The same inputs and seed
give the same allocation, and the rationale says in words why.

Yields remembered from earlier campaigns (``memory``) sharpen the prior: they count as a round
older than the run's first, each weighted by its similarity to this request, and per family they
are worth at most ``memory_strength`` pseudo-samples, so the run's own rounds soon outweigh them.
The router itself reads no store; the caller passes the remembered yields in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from crystalforge.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_PRIOR_WEIGHTS: dict[str, float] = {
    "wyckoff": 1.0,
    "substitution": 1.0,
    "autoregressive": 0.8,
    "diffusion": 0.8,
    "external": 0.5,
    "fake": 0.1,
}
"""Prior survival rates (relative; scaled to a mean of 0.5) of the families before any round."""


@dataclass(frozen=True, kw_only=True)
class FamilyYield:
    """What one family produced in one earlier round."""

    family: str
    """Generator family, e.g. ``"wyckoff"``."""
    samples: int
    """Structures it returned."""
    survivors: int
    """Of those, how many passed validation."""
    seconds: float = 0.0
    """Wall-clock time it took to generate them (0: unknown)."""
    round: int = 0
    """The round the numbers come from (ignored for remembered yields)."""
    weight: float = 1.0
    """How much the record counts (remembered yields: the campaign's similarity, in [0, 1])."""
    source: str = ""
    """Where the numbers come from: empty for this run, else e.g. an earlier run's id."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"yield weight must be finite and >= 0, got {self.weight!r}")


@dataclass(frozen=True)
class Allocation:
    """Samples per family for the next round, and why."""

    samples: dict[str, int]
    """Family -> samples; sums to the budget (0 for unavailable families)."""
    scores: dict[str, float]
    """Family -> the sampled score (survivors per sample, per second when timed)."""
    rationale: str
    """One line per family, for the report."""


@dataclass(frozen=True, kw_only=True)
class Router:
    """Thompson-sampling allocation of a sample budget over generator families.

    Each round, for every available family a survival rate is drawn from
    ``Beta(a + survivors, b + samples - survivors)`` (``a + b = prior_strength``,
    ``a / (a + b)`` = its prior rate) ``draws`` times; divided by the observed seconds per
    sample (when known) this gives a score, and each family's share of the draws where it scored
    best decides its share of the budget above the floor.
    """

    prior_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIOR_WEIGHTS))
    """Relative prior survival rate per family; families missing here get the mean."""
    prior_strength: float = 4.0
    """How many pseudo-samples the prior is worth."""
    min_share: float = 0.1
    """Floor: each available family gets at least this share of the budget (rounded down,
    at least one sample when the budget allows)."""
    draws: int = 2000
    """Thompson draws per allocation."""
    decay: float = 0.7
    """Weight of a round's evidence per round of age (1: all rounds count equally)."""
    memory_strength: float = 8.0
    """At most this many pseudo-samples per family come from remembered yields (0: ignore
    memory); larger remembered evidence is scaled down to it, survival rate kept."""

    def __post_init__(self) -> None:
        if not self.prior_strength > 0:
            raise ConfigError(f"prior_strength must be positive, got {self.prior_strength!r}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ConfigError(f"min_share must be in [0, 1], got {self.min_share!r}")
        if self.draws < 1:
            raise ConfigError(f"draws must be >= 1, got {self.draws!r}")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"decay must be in (0, 1], got {self.decay!r}")
        if not (math.isfinite(self.memory_strength) and self.memory_strength >= 0):
            raise ConfigError(f"memory_strength must be >= 0, got {self.memory_strength!r}")
        if bad := {f: w for f, w in self.prior_weights.items() if not w > 0}:
            raise ConfigError(f"prior weights must be positive, got {bad!r}")

    def allocate(
        self,
        budget: int,
        available: Sequence[str],
        history: Sequence[FamilyYield] = (),
        *,
        memory: Sequence[FamilyYield] = (),
        seed: int = 0,
    ) -> Allocation:
        """Split ``budget`` samples over the ``available`` families.

        Args:
            budget: Samples to hand out this round.
            available: Families that can generate for this request (others get 0).
            history: Yields of this run's earlier rounds (any family; unavailable ones are
                ignored).
            memory: Yields remembered from earlier campaigns, ``weight`` = their similarity to
                this request and ``source`` = the campaign; a prior below ``history`` (see
                :attr:`memory_strength`).
            seed: Seed of the Thompson draws.

        Returns:
            The allocation; its samples sum to ``budget`` when any family is available.

        Raises:
            ConfigError: ``budget`` is negative.
        """
        if budget < 0:
            raise ConfigError(f"budget must be >= 0, got {budget!r}")
        families = sorted(dict.fromkeys(available))
        known = sorted({y.family for y in [*history, *memory]} | set(self.prior_weights))
        if not families:
            return Allocation(
                samples=dict.fromkeys(known, 0),
                scores={},
                rationale="no generator family is available for this request",
            )
        latest = max((y.round for y in history), default=0)
        mean_weight = float(np.mean(list(self.prior_weights.values()))) if self.prior_weights else 1
        rng = np.random.default_rng(seed % 2**64)
        draws = np.empty((len(families), self.draws))
        evidence: dict[str, tuple[float, float, float]] = {}
        remembered: dict[str, _Remembered] = {}
        for row, family in enumerate(families):
            weight = self.prior_weights.get(family, mean_weight)
            rate = min(max(0.5 * weight / mean_weight, 0.02), 0.98)
            samples = survivors = seconds = 0.0
            for y in history:
                if y.family != family:
                    continue
                w = y.weight * self.decay ** (latest - y.round)
                samples += w * y.samples
                survivors += w * min(y.survivors, y.samples)
                seconds += w * y.seconds
            evidence[family] = (samples, survivors, seconds)
            mem = self._remembered(family, memory, age=latest + 1)
            remembered[family] = mem
            samples, survivors, seconds = (
                samples + mem.samples,
                survivors + mem.survivors,
                seconds + mem.seconds,
            )
            a = self.prior_strength * rate + survivors
            b = self.prior_strength * (1 - rate) + samples - survivors
            per_second = seconds / samples if samples and seconds > 0 else None
            draws[row] = rng.beta(a, b, size=self.draws) / (per_second or 1.0)
        timing = {
            f: (evidence[f][0] + remembered[f].samples, evidence[f][2] + remembered[f].seconds)
            for f in families
        }
        timed = all(samples > 0 and seconds > 0 for samples, seconds in timing.values())
        if not timed:  # compare per sample only: mixing per-second and per-sample is meaningless
            for row, family in enumerate(families):
                samples, seconds = timing[family]
                if samples and seconds > 0:
                    draws[row] *= seconds / samples
        wins = np.bincount(np.argmax(draws, axis=0), minlength=len(families)) / self.draws
        samples_out = _split(budget, wins, self.min_share)
        scores = {f: float(np.mean(draws[row])) for row, f in enumerate(families)}
        unit = "survivors/s" if timed else "survival rate"
        lines = []
        for row, family in enumerate(families):
            n, k, s = evidence[family]
            mem = remembered[family]
            seen = f"{k:.0f}/{n:.0f} survived" if n else "no data yet this run"
            if n and s > 0:
                seen += f", {n / s:.2f} samples/s"
            if mem.sources:
                seen += f"; {mem.describe()}"
            elif not n:
                seen = "no data yet (prior only)"
            lines.append(
                f"{family}: {samples_out[row]} samples (best in {wins[row]:.0%} of draws; "
                f"{seen}; mean {unit} {scores[family]:.3g})"
            )
        for family in known:
            if family not in families:
                lines.append(f"{family}: 0 samples (not available for this request)")
        return Allocation(
            samples={**dict.fromkeys(known, 0), **dict(zip(families, samples_out, strict=True))},
            scores=scores,
            rationale="; ".join(lines),
        )

    def _remembered(self, family: str, memory: Sequence[FamilyYield], *, age: int) -> _Remembered:
        """A family's remembered evidence: weighted, aged ``age`` rounds, capped in size."""
        raw_samples = raw_survivors = 0
        samples = survivors = seconds = 0.0
        sources: set[str] = set()
        for y in memory:
            if y.family != family or y.weight <= 0 or y.samples <= 0:
                continue
            w = y.weight * self.decay**age
            samples += w * y.samples
            survivors += w * min(y.survivors, y.samples)
            seconds += w * y.seconds
            raw_samples += y.samples
            raw_survivors += min(y.survivors, y.samples)
            sources.add(y.source or "?")
        if samples > self.memory_strength:
            scale = self.memory_strength / samples
            samples, survivors, seconds = samples * scale, survivors * scale, seconds * scale
        return _Remembered(
            samples=samples,
            survivors=survivors,
            seconds=seconds,
            raw_samples=raw_samples,
            raw_survivors=raw_survivors,
            sources=tuple(sorted(sources)),
        )


@dataclass(frozen=True, kw_only=True)
class _Remembered:
    """One family's evidence from earlier campaigns, as the posterior counts it."""

    samples: float
    survivors: float
    seconds: float
    raw_samples: int
    """Samples the campaigns recorded (before weighting and the cap)."""
    raw_survivors: int
    sources: tuple[str, ...]

    def describe(self) -> str:
        n = len(self.sources)
        return (
            f"memory: {self.raw_survivors}/{self.raw_samples} survived in {n} earlier "
            f"campaign{'s' if n != 1 else ''}, counted as {self.samples:.1f} samples"
        )


def _split(budget: int, wins: np.ndarray, min_share: float) -> list[int]:
    """Integer samples per family: a floor each, the rest by ``wins`` (largest remainders)."""
    n = len(wins)
    floor = min(max(math.floor(min_share * budget), 1 if min_share > 0 else 0), budget // n)
    out = [floor] * n
    rest = budget - floor * n
    exact = wins * rest
    extra = np.floor(exact).astype(int)
    out = [o + int(e) for o, e in zip(out, extra, strict=True)]
    left = budget - sum(out)
    order = sorted(range(n), key=lambda i: (-(exact[i] - extra[i]), -wins[i], i))
    for i in order[:left]:
        out[i] += 1
    return out
