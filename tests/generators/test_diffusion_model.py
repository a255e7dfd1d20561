"""Diffusion model pieces: wrapped-normal score, invariances of the denoiser, sampler, training.

Small untrained models on CPU; no checkpoint or data needed.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from crystalforge.generators.diffusion.model import (  # noqa: E402
    Denoiser,
    ModelConfig,
    Schedules,
    diffusion_loss,
    lattice_to_rep,
    rep_to_lattice,
    sample,
    wrapped_normal_score,
)


@pytest.fixture
def model() -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(ModelConfig(hidden=32, layers=2)).eval()


def _batch(b: int = 2, n: int = 5):
    g = torch.Generator().manual_seed(1)
    numbers = torch.randint(1, 90, (b, n), generator=g)
    frac = torch.rand((b, n, 3), generator=g)
    lat = torch.randn((b, 6), generator=g)
    mask = torch.ones(b, n)
    t = torch.tensor([10, 500])[:b]
    return numbers, frac, lat, mask, t


def test_wrapped_normal_score_is_the_gradient_of_the_log_density() -> None:
    delta = torch.tensor([0.1, -0.3, 0.45], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(0.3, dtype=torch.float64)
    k = torch.arange(-6, 7, dtype=torch.float64)
    logp = torch.logsumexp(-((delta[:, None] + k) ** 2) / (2 * sigma**2), dim=1).sum()
    (grad,) = torch.autograd.grad(logp, delta)
    assert torch.allclose(wrapped_normal_score(delta.detach(), sigma), grad, atol=1e-8)
    # Periodic: a whole-cell shift gives the same score.
    assert torch.allclose(wrapped_normal_score(delta.detach() + 1, sigma), grad, atol=1e-6)


def test_lattice_representation_round_trips() -> None:
    params = torch.tensor([[4.0, 5.0, 6.0, 80.0, 95.0, 110.0]])
    n = torch.tensor([7])
    assert torch.allclose(rep_to_lattice(lattice_to_rep(params, n), n), params, atol=1e-3)


def test_denoiser_is_periodic_translation_invariant_and_permutation_equivariant(
    model: Denoiser,
) -> None:
    numbers, frac, lat, mask, t = _batch()
    lat_out, coord_out = model(numbers, frac, lat, mask, t)
    shifted = torch.remainder(frac + torch.tensor([0.37, -0.2, 0.9]), 1.0)
    lat2, coord2 = model(numbers, shifted, lat, mask, t)
    assert torch.allclose(lat_out, lat2, atol=1e-4)
    assert torch.allclose(coord_out, coord2, atol=1e-4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    lat3, coord3 = model(numbers[:, perm], frac[:, perm], lat, mask, t)
    assert torch.allclose(lat_out, lat3, atol=1e-4)
    assert torch.allclose(coord_out[:, perm], coord3, atol=1e-4)
    # Padding does not change real atoms' outputs.
    pad = torch.cat([numbers, torch.zeros(2, 2, dtype=torch.long)], 1)
    lat4, coord4 = model(
        pad,
        torch.cat([frac, torch.rand(2, 2, 3)], 1),
        lat,
        torch.cat([mask, torch.zeros(2, 2)], 1),
        t,
    )
    assert torch.allclose(lat_out, lat4, atol=1e-4)
    assert torch.allclose(coord_out, coord4[:, :5], atol=1e-4)


def test_sampler_is_seeded_and_periodic(model: Denoiser) -> None:
    numbers, _, _, mask, _ = _batch()
    schedules = Schedules.default()
    a = sample(model, schedules, numbers, mask, generator=torch.Generator().manual_seed(3), steps=8)
    b = sample(model, schedules, numbers, mask, generator=torch.Generator().manual_seed(3), steps=8)
    c = sample(model, schedules, numbers, mask, generator=torch.Generator().manual_seed(4), steps=8)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].shape == (2, 6)
    assert float(a[1].min()) >= 0
    assert float(a[1].max()) < 1
    with pytest.raises(ValueError, match="steps must be in"):
        sample(model, schedules, numbers, mask, generator=torch.Generator(), steps=0)


def test_training_lowers_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(hidden=32, layers=2))
    numbers, frac, lat, mask, _ = _batch(b=2)
    schedules = Schedules.default()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_at(seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            parts = [
                diffusion_loss(model, schedules, numbers, frac, lat, mask, None, g)
                for _ in range(8)
            ]
        return float(sum(a + b for a, b in parts)) / 8

    before = loss_at(99)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        a, b = diffusion_loss(model, schedules, numbers, frac, lat, mask, None, g)
        opt.zero_grad()
        (a + b).backward()
        opt.step()
    assert loss_at(99) < 0.8 * before
