"""Offline reference data: the convex hull, elemental chemical potentials and known structures.

Two implementations of one small protocol, :class:`ReferenceHull`:

* :class:`ReferenceData` reads the offline data folder (layout of ``shared/data/README.md``):
  the "MP-20 offline hull" built from the union of the four ``mp20_hulls`` parquets and the
  ``mp_20_biternary`` and ``mpts_52`` test/val CSVs, deduplicated by ``material_id``, with DFT
  formation energies and zero-energy elemental entries; the Materials Project elemental
  reference energies (2023-02-07, uncorrected GGA) as chemical potentials; and the CSV
  structures, indexed by reduced formula, as the novelty reference. The data README measured
  that this hull reproduces MP-20 DFT ``e_above_hull`` to 1.9 meV/atom MAE (3.8 meV/atom where
  DFT e_hull > 0); it is a subset of the Materials Project hull, so e_above_hull can be
  under-estimated when competing phases are missing.
* :class:`ElementalOnlyReference`, used when there is no data folder: chemical potentials from
  CHGNet-relaxed elemental prototypes (cached in ``~/.cache/crystalforge``), and a "hull" of the
  elements only, so that e_above_hull equals the formation energy.

Loading is lazy: nothing is read until first use. Reading the parquets and the CSVs (CIF text
kept, not parsed) takes about 1.5 s on the reference machine; CIFs are parsed only for the
formulas :meth:`ReferenceData.reference_structures` is asked about.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Lattice, Structure

from crystalforge.core.errors import DataError
from crystalforge.core.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from crystalforge.tools.validators.chgnet import DeviceChoice

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[1]

HULL_PARQUETS = (
    "mp20_hulls/mace_above_hull_dataset.parquet",
    "mp20_hulls/orb_above_hull_dataset.parquet",
    "mp20_hulls/uma_above_hull_dataset.parquet",
    "mp20_hulls/ensemble_above_hull_dataset.parquet",
)
"""Composition-only hull entries (DFT formation energies of MP-20 materials)."""

STRUCTURE_CSVS = (
    "mp_20_biternary/test.csv.gz",
    "mp_20_biternary/val.csv.gz",
    "mpts_52/test.csv.gz",
    "mpts_52/val.csv.gz",
)
"""Hull entries with structures (also the novelty reference); read before the parquets."""

ELEMENTAL_REFS = "mp_elemental_refs/2023-02-07-mp-elemental-reference-entries.json.gz"

_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+(?:'([^'\n]*)'|(\S+))")
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)([0-9.]*)")

Chemsys = tuple[str, ...]
"""A chemical system: sorted, distinct element symbols."""


def resolve_data_dir(explicit: Path | str | None = None) -> Path | None:
    """Find the offline reference data folder.

    Order: ``explicit`` > ``Settings().data_dir`` (environment ``CRYSTALFORGE_DATA_DIR``) >
    ``../shared/data`` relative to the working directory > ``../shared/data`` relative to the
    repository that contains this file.

    Args:
        explicit: A folder the caller named; it must exist.

    Returns:
        The resolved folder, or ``None`` when no candidate exists (elemental references only).

    Raises:
        DataError: ``explicit`` or the configured ``CRYSTALFORGE_DATA_DIR`` is not a folder.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"reference data folder {str(path)!r} does not exist")
        return path.resolve()
    configured = Settings().data_dir
    if configured is not None:
        path = configured.expanduser()
        if not path.is_dir():
            raise DataError(
                f"reference data folder {str(path)!r} (CRYSTALFORGE_DATA_DIR) does not exist"
            )
        return path.resolve()
    for path in (Path.cwd() / ".." / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"):
        if path.is_dir():
            return path.resolve()
    return None


def chemsys_of(elements: Iterable[str] | str) -> Chemsys:
    """Normalise a chemical system: ``"O-Li"``, ``["O", "Li"]`` -> ``("Li", "O")``.

    Raises:
        ValueError: an unknown element symbol.
    """
    symbols = elements.split("-") if isinstance(elements, str) else list(elements)
    for symbol in symbols:
        if not Element.is_valid_symbol(symbol):
            raise ValueError(f"unknown element symbol {symbol!r}")
    return tuple(sorted(set(symbols)))


@runtime_checkable
class ReferenceHull(Protocol):
    """What the hull validator, the planner and the report need from reference data."""

    @property
    def name(self) -> str:
        """Human-readable name that every stability number cites."""
        ...

    def chemical_potentials(self, elements: Iterable[str]) -> dict[str, float]:
        """Elemental reference energies, eV/atom, on the scale of CHGNet energies.

        Elements without a reference are left out of the result.
        """
        ...

    def phase_diagram(self, chemsys: Iterable[str]) -> PhaseDiagram:
        """Phase diagram in formation-energy space (elements at 0 eV/atom)."""
        ...

    def known_phases(
        self,
        chemsys: Iterable[str],
        *,
        max_e_above_hull: float | None = 0.1,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """Known materials of a chemical system, most stable first."""
        ...

    def reference_structures(self, formula: str) -> list[Structure]:
        """Known structures with this reduced formula (``properties["material_id"]`` set)."""
        ...


# -- the offline MP-20 hull --------------------------------------------------------------------


class _Row(NamedTuple):
    material_id: str
    counts: tuple[tuple[str, float], ...]
    """Cell composition, sorted by element symbol."""
    formation_energy_per_atom: float
    source: str
    spacegroup: int | None


@dataclass(frozen=True)
class _Table:
    rows_by_chemsys: dict[Chemsys, list[_Row]]
    cifs_by_formula: dict[str, list[tuple[str, str]]]
    """Reduced-formula key -> [(material_id, CIF text)]."""
    n_entries: int
    seconds: float


def _parse_formula_sum(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for symbol, amount in _FORMULA_TOKEN.findall(text):
        counts[symbol] = counts.get(symbol, 0.0) + (float(amount) if amount else 1.0)
    return counts


def formula_key(counts: Mapping[str, float]) -> str:
    """A canonical reduced-formula key independent of pymatgen's element ordering.

    ``{"O": 8, "Li": 4}`` and ``{"Li": 2, "O": 1}`` both give ``"Li2O1"``.
    """
    items = sorted((el, float(n)) for el, n in counts.items() if n > 0)
    if all(abs(n - round(n)) < 1e-6 for _, n in items):
        ints = [round(n) for _, n in items]
        divisor = math.gcd(*ints) or 1
        return "".join(f"{el}{n // divisor}" for (el, _), n in zip(items, ints, strict=True))
    smallest = min(n for _, n in items)
    return "".join(f"{el}{n / smallest:.4g}" for el, n in items)


def _row_sort_key(counts: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((el, float(n)) for el, n in counts.items()))


def _load_table(root: Path) -> _Table:
    import pandas as pd

    started = time.perf_counter()
    rows: list[_Row] = []
    seen: set[str] = set()
    cifs: dict[str, list[tuple[str, str]]] = {}
    for relative in STRUCTURE_CSVS:
        path = root / relative
        source = relative.removesuffix(".csv.gz")
        try:
            frame = pd.read_csv(path, index_col=0)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
        spacegroups = (
            frame["spacegroup.number"].tolist()
            if "spacegroup.number" in frame
            else [None] * len(frame)
        )
        for material_id, energy, cif, spacegroup in zip(
            frame["material_id"].tolist(),
            frame["formation_energy_per_atom"].tolist(),
            frame["cif"].tolist(),
            spacegroups,
            strict=True,
        ):
            match = _FORMULA_SUM.search(cif)
            if match is None or not math.isfinite(energy):
                continue
            counts = _parse_formula_sum(match.group(1) or match.group(2))
            key = formula_key(counts)
            if material_id in seen:
                continue
            seen.add(material_id)
            cifs.setdefault(key, []).append((material_id, cif))
            sg = int(spacegroup) if spacegroup is not None and spacegroup == spacegroup else None
            rows.append(_Row(material_id, _row_sort_key(counts), float(energy), source, sg))
    for relative in HULL_PARQUETS:
        path = root / relative
        source = relative.removesuffix(".parquet")
        try:
            frame = pd.read_parquet(
                path, columns=["material_id", "species_at_sites", "formation_energy_per_atom"]
            )
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
        for material_id, species, energy in zip(
            frame["material_id"].tolist(),
            frame["species_at_sites"].tolist(),
            frame["formation_energy_per_atom"].tolist(),
            strict=True,
        ):
            if material_id in seen or not math.isfinite(energy):
                continue
            seen.add(material_id)
            counts = Counter(str(s) for s in species)
            rows.append(_Row(material_id, _row_sort_key(counts), float(energy), source, None))
    by_chemsys: dict[Chemsys, list[_Row]] = {}
    for row in rows:
        by_chemsys.setdefault(tuple(el for el, _ in row.counts), []).append(row)
    seconds = time.perf_counter() - started
    logger.info("loaded %d hull entries from %s in %.1f s", len(rows), root, seconds)
    return _Table(by_chemsys, cifs, len(rows), seconds)


def _subsystems(chemsys: Chemsys) -> Iterable[Chemsys]:
    for size in range(1, len(chemsys) + 1):
        yield from combinations(chemsys, size)


def _elemental_entry(symbol: str) -> PDEntry:
    return PDEntry(Composition(symbol), 0.0, name=symbol, attribute=None)


def decomposition_text(decomposition: Mapping[Any, float]) -> str:
    """A decomposition as text, largest share first: ``"0.667 Li2O [mp-1960] + 0.333 O"``."""
    parts = []
    for entry, amount in sorted(decomposition.items(), key=lambda item: -item[1]):
        label = entry.composition.reduced_formula
        if isinstance(entry.attribute, _Row):
            label += f" [{entry.attribute.material_id}]"
        parts.append(f"{amount:.3f} {label}")
    return " + ".join(parts)


class ReferenceData:
    """The MP-20 offline hull, MP elemental references and known structures of a data folder.

    Files are read on first use and kept; phase diagrams are cached per chemical system. Safe to
    share between threads (loading and the caches are guarded by a lock).

    Example:
        >>> ref = ReferenceData.from_dir(Path("../shared/data"))  # doctest: +SKIP
        >>> ref.name  # doctest: +SKIP
        'MP-20 offline hull (47,421 entries)'
    """

    max_cached_diagrams = 256
    """Phase diagrams kept in memory (least recently used are dropped)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._table: _Table | None = None
        self._refs: dict[str, float] | None = None
        self._entries: dict[Chemsys, list[PDEntry]] = {}
        self._diagrams: OrderedDict[Chemsys, PhaseDiagram] = OrderedDict()
        self._structures: dict[str, list[Structure]] = {}

    @classmethod
    def from_dir(cls, path: Path | str) -> ReferenceData:
        """Reference data of a folder (checked to exist; read lazily).

        Raises:
            DataError: the folder or its elemental reference file is missing.
        """
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(f"reference data folder {str(root)!r} does not exist")
        if not (root / ELEMENTAL_REFS).is_file():
            raise DataError(f"{str(root)!r} is not a reference data folder: no {ELEMENTAL_REFS}")
        return cls(root.resolve())

    def __repr__(self) -> str:
        return f"ReferenceData({str(self.root)!r})"

    # -- loading ---------------------------------------------------------------------------
    def _loaded(self) -> _Table:
        with self._lock:
            if self._table is None:
                self._table = _load_table(self.root)
            return self._table

    @property
    def name(self) -> str:
        """E.g. ``"MP-20 offline hull (47,421 entries)"`` (counts the data rows, not elements)."""
        return f"MP-20 offline hull ({self._loaded().n_entries:,} entries)"

    @property
    def load_seconds(self) -> float:
        """Wall time spent reading the hull and structure files, s."""
        return self._loaded().seconds

    def elemental_references(self) -> dict[str, float]:
        """MP elemental reference energies (lowest-energy unary entry, GGA), eV/atom.

        Raises:
            DataError: the reference file is missing or unreadable.
        """
        with self._lock:
            if self._refs is None:
                path = self.root / ELEMENTAL_REFS
                try:
                    with gzip.open(path, "rt") as handle:
                        raw = json.load(handle)
                    # Serialised ComputedEntry objects; read directly (from_dict takes ~2 s).
                    # energy_per_atom = (uncorrected energy + correction) / atoms.
                    self._refs = {
                        symbol: (float(data["energy"]) + float(data.get("correction") or 0.0))
                        / sum(data["composition"].values())
                        for symbol, data in raw.items()
                    }
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
            return dict(self._refs)

    def chemical_potentials(self, elements: Iterable[str]) -> dict[str, float]:
        """MP elemental reference energies of ``elements``, eV/atom (unknown ones left out)."""
        refs = self.elemental_references()
        return {el: refs[el] for el in elements if el in refs}

    # -- the hull --------------------------------------------------------------------------
    def _group_entries(self, chemsys: Chemsys) -> list[PDEntry]:
        entries = self._entries.get(chemsys)
        if entries is None:
            entries = [
                PDEntry(
                    Composition(dict(row.counts)),
                    row.formation_energy_per_atom * sum(n for _, n in row.counts),
                    attribute=row,
                )
                for row in self._loaded().rows_by_chemsys.get(chemsys, [])
            ]
            self._entries[chemsys] = entries
        return entries

    def hull_entries(
        self, chemsys: Iterable[str], *, exclude_ids: Iterable[str] = ()
    ) -> list[PDEntry]:
        """Entries whose elements are a subset of ``chemsys``, plus elements at 0 eV.

        Entry energies are formation energies of the whole cell (eV); ``entry.attribute`` holds
        the source row (material id, source file, space group) for data entries and ``None``
        for the elemental entries.

        Args:
            chemsys: Elements of the system.
            exclude_ids: Material ids left out (e.g. the material being scored, so that it is
                not compared with its own DFT entry).
        """
        system = chemsys_of(chemsys)
        excluded = frozenset(exclude_ids)
        with self._lock:
            entries = [_elemental_entry(el) for el in system]
            for subsystem in _subsystems(system):
                entries.extend(self._group_entries(subsystem))
        if excluded:
            entries = [
                e
                for e in entries
                if not (isinstance(e.attribute, _Row) and e.attribute.material_id in excluded)
            ]
        return entries

    def phase_diagram(
        self, chemsys: Iterable[str], *, exclude_ids: Iterable[str] = ()
    ) -> PhaseDiagram:
        """Phase diagram of a chemical system in formation-energy space.

        Args:
            chemsys: Elements of the system.
            exclude_ids: Material ids left out of the hull. Diagrams without exclusions are
                cached; a diagram that leaves out an entry of the system is built afresh each
                call (tens of ms for a ternary).
        """
        system = chemsys_of(chemsys)
        excluded = frozenset(exclude_ids)
        if excluded:
            entries = self.hull_entries(system, exclude_ids=excluded)
            if len(entries) < len(self.hull_entries(system)):
                return PhaseDiagram(entries, elements=[Element(e) for e in system])
        with self._lock:
            diagram = self._diagrams.get(system)
            if diagram is not None:
                self._diagrams.move_to_end(system)
                return diagram
            diagram = PhaseDiagram(self.hull_entries(system), elements=[Element(e) for e in system])
            self._diagrams[system] = diagram
            while len(self._diagrams) > self.max_cached_diagrams:
                self._diagrams.popitem(last=False)
            return diagram

    def known_phases(
        self,
        chemsys: Iterable[str],
        *,
        max_e_above_hull: float | None = 0.1,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """Known materials of a chemical system, most stable first.

        Args:
            chemsys: Elements of the system.
            max_e_above_hull: Keep phases at most this far above our hull, eV/atom
                (``None``: all).
            exact: Only phases that contain every element of ``chemsys`` (otherwise phases of
                every subsystem are included, elements too when the data has them).

        Returns:
            Dicts with ``material_id``, ``formula`` (reduced), ``n_atoms`` (cell),
            ``formation_energy_per_atom`` (DFT, eV/atom), ``e_above_hull`` (on this hull,
            eV/atom), ``spacegroup`` (number, ``None`` when the source does not give it),
            ``source`` (data file) and ``hull`` (this hull's name).
        """
        system = chemsys_of(chemsys)

        def describe(entry: PDEntry) -> dict[str, Any] | None:
            row = entry.attribute
            if not isinstance(row, _Row):
                return None
            return {
                "material_id": row.material_id,
                "formation_energy_per_atom": row.formation_energy_per_atom,
                "spacegroup": row.spacegroup,
                "source": row.source,
            }

        return hull_phases(
            self.phase_diagram(system),
            describe,
            n_elements=len(system),
            max_e_above_hull=max_e_above_hull,
            exact=exact,
            hull_name=self.name,
        )

    # -- structures ------------------------------------------------------------------------
    def reference_structures(self, formula: str | Composition) -> list[Structure]:
        """Known structures (``mp_20_biternary`` and ``mpts_52``) with this reduced formula.

        CIFs are parsed on the first request for a formula and cached. Each structure carries
        its id in ``structure.properties["material_id"]``.

        Args:
            formula: Any formula of the composition, e.g. ``"Li2O"`` or ``"Li4O2"``.
        """
        composition = Composition(formula) if isinstance(formula, str) else formula
        key = formula_key(composition.get_el_amt_dict())
        with self._lock:
            cached = self._structures.get(key)
            if cached is None:
                cached = []
                for material_id, cif in self._loaded().cifs_by_formula.get(key, []):
                    try:
                        with warnings.catch_warnings():
                            # "fractional coordinates rounded to ideal values": harmless here.
                            warnings.filterwarnings(
                                "ignore", "Issues encountered while parsing CIF"
                            )
                            structure = Structure.from_str(cif, fmt="cif")
                    except ValueError as exc:
                        logger.warning("skipping unreadable CIF of %s: %s", material_id, exc)
                        continue
                    structure.properties["material_id"] = material_id
                    cached.append(structure)
                self._structures[key] = cached
            return list(cached)


# -- elemental references only -----------------------------------------------------------------

DIATOMIC_BOND_A = {
    "H": 0.74,
    "N": 1.10,
    "O": 1.21,
    "F": 1.42,
    "Cl": 1.99,
    "Br": 2.28,
    "I": 2.67,
}
"""Experimental bond lengths (Å) of the elements whose reference is a diatomic molecule."""

MOLECULE_BOX_A = 10.0
"""Edge of the cubic box holding a diatomic molecule, Å."""

CHGNET_MAX_Z = 94
"""CHGNet 0.3.0 knows elements up to plutonium."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crystalforge`` or ``~/.cache/crystalforge``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "crystalforge"


def _radius(element: Element) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "No data available for metallic_radius"
        candidates = (element.metallic_radius, element.atomic_radius, element.van_der_waals_radius)
    for value in candidates:
        if value is not None and float(value) > 0:
            return float(value)
    return 1.5


def elemental_prototypes(symbol: str) -> dict[str, Structure]:
    """Starting structures for an element's reference energy.

    Diatomic elements (H, N, O, F, Cl, Br, I) get one molecule in a
    :data:`MOLECULE_BOX_A` Å box; every other element gets fcc, bcc, hcp, diamond and
    simple-cubic cells sized from its metallic (else atomic, else van der Waals) radius.

    Args:
        symbol: Element symbol.

    Returns:
        Prototype name -> structure.
    """
    if symbol in DIATOMIC_BOND_A:
        half = DIATOMIC_BOND_A[symbol] / 2 / MOLECULE_BOX_A
        box = Lattice.cubic(MOLECULE_BOX_A)
        return {
            "diatomic": Structure(
                box, [symbol] * 2, [[0.5, 0.5, 0.5 - half], [0.5, 0.5, 0.5 + half]]
            )
        }
    r = _radius(Element(symbol))
    fcc_vectors = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    bcc_vectors = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])
    fcc = Lattice(2 * math.sqrt(2) * r * fcc_vectors)  # nearest neighbours at 2r
    bcc = Lattice(4 * r / math.sqrt(3) * bcc_vectors)
    diamond = Lattice(8 * r / math.sqrt(3) * fcc_vectors)
    return {
        "fcc": Structure(fcc, [symbol], [[0, 0, 0]]),
        "bcc": Structure(bcc, [symbol], [[0, 0, 0]]),
        "hcp": Structure(
            Lattice.hexagonal(2 * r, 2 * r * math.sqrt(8 / 3)),
            [symbol] * 2,
            [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
        ),
        "diamond": Structure(diamond, [symbol] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "sc": Structure(Lattice.cubic(2 * r), [symbol], [[0, 0, 0]]),
    }


class ElementalOnlyReference:
    """Chemical potentials from CHGNet-relaxed elemental prototypes; a hull of elements only.

    Used when there is no reference data folder. For each element asked about, the prototypes of
    :func:`elemental_prototypes` are relaxed with CHGNet and the lowest energy per atom is kept;
    results are cached as JSON (``chgnet_elemental_refs.json`` in :func:`default_cache_dir`),
    keyed by the CHGNet model version. With only elements on the hull, a candidate's
    e_above_hull equals its formation energy (negative for compounds more stable than the
    elements), so stability filters are much weaker than with :class:`ReferenceData`.

    Measured (CHGNet 0.3.0, CPU): 7 s per element on average (31 common elements in 220 s);
    against the MP elemental references the energies differ by 0.06 eV/atom on average, at
    most 0.41 eV/atom for S (whose S8-ring ground state is not among the prototypes) and
    0.16 for C and P.
    """

    name = "elemental references only (CHGNet-relaxed prototypes)"

    def __init__(
        self,
        *,
        cache_path: Path | None = None,
        device: DeviceChoice = "auto",
        fmax_ev_per_a: float = 0.05,
        max_steps: int = 300,
    ) -> None:
        self.cache_path = cache_path or default_cache_dir() / "chgnet_elemental_refs.json"
        self.device: DeviceChoice = device
        self.fmax_ev_per_a = fmax_ev_per_a
        self.max_steps = max_steps
        self._lock = threading.RLock()
        self._values: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"ElementalOnlyReference(cache_path={str(self.cache_path)!r})"

    @staticmethod
    def _model_key() -> str:
        from crystalforge.tools.validators.chgnet import CHGNET_MODEL

        return f"chgnet-{CHGNET_MODEL}"

    def _cache(self) -> dict[str, dict[str, Any]]:
        if self._values is None:
            self._values = {}
            try:
                data = json.loads(self.cache_path.read_text())
            except FileNotFoundError:
                data = None
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable cache %s: %s", self.cache_path, exc)
                data = None
            if isinstance(data, dict) and data.get("model") == self._model_key():
                self._values = dict(data.get("elements") or {})
        return self._values

    def _save(self) -> None:
        from crystalforge.memory.run_store import write_json_atomic

        payload = {
            "model": self._model_key(),
            "fmax_ev_per_a": self.fmax_ev_per_a,
            "elements": self._cache(),
        }
        try:
            write_json_atomic(self.cache_path, payload)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.cache_path, exc)

    def _compute(self, symbol: str) -> dict[str, Any] | None:
        from crystalforge.tools.validators.chgnet import (
            CHGNET_ERRORS,
            MAX_VOLUME_RATIO,
            relax_structure,
        )

        best: dict[str, Any] | None = None
        for prototype, structure in elemental_prototypes(symbol).items():
            molecule = prototype == "diatomic"
            try:
                result = relax_structure(
                    structure,
                    fmax_ev_per_a=self.fmax_ev_per_a,
                    max_steps=self.max_steps,
                    relax_cell=not molecule,
                    device=self.device,
                )
            except CHGNET_ERRORS as exc:
                logger.info("CHGNet failed on %s %s: %s", prototype, symbol, exc)
                continue
            ratio = 1.0 + result.volume_change
            if not math.isfinite(result.energy_per_atom) or not (
                1 / MAX_VOLUME_RATIO <= ratio <= MAX_VOLUME_RATIO
            ):
                continue
            if best is None or result.energy_per_atom < best["energy_per_atom"]:
                best = {
                    "energy_per_atom": result.energy_per_atom,
                    "prototype": prototype,
                    "converged": result.converged,
                    "volume_per_atom": result.structure.volume / len(result.structure),
                }
        if best is None:
            logger.warning("no CHGNet elemental reference for %s", symbol)
        return best

    def chemical_potentials(self, elements: Iterable[str]) -> dict[str, float]:
        """CHGNet elemental energies, eV/atom, computed (and cached) on first request.

        Elements beyond plutonium, or where every prototype failed, are left out.

        Raises:
            MissingExtraError: chgnet is not installed.
        """
        symbols = sorted(set(elements))
        with self._lock:
            cache = self._cache()
            missing = [s for s in symbols if s not in cache and Element(s).Z <= CHGNET_MAX_Z]
            for symbol in missing:
                started = time.perf_counter()
                value = self._compute(symbol)
                if value is not None:
                    cache[symbol] = value
                    logger.info(
                        "CHGNet reference for %s: %.4f eV/atom (%s) in %.1f s",
                        symbol,
                        value["energy_per_atom"],
                        value["prototype"],
                        time.perf_counter() - started,
                    )
            if missing:
                self._save()
            return {s: float(cache[s]["energy_per_atom"]) for s in symbols if s in cache}

    def elemental_references(self) -> dict[str, float]:
        """The elemental energies computed so far, eV/atom."""
        with self._lock:
            return {s: float(v["energy_per_atom"]) for s, v in self._cache().items()}

    def phase_diagram(
        self, chemsys: Iterable[str], *, exclude_ids: Iterable[str] = ()
    ) -> PhaseDiagram:
        """The elements of the system at 0 eV/atom (no compounds are known).

        ``exclude_ids`` is accepted for symmetry with :meth:`ReferenceData.phase_diagram` and
        has nothing to leave out.
        """
        del exclude_ids
        system = chemsys_of(chemsys)
        return PhaseDiagram(
            [_elemental_entry(el) for el in system], elements=[Element(e) for e in system]
        )

    def known_phases(
        self,
        chemsys: Iterable[str],
        *,
        max_e_above_hull: float | None = 0.1,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """No known phases without reference data: always empty."""
        del chemsys, max_e_above_hull, exact
        return []

    def reference_structures(self, formula: str) -> list[Structure]:
        """No known structures without reference data: always empty."""
        del formula
        return []


_LOADED: dict[Path | None, ReferenceHull] = {}
_LOADED_LOCK = threading.Lock()


def load_reference(data_dir: Path | str | None = None) -> ReferenceHull:
    """The reference hull for a data folder (resolved as :func:`resolve_data_dir` does).

    One instance per folder and process, so the files are read once.

    Args:
        data_dir: Explicit data folder; ``None`` searches the usual places.

    Returns:
        :class:`ReferenceData`; with no explicit or configured folder and ``MP_API_KEY`` set,
        the Materials Project (:class:`~crystalforge.memory.mp.MPReference`); else
        :class:`ElementalOnlyReference` when no folder is found.

    Raises:
        DataError: an explicit or configured folder does not exist.
    """
    if data_dir is None and Settings().data_dir is None:
        # Design order: explicit folder > CRYSTALFORGE_DATA_DIR > Materials Project (MP_API_KEY
        # set, `mp` extra installed) > the offline folder found beside the repository.
        from crystalforge.memory.mp import mp_reference_or_none

        mp_reference = mp_reference_or_none()
        if mp_reference is not None:
            return mp_reference
    root = resolve_data_dir(data_dir)
    with _LOADED_LOCK:
        reference = _LOADED.get(root)
        if reference is None:
            if root is None:
                logger.warning("no reference data folder found: using elemental references only")
                reference = ElementalOnlyReference()
            else:
                reference = ReferenceData.from_dir(root)
            _LOADED[root] = reference
        return reference


def hull_phases(
    diagram: PhaseDiagram,
    describe: Callable[[PDEntry], dict[str, Any] | None],
    *,
    n_elements: int,
    max_e_above_hull: float | None,
    exact: bool,
    hull_name: str,
) -> list[dict[str, Any]]:
    """The known phases on a phase diagram, most stable first (the ``known_phases`` rows).

    Args:
        diagram: Phase diagram of the system.
        describe: An entry's ``material_id``, ``formation_energy_per_atom``, ``spacegroup`` and
            ``source``, or ``None`` for entries that are no known material (e.g. elements).
        n_elements: Elements in the system (for ``exact``).
        max_e_above_hull: Keep phases at most this far above the hull, eV/atom (``None``: all).
        exact: Only phases that contain every element of the system.
        hull_name: The hull's name, written into every row.
    """
    phases = []
    for entry in diagram.all_entries:
        row = describe(entry)
        if row is None:
            continue
        if exact and len(entry.composition.elements) != n_elements:
            continue
        e_hull = float(diagram.get_e_above_hull(entry, allow_negative=True) or 0.0)
        if max_e_above_hull is not None and e_hull > max_e_above_hull:
            continue
        phases.append(
            {
                **row,
                "formula": entry.composition.reduced_formula,
                "n_atoms": round(entry.composition.num_atoms),
                "e_above_hull": e_hull,
                "hull": hull_name,
            }
        )
    phases.sort(key=lambda p: (p["e_above_hull"], p["formula"], p["material_id"]))
    return phases
