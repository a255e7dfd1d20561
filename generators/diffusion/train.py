"""Train the diffusion model: ``python -m crystalforge.generators.diffusion.train``.

Usage (from the project root; 1 thread and ``nice`` on a shared CPU)::

    OMP_NUM_THREADS=1 nice -n 10 python -m crystalforge.generators.diffusion.train \
        --data-dir ../shared/data --minutes 40 --out generators/diffusion/checkpoint.pt

Data: :func:`~crystalforge.generators.diffusion.data.load_crystals` (the split convention of
``shared/data/README.md``; held-out ``mp_20_biternary/test`` ids never enter). A seeded
:data:`VAL_SHARE` of those rows is split off for validation. Training stops after ``--epochs``
or ``--minutes``, whichever comes first; the checkpoint of the best validation loss is kept.
The device is ``cuda`` when available unless ``--device`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crystalforge.generators.diffusion.data import Crystal, load_crystals
from crystalforge.generators.diffusion.model import (
    Denoiser,
    LatticeStats,
    ModelConfig,
    Schedules,
    diffusion_loss,
    lattice_to_rep,
    model_config_dict,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

VAL_SHARE = 0.05
"""Share of the training rows held out for validation (seeded)."""
PROP_DROP = 0.2
"""Share of rows trained without the property (the null token), for classifier-free guidance."""
MAX_ATOMS_PER_BATCH = 640
"""Atoms per batch (batches group cells of similar size)."""


def _batches(
    crystals: Sequence[Crystal], rng: np.random.Generator, shuffle: bool
) -> Iterator[list[int]]:
    """Index batches of similar cell sizes with at most :data:`MAX_ATOMS_PER_BATCH` atoms."""
    sizes = np.array([len(c.numbers) for c in crystals])
    order = np.argsort(sizes + (rng.random(len(sizes)) if shuffle else 0), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * sizes[i] > MAX_ATOMS_PER_BATCH:
            batches.append(current)
            current = []
        current.append(int(i))
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)  # pyright: ignore[reportArgumentType]
    yield from batches


def collate(
    crystals: Sequence[Crystal], stats: LatticeStats, energy: tuple[float, float] | None = None
) -> dict[str, torch.Tensor]:
    """Dense padded tensors of a batch: numbers, frac, lattice_rep (standardized), mask, prop."""
    n = max(len(c.numbers) for c in crystals)
    b = len(crystals)
    numbers = torch.zeros((b, n), dtype=torch.long)
    frac = torch.zeros((b, n, 3))
    mask = torch.zeros((b, n))
    for i, c in enumerate(crystals):
        k = len(c.numbers)
        numbers[i, :k] = torch.from_numpy(np.asarray(c.numbers))
        frac[i, :k] = torch.from_numpy(np.asarray(c.frac, dtype=np.float32))
        mask[i, :k] = 1.0
    params = torch.from_numpy(np.stack([c.lattice for c in crystals]).astype(np.float32))
    rep = lattice_to_rep(params, mask.sum(1))
    rep = (rep - torch.tensor(stats.mean)) / torch.tensor(stats.std)
    out = {"numbers": numbers, "frac": frac, "lattice_rep": rep, "mask": mask}
    if energy is not None:
        e = torch.tensor([c.energy for c in crystals], dtype=torch.float32)
        out["prop"] = (e - energy[0]) / energy[1]
    return out


def split_indices(
    count: int, rng: np.random.Generator, limit: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices of ``count`` crystals.

    A permutation drawn from ``rng`` (which advances), cut to ``limit`` when set; its first
    :data:`VAL_SHARE` (at least one) validates. ``eval csp --tuning`` recomputes a checkpoint's
    split with this function, so training must keep using it.
    """
    perm = rng.permutation(count)
    if limit:
        perm = perm[:limit]
    n_val = max(1, round(VAL_SHARE * len(perm)))
    return perm[:n_val], perm[n_val:]


def lattice_stats(crystals: Sequence[Crystal]) -> LatticeStats:
    """Mean and std of the 6-d lattice representation over ``crystals``."""
    params = torch.from_numpy(np.stack([c.lattice for c in crystals]).astype(np.float32))
    counts = torch.tensor([len(c.numbers) for c in crystals])
    rep = lattice_to_rep(params, counts)
    return LatticeStats(
        tuple(float(x) for x in rep.mean(0)), tuple(float(x) for x in rep.std(0).clamp(min=1e-3))
    )


def evaluate(
    model: Denoiser,
    schedules: Schedules,
    crystals: Sequence[Crystal],
    stats: LatticeStats,
    energy: tuple[float, float],
    device: torch.device,
    seed: int = 0,
    deadline: float = math.inf,
) -> tuple[float, float]:
    """Mean (lattice, coordinate) loss over ``crystals`` with fixed noise (seeded).

    Args:
        model: The denoiser.
        schedules: Noise schedules.
        crystals: Validation cells.
        stats: Lattice standardization.
        energy: Mean and std of the formation energy (standardization of the property).
        device: Torch device.
        seed: Seed of the fixed validation noise.
        deadline: ``time.monotonic()`` value after which the remaining batches are skipped
            (the mean is then over the batches done, at least one).

    Returns:
        ``(lattice_loss, coord_loss)`` averaged per cell.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    total_l = total_f = 0.0
    count = 0
    with torch.no_grad():
        for idx in _batches(crystals, np.random.default_rng(seed), shuffle=False):
            if count and time.monotonic() > deadline:
                break
            batch = {
                k: v.to(device)
                for k, v in collate([crystals[i] for i in idx], stats, energy).items()
            }
            lat, coord = diffusion_loss(model, schedules, generator=gen, **batch)
            total_l += float(lat) * len(idx)
            total_f += float(coord) * len(idx)
            count += len(idx)
    model.train()
    return total_l / count, total_f / count


def main(argv: Sequence[str] | None = None) -> int:
    """Train and write a checkpoint plus a JSON training log next to it."""
    parser = argparse.ArgumentParser(description="Train the crystalforge diffusion model.")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path("runs/diffusion/train_cache.npz"))
    parser.add_argument("--out", type=Path, default=Path("generators/diffusion/checkpoint.pt"))
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="use only this many rows (tests)")
    parser.add_argument("--log-every", type=int, default=50, help="log every this many steps")
    parser.add_argument("--plot", type=Path, default=None, help="loss-curve PNG at the end")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="warm start from this checkpoint (same split and size; its epochs are not redone)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)

    crystals, ids = load_crystals(args.data_dir, args.cache)
    rng = np.random.default_rng(args.seed)
    val_idx, train_idx = split_indices(len(crystals), rng, args.limit)
    val = [crystals[i] for i in val_idx]
    train = [crystals[i] for i in train_idx]
    stats = lattice_stats(train)
    energies = np.array([c.energy for c in train])
    energy = (float(np.nanmean(energies)), float(np.nanstd(energies)))
    config = ModelConfig(hidden=args.hidden, layers=args.layers)
    model = Denoiser(config)
    model.set_lattice_stats(stats)
    init_record: dict[str, Any] | None = None
    if args.init is not None:
        init_record = _warm_start(model, args.init, args.seed)
    model.to(device)
    schedules = Schedules.default()
    params = sum(p.numel() for p in model.parameters())
    logger.info("train %d, val %d, %d parameters, device %s", len(train), len(val), params, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    steps_per_epoch = sum(1 for _ in _batches(train, np.random.default_rng(0), shuffle=True))
    deadline = time.monotonic() + args.minutes * 60
    gen = torch.Generator(device=device).manual_seed(args.seed)
    history: list[dict[str, Any]] = []
    best = math.inf
    start = time.monotonic()
    step = 0
    logger.info("%d steps per epoch; budget %.1f minutes", steps_per_epoch, args.minutes)
    window_start, window_steps = time.monotonic(), 0
    for epoch in range(args.epochs):
        # Learning rate: cosine over the time budget (the binding limit on CPU).
        run_l = run_f = 0.0
        epoch_steps = 0
        for idx in _batches(train, rng, shuffle=True):
            frac_time = min(1.0, (time.monotonic() - start) / (args.minutes * 60))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac_time)))
            batch = {
                k: v.to(device) for k, v in collate([train[i] for i in idx], stats, energy).items()
            }
            drop = torch.rand(len(idx), device=device, generator=gen) < PROP_DROP
            batch["prop"] = torch.where(
                drop, torch.full_like(batch["prop"], float("nan")), batch["prop"]
            )
            lat, coord = diffusion_loss(model, schedules, generator=gen, **batch)
            loss = lat + coord
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            run_l += float(lat)
            run_f += float(coord)
            step += 1
            epoch_steps += 1
            window_steps += 1
            if step % args.log_every == 0:
                now = time.monotonic()
                logger.info(
                    "epoch %d step %d/%d lattice %.4f coord %.4f lr %.2e %.2f steps/s",
                    epoch + 1,
                    epoch_steps,
                    steps_per_epoch,
                    run_l / epoch_steps,
                    run_f / epoch_steps,
                    optimizer.param_groups[0]["lr"],
                    window_steps / max(now - window_start, 1e-9),
                )
                window_start, window_steps = now, 0
            if time.monotonic() > deadline:
                break
        # Validation gets at most 2 minutes past the deadline.
        val_l, val_f = evaluate(
            model,
            schedules,
            val,
            stats,
            energy,
            device,
            deadline=max(deadline, time.monotonic()) + 120,
        )
        record = {
            "epoch": epoch + 1,
            "step": step,
            "epoch_steps": epoch_steps,
            "minutes": round((time.monotonic() - start) / 60, 2),
            "train_lattice": run_l / max(epoch_steps, 1),
            "train_coord": run_f / max(epoch_steps, 1),
            "val_lattice": val_l,
            "val_coord": val_f,
        }
        history.append(record)
        logger.info("%s", record)
        if val_l + val_f < best:
            best = val_l + val_f
            _save(args.out, model, stats, energy, record, train, len(val), args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        log = {
            "history": history,
            "hidden": args.hidden,
            "layers": args.layers,
            "lr": args.lr,
            "train_rows": len(train),
            "val_rows": len(val),
            "parameters": params,
            "seed": args.seed,
            "device": str(device),
            "total_minutes": round((time.monotonic() - start) / 60, 2),
            "validation_ids_sample": [ids[i] for i in np.concatenate((val_idx, train_idx))[:5]],
            "init": None if args.init is None else {"path": str(args.init), "record": init_record},
        }
        # Written every epoch so an interrupted run keeps its curve.
        args.out.with_suffix(".log.json").write_text(json.dumps(log, indent=1))
        if time.monotonic() > deadline:
            break
    if args.plot is not None and history:
        plot_history(history, args.plot)
    return 0


def _warm_start(model: Denoiser, path: Path, seed: int) -> dict[str, Any] | None:
    """Load the weights of an earlier run of the same size and split into ``model``.

    Returns:
        The training record stored in that checkpoint (epoch, minutes, losses).

    Raises:
        SystemExit: The checkpoint has another model size or another split seed.
    """
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("config") != model_config_dict(model.config):
        raise SystemExit(
            f"--init {str(path)!r} has model config {checkpoint.get('config')!r}, "
            f"expected {model_config_dict(model.config)!r} (match --hidden and --layers)"
        )
    if checkpoint.get("seed", seed) != seed:
        raise SystemExit(
            f"--init {str(path)!r} was trained with seed {checkpoint.get('seed')!r} (another "
            f"validation split), expected --seed {seed}"
        )
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    record = checkpoint.get("record")
    logger.info("warm start from %s (%s)", path, record)
    return record


def _save(
    path: Path,
    model: Denoiser,
    stats: LatticeStats,
    energy: tuple[float, float],
    record: dict[str, Any],
    crystals: Sequence[Crystal],
    n_val: int,
    args: argparse.Namespace,
) -> None:
    save_checkpoint(
        path,
        model,
        stats=stats,
        energy=energy,
        elements=element_counts(crystals),
        info={"record": record, "train_rows": len(crystals), "val_rows": n_val, "seed": args.seed},
    )


def save_checkpoint(
    path: Path,
    model: Denoiser,
    *,
    stats: LatticeStats,
    energy: tuple[float, float],
    elements: dict[str, int],
    info: dict[str, Any] | None = None,
) -> None:
    """Write a float16 checkpoint that :func:`.generator.load_model` reads.

    Args:
        path: Output ``.pt`` file (parent folders are created).
        model: The denoiser.
        stats: Lattice standardization of the training rows.
        energy: Mean and std of the training formation energies (eV/atom).
        elements: Training cells per element symbol.
        info: Extra fields (training record, row counts, seed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
        for k, v in model.state_dict().items()
    }
    torch.save(
        {
            **(info or {}),
            "format": 1,
            "config": model_config_dict(model.config),
            "state_dict": state,
            "lattice_stats": {"mean": list(stats.mean), "std": list(stats.std)},
            "energy_stats": list(energy),
            "element_counts": elements,
        },
        path,
    )


def plot_history(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Write train/validation lattice and coordinate loss curves (per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in zip(
        axes, ("lattice", "coord"), ("lattice (ε MSE)", "coordinates (σ·score MSE)"), strict=True
    ):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Diffusion model losses")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def element_counts(crystals: Sequence[Crystal]) -> dict[str, int]:
    """Training cells per element symbol (the generator refuses elements never seen)."""
    from pymatgen.core import Element

    counts: dict[int, int] = {}
    for crystal in crystals:
        for z in {int(x) for x in crystal.numbers}:
            counts[z] = counts.get(z, 0) + 1
    return {Element.from_Z(z).symbol: n for z, n in sorted(counts.items())}


if __name__ == "__main__":
    raise SystemExit(main())
