"""Template retrieval for crystal structure prediction: known cells of the same stoichiometry.

Many crystals of a new composition adopt a structure type that a chemically similar compound
already has. For the atoms of a target cell, :class:`TemplateLibrary` returns training cells with
the same element counts up to a renaming (same anonymous formula and atom count), each renamed
onto the target's elements. Templates are ranked by the chemical distance of the renaming: the
count-weighted sum of ``|Δ Mendeleev number|`` over the renamed elements, on Pettifor's chemical
scale (under which neighbouring elements adopt the same structure types); between elements of
equal count the renaming of least distance is taken. Renamed templates that one structure type
repeats are dropped (``StructureMatcher`` with volume scaling), so ``k`` templates are ``k``
distinct guesses.

The diffusion generator proposes the templates as retrieved, or (``template_step`` > 0) starts
its reverse process from each with partial noise and lets the model adapt the cell to the new
elements; CHGNet relaxation follows. Measured on 100
held-out rows (docs/models/diffusion.md): the closest template matches the truth in 68-70 %,
the next ones in 11-19 %, and choosing among five by CHGNet energy matches fewer (52-56 %) than
taking the closest, so the rank is the better prediction.
The library is the diffusion model's own training split (:func:`training_library`): a held-out
or validation row never retrieves itself.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from crystalforge.core.errors import DataError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystalforge.generators.diffusion.data import Crystal
    from crystalforge.generators.priors import WyckoffPriors

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 200
"""Closest renamed templates examined per query before the distinct ones are kept."""


@dataclass(frozen=True)
class Template:
    """A training cell renamed onto a target composition.

    Attributes:
        material_id: The training row it comes from.
        structure: The renamed cell, volume scaled to the target's predicted volume when both
            compositions have learned atom volumes.
        distance: Count-weighted ``|Δ Mendeleev number|`` of the renaming (0: same elements).
        mapping: ``(template element, target element)`` pairs.
        rank: 1 for the closest distinct template of the query, 2 for the next, ...
    """

    material_id: str
    structure: Structure
    distance: float
    mapping: tuple[tuple[str, str], ...]
    rank: int = 1

    @property
    def species(self) -> list[str]:
        """Element symbols of the renamed cell's atoms, in site order."""
        return [site.specie.symbol for site in self.structure]


def _count_key(counts: Counter[str]) -> tuple[int, ...]:
    return tuple(sorted(counts.values()))


def _mendeleev(symbol: str) -> float:
    value = Element(symbol).mendeleev_no
    return float(value) if value is not None else float(Element(symbol).Z)


def best_renaming(
    source: Counter[str], target: Counter[str]
) -> tuple[float, dict[str, str]] | None:
    """The count-preserving renaming of ``source``'s elements onto ``target``'s of least distance.

    Returns:
        ``(distance, mapping)``, or ``None`` when the element counts differ as multisets.
    """
    if _count_key(source) != _count_key(target):
        return None
    by_count_source: dict[int, list[str]] = defaultdict(list)
    by_count_target: dict[int, list[str]] = defaultdict(list)
    for element, n in source.items():
        by_count_source[n].append(element)
    for element, n in target.items():
        by_count_target[n].append(element)
    total = 0.0
    mapping: dict[str, str] = {}
    for n, sources in by_count_source.items():
        targets = by_count_target[n]
        best: tuple[float, tuple[str, ...]] | None = None
        for perm in itertools.permutations(targets):
            pairs = zip(sources, perm, strict=True)
            cost = sum(abs(_mendeleev(s) - _mendeleev(t)) for s, t in pairs)
            if best is None or cost < best[0]:
                best = (cost, perm)
        assert best is not None
        total += n * best[0]
        mapping.update(zip(sources, best[1], strict=True))
    return total, mapping


class TemplateLibrary:
    """Cells indexed by their sorted element counts, for :meth:`nearest` queries.

    Args:
        crystals: The cells (Niggli-reduced arrays, :class:`~.data.Crystal`).
        ids: Their material ids, in the same order.
        priors: Learned per-element atom volumes (:meth:`WyckoffPriors.cell_volume`) for
            scaling a renamed cell; ``None``: keep the template's volume.
    """

    def __init__(
        self,
        crystals: Sequence[Crystal],
        ids: Sequence[str],
        priors: WyckoffPriors | None = None,
    ) -> None:
        if len(crystals) != len(ids):
            raise ValueError(f"{len(crystals)} crystals but {len(ids)} ids")
        self._crystals = list(crystals)
        self._ids = list(ids)
        self._priors = priors
        self._counts: list[Counter[str]] = []
        self._index: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, crystal in enumerate(self._crystals):
            counts = Counter(Element.from_Z(int(z)).symbol for z in crystal.numbers)
            self._counts.append(counts)
            self._index[_count_key(counts)].append(i)

    def __len__(self) -> int:
        return len(self._crystals)

    def nearest(self, species: Sequence[str], k: int) -> list[Template]:
        """Up to ``k`` distinct templates for a cell with atoms ``species``, closest first.

        Ties in distance go to the lower row index (deterministic).
        """
        from pymatgen.analysis.structure_matcher import StructureMatcher

        target = Counter(species)
        scored: list[tuple[float, int, dict[str, str]]] = []
        for i in self._index.get(_count_key(target), []):
            found = best_renaming(self._counts[i], target)
            if found is not None:
                scored.append((found[0], i, found[1]))
        scored.sort(key=lambda x: (x[0], x[1]))
        matcher = StructureMatcher(scale=True, attempt_supercell=False)
        kept: list[Template] = []
        for distance, i, mapping in scored[:MAX_CANDIDATES]:
            structure = self._renamed(i, mapping, target)
            if any(_same(matcher, structure, t.structure) for t in kept):
                continue
            pairs = tuple(sorted(mapping.items()))
            kept.append(Template(self._ids[i], structure, distance, pairs, len(kept) + 1))
            if len(kept) >= k:
                break
        return kept

    def _renamed(self, i: int, mapping: dict[str, str], target: Counter[str]) -> Structure:
        crystal = self._crystals[i]
        lattice = Lattice.from_parameters(*(float(x) for x in crystal.lattice))
        symbols = [mapping[Element.from_Z(int(z)).symbol] for z in crystal.numbers]
        structure = Structure(lattice, symbols, crystal.frac.astype(float))
        if self._priors is not None:
            old = self._priors.cell_volume(self._counts[i])
            new = self._priors.cell_volume(target)
            if old and new:
                structure.scale_lattice(structure.volume * new / old)
        return structure


def _same(matcher: object, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b))  # pyright: ignore[reportAttributeAccessIssue]
    except Exception:  # degenerate lattices
        return False


@functools.cache
def training_library(data_dir: Path, split_seed: int, val_rows: int | None) -> TemplateLibrary:
    """The diffusion model's training cells (its split recomputed from ``split_seed``).

    The validation part and every held-out ``mp_20_biternary/test`` row are left out, so the
    CSP evaluation on either never retrieves the row itself. Parsed CIFs are cached in the
    user cache (``crystalforge/diffusion/``); volumes come from the shipped Wyckoff priors.

    Raises:
        DataError: The data cannot be read, or the recomputed split has another size than the
            checkpoint's ``val_rows`` (a checkpoint trained on other data or a subset).
    """
    from crystalforge.generators.diffusion.data import load_crystals
    from crystalforge.generators.diffusion.train import split_indices
    from crystalforge.generators.priors import load_priors
    from crystalforge.memory.reference_data import default_cache_dir

    cache = default_cache_dir() / "diffusion" / f"crystals-{_data_stamp(data_dir)}.npz"
    try:
        crystals, ids = load_crystals(data_dir, cache)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read training rows under {str(data_dir)!r}: {exc}") from exc
    validation, training = split_indices(len(ids), np.random.default_rng(split_seed))
    if val_rows is not None and val_rows != len(validation):
        raise DataError(
            f"the training rows of {str(data_dir)!r} give a validation split of "
            f"{len(validation)}, the checkpoint recorded {val_rows}: its training split cannot "
            "be recomputed, so no template library is built"
        )
    order = sorted(int(i) for i in training)
    logger.info("template library: %d training cells of %s", len(order), data_dir)
    return TemplateLibrary([crystals[i] for i in order], [ids[i] for i in order], load_priors())


def _data_stamp(data_dir: Path) -> str:
    """Short hash of the training files' paths, sizes and times (the cache key)."""
    import hashlib

    from crystalforge.generators.diffusion.data import HELD_OUT_FILE, TRAINING_FILES

    digest = hashlib.sha256()
    for name in (*TRAINING_FILES, HELD_OUT_FILE):
        path = Path(data_dir) / name
        stat = path.stat() if path.exists() else None
        digest.update(
            f"{path.resolve()}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:12]
