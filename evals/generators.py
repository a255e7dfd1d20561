"""``crystalforge eval generators``: validity, uniqueness, novelty, stability and S.U.N. per family.

For chemical systems drawn (seeded) from the held-out MP-20 test rows, every generator family
is asked for the same number of structures per system; every structure goes through the CHGNet
validation pipeline. Per family:

- structural validity: passed the sanity stage (distances >= 0.5 Å, sane volume);
- SMACT validity: SMACT's default definition (``mixed_valence=False``), whatever the pipeline
  accepted;
- unique: not a StructureMatcher duplicate of an earlier structure of the same family and system;
- novel: no StructureMatcher match among the reference structures with coordinates
  (``mp_20_biternary`` + ``mpts_52``: smaller than MP, so novelty is over-estimated);
- metastable: CHGNet energy above the reference hull <= 0.1 eV/atom;
- S.U.N.: metastable, unique and novel, as a share of everything generated;
- samples/s: generation only; relax s/structure: CHGNet validation time.

``pyxtal`` (random symmetric crystals without learned priors) is the baseline in the same run.
"""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crystalforge.core.errors import GenerationFailed, SetupError
from crystalforge.evals.base import SuiteOptions, SuiteResult
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.registry import load_generator
from crystalforge.memory.reference_data import load_reference
from crystalforge.tools.validators.composition import SmactValidator
from crystalforge.tools.validators.pipeline import default_pipeline

if TYPE_CHECKING:
    from crystalforge.core.candidate import Candidate

logger = logging.getLogger(__name__)

FAMILIES = ("pyxtal", "wyckoff", "substitution")
"""Registry names compared; ``pyxtal`` is the no-prior baseline."""

COLUMNS = (
    "family",
    "generated",
    "valid %",
    "SMACT %",
    "unique %",
    "novel %",
    "E_hull<=0.1 %",
    "S.U.N. %",
    "samples/s",
    "relax s/structure",
)


@dataclass
class _Tally:
    generated: int = 0
    valid: int = 0
    smact: int = 0
    unique: int = 0
    novel: int = 0
    metastable: int = 0
    sun: int = 0
    generation_s: float = 0.0
    relax_s: float = 0.0
    relaxed: int = 0
    failed_requests: int = 0


def held_out_systems(data_dir: Any, count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` ternary chemical systems of held-out MP-20 test rows, drawn with ``seed``."""
    frame = pd.read_csv(data_dir / "mp_20_biternary" / "test.csv.gz", usecols=["elements"])
    systems = sorted({tuple(sorted(ast.literal_eval(e))) for e in frame["elements"]})
    ternary = [s for s in systems if len(s) == 3]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ternary), size=min(count, len(ternary)), replace=False)
    return [ternary[int(i)] for i in sorted(picked)]


def run(options: SuiteOptions) -> SuiteResult:
    """Generate, validate and tabulate (see the module docstring)."""
    if options.data_dir is None:
        raise SetupError("eval generators needs the reference data (--data-dir or ../shared/data)")
    n_systems, per_family, max_atoms = (3, 4, 8) if options.quick else (10, 100, 20)
    if options.limit is not None:
        per_family = min(per_family, options.limit)
    systems = held_out_systems(options.data_dir, n_systems, options.seed)
    reference = load_reference(options.data_dir)
    pipeline = default_pipeline(reference, device=options.device, max_atoms=max_atoms)
    smact_default = SmactValidator()
    tallies = {family: _Tally() for family in FAMILIES}
    for system in systems:
        for family in FAMILIES:
            tally = tallies[family]
            request = GenerationRequest(
                num_structures=per_family,
                seed=options.seed,
                chemical_system=system,
                elements=system,
                max_atoms=max_atoms,
            )
            started = time.perf_counter()
            try:
                candidates = load_generator(family).generate(request)
            except GenerationFailed as exc:
                logger.info("%s could not generate in %s: %s", family, "-".join(system), exc)
                tally.failed_requests += 1
                continue
            tally.generation_s += time.perf_counter() - started
            _score(tally, candidates, pipeline.run(candidates), smact_default)
    rows = [_row(family, tallies[family]) for family in FAMILIES]
    return SuiteResult(
        suite="generators",
        title=(
            f"Generators on {len(systems)} held-out ternary systems, {per_family} requested per "
            f"family and system, <= {max_atoms} atoms"
        ),
        columns=COLUMNS,
        rows=rows,
        notes=[
            "systems: " + ", ".join("-".join(s) for s in systems),
            "S.U.N. = metastable (CHGNet E_hull <= 0.1 eV/atom on the reference hull), unique "
            "and novel, as a share of all generated; novelty is against ~26k reference "
            "structures, smaller than MP, so it is over-estimated.",
            "Requests a family could not serve at all count as 0 generated: "
            + ", ".join(f"{f} {tallies[f].failed_requests}" for f in FAMILIES),
            f"reference hull: {reference.name}",
        ],
        metadata={
            "systems": ["-".join(s) for s in systems],
            "per_family": per_family,
            "max_atoms": max_atoms,
            "seed": options.seed,
            "reference_hull": reference.name,
        },
    )


def _score(tally: _Tally, candidates: list[Candidate], results: list[Any], smact: Any) -> None:
    by_id = {c.id: c for c in candidates}
    smact_ok = {v.candidate_id for v in smact.validate(candidates) if v.passed}
    for result in results:
        tally.generated += 1
        stages = {v.validator: v for v in result.verdicts}
        if "sanity" in stages and stages["sanity"].passed:
            tally.valid += 1
        if result.candidate.id in smact_ok and result.candidate.id in by_id:
            tally.smact += 1
        unique = "unique" in stages and stages["unique"].passed
        tally.unique += unique
        props = result.candidate.properties
        novel = props.get("novel") is True
        tally.novel += novel
        e_hull = props.get("e_above_hull")
        metastable = isinstance(e_hull, int | float) and e_hull <= 0.1
        tally.metastable += metastable
        tally.sun += metastable and unique and novel
        seconds = props.get("relax_seconds")
        if isinstance(seconds, int | float):
            tally.relax_s += float(seconds)
            tally.relaxed += 1


def _row(family: str, t: _Tally) -> dict[str, Any]:
    def pct(k: int) -> float | None:
        return round(100 * k / t.generated, 1) if t.generated else None

    return {
        "family": family + (" (baseline)" if family == "pyxtal" else ""),
        "generated": t.generated,
        "valid %": pct(t.valid),
        "SMACT %": pct(t.smact),
        "unique %": pct(t.unique),
        "novel %": pct(t.novel),
        "E_hull<=0.1 %": pct(t.metastable),
        "S.U.N. %": pct(t.sun),
        "samples/s": round(t.generated / t.generation_s, 2) if t.generation_s else None,
        "relax s/structure": round(t.relax_s / t.relaxed, 2) if t.relaxed else None,
    }
