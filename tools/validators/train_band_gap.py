r"""Train the composition band-gap model (:mod:`crystalforge.tools.validators.band_gap`).

One command, seeded, about 12 minutes on one shared core::

    OMP_NUM_THREADS=1 python -m crystalforge.tools.validators.train_band_gap \\
        --out tools/validators/band_gap_mlp.npz --json docs/results/band-gap-train.json

Data (split convention of ``shared/data/README.md``): labels ``band_gap`` from
``mp_20_biternary/val.csv.gz`` and the four ``mp20_hulls`` parquets (compositions only),
deduplicated by ``material_id``, minus every ``material_id`` of ``mp_20_biternary/test`` and of
the ``mpts_52`` rows that share one of those ids. Our own validation part (early stopping and the
metal/gapped threshold) is 10% of the training rows, split by reduced formula so that polymorphs
of one formula sit on one side. The held-out test rows are scored once, at the end.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.tools.validators.band_gap import CHECKPOINT, BandGapModel, featurize

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from pymatgen.core import Composition

logger = logging.getLogger(__name__)

PARQUETS = ("mace", "orb", "uma", "ensemble")


@dataclass(frozen=True)
class Rows:
    """Labelled compositions."""

    ids: list[str]
    compositions: list[Composition]
    gaps: np.ndarray
    """DFT band gaps, eV, ``(n,)``."""


def _data_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    from crystalforge.core.errors import DataError
    from crystalforge.memory.reference_data import resolve_data_dir

    found = resolve_data_dir(None)
    if found is None:
        raise DataError("no offline data: pass --data-dir or set CRYSTALFORGE_DATA_DIR")
    return found


def held_out_ids(data_dir: Path) -> set[str]:
    """``material_id`` of mp_20_biternary/test and of the mpts_52 rows sharing one."""
    import pandas as pd

    test = pd.read_csv(data_dir / "mp_20_biternary" / "test.csv.gz", usecols=["material_id"])
    ids = set(test.material_id)
    for split in ("test", "val"):
        mpts = pd.read_csv(data_dir / "mpts_52" / f"{split}.csv.gz", usecols=["material_id"])
        ids |= set(mpts.material_id) & ids
    return ids


def training_rows(data_dir: Path) -> Rows:
    """The training pool (before our own validation split), deduplicated, held-out ids removed."""
    import pandas as pd
    from pymatgen.core import Composition

    excluded = held_out_ids(data_dir)
    val = pd.read_csv(
        data_dir / "mp_20_biternary" / "val.csv.gz",
        usecols=["material_id", "band_gap", "pretty_formula"],
    )
    seen: set[str] = set()
    ids: list[str] = []
    comps: list[Composition] = []
    gaps: list[float] = []
    for mid, gap, formula in val.itertuples(index=False):
        if mid in excluded or mid in seen:
            continue
        seen.add(mid)
        ids.append(mid)
        comps.append(Composition(formula))
        gaps.append(float(gap))
    for name in PARQUETS:
        frame = pd.read_parquet(
            data_dir / "mp20_hulls" / f"{name}_above_hull_dataset.parquet",
            columns=["material_id", "species_at_sites", "band_gap"],
        )
        for mid, species, gap in frame.itertuples(index=False):
            if mid in excluded or mid in seen:
                continue
            seen.add(mid)
            ids.append(mid)
            comps.append(Composition(collections.Counter(list(species))))
            gaps.append(float(gap))
    return Rows(ids=ids, compositions=comps, gaps=np.array(gaps))


def test_rows(data_dir: Path) -> Rows:
    """The held-out rows: mp_20_biternary/test (structures' compositions)."""
    import pandas as pd
    from pymatgen.core import Composition

    frame: pd.DataFrame = pd.read_csv(
        data_dir / "mp_20_biternary" / "test.csv.gz",
        usecols=["material_id", "band_gap", "pretty_formula"],
    )
    return Rows(
        ids=list(frame.material_id),
        compositions=[Composition(f) for f in frame.pretty_formula],
        gaps=frame.band_gap.to_numpy(dtype=float),
    )


def _formula_bucket(composition: Composition, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{composition.reduced_formula}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def gap_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE overall / on metals (gap 0) / on gapped (gap > 0), eV, and metal-vs-gapped accuracy."""
    err = np.abs(predicted - truth)
    metal = truth <= 0.0
    return {
        "n": len(truth),
        "n_metal": int(metal.sum()),
        "n_gapped": int((~metal).sum()),
        "mae": float(err.mean()),
        "mae_metal": float(err[metal].mean()) if metal.any() else float("nan"),
        "mae_gapped": float(err[~metal].mean()) if (~metal).any() else float("nan"),
        "rmse": float(np.sqrt((err**2).mean())),
        "class_accuracy": float(((predicted > 0) == (truth > 0)).mean()),
    }


def _train_member(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    seed: int,
    hidden: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    dropout: float,
    patience: int,
) -> tuple[Any, dict[str, Any]]:
    """One MLP with two heads, early-stopped on validation MAE (threshold 0.5)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = x_train.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU(), nn.Dropout(dropout)]
        width = h
    body = nn.Sequential(*layers)
    head = nn.Linear(width, 2)
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.float32)
    xv = torch.tensor(x_val, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    best = (float("inf"), -1, None)
    epoch = -1
    for epoch in range(epochs):
        body.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            out = head(body(xt[idx]))
            y = yt[idx]
            gapped = y > 0
            loss = nn.functional.binary_cross_entropy_with_logits(out[:, 0], gapped.float())
            if gapped.any():
                reg = nn.functional.softplus(out[gapped, 1])
                loss = loss + nn.functional.l1_loss(reg, y[gapped])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        body.eval()
        with torch.no_grad():
            out = head(body(xv))
            p = torch.sigmoid(out[:, 0]).numpy()
            g = nn.functional.softplus(out[:, 1]).numpy()
        mae = float(np.abs(np.where(p > 0.5, g, 0.0) - y_val).mean())
        if mae < best[0]:
            state = (
                [
                    (m.weight.detach().T.numpy().copy(), m.bias.detach().numpy().copy())
                    for m in body
                    if isinstance(m, nn.Linear)
                ],
                (head.weight.detach().T.numpy().copy(), head.bias.detach().numpy().copy()),
            )
            best = (mae, epoch, state)
        elif epoch - best[1] >= patience:
            break
    logger.info("member seed %d: best val MAE %.3f eV at epoch %d", seed, best[0], best[1])
    return best[2], {
        "seed": seed,
        "val_mae": best[0],
        "best_epoch": best[1],
        "epochs_run": epoch + 1,
    }


def train(
    data_dir: Path | None = None,
    *,
    seed: int = 0,
    members: int = 5,
    hidden: Sequence[int] = (256, 256, 128),
    epochs: int = 120,
    batch_size: int = 256,
    lr: float = 2e-3,
    dropout: float = 0.1,
    patience: int = 25,
    val_fraction: float = 0.1,
) -> tuple[BandGapModel, dict[str, Any]]:
    """Train the ensemble and score it on the held-out rows.

    Args:
        data_dir: ``shared/data`` (default: the project's data directory).
        seed: Seed of the validation split and of member ``i`` (``seed + i``).
        members: Ensemble size.
        hidden: Hidden-layer widths.
        epochs: Maximum epochs per member.
        batch_size: Rows per step.
        lr: AdamW learning rate (cosine schedule).
        dropout: Dropout after each hidden layer.
        patience: Epochs without validation improvement before stopping a member.
        val_fraction: Fraction of formulas in our own validation part.

    Returns:
        The model and a JSON-ready report (rows, parameters, validation and held-out metrics).
    """
    import torch

    torch.set_num_threads(1)
    root = _data_dir(data_dir)
    started = time.perf_counter()
    pool = training_rows(root)
    held = test_rows(root)
    x_pool = featurize(pool.compositions)
    x_test = featurize(held.compositions)
    in_val = np.array([_formula_bucket(c, seed) < val_fraction for c in pool.compositions])
    x_train, y_train = x_pool[~in_val], pool.gaps[~in_val]
    x_val, y_val = x_pool[in_val], pool.gaps[in_val]
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0)
    scale[scale < 1e-8] = 1.0
    logger.info(
        "rows: %d train, %d own validation, %d held-out test; %d features (%.0f s)",
        len(y_train),
        len(y_val),
        len(held.gaps),
        x_pool.shape[1],
        time.perf_counter() - started,
    )
    states, member_reports = [], []
    for m in range(members):
        state, report = _train_member(
            (x_train - mean) / scale,
            y_train,
            (x_val - mean) / scale,
            y_val,
            seed=seed + m,
            hidden=hidden,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            dropout=dropout,
            patience=patience,
        )
        states.append(state)
        member_reports.append(report)
    model = BandGapModel(
        mean=mean,
        scale=scale,
        layers=tuple(tuple(s[0]) for s in states),
        heads=tuple(s[1] for s in states),
        threshold=0.5,
    )
    best_t, best_mae = 0.5, float("inf")
    for t in np.arange(0.2, 0.81, 0.02):
        trial = BandGapModel(model.mean, model.scale, model.layers, model.heads, float(t))
        mae = float(np.abs(trial.predict_features(x_val)[0] - y_val).mean())
        if mae < best_mae:
            best_t, best_mae = float(t), mae
    model = BandGapModel(model.mean, model.scale, model.layers, model.heads, round(best_t, 2))
    val_pred, _ = model.predict_features(x_val)
    test_pred, _ = model.predict_features(x_test)
    report = {
        "data": {
            "training_pool": len(pool.gaps),
            "train": len(y_train),
            "own_validation": len(y_val),
            "held_out_test": len(held.gaps),
            "gapped_fraction_train": float((y_train > 0).mean()),
            "excluded_ids": len(held_out_ids(root)),
        },
        "params": {
            "seed": seed,
            "members": members,
            "hidden": list(hidden),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "dropout": dropout,
            "patience": patience,
            "val_fraction": val_fraction,
            "features": int(x_pool.shape[1]),
            "threshold": model.threshold,
            "parameters": int(sum(w.size + b.size for s in states for w, b in [*s[0], s[1]])),
        },
        "members": member_reports,
        "own_validation": gap_metrics(val_pred, y_val),
        "held_out_test": gap_metrics(test_pred, held.gaps),
        "baseline_zero_test": gap_metrics(np.zeros_like(held.gaps), held.gaps),
        "seconds": time.perf_counter() - started,
    }
    return model, report


def _provenance(checkpoint: Path) -> dict[str, Any]:
    """Versions, time and the checkpoint's sha256.

    The commit goes in the model card: tools may not import the evals layer's provenance helper,
    and a second copy of it would drift.
    """
    import datetime as dt
    import importlib.metadata

    return {
        "versions": {p: importlib.metadata.version(p) for p in ("torch", "pymatgen", "numpy")},
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, write the checkpoint and (optionally) the report."""
    parser = argparse.ArgumentParser(description="Train the composition band-gap model.")
    parser.add_argument("--out", type=Path, default=CHECKPOINT, help="checkpoint path (.npz)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=120)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model, report = train(args.data_dir, seed=args.seed, members=args.members, epochs=args.epochs)
    model.save(args.out)
    report["checkpoint_bytes"] = args.out.stat().st_size
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**_provenance(args.out), **report}, indent=2) + "\n")
    logger.info("held-out test: %s", json.dumps(report["held_out_test"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
