"""Crystals as token sequences: composition, space group, (element, Wyckoff position) pairs, end.

A sequence is ``<bos> (El #k)* SG<n> (El W)* <eos>``. The composition prefix ``(El #k)*`` gives
the atoms of each element in the primitive cell (``#k``, k = 1-20), elements by atomic number;
``SG<n>`` is the space-group number, ``El`` an element symbol and ``W`` a conventional-cell
Wyckoff label with multiplicity (``"4c"``). Pairs are in a canonical order: by atomic number, then
multiplicity, then letter. Lattice and free coordinates are not tokens: PyXtal fits them
afterwards (``from_random`` with these sites).

The prefix lets the model choose the space group knowing the atoms it must place (CrystalFormer
and CrystaLLM condition on composition likewise); checkpoints before 2026-12-07 have no prefix
(``<bos> SG<n> (El W)* <eos>``, ``composition_prefix=False``).

The vocabulary is built from the training rows (``build_vocabulary``) and stored with the
checkpoint, so an element the model never saw has no token and is reported as such.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymatgen.core import Element

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL = (PAD, BOS, EOS)
MAX_SITES = 24
"""Most (element, Wyckoff) pairs a sequence holds; longer rows are dropped from training."""
MAX_COUNT = 20
"""Largest atom count per element of the composition prefix (MP-20's 20 atoms per cell)."""
MAX_ELEMENTS = 6
"""Most elements of the composition prefix; rows with more are dropped from training."""


@dataclass(frozen=True)
class WyckoffGene:
    """A crystal as space group plus sites (conventional cell), PyXtal's genes.

    Attributes:
        space_group: Space-group number, 1-230.
        sites: ``(element, label)`` pairs in canonical order, e.g. ``(("Li", "4a"), ("O", "8c"))``.
    """

    space_group: int
    sites: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, space_group: int, sites: Iterable[tuple[str, str]]) -> WyckoffGene:
        """The gene with ``sites`` put in canonical order."""
        return cls(space_group, tuple(sorted(sites, key=_site_key)))

    def conventional_counts(self) -> dict[str, int]:
        """Atoms per element in the conventional cell."""
        counts: dict[str, int] = {}
        for element, label in self.sites:
            counts[element] = counts.get(element, 0) + multiplicity(label)
        return counts

    def pyxtal_inputs(self) -> tuple[list[str], list[int], list[list[str]]]:
        """``species``, ``numIons`` and ``sites`` for ``pyxtal.from_random`` (conventional cell)."""
        species: list[str] = []
        labels: dict[str, list[str]] = {}
        for element, label in self.sites:
            if element not in labels:
                species.append(element)
                labels[element] = []
            labels[element].append(label)
        counts = self.conventional_counts()
        return species, [counts[e] for e in species], [labels[e] for e in species]

    def primitive_counts(self) -> dict[str, int]:
        """Atoms per element in the primitive cell, in canonical (atomic-number) order.

        Raises:
            ValueError: A count does not divide by the group's lattice centring.
        """
        from crystalforge.generators.symmetry import centering_multiplicity

        centering = centering_multiplicity(self.space_group)
        counts = self.conventional_counts()
        if any(n % centering for n in counts.values()):
            raise ValueError(f"{self.text()!r} does not divide into primitive cells")
        return {e: counts[e] // centering for e in sorted(counts, key=_z)}

    def text(self) -> str:
        """Compact text, e.g. ``"225 Na:4a Cl:4b"``."""
        return " ".join([str(self.space_group), *(f"{e}:{w}" for e, w in self.sites)])


def multiplicity(label: str) -> int:
    """The multiplicity of a Wyckoff label, ``multiplicity("12d") == 12``."""
    return int(label[:-1])


@functools.cache
def _z(symbol: str) -> int:
    return Element(symbol).Z


def count_token(count: int) -> str:
    """The composition-prefix token of ``count`` atoms, ``count_token(3) == "#3"``."""
    return f"#{count}"


def _site_key(site: tuple[str, str]) -> tuple[int, int, str]:
    element, label = site
    return _z(element), multiplicity(label), label[-1]


@dataclass(frozen=True)
class Vocabulary:
    """Token strings and ids; ``tokens[i]`` is the string of id ``i``."""

    tokens: tuple[str, ...]

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Id of each token string."""
        return {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad(self) -> int:
        """Id of the padding token."""
        return self.index[PAD]

    @property
    def bos(self) -> int:
        """Id of the start token."""
        return self.index[BOS]

    @property
    def eos(self) -> int:
        """Id of the end token."""
        return self.index[EOS]

    @functools.cached_property
    def elements(self) -> tuple[str, ...]:
        """Element symbols with a token."""
        return tuple(t for t in self.tokens if t[:1].isupper())

    @functools.cached_property
    def space_groups(self) -> tuple[int, ...]:
        """Space groups with a token."""
        return tuple(int(t[2:]) for t in self.tokens if t.startswith("SG"))

    @functools.cached_property
    def labels(self) -> tuple[str, ...]:
        """Wyckoff labels with a token."""
        return tuple(t for t in self.tokens if t[:1].isdigit())

    @functools.cached_property
    def composition_prefix(self) -> bool:
        """Whether sequences start with the composition (the vocabulary has count tokens)."""
        return count_token(1) in self.index

    def encode(self, gene: WyckoffGene) -> list[int]:
        """Token ids of ``gene``, from ``<bos>`` to ``<eos>``.

        With the composition prefix when the vocabulary has one.

        Raises:
            KeyError: A space group, element, count or label has no token (the message names it).
            ValueError: The gene's counts do not divide into primitive cells.
        """
        words = [BOS]
        if self.composition_prefix:
            for element, count in gene.primitive_counts().items():
                words += [element, count_token(count)]
        words.append(f"SG{gene.space_group}")
        for element, label in gene.sites:
            words += [element, label]
        words.append(EOS)
        missing = [w for w in words if w not in self.index]
        if missing:
            raise KeyError(f"tokens {missing!r} are not in the vocabulary")
        return [self.index[w] for w in words]

    def decode(self, ids: Sequence[int]) -> WyckoffGene:
        """The gene of a token sequence (``<bos>`` optional, stops at ``<eos>``).

        A composition prefix is skipped: the gene's sites say the same.

        Raises:
            ValueError: The sequence is not ``(El #k)* SG (El W)*``.
        """
        words = [self.tokens[i] for i in ids]
        if words and words[0] == BOS:
            words = words[1:]
        if EOS in words:
            words = words[: words.index(EOS)]
        start = next((i for i, w in enumerate(words) if w.startswith("SG")), 0)
        words = words[start:]
        if not words or not words[0].startswith("SG"):
            raise ValueError(f"a sequence starts with a space-group token, got {words[:1]!r}")
        body = words[1:]
        if len(body) % 2:
            raise ValueError(f"unpaired element/Wyckoff tokens: {body!r}")
        pairs = list(zip(body[::2], body[1::2], strict=True))
        if any(not e[:1].isupper() or not w[:1].isdigit() for e, w in pairs):
            raise ValueError(f"expected (element, Wyckoff) pairs, got {pairs!r}")
        return WyckoffGene(int(words[0][2:]), tuple(pairs))

    def to_json(self) -> list[str]:
        """The token list (JSON-serialisable)."""
        return list(self.tokens)

    @classmethod
    def from_json(cls, data: Sequence[str]) -> Vocabulary:
        """The vocabulary written by :meth:`to_json`."""
        return cls(tuple(data))


def build_vocabulary(
    genes: Iterable[WyckoffGene], *, composition_prefix: bool = True
) -> Vocabulary:
    """The vocabulary of ``genes``: specials, all 230 space groups, seen elements and labels.

    Every space group gets a token (so a request for an unseen group is a known, unsupported
    token rather than a crash); elements and labels only when some gene uses them. With
    ``composition_prefix`` the counts ``#1``-``#20`` get tokens too, and sequences start with
    the composition.
    """
    elements: set[str] = set()
    labels: set[str] = set()
    for gene in genes:
        for element, label in gene.sites:
            elements.add(element)
            labels.add(label)
    return Vocabulary(
        (
            *SPECIAL,
            *(f"SG{n}" for n in range(1, 231)),
            *sorted(elements, key=_z),
            *sorted(labels, key=lambda w: (multiplicity(w), w[-1])),
            *(count_token(n) for n in range(1, MAX_COUNT + 1) if composition_prefix),
        )
    )


def gene_from_record(record: Mapping[str, Any]) -> WyckoffGene:
    """The gene of a ``train_priors.analyse`` record (``space_group`` and ``sites`` per element)."""
    sites = [(el, label) for el, labels in record["sites"].items() for label in labels]
    return WyckoffGene.of(int(record["space_group"]), sites)
