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

Two baselines are always in the same run: ``pyxtal-uniform`` (plain PyXtal random generation:
space groups uniform over those whose Wyckoff positions fit the atom counts) and ``pyxtal``
(the same with a hand-written ICSD-like space-group prior; no learned priors). Every share
comes with a Wilson 95 % interval (structures as independent trials) and S.U.N. relative to
each baseline with a bootstrap 95 % interval over systems (structures of one system are
correlated, so that interval is the honest one for "2x the baseline"). The stage at which
structures failed the pipeline is counted per family, and a bar chart of the shares is written
to ``generators-shares.png`` in the output folder.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from crystalforge.core.errors import ConfigError, GenerationFailed, SetupError
from crystalforge.evals.base import SuiteOptions, SuiteResult
from crystalforge.generators.base import GenerationRequest
from crystalforge.generators.registry import available_generators, load_generator
from crystalforge.memory.reference_data import load_reference
from crystalforge.tools.validators.composition import SmactValidator
from crystalforge.tools.validators.pipeline import default_pipeline

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crystalforge.core.candidate import Candidate
    from crystalforge.core.settings import Device

logger = logging.getLogger(__name__)

BASELINE = "pyxtal"
"""Registry name of the baseline: PyXtal random generation with a hand-written ICSD-like
space-group prior and no learned priors."""
PLAIN_BASELINE = "pyxtal-uniform"
"""Registry name of plain PyXtal random generation: uniform compatible space groups."""
BASELINES = (BASELINE, PLAIN_BASELINE)
"""Both are always in a conditioned run; S.U.N. is reported relative to each."""
UNCONDITIONAL = "*"
"""First element of the pseudo-system of an unconditional batch: ``("*", "<batch>")``."""
UNCONDITIONAL_FAMILIES = ("autoregressive", "wyformer")
"""Default families of ``--unconditional`` (the Wyckoff-sequence models: ours and the anchor)."""
EXCLUDED = ("fake",)
"""Registered generators never compared by default (test doubles)."""
SHARES = ("valid", "smact", "unique", "novel", "metastable", "sun")
"""Tally fields reported as shares of all generated structures."""

COLUMNS = (
    "family",
    "generated",
    "valid %",
    "SMACT %",
    "unique %",
    "novel %",
    "E_hull<=0.1 %",
    "S.U.N. %",
    "S.U.N. 95% CI",
    "S.U.N. / pyxtal",
    "S.U.N. / pyxtal-uniform",
    "samples/s",
    "relax s/structure",
    "fallback (S.U.N.)",
)


@dataclass(kw_only=True)
class _Counts:
    """Structures generated and how many passed each measure, with timings."""

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
    failed_stages: dict[str, int] = field(default_factory=dict)
    fallback: int | None = None
    """Structures the family's fallback generator made (``parameters["fallback"]``, e.g. the
    autoregressive model's time budget ran out); ``None``: not recorded (cells logged before
    2026-12-07)."""
    fallback_sun: int | None = None
    """S.U.N. structures among those (``None``: not recorded)."""


@dataclass(kw_only=True)
class _Tally(_Counts):
    """One family's counts over all systems."""

    fallback: int | None = 0
    fallback_sun: int | None = 0
    failed_requests: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    """Why whole requests failed (first 200 characters of the error) -> how often."""
    per_system: list[tuple[int, int]] = field(default_factory=list)
    """(generated, S.U.N.) per system, in system order, for the bootstrap."""

    def add(self, cell: _Cell) -> None:
        """Add one system's cell (call in system order)."""
        if cell.failure is not None:
            self.failed_requests += 1
            self.failure_reasons[cell.failure] = self.failure_reasons.get(cell.failure, 0) + 1
            self.per_system.append((0, 0))
            return
        for name in ("generated", *SHARES, "generation_s", "relax_s", "relaxed"):
            setattr(self, name, getattr(self, name) + getattr(cell, name))
        for stage, count in cell.failed_stages.items():
            self.failed_stages[stage] = self.failed_stages.get(stage, 0) + count
        for name in ("fallback", "fallback_sun"):
            mine, theirs = getattr(self, name), getattr(cell, name)
            setattr(self, name, None if mine is None or theirs is None else mine + theirs)
        self.per_system.append((cell.generated, cell.sun))


def default_families() -> list[str]:
    """Every registered generator that is installed and not a test double, baselines first."""
    out = []
    for name in available_generators():
        if name in EXCLUDED:
            continue
        try:
            load_generator(name)
        except SetupError as exc:  # missing extra, model or settings: not installed here
            logger.warning("eval generators skips %s: %s", name, exc)
            continue
        out.append(name)
    return sorted(out, key=lambda n: (n not in BASELINES, n))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial share, as fractions in [0, 1].

    Args:
        successes: Number of successes.
        trials: Number of trials (0 gives ``(0.0, 1.0)``).
        z: Normal quantile (1.96: 95 %).
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ratio(
    family: list[tuple[int, int]],
    baseline: list[tuple[int, int]],
    *,
    seed: int = 0,
    draws: int = 2000,
) -> tuple[float | None, float | None, float | None]:
    """S.U.N. share of a family over the baseline's, with a 95 % bootstrap interval over systems.

    Args:
        family: (generated, S.U.N.) per system of the family.
        baseline: The same for the baseline, same systems in the same order.
        seed: Bootstrap seed.
        draws: Bootstrap resamples.

    Returns:
        (ratio, low, high); ``None`` where the baseline share is 0 (infinite ratio).
    """
    f = np.array(family, dtype=float).reshape(-1, 2)
    b = np.array(baseline, dtype=float).reshape(-1, 2)

    def ratio(rows: np.ndarray) -> float | None:
        fg, fs = f[rows].sum(axis=0)
        bg, bs = b[rows].sum(axis=0)
        if not (fg and bg and bs):
            return None
        return float((fs / fg) / (bs / bg))

    n = len(f)
    if n == 0 or n != len(b):
        return None, None, None
    point = ratio(np.arange(n))
    rng = np.random.default_rng(seed)
    samples = [ratio(rng.integers(0, n, n)) for _ in range(draws)]
    finite = [s for s in samples if s is not None]
    if point is None or len(finite) < draws * 0.9:
        return point, None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return point, float(low), float(high)


def parse_family(label: str) -> tuple[str, dict[str, Any]]:
    """Registry name and settings of a family label, e.g. ``wyckoff[push_steps=0;push_scale=1.0]``.

    Settings are ``key=value`` pairs separated by ``;`` inside one pair of brackets; values are
    Python literals (numbers, booleans, quoted strings), else kept as text. A bare name has no
    settings. Labels with settings let one run compare variants of a generator (ablations).

    Raises:
        SetupError: Brackets that do not close, or a setting without ``=``.
    """
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label.strip(), {}
    if not rest.endswith("]"):
        raise SetupError(
            f"family {label!r}: settings must end with ']', e.g. wyckoff[push_steps=0]"
        )
    settings: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest[:-1].split(";"))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SetupError(f"family {label!r}: setting {item!r} is not key=value")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    return name.strip(), settings


def held_out_systems(data_dir: Path, count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` ternary chemical systems of held-out MP-20 test rows, drawn with ``seed``."""
    return _ternary_systems(data_dir, count, seed, tuning=False)


def tuning_systems(data_dir: Path, count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` ternary systems of training rows that no held-out row has, drawn with ``seed``.

    The rows are ``mp_20_biternary/val`` (training data by the split convention): settings are
    tuned here without touching held-out data.
    """
    return _ternary_systems(data_dir, count, seed, tuning=True)


def _ternary_systems(
    data_dir: Path, count: int, seed: int, *, tuning: bool
) -> list[tuple[str, ...]]:
    def systems_of(split: str) -> set[tuple[str, ...]]:
        frame = pd.read_csv(data_dir / "mp_20_biternary" / f"{split}.csv.gz", usecols=["elements"])
        return {tuple(sorted(ast.literal_eval(e))) for e in frame["elements"]}

    held_out = systems_of("test")
    systems = sorted(systems_of("val") - held_out if tuning else held_out)
    ternary = [s for s in systems if len(s) == 3]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ternary), size=min(count, len(ternary)), replace=False)
    return [ternary[int(i)] for i in sorted(picked)]


def run(options: SuiteOptions) -> SuiteResult:
    """Generate, validate and tabulate (see the module docstring).

    Every (system, family) cell is scored on its own and, when ``options.out_dir`` is set,
    appended to ``generators-cells.jsonl`` there as soon as it is done; a re-run with the same
    settings and the same committed generator and validator code reads the finished cells back
    instead of recomputing them, so a long run that is killed resumes where it stopped.
    ``options.workers > 1`` scores cells in that many processes.

    Raises:
        SetupError: No reference data, or ``options.families`` names no generator.
    """
    if options.data_dir is None:
        raise SetupError("eval generators needs the reference data (--data-dir or ../shared/data)")
    n_systems, per_family, max_atoms = (3, 4, 8) if options.quick else (10, 100, 20)
    if options.systems is not None:
        n_systems = options.systems
    if options.per_family is not None:
        per_family = options.per_family
    if options.limit is not None:
        per_family = min(per_family, options.limit)
    if n_systems < 1 or per_family < 1:
        raise SetupError(f"need >= 1 system and structure, got {n_systems} and {per_family}")
    if options.workers < 1:
        raise SetupError(f"workers must be >= 1, got {options.workers!r}")
    families = list(dict.fromkeys(options.families)) or (
        list(UNCONDITIONAL_FAMILIES) if options.unconditional else default_families()
    )
    if unknown := [f for f in families if parse_family(f)[0] not in available_generators()]:
        raise SetupError(f"unknown generator(s) {unknown}; choose from {available_generators()}")
    for family in families:  # bad settings fail here, before any cell runs
        _generator(family)
    if options.unconditional:
        # Batches of unconditional samples (any trained element), one seed each.
        systems = [(UNCONDITIONAL, str(i)) for i in range(n_systems)]
    else:
        for number, name in enumerate(BASELINES):
            if name not in families:
                families.insert(number, name)
        draw = tuning_systems if options.tuning else held_out_systems
        systems = draw(options.data_dir, n_systems, options.seed)
    reference = load_reference(options.data_dir)
    spec = _CellSpec(
        data_dir=str(options.data_dir),
        per_family=per_family,
        max_atoms=max_atoms,
        seed=options.seed,
        device=options.device,
    )
    codes = {family: code_fingerprint(family) for family in families}
    log = None if options.out_dir is None else options.out_dir / CELL_LOG
    done = _read_cells(log, spec, codes) if log is not None else {}
    todo = [(s, f) for s in systems for f in families if _cell_key(f, s) not in done]
    if done:
        total = len(systems) * len(families)
        logger.info(
            "eval generators: %d of %d cells read back from %s", total - len(todo), total, log
        )
    skipped: list[tuple[str, ...]] = []
    if options.partial:
        # Tabulate what the log holds: the systems whose every family is finished.
        skipped = sorted({system for system, _ in todo})
        systems = [s for s in systems if s not in skipped]
        todo = []
        if not systems:
            raise SetupError(
                f"--partial: no system has all of {families} finished in {log}; run without "
                "--partial first"
            )
    for cell in _score_cells(todo, spec, options.workers):
        done[_cell_key(cell.family, cell.system)] = cell
        if log is not None:
            _append_cell(log, spec, codes[cell.family], cell)
    tallies = {family: _Tally() for family in families}
    for system in systems:
        for family in families:
            tallies[family].add(done[_cell_key(family, system)])
    baselines = {name: tallies.get(name) for name in BASELINES}
    rows = [_row(family, tallies[family], baselines, options.seed) for family in families]
    figures = []
    if options.out_dir is not None:
        figures.append(str(_plot(tallies, options.out_dir / "generators-shares.png", per_family)))
    where = "tuning (training-row)" if options.tuning else "held-out"
    return SuiteResult(
        suite="generators",
        title=(
            f"Generators unconditionally: {len(systems)} seeded batches of {per_family} per "
            f"family, <= {max_atoms} atoms"
            if options.unconditional
            else f"Generators on {len(systems)} {where} ternary systems, {per_family} "
            f"requested per family and system, <= {max_atoms} atoms"
        ),
        columns=COLUMNS,
        rows=rows,
        figures=figures,
        notes=[
            "systems: " + ", ".join("-".join(s) for s in systems),
            "S.U.N. = metastable (CHGNet E_hull <= 0.1 eV/atom on the reference hull), unique "
            "and novel, as a share of all generated; novelty is against ~26k reference "
            "structures, smaller than MP, so it is over-estimated. S.U.N. 95% CI: Wilson "
            "interval; S.U.N. / pyxtal and / pyxtal-uniform: bootstrap 95% interval over systems "
            "in brackets.",
            "Requests a family could not serve at all count as 0 generated: "
            + ", ".join(f"{f} {tallies[f].failed_requests}" for f in families),
            "Pipeline stage that rejected structures: "
            + "; ".join(
                f"{f}: "
                + (", ".join(f"{k} {v}" for k, v in sorted(t.failed_stages.items())) or "none")
                for f, t in tallies.items()
            ),
            f"reference hull: {reference.name}",
            *(
                [
                    f"PARTIAL: {len(skipped)} of {len(systems) + len(skipped)} systems not "
                    "finished and left out: " + ", ".join("-".join(x) for x in skipped)
                ]
                if skipped
                else []
            ),
        ],
        metadata={
            "systems": ["-".join(s) for s in systems],
            "families": families,
            "per_family": per_family,
            "max_atoms": max_atoms,
            "seed": options.seed,
            "workers": options.workers,
            "partial_systems_left_out": ["-".join(x) for x in skipped],
            "code_fingerprints": codes,
            "reference_hull": reference.name,
            "counts": {
                f: {
                    **{k: getattr(t, k) for k in ("generated", *SHARES)},
                    "wilson_95": {k: wilson_interval(getattr(t, k), t.generated) for k in SHARES},
                    "failed_stages": t.failed_stages,
                    "per_system_generated_sun": t.per_system,
                    "failed_requests": t.failed_requests,
                    "failure_reasons": t.failure_reasons,
                    "generation_s": round(t.generation_s, 2),
                }
                for f, t in tallies.items()
            },
        },
    )


CELL_LOG = "generators-cells.jsonl"
"""File in the output folder where finished (system, family) cells are appended."""


@dataclass(frozen=True)
class _CellSpec:
    """Everything a cell's result depends on besides its family and system."""

    data_dir: str
    per_family: int
    max_atoms: int
    seed: int
    device: str

    def key(self) -> dict[str, Any]:
        """The fields that must match for a logged cell to be reused (not the data path)."""
        return {k: v for k, v in asdict(self).items() if k not in ("data_dir", "device")}


@dataclass(kw_only=True)
class _Cell(_Counts):
    """One family's structures for one system, scored."""

    family: str
    system: tuple[str, ...]
    failure: str | None = None
    """Why the request failed as a whole (first 200 characters), or ``None``."""


def code_fingerprint(family: str | None = None) -> str:
    """Git ids of the code a family's cells depend on, plus a hash of uncommitted edits there.

    The code is ``tools/validators/`` and ``generators/`` without the model packages
    (``generators/<name>/`` with an ``__init__.py``, other than ``data``) that the family's
    module neither lives in nor names: retraining the diffusion model does not invalidate the
    autoregressive cells, but a changed validator or shared sampler invalidates all of them.
    ``family=None`` covers everything. Cells logged under another fingerprint are not reused.
    Uncommitted changes add a hash of the diff and of the untracked files, so the same working
    tree resumes and an edited one does not. ``"unknown"`` outside a git checkout (then cells
    are reused on settings alone).
    """
    import hashlib
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    packages = {d.name for d in (root / "generators").iterdir() if (d / "__init__.py").exists()} - {
        "data"
    }
    used = set(packages)
    if family is not None:
        module = sys.modules[type(_generator(family)).__module__]
        source = Path(module.__file__ or "")
        text = source.read_text() if source.is_file() else ""
        used = {
            name for name in packages
            if source.is_relative_to(root / "generators" / name)
            or f"crystalforge.generators.{name}" in text
        }  # fmt: skip
    excluded = [f"generators/{name}/" for name in sorted(packages - used)]
    spec = ["tools/validators", "generators", *(f":(exclude){path}" for path in excluded)]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        # ls-tree takes no exclude pathspecs: filter its lines.
        tree = "".join(
            line + "\n"
            for line in git("ls-tree", "-r", "HEAD", "--", *spec[:2]).splitlines()
            if not any(line.split("\t", 1)[-1].startswith(path) for path in excluded)
        )
        status = git("status", "--porcelain", "--untracked-files=all", "--", *spec)
        edits = ""
        if status.strip():
            edits = status + git("diff", "HEAD", "--", *spec)
            for line in status.splitlines():
                if line.startswith("??") and (root / line[3:]).is_file():
                    edits += hashlib.sha1((root / line[3:]).read_bytes()).hexdigest()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    digest = hashlib.sha1(tree.encode()).hexdigest()[:12]
    return digest + ("+" + hashlib.sha1(edits.encode()).hexdigest()[:8] if edits else "")


def pooled_sun(
    logs: list[Path],
    family: str,
    baseline: str,
    *,
    codes: dict[str, set[str]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """S.U.N. of ``family`` against ``baseline`` pooled over the cells of several runs.

    Only systems where both have a cell of the same settings (per-family count, atoms, seed)
    and of the current code are pooled, so each run contributes paired cells; systems of
    different runs count as separate systems in the bootstrap.

    Args:
        logs: ``generators-cells.jsonl`` files of earlier runs.
        family: Family label as logged, e.g. ``"autoregressive"``.
        baseline: The family it is compared with, e.g. ``"wyckoff"``.
        codes: Family -> code fingerprints whose cells count (several when the family's code
            changed between runs without changing what it samples); default: the current
            :func:`code_fingerprint` of each.
        seed: Bootstrap seed.

    Returns:
        ``{"systems", "generated", "sun", "share", "interval"}`` per family under its label;
        ``"ratio"``: (family share / baseline share, low, high) with a 95 % bootstrap
        interval over systems (:func:`bootstrap_ratio`); ``"per_system"``: one
        ``{"system", family: [generated, sun], baseline: [generated, sun]}`` per pooled cell
        pair, in the order pooled.
    """
    import json

    pair = (family, baseline)
    wanted = codes if codes is not None else {f: {code_fingerprint(f)} for f in pair}
    per_system: dict[str, list[tuple[int, int]]] = {f: [] for f in pair}
    systems: list[str] = []
    for log in logs:
        cells: dict[tuple[str, str, str], _Cell] = {}
        for spec, code, cell in _logged_cells(log):
            if cell.family in pair and code in wanted.get(cell.family, set()):
                key = json.dumps(spec, sort_keys=True)
                cells[(cell.family, key, "-".join(cell.system))] = cell
        for key in sorted({k[1:] for k in cells}):
            if all((f, *key) in cells for f in pair):
                systems.append(key[1])
                for f in pair:
                    per_system[f].append((cells[(f, *key)].generated, cells[(f, *key)].sun))
    out: dict[str, Any] = {}
    for f, rows in per_system.items():
        generated = sum(g for g, _ in rows)
        sun = sum(n for _, n in rows)
        out[f] = {
            "systems": len(rows),
            "generated": generated,
            "sun": sun,
            "share": sun / generated if generated else None,
            "interval": wilson_interval(sun, generated),
        }
    out["ratio"] = bootstrap_ratio(per_system[family], per_system[baseline], seed=seed)
    out["per_system"] = [
        {"system": name, family: list(mine), baseline: list(theirs)}
        for name, mine, theirs in zip(
            systems, per_system[family], per_system[baseline], strict=True
        )
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m crystalforge.evals.generators pool FAMILY BASELINE LOG...``: a pooled table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description="Pool S.U.N. of two families over the cell logs of several "
        "`eval generators` runs (paired systems; the current code's cells unless --code "
        "names another fingerprint)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="pooled S.U.N. table and bootstrap ratio")
    pool.add_argument("family")
    pool.add_argument("baseline")
    pool.add_argument("logs", type=Path, nargs="+", help="generators-cells.jsonl files")
    pool.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="FAMILY=FINGERPRINT[,FINGERPRINT...]",
        help="pool FAMILY's cells logged under these code fingerprints instead of the current "
        "code's (repeatable), e.g. to re-read runs whose generator code has since changed",
    )
    pool.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also draw each system's S.U.N. share, FAMILY against BASELINE, to this file",
    )
    args = parser.parse_args(argv)
    codes = {f: {code_fingerprint(f)} for f in (args.family, args.baseline)}
    for item in args.code:
        name, sep, fingerprints = item.partition("=")
        pinned = {f for f in fingerprints.split(",") if f}
        if not sep or name not in codes or not pinned:
            parser.error(
                f"--code {item!r}: expected FAMILY=FINGERPRINT[,FINGERPRINT...] with FAMILY one "
                f"of {sorted(codes)!r}"
            )
        codes[name] = pinned
    result = pooled_sun(args.logs, args.family, args.baseline, codes=codes)
    lines = [
        "| family | systems | S.U.N. / generated | Wilson 95 % |",
        "| --- | --- | --- | --- |",
    ]
    for f in (args.family, args.baseline):
        r = result[f]
        low, high = r["interval"]
        share = "n/a" if r["share"] is None else f"{100 * r['share']:.1f} %"
        lines.append(
            f"| {f} | {r['systems']} | {r['sun']} / {r['generated']} ({share}) "
            f"| {100 * low:.1f}-{100 * high:.1f} |"
        )
    lines.append(
        "\ncode: "
        + ", ".join(f"{f} {'+'.join(sorted(codes[f]))}" for f in (args.family, args.baseline))
    )
    ratio, low, high = result["ratio"]
    interval = "" if low is None or high is None else f" [{low:.2f}-{high:.2f}]"
    point = "n/a" if ratio is None else f"{ratio:.2f}"
    lines.append(
        f"\n{args.family} / {args.baseline} S.U.N. share: {point}{interval} "
        f"(95 % bootstrap over {result[args.family]['systems']} systems)"
    )
    if args.plot is not None:
        lines.append(f"\nplot: {_plot_pool(result, args.family, args.baseline, args.plot)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _cell_key(family: str, system: tuple[str, ...]) -> str:
    return f"{family}|{'-'.join(system)}"


def _read_cells(log: Path, spec: _CellSpec, codes: dict[str, str]) -> dict[str, _Cell]:
    """Finished cells of an earlier run with the same settings and the same family code.

    ``codes`` maps family -> :func:`code_fingerprint`; unreadable lines are skipped.
    """
    cells: dict[str, _Cell] = {}
    if not log.exists():
        return cells
    for logged_spec, code, cell in _logged_cells(log):
        if logged_spec == spec.key() and code == codes.get(cell.family):
            cells[_cell_key(cell.family, cell.system)] = cell
    return cells


def _logged_cells(log: Path) -> Iterator[tuple[dict[str, Any], str, _Cell]]:
    """``(spec, code, cell)`` of every line of a cell log; unreadable lines are skipped."""
    import json

    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
            cell = _Cell(**{**entry["cell"], "system": tuple(entry["cell"]["system"])})
            logged = (entry["spec"], entry["code"], cell)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "eval generators: line %d of %s is not a cell (%s); skipped", number, log, exc
            )
            continue
        yield logged


def _append_cell(log: Path, spec: _CellSpec, code: str, cell: _Cell) -> None:
    import json

    log.parent.mkdir(parents=True, exist_ok=True)
    entry = {"spec": spec.key(), "code": code, "cell": asdict(cell)}
    with log.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _score_cells(
    todo: list[tuple[tuple[str, ...], str]], spec: _CellSpec, workers: int
) -> Iterator[_Cell]:
    """Score the cells in ``todo`` (in order with one worker, as they finish with more)."""
    started = time.perf_counter()

    def progress(number: int, cell: _Cell) -> None:
        elapsed = time.perf_counter() - started
        logger.info(
            "cell %d/%d %s, %s: %d generated, %d S.U.N. (%.1f cells/min, ~%.0f min left)",
            number, len(todo), "-".join(cell.system), cell.family, cell.generated, cell.sun,
            60 * number / elapsed, (len(todo) - number) * elapsed / number / 60,
        )  # fmt: skip

    if workers == 1 or len(todo) <= 1:
        for number, (system, family) in enumerate(todo, 1):
            cell = _score_cell(family, system, spec)
            progress(number, cell)
            yield cell
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(_score_cell, family, system, spec) for system, family in todo]
        for number, future in enumerate(as_completed(futures), 1):
            cell = future.result()
            progress(number, cell)
            yield cell


def _init_worker() -> None:
    """One torch thread per worker process (workers share the cores)."""
    import torch

    torch.set_num_threads(1)


@functools.cache
def _pipeline(data_dir: str, max_atoms: int, device: str) -> Any:
    reference = load_reference(Path(data_dir))
    # No properties or model-disagreement stages: they cost CHGNet time and S.U.N. ignores them.
    return default_pipeline(
        reference, device=cast("Device", device), max_atoms=max_atoms, uncertainty=False,
        properties=False,
    )  # fmt: skip


@functools.cache
def _generator(family: str) -> Any:
    name, settings = parse_family(family)
    try:
        return load_generator(name, **settings)
    except ConfigError as exc:
        raise SetupError(f"family {family!r}: {exc}") from exc


def _score_cell(family: str, system: tuple[str, ...], spec: _CellSpec) -> _Cell:
    """Generate ``spec.per_family`` structures of ``family`` in ``system`` and validate them."""
    cell = _Cell(family=family, system=system)
    if system[0] == UNCONDITIONAL:
        request = GenerationRequest(
            num_structures=spec.per_family,
            seed=spec.seed * 1000 + int(system[1]),
            max_atoms=spec.max_atoms,
        )
    else:
        request = GenerationRequest(
            num_structures=spec.per_family,
            seed=spec.seed,
            chemical_system=system,
            elements=system,
            max_atoms=spec.max_atoms,
        )
    started = time.perf_counter()
    try:
        candidates = _generator(family).generate(request)
    except (GenerationFailed, SetupError) as exc:
        logger.warning("%s could not generate in %s: %s", family, "-".join(system), exc)
        cell.failure = str(exc)[:200]
        return cell
    cell.generation_s = time.perf_counter() - started
    results = _pipeline(spec.data_dir, spec.max_atoms, spec.device).run(candidates)
    _score(cell, candidates, results, SmactValidator())
    return cell


def _score(tally: _Counts, candidates: list[Candidate], results: list[Any], smact: Any) -> None:
    by_id = {c.id: c for c in candidates}
    fallback = fallback_sun = 0
    smact_ok = {v.candidate_id for v in smact.validate(candidates) if v.passed}
    for result in results:
        tally.generated += 1
        if result.failed_stage is not None:
            tally.failed_stages[result.failed_stage] = (
                tally.failed_stages.get(result.failed_stage, 0) + 1
            )
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
        if "fallback" in result.candidate.parameters:
            fallback += 1
            fallback_sun += metastable and unique and novel
        seconds = props.get("relax_seconds")
        if isinstance(seconds, int | float):
            tally.relax_s += float(seconds)
            tally.relaxed += 1
    tally.fallback = (tally.fallback or 0) + fallback
    tally.fallback_sun = (tally.fallback_sun or 0) + fallback_sun


def _relative(t: _Tally, baseline: _Tally | None, seed: int) -> str:
    """S.U.N. share over the baseline's with its bootstrap interval, as table text."""
    if baseline is None:
        return "n/a (not in run)"
    if t is baseline:
        return "1 (baseline)"
    if not t.generated:
        return "n/a (nothing generated)"
    ratio, low, high = bootstrap_ratio(t.per_system, baseline.per_system, seed=seed)
    if ratio is None:
        return "n/a (baseline 0)"
    return f"{ratio:.2f}" + ("" if low is None or high is None else f" [{low:.2f}-{high:.2f}]")


def _row(family: str, t: _Tally, baselines: dict[str, _Tally | None], seed: int) -> dict[str, Any]:
    def pct(k: int) -> float | None:
        return round(100 * k / t.generated, 1) if t.generated else None

    low, high = wilson_interval(t.sun, t.generated)
    return {
        "family": family + (" (baseline)" if family in BASELINES else ""),
        "generated": t.generated,
        "valid %": pct(t.valid),
        "SMACT %": pct(t.smact),
        "unique %": pct(t.unique),
        "novel %": pct(t.novel),
        "E_hull<=0.1 %": pct(t.metastable),
        "S.U.N. %": pct(t.sun),
        "S.U.N. 95% CI": f"{100 * low:.1f}-{100 * high:.1f}" if t.generated else None,
        **{f"S.U.N. / {name}": _relative(t, b, seed) for name, b in baselines.items()},
        "samples/s": round(t.generated / t.generation_s, 2) if t.generation_s else None,
        "relax s/structure": round(t.relax_s / t.relaxed, 2) if t.relaxed else None,
        "fallback (S.U.N.)": "n/a" if t.fallback is None else f"{t.fallback} ({t.fallback_sun})",
    }


def _plot(tallies: dict[str, _Tally], path: Path, per_family: int) -> Path:
    """Grouped bars of every share per family with Wilson 95 % error bars; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ("valid", "SMACT", "unique", "novel", "E_hull<=0.1", "S.U.N.")
    x = np.arange(len(SHARES))
    width = 0.8 / max(len(tallies), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (family, t) in enumerate(tallies.items()):
        n = max(t.generated, 1)
        shares = np.array([100 * getattr(t, k) / n for k in SHARES])
        bounds = np.array([wilson_interval(getattr(t, k), t.generated) for k in SHARES]) * 100
        errors = np.clip(np.vstack([shares - bounds[:, 0], bounds[:, 1] - shares]), 0, None)
        ax.bar(x + (i - (len(tallies) - 1) / 2) * width, shares, width, yerr=errors,
               capsize=2, label=f"{family} (n={t.generated})")  # fmt: skip
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of generated structures, %")
    ax.set_ylim(0, 105)
    ax.set_title(f"crystalforge eval generators: {per_family} per family and system, Wilson 95 %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_pool(result: dict[str, Any], family: str, baseline: str, path: Path) -> Path:
    """Per-system S.U.N. shares of :func:`pooled_sun`, ``family`` against ``baseline``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["per_system"] if r[family][0] and r[baseline][0]]
    x = np.array([100 * r[baseline][1] / r[baseline][0] for r in rows])
    y = np.array([100 * r[family][1] / r[family][0] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    top = max([*x, *y, 10.0]) * 1.08
    ax.plot([0, top], [0, top], color="0.6", lw=1, zorder=0)
    ax.scatter(x, y, s=18, alpha=0.7)
    for xi, yi, r in zip(x, y, rows, strict=True):
        if abs(yi - xi) >= 20:  # label the systems that decide the comparison
            ax.annotate(
                r["system"], (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
    ratio, low, high = result["ratio"]
    interval = ""
    if ratio is not None and low is not None and high is not None:
        interval = f"{ratio:.2f} [{low:.2f}-{high:.2f}]"
    above = int((y > x).sum())
    below = int((y < x).sum())
    ax.set_title(
        f"S.U.N. per system, {len(rows)} systems: {family} / {baseline} {interval}\n"
        f"above the diagonal {above}, below {below}, level {len(rows) - above - below}",
        fontsize=9,
    )
    ax.set_xlabel(f"{baseline} S.U.N., % of generated")
    ax.set_ylabel(f"{family} S.U.N., % of generated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
