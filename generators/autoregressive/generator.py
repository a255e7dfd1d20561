"""The autoregressive generator: sample Wyckoff token sequences, let PyXtal place the atoms.

Sampling writes ``(El #k)* SG (El W)* <eos>`` one token at a time with masked logits (checkpoints
before 2026-12-07 have no composition prefix ``(El #k)*``), so every finished sequence already
satisfies the hard constraints of the request:

* the composition prefix is forced to a composition drawn from the ``wyckoff`` generator's
  priors (``composition="prior"``, the default when the request names elements), or written by
  the model from the request's pool in atomic-number order, required elements included, within
  ``min_atoms``-``max_atoms``, and closed by a space group only when the formula is one of the
  request's charge-balanced compositions;
* the space group is one of ``request.space_groups`` when given, else any group seen in
  training, and its Wyckoff positions can hold each element's count;
* Wyckoff labels are those of the drawn group, in canonical order, never a fixed (zero degree
  of freedom) position twice, and they write exactly the prefix's atoms (without a prefix:
  elements from the pool in canonical order, ``<eos>`` once every required element is present
  and the cell has ``min_atoms``-``max_atoms`` atoms).

A gene without free coordinates is placed once per request, others at most
``max_gene_repeats`` times (repeats relax to the same crystal).

The composition must be one of the request's charge-balanced compositions
(:func:`~crystalforge.generators.compositions.enumerate_compositions`, which also applies
``formula`` and ``compositions``); PyXtal fits a random lattice and free coordinates to the sites
(``from_random`` with those sites) and the structure is reduced to its primitive cell.

Bad input: an element without a token (never seen in training) or requested space groups with
fewer than ``min_space_group_support`` training rows cannot be sampled meaningfully. With
``fallback="wyckoff"`` (default) the request goes to the Wyckoff-prior generator and every such
candidate says so in ``parameters["fallback"]`` and ``parameters["fallback_reason"]``; with
``fallback="none"`` it raises :class:`~crystalforge.core.errors.GenerationFailed` naming the
unsupported condition. The same fallback fills a request the model could not fill.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pymatgen.core import Composition, Element, Structure

from crystalforge.core.errors import ConfigError, DataError, GenerationFailed
from crystalforge.generators.autoregressive.tokenizer import (
    MAX_COUNT,
    MAX_ELEMENTS,
    MAX_SITES,
    Vocabulary,
    WyckoffGene,
    count_token,
    multiplicity,
)
from crystalforge.generators.base import UniqueCandidates
from crystalforge.generators.compositions import charge_balance_of, enumerate_compositions
from crystalforge.generators.packing import PUSH_SCALE, PUSH_STEPS, check_push
from crystalforge.generators.symmetry import centering_multiplicity

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from crystalforge.core.candidate import Candidate, Scalar
    from crystalforge.generators.autoregressive.model import WyckoffTransformer
    from crystalforge.generators.base import Family, GenerationRequest
    from crystalforge.generators.symmetry import Cell, CellPool

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).parent / "data" / "wyckoff_transformer.pt"
Fallback = Literal["wyckoff", "none"]
CompositionSource = Literal["prior", "model", "auto"]
AUTO_BALANCED_SHARE = 0.25
"""``composition="auto"``: the prior's compositions are used when fewer than this share of a
probe batch of the model's own sequences charge-balance for the request (0-2 % in ionic
systems, 37-51 % in intermetallic ones on tuning systems)."""
_BATCH = 64  # sequences sampled per forward batch
MAX_SPECIAL_REPEATS = 2
"""``composition="prior"``: most atom sets one special Wyckoff position with free parameters
(not the general one) takes in a sequence."""


@dataclass(frozen=True)
class _Loaded:
    model: WyckoffTransformer
    vocab: Vocabulary
    space_group_counts: dict[int, int]
    element_counts: dict[str, int]

    @property
    def composition_prefix(self) -> bool:
        """Whether the model writes the composition before the space group."""
        return self.vocab.composition_prefix

    @property
    def elements(self) -> set[str]:
        """Elements the model has tokens for (seen in training)."""
        return {el for el in self.vocab.index if Element.is_valid_symbol(el)}


@functools.cache
def _load(path: str) -> _Loaded:
    import torch

    from crystalforge.generators.autoregressive.model import ModelConfig, WyckoffTransformer

    if not Path(path).is_file():
        raise DataError(
            f"autoregressive checkpoint {path!r} does not exist; train one with "
            "python -m crystalforge.generators.autoregressive.train --out PATH"
        )
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model = WyckoffTransformer(ModelConfig.from_json(checkpoint["config"]))
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    model.eval()
    return _Loaded(
        model,
        Vocabulary.from_json(checkpoint["vocabulary"]),
        {int(k): int(v) for k, v in checkpoint["space_group_counts"].items()},
        {str(k): int(v) for k, v in checkpoint["element_counts"].items()},
    )


@functools.cache
def _wyckoff_table(space_group: int) -> tuple[tuple[str, bool], ...]:
    """``(label, fixed)`` of every Wyckoff position of a group (conventional cell)."""
    from pyxtal.symmetry import Group

    out = []
    for wp in Group(space_group).Wyckoff_positions:
        label = f"{wp.multiplicity}{wp.letter}"  # pyright: ignore[reportAttributeAccessIssue]
        out.append((label, wp.get_dof() == 0))  # pyright: ignore[reportAttributeAccessIssue]
    return tuple(out)


@dataclass
class _State:
    """Constraint bookkeeping of one sequence being sampled."""

    space_group: int = 0
    sites: list[tuple[str, str]] = field(default_factory=list)
    atoms: int = 0  # conventional cell
    done: bool = False
    dead: bool = False
    target: dict[str, int] | None = None
    """Atoms per element of the primitive cell to write exactly (``composition="prior"``, or
    the composition prefix the model wrote)."""
    prefix: list[tuple[str, int]] = field(default_factory=list)
    """The composition prefix written so far (checkpoints with one)."""
    start: int = 1
    """Step at which the space group was written (after the composition prefix)."""

    def left(self, element: str) -> int:
        """Conventional-cell atoms of ``element`` still to place (``target`` set, group drawn)."""
        assert self.target is not None
        placed = sum(multiplicity(w) for e, w in self.sites if e == element and w)
        return self.target.get(element, 0) * centering_multiplicity(self.space_group) - placed


@dataclass(frozen=True, kw_only=True)
class AutoregressiveGenerator:
    """Wyckoff-sequence transformer trained in this repo (registry ``autoregressive``).

    The same request and seed give the same structures (sampling uses a torch generator seeded
    by ``request.seed``; PyXtal seeds are drawn from it). Fewer than ``num_structures`` come back
    (with a warning) when the sample budget or time runs out and the fallback cannot fill them.
    """

    temperature: float = 1.0
    """Softmax temperature of sampling (lower: more typical sequences)."""
    space_group_temperature: float | None = None
    """Softmax temperature of the step that draws the space group (``None``: ``temperature``);
    above 1 it spreads a composition's sequences over more groups while the Wyckoff sites keep
    ``temperature``. It applies where the group is the only kind of token allowed: always with
    ``composition="prior"`` and for checkpoints without a prefix; where the model writes its
    own composition the group competes with the next prefix element and keeps ``temperature``.
    1.5 led on 18 tuning systems x 30 (166 S.U.N. of 540 against 151 for 1.0) but not on the
    30 held-out systems (421 of 1,600 against 435), so the default stays ``None``
    (docs/models/autoregressive.md)."""
    checkpoint_path: str | None = None
    """Checkpoint written by ``autoregressive.train``; ``None``: the one shipped in the package."""
    samples_per_structure: int = 64
    """Sequences sampled per requested structure at most (counted for at least 4 structures)."""
    pyxtal_attempts: int = 2
    """PyXtal placements tried per sampled sequence."""
    volume_factor: float = 1.0
    """Cell volume relative to the learned per-element volumes (``volume_prior``), else to
    PyXtal's sum of atomic volumes."""
    volume_prior: bool = True
    """Scale each placed cell to the sum of per-element atom volumes learned from the training
    rows (the ``wyckoff`` generator's priors), as ``wyckoff`` does."""
    min_distance_ratio: float = 0.5
    """Reject a placement with two atoms closer than this times the sum of covalent radii
    (``0``: off); the same screen as ``wyckoff``."""
    push_steps: int = PUSH_STEPS
    """Rounds of the symmetric hard-sphere push after placement, as ``wyckoff`` (``0``: off;
    see :mod:`~crystalforge.generators.packing`)."""
    push_scale: float = PUSH_SCALE
    """Contact distance of the push relative to the sum of covalent radii."""
    charge_balanced: bool = True
    """Keep only compositions that the request's composition enumeration admits."""
    resample: int = 1
    """``composition="prior"``: each batch keeps one in ``resample`` of its sequences, drawn
    without replacement with the importance weights of the masked sampler (the model's
    probability mass on the allowed tokens; :meth:`_sample_batch`), so that the space group,
    which the model writes before it sees the elements, is chosen as the model would choose it
    for these atoms; 1 (default): keep every sequence. On the 6 tuning systems x 30, 4 made 61
    S.U.N. structures against 63 with 1 (docs/models/autoregressive.md): not adopted."""
    composition: CompositionSource = "prior"
    """Where a sequence's composition comes from when the request names elements:
    ``"prior"`` draws (composition, cell size) as the ``wyckoff`` generator does (its learned
    anonymous-formula and size weights over the request's charge-balanced compositions) and the
    model writes the space group and (element, Wyckoff) tokens for exactly those atoms, as
    CrystalFormer conditions on composition; ``"model"`` lets the model choose the elements and
    their counts too and keeps the sequences whose formula is charge-balanced; ``"auto"``
    takes ``"model"`` when a probe batch shows the model's own sequences mostly charge-balance
    for the request (:data:`AUTO_BALANCED_SHARE`), else ``"prior"``. On 6 tuning
    systems x 30 the model's own structures were S.U.N. in 35.0 % with ``"prior"`` (no
    fallback, 7.5 samples/s) and 25.0 % with ``"model"`` (whose time budget ran out in 32 of
    180, filled by ``wyckoff``; 0.4 samples/s): docs/models/autoregressive.md. Unconditional
    requests always use ``"model"``."""
    max_gene_repeats: int = 2
    """Structures one request takes from the same gene (space group and sites); a gene without
    free coordinates is taken once, whatever this says: its placements differ only in the
    lattice, which CHGNet relaxes to the same crystal."""
    min_space_group_support: int = 3
    """Training rows a requested space group needs to be sampled by the model."""
    fallback: Fallback = "wyckoff"
    """What serves conditions the model cannot: ``"wyckoff"`` (named in the candidates) or
    ``"none"`` (raise)."""
    timeout_s: float = 120.0
    """Wall-clock budget of one ``generate`` call, seconds (checked between batches)."""
    name: str = field(default="autoregressive", init=False)
    family: Family = field(default="autoregressive", init=False)

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be positive, got {self.temperature!r}")
        if self.space_group_temperature is not None and not (
            self.space_group_temperature > 0 and math.isfinite(self.space_group_temperature)
        ):
            raise ConfigError(
                "space_group_temperature must be positive or None, got "
                f"{self.space_group_temperature!r}"
            )
        if self.samples_per_structure < 1:
            raise ConfigError(
                f"samples_per_structure must be >= 1, got {self.samples_per_structure!r}"
            )
        if self.pyxtal_attempts < 1:
            raise ConfigError(f"pyxtal_attempts must be >= 1, got {self.pyxtal_attempts!r}")
        if self.max_gene_repeats < 1:
            raise ConfigError(f"max_gene_repeats must be >= 1, got {self.max_gene_repeats!r}")
        if self.resample < 1:
            raise ConfigError(f"resample must be >= 1, got {self.resample!r}")
        if self.composition not in ("prior", "model", "auto"):
            raise ConfigError(
                f"composition must be 'prior', 'model' or 'auto', got {self.composition!r}"
            )
        if self.fallback not in ("wyckoff", "none"):
            raise ConfigError(f"fallback must be 'wyckoff' or 'none', got {self.fallback!r}")
        if not (self.volume_factor > 0 and math.isfinite(self.volume_factor)):
            raise ConfigError(f"volume_factor must be positive, got {self.volume_factor!r}")
        if not 0.0 <= self.min_distance_ratio < 2.0:
            raise ConfigError(
                f"min_distance_ratio must be in [0, 2), got {self.min_distance_ratio!r}"
            )
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s!r}")
        check_push(self.push_steps, self.push_scale)

    @property
    def _loaded(self) -> _Loaded:
        return _load(str(self.checkpoint_path or DEFAULT_CHECKPOINT))

    def generate(self, request: GenerationRequest) -> list[Candidate]:
        """Propose ``request.num_structures`` structures.

        Raises:
            GenerationFailed: The request admits no structure (see
                :func:`~crystalforge.generators.compositions.enumerate_compositions`), a
                condition is unsupported and ``fallback == "none"``, or nothing could be built.
        """
        if request.num_structures < 0:
            raise GenerationFailed(f"num_structures must be >= 0, got {request.num_structures!r}")
        if request.num_structures == 0:
            return []
        if bad := [sg for sg in request.space_groups if not 1 <= sg <= 230]:
            raise GenerationFailed(f"space groups must be in 1-230, got {bad!r}")
        loaded = self._loaded
        formulas: set[str] | None = None  # None: check each sampled formula on its own
        if _unconditional(request):
            if request.max_atoms < max(request.min_atoms, 1):
                raise GenerationFailed(
                    f"no cell size fits: min_atoms={request.min_atoms!r} > "
                    f"max_atoms={request.max_atoms!r}"
                )
            pool = loaded.elements - set(request.excluded_elements)
            required = set(request.required_elements)
        else:
            choices = enumerate_compositions(request)  # raises for impossible requests
            formulas = {c.formula for c in choices}
            pool, required = _element_pool(request)
        unseen = sorted(e for e in pool | required if e not in loaded.vocab.index)
        problem: str | None = None
        if unseen and (required & set(unseen) or not pool - set(unseen)):
            problem = f"element(s) {unseen!r} never occur in the model's training data"
        pool -= set(unseen)
        groups: tuple[int, ...] = ()
        if request.space_groups:
            groups = tuple(
                sg
                for sg in sorted(set(request.space_groups))
                if loaded.space_group_counts.get(sg, 0) >= self.min_space_group_support
            )
            if not groups and problem is None:
                counts = {sg: loaded.space_group_counts.get(sg, 0) for sg in request.space_groups}
                problem = (
                    f"space group(s) {sorted(set(request.space_groups))!r} have too little "
                    f"training support (rows per group {counts!r}, need "
                    f">= {self.min_space_group_support})"
                )
        if problem is not None:
            return self._fall_back(request, problem, request.num_structures, [])
        out = self._sample(request, loaded, pool, required, groups, formulas)
        if len(out) < request.num_structures:
            missing = request.num_structures - len(out)
            reason = f"the model produced {len(out)} of {request.num_structures} structures"
            if self.fallback == "wyckoff":
                return self._fall_back(request, reason, missing, out)
            logger.warning("autoregressive: %s", reason)
        if not out:
            raise GenerationFailed(f"autoregressive produced no structure for {request!r}")
        return out

    def _build(self, gene: WyckoffGene, seed: int) -> Structure | None:
        """PyXtal's placement of ``gene``, scaled to the learned volume and clash-screened."""
        return place_gene(
            gene,
            seed,
            volume_factor=self.volume_factor,
            volume_prior=self.volume_prior,
            min_distance_ratio=self.min_distance_ratio,
            push_steps=self.push_steps,
            push_scale=self.push_scale,
        )

    # -- sampling --------------------------------------------------------------------------

    def _sample(
        self,
        request: GenerationRequest,
        loaded: _Loaded,
        pool: set[str],
        required: set[str],
        groups: tuple[int, ...],
        formulas: set[str] | None,
    ) -> list[Candidate]:
        import torch

        generator = torch.Generator().manual_seed(request.seed % 2**63)
        deadline = time.monotonic() + self.timeout_s
        budget = max(request.num_structures, 4) * self.samples_per_structure
        kept = UniqueCandidates(self.name, request)
        out = kept.items
        sampled = rejected = failed = repeated = 0
        taken: dict[WyckoffGene, int] = {}  # structures kept per gene
        allowed_groups = groups or tuple(
            sg for sg, n in sorted(loaded.space_group_counts.items()) if n > 0
        )
        cells = None
        if formulas is not None and self._use_prior(
            loaded, generator, pool, required, allowed_groups, request, formulas
        ):
            cells = self._cells(request, pool)
        rng = np.random.default_rng(request.seed)
        balanced = (
            functools.cache(functools.partial(_balanced, formulas=formulas))
            if self.charge_balanced
            else None
        )
        while len(out) < request.num_structures and sampled < budget:
            if time.monotonic() > deadline:
                logger.warning("autoregressive: %g s time budget ran out", self.timeout_s)
                break
            size = min(_BATCH, budget - sampled)
            targets = None if cells is None else [_counts(cells.draw(rng)) for _ in range(size)]
            genes, log_mass = self._sample_batch(
                loaded, generator, size, pool, required, allowed_groups, request, targets, balanced
            )
            if targets is not None and self.resample > 1:
                genes = _resample(genes, log_mass, self.resample, generator)
            sampled += size
            for gene in genes:
                if len(out) >= request.num_structures:
                    break
                if time.monotonic() > deadline:  # PyXtal placements can take seconds each
                    break
                if gene is None:
                    rejected += 1
                    continue
                formula = _formula(gene)
                if formula is None or (balanced is not None and not balanced(formula)):
                    rejected += 1
                    continue
                if taken.get(gene, 0) >= (1 if _rigid(gene) else self.max_gene_repeats):
                    repeated += 1
                    continue
                seed = int(torch.randint(0, 2**62, (1,), generator=generator))
                structure = None
                for attempt in range(self.pyxtal_attempts):
                    structure = self._build(gene, seed + attempt)
                    if structure is not None:
                        break
                if (
                    structure is None
                    or not request.min_atoms <= len(structure) <= request.max_atoms
                ):
                    failed += 1
                    continue
                parameters: dict[str, Scalar] = {
                    "wyckoff_gene": gene.text(),
                    "space_group": gene.space_group,
                    "formula": formula,
                    "temperature": self.temperature,
                    "space_group_temperature": self.space_group_temperature or self.temperature,
                    "composition": "model" if cells is None else "prior",
                    "pyxtal_seed": seed,
                    "volume_factor": self.volume_factor,
                    "volume_prior": self.volume_prior,
                    "push_steps": self.push_steps,
                    "sample_index": sampled - size,
                }
                if kept.add(structure, parameters) is not None:
                    taken[gene] = taken.get(gene, 0) + 1
        logger.info(
            "autoregressive: %d structures from %d sampled sequences (%d off-composition, "
            "%d repeated genes, %d pyxtal failures, %d duplicates)",
            len(out), sampled, rejected, repeated, failed, kept.duplicates,
        )  # fmt: skip
        return out

    def _sample_batch(
        self,
        loaded: _Loaded,
        generator: torch.Generator,
        size: int,
        pool: set[str],
        required: set[str],
        groups: tuple[int, ...],
        request: GenerationRequest,
        targets: list[dict[str, int]] | None = None,
        balanced: Callable[[str], bool] | None = None,
    ) -> tuple[list[WyckoffGene | None], list[float]]:
        """``size`` sequences with masked sampling (``None`` for a dead end), and their weights.

        The weight is the log of the probability mass the model put on the allowed tokens,
        summed over steps: ``log p(sequence) - log q(sequence)`` of the masked proposal ``q``,
        the importance weight for the model's distribution restricted to the constraints.

        ``targets``: atoms per element of each sequence's primitive cell, written exactly (as the
        composition prefix, when the checkpoint has one). Without them a prefix checkpoint writes
        its own composition, and ``balanced`` (a reduced formula -> bool) decides which
        compositions it may end with.
        """
        import torch

        vocab = loaded.vocab
        model = loaded.model
        max_len = model.config.max_len
        ids = torch.full((size, 1), vocab.bos, dtype=torch.long)
        states = [_State(target=None if targets is None else targets[i]) for i in range(size)]
        pool_ids = sorted(vocab.index[e] for e in pool)
        group_ids = [vocab.index[f"SG{g}"] for g in groups]
        group_set = set(group_ids)
        log_mass = torch.zeros(size)
        with torch.no_grad():
            for step in range(1, max_len):
                if all(s.done or s.dead for s in states):
                    break
                raw = model(ids)[:, -1, :]
                temperatures = torch.full((size, 1), self.temperature)
                mask = torch.full_like(raw, -math.inf)
                active = torch.zeros(size, dtype=torch.bool)
                for row, state in enumerate(states):
                    if state.done or state.dead:
                        mask[row, vocab.pad] = 0.0
                        continue
                    active[row] = True
                    position = step - state.start + 1  # 1: the space group
                    if not state.space_group and loaded.composition_prefix:
                        allowed = _allowed_prefix(
                            vocab, state, step, pool_ids, group_ids, required, request, balanced
                        )
                    elif state.target is None:
                        allowed = _allowed(
                            vocab, state, position, pool_ids, group_ids, required, request
                        )
                    else:
                        allowed = _allowed_exact(vocab, state, position, group_ids)
                    if not allowed:
                        state.dead = True
                        mask[row, vocab.pad] = 0.0
                    else:
                        mask[row, allowed] = 0.0
                        if self.space_group_temperature is not None and all(
                            i in group_set for i in allowed
                        ):
                            temperatures[row] = self.space_group_temperature
                logits = raw / temperatures
                allowed_mass = torch.logsumexp(logits + mask, -1) - torch.logsumexp(logits, -1)
                log_mass += torch.where(active, allowed_mass, torch.zeros(()))
                probabilities = torch.softmax(logits + mask, dim=-1)
                token = torch.multinomial(probabilities, 1, generator=generator)
                ids = torch.cat([ids, token], dim=1)
                for row, state in enumerate(states):
                    if not (state.done or state.dead):
                        _advance(vocab, state, int(token[row]), step)
        genes = [
            None if s.dead or not s.done else WyckoffGene(s.space_group, tuple(s.sites))
            for s in states
        ]
        return genes, log_mass.tolist()

    def _use_prior(
        self,
        loaded: _Loaded,
        generator: torch.Generator,
        pool: set[str],
        required: set[str],
        groups: tuple[int, ...],
        request: GenerationRequest,
        formulas: set[str],
    ) -> bool:
        """Whether compositions come from the prior; ``"auto"`` asks a probe batch.

        ``"auto"``: one batch of the model's own sequences (then discarded); below
        :data:`AUTO_BALANCED_SHARE` charge-balanced ones, the prior's compositions are used.
        """
        if self.composition != "auto":
            return self.composition == "prior"
        genes, _ = self._sample_batch(loaded, generator, _BATCH, pool, required, groups, request)
        balanced = sum(
            1 for g in genes if g is not None and (f := _formula(g)) and _balanced(f, formulas)
        )
        share = balanced / len(genes)
        logger.info("autoregressive: %.0f %% of the model's own sequences balance", 100 * share)
        return share < AUTO_BALANCED_SHARE

    def _cells(self, request: GenerationRequest, pool: set[str]) -> CellPool | None:
        """The ``wyckoff`` generator's weighted (composition, size) cells over ``pool``.

        Only cells of trained elements with at most :data:`MAX_COUNT` atoms of each (the
        largest count of the composition prefix); ``None`` when there is none.
        """
        from crystalforge.generators.symmetry import CellPool
        from crystalforge.generators.wyckoff import WyckoffPriorGenerator

        wyckoff = WyckoffPriorGenerator()
        every = wyckoff._pool(request, wyckoff.priors).cells  # pyright: ignore[reportPrivateUsage]
        cells = [
            c
            for c in every
            if set(c.choice.elements) <= pool and max(_counts(c).values()) <= MAX_COUNT
        ]
        return CellPool.of(cells) if cells else None

    # -- fallback --------------------------------------------------------------------------

    def _fall_back(
        self, request: GenerationRequest, reason: str, missing: int, out: list[Candidate]
    ) -> list[Candidate]:
        if self.fallback == "none":
            if out:
                logger.warning("autoregressive: %s", reason)
                return out
            raise GenerationFailed(f"autoregressive cannot serve this request: {reason}")
        import dataclasses

        from crystalforge.generators.wyckoff import WyckoffPriorGenerator

        logger.warning("autoregressive: %s; falling back to the wyckoff generator", reason)
        sub = dataclasses.replace(request, num_structures=missing + len(out))
        filled = UniqueCandidates(self.name, request)
        for candidate in out:
            filled.keep(candidate)
        for candidate in WyckoffPriorGenerator(timeout_s=self.timeout_s).generate(sub):
            if len(filled) >= request.num_structures:
                break
            parameters = {**candidate.parameters, "fallback": "wyckoff", "fallback_reason": reason}
            filled.add(candidate.structure, parameters)
        return filled.items


def _balanced(formula: str, formulas: set[str] | None) -> bool:
    """Whether a sampled formula is charge-balanced for the request.

    ``formulas`` are the request's enumerated compositions; ``None`` (an unconditional
    request) checks the formula on its own with :func:`charge_balance_of`.
    """
    if formulas is not None:
        return formula in formulas
    return charge_balance_of(formula) != "none"


def _unconditional(request: GenerationRequest) -> bool:
    """No chemical system, element pool, formula or composition list: any trained element."""
    return not (
        request.chemical_system
        or request.elements
        or request.formula is not None
        or request.compositions
    )


def _element_pool(request: GenerationRequest) -> tuple[set[str], set[str]]:
    """Elements the sequence may use and those it must use."""
    if request.chemical_system:
        system = set(request.chemical_system)
        return system, system | set(request.required_elements)
    if request.formula is not None or request.compositions:
        formulas = (request.formula,) if request.formula is not None else request.compositions
        symbols = {el.symbol for f in formulas if f for el in Composition(f).elements}
        return symbols, set(request.required_elements)
    if request.elements:
        return set(request.elements) - set(request.excluded_elements), set(
            request.required_elements
        )
    raise GenerationFailed(
        "autoregressive needs chemical_system, elements, formula or compositions in the request"
    )


def _allowed(
    vocab: Vocabulary,
    state: _State,
    step: int,
    pool_ids: list[int],
    group_ids: list[int],
    required: set[str],
    request: GenerationRequest,
) -> list[int]:
    """Token ids allowed next for ``state`` (empty: dead end)."""
    if step == 1:
        return group_ids
    centering = centering_multiplicity(state.space_group)
    if step % 2 == 0:  # element (or end)
        allowed: list[int] = []
        last_z = _z(state.sites[-1][0]) if state.sites else 0
        used_fixed = {w for _, w in state.sites if _fixed(state.space_group, w)}
        room = request.max_atoms * centering - state.atoms
        # Look ahead one token: an element is allowed only if some site can still take it.
        smallest = min(
            (
                multiplicity(label)
                for label, fixed in _wyckoff_table(state.space_group)
                if not (fixed and label in used_fixed)
            ),
            default=room + 1,
        )
        present = {e for e, _ in state.sites}
        missing = required - present
        if len(state.sites) < MAX_SITES and smallest <= room:
            for i in pool_ids:
                element = vocab.tokens[i]
                z = _z(element)
                left = missing - {element}
                # Canonical order is by atomic number: elements still required must come later.
                if z < last_z or any(_z(m) <= z for m in left):
                    continue
                if (len(left) + 1) * smallest > room:
                    continue
                allowed.append(i)
        primitive, remainder = divmod(state.atoms, centering)
        if (
            required <= present
            and present
            and remainder == 0
            and request.min_atoms <= primitive <= request.max_atoms
        ):
            allowed.append(vocab.eos)
        return allowed
    element = state.sites[-1][0] if state.sites else ""
    same = [w for e, w in state.sites[:-1] if e == element]
    used_fixed = {w for _, w in state.sites if _fixed(state.space_group, w)}
    limit = request.max_atoms * centering - state.atoms
    last_key = (multiplicity(same[-1]), same[-1][-1]) if same else (0, "")
    out = []
    for label, fixed in _wyckoff_table(state.space_group):
        if multiplicity(label) > limit or (fixed and label in used_fixed):
            continue
        if (multiplicity(label), label[-1]) < last_key:
            continue
        if label in vocab.index:
            out.append(vocab.index[label])
    return out


def _allowed_exact(vocab: Vocabulary, state: _State, step: int, group_ids: list[int]) -> list[int]:
    """Token ids allowed next when ``state.target`` fixes the atoms (empty: dead end).

    The group must be able to hold every element's count on its Wyckoff positions; elements
    come in canonical (atomic-number) order, each until its count is met; a site's
    multiplicity must fit the element's remaining count and leave a remainder the group can
    still fill.
    """
    assert state.target is not None
    target = state.target
    if step == 1:
        return _groups_holding(vocab, target, group_ids)
    if step % 2 == 0:  # element (or end)
        if state.sites and state.left(state.sites[-1][0]) > 0:
            current = state.sites[-1][0]
            return [vocab.index[current]] if len(state.sites) < MAX_SITES else []
        started = {e for e, _ in state.sites}
        todo = sorted((e for e in target if e not in started), key=_z)
        if not todo:
            return [vocab.eos]
        return [vocab.index[todo[0]]] if len(state.sites) < MAX_SITES else []
    element = state.sites[-1][0]
    left = state.left(element)
    same = [w for e, w in state.sites[:-1] if e == element]
    used = [w for _, w in state.sites[:-1]]
    table = _wyckoff_table(state.space_group)
    general = table[0][0]
    last_key = (multiplicity(same[-1]), same[-1][-1]) if same else (0, "")
    out = []
    for label, fixed in table:
        m = multiplicity(label)
        if m > left or (m, label[-1]) < last_key:
            continue
        # A fixed position holds one atom set; a special line or plane only a few (seven
        # atoms forced onto one line of Pmm2 kept PyXtal busy for 70 s and failed).
        if used.count(label) >= (1 if fixed else MAX_SPECIAL_REPEATS) and label != general:
            continue
        if left - m and not _fillable(state.space_group, left - m):
            continue
        if label in vocab.index:
            out.append(vocab.index[label])
    return out


def _groups_holding(vocab: Vocabulary, counts: dict[str, int], group_ids: list[int]) -> list[int]:
    """Space-group tokens whose Wyckoff positions can hold each element's primitive count."""
    return [
        i
        for i in group_ids
        if all(
            _fillable(g := int(vocab.tokens[i][2:]), n * centering_multiplicity(g))
            for n in counts.values()
        )
    ]


def _allowed_prefix(
    vocab: Vocabulary,
    state: _State,
    step: int,
    pool_ids: list[int],
    group_ids: list[int],
    required: set[str],
    request: GenerationRequest,
    balanced: Callable[[str], bool] | None,
) -> list[int]:
    """Token ids allowed in the composition prefix and for the space group after it.

    With ``state.target`` the prefix is forced to it. Otherwise the model writes it: elements
    of the pool by atomic number (required ones not skipped), each followed by a count, and the
    space group (which ends the prefix) once every required element is present, the cell has
    ``min_atoms``-``max_atoms`` atoms and ``balanced`` accepts the formula.
    """
    if state.target is not None:
        words = [w for e, n in state.target.items() for w in (e, count_token(n))]
        if step - 1 < len(words):
            return [vocab.index[words[step - 1]]]
        return _groups_holding(vocab, state.target, group_ids)
    total = sum(n for _, n in state.prefix)
    present = {e for e, _ in state.prefix}
    missing = required - present
    if (step - 1) % 2:  # the count of the last element; leave an atom for each missing one
        room = min(request.max_atoms - total - len(missing), MAX_COUNT)
        return [vocab.index[count_token(n)] for n in range(1, room + 1)]
    allowed: list[int] = []
    if len(state.prefix) < MAX_ELEMENTS:
        last_z = _z(state.prefix[-1][0]) if state.prefix else 0
        for i in pool_ids:
            element = vocab.tokens[i]
            z = _z(element)
            left = missing - {element}
            if z <= last_z or any(_z(m) < z for m in left):
                continue
            if len(left) + 1 > request.max_atoms - total:
                continue
            allowed.append(i)
    if state.prefix and not missing and request.min_atoms <= total <= request.max_atoms:
        counts = dict(state.prefix)
        if balanced is None or balanced(Composition(counts).reduced_formula):
            allowed += _groups_holding(vocab, counts, group_ids)
    return allowed


def _resample(
    genes: list[WyckoffGene | None],
    log_weights: list[float],
    factor: int,
    generator: torch.Generator,
) -> list[WyckoffGene | None]:
    """``len(genes) // factor`` of the finished genes, by importance weight.

    Drawn without replacement with probabilities proportional to ``exp(log_weights)`` (Gumbel
    top-k), in draw order.
    """
    import torch

    keep = max(1, len(genes) // factor)
    weights = torch.tensor(log_weights, dtype=torch.float64)
    finished = torch.tensor([g is not None for g in genes])
    uniform = torch.rand(len(genes), generator=generator, dtype=torch.float64)
    keys = torch.where(finished, weights - torch.log(-torch.log(uniform)), -math.inf)
    order = torch.argsort(keys, descending=True)[:keep]
    return [genes[int(i)] for i in order if bool(finished[i])]


def _counts(cell: Cell) -> dict[str, int]:
    """Atoms per element of a cell's primitive cell, by atomic number (the prefix's order)."""
    symbols, counts = cell.choice.species_and_counts(cell.z)
    return dict(sorted(zip(symbols, counts, strict=True), key=lambda sc: _z(sc[0])))


@functools.cache
def _fillable(space_group: int, atoms: int) -> bool:
    """Whether ``atoms`` (conventional cell) is a sum of the group's Wyckoff multiplicities.

    Positions with free parameters may repeat, fixed ones count once (a necessary condition:
    positions other elements use are not subtracted).
    """
    reachable = {0}
    for label, fixed in _wyckoff_table(space_group):
        m = multiplicity(label)
        if fixed:
            reachable |= {r + m for r in reachable if r + m <= atoms}
    free = [multiplicity(label) for label, fixed in _wyckoff_table(space_group) if not fixed]
    grow = sorted(reachable)
    seen = set(grow)
    while grow:
        r = grow.pop()
        for m in free:
            if r + m <= atoms and r + m not in seen:
                seen.add(r + m)
                grow.append(r + m)
    return atoms in seen


def _advance(vocab: Vocabulary, state: _State, token: int, step: int) -> None:
    word = vocab.tokens[token]
    if word.startswith("SG"):
        state.space_group = int(word[2:])
        state.start = step
        if state.target is None and state.prefix:
            state.target = dict(state.prefix)
    elif not state.space_group:  # composition prefix: an element, then its count
        if word.startswith("#"):
            state.prefix[-1] = (state.prefix[-1][0], int(word[1:]))
        else:
            state.prefix.append((word, 0))
    elif word == "<eos>":
        state.done = True
    elif (step - state.start) % 2:
        state.sites.append((word, ""))
    else:
        element = state.sites[-1][0]
        state.sites[-1] = (element, word)
        state.atoms += multiplicity(word)


def _rigid(gene: WyckoffGene) -> bool:
    """Whether every site of ``gene`` is a fixed position (no free coordinates)."""
    return all(_fixed(gene.space_group, label) for _, label in gene.sites)


@functools.cache
def _fixed(space_group: int, label: str) -> bool:
    return dict(_wyckoff_table(space_group)).get(label, False)


@functools.cache
def _z(symbol: str) -> int:
    from pymatgen.core import Element

    return Element(symbol).Z


def _formula(gene: WyckoffGene) -> str | None:
    """Reduced formula of a gene; ``None`` when the cell does not divide into primitive cells."""
    try:
        return Composition(gene.primitive_counts()).reduced_formula
    except ValueError:
        return None


def place_gene(
    gene: WyckoffGene,
    seed: int,
    *,
    volume_factor: float = 1.0,
    volume_prior: bool = True,
    min_distance_ratio: float = 0.5,
    push_steps: int = 0,
    push_scale: float = PUSH_SCALE,
) -> Structure | None:
    """:func:`build_from_gene`, then the ``wyckoff`` generator's volume, push and clash screen.

    Every family that samples Wyckoff genes (``autoregressive``, ``wyformer``) places atoms this
    way, so their comparison is one of the models, not of the placement.

    Args:
        gene: Space group and sites.
        seed: PyXtal seed.
        volume_factor: Multiplies the learned volume (or PyXtal's when ``volume_prior`` is off).
        volume_prior: Scale to the per-element atom volumes learned from the training rows.
        min_distance_ratio: Clash screen (see
            :func:`~crystalforge.generators.wyckoff.scale_and_screen`); ``0``: off.
        push_steps: Rounds of the hard-sphere push (``0``: off).
        push_scale: Contact distance of the push relative to the covalent-radius sum.

    Returns:
        The primitive cell, or ``None`` when PyXtal failed or atoms clash.
    """
    from crystalforge.generators.priors import load_priors
    from crystalforge.generators.wyckoff import scale_and_screen

    structure = build_from_gene(gene, seed, 1.0 if volume_prior else volume_factor)
    if structure is None:
        return None
    return scale_and_screen(
        structure,
        load_priors(None) if volume_prior else None,
        volume_factor=volume_factor,
        min_distance_ratio=min_distance_ratio,
        push_steps=push_steps,
        push_scale=push_scale,
    )


def build_from_gene(gene: WyckoffGene, seed: int, volume_factor: float = 1.0) -> Structure | None:
    """PyXtal's random crystal on exactly the sites of ``gene``, as a primitive cell.

    Args:
        gene: Space group and (element, Wyckoff label) sites, conventional cell.
        seed: Seed of PyXtal's random state.
        volume_factor: Cell volume relative to PyXtal's sum of atomic volumes.

    Returns:
        The structure, or ``None`` when PyXtal cannot place the atoms.
    """
    from pyxtal import pyxtal
    from pyxtal.msg import Error as PyXtalError

    species, counts, sites = gene.pyxtal_inputs()
    crystal = pyxtal()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            crystal.from_random(
                3,
                gene.space_group,
                species,
                counts,
                factor=volume_factor,
                sites=sites,
                random_state=np.random.default_rng(seed),
            )
            structure = crystal.to_pymatgen()
            if isinstance(structure, Structure) and centering_multiplicity(gene.space_group) > 1:
                structure = structure.get_primitive_structure(tolerance=0.01)
        except (RuntimeError, ValueError, KeyError, IndexError, PyXtalError) as exc:
            logger.debug("pyxtal failed for %s: %s", gene.text(), exc)
            return None
    if not isinstance(structure, Structure):
        return None
    expected = sum(counts) // centering_multiplicity(gene.space_group)
    return structure if len(structure) == expected else None
