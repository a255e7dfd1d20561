"""Train the Wyckoff-sequence transformer on the training rows of ``../shared/data``.

Usage (from the project root; about 27 minutes on 2 threads, 43 on one, of this 2-core CPU)::

    OMP_NUM_THREADS=1 nice -n 10 python -m crystalforge.generators.autoregressive.train \
        --data-dir ../shared/data --out generators/autoregressive/data/wyckoff_transformer.pt

Rows (the convention of ``shared/data/README.md``): ``mp_20_biternary/val`` plus ``mpts_52``
test and val, minus every ``material_id`` of the held-out ``mp_20_biternary/test``, deduplicated
by ``material_id`` (the selection of :func:`crystalforge.generators.train_priors.training_rows`),
restricted to at most 20 atoms per primitive cell (MP-20's limit). Wyckoff positions come from
:func:`crystalforge.generators.train_priors.analyse` (spglib via pymatgen, ``symprec`` 0.1 Å,
5°). A seeded 5% of the remaining rows is this script's validation part (early-stopping choice
and the reported validation loss); held-out rows are never read except for their ids.

Each epoch, ``--substitution-share`` of the training rows (default 0.6) have one element swapped
for a chemically close one (:data:`SUBSTITUTION_FAMILIES`, :func:`substitute`), so every
structure type is also seen with the elements of its family; validation rows are never changed.

The analysed genes are cached as JSON under ``--cache-dir`` (default
``~/.cache/crystalforge/autoregressive``), keyed by the selection, so reruns skip the 2-5 minutes
of symmetry analysis. ``--device auto`` uses CUDA when available.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crystalforge.generators.autoregressive.tokenizer import (
    MAX_ELEMENTS,
    MAX_SITES,
    Vocabulary,
    WyckoffGene,
    build_vocabulary,
    gene_from_record,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    import torch

logger = logging.getLogger(__name__)

MAX_PRIMITIVE_ATOMS = 20
"""Rows with more atoms per primitive cell are left out (MP-20's limit)."""
VALIDATION_SHARE = 0.05
DEFAULT_OUT = Path(__file__).parent / "data" / "wyckoff_transformer.pt"
DEFAULT_CACHE = Path.home() / ".cache" / "crystalforge" / "autoregressive"
SUBSTITUTION_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("Li", "Na", "K", "Rb", "Cs"),
    ("Ca", "Sr", "Ba", "Eu", "Yb"),
    ("Y", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Lu"),
    ("Th", "Pa", "U", "Np", "Pu"),
    ("Ti", "Zr", "Hf"),
    ("V", "Nb", "Ta"),
    ("Cr", "Mo", "W"),
    ("Mn", "Tc", "Re"),
    ("Fe", "Ru", "Os"),
    ("Co", "Rh", "Ir"),
    ("Ni", "Pd", "Pt"),
    ("Cu", "Ag", "Au"),
    ("Zn", "Cd", "Hg"),
    ("Al", "Ga", "In", "Tl"),
    ("Si", "Ge", "Sn", "Pb"),
    ("P", "As", "Sb", "Bi"),
    ("S", "Se", "Te"),
    ("Cl", "Br", "I"),
)
"""Elements that commonly take one another's sites in a structure type, for
:func:`substitute`: a periodic-table group below its first-row member (whose chemistry differs:
H, Be, B, C, N, O, F are in no family), trivalent rare earths with Y, and divalent Eu and Yb with
the heavy alkaline earths they match in ionic radius (Yb2+ ~ Ca2+, Eu2+ ~ Sr2+)."""
_FAMILY_OF = {el: family for family in SUBSTITUTION_FAMILIES for el in family}
Device = Literal["auto", "cpu", "cuda"]


def load_genes(
    data_dir: Path,
    cache_dir: Path,
    *,
    shards: int = 1,
    only_shards: Sequence[int] | None = None,
    cached_only: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Analysed training rows and the selection summary.

    Each row is ``{"material_id", "space_group", "sites", "num_atoms"}`` (``num_atoms`` per
    primitive cell). Rows are analysed in ``shards`` contiguous parts, each cached on its own, so
    parts can be prepared by parallel processes (``--shards N --shard I,J,...``).

    Args:
        data_dir: The shared data folder.
        cache_dir: Where the analysed genes are cached (created if needed).
        shards: Number of cache parts.
        only_shards: Analyse only these parts (preparation); ``None``: all parts, in order.
        cached_only: Use only parts already cached (the summary counts the parts used).
    """
    from crystalforge.generators.train_priors import training_rows

    rows, summary = training_rows(data_dir)
    key = hashlib.sha256("\n".join(rows.material_id).encode()).hexdigest()[:16]
    bounds = np.linspace(0, len(rows), shards + 1).astype(int)
    out: list[dict[str, Any]] = []
    used: list[int] = []
    for shard in range(shards) if only_shards is None else only_shards:
        cache = cache_dir / f"genes_{key}_{shard}of{shards}.json"
        if cache.exists():
            logger.info("genes from cache %s", cache)
            out.extend(json.loads(cache.read_text()))
            used.append(shard)
            continue
        if cached_only:
            continue
        used.append(shard)
        part = rows.iloc[bounds[shard] : bounds[shard + 1]]
        genes = _analyse_rows(list(part.material_id), list(part.cif))
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(genes))
        out.extend(genes)
    summary.update(
        shards=shards,
        shards_used=len(used),
        rows_in_shards_used=int(sum(bounds[i + 1] - bounds[i] for i in used)),
    )
    return out, summary


def _analyse_rows(material_ids: list[str], cifs: list[str]) -> list[dict[str, Any]]:
    from crystalforge.generators.train_priors import analyse

    out: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index, (material_id, cif) in enumerate(zip(material_ids, cifs, strict=True)):
        try:
            record = analyse(cif)
        except (ValueError, KeyError) as exc:
            logger.warning("skipping %s: %s", material_id, exc)
            record = None
        if record is not None:
            gene = gene_from_record(record)
            out.append(
                {
                    "material_id": material_id,
                    "space_group": gene.space_group,
                    "sites": [list(s) for s in gene.sites],
                    "num_atoms": record["num_atoms"],
                }
            )
        if (index + 1) % 2000 == 0:
            logger.info("%d / %d rows, %.0f s", index + 1, len(cifs), time.perf_counter() - started)
    return out


def split(
    genes: list[dict[str, Any]], rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training, validation)`` rows: a seeded :data:`VALIDATION_SHARE` of ``genes``."""
    order = rng.permutation(len(genes))
    n_val = max(1, int(len(genes) * VALIDATION_SHARE))
    return [genes[i] for i in order[n_val:]], [genes[i] for i in order[:n_val]]


def substitute(
    row: dict[str, Any], rng: np.random.Generator, known: Collection[str]
) -> dict[str, Any]:
    """``row`` with one element replaced by a member of its :data:`SUBSTITUTION_FAMILIES`.

    The element and its replacement are drawn uniformly among the row's elements that have a
    family member in ``known`` and not already in the row; atom counts, space group and Wyckoff
    positions stay. A row without such an element is returned unchanged. Training on these
    rows (``train(substitution_share=...)``) shows the model each structure type with chemically
    close elements, which is what it must generalise to for chemical systems it never saw.
    """
    present = {e for e, _ in row["sites"]}
    options = {
        el: [m for m in _FAMILY_OF.get(el, ()) if m in known and m not in present]
        for el in sorted(present)
    }
    movable = [el for el, partners in options.items() if partners]
    if not movable:
        return row
    old = movable[int(rng.integers(len(movable)))]
    new = options[old][int(rng.integers(len(options[old])))]
    gene = WyckoffGene.of(
        int(row["space_group"]), ((new if e == old else e, w) for e, w in row["sites"])
    )
    return {**row, "sites": [list(s) for s in gene.sites], "substituted": f"{old}->{new}"}


def score(path: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean negative log-likelihood of a checkpoint on ``rows``, nats.

    ``per_structure`` sums over a whole sequence, so checkpoints with and without the
    composition prefix compare on the same crystals; ``space_group`` is the space-group token
    alone (given the composition when the prefix comes first); ``given_composition`` sums from
    the space-group token on, what sampling under a forced composition (``composition="prior"``)
    draws from (for checkpoints without the prefix: the whole sequence). Rows the vocabulary
    cannot encode are left out and counted in ``rows``.
    """
    import torch
    import torch.nn.functional as F

    from crystalforge.generators.autoregressive.generator import _load

    loaded = _load(str(path))
    total = group = conditional = 0.0
    scored = 0
    for row in rows:
        try:
            ids = loaded.vocab.encode(_gene(row))
        except (KeyError, ValueError):
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = F.log_softmax(loaded.model(x[:, :-1]), -1)[0]
        nll = -logp[torch.arange(len(ids) - 1), x[0, 1:]]
        at = next(i for i, t in enumerate(ids) if loaded.vocab.tokens[t].startswith("SG"))
        total += float(nll.sum())
        group += float(nll[at - 1])
        conditional += float(nll[at - 1 :].sum())
        scored += 1
    return {
        "rows": scored,
        "per_structure": total / scored,
        "space_group": group / scored,
        "given_composition": conditional / scored,
    }


def _gene(row: dict[str, Any]) -> WyckoffGene:
    return WyckoffGene(int(row["space_group"]), tuple((e, w) for e, w in row["sites"]))


def _batches(
    data: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    order = np.arange(len(data)) if rng is None else rng.permutation(len(data))
    return [data[order[i : i + batch_size]] for i in range(0, len(data), batch_size)]


def _pad(sequences: Sequence[list[int]], pad: int, length: int) -> np.ndarray:
    out = np.full((len(sequences), length), pad, dtype=np.int64)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq
    return out


def _loss(model: torch.nn.Module, batch: torch.Tensor, pad: int) -> torch.Tensor:
    import torch.nn.functional as F

    logits = model(batch[:, :-1])
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=pad
    )


def train(
    genes: list[dict[str, Any]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: Device,
    d_model: int,
    n_layers: int,
    time_budget_s: float,
    composition_prefix: bool = True,
    substitution_share: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and return ``(checkpoint, metrics)``; the checkpoint holds the best-validation state.

    Args:
        genes: Rows of :func:`load_genes`, already filtered.
        epochs: Passes over the training part.
        batch_size: Sequences per step.
        lr: Peak AdamW learning rate (cosine decay, 3% warm-up). The decay is planned over
            ``epochs``; after the first epoch it is re-planned over the epochs that fit into
            ``time_budget_s`` at the measured epoch time, so a budget-limited run still ends
            at a small learning rate instead of being cut off mid-schedule.
        seed: Seeds the split, initialisation, batching and dropout.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        d_model: Model width.
        n_layers: Transformer blocks.
        time_budget_s: Stop after the epoch that passes this wall-clock budget, seconds.
        composition_prefix: Sequences start with the composition (``(El #k)*``, see
            :mod:`~crystalforge.generators.autoregressive.tokenizer`); ``False``: the
            space group comes first, as in checkpoints before 2026-12-07.
        substitution_share: Each epoch, this share of the training rows is replaced by
            :func:`substitute` (one element swapped for a family member the vocabulary holds),
            drawn afresh every epoch; validation rows are never substituted. ``0``: no
            augmentation (the checkpoints before the evening of 2026-12-07; the command line's
            default is 0.6, the shipped checkpoint's).
    """
    if not 0.0 <= substitution_share <= 1.0:
        raise ValueError(f"substitution_share must be in [0, 1], got {substitution_share!r}")
    import torch

    from crystalforge.generators.autoregressive.model import ModelConfig, WyckoffTransformer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    train_rows, val_rows = split(genes, rng)
    vocab = build_vocabulary((_gene(r) for r in train_rows), composition_prefix=composition_prefix)
    max_len = 2 * MAX_SITES + 3 + (2 * MAX_ELEMENTS if composition_prefix else 0)

    def encode(rows: list[dict[str, Any]]) -> np.ndarray:
        seqs = []
        for row in rows:
            try:
                seqs.append(vocab.encode(_gene(row)))
            except KeyError:  # a validation row with an element unseen in training
                continue
            except ValueError as exc:  # counts that do not divide by the centring
                logger.warning("skipping %s: %s", row["material_id"], exc)
                continue
        return _pad(seqs, vocab.pad, max_len)

    train_data, val_data = encode(train_rows), encode(val_rows)
    known = {t for t in vocab.tokens if t in _FAMILY_OF}

    def epoch_data() -> np.ndarray:
        if substitution_share == 0.0:
            return train_data
        draws = rng.random(len(train_rows))
        return encode(
            [
                substitute(row, rng, known) if draw < substitution_share else row
                for row, draw in zip(train_rows, draws, strict=True)
            ]
        )

    config = ModelConfig(
        vocab_size=len(vocab), max_len=max_len, d_model=d_model, n_layers=n_layers,
        d_ff=3 * d_model,
    )  # fmt: skip
    model = WyckoffTransformer(config).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    plan = {"epochs": epochs, "steps": epochs * steps_per_epoch}
    warmup = max(1, plan["steps"] // 33)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, plan["steps"] - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Any], int] | None = None
    started = time.perf_counter()
    for epoch in range(epochs):
        if epoch >= plan["epochs"]:
            break
        model.train()
        total = count = 0.0
        for batch in _batches(epoch_data(), batch_size, rng):
            ids = torch.from_numpy(batch).to(dev)
            loss = _loss(model, ids, vocab.pad)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
            count += len(batch)
        model.eval()
        with torch.no_grad():
            val_total = val_count = 0.0
            for batch in _batches(val_data, 256, None):
                ids = torch.from_numpy(batch).to(dev)
                val_total += float(_loss(model, ids, vocab.pad)) * len(batch)
                val_count += len(batch)
        entry = {
            "epoch": epoch + 1,
            "train_loss": total / count,
            "val_loss": val_total / val_count,
            "elapsed_s": time.perf_counter() - started,
        }
        history.append(entry)
        if epoch == 0:
            fits = max(1, int(time_budget_s // max(entry["elapsed_s"], 1e-9)))
            if fits < epochs:
                plan.update(epochs=fits, steps=fits * steps_per_epoch)
                logger.info(
                    "%.0f s per epoch: the schedule is re-planned over %d epochs",
                    entry["elapsed_s"],
                    fits,
                )
        logger.info(
            "epoch %(epoch)d/%(planned)d train %(train_loss).4f val %(val_loss).4f "
            "%(elapsed_s).0f s",
            {**entry, "planned": plan["epochs"]},
        )
        if best is None or entry["val_loss"] < best[0]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = (entry["val_loss"], state, epoch + 1)
        if entry["elapsed_s"] > time_budget_s:
            logger.info("time budget of %.0f s reached after epoch %d", time_budget_s, epoch + 1)
            break
    assert best is not None
    space_group_counts: dict[int, int] = {}
    element_counts: dict[str, int] = {}
    for row in train_rows:
        sg = int(row["space_group"])
        space_group_counts[sg] = space_group_counts.get(sg, 0) + 1
        for el in {e for e, _ in row["sites"]}:
            element_counts[el] = element_counts.get(el, 0) + 1
    checkpoint = {
        "format": 2 if composition_prefix else 1,
        "config": config.to_json(),
        "vocabulary": vocab.to_json(),
        "state_dict": {k: v.half() for k, v in best[1].items()},
        "space_group_counts": space_group_counts,
        "element_counts": element_counts,
    }
    metrics = {
        "parameters": model.num_parameters(),
        "composition_prefix": composition_prefix,
        "substitution_share": substitution_share,
        "train_rows": len(train_data),
        "validation_rows": len(val_data),
        "best_epoch": best[2],
        "best_val_loss": best[0],
        "epochs_run": len(history),
        "epochs_planned": plan["epochs"],
        "history": history,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "device": str(dev),
        "train_time_s": time.perf_counter() - started,
    }
    return checkpoint, metrics


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Write the train/validation loss curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token (nats)")
    ax.set_title("Wyckoff-sequence transformer")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, write the checkpoint, metrics JSON and loss-curve PNG; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--metrics", type=Path, default=None, help="default: OUT with .json")
    parser.add_argument("--plot", type=Path, default=Path("docs/results/autoregressive_loss.png"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-composition-prefix",
        action="store_true",
        help="space group first, no composition prefix (the checkpoints before 2026-12-07)",
    )
    parser.add_argument(
        "--substitution-share",
        type=float,
        default=0.6,
        help="share of training rows per epoch with one element swapped for a chemically "
        "close one (SUBSTITUTION_FAMILIES); 0: none, as the checkpoints before the evening of "
        "2026-12-07 (default: %(default)s, the shipped checkpoint's)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-budget-s", type=float, default=2400.0)
    parser.add_argument(
        "--prepare-only", action="store_true", help="analyse and cache, no training"
    )
    parser.add_argument("--shards", type=int, default=30, help="cache parts (see load_genes)")
    parser.add_argument("--shard", default=None, help="prepare only these parts, e.g. 0,3,6")
    parser.add_argument(
        "--cached-only", action="store_true", help="train on the parts already cached"
    )
    parser.add_argument(
        "--score",
        type=Path,
        nargs="+",
        default=None,
        metavar="CHECKPOINT",
        help="no training: print each checkpoint's negative log-likelihood on the validation "
        "part of --seed (nats per structure, given the composition, and on the space-group "
        "token)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    rows, summary = load_genes(
        args.data_dir,
        args.cache_dir,
        shards=args.shards,
        only_shards=None if args.shard is None else [int(i) for i in args.shard.split(",")],
        cached_only=args.cached_only,
    )
    kept = [
        r
        for r in rows
        if r["num_atoms"] <= MAX_PRIMITIVE_ATOMS
        and len(r["sites"]) <= MAX_SITES
        and len({e for e, _ in r["sites"]}) <= MAX_ELEMENTS
    ]
    summary.update(
        analysed=len(rows),
        kept_at_most_20_atoms=len(kept),
        max_elements=MAX_ELEMENTS,
        symprec=0.1,
        angle_tolerance=5.0,
    )
    logger.info("%d analysed rows, %d with <= %d atoms", len(rows), len(kept), MAX_PRIMITIVE_ATOMS)
    if args.prepare_only:
        return 0
    if args.score:
        _, validation = split(kept, np.random.default_rng(args.seed))
        lines = [
            "| checkpoint | rows | nats per structure | nats given the composition "
            "| nats on the space-group token |",
            "| --- | --- | --- | --- | --- |",
        ]
        for path in args.score:
            nll = score(path, validation)
            lines.append(
                f"| {path} | {nll['rows']:.0f} | {nll['per_structure']:.2f} "
                f"| {nll['given_composition']:.2f} | {nll['space_group']:.2f} |"
            )
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    checkpoint, metrics = train(
        kept,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        d_model=args.d_model,
        n_layers=args.layers,
        time_budget_s=args.time_budget_s,
        composition_prefix=not args.no_composition_prefix,
        substitution_share=args.substitution_share,
    )
    checkpoint["source"] = summary
    metrics["source"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    metrics_path = args.metrics or args.out.with_suffix(".json")
    metrics_path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    plot_history(metrics["history"], args.plot)
    logger.info(
        "wrote %s (%d bytes), %s, %s", args.out, args.out.stat().st_size, metrics_path, args.plot
    )
    return 0


def load_vocabulary(checkpoint: dict[str, Any]) -> Vocabulary:
    """The vocabulary stored in a checkpoint."""
    return Vocabulary.from_json(checkpoint["vocabulary"])


if __name__ == "__main__":
    raise SystemExit(main())
