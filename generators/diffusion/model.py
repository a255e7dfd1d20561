"""Denoiser network, noise schedules and the predictor-corrector sampler.

The model follows the DiffCSP recipe (Jiao et al., NeurIPS 2023), written from the paper:

* **Lattice**: DDPM (cosine schedule, :data:`NUM_STEPS` steps) on a 6-d invariant
  representation: ``log(a, b, c / N^(1/3))`` and ``cos(α, β, γ)``, standardized with training
  statistics. Lattice parameters are invariant under rotations, so any network output is.
* **Fractional coordinates**: score matching with wrapped-normal noise on the 3-torus
  (variance-exploding, σ from :data:`SIGMA_MIN` to :data:`SIGMA_MAX`, geometric).
* **Denoiser**: message passing on the fully connected graph inside the cell. Edge features are
  Fourier features of fractional-coordinate differences ``f_j - f_i`` (periodic and
  translation-invariant), the minimum-image distance under the current lattice, and the
  lattice representation; nodes carry element embeddings; the graph carries a time embedding
  and an optional property embedding (formation energy per atom) with a learned "null" token
  for classifier-free guidance. Everything seen by the network is E(3)-invariant.

Batches are dense: ``(B, N)`` atoms padded to the largest cell of the batch, with a mask.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

NUM_STEPS = 1000
"""Diffusion steps T (training and sampling)."""
SIGMA_MIN = 0.005
"""Smallest wrapped-normal σ on fractional coordinates (at t = 1)."""
SIGMA_MAX = 0.5
"""Largest wrapped-normal σ on fractional coordinates (at t = T)."""
MAX_Z = 100
"""Largest atomic number the element embedding covers."""
X0_CLIP = 5.0
"""Sampling clips the estimated clean lattice representation to ± this many training stds."""
_WRAPS = 3  # images summed per side for the wrapped-normal score


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of :class:`Denoiser` (stored in checkpoints)."""

    hidden: int = 128
    layers: int = 4
    frequencies: int = 8
    rbf: int = 16
    cutoff: float = 8.0


@dataclass(frozen=True)
class LatticeStats:
    """Mean and standard deviation of the 6-d lattice representation over training rows."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def lattice_to_rep(params: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Lattice parameters to the unstandardized 6-d representation.

    Args:
        params: ``(B, 6)``: a, b, c in Å, α, β, γ in degrees.
        num_atoms: ``(B,)`` atoms per cell.

    Returns:
        ``(B, 6)``: ``log(length / N^(1/3))`` for the three lengths, cosines of the angles.
    """
    scale = num_atoms.to(params.dtype).clamp(min=1) ** (1 / 3)
    lengths = torch.log(params[:, :3] / scale[:, None])
    cosines = torch.cos(torch.deg2rad(params[:, 3:]))
    return torch.cat([lengths, cosines], dim=1)


def rep_to_lattice(rep: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`lattice_to_rep`; cosines are clipped to (-0.95, 0.95).

    Returns:
        ``(B, 6)`` lattice parameters (Å, degrees).
    """
    scale = num_atoms.to(rep.dtype).clamp(min=1) ** (1 / 3)
    lengths = torch.exp(rep[:, :3].clamp(-3, 3)) * scale[:, None]
    angles = torch.rad2deg(torch.arccos(rep[:, 3:].clamp(-0.95, 0.95)))
    return torch.cat([lengths, angles], dim=1)


def lattice_matrix(rep: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    """Row-vector lattice matrices ``(B, 3, 3)`` in Å from the 6-d representation.

    A standard orientation (a along x, b in the xy plane); degenerate angle triples are kept
    finite by clamping the squared z component.
    """
    scale = num_atoms.to(rep.dtype).clamp(min=1) ** (1 / 3)
    a, b, c = (torch.exp(rep[:, i].clamp(-3, 3)) * scale for i in range(3))
    ca, cb, cg = (rep[:, 3 + i].clamp(-0.95, 0.95) for i in range(3))
    sg = torch.sqrt(1 - cg**2)
    cx = cb
    cy = (ca - cb * cg) / sg
    cz = torch.sqrt((1 - cx**2 - cy**2).clamp(min=1e-3))
    zero = torch.zeros_like(a)
    rows = [
        torch.stack([a, zero, zero], dim=1),
        torch.stack([b * cg, b * sg, zero], dim=1),
        torch.stack([c * cx, c * cy, c * cz], dim=1),
    ]
    return torch.stack(rows, dim=1)


def cosine_alpha_bars(steps: int = NUM_STEPS, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal), shape ``(steps + 1,)``, ᾱ_0 = 1."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    bars = (f / f[0]).clamp(min=1e-5)
    betas = (1 - bars[1:] / bars[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)]).float()


def sigmas(steps: int = NUM_STEPS) -> torch.Tensor:
    """Wrapped-normal σ_t, shape ``(steps + 1,)``, σ_0 = 0 and geometric from t = 1 to T."""
    geometric = torch.exp(torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), steps))
    return torch.cat([torch.zeros(1), geometric])


def wrapped_normal_score(delta: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """∂/∂x log of the wrapped normal density at displacement ``delta``, summed over images.

    Args:
        delta: Displacements ``x_t - x_0`` in fractional units, any shape.
        sigma: σ broadcastable to ``delta``.

    Returns:
        The score, same shape as ``delta`` (units 1/fractional).
    """
    k = torch.arange(-_WRAPS, _WRAPS + 1, dtype=delta.dtype, device=delta.device)
    shifted = delta[..., None] + k  # (..., 2W+1)
    s2 = (sigma**2)[..., None]
    logits = -(shifted**2) / (2 * s2)
    weights = torch.softmax(logits, dim=-1)
    return (weights * (-shifted / s2)).sum(-1)


def _time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``t`` ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None] * (1000.0 / NUM_STEPS)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class _Layer(nn.Module):
    """One message-passing layer on the dense fully connected graph of each cell."""

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.src = nn.Linear(hidden, hidden)
        self.dst = nn.Linear(hidden, hidden, bias=False)
        self.edge = nn.Linear(edge_dim, hidden, bias=False)
        self.msg = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Update node states ``h`` ``(B, N, H)`` from edge features ``(B, N, N, E)``."""
        pre = self.src(h)[:, :, None] + self.dst(h)[:, None] + self.edge(edges)
        messages = self.msg(pre) * mask[:, None, :, None]
        agg = messages.sum(2) / mask.sum(1).clamp(min=1)[:, None, None]
        return h + self.update(torch.cat([self.norm(h), agg], dim=-1)) * mask[..., None]


class Denoiser(nn.Module):
    """E(3)-invariant periodic denoiser: predicts lattice noise and scaled coordinate scores."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.element = nn.Embedding(MAX_Z + 1, h)
        self.time = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.lattice_in = nn.Linear(6, h)
        self.prop = nn.Sequential(nn.Linear(1, h), nn.SiLU(), nn.Linear(h, h))
        self.null_prop = nn.Parameter(torch.zeros(h))
        edge_dim = 6 * config.frequencies + config.rbf + 6
        self.layers = nn.ModuleList(_Layer(h, edge_dim) for _ in range(config.layers))
        self.graph = nn.ModuleList(nn.Linear(h, h) for _ in range(config.layers))
        self.coord_out = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))
        self.lattice_out = nn.Sequential(nn.Linear(2 * h, h), nn.SiLU(), nn.Linear(h, 6))
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, config.frequencies + 1))
        self.register_buffer("centers", torch.linspace(0, config.cutoff, config.rbf))
        self.freqs: torch.Tensor
        self.centers: torch.Tensor
        # Standardization of the lattice representation, replaced by set_lattice_stats.
        self.lattice_mean: torch.Tensor
        self.lattice_std: torch.Tensor
        self.register_buffer("lattice_mean", torch.zeros(6))
        self.register_buffer("lattice_std", torch.ones(6))

    def forward(
        self,
        numbers: torch.Tensor,
        frac: torch.Tensor,
        lattice_rep: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        prop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the noise of the lattice and the σ-scaled score of coordinates.

        Args:
            numbers: ``(B, N)`` atomic numbers (0 for padding).
            frac: ``(B, N, 3)`` noisy fractional coordinates.
            lattice_rep: ``(B, 6)`` noisy standardized lattice representation.
            mask: ``(B, N)`` 1.0 for atoms, 0.0 for padding.
            t: ``(B,)`` integer steps in ``1..T``.
            prop: ``(B,)`` standardized property, NaN where unconditioned; ``None`` for none.

        Returns:
            ``(lattice_eps (B, 6), coord_score (B, N, 3))``; the coordinate output estimates
            ``σ_t · ∇ log q(x_t | x_0)``.
        """
        stats_rep = lattice_rep
        n = mask.sum(1)
        emb = self.time(_time_features(t, self.config.hidden)) + self.lattice_in(stats_rep)
        if prop is None:
            prop = torch.full_like(n, float("nan"))
        known = ~torch.isnan(prop)
        prop_emb = self.prop(torch.nan_to_num(prop)[:, None])
        emb = emb + torch.where(known[:, None], prop_emb, self.null_prop.expand_as(prop_emb))
        edges = self._edges(frac, self.raw_lattice(lattice_rep), n, stats_rep)
        h = self.element(numbers) * mask[..., None]
        for layer, graph in zip(self.layers, self.graph, strict=True):
            h = layer(h + graph(emb)[:, None], edges, mask)
        coord = self.coord_out(h) * mask[..., None]
        pooled = (h * mask[..., None]).sum(1) / n.clamp(min=1)[:, None]
        lat = self.lattice_out(torch.cat([pooled, emb], dim=-1))
        return lat, coord

    def set_lattice_stats(self, stats: LatticeStats) -> None:
        """Store the standardization of the lattice representation (buffers, checkpointed)."""
        self.lattice_mean.copy_(torch.tensor(stats.mean))
        self.lattice_std.copy_(torch.tensor(stats.std))

    def raw_lattice(self, lattice_rep: torch.Tensor) -> torch.Tensor:
        """Undo the standardization: ``(B, 6)`` standardized -> unstandardized representation."""
        return lattice_rep * self.lattice_std + self.lattice_mean

    def _edges(
        self, frac: torch.Tensor, raw_rep: torch.Tensor, n: torch.Tensor, rep: torch.Tensor
    ) -> torch.Tensor:
        diff = frac[:, None, :, :] - frac[:, :, None, :]  # (B, N, N, 3): f_j - f_i
        angles = diff[..., None] * self.freqs  # (B, N, N, 3, K)
        fourier = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
        image = diff - torch.round(diff)
        cart = image @ lattice_matrix(raw_rep, n)[:, None]  # (B, N, N, 3) Å
        dist = torch.sqrt((cart**2).sum(-1) + 1e-8)
        width = self.config.cutoff / self.config.rbf
        rbf = torch.exp(-(((dist[..., None] - self.centers) / width) ** 2))
        b, m = frac.shape[:2]
        lat = rep[:, None, None, :].expand(b, m, m, 6)
        return torch.cat([fourier, rbf, lat], dim=-1)


@dataclass
class Schedules:
    """Precomputed schedules: ᾱ_t for the lattice, σ_t for coordinates (index 0..T)."""

    alpha_bars: torch.Tensor
    sigmas: torch.Tensor

    @classmethod
    def default(cls) -> Schedules:
        """The schedules of :data:`NUM_STEPS` steps."""
        return cls(cosine_alpha_bars(), sigmas())


def diffusion_loss(
    model: Denoiser,
    schedules: Schedules,
    numbers: torch.Tensor,
    frac: torch.Tensor,
    lattice_rep: torch.Tensor,
    mask: torch.Tensor,
    prop: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice DDPM loss and coordinate score-matching loss for one batch.

    Args:
        model: The denoiser.
        schedules: Noise schedules.
        numbers: ``(B, N)`` atomic numbers.
        frac: ``(B, N, 3)`` clean fractional coordinates.
        lattice_rep: ``(B, 6)`` clean standardized lattice representation.
        mask: ``(B, N)`` atom mask.
        prop: ``(B,)`` standardized property with NaN for dropped (unconditioned) rows.
        generator: Torch RNG for the noise.

    Returns:
        ``(lattice_loss, coord_loss)``, scalar MSEs.
    """
    b = numbers.shape[0]
    dev = numbers.device
    t = torch.randint(1, NUM_STEPS + 1, (b,), device=dev, generator=generator)
    abar = schedules.alpha_bars.to(dev)[t][:, None]
    eps_l = torch.randn(lattice_rep.shape, device=dev, generator=generator)
    noisy_l = abar.sqrt() * lattice_rep + (1 - abar).sqrt() * eps_l
    sigma = schedules.sigmas.to(dev)[t][:, None, None]
    noise = torch.randn(frac.shape, device=dev, generator=generator) * sigma
    noisy_f = torch.remainder(frac + noise, 1.0)
    target = sigma * wrapped_normal_score(noise, sigma.expand_as(noise))
    pred_l, pred_f = model(numbers, noisy_f, noisy_l, mask, t, prop)
    lat_loss = ((pred_l - eps_l) ** 2).mean()
    per_atom = ((pred_f - target) ** 2).sum(-1) * mask
    coord_loss = per_atom.sum() / (3 * mask.sum())
    return lat_loss, coord_loss


@torch.no_grad()
def sample(
    model: Denoiser,
    schedules: Schedules,
    numbers: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    prop: torch.Tensor | None = None,
    guidance: float = 0.0,
    corrector_step: float = 0.4,
    steps: int = 250,
    progress: Callable[[int], None] | None = None,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    start_step: int = NUM_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse diffusion for fixed atom types (crystal structure prediction).

    Lattice: ancestral DDPM steps. Coordinates: DiffCSP's predictor-corrector (one Langevin
    corrector step of size ``corrector_step · σ_t²`` then a reverse-SDE predictor step).

    Args:
        model: The denoiser (eval mode).
        schedules: Noise schedules.
        numbers: ``(B, N)`` atomic numbers, 0 for padding.
        mask: ``(B, N)`` atom mask.
        generator: Torch RNG; the same seed gives the same samples.
        prop: ``(B,)`` standardized target property, or ``None`` for unconditioned sampling.
        guidance: Classifier-free guidance weight w (0 = conditional only); the model output
            is ``(1 + w) · cond - w · uncond``. Ignored when ``prop`` is ``None``.
        corrector_step: Langevin step factor (σ_t² units); 0 skips the corrector (half the
            network calls).
        steps: Reverse steps, evenly spaced over the :data:`NUM_STEPS` training steps
            (respaced DDPM for the lattice, larger predictor jumps for coordinates).
        progress: Called with the step index, for logging.
        start: ``(lattice_rep (B, 6) standardized, frac (B, N, 3))`` of cells to start from
            (templates): they are noised to ``start_step`` by the forward process and
            denoised from there (SDEdit); ``None`` starts from pure noise at ``NUM_STEPS``.
        start_step: The step the reverse process starts at (with ``start``); the steps taken
            are ``steps`` scaled by ``start_step / NUM_STEPS`` (at least one).

    Returns:
        ``(lattice_rep (B, 6) standardized, frac (B, N, 3) in [0, 1))``.
    """
    dev = numbers.device
    b, n = numbers.shape
    abars = schedules.alpha_bars.to(dev)
    sig = schedules.sigmas.to(dev)
    if not 1 <= steps <= NUM_STEPS:
        raise ValueError(f"steps must be in 1..{NUM_STEPS}, got {steps!r}")
    if not 1 <= start_step <= NUM_STEPS:
        raise ValueError(f"start_step must be in 1..{NUM_STEPS}, got {start_step!r}")
    if start is None:
        start_step = NUM_STEPS
        lat = torch.randn((b, 6), device=dev, generator=generator)
        frac = torch.rand((b, n, 3), device=dev, generator=generator)
    else:
        lat0, frac0 = (x.to(dev) for x in start)
        a0 = abars[start_step]
        noise = torch.randn((b, 6), device=dev, generator=generator)
        lat = torch.sqrt(a0) * lat0 + torch.sqrt(1 - a0) * noise
        noise = torch.randn((b, n, 3), device=dev, generator=generator)
        frac = torch.remainder(frac0 + sig[start_step] * noise, 1.0)
        steps = max(1, round(steps * start_step / NUM_STEPS))

    def predict(
        frac_: torch.Tensor, lat_: torch.Tensor, tt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if prop is None:
            return model(numbers, frac_, lat_, mask, tt, None)
        lc, fc = model(numbers, frac_, lat_, mask, tt, prop)
        if guidance == 0.0:
            return lc, fc
        lu, fu = model(numbers, frac_, lat_, mask, tt, None)
        return (1 + guidance) * lc - guidance * lu, (1 + guidance) * fc - guidance * fu

    grid = torch.linspace(start_step, 0, steps + 1).round().long().tolist()
    for step, prev in itertools.pairwise(grid):
        if progress is not None:
            progress(step)
        tt = torch.full((b,), step, device=dev, dtype=torch.long)
        s_t, s_prev = sig[step], sig[prev]
        if corrector_step > 0:  # Langevin corrector on coordinates.
            _, score = predict(frac, lat, tt)
            eta = corrector_step * s_t**2
            z = torch.randn(frac.shape, device=dev, generator=generator)
            frac = torch.remainder(frac + eta * score / s_t + torch.sqrt(2 * eta) * z, 1.0)
        # Predictor: lattice DDPM step and coordinate reverse-SDE step.
        eps, score = predict(frac, lat, tt)
        a_t, a_prev = abars[step], abars[prev]
        alpha = a_t / a_prev
        beta = 1 - alpha
        # Posterior mean through the clipped clean estimate: the same as
        # (lat - beta / sqrt(1 - a_t) * eps) / sqrt(alpha) when nothing is clipped, but an error
        # in eps is not amplified by 1 / sqrt(alpha) on the large first jumps of few steps.
        x0 = ((lat - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)).clamp(-X0_CLIP, X0_CLIP)
        mean = (torch.sqrt(a_prev) * beta * x0 + torch.sqrt(alpha) * (1 - a_prev) * lat) / (1 - a_t)
        if prev > 0:
            var = beta * (1 - a_prev) / (1 - a_t)
            lat = mean + torch.sqrt(var) * torch.randn(lat.shape, device=dev, generator=generator)
        else:
            lat = mean
        gap = s_t**2 - s_prev**2
        std = torch.sqrt(s_prev**2 * gap / s_t**2) if prev > 0 else torch.zeros(())
        z = torch.randn(frac.shape, device=dev, generator=generator)
        frac = torch.remainder(frac + gap * score / s_t + std * z, 1.0)
    return lat, frac


def model_config_dict(config: ModelConfig) -> dict[str, float | int]:
    """The config as a plain dict (for checkpoints)."""
    return asdict(config)
