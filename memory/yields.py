"""Generator yields of earlier campaigns, weighted by how similar their request was.

Every campaign record (:meth:`~crystalforge.memory.chroma.ChromaMemory.add_campaign`) keeps
``generator_yields``: per generator, the samples it returned, how many survived validation (met
every hard target) and the validation seconds, summed over the campaign's rounds.
:func:`earlier_yields` asks a :class:`~crystalforge.memory.base.Retriever` for the campaigns
nearest to a spec and returns their yields with a weight: 1 for a campaign of the same chemical
system, less for a merely similar spec (falling linearly to 0 at :data:`MAX_DISTANCE`). The
design run's router reads them as a prior below the run's own rounds.

A record without yields (written before they were kept) or with a malformed field is skipped
with a warning naming the campaign; it never stops a run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from crystalforge.memory.base import Retriever

logger = logging.getLogger(__name__)

K = 5
"""Earlier campaigns whose yields are read per request."""

MAX_DISTANCE = 0.35
"""Cosine distance between spec embeddings beyond which a campaign of another chemical system
tells nothing about this one (the recall threshold of the design run)."""

OTHER_SYSTEM_WEIGHT = 0.5
"""Weight of a campaign of another chemical system at spec distance 0 (same system: 1)."""


@dataclass(frozen=True, kw_only=True)
class GeneratorTotals:
    """What one generator produced over a whole campaign."""

    samples: int
    """Structures it returned."""
    survivors: int
    """Of those, how many met every hard target."""
    seconds: float = 0.0
    """Validation seconds they took (0: unknown)."""


@dataclass(frozen=True, kw_only=True)
class CampaignYields:
    """The generator yields of one earlier campaign and how much they count for this request."""

    run_id: str
    """The campaign's run folder name."""
    chemical_system: tuple[str, ...] | None
    """Its chemical system (``None``: an open element pool)."""
    distance: float
    """Cosine distance of its spec embedding from this request's."""
    same_system: bool
    """Whether it designed in the same chemical system as this request."""
    weight: float
    """How much it counts, in (0, 1]."""
    yields: dict[str, GeneratorTotals] = field(default_factory=dict)
    """Generator -> its totals over the campaign."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (graph state), read back by :meth:`from_json`."""
        return {
            "run_id": self.run_id,
            "chemical_system": list(self.chemical_system) if self.chemical_system else None,
            "distance": self.distance,
            "same_system": self.same_system,
            "weight": self.weight,
            "yields": {
                name: {"samples": t.samples, "survivors": t.survivors, "seconds": t.seconds}
                for name, t in self.yields.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CampaignYields:
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError: ``data`` is not what :meth:`to_json` writes.
        """
        yields = parse_yields(data.get("yields"))
        if yields is None:
            raise ValueError(f"campaign yields {data!r} have no valid 'yields' mapping")
        system = data.get("chemical_system")
        return cls(
            run_id=str(data["run_id"]),
            chemical_system=tuple(str(el) for el in system) if system else None,
            distance=float(data["distance"]),
            same_system=bool(data["same_system"]),
            weight=float(data["weight"]),
            yields=yields,
        )


def totals_of_rounds(stats: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Per-generator totals over rounds, as a campaign record keeps them.

    Args:
        stats: Each round's ``generator_stats`` (generator -> samples, survivors, seconds).

    Returns:
        Generator -> ``{"samples", "survivors", "seconds", "rounds"}`` summed over the rounds.
    """
    out: dict[str, dict[str, Any]] = {}
    for round_stats in stats:
        for name, s in round_stats.items():
            row = out.setdefault(name, {"samples": 0, "survivors": 0, "seconds": 0.0, "rounds": 0})
            row["samples"] += int(s.get("samples", 0))
            row["survivors"] += int(s.get("survivors", 0))
            row["seconds"] = round(row["seconds"] + float(s.get("seconds", 0.0)), 3)
            row["rounds"] += 1
    return out


def parse_yields(raw: object) -> dict[str, GeneratorTotals] | None:
    """A campaign record's ``generator_yields`` field, checked; ``None`` when malformed.

    Args:
        raw: The field as stored: a JSON string or an already decoded mapping of generator ->
            ``{"samples": int >= 0, "survivors": int in [0, samples], "seconds": float >= 0}``.

    Returns:
        Generator -> totals, or ``None`` when any part is not of that form.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    out: dict[str, GeneratorTotals] = {}
    for name, row in raw.items():
        if not isinstance(name, str) or not name or not isinstance(row, dict):
            return None
        samples, survivors, seconds = (row.get(k) for k in ("samples", "survivors", "seconds"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (samples, survivors)):
            return None
        assert isinstance(samples, int)
        assert isinstance(survivors, int)
        seconds = 0.0 if seconds is None else seconds
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return None
        if not 0 <= survivors <= samples or not (math.isfinite(seconds) and seconds >= 0):
            return None
        out[name] = GeneratorTotals(samples=samples, survivors=survivors, seconds=float(seconds))
    return out


def chemical_system_of(spec: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The sorted chemical system of a DesignSpec dump, ``None`` when it sets none."""
    system = spec.get("chemical_system")
    if not system or not isinstance(system, list | tuple):
        return None
    return tuple(sorted(str(el) for el in system))


def similarity_weight(distance: float, *, same_system: bool) -> float:
    """How much an earlier campaign's yields count for this request.

    1 for the same chemical system, else :data:`OTHER_SYSTEM_WEIGHT` falling linearly to 0 at
    :data:`MAX_DISTANCE`.
    """
    if same_system:
        return 1.0
    return OTHER_SYSTEM_WEIGHT * max(0.0, 1.0 - distance / MAX_DISTANCE)


def weigh_campaigns(
    spec: Mapping[str, Any], campaigns: Sequence[Mapping[str, Any]]
) -> list[CampaignYields]:
    """Earlier campaigns' yields, weighted by their similarity to ``spec``.

    The campaigns are as :meth:`~crystalforge.memory.base.Retriever.similar_campaigns` returns
    them.

    Campaigns of another system beyond :data:`MAX_DISTANCE` are left out; so are those whose
    ``generator_yields`` are missing or malformed, with a warning naming them.

    Args:
        spec: This request's DesignSpec dump.
        campaigns: Earlier campaigns, each with ``run_id``, ``distance``, ``spec`` and
            ``generator_yields``.

    Returns:
        The usable campaigns, heaviest first (ties: nearest first).
    """
    system = chemical_system_of(spec)
    out: list[CampaignYields] = []
    for campaign in campaigns:
        run_id = str(campaign.get("run_id", "?"))
        theirs = chemical_system_of(campaign.get("spec") or {})
        same = system is not None and theirs == system
        distance = float(campaign.get("distance", math.inf))
        weight = similarity_weight(distance, same_system=same)
        if weight <= 0:
            continue
        raw = campaign.get("generator_yields")
        if raw is None:
            logger.warning(
                "campaign %s has no generator yields (recorded before they were kept); "
                "the router ignores it",
                run_id,
            )
            continue
        yields = parse_yields(raw)
        if yields is None:
            logger.warning(
                "campaign %s: malformed generator yields %.200r (expected generator -> "
                "{samples, survivors <= samples, seconds >= 0}); the router ignores them",
                run_id,
                raw,
            )
            continue
        if not yields:
            continue
        out.append(
            CampaignYields(
                run_id=run_id,
                chemical_system=theirs,
                distance=round(distance, 4),
                same_system=same,
                weight=round(weight, 4),
                yields=yields,
            )
        )
    return sorted(out, key=lambda c: (-c.weight, c.distance, c.run_id))


def earlier_yields(
    store: Retriever,
    spec: Mapping[str, Any],
    *,
    k: int = K,
    exclude_run: str | None = None,
) -> list[CampaignYields]:
    """The generator yields of the ``k`` earlier campaigns nearest to ``spec``, weighted.

    Args:
        store: The memory store (anything with ``similar_campaigns``).
        spec: This request's DesignSpec dump.
        k: Campaigns to read.
        exclude_run: This run's id (a resumed run must not learn from itself).

    Returns:
        See :func:`weigh_campaigns`.
    """
    return weigh_campaigns(spec, store.similar_campaigns(spec, k=k, exclude_run=exclude_run))


def describe(campaigns: Sequence[CampaignYields]) -> str:
    """One line for the report: which campaigns, which systems, and what each generator did.

    Example: ``from 2 earlier campaigns in Li-Mn-O (r1, r2): wyckoff 12/40 survived, ...``.
    """
    if not campaigns:
        return "no earlier campaign with generator yields"
    groups: dict[str, list[str]] = {}
    for c in campaigns:
        where = "-".join(c.chemical_system) if c.chemical_system else "an open element pool"
        label = c.run_id if c.same_system else f"{c.run_id}, weight {c.weight:.2f}"
        groups.setdefault(where, []).append(label)
    places = "; ".join(f"in {where} ({', '.join(runs)})" for where, runs in groups.items())
    totals: dict[str, list[int]] = {}
    for c in campaigns:
        for name, t in c.yields.items():
            row = totals.setdefault(name, [0, 0])
            row[0] += t.survivors
            row[1] += t.samples
    counts = ", ".join(f"{name} {k}/{n} survived" for name, (k, n) in sorted(totals.items()))
    n = len(campaigns)
    return f"from {n} earlier campaign{'s' if n != 1 else ''} {places}: {counts}"
