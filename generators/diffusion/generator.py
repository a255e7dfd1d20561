"""The diffusion generator: crystal structure prediction for fixed atoms, de novo via compositions.

With ``request.formula`` the generator does crystal structure prediction (CSP): the atoms of the
formula (``z`` formula units for every ``z`` that fits ``min_atoms``-``max_atoms``) are fixed and
the model samples the lattice and fractional coordinates (:func:`.model.sample`). Without a
formula it draws charge-balanced compositions from
:func:`~crystalforge.generators.compositions.enumerate_compositions` (chemical system, element
pool, required/excluded elements, atom range) with the request seed, then does CSP for each.

A sample is kept when it is a sensible structure (finite, no two atoms closer than
``min_distance`` Å) and not a duplicate; rejected samples are redrawn up to a budget of
``samples_per_structure`` per requested structure.

Guidance: with ``target_formation_energy`` set, sampling is conditioned on that formation
energy per atom (eV/atom) and ``guidance`` is the classifier-free guidance weight
(``(1 + w) · conditional - w · unconditional``; 0 is plain conditional sampling).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

from crystalforge.core.errors import ConfigError, DataError, GenerationFailed
from crystalforge.generators.base import UniqueCandidates
from crystalforge.generators.compositions import enumerate_compositions

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.generators.base import Family, GenerationRequest
    from crystalforge.generators.compositions import CompositionChoice
    from crystalforge.generators.diffusion.model import Denoiser, Schedules
    from crystalforge.generators.diffusion.templates import Template, TemplateLibrary

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoint.pt"
"""The checkpoint shipped in the package (written by :mod:`.train`)."""
TRAIN_COMMAND = (
    "OMP_NUM_THREADS=1 python -m crystalforge.generators.diffusion.train "
    "--data-dir ../shared/data --out PATH"
)
"""How to make a checkpoint (named in the error when one is missing)."""
NUM_STEPS = 1000
"""Training diffusion steps (``model.NUM_STEPS``, repeated here to keep torch out of imports)."""
TEMPLATE_STEP = 100
"""Forward-noise step for denoising templates with the model (``eval csp``'s
``diffusion-template``; the generator's ``template_step`` when set to it). On 80 validation
cells the first template matched the truth raw in 51 rows, denoised from step 30 / 100 / 200
in 52 / 52 / 51, from 400 in 40."""


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to sample from.

    Attributes:
        model: The denoiser in eval mode on ``device``.
        schedules: Noise schedules.
        energy_stats: Mean and std of the training formation energies (eV/atom).
        element_counts: Training cells per element symbol; empty when the checkpoint does not
            record them (then every element counts as seen).
        device: Torch device of the model.
        path: The checkpoint file.
        info: Other checkpoint fields (training record, rows, seed).
    """

    model: Denoiser
    schedules: Schedules
    energy_stats: tuple[float, float]
    element_counts: dict[str, int]
    device: torch.device
    path: str
    info: dict[str, Any]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` as a torch device.

    Raises:
        ConfigError: Another value, or ``"cuda"`` without CUDA.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


@functools.cache
def load_model(path: str, device: str = "auto") -> LoadedModel:
    """Load a diffusion checkpoint written by :mod:`.train` (cached per path and device).

    Args:
        path: The ``.pt`` file.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        The model with its schedules and statistics.

    Raises:
        DataError: The file does not exist or is not a diffusion checkpoint; the message names
            the path and the training command.
    """
    import torch

    from crystalforge.generators.diffusion.model import (
        Denoiser,
        LatticeStats,
        ModelConfig,
        Schedules,
    )

    if not Path(path).is_file():
        raise DataError(
            f"diffusion checkpoint {path!r} does not exist; train one with {TRAIN_COMMAND}"
        )
    dev = resolve_device(device)
    try:
        checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        model = Denoiser(ModelConfig(**checkpoint["config"]))
        model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
        stats = checkpoint["lattice_stats"]
        model.set_lattice_stats(LatticeStats(tuple(stats["mean"]), tuple(stats["std"])))
    except (KeyError, RuntimeError, TypeError, OSError) as exc:
        raise DataError(
            f"{path!r} is not a diffusion checkpoint of this version ({exc}); "
            f"train one with {TRAIN_COMMAND}"
        ) from exc
    model.eval().to(dev)
    mean, std = checkpoint["energy_stats"]
    info = {k: checkpoint.get(k) for k in ("record", "train_rows", "val_rows", "seed")}
    return LoadedModel(
        model=model,
        schedules=Schedules.default(),
        energy_stats=(float(mean), float(std)),
        element_counts={str(k): int(v) for k, v in checkpoint.get("element_counts", {}).items()},
        device=dev,
        path=path,
        info=info,
    )


def sample_structures(
    loaded: LoadedModel,
    species: Sequence[Sequence[str]],
    *,
    seed: int,
    steps: int = 250,
    corrector_step: float = 0.4,
    target_formation_energy: float | Sequence[float] | None = None,
    guidance: float = 0.0,
    batch_size: int = 64,
    templates: Sequence[Structure] | None = None,
    template_step: int = 1000,
) -> list[Structure]:
    """One structure per entry of ``species`` (the atoms of each cell), batched and seeded.

    Cells are grouped by size into batches of at most ``batch_size``; the result is in input
    order and depends only on the inputs and ``seed``.

    Args:
        loaded: The model (:func:`load_model`).
        species: Element symbols of each cell, e.g. ``[["Na", "Cl"], ["Li", "Li", "O"]]``.
        seed: Seed of the torch generator.
        steps: Reverse diffusion steps.
        corrector_step: Langevin corrector step factor (0 disables the corrector).
        target_formation_energy: Formation energy per atom (eV/atom) to condition on, one
            for all cells or one per cell; ``None`` for unconditioned sampling.
        guidance: Classifier-free guidance weight (used with a target).
        batch_size: Cells per batch.
        templates: One cell per entry to start from (its atoms in the order of
            ``species``): noised to ``template_step`` and denoised from there; ``None``
            samples from pure noise.
        template_step: Forward-noise step of the templates (1-1000; the reverse process
            takes ``steps · template_step / 1000`` steps).

    Returns:
        The structures, unfiltered (they may have overlapping atoms), in input order.

    Raises:
        ValueError: Targets or templates do not pair up with ``species``.
    """
    import torch

    from crystalforge.generators.diffusion.model import lattice_to_rep, rep_to_lattice, sample

    if not species:
        return []
    targets: list[float] | None = None
    if isinstance(target_formation_energy, int | float):
        targets = [float(target_formation_energy)] * len(species)
    elif target_formation_energy is not None:
        targets = [float(x) for x in target_formation_energy]
        if len(targets) != len(species):
            raise ValueError(
                f"{len(targets)} target energies for {len(species)} cells; give one or one per cell"
            )
    if templates is not None:
        if len(templates) != len(species):
            raise ValueError(f"{len(templates)} templates for {len(species)} cells")
        for i, template in enumerate(templates):
            if [site.specie.symbol for site in template] != list(species[i]):
                raise ValueError(f"template {i} has other atoms than species[{i}]")
    dev = loaded.device
    generator = torch.Generator(device=dev).manual_seed(seed % 2**63)
    order = sorted(range(len(species)), key=lambda i: (len(species[i]), i))
    out: dict[int, Structure] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        n = max(len(species[i]) for i in idx)
        numbers = torch.zeros((len(idx), n), dtype=torch.long)
        mask = torch.zeros((len(idx), n))
        for row, i in enumerate(idx):
            numbers[row, : len(species[i])] = torch.tensor([Element(s).Z for s in species[i]])
            mask[row, : len(species[i])] = 1.0
        prop = None
        if targets is not None:
            mean, std = loaded.energy_stats
            prop = torch.tensor([(targets[i] - mean) / std for i in idx], device=dev)
        start = None
        if templates is not None:
            params = torch.tensor([templates[i].lattice.parameters for i in idx])
            rep = lattice_to_rep(params, mask.sum(1).to(params.dtype)).float()
            model = loaded.model
            lat0 = (rep.to(dev) - model.lattice_mean) / model.lattice_std
            frac0 = torch.zeros((len(idx), n, 3))
            for row, i in enumerate(idx):
                frac0[row, : len(species[i])] = torch.tensor(np.mod(templates[i].frac_coords, 1.0))
            start = (lat0, frac0.to(dev))
        lat, frac = sample(
            loaded.model,
            loaded.schedules,
            numbers.to(dev),
            mask.to(dev),
            generator=generator,
            prop=prop,
            guidance=guidance,
            corrector_step=corrector_step,
            steps=steps,
            start=start,
            start_step=template_step if templates is not None else NUM_STEPS,
        )
        params = rep_to_lattice(loaded.model.raw_lattice(lat), mask.sum(1).to(dev)).cpu()
        frac_np = frac.cpu().double().numpy()
        for row, i in enumerate(idx):
            lattice = Lattice.from_parameters(*(float(x) for x in params[row]))
            k = len(species[i])
            out[i] = Structure(lattice, list(species[i]), frac_np[row, :k])
    return [out[i] for i in range(len(species))]


def is_sensible(structure: Structure, min_distance: float) -> bool:
    """Finite cell and coordinates, positive volume, no two atoms closer than ``min_distance``."""
    if not (np.isfinite(structure.lattice.matrix).all() and structure.volume > 1e-3):
        return False
    if not np.isfinite(structure.frac_coords).all():
        return False
    try:
        return len(structure) < 2 or structure.is_valid(tol=min_distance)
    except (np.linalg.LinAlgError, ValueError):  # a degenerate cell
        return False


@dataclass(frozen=True, kw_only=True)
class DiffusionGenerator:
    """DiffCSP-style periodic diffusion model trained in this repo (registry ``diffusion``).

    The same request and seed give the same structures (compositions and cell sizes are drawn
    with ``numpy`` seeded by ``request.seed``, diffusion noise with a torch generator seeded by
    it). Fewer than ``num_structures`` come back, with a warning, when the sample budget or the
    time runs out.
    """

    checkpoint_path: str | None = None
    """Checkpoint written by :mod:`.train`; ``None``: the one shipped in the package."""
    steps: int = 250
    """Reverse diffusion steps (of the 1000 training steps)."""
    corrector_step: float = 0.4
    """Langevin corrector step factor on coordinates; 0 halves the cost."""
    target_formation_energy: float | None = None
    """Formation energy per atom (eV/atom) to condition on; ``None``: unconditioned."""
    guidance: float = 0.0
    """Classifier-free guidance weight toward ``target_formation_energy``."""
    min_distance: float = 0.5
    """Samples with two atoms closer than this (Å) are rejected."""
    samples_per_structure: int = 3
    """Samples drawn per requested structure at most (rejections are redrawn)."""
    batch_size: int = 64
    """Cells per sampling batch."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``."""
    timeout_s: float = 600.0
    """Wall-clock budget of one ``generate`` call, seconds (checked between batches)."""
    templates: int = 4
    """CSP requests: first up to this many distinct nearest templates per cell size (training
    cells of the same stoichiometry, renamed; :mod:`.templates`), then free samples; 0: free
    samples only. De novo requests never use templates."""
    template_step: int = 0
    """0: templates as retrieved (renamed, volume-scaled, exact symmetry kept); 1-1000: the
    forward-noise step from which the model denoises each template. Both matched the same
    share of held-out rows (70 vs 68 of 100, docs/models/diffusion.md), but denoising breaks
    exact symmetry (rock-salt KBr came out C2/m), so 0 is the default."""
    data_dir: str | None = None
    """Data folder of the template library; ``None``: resolved as the reference data is
    (``CRYSTALFORGE_DATA_DIR``, ``../shared/data``). Without one, CSP samples freely and the
    candidates' parameters say why."""
    template_library: TemplateLibrary | None = None
    """Templates to use instead of the checkpoint's training split read from ``data_dir``."""
    name: str = field(default="diffusion", init=False)
    family: Family = field(default="diffusion", init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= NUM_STEPS:
            raise ConfigError(f"steps must be in 1..{NUM_STEPS}, got {self.steps!r}")
        if not (self.corrector_step >= 0 and math.isfinite(self.corrector_step)):
            raise ConfigError(f"corrector_step must be >= 0, got {self.corrector_step!r}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if self.guidance and self.target_formation_energy is None:
            raise ConfigError(
                f"guidance={self.guidance!r} needs target_formation_energy (eV/atom) to be set"
            )
        target = self.target_formation_energy
        if target is not None and not math.isfinite(target):
            raise ConfigError(f"target_formation_energy must be finite, got {target!r}")
        if self.samples_per_structure < 1:
            raise ConfigError(
                f"samples_per_structure must be >= 1, got {self.samples_per_structure!r}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.min_distance >= 0:
            raise ConfigError(f"min_distance must be >= 0, got {self.min_distance!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s!r}")
        if self.templates < 0:
            raise ConfigError(f"templates must be >= 0, got {self.templates!r}")
        if not 0 <= self.template_step <= NUM_STEPS:
            raise ConfigError(
                f"template_step must be in 0..{NUM_STEPS}, got {self.template_step!r}"
            )
        resolve_device(self.device)

    @property
    def loaded(self) -> LoadedModel:
        """The checkpoint (loaded on first use)."""
        return load_model(str(self.checkpoint_path or DEFAULT_CHECKPOINT), self.device)

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose ``request.num_structures`` structures.

        Raises:
            GenerationFailed: The request admits no composition or cell size, or only
                compositions with elements the model never saw, or no sample survived.
            DataError: The checkpoint is missing or unreadable.
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        choices = enumerate_compositions(request)  # raises for impossible requests
        loaded = self.loaded
        choices = self._seen_choices(choices, loaded, request)
        rng = np.random.default_rng(request.seed)
        budget = request.num_structures * self.samples_per_structure
        deadline = time.monotonic() + self.timeout_s
        kept = UniqueCandidates(self.name, request)
        out = kept.items
        drawn = rejected = 0
        note: dict[str, Scalar] = {}

        def offer(structures: list[Structure], parameters: list[dict[str, Scalar]]) -> None:
            """Keep the sensible, distinct samples until the request is filled."""
            nonlocal drawn, rejected
            for structure, params in zip(structures, parameters, strict=True):
                drawn += 1
                if len(out) >= request.num_structures:
                    break
                if not is_sensible(structure, self.min_distance):
                    rejected += 1
                    continue
                kept.add(structure, params)

        if request.formula is not None and self.templates:
            jobs, reason = self._template_jobs(choices, loaded, budget)
            if reason is not None:
                note["templates"] = reason
            starts = [template for _, _, template in jobs]
            offer(
                self._sample(loaded, [t.species for t in starts], rng, starts),
                [
                    self._parameters(choice, z, drawn + j, request)
                    | {
                        "template": template.material_id,
                        "template_rank": template.rank,
                        "template_distance": template.distance,
                        "template_step": self.template_step,
                    }
                    for j, (choice, z, template) in enumerate(jobs)
                ],
            )
        while len(out) < request.num_structures and drawn < budget:
            if time.monotonic() > deadline:
                logger.warning("diffusion: %g s time budget ran out", self.timeout_s)
                break
            missing = request.num_structures - len(out)
            # A quarter more than missing, for the samples the distance check rejects.
            size = min(budget - drawn, math.ceil(1.25 * missing))
            draws = [self._draw(choices, rng, drawn + j) for j in range(size)]
            offer(
                self._sample(loaded, [atoms for _, _, atoms in draws], rng),
                [
                    self._parameters(choice, z, drawn + j, request) | note
                    for j, (choice, z, _) in enumerate(draws)
                ],
            )
        logger.info(
            "diffusion: %d structures from %d samples (%d rejected, %d duplicates)",
            len(out), drawn, rejected, kept.duplicates,
        )  # fmt: skip
        if not out:
            raise GenerationFailed(
                f"diffusion: none of {drawn} samples was a sensible structure "
                f"(atoms closer than {self.min_distance} Å) for {request!r}"
            )
        if len(out) < request.num_structures:
            logger.warning(
                "diffusion: %d of %d structures (sample budget %d)",
                len(out), request.num_structures, budget,
            )  # fmt: skip
        return out

    def _sample(
        self,
        loaded: LoadedModel,
        species: list[list[str]],
        rng: np.random.Generator,
        templates: list[Template] | None = None,
    ) -> list[Structure]:
        """One batched call of :func:`sample_structures` with this generator's settings.

        Templates with ``template_step == 0`` come back as retrieved (no model call).
        """
        if templates is not None and self.template_step == 0:
            return [t.structure.copy() for t in templates]
        return sample_structures(
            loaded,
            species,
            seed=int(rng.integers(2**62)),
            steps=self.steps,
            corrector_step=self.corrector_step,
            target_formation_energy=self.target_formation_energy,
            guidance=self.guidance,
            batch_size=self.batch_size,
            templates=None if templates is None else [t.structure for t in templates],
            template_step=self.template_step,
        )

    def _template_jobs(
        self, choices: list[CompositionChoice], loaded: LoadedModel, budget: int
    ) -> tuple[list[tuple[CompositionChoice, int, Template]], str | None]:
        """Nearest templates of every cell size of a CSP request, best ranks first.

        Returns:
            ``(choice, z, template)`` jobs (at most ``budget``) and, when no library could be
            had, the reason (then there are no jobs).
        """
        try:
            library = self._library(loaded)
        except DataError as exc:
            logger.warning("diffusion: no template library, sampling freely: %s", exc)
            return [], f"unavailable: {exc}"
        if library is None:
            return [], "unavailable: no reference data folder"
        ranked: list[list[tuple[CompositionChoice, int, Template]]] = []
        for choice in choices:
            for z in choice.z_options:
                nearest = library.nearest(_atoms(choice, z), self.templates)
                ranked.append([(choice, z, t) for t in nearest])
        jobs = [job for rank in itertools.zip_longest(*ranked) for job in rank if job is not None]
        return jobs[:budget], None

    def _library(self, loaded: LoadedModel) -> TemplateLibrary | None:
        """The template library of the model's training split; ``None`` without data.

        Raises:
            DataError: The checkpoint does not record its split, or it cannot be recomputed.
        """
        from crystalforge.generators.diffusion.templates import training_library
        from crystalforge.memory.reference_data import resolve_data_dir

        if self.template_library is not None:
            return self.template_library
        root = resolve_data_dir(self.data_dir)
        if root is None:
            return None
        seed, val_rows = loaded.info.get("seed"), loaded.info.get("val_rows")
        if not (isinstance(seed, int) and isinstance(val_rows, int)):
            raise DataError(
                f"checkpoint {Path(loaded.path).name!r} does not record its training split "
                "(seed and val_rows)"
            )
        return training_library(root, seed, val_rows)

    def _seen_choices(
        self,
        choices: list[CompositionChoice],
        loaded: LoadedModel,
        request: GenerationRequest,
    ) -> list[CompositionChoice]:
        """Drop compositions with elements the model never saw; raise if none is left."""
        from crystalforge.generators.diffusion.model import MAX_Z

        def unseen(choice: CompositionChoice) -> list[str]:
            return [
                e
                for e in choice.elements
                if Element(e).Z > MAX_Z
                or (loaded.element_counts and loaded.element_counts.get(e, 0) == 0)
            ]

        kept = [c for c in choices if c.z_options and not unseen(c)]
        if not kept:
            missing = sorted({e for c in choices for e in unseen(c)})
            if missing:
                raise GenerationFailed(
                    f"diffusion: element(s) {missing!r} never occur in the model's training "
                    f"data ({loaded.path}); no composition of {request!r} can be sampled"
                )
            raise GenerationFailed(
                f"diffusion: no composition fits {request.min_atoms}-{request.max_atoms} atoms "
                f"for {request!r}"
            )
        return kept

    @staticmethod
    def _draw(
        choices: list[CompositionChoice],
        rng: np.random.Generator,
        index: int,
    ) -> tuple[CompositionChoice, int, list[str]]:
        """Composition, formula units and atoms of sample ``index``.

        CSP (one formula): the cell sizes cycle in ascending order. De novo: a composition
        uniformly from the choices, then a cell size uniformly from its options.
        """
        if len(choices) == 1:
            choice = choices[0]
            z = choice.z_options[index % len(choice.z_options)]
        else:
            choice = choices[int(rng.integers(len(choices)))]
            z = choice.z_options[int(rng.integers(len(choice.z_options)))]
        return choice, z, _atoms(choice, z)

    def _parameters(
        self, choice: CompositionChoice, z: int, index: int, request: GenerationRequest
    ) -> dict[str, Scalar]:
        parameters: dict[str, Scalar] = {
            "formula": choice.formula,
            "z": z,
            "task": "csp" if request.formula is not None else "de_novo",
            "steps": self.steps,
            "corrector_step": self.corrector_step,
            "sample_index": index,
            "checkpoint": Path(self.loaded.path).name,
        }
        if self.target_formation_energy is not None:
            parameters["target_formation_energy"] = self.target_formation_energy
            parameters["guidance"] = self.guidance
        return parameters


def _atoms(choice: CompositionChoice, z: int) -> list[str]:
    """Element symbols of every atom of ``z`` formula units of ``choice``."""
    symbols, counts = choice.species_and_counts(z)
    return [s for s, n in zip(symbols, counts, strict=True) for _ in range(n)]


def formula_atoms(formula: str) -> list[str]:
    """Element symbols of every atom of ``formula`` as written (not reduced), e.g. for CSP.

    Raises:
        GenerationFailed: ``formula`` does not parse or has fractional amounts.
    """
    try:
        composition = Composition(formula)
    except (ValueError, KeyError) as exc:
        raise GenerationFailed(f"cannot parse formula {formula!r}: {exc}") from exc
    atoms: list[str] = []
    for element, amount in composition.items():
        if abs(amount - round(amount)) > 1e-6:
            raise GenerationFailed(f"formula {formula!r} has a fractional amount of {element}")
        atoms += [element.symbol] * round(amount)
    return atoms
