"""Batched CHGNet relaxation: many crystals per forward pass, FIRE with a Fréchet cell filter.

:class:`BatchRelaxer` relaxes positions and cell of many structures at once. Each step evaluates
all structures in the batch in one CHGNet forward pass (energy, forces and stress by one
autograd call), then takes one FIRE step per structure, vectorised over the batch with
per-structure time step, mixing and counters. A structure leaves the batch as soon as it has
converged, failed or used its step budget, and the next waiting structure takes its place;
batches are sized by atom count (``max_atoms_per_batch``).

What it reproduces, and how:

* **Optimizer.** ASE's ``FIRE`` (default parameters: dt 0.1, maxstep 0.2, dtmax 1.0, Nmin 5,
  finc 1.1, fdec 0.5, astart 0.1, fa 0.99) on ASE's ``FrechetCellFilter`` degrees of freedom:
  positions in the undeformed cell plus ``n_atoms * logm(F)`` for the deformation gradient
  ``F``, with the exact gradient of the energy with respect to that log (the Fréchet derivative
  of the matrix exponential, computed batched as a block-matrix exponential). This is what
  ``chgnet.model.dynamics.StructOptimizer`` runs by default, so the same ``fmax`` and step
  budget mean the same thing. Convergence: every row of the filter's force array (atoms, and the
  three cell rows) has norm below ``fmax``, as in ASE.
* **Model.** The CHGNet forward pass of ``CHGNet._compute`` on a batched graph assembled from
  tensors (no pymatgen or ASE objects inside the loop). Forces and stress come from one
  ``torch.autograd.grad`` call without ``create_graph`` (CHGNet's own path keeps the double-
  backward graph for training).
* **Neighbour lists (Verlet skin).** Each structure's atom graph (6 Å) and bond graph (3 Å) are
  built by CHGNet's graph code at cutoffs enlarged by ``skin_a``; every step the edges and
  angles are filtered back to CHGNet's exact cutoffs from the current distances, so each step
  sees the same graph CHGNet would build. The list is rebuilt only when atoms or cell have moved
  enough that a pair outside the enlarged cutoff could have come within 6 Å (a bound on atom
  displacement and cell strain since the last build).

Failures are per structure: a structure that cannot be relaxed (no sites, disordered, non-finite
coordinates, an element CHGNet does not cover, overlapping or isolated atoms, non-finite model
output, an exploding cell) gets an ``error`` and the rest of the batch goes on.

Devices: ``"auto"`` picks CUDA when available. The same code path runs on either; on a GPU the
default batch is sized from the free device memory (:func:`default_max_atoms`, thousands of
atoms) so that one forward pass fills it. Neighbour-list rebuilds run on the CPU (pymatgen) on
both; with the Verlet skin they happen every ~10-30 steps per structure.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from crystalforge.tools.validators.chgnet import (
    ATOM_GRAPH_CUTOFF_A,
    CHGNET_ERRORS,
    DeviceChoice,
    load_chgnet,
    resolve_device,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

BOND_GRAPH_CUTOFF_A = 3.0
"""CHGNet's bond-graph (angle) cutoff, Å."""

MIN_DISTANCE_A = 0.5
"""Atoms closer than this (Å) are overlapping: CHGNet's output is meaningless or NaN there."""

MAX_CELL_SCALE = 10.0
"""A cell whose volume grows or shrinks by more than this factor stops with an error."""

GPA_PER_EV_A3 = 160.21766208
"""1 eV/Å³ in GPa."""

CPU_MAX_ATOMS = 400
"""Atoms per forward pass on CPU: a CHGNet call costs about the same per atom looped or batched
there, so bigger batches only add latency before the first result."""

BYTES_PER_ATOM = 2.2e6
"""Peak memory of one batched energy+forces+stress call per atom, bytes. Measured on CPU
(float32, 5-16-atom MP-20 cells, 500 and 2,000 atoms per call: 2.10 and 2.03 MB/atom of peak
RSS growth, ``docs/benchmarks.md``) plus 10% margin; the CUDA allocator holds the same tensors,
but this was not measured on a GPU."""

GPU_MEMORY_FRACTION = 0.6
"""Share of the free device memory one batch may use (the rest: allocator fragmentation, the
neighbour-list rebuilds, other processes)."""

GPU_MIN_ATOMS = 500
GPU_MAX_ATOMS = 50_000


def default_max_atoms(device: str) -> int:
    """Atoms per batched CHGNet call for ``device`` when the caller does not set it.

    CPU: :data:`CPU_MAX_ATOMS`. CUDA: the free device memory (``torch.cuda.mem_get_info``) times
    :data:`GPU_MEMORY_FRACTION` over :data:`BYTES_PER_ATOM`, clamped to
    [:data:`GPU_MIN_ATOMS`, :data:`GPU_MAX_ATOMS`]; e.g. ~4,400 atoms with 16 GB free, ~22,000
    with 80 GB.

    Args:
        device: A resolved torch device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns:
        The atom budget of one forward pass.
    """
    if not device.startswith("cuda"):
        return CPU_MAX_ATOMS
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    budget = int(free * GPU_MEMORY_FRACTION / BYTES_PER_ATOM)
    return max(GPU_MIN_ATOMS, min(GPU_MAX_ATOMS, budget))


# ASE FIRE defaults (ase.optimize.FIRE), which CHGNet's StructOptimizer uses.
_FIRE_DT = 0.1
_FIRE_MAXSTEP = 0.2
_FIRE_DTMAX = 1.0
_FIRE_NMIN = 5
_FIRE_FINC = 1.1
_FIRE_FDEC = 0.5
_FIRE_ASTART = 0.1
_FIRE_FA = 0.99


@dataclass(frozen=True, kw_only=True)
class BatchRelaxResult:
    """Outcome of relaxing one structure (energies are CHGNet's, on the MP-compatible scale)."""

    index: int
    """Position of the structure in the input sequence."""
    structure: Structure | None
    """Relaxed structure with site property ``magmom`` (μB); ``None`` when ``error`` is set."""
    energy_total_ev: float = math.nan
    """Final total energy of the cell, eV."""
    energy_per_atom: float = math.nan
    """Final energy per atom, eV/atom."""
    max_force_ev_per_a: float = math.nan
    """Largest atomic force at the end, eV/Å."""
    max_cell_force_ev_per_a: float = math.nan
    """Largest row norm of the Fréchet cell force at the end, eV/Å (0 without cell relaxation)."""
    stress_gpa: tuple[float, ...] = ()
    """Final stress, GPa, as the 9 entries of the 3x3 tensor (row-major)."""
    steps: int = 0
    """FIRE steps taken."""
    converged: bool = False
    """Every filter force row (atoms and cell) has norm below ``fmax``."""
    magmoms: tuple[float, ...] = ()
    """Final magnetic moments per site, μB (CHGNet's, absolute values)."""
    volume_change: float = math.nan
    """Relative volume change, (V_final - V_initial) / V_initial."""
    seconds: float = 0.0
    """This structure's share of the wall time: each step's time split evenly over the batch."""
    error: str | None = None
    """Why the structure could not be relaxed; ``None`` on success."""

    @property
    def magmom_mean(self) -> float:
        """Mean absolute magnetic moment, μB/atom (0 when unknown)."""
        return float(np.mean(np.abs(self.magmoms))) if self.magmoms else 0.0


@dataclass(eq=False)
class _Record:
    """Mutable per-structure state while relaxing (internal)."""

    index: int
    structure: Structure
    n: int
    z: torch.Tensor  # [n] long
    comp_energy: float  # composition-model energy per atom, eV/atom
    orig_cell: torch.Tensor  # [3, 3] f64, cell when the relaxation started (rows = vectors)
    inv_orig_cell: torch.Tensor  # [3, 3] f64
    pos_u: torch.Tensor  # [n, 3] f64, positions in the undeformed cell
    log_f: torch.Tensor  # [3, 3] f64, n * logm(F)
    vel: torch.Tensor  # [n + 3, 3] f64
    dt: float = _FIRE_DT
    alpha: float = _FIRE_ASTART
    n_pos: int = 0  # FIRE's Nsteps: consecutive downhill steps
    started: bool = False
    steps: int = 0
    seconds: float = 0.0
    # Neighbour-list topology, built at ``ref_frac`` / ``ref_cell`` with cutoffs + skin.
    atom_graph: torch.Tensor | None = None  # [E, 2] long, directed
    d2u: torch.Tensor | None = None  # [E] long
    u2d: torch.Tensor | None = None  # [U] long
    image: torch.Tensor | None = None  # [E, 3] f64
    bond_graph: torch.Tensor | None = None  # [A, 5] long
    ref_frac: torch.Tensor | None = None  # [n, 3] f64
    ref_cell: torch.Tensor | None = None  # [3, 3] f64
    rebuilds: int = 0


@dataclass(frozen=True, kw_only=True)
class BatchRelaxer:
    """Relax many structures with CHGNet in batched forward passes (FIRE + Fréchet cell filter).

    Example:
        >>> results = BatchRelaxer(fmax_ev_per_a=0.1).relax(structures)  # doctest: +SKIP
        >>> [r.energy_per_atom for r in results]  # doctest: +SKIP
    """

    fmax_ev_per_a: float = 0.1
    """Force threshold, eV/Å, on atoms and on the cell (as in ASE's filters)."""
    max_steps: int = 300
    """Maximum FIRE steps per structure."""
    device: DeviceChoice = "auto"
    """Torch device: ``"auto"`` is CUDA when available, else CPU."""
    max_atoms_per_batch: int | None = None
    """Atoms per forward pass; ``None``: :func:`default_max_atoms` (400 on CPU, from the free
    device memory on CUDA). A structure larger than this still runs, alone."""
    relax_cell: bool = True
    """Relax the lattice too (Fréchet cell filter); otherwise positions only."""
    skin_a: float = 1.0
    """Verlet skin, Å, added to CHGNet's cutoffs when building neighbour lists."""
    num_threads: int | None = None
    """``torch.set_num_threads`` during the relaxation (restored after); ``None`` leaves it."""

    def relax(
        self,
        structures: Sequence[Structure],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[BatchRelaxResult]:
        """Relax every structure.

        Args:
            structures: Ordered structures (any mix of sizes and compositions).
            progress: Called as ``progress(done, total)`` each time a structure finishes.

        Returns:
            One result per input structure, in input order. Structures that could not be
            relaxed have ``error`` set and ``structure=None``.

        Raises:
            MissingExtraError: chgnet (or torch) is not installed.
        """
        if not structures:
            return []
        model = load_chgnet(self.device)
        import torch

        previous_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
                return _Engine(self, model, resolve_device(self.device), progress).run(structures)
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(previous_threads)


class _Engine:
    """One call of :meth:`BatchRelaxer.relax` (internal)."""

    def __init__(
        self,
        config: BatchRelaxer,
        model: Any,
        device: str,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        import torch

        self.torch = torch
        self.config = config
        self.model = model
        self.device = torch.device(device)
        self.progress = progress
        self.fmax = config.fmax_ev_per_a
        self.max_atoms = config.max_atoms_per_batch or default_max_atoms(device)
        self.skin = max(float(config.skin_a), 0.0)
        self.n_elements = int(model.atom_embedding.embedding.num_embeddings)
        self.results: dict[int, BatchRelaxResult] = {}
        self.total = 0
        self.done = 0
        from chgnet.graph.converter import CrystalGraphConverter

        self.converter = CrystalGraphConverter(
            atom_graph_cutoff=ATOM_GRAPH_CUTOFF_A + self.skin,
            bond_graph_cutoff=BOND_GRAPH_CUTOFF_A + self.skin,
            on_isolated_atoms="ignore",
        )

    # ----------------------------------------------------------------------------- driver

    def run(self, structures: Sequence[Structure]) -> list[BatchRelaxResult]:
        self.total = len(structures)
        pending: list[_Record] = []
        for index, structure in enumerate(structures):
            record = self._prepare(index, structure)
            if record is not None:
                pending.append(record)
        pending.reverse()  # pop() from the end takes them in input order
        active: list[_Record] = []
        batch: _Batch | None = None
        while pending or active:
            added = False
            n_atoms = sum(r.n for r in active)
            while pending and (not active or n_atoms + pending[-1].n <= self.max_atoms):
                record = pending.pop()
                active.append(record)
                n_atoms += record.n
                added = True
            if batch is None or added:
                if batch is not None:
                    batch.write_back()
                batch = _Batch(self, active)
            started = time.perf_counter()
            retired = self._step(batch)
            elapsed = time.perf_counter() - started
            for record in batch.records:
                record.seconds += elapsed / len(batch.records)
            if retired:
                batch.write_back()
                active = [r for r in batch.records if r.index not in retired]
                batch = None
        return [self.results[i] for i in range(self.total)]

    def _finish(self, result: BatchRelaxResult) -> None:
        self.results[result.index] = result
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _fail(self, record_or_index: _Record | int, reason: str) -> None:
        if isinstance(record_or_index, _Record):
            index, steps, seconds = (
                record_or_index.index,
                record_or_index.steps,
                record_or_index.seconds,
            )
        else:
            index, steps, seconds = record_or_index, 0, 0.0
        logger.info("batch relaxation of structure %d failed: %s", index, reason)
        self._finish(
            BatchRelaxResult(
                index=index, structure=None, steps=steps, seconds=seconds, error=reason
            )
        )

    # ----------------------------------------------------------------------------- setup

    def _prepare(self, index: int, structure: Structure) -> _Record | None:
        torch = self.torch
        if len(structure) == 0:
            self._fail(index, "structure has no sites")
            return None
        if not structure.is_ordered:
            self._fail(index, "disordered structure: CHGNet needs one species per site")
            return None
        matrix = np.asarray(structure.lattice.matrix, dtype=float)
        frac = np.asarray(structure.frac_coords, dtype=float)
        if not (np.isfinite(matrix).all() and np.isfinite(frac).all()):
            self._fail(index, "non-finite lattice or coordinates")
            return None
        if abs(np.linalg.det(matrix)) < 1e-6:
            self._fail(index, "degenerate lattice (zero volume)")
            return None
        numbers = [site.specie.Z for site in structure]
        unsupported = sorted(
            {site.specie.symbol for site in structure if not 1 <= site.specie.Z <= self.n_elements}
        )
        if unsupported:
            self._fail(
                index,
                "CHGNet failed: RuntimeError: element(s) "
                f"{', '.join(unsupported)} outside CHGNet's Z = 1-{self.n_elements}",
            )
            return None
        n = len(structure)
        cell = torch.tensor(matrix, dtype=torch.float64, device=self.device)
        z = torch.tensor(numbers, dtype=torch.long, device=self.device)
        comp_graph = SimpleNamespace(
            atomic_number=torch.tensor(numbers, dtype=torch.int32, device=self.device)
        )
        with torch.no_grad():
            comp = self.model.composition_model
            comp_energy = 0.0 if comp is None else float(comp([comp_graph]))
        record = _Record(
            index=index,
            structure=structure,
            n=n,
            z=z,
            comp_energy=comp_energy,
            orig_cell=cell,
            inv_orig_cell=torch.linalg.inv(cell),
            pos_u=torch.tensor(frac @ matrix, dtype=torch.float64, device=self.device),
            log_f=torch.zeros(3, 3, dtype=torch.float64, device=self.device),
            vel=torch.zeros(n + 3, 3, dtype=torch.float64, device=self.device),
        )
        try:
            reason = self._build_graph(record, frac, matrix, check=True)
        except CHGNET_ERRORS as exc:
            reason = f"graph construction failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            self._fail(index, reason)
            return None
        return record

    def _build_graph(
        self, record: _Record, frac: np.ndarray, matrix: np.ndarray, *, check: bool = False
    ) -> str | None:
        """(Re)build the skin-enlarged neighbour lists of ``record`` at ``frac``/``matrix``."""
        from pymatgen.core import Lattice, Structure

        torch = self.torch
        structure = Structure(
            Lattice(matrix), record.structure.species, frac, coords_are_cartesian=False
        )
        cutoff = ATOM_GRAPH_CUTOFF_A + self.skin
        center, neighbor, image, distance = structure.get_neighbor_list(
            r=cutoff, sites=structure.sites, numerical_tol=1e-8
        )
        if check:
            if len(distance) and float(distance.min()) < MIN_DISTANCE_A:
                return f"overlapping atoms: two sites {float(distance.min()):.3f} Å apart"
            near = center[distance <= ATOM_GRAPH_CUTOFF_A]
            isolated = record.n - len(set(near.tolist()))
            if isolated:
                return (
                    f"{isolated} isolated atom(s) with no neighbour within "
                    f"{ATOM_GRAPH_CUTOFF_A:g} Å"
                )
        graph = self.converter.create_graph(record.n, center, neighbor, image, distance)
        atom_graph, d2u = graph.adjacency_list()
        bond_graph, u2d = graph.line_graph_adjacency_list(cutoff=BOND_GRAPH_CUTOFF_A + self.skin)
        dev = self.device
        record.atom_graph = torch.as_tensor(np.asarray(atom_graph), dtype=torch.long).reshape(-1, 2)
        record.atom_graph = record.atom_graph.to(dev)
        record.d2u = torch.as_tensor(np.asarray(d2u), dtype=torch.long).reshape(-1).to(dev)
        record.u2d = torch.as_tensor(np.asarray(u2d), dtype=torch.long).reshape(-1).to(dev)
        record.image = torch.as_tensor(np.asarray(image), dtype=torch.float64).reshape(-1, 3)
        record.image = record.image.to(dev)
        record.bond_graph = (
            torch.as_tensor(np.asarray(bond_graph), dtype=torch.long).reshape(-1, 5).to(dev)
        )
        record.ref_frac = torch.tensor(frac, dtype=torch.float64, device=dev)
        record.ref_cell = torch.tensor(matrix, dtype=torch.float64, device=dev)
        record.rebuilds += 1
        return None

    # ----------------------------------------------------------------------------- step

    def _step(self, batch: _Batch) -> set[int]:
        """Evaluate the batch, retire finished structures, FIRE-step the rest."""
        torch = self.torch
        rebuilt = batch.refresh_neighbours()
        if rebuilt:
            batch.assemble_topology()
        try:
            out = batch.evaluate()
        except CHGNET_ERRORS as exc:
            if len(batch.records) == 1:
                (record,) = batch.records
                self._fail(record, f"CHGNet failed: {type(exc).__name__}: {exc}")
                return {record.index}
            # Find the culprit(s): evaluate each structure alone.
            logger.warning("batched CHGNet call failed (%s); retrying one by one", exc)
            retired: set[int] = set()
            for record in batch.records:
                try:
                    _Batch(self, [record]).evaluate()
                except CHGNET_ERRORS as inner:
                    self._fail(record, f"CHGNet failed: {type(inner).__name__}: {inner}")
                    retired.add(record.index)
            if not retired:
                raise
            return retired

        fmax = self.fmax
        energy = out["energy"]  # [B] f64 total
        finite = (
            torch.isfinite(energy)
            & torch.isfinite(out["cell_force"]).flatten(1).all(1)
            & batch.segment_all(torch.isfinite(out["forces"]).all(1))
        )
        atom_norm = out["filter_forces"].norm(dim=1)  # [Na]
        max_atom = batch.segment_max(atom_norm)
        max_cell = out["cell_force"].norm(dim=2).amax(dim=1)  # [B]
        converged = (max_atom < fmax) & (max_cell < fmax)
        volume_ratio = torch.linalg.det(out["deform"])
        exploded = (volume_ratio > MAX_CELL_SCALE) | (volume_ratio < 1.0 / MAX_CELL_SCALE)

        retired: set[int] = set()
        conv = converged.tolist()
        fin = finite.tolist()
        expl = exploded.tolist()
        for b, record in enumerate(batch.records):
            if not fin[b]:
                self._fail(record, f"non-finite CHGNet energy or forces after {record.steps} steps")
                retired.add(record.index)
            elif expl[b]:
                self._fail(
                    record,
                    f"cell volume changed by more than {MAX_CELL_SCALE:g}x "
                    f"after {record.steps} steps",
                )
                retired.add(record.index)
            elif conv[b] or record.steps >= self.config.max_steps:
                self._finish(batch.result(b, out, converged=bool(conv[b])))
                retired.add(record.index)
        batch.fire_step(out, keep=[r.index not in retired for r in batch.records])
        return retired


class _Batch:
    """Concatenated state and topology of the structures being relaxed together (internal)."""

    def __init__(self, engine: _Engine, records: list[_Record]) -> None:
        torch = engine.torch
        self.engine = engine
        self.torch = torch
        self.records = records
        dev = engine.device
        self.dev = dev
        self.counts = torch.tensor([r.n for r in records], dtype=torch.long, device=dev)
        self.size = len(records)
        self.owner = torch.repeat_interleave(torch.arange(self.size, device=dev), self.counts)
        self.z = torch.cat([r.z for r in records])
        self.comp_energy = torch.tensor(
            [r.comp_energy for r in records], dtype=torch.float64, device=dev
        )
        self.orig_cell = torch.stack([r.orig_cell for r in records])
        self.inv_orig_cell = torch.stack([r.inv_orig_cell for r in records])
        self.n_float = self.counts.to(torch.float64)
        # FIRE state
        self.pos_u = torch.cat([r.pos_u for r in records])
        self.log_f = torch.stack([r.log_f for r in records])
        self.vel_atoms = torch.cat([r.vel[: r.n] for r in records])
        self.vel_cell = torch.stack([r.vel[r.n :] for r in records])
        self.dt = torch.tensor([r.dt for r in records], dtype=torch.float64, device=dev)
        self.alpha = torch.tensor([r.alpha for r in records], dtype=torch.float64, device=dev)
        self.n_pos = torch.tensor([r.n_pos for r in records], dtype=torch.long, device=dev)
        self.started = torch.tensor([r.started for r in records], dtype=torch.bool, device=dev)
        self.assemble_topology()

    # ------------------------------------------------------------------ bookkeeping

    def write_back(self) -> None:
        """Copy the batched FIRE state back into the records."""
        pos = self.pos_u.split(self.counts.tolist())
        vel = self.vel_atoms.split(self.counts.tolist())
        dt = self.dt.tolist()
        alpha = self.alpha.tolist()
        n_pos = self.n_pos.tolist()
        started = self.started.tolist()
        for b, record in enumerate(self.records):
            record.pos_u = pos[b]
            record.log_f = self.log_f[b]
            record.vel = self.torch.cat([vel[b], self.vel_cell[b]])
            record.dt, record.alpha, record.n_pos = dt[b], alpha[b], n_pos[b]
            record.started = started[b]

    def segment_sum(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(self.size)
        return out.index_add_(0, self.owner, values)

    def segment_max(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_full((self.size,), -math.inf)
        return out.scatter_reduce_(0, self.owner, values, reduce="amax", include_self=True)

    def segment_all(self, values: torch.Tensor) -> torch.Tensor:
        return self.segment_sum((~values).to(self.torch.float64)) == 0

    def assemble_topology(self) -> None:
        """Concatenate the per-structure neighbour lists with index offsets."""
        torch = self.torch
        atom_off = 0
        dir_off = 0
        und_off = 0
        ag, d2u, u2d, img, bg, edge_owner = [], [], [], [], [], []
        for b, r in enumerate(self.records):
            assert r.atom_graph is not None
            assert r.d2u is not None
            assert r.u2d is not None
            assert r.image is not None
            assert r.bond_graph is not None
            n_dir = len(r.atom_graph)
            n_und = len(r.u2d)
            ag.append(r.atom_graph + atom_off)
            d2u.append(r.d2u + und_off)
            u2d.append(r.u2d + dir_off)
            img.append(r.image)
            offsets = torch.tensor(
                [atom_off, und_off, dir_off, und_off, dir_off], dtype=torch.long, device=self.dev
            )
            bg.append(r.bond_graph + offsets)
            edge_owner.append(torch.full((n_dir,), b, dtype=torch.long, device=self.dev))
            atom_off += r.n
            dir_off += n_dir
            und_off += n_und
        self.atom_graph = torch.cat(ag)
        self.d2u = torch.cat(d2u)
        self.u2d = torch.cat(u2d)
        self.image = torch.cat(img)
        self.bond_graph = torch.cat(bg)
        self.edge_owner = torch.cat(edge_owner)
        self.ref_frac = torch.cat([r.ref_frac for r in self.records if r.ref_frac is not None])
        self.ref_cell = torch.stack([r.ref_cell for r in self.records if r.ref_cell is not None])

    def deformation(self) -> torch.Tensor:
        """Deformation gradients F = expm(log_f / n), [B, 3, 3] f64."""
        return self.torch.linalg.matrix_exp(self.log_f / self.n_float[:, None, None])

    def refresh_neighbours(self) -> bool:
        """Rebuild the neighbour lists of structures that moved beyond the skin."""
        engine = self.engine
        skin = engine.skin
        torch = self.torch
        deform = self.deformation()
        cell = self.orig_cell @ deform.transpose(1, 2)
        frac = torch.einsum("ni,nij->nj", self.pos_u, self.inv_orig_cell[self.owner])
        rebuilt = False
        ref_frac, ref_cell = self.ref_frac, self.ref_cell
        moved = torch.einsum("ni,nij->nj", frac - ref_frac, ref_cell[self.owner]).norm(dim=1)
        d_max = self.segment_max(moved)
        strain = torch.linalg.solve(ref_cell, cell) - torch.eye(
            3, dtype=cell.dtype, device=cell.device
        )
        eps = torch.linalg.matrix_norm(strain, ord=2)
        rc = ATOM_GRAPH_CUTOFF_A
        safe = eps < 0.5
        bound = torch.where(safe, rc / (1.0 - eps.clamp(max=0.5)) - rc + 2.0 * d_max, math.inf)
        stale = (bound >= skin).tolist()
        if any(stale):
            frac_split = frac.split(self.counts.tolist())
            for b, record in enumerate(self.records):
                if stale[b]:
                    engine._build_graph(record, frac_split[b].cpu().numpy(), cell[b].cpu().numpy())
                    rebuilt = True
        return rebuilt

    # ------------------------------------------------------------------ model

    def evaluate(self) -> dict[str, torch.Tensor]:
        """Energy, forces, stress and magmoms of every structure, and the filter forces."""
        torch = self.torch
        model = self.engine.model
        from chgnet.model.model import BatchedGraph

        f32 = torch.float32
        deform = self.deformation()  # f64
        cell64 = self.orig_cell @ deform.transpose(1, 2)
        frac64 = torch.einsum("ni,nij->nj", self.pos_u, self.inv_orig_cell[self.owner])
        with torch.no_grad():
            # Current bond lengths (f64) to cut the skin-enlarged lists back to CHGNet's.
            cart64 = torch.einsum("ni,nij->nj", frac64, cell64[self.owner])
            img64 = torch.einsum("ei,eij->ej", self.image, cell64[self.edge_owner])
            und = self.u2d
            vec = cart64[self.atom_graph[und, 1]] + img64[und] - cart64[self.atom_graph[und, 0]]
            length = vec.norm(dim=1)
            keep_und = length < ATOM_GRAPH_CUTOFF_A
            keep_bg = length < BOND_GRAPH_CUTOFF_A
            keep_dir = keep_und[self.d2u]
            new_und = torch.cumsum(keep_und.long(), 0) - 1
            new_dir = torch.cumsum(keep_dir.long(), 0) - 1
            atom_graph = self.atom_graph[keep_dir]
            d2u = new_und[self.d2u[keep_dir]]
            u2d = new_dir[self.u2d[keep_und]]
            dir_idx = keep_dir.nonzero().squeeze(1)
            bg = self.bond_graph
            keep_ang = keep_bg[bg[:, 1]] & keep_bg[bg[:, 3]]
            bg = bg[keep_ang]
            bond_graph = torch.stack(
                [
                    bg[:, 0],
                    new_und[bg[:, 1]],
                    new_dir[bg[:, 2]],
                    new_und[bg[:, 3]],
                    new_dir[bg[:, 4]],
                ],
                dim=1,
            )
        with torch.enable_grad():
            strain = torch.zeros(self.size, 3, 3, dtype=f32, device=self.dev, requires_grad=True)
            eye = torch.eye(3, dtype=f32, device=self.dev)
            lattice = cell64.to(f32) @ (eye + strain)
            volumes = torch.linalg.det(lattice)
            positions = torch.einsum("ni,nij->nj", frac64.to(f32), lattice[self.owner])
            edge_owner = self.edge_owner[dir_idx]
            image_cart = torch.einsum(
                "ei,eij->ej", self.image[dir_idx].to(f32), lattice[edge_owner]
            )
            center = positions[atom_graph[:, 0]]
            neighbor = positions[atom_graph[:, 1]] + image_cart
            bond_ag, bond_bg, bond_vectors = model.bond_basis_expansion(
                center=center,
                neighbor=neighbor,
                undirected2directed=u2d,
                image=torch.zeros_like(image_cart),
                lattice=eye,
            )
            if len(bond_graph):
                angle_bases = model.angle_basis_expansion(
                    bond_vectors[bond_graph[:, 2]], bond_vectors[bond_graph[:, 4]]
                )
                batched_bond_graph = bond_graph[:, [0, 1, 3]].to(torch.int32)
            else:
                angle_bases = torch.tensor([], device=self.dev)
                batched_bond_graph = torch.tensor([], device=self.dev)
            graph = BatchedGraph(
                atomic_numbers=self.z.to(torch.int32),
                bond_bases_ag=bond_ag,
                bond_bases_bg=bond_bg,
                angle_bases=angle_bases,
                batched_atom_graph=atom_graph.to(torch.int32),
                batched_bond_graph=batched_bond_graph,
                atom_owners=self.owner.to(torch.int32),
                directed2undirected=d2u.to(torch.int32),
                atom_positions=[positions],
                strains=[strain],
                volumes=volumes.detach(),
            )
            prediction = model._compute(graph, compute_magmom=True)
            energy = prediction["e"]  # per atom when the model is intensive
            if model.is_intensive:
                energy = energy * self.counts.to(f32)
            grad_pos, grad_strain = torch.autograd.grad(energy.sum(), [positions, strain])
        n64 = self.n_float
        energy64 = energy.detach().to(torch.float64) + self.comp_energy * n64
        forces = -grad_pos.detach().to(torch.float64)
        de_dstrain = grad_strain.detach().to(torch.float64)  # V * stress, eV
        volumes64 = torch.linalg.det(cell64)
        stress = de_dstrain / volumes64[:, None, None]  # eV/Å^3
        # FrechetCellFilter forces: atoms f @ F; cell -dE/dX with X = n logm(F).
        filter_forces = torch.einsum("ni,nij->nj", forces, deform[self.owner])
        if self.engine.config.relax_cell:
            virial = -de_dstrain
            ucf_grad = virial @ torch.linalg.inv(deform.transpose(1, 2))
            log_f = self.log_f / n64[:, None, None]
            cell_force = _expm_frechet_adjoint(torch, log_f, ucf_grad) / n64[:, None, None]
        else:
            cell_force = torch.zeros_like(self.log_f)
        magmoms = prediction.get("m")
        return {
            "energy": energy64,
            "forces": forces,
            "filter_forces": filter_forces,
            "cell_force": cell_force,
            "stress": stress,
            "deform": deform,
            "cell": cell64,
            "frac": frac64,
            "magmoms": (
                torch.cat([m.detach() for m in magmoms]).to(torch.float64)
                if magmoms
                else torch.zeros(len(self.z), dtype=torch.float64, device=self.dev)
            ),
        }

    def result(self, b: int, out: dict[str, torch.Tensor], *, converged: bool) -> BatchRelaxResult:
        from pymatgen.core import Lattice, Structure

        record = self.records[b]
        start = int(self.counts[:b].sum())
        stop = start + record.n
        cell = out["cell"][b].cpu().numpy()
        frac = out["frac"][start:stop].cpu().numpy()
        magmoms = tuple(float(m) for m in out["magmoms"][start:stop].cpu().tolist())
        structure = Structure(
            Lattice(cell),
            record.structure.species,
            frac % 1.0,
            site_properties={"magmom": list(magmoms)},
        )
        energy = float(out["energy"][b])
        forces = out["forces"][start:stop]
        volume0 = abs(float(np.linalg.det(record.structure.lattice.matrix)))
        return BatchRelaxResult(
            index=record.index,
            structure=structure,
            energy_total_ev=energy,
            energy_per_atom=energy / record.n,
            max_force_ev_per_a=float(forces.norm(dim=1).max()),
            max_cell_force_ev_per_a=float(out["cell_force"][b].norm(dim=1).max()),
            stress_gpa=tuple(float(x) * GPA_PER_EV_A3 for x in out["stress"][b].flatten()),
            steps=record.steps,
            converged=converged,
            magmoms=magmoms,
            volume_change=(structure.volume - volume0) / volume0,
            seconds=record.seconds,
        )

    # ------------------------------------------------------------------ optimizer

    def fire_step(self, out: dict[str, torch.Tensor], keep: list[bool]) -> None:
        """One ASE-FIRE step for every structure still in the batch."""
        torch = self.torch
        f_atoms = out["filter_forces"]
        f_cell = out["cell_force"]
        v_atoms = self.vel_atoms
        v_cell = self.vel_cell
        started = self.started
        vf = self.segment_sum((f_atoms * v_atoms).sum(1)) + (f_cell * v_cell).sum((1, 2))
        ff = self.segment_sum((f_atoms * f_atoms).sum(1)) + (f_cell * f_cell).sum((1, 2))
        vv = self.segment_sum((v_atoms * v_atoms).sum(1)) + (v_cell * v_cell).sum((1, 2))
        downhill = started & (vf > 0.0)
        uphill = started & ~(vf > 0.0)
        # Downhill: mix velocity toward the force.
        mix = torch.where(downhill, self.alpha, torch.zeros_like(self.alpha))
        scale = torch.where(downhill, torch.sqrt(vv) / torch.sqrt(ff).clamp(min=1e-300), 0.0)
        grow = downhill & (self.n_pos > _FIRE_NMIN)
        new_dt = torch.where(grow, (self.dt * _FIRE_FINC).clamp(max=_FIRE_DTMAX), self.dt)
        new_alpha = torch.where(grow, self.alpha * _FIRE_FA, self.alpha)
        new_n = torch.where(downhill, self.n_pos + 1, self.n_pos)
        # Uphill (or the first step): stop, shrink dt, reset alpha.
        keep_v = (~uphill).to(torch.float64)
        new_dt = torch.where(uphill, self.dt * _FIRE_FDEC, new_dt)
        new_alpha = torch.where(uphill, torch.full_like(self.alpha, _FIRE_ASTART), new_alpha)
        new_n = torch.where(uphill, torch.zeros_like(new_n), new_n)
        keep_v = keep_v * started.to(torch.float64)  # first step: velocity starts at zero

        owner = self.owner
        v_atoms = (1.0 - mix)[owner, None] * v_atoms + (mix * scale)[owner, None] * f_atoms
        v_cell = (1.0 - mix)[:, None, None] * v_cell + (mix * scale)[:, None, None] * f_cell
        v_atoms = keep_v[owner, None] * v_atoms + new_dt[owner, None] * f_atoms
        v_cell = keep_v[:, None, None] * v_cell + new_dt[:, None, None] * f_cell
        dr_atoms = new_dt[owner, None] * v_atoms
        dr_cell = new_dt[:, None, None] * v_cell
        norm = torch.sqrt(self.segment_sum((dr_atoms**2).sum(1)) + (dr_cell**2).sum((1, 2)))
        shrink = torch.where(norm > _FIRE_MAXSTEP, _FIRE_MAXSTEP / norm.clamp(min=1e-300), 1.0)
        active = torch.tensor(keep, dtype=torch.bool, device=self.dev)
        shrink = torch.where(active, shrink, torch.zeros_like(shrink))
        self.pos_u = self.pos_u + shrink[owner, None] * dr_atoms
        if self.engine.config.relax_cell:
            self.log_f = self.log_f + shrink[:, None, None] * dr_cell
        self.vel_atoms = v_atoms
        self.vel_cell = v_cell
        self.dt = new_dt
        self.alpha = new_alpha
        self.n_pos = new_n
        self.started = torch.ones_like(started)
        for b, record in enumerate(self.records):
            if keep[b]:
                record.steps += 1


def _expm_frechet_adjoint(torch: Any, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``M[m, n] = sum(L(a, E_mn) * g)`` for the Fréchet derivative L of expm, batched.

    The adjoint of ``E -> L(a, E)`` under the Frobenius product is ``G -> L(a^T, G)``, and
    ``L(x, y)`` is the upper-right block of ``expm([[x, y], [0, x]])``.

    Args:
        torch: The torch module.
        a: Matrices, [B, 3, 3].
        g: Directions, [B, 3, 3].

    Returns:
        [B, 3, 3].
    """
    batch = a.shape[0]
    block = a.new_zeros(batch, 6, 6)
    at = a.transpose(1, 2)
    block[:, :3, :3] = at
    block[:, 3:, 3:] = at
    block[:, :3, 3:] = g
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


__all__ = ["BatchRelaxResult", "BatchRelaxer"]
