"""The memory store: chromadb ``PersistentClient`` on disk, embeddings of our own.

Four collections (cosine space, each with its own embedding function from
:mod:`crystalforge.memory.embeddings`, so chromadb never fetches its default ONNX model):

* ``references``: known materials. Document: a structure record (lattice, species, fractional
  coordinates). Id: the material id (``mp-...``), else the content hash of the record.
  Metadata: ``formula`` (reduced-formula key, the novelty prefilter), ``reduced_formula``,
  ``chemsys`` (``"Li-Mn-O"``), ``n_elements``, ``n_sites``, ``spacegroup`` (when known),
  ``formation_energy_per_atom`` / ``e_above_hull`` (eV/atom), ``band_gap`` (eV), ``source``,
  ``split``, ``content_hash``.
* ``candidates``: every validated structure of every run: the final structure as document;
  metadata as above plus ``run_id``, ``generator``, ``seed``, ``round``, ``parent_id``,
  ``passed``, ``failed_stage``, ``reason``, ``verdicts`` (JSON) and the candidate's properties.
* ``campaigns``: one per run: document is the spec JSON (embedded by its element pool and
  targets); metadata holds the request, plan, reflections, outcome and per-generator yields
  (samples, survivors, seconds) as JSON.
* ``reviews``: human decisions with their note (hashed-text embedding).

Writes take an exclusive ``fcntl`` lock on ``<store>/.write.lock``: chromadb's embedded mode
has no cross-process coordination of its own, and two runs may share a store. Every write is
an upsert keyed by a content id, so an interrupted import resumes without duplicates.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystalforge.core.errors import DataError, MissingExtraError
from crystalforge.core.settings import Settings
from crystalforge.memory.base import COLLECTIONS, CollectionName, ReviewDecision
from crystalforge.memory.embeddings import (
    embed_record,
    embedding_function,
    record_to_structure,
    spec_vector,
    structure_record,
    text_vector,
)
from crystalforge.memory.reference_data import chemsys_of, formula_key

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

_EMBEDDING_OF: dict[CollectionName, str] = {
    "references": "crystal",
    "candidates": "crystal",
    "campaigns": "spec",
    "reviews": "text",
}
LOCK_FILE = ".write.lock"
SQLITE_FILE = "chroma.sqlite3"
WRITE_BATCH = 2000
"""Rows per chromadb upsert (below chromadb's max batch size)."""


class MemoryStoreError(DataError):
    """The memory store cannot be opened or read; the message says where and why."""


def default_memory_dir() -> Path:
    """Where the memory store lives by default.

    ``CRYSTALFORGE_MEMORY_DIR``, else ``$XDG_DATA_HOME/crystalforge/memory``, else
    ``~/.local/share/crystalforge/memory``.
    """
    configured = Settings().memory_dir
    if configured is not None:
        return configured.expanduser()
    base = os.environ.get("XDG_DATA_HOME")
    return (Path(base) if base else Path.home() / ".local" / "share") / "crystalforge" / "memory"


def memory_available() -> bool:
    """Whether the ``memory`` extra (chromadb) is installed."""
    import importlib.util

    return importlib.util.find_spec("chromadb") is not None


def content_id(document: str, prefix: str = "s-") -> str:
    """A content id: ``prefix`` + 16 hex digits of the SHA-1 of the document."""
    return prefix + hashlib.sha1(document.encode()).hexdigest()[:16]


def _clean_metadata(metadata: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float | str):
            if isinstance(value, float) and value != value:  # NaN
                continue
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = json.dumps(value, default=str)
    return out


def _check_sqlite(path: Path) -> None:
    db = path / SQLITE_FILE
    if not db.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise MemoryStoreError(
            f"memory store {str(path)!r} is corrupt ({SQLITE_FILE}: {exc}); nothing was changed. "
            "Move the folder away (or point CRYSTALFORGE_MEMORY_DIR elsewhere) and re-import"
        ) from exc
    if row is None or row[0] != "ok":
        raise MemoryStoreError(
            f"memory store {str(path)!r} failed SQLite's integrity check ({row}); nothing was "
            "changed. Move the folder away and re-import"
        )


class ChromaMemory:
    """The memory store of one folder (see the module docstring).

    Args:
        path: Store folder (created when missing); ``None``: :func:`default_memory_dir`.

    Raises:
        MissingExtraError: chromadb is not installed (``pip install 'crystalforge[memory]'``).
        MemoryStoreError: the folder is not a readable store.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as exc:
            raise MissingExtraError("the memory store", "memory") from exc
        self.path = Path(path).expanduser() if path is not None else default_memory_dir()
        if self.path.exists() and not self.path.is_dir():
            raise MemoryStoreError(f"memory store {str(self.path)!r} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        _check_sqlite(self.path)
        self._lock_path = self.path / LOCK_FILE
        self._thread_lock = threading.RLock()
        try:
            with self._write_lock():
                self._client = chromadb.PersistentClient(
                    path=str(self.path),
                    settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
                )
                self._collections = {
                    name: self._client.get_or_create_collection(
                        name,
                        embedding_function=embedding_function(_EMBEDDING_OF[name]),
                        metadata={"hnsw:space": "cosine"},
                    )
                    for name in COLLECTIONS
                }
        except MissingExtraError:
            raise
        except Exception as exc:  # chromadb raises many types for a broken folder
            raise MemoryStoreError(
                f"cannot open memory store {str(self.path)!r} ({type(exc).__name__}: {exc}); "
                "nothing was changed. Move the folder away and re-import"
            ) from exc
        self._formula_cache: dict[tuple[str, str | None], list[tuple[str, Structure]]] = {}

    def __repr__(self) -> str:
        return f"ChromaMemory({str(self.path)!r})"

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._thread_lock, open(self._lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def collection(self, name: CollectionName) -> Any:
        """The chromadb collection of that name."""
        if name not in self._collections:
            raise ValueError(f"unknown collection {name!r}; expected one of {COLLECTIONS}")
        return self._collections[name]

    def count(self, name: CollectionName) -> int:
        """Entries in a collection."""
        return int(self.collection(name).count())

    # -- writing ----------------------------------------------------------------------------
    def _upsert(
        self,
        name: CollectionName,
        ids: list[str],
        documents: list[str],
        metadatas: list[dict[str, Any]],
        embeddings: list[Any] | None = None,
    ) -> None:
        collection = self.collection(name)
        for start in range(0, len(ids), WRITE_BATCH):
            stop = start + WRITE_BATCH
            kwargs: dict[str, Any] = {
                "ids": ids[start:stop],
                "documents": documents[start:stop],
                "metadatas": [_clean_metadata(m) for m in metadatas[start:stop]],
            }
            if embeddings is not None:
                kwargs["embeddings"] = [list(map(float, e)) for e in embeddings[start:stop]]
            with self._write_lock():
                collection.upsert(**kwargs)
        self._formula_cache.clear()

    def existing_ids(self, name: CollectionName, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored already."""
        found: set[str] = set()
        collection = self.collection(name)
        for start in range(0, len(ids), WRITE_BATCH):
            got = collection.get(ids=list(ids[start : start + WRITE_BATCH]), include=[])
            found.update(got["ids"])
        return found

    def add_references(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Store reference materials (skipping ids already stored).

        Args:
            entries: Dicts with ``record`` (a structure record) or ``structure`` (pymatgen),
                and optionally ``material_id``, ``source``, ``split``, ``spacegroup``,
                ``formation_energy_per_atom``, ``e_above_hull``, ``band_gap`` and any other
                scalars (stored as metadata).

        Returns:
            ``{"added": n, "existing": m}``.
        """
        ids, docs, metas, vectors = [], [], [], []
        seen: set[str] = set()
        for entry in entries:
            record = entry.get("record") or structure_record(entry["structure"])
            entry_id = str(entry.get("material_id") or content_id(record))
            if entry_id in seen:
                continue
            seen.add(entry_id)
            meta = {k: v for k, v in entry.items() if k not in ("record", "structure")}
            meta.update(_structure_metadata(record))
            ids.append(entry_id)
            docs.append(record)
            metas.append(meta)
            vectors.append(embed_record(record))
        existing = self.existing_ids("references", ids)
        keep = [i for i, entry_id in enumerate(ids) if entry_id not in existing]
        self._upsert(
            "references",
            [ids[i] for i in keep],
            [docs[i] for i in keep],
            [metas[i] for i in keep],
            [vectors[i] for i in keep],
        )
        return {"added": len(keep), "existing": len(ids) - len(keep)}

    def add_candidates(self, run_id: str, entries: Sequence[Mapping[str, Any]]) -> int:
        """Store validated candidates of a run (upsert by candidate id).

        Args:
            run_id: The run folder name.
            entries: Dicts with ``candidate`` (:class:`~crystalforge.core.candidate.Candidate`),
                ``verdicts`` (list of Verdict), ``passed`` and ``failed_stage``.

        Returns:
            Candidates written.
        """
        ids, docs, metas, vectors = [], [], [], []
        for entry in entries:
            candidate = entry["candidate"]
            record = structure_record(candidate.structure)
            verdicts = [v.to_json() for v in entry.get("verdicts", ())]
            reason = next((v["reason"] for v in verdicts if not v["passed"]), None)
            meta: dict[str, Any] = {
                **{f"prop_{k}": v for k, v in candidate.properties.items()},
                **candidate.provenance(),
                "run_id": run_id,
                "passed": bool(entry.get("passed")),
                "failed_stage": entry.get("failed_stage"),
                "reason": reason,
                "verdicts": json.dumps(verdicts, default=str),
                **_structure_metadata(record),
            }
            meta["parameters"] = json.dumps(meta.get("parameters") or {}, default=str)
            ids.append(candidate.id)
            docs.append(record)
            metas.append(meta)
            vectors.append(embed_record(record))
        self._upsert("candidates", ids, docs, metas, vectors)
        return len(ids)

    def add_campaign(self, run_id: str, record: Mapping[str, Any]) -> None:
        """Store (or replace) the campaign record of a run.

        Args:
            run_id: The run folder name (the campaign's id).
            record: ``spec`` (DesignSpec dump), ``request``, ``plans``, ``reflections`` (memo
                changes, list of str), ``focus_compositions``, ``focus_space_groups``,
                ``outcome`` (dict: stop reason, hits, best), ``generator_yields`` (generator ->
                samples, survivors, seconds summed over the rounds; see
                :mod:`crystalforge.memory.yields`).
        """
        spec = dict(record.get("spec") or {})
        document = json.dumps(spec, sort_keys=True, default=str)
        meta = {
            "request": str(record.get("request") or spec.get("request") or ""),
            "run_id": run_id,
            "plans": json.dumps(record.get("plans") or [], default=str),
            "reflections": json.dumps(record.get("reflections") or [], default=str),
            "focus_compositions": json.dumps(record.get("focus_compositions") or []),
            "focus_space_groups": json.dumps(record.get("focus_space_groups") or []),
            "outcome": json.dumps(record.get("outcome") or {}, default=str),
        }
        if record.get("generator_yields") is not None:
            meta["generator_yields"] = json.dumps(record["generator_yields"], default=str)
        self._upsert("campaigns", [run_id], [document], [meta], [spec_vector(spec)])

    def add_review(
        self, candidate_id: str, decision: ReviewDecision, note: str = "", *, run_id: str = ""
    ) -> str:
        """Store a human decision and note on a candidate; returns the review id.

        Raises:
            ValueError: ``decision`` is not approve, reject or annotate.
        """
        if decision not in ("approve", "reject", "annotate"):
            raise ValueError(
                f"unknown review decision {decision!r}; expected approve, reject or annotate"
            )
        document = f"{decision}: {note}".strip()
        review_id = content_id(f"{run_id}|{candidate_id}|{document}", prefix="r-")
        meta = {"candidate_id": candidate_id, "decision": decision, "note": note, "run_id": run_id}
        self._upsert("reviews", [review_id], [document], [meta], [text_vector(document)])
        return review_id

    # -- reading ----------------------------------------------------------------------------
    def structures_with_formula(
        self, formula_key: str, *, exclude_run: str | None = None
    ) -> list[tuple[str, Structure]]:
        """``(id, structure)`` of references and candidates (other runs) with this formula key.

        Results are cached per key until the next write by this process.
        """
        return self.structures_with_formulas([formula_key], exclude_run=exclude_run)[formula_key]

    def structures_with_formulas(
        self, formula_keys: Iterable[str], *, exclude_run: str | None = None
    ) -> dict[str, list[tuple[str, Structure]]]:
        """:meth:`structures_with_formula` for many keys at once (one query per collection).

        Returns:
            Formula key -> ``(id, structure)`` list (empty lists for keys with no structure).
        """
        keys = sorted(set(formula_keys))
        out: dict[str, list[tuple[str, Structure]]] = {}
        missing = [k for k in keys if (k, exclude_run) not in self._formula_cache]
        found: dict[str, list[tuple[str, Structure]]] = {k: [] for k in missing}
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            for name in ("references", "candidates"):
                got = self.collection(name).get(
                    where={"$and": [{"formula": {"$in": chunk}}, {"has_structure": True}]},
                    include=["documents", "metadatas"],
                )
                for entry_id, doc, meta in zip(
                    got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True
                ):
                    if name == "candidates" and exclude_run and meta.get("run_id") == exclude_run:
                        continue
                    try:
                        structure = record_to_structure(doc)
                    except ValueError as exc:
                        logger.warning("skipping unreadable stored structure %s: %s", entry_id, exc)
                        continue
                    structure.properties["material_id"] = entry_id
                    found[str(meta["formula"])].append((entry_id, structure))
        for key in missing:
            self._formula_cache[(key, exclude_run)] = found[key]
        for key in keys:
            out[key] = self._formula_cache[(key, exclude_run)]
        return out

    def search_references(
        self,
        *,
        chemsys: Iterable[str] | None = None,
        formula: str | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
        limit: int = 25,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """References of a chemical system or formula, with property ranges.

        Args:
            chemsys: Elements; references of the system and (unless ``exact``) of every
                subsystem are returned.
            formula: A formula (any multiple of the reduced one).
            ranges: Metadata key -> (min, max), e.g. ``{"band_gap": (1.0, None)}`` (eV).
            limit: At most this many, most stable (lowest e_above_hull, then formation
                energy) first.
            exact: Only the chemical system itself, not its subsystems.

        Raises:
            ValueError: neither ``chemsys`` nor ``formula``, or an unknown element.
        """
        clauses: list[dict[str, Any]] = []
        if formula:
            from pymatgen.core import Composition

            clauses.append({"formula": formula_key(Composition(formula).get_el_amt_dict())})
        if chemsys is not None:
            system = chemsys_of(chemsys)
            if exact or len(system) > 6:
                clauses.append({"chemsys": "-".join(system)})
            else:
                from itertools import combinations

                subsystems = [
                    "-".join(c) for n in range(1, len(system) + 1) for c in combinations(system, n)
                ]
                clauses.append({"chemsys": {"$in": subsystems}})
        if not clauses:
            raise ValueError("search_references needs chemsys or formula")
        for key, (low, high) in (ranges or {}).items():
            if low is not None:
                clauses.append({key: {"$gte": float(low)}})
            if high is not None:
                clauses.append({key: {"$lte": float(high)}})
        where = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        got = self.collection("references").get(where=where, include=["metadatas"])
        rows = [
            {"id": i, **(m or {})} for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
        ]
        rows.sort(
            key=lambda r: (
                r.get("e_above_hull", float("inf")),
                r.get("formation_energy_per_atom", float("inf")),
                r["id"],
            )
        )
        return rows[:limit]

    def similar_structures(
        self, structure: Structure, *, k: int = 10, collection: CollectionName = "references"
    ) -> list[dict[str, Any]]:
        """The ``k`` stored crystals nearest to ``structure`` (cosine distance, nearest first)."""
        return self.similar_to_record(structure_record(structure), k=k, collection=collection)

    def similar_to_record(
        self,
        record: str,
        *,
        k: int = 10,
        collection: CollectionName = "references",
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest stored crystals to a structure record: dicts with id, distance, metadata."""
        target = self.collection(collection)
        n = target.count()
        if n == 0:
            return []
        got = target.query(
            query_embeddings=[list(map(float, embed_record(record)))],
            n_results=min(k, n),
            where=dict(where) if where else None,
            include=["metadatas", "distances"],
        )
        return [
            {"id": i, "distance": float(d), **(m or {})}
            for i, d, m in zip(
                got["ids"][0],
                (got["distances"] or [[]])[0],
                (got["metadatas"] or [[]])[0],
                strict=True,
            )
        ]

    def similar_campaigns(
        self, spec: Mapping[str, Any], *, k: int = 3, exclude_run: str | None = None
    ) -> list[dict[str, Any]]:
        """Earlier campaigns nearest to ``spec``: run id, request, distance, reflections, ...

        ``generator_yields`` is passed on as stored (JSON text, ``None`` in records written
        before yields were kept); :func:`crystalforge.memory.yields.weigh_campaigns` checks it.
        """
        target = self.collection("campaigns")
        n = target.count()
        if n == 0:
            return []
        got = target.query(
            query_embeddings=[list(map(float, spec_vector(spec)))],
            n_results=min(k + 1, n),
            include=["metadatas", "distances", "documents"],
        )
        out = []
        for campaign_id, distance, meta, doc in zip(
            got["ids"][0],
            (got["distances"] or [[]])[0],
            (got["metadatas"] or [[]])[0],
            (got["documents"] or [[]])[0],
            strict=True,
        ):
            if campaign_id == exclude_run:
                continue
            meta = dict(meta or {})
            out.append(
                {
                    "run_id": campaign_id,
                    "distance": float(distance),
                    "request": meta.get("request", ""),
                    "spec": json.loads(doc) if doc else {},
                    "reflections": json.loads(str(meta.get("reflections") or "[]")),
                    "focus_compositions": json.loads(str(meta.get("focus_compositions") or "[]")),
                    "focus_space_groups": json.loads(str(meta.get("focus_space_groups") or "[]")),
                    "outcome": json.loads(str(meta.get("outcome") or "{}")),
                    # Raw (JSON text or None): memory.yields checks it, so a bad one is skipped.
                    "generator_yields": meta.get("generator_yields"),
                }
            )
        return out[:k]

    def reviews_of(self, candidate_id: str) -> list[dict[str, Any]]:
        """Stored reviews of a candidate."""
        got = self.collection("reviews").get(
            where={"candidate_id": candidate_id}, include=["metadatas"]
        )
        return [
            {"id": i, **(m or {})} for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
        ]

    def info(self) -> dict[str, Any]:
        """Where the store is, entries per collection, and references per source."""
        counts = {name: self.count(name) for name in COLLECTIONS}
        sources: dict[str, int] = {}
        references = self.collection("references")
        offset = 0
        while True:
            got = references.get(include=["metadatas"], limit=10_000, offset=offset)
            metas = got["metadatas"] or []
            for meta in metas:
                source = str((meta or {}).get("source", "unknown"))
                sources[source] = sources.get(source, 0) + 1
            if len(metas) < 10_000:
                break
            offset += 10_000
        return {"path": str(self.path), "counts": counts, "reference_sources": sources}


def _structure_metadata(record: str) -> dict[str, Any]:
    from crystalforge.memory.embeddings import record_counts

    counts, has_structure = record_counts(record)
    key = formula_key(counts)
    from pymatgen.core import Composition

    system = sorted(counts)
    return {
        "formula": key,
        "reduced_formula": Composition(counts).reduced_formula,
        "chemsys": "-".join(system),
        "n_elements": len(system),
        "n_sites": round(sum(counts.values())),
        "has_structure": has_structure,
        "content_hash": content_id(record),
    }


_OPEN: dict[Path, ChromaMemory] = {}
_OPEN_LOCK = threading.Lock()


def open_memory(path: Path | str | None = None) -> ChromaMemory:
    """The store of a folder, one instance per folder and process.

    Raises:
        MissingExtraError: chromadb is not installed.
        MemoryStoreError: the folder is not a readable store.
    """
    resolved = (Path(path).expanduser() if path is not None else default_memory_dir()).resolve()
    with _OPEN_LOCK:
        store = _OPEN.get(resolved)
        if store is None:
            store = ChromaMemory(resolved)
            _OPEN[resolved] = store
        return store
