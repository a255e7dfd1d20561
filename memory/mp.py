"""The Materials Project through mp-api: searches cached in the memory store, and a hull.

Used only when ``MP_API_KEY`` is set (the key is a :class:`~pydantic.SecretStr`, passed to
``MPRester`` and never logged or stored). :class:`MPClient` runs summary searches (chemical
system, formula, property ranges) and writes every result into the ``references`` collection
(``source="mp"``), so a second identical search, or an offline run later, finds them there.
:class:`MPReference` is a :class:`~crystalforge.memory.reference_data.ReferenceHull` built from
those searches: the phase diagram of a system from MP formation energies, chemical potentials
from the lowest-energy MP entry of each element, known structures by formula.

The endpoint is configurable (``MPRester(endpoint=...)``) so tests answer from a server on
127.0.0.1; ``CRYSTALFORGE_MP_ENDPOINT`` sets it for a process.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from itertools import combinations
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import DataError, MissingExtraError
from crystalforge.core.settings import Settings
from crystalforge.memory.embeddings import structure_record
from crystalforge.memory.reference_data import chemsys_of, hull_phases

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Structure

    from crystalforge.memory.chroma import ChromaMemory

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = [
    "material_id",
    "formula_pretty",
    "composition",
    "structure",
    "symmetry",
    "energy_per_atom",
    "formation_energy_per_atom",
    "energy_above_hull",
    "band_gap",
    "density",
    "is_stable",
]
RANGE_FIELDS = ("band_gap", "energy_above_hull", "formation_energy_per_atom", "density")
"""Summary fields searchable by ``(min, max)`` ranges."""


def mp_api_key() -> str | None:
    """The Materials Project key from the environment, or ``None`` (never logged)."""
    key = Settings().mp_api_key
    return key.get_secret_value() if key is not None else None


def mp_available() -> bool:
    """Whether mp-api is installed and a key is set."""
    import importlib.util

    return mp_api_key() is not None and importlib.util.find_spec("mp_api") is not None


class MPClient:
    """Summary searches on the Materials Project, cached in the memory store.

    Args:
        store: Where results are cached (``None``: not cached).
        api_key: Defaults to ``MP_API_KEY``.
        endpoint: API base URL (``None``: ``CRYSTALFORGE_MP_ENDPOINT`` or mp-api's default).

    Raises:
        MissingExtraError: mp-api is not installed.
        DataError: no key.
    """

    def __init__(
        self,
        store: ChromaMemory | None = None,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        try:
            import mp_api.client  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("Materials Project access", "mp") from exc
        self._key = api_key or mp_api_key()
        if not self._key:
            raise DataError("Materials Project access needs MP_API_KEY to be set")
        self.endpoint = endpoint or os.environ.get("CRYSTALFORGE_MP_ENDPOINT") or None
        self.store = store
        self._lock = threading.Lock()
        self._searched: dict[str, list[dict[str, Any]]] = {}

    def __repr__(self) -> str:  # no key in here
        return f"MPClient(endpoint={self.endpoint!r})"

    def _rester(self) -> Any:
        from mp_api.client import MPRester

        kwargs: dict[str, Any] = {
            "api_key": self._key,
            "mute_progress_bars": True,
            "notify_db_version": False,  # else mp-api writes ~/.mprester.log.yaml
        }
        if self.endpoint:
            kwargs["endpoint"] = (
                self.endpoint if self.endpoint.endswith("/") else self.endpoint + "/"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MPRester(**kwargs)

    def search(
        self,
        *,
        chemsys: Iterable[str] | str | None = None,
        formula: str | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> list[dict[str, Any]]:
        """Summary documents matching the query, as plain dicts; cached in the store.

        Args:
            chemsys: Elements of exactly one chemical system, e.g. ``"Li-O"``.
            formula: A formula, e.g. ``"Li2O"``.
            ranges: Field in :data:`RANGE_FIELDS` -> (min, max); e.g.
                ``{"band_gap": (1.0, 3.0)}`` (eV).

        Returns:
            Dicts with ``material_id``, ``formula``, ``structure`` (pymatgen), energies
            (eV/atom), ``band_gap`` (eV), ``spacegroup``.

        Raises:
            ValueError: no criterion, or an unknown range field.
            DataError: the API answered with an error (the message names it).
        """
        query: dict[str, Any] = {}
        if chemsys is not None:
            query["chemsys"] = "-".join(chemsys_of(chemsys))
        if formula:
            query["formula"] = formula
        for name, bounds in (ranges or {}).items():
            if name not in RANGE_FIELDS:
                raise ValueError(f"unknown range field {name!r}; expected one of {RANGE_FIELDS}")
            query[name] = tuple(bounds)
        if not query:
            raise ValueError("an MP search needs chemsys, formula or a range")
        key = repr(sorted(query.items()))
        with self._lock:
            cached = self._searched.get(key)
        if cached is not None:
            return cached
        try:
            with self._rester() as rester:
                docs = rester.materials.summary.search(**query, fields=SUMMARY_FIELDS)
        except MissingExtraError:
            raise
        except Exception as exc:  # mp-api raises MPRestError, requests errors, ...
            raise DataError(
                f"Materials Project search {query} failed: {type(exc).__name__}: {exc}"
            ) from exc
        rows = [_row(doc) for doc in docs]
        rows = [r for r in rows if r is not None]
        if self.store is not None and rows:
            self.store.add_references(
                [
                    {
                        "material_id": r["material_id"],
                        "record": structure_record(r["structure"]),
                        "source": "mp",
                        **{
                            k: r[k]
                            for k in (
                                "formation_energy_per_atom",
                                "e_above_hull",
                                "band_gap",
                                "energy_per_atom",
                                "spacegroup",
                            )
                            if r.get(k) is not None
                        },
                    }
                    for r in rows
                    if r.get("structure") is not None
                ]
            )
        with self._lock:
            self._searched[key] = rows
        logger.info("MP search %s: %d materials", query, len(rows))
        return rows


def _get(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name, None)


def _row(doc: Any) -> dict[str, Any] | None:
    from pymatgen.core import Composition, Structure

    material_id = _get(doc, "material_id")
    if material_id is None:
        return None
    structure = _get(doc, "structure")
    if isinstance(structure, dict):
        structure = Structure.from_dict(structure)
    composition = _get(doc, "composition")
    if isinstance(composition, dict):
        composition = Composition(composition)
    if composition is None and structure is not None:
        composition = structure.composition
    symmetry = _get(doc, "symmetry")
    spacegroup = _get(symmetry, "number") if symmetry is not None else None
    return {
        "material_id": str(material_id),
        "formula": str(
            _get(doc, "formula_pretty") or (composition.reduced_formula if composition else "")
        ),
        "composition": composition,
        "structure": structure,
        "energy_per_atom": _get(doc, "energy_per_atom"),
        "formation_energy_per_atom": _get(doc, "formation_energy_per_atom"),
        "e_above_hull": _get(doc, "energy_above_hull"),
        "band_gap": _get(doc, "band_gap"),
        "spacegroup": int(spacegroup) if spacegroup is not None else None,
    }


class MPReference:
    """A :class:`~crystalforge.memory.reference_data.ReferenceHull` from the Materials Project.

    Phase diagrams are built in formation-energy space (elements at 0 eV/atom) from MP's
    ``formation_energy_per_atom`` of every material of the system and its subsystems (one
    search per subsystem, cached); chemical potentials are the lowest ``energy_per_atom`` among
    MP's entries of each element (MP2020-corrected GGA/GGA+U, on MP's scale).
    """

    def __init__(self, client: MPClient) -> None:
        self.client = client
        self._lock = threading.RLock()
        self._diagrams: dict[tuple[str, ...], PhaseDiagram] = {}

    @property
    def name(self) -> str:
        """The name every stability number cites."""
        return "Materials Project (mp-api)"

    def _system_rows(self, system: tuple[str, ...]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for size in range(1, len(system) + 1):
            for sub in combinations(system, size):
                rows.extend(self.client.search(chemsys=sub))
        return rows

    def chemical_potentials(self, elements: Iterable[str]) -> dict[str, float]:
        """Lowest MP energy per atom of each element, eV/atom (missing ones left out)."""
        out: dict[str, float] = {}
        for symbol in sorted(set(elements)):
            energies = [
                float(r["energy_per_atom"])
                for r in self.client.search(chemsys=[symbol])
                if r.get("energy_per_atom") is not None
            ]
            if energies:
                out[symbol] = min(energies)
        return out

    def phase_diagram(
        self, chemsys: Iterable[str], *, exclude_ids: Iterable[str] = ()
    ) -> PhaseDiagram:
        """Phase diagram of the system in formation-energy space."""
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition, Element

        system = chemsys_of(chemsys)
        excluded = frozenset(exclude_ids)
        with self._lock:
            if not excluded and system in self._diagrams:
                return self._diagrams[system]
            entries = [PDEntry(Composition(el), 0.0, name=el) for el in system]
            for row in self._system_rows(system):
                if row["material_id"] in excluded or row.get("formation_energy_per_atom") is None:
                    continue
                composition = row["composition"]
                entries.append(
                    PDEntry(
                        composition,
                        float(row["formation_energy_per_atom"]) * composition.num_atoms,
                        name=row["material_id"],
                        attribute=row["material_id"],
                    )
                )
            diagram = PhaseDiagram(entries, elements=[Element(e) for e in system])
            if not excluded:
                self._diagrams[system] = diagram
            return diagram

    def known_phases(
        self,
        chemsys: Iterable[str],
        *,
        max_e_above_hull: float | None = 0.1,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """Known MP materials of the system, most stable (on this hull) first."""
        system = chemsys_of(chemsys)
        rows = {r["material_id"]: r for r in self._system_rows(system)}

        def describe(entry: PDEntry) -> dict[str, Any] | None:
            row = rows.get(str(entry.attribute)) if entry.attribute else None
            if row is None:
                return None
            return {
                "material_id": row["material_id"],
                "formation_energy_per_atom": row["formation_energy_per_atom"],
                "spacegroup": row.get("spacegroup"),
                "source": "mp",
            }

        return hull_phases(
            self.phase_diagram(system),
            describe,
            n_elements=len(system),
            max_e_above_hull=max_e_above_hull,
            exact=exact,
            hull_name=self.name,
        )

    def reference_structures(self, formula: str) -> list[Structure]:
        """MP structures with this formula (``properties["material_id"]`` set)."""
        out = []
        for row in self.client.search(formula=formula):
            structure = row.get("structure")
            if structure is not None:
                structure = structure.copy()
                structure.properties["material_id"] = row["material_id"]
                out.append(structure)
        return out


_MP_REFERENCE: list[MPReference] = []
_MP_LOCK = threading.Lock()


def mp_reference_or_none() -> MPReference | None:
    """The Materials Project hull when ``MP_API_KEY`` is set and mp-api is installed.

    Searches are cached in the memory store when the ``memory`` extra is installed and the
    store opens; otherwise only in this process. One instance per process.
    """
    if not mp_available():
        return None
    with _MP_LOCK:
        if not _MP_REFERENCE:
            store = None
            try:
                from crystalforge.memory.chroma import memory_available, open_memory

                if memory_available():
                    store = open_memory()
            except DataError as exc:
                logger.warning("MP results will not be cached: %s", exc)
            _MP_REFERENCE.append(MPReference(MPClient(store)))
        return _MP_REFERENCE[0]
