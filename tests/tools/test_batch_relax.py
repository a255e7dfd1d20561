"""The batched CHGNet relaxation engine against CHGNet's own StructOptimizer (bundled weights).

Not a recorded test: it runs the real model on tiny cells, which is the point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet", reason="CHGNet relaxation needs the 'chgnet' extra")

import torch

from crystalforge.tools.validators.batch_relax import (
    BYTES_PER_ATOM,
    CPU_MAX_ATOMS,
    GPU_MAX_ATOMS,
    GPU_MEMORY_FRACTION,
    GPU_MIN_ATOMS,
    BatchRelaxer,
    BatchRelaxResult,
    default_max_atoms,
)
from crystalforge.tools.validators.chgnet import load_chgnet, relax_structure, resolve_device

pytestmark = pytest.mark.chgnet


def rocksalt(cation: str, anion: str, a: float) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [cation, anion], [[0, 0, 0], [0.5] * 3]
    )


def rattled(structure: Structure, seed: int, sigma: float = 0.05) -> Structure:
    rng = np.random.default_rng(seed)
    out = structure.copy()
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(0.0, sigma, 3), frac_coords=False)
    return out


def tiny_cells() -> list[Structure]:
    mgo = rocksalt("Mg", "O", 4.40)
    mgo.make_supercell([2, 1, 1])
    lif = rocksalt("Li", "F", 3.95)
    lif.make_supercell([1, 2, 1])
    si = Structure(Lattice.cubic(5.55), ["Si"] * 8, _diamond_sites())
    return [rattled(mgo, 0), rattled(lif, 1), rattled(si, 2, 0.03)]


def _diamond_sites() -> list[list[float]]:
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return fcc + [[x + 0.25, y + 0.25, z + 0.25] for x, y, z in fcc]


@pytest.fixture(scope="module")
def one_thread() -> object:
    # One torch thread: the reference path is as fast as it gets on a shared 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    load_chgnet("cpu")
    yield None
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cells() -> list[Structure]:
    return tiny_cells()


@pytest.fixture(scope="module")
def batched(one_thread: object, cells: list[Structure]) -> list[BatchRelaxResult]:
    return BatchRelaxer(device="cpu").relax(cells)


def test_agrees_with_struct_optimizer(batched: list[BatchRelaxResult], cells) -> None:
    for structure, result in zip(cells, batched, strict=True):
        reference = relax_structure(structure, device="cpu")
        assert result.error is None
        assert result.converged
        assert reference.converged
        delta_mev = 1000 * abs(result.energy_per_atom - reference.energy_per_atom)
        assert delta_mev < 3.0, structure.formula
        assert result.structure is not None
        assert result.structure.volume == pytest.approx(reference.structure.volume, rel=0.01)
        assert result.max_force_ev_per_a < 0.1
        assert result.max_cell_force_ev_per_a < 0.1
        assert len(result.magmoms) == len(structure)
        assert result.structure.site_properties["magmom"] == list(result.magmoms)


@pytest.mark.usefixtures("one_thread")
def test_order_preserved_and_refill(cells, batched) -> None:
    # Batches of at most 8 atoms: one or two structures at a time, retired and refilled.
    progress: list[tuple[int, int]] = []
    small = BatchRelaxer(device="cpu", max_atoms_per_batch=8).relax(
        cells, progress=lambda done, total: progress.append((done, total))
    )
    assert [r.index for r in small] == [0, 1, 2]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    for one, many in zip(small, batched, strict=True):
        assert one.structure is not None
        assert one.structure.composition == cells[one.index].composition
        # Batch composition only changes float32 summation order.
        assert one.energy_per_atom == pytest.approx(many.energy_per_atom, abs=2e-4)
        assert abs(one.steps - many.steps) <= 3


@pytest.mark.usefixtures("one_thread")
def test_bad_structures_get_reasons_without_killing_the_batch() -> None:
    good = rocksalt("Mg", "O", 4.3)
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    nan = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [math.nan, 0.5, 0.5]])
    americium = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])
    isolated = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    results = BatchRelaxer(device="cpu", max_steps=50).relax(
        [overlapping, good, nan, americium, isolated, good]
    )
    assert [r.index for r in results] == list(range(6))
    assert str(results[0].error).startswith("overlapping atoms")
    assert str(results[2].error) == "non-finite lattice or coordinates"
    assert str(results[3].error).startswith("CHGNet failed: RuntimeError")
    assert str(results[4].error).startswith("2 isolated atom(s)")
    for index in (1, 5):
        assert results[index].error is None
        assert results[index].converged
        assert -7.0 < results[index].energy_per_atom < -5.5
    assert all(r.structure is None for r in results if r.error)


@pytest.mark.usefixtures("one_thread")
def test_positions_only_keeps_the_cell() -> None:
    structure = rattled(rocksalt("Li", "F", 4.2), 3)
    (result,) = BatchRelaxer(device="cpu", relax_cell=False).relax([structure])
    assert result.structure is not None
    assert result.volume_change == pytest.approx(0.0, abs=1e-9)
    assert result.max_cell_force_ev_per_a == 0.0


def test_empty_input() -> None:
    assert BatchRelaxer(device="cpu").relax([]) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(cells, batched) -> None:
    on_gpu = BatchRelaxer(device="cuda").relax(cells)
    for gpu, cpu in zip(on_gpu, batched, strict=True):
        assert gpu.error is None
        assert gpu.energy_per_atom == pytest.approx(cpu.energy_per_atom, abs=2e-3)


def test_auto_device_follows_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_gpu_batch_budget_comes_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_max_atoms("cpu") == CPU_MAX_ATOMS
    free = 16 * 2**30  # a 16 GiB card, idle
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, free))
    expected = int(free * GPU_MEMORY_FRACTION / BYTES_PER_ATOM)
    assert default_max_atoms("cuda") == expected
    assert 4000 < expected < 5000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**8, free))
    assert default_max_atoms("cuda:0") == GPU_MIN_ATOMS  # nearly full card: still runs
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**13, 10**13))
    assert default_max_atoms("cuda") == GPU_MAX_ATOMS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_runs_on_cuda_with_a_memory_sized_batch(cells) -> None:
    assert resolve_device("auto") == "cuda"
    model = load_chgnet("auto")
    assert next(model.parameters()).device.type == "cuda"
    assert default_max_atoms("cuda") >= GPU_MIN_ATOMS
    results = BatchRelaxer(device="auto").relax(cells)
    assert all(r.error is None for r in results)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_mp20_rows_agree(data_dir) -> None:
    from crystalforge.evals.throughput import load_cells

    structures = load_cells(data_dir, n=12, seed=1)
    results = BatchRelaxer(device="cpu").relax(structures)
    deltas = [
        1000 * abs(r.energy_per_atom - relax_structure(s, device="cpu").energy_per_atom)
        for s, r in zip(structures, results, strict=True)
    ]
    assert float(np.median(deltas)) < 5.0
