"""Compile a plain-English crystal design request into a :class:`DesignSpec`, without an LLM.

:func:`parse_request` is deterministic: the same text always gives the same spec. It reads the
request in stages; each stage finds its phrases with regular expressions and blanks them out so
that later stages do not read them again (the number in "at most 16 atoms" is not a band gap).
Anything it cannot read is ignored, except where ignoring it would silently drop a constraint
(a number with a unit but no property), in which case it asks.

Grammar and conventions
-----------------------
**Chemistry.**

* *Chemical systems* are element symbols joined by hyphens or dashes: ``Li-Mn-O``, ``Li–Mn–O``,
  ``the Li-Fe-P-O system``. Every candidate uses all and only those elements, so the spec gets
  ``chemical_system`` = ``allowed_elements`` = the system and every system element is also
  required. An unknown symbol next to a real one (``Xy-O``) is an error.
* *Formulae* such as ``LiMnO2``, ``Li2MnO3``, ``(Li)MnO2`` are validated with pymatgen and stored
  as the reduced formula; a formula also sets the chemical system to its elements. A formula
  needs at least two distinct elements and must contain a lowercase letter or a digit, so
  all-capital acronyms (``CO``, ``NO``, ``FCC``, ``CPU``) are never formulae; the digit-free
  binaries ``BN``, ``BP``, ``KF``, ``KI``, ``VN``, ``WC`` and ``YN`` are the exceptions.
* *Anion classes* require their elements: ``oxide`` (O), ``nitride`` (N), ``sulfide`` (S),
  ``fluoride``, ``chloride``, ``bromide``, ``iodide``, ``selenide``, ``telluride``,
  ``phosphide``, ``arsenide``, ``antimonide``, ``carbide``, ``boride``, ``hydride``,
  ``silicide``, and the polyanions ``phosphate`` (P, O), ``sulfate`` (S, O), ``silicate``
  (Si, O), ``borate`` (B, O), ``nitrate`` (N, O), ``carbonate`` (C, O), ``hydroxide`` (O, H).
  See :data:`ANION_CLASSES`. A negated single-element class ("non-oxide", "not a nitride")
  excludes the element; a negated polyanion is ignored.
* *Element names* (``cobalt``, ``Manganese``, ``sulphur``/``sulfur``) are matched in any case.
  ``lead`` is only Pb in a chemical context: after a cue word ("no lead", "with lead"), before a
  chemical suffix or noun ("lead-free", "lead iodide", "lead halides") or in a list with other
  elements ("tin and lead").
* *Element symbols* are case-sensitive (``Co`` is cobalt, ``co`` and ``CO`` are not). Symbols
  that are also English words or abbreviations, and every one-letter symbol (see
  :data:`WEAK_SYMBOLS`: ``I``, ``In``, ``As``, ``At``, ``Be``, ``He``, ``No``, ``Am``, ``O``,
  ``S``, ...), count as elements only in a chemical context: inside a formula or system; right
  after a cue word (``no``, ``without``, ``excluding``, ``containing``, ``with``, ``of``,
  ``only``, ...); before a chemical suffix (``In-free``, ``O-rich``, ``N-doped``) or an
  anion-class word (``In nitride``); or in a list with another element (``Li, Mn and O``) when
  not followed by an ordinary word (so in "Fe and I want", ``I`` stays a pronoun). Any symbol
  right after a number is a unit (``300 K``), and ``Co-design`` is not cobalt.
* *Polarity*: a list of elements after ``no``/``not``/``without``/``excluding``/``except``/
  ``avoid``/``free of``/``not containing`` is excluded, as is ``X-free``/``X free``; after
  ``only``/``made of``/``composed of``/``consisting of`` it is the allowed set (plus the
  elements of any anion class); otherwise it is required. A positive list joined by "or"
  ("a Ti or Zr oxide") is ambiguous and raises :class:`ClarificationNeeded`.
* *Element groups*, in negative contexts only ("non-toxic", "no toxic elements",
  "rare-earth-free", "without precious metals", "no radioactive elements"), exclude the
  elements of :data:`ELEMENT_GROUPS`; "toxic" is As, Be, Cd, Hg, Pb, Tl.

**Property targets** are stored in the canonical units of
:data:`crystalforge.core.spec.PROPERTIES`. A property phrase (see :data:`PROPERTY_PHRASES`:
"band gap", "bulk modulus", "density", "formation energy", "energy above hull"/"e_hull"/"of the
hull", "magnetic moment"/"magnetization", "volume per atom") takes the numbers that follow it in
the same sentence ("band gap above 1 eV and below 3 eV"), or one number right before it with a
matching unit ("a 1.5 eV band gap", "within 50 meV/atom of the hull").

* Comparisons: ``above``/``over``/``greater than``/``more than``/``at least``/``>``/``>=``/
  ``minimum``; ``below``/``under``/``less than``/``at most``/``up to``/``no more than``/
  ``within``/``<``/``<=``/``maximum``; ``between 1 and 2``, ``1-2``, ``from 1 to 2``;
  ``exactly 2``; ``2 eV or more``. Ranges are closed, so strict and non-strict comparisons are
  the same for continuous properties.
* ``around``/``about``/``approximately``/``~`` and a bare value ("a band gap of 2 eV") give a
  window of ±10 % of the value, at least :data:`APPROX_MIN_TOLERANCE` wide on each side
  (±0.1 eV for a band gap, ±0.01 eV/atom for the hull energy).
* Units: eV, meV, eV/atom, meV/atom (energies above the hull and formation energies accept eV
  and meV as per atom), GPa, MPa, g/cm3, g/cm^3, g cm-3, g/cc, kg/m3, Å^3/atom, A3/atom,
  μB, muB, μB/atom. A number without a unit is read in the canonical unit. A number with a unit
  that no property claims raises :class:`ClarificationNeeded`; a unit that does not fit its
  property is an error. Non-negative properties (everything but the formation energy) reject
  negative bounds.
* Qualitative words: "stable"/"thermodynamically stable"/"metastable"/"near the hull" give
  ``e_above_hull <= 0.1`` (:data:`DEFAULT_E_ABOVE_HULL_EV`); "on the hull" gives ``<= 0``;
  "metallic"/"a metal" give ``band_gap <= 0.1``; "non-metallic" ``band_gap >= 0.1``;
  "semiconductor"/"semiconducting" ``band_gap in [0.1, 3]``; "insulator"/"insulating"
  ``band_gap >= 3``; "magnetic"/"ferromagnetic" ``magnetic_moment >= 0.1`` μB/atom;
  "non-magnetic" ``magnetic_moment <= 0.05``. A number on the same property overrides the word
  when the two overlap and raises :class:`ClarificationNeeded` when they do not ("metallic with a
  band gap above 3 eV"); two words that do not overlap also ask.
* Without any stability wording the spec gets ``e_above_hull <= 0.1`` with ``source="default"``.
* Soft targets: "ideally", "preferably", "if possible", "nice to have", "would be nice",
  "optionally" make the targets after them in the same clause soft (clauses end at , ; . ! ?
  and "but"); a marker that ends its clause ("band gap above 2 eV if possible") softens the
  whole clause.
  When a property has both hard and soft pieces, the hard ones win. Only targets can be soft;
  other constraints in a soft clause stay hard.
* Several pieces on one property are intersected; if nothing is left the request is an error.

**Cell size**: "at most 16 atoms per cell", "up to 12 atoms", "no more than 20 atoms/cell",
"fewer than 10 atoms" (max 9), "at least 6 atoms", "more than 6 atoms" (min 7), "between 4 and
12 atoms", "4-12 atoms", "12 atoms per cell" and "a 12-atom cell" (exactly 12), "about 10 atoms"
(±20 %). Limits are 1 to :data:`MAX_ATOMS_LIMIT`; a floor above the default ceiling of 20
(:data:`DEFAULT_MAX_ATOMS`) raises the ceiling to the limit.

**Symmetry**: "space group 225", "SG 62", "space groups 221 or 225", "spacegroup Pnma", "in
Fm-3m", "P6_3/mmc", "P63/mmc", old-style "Fm3m". Bare Hermann–Mauguin symbols are read when
they have three or more characters; shorter ones (``Pm``, ``Cm``) need the "space group"
keyword. Crystal-system adjectives ("a cubic oxide", "non-cubic") map to space-group ranges
(:data:`CRYSTAL_SYSTEMS`), intersected with explicit space groups.

**Candidates**: "find 5 candidates", "three structures", "give me 10", "top 5", "a few" (3),
"a couple" (2), "several"/"a handful" (5), "a dozen" (12). Default 3.

**Budget** (starting from ``defaults``): "in at most 4 rounds" (``max_rounds``), "within 10
minutes"/"in under 2 hours" (``max_wall_time_s``), "using at most 50 relaxations"
(``max_validator_calls``), "20 samples per round" (``samples_per_round``), "100k tokens"
(``max_llm_tokens``), "stop after 2 rounds without improvement" (``patience_rounds``).

Errors are :class:`RequestError` with a message naming the value; ambiguous or contradictory
requests raise its subclass :class:`ClarificationNeeded` with a question. A request without any
chemistry (no element, system, formula or anion class) asks which elements to use.
"""

from __future__ import annotations

import bisect
import re
import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Literal, cast

from pydantic import ValidationError
from pymatgen.core import Composition, Element
from pymatgen.symmetry.groups import SpaceGroup

from crystalforge.core.errors import ClarificationNeeded, RequestError
from crystalforge.core.spec import (
    DEFAULT_E_ABOVE_HULL_EV,
    DEFAULT_MAX_ATOMS,
    PROPERTIES,
    Budget,
    DesignSpec,
    PropertyTarget,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from crystalforge.core.spec import PropertyName

_ELEMENTS: tuple[Element, ...] = tuple(Element.from_Z(z) for z in range(1, 119))

__all__ = [
    "ANION_CLASSES",
    "APPROX_MIN_TOLERANCE",
    "APPROX_RELATIVE_TOLERANCE",
    "CRYSTAL_SYSTEMS",
    "ELEMENT_GROUPS",
    "INSULATOR_MIN_GAP_EV",
    "MAGNETIC_MIN_MOMENT",
    "MAX_ATOMS_LIMIT",
    "METALLIC_MAX_GAP_EV",
    "NONMAGNETIC_MAX_MOMENT",
    "PROPERTY_PHRASES",
    "SEMICONDUCTOR_GAP_EV",
    "WEAK_SYMBOLS",
    "parse_request",
]

# --------------------------------------------------------------------------------------------
# Conventions (public: they are the user-facing meaning of the words)
# --------------------------------------------------------------------------------------------

MAX_ATOMS_LIMIT = 100
"""Largest supported atoms-per-cell limit."""

METALLIC_MAX_GAP_EV = 0.1
""""metallic" / "a metal": band gap at most this (eV)."""

SEMICONDUCTOR_GAP_EV = (0.1, 3.0)
""""semiconductor" / "semiconducting": band gap in this closed range (eV)."""

INSULATOR_MIN_GAP_EV = 3.0
""""insulator" / "insulating": band gap at least this (eV)."""

MAGNETIC_MIN_MOMENT = 0.1
""""magnetic" / "ferromagnetic": magnetic moment at least this (μB/atom)."""

NONMAGNETIC_MAX_MOMENT = 0.05
""""non-magnetic": magnetic moment at most this (μB/atom)."""

APPROX_RELATIVE_TOLERANCE = 0.10
"""Half-width of an "around X" window, as a fraction of ``|X|``."""

APPROX_MIN_TOLERANCE: dict[str, float] = {
    "e_above_hull": 0.01,
    "formation_energy": 0.05,
    "band_gap": 0.1,
    "bulk_modulus": 5.0,
    "density": 0.1,
    "volume_per_atom": 0.5,
    "magnetic_moment": 0.1,
}
"""Smallest half-width of an "around X" window per property, in its canonical unit."""

ANION_CLASSES: dict[str, tuple[str, ...]] = {
    "oxide": ("O",),
    "nitride": ("N",),
    "sulfide": ("S",),
    "sulphide": ("S",),
    "fluoride": ("F",),
    "chloride": ("Cl",),
    "bromide": ("Br",),
    "iodide": ("I",),
    "selenide": ("Se",),
    "telluride": ("Te",),
    "phosphide": ("P",),
    "arsenide": ("As",),
    "antimonide": ("Sb",),
    "carbide": ("C",),
    "boride": ("B",),
    "hydride": ("H",),
    "silicide": ("Si",),
    "hydroxide": ("O", "H"),
    "oxynitride": ("O", "N"),
    "oxyfluoride": ("O", "F"),
    "oxysulfide": ("O", "S"),
    "phosphate": ("P", "O"),
    "sulfate": ("S", "O"),
    "sulphate": ("S", "O"),
    "silicate": ("Si", "O"),
    "borate": ("B", "O"),
    "nitrate": ("N", "O"),
    "carbonate": ("C", "O"),
}
"""Anion-class word -> elements every candidate must contain."""

_RARE_EARTHS = ("Sc", "Y", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er")
_RARE_EARTHS += ("Tm", "Yb", "Lu")
_PRECIOUS_METALS = ("Ru", "Rh", "Pd", "Ag", "Os", "Ir", "Pt", "Au")

ELEMENT_GROUPS: dict[str, tuple[str, ...]] = {
    "toxic": ("As", "Be", "Cd", "Hg", "Pb", "Tl"),
    "radioactive": tuple(el.symbol for el in _ELEMENTS if el.is_radioactive),
    "rare earth": _RARE_EARTHS,
    "precious metal": _PRECIOUS_METALS,
    "noble metal": _PRECIOUS_METALS,
}
"""Group word -> elements it excludes in a negative context ("non-toxic", "rare-earth-free")."""

WEAK_SYMBOLS: frozenset[str] = frozenset(
    {el.symbol for el in _ELEMENTS if len(el.symbol) == 1}
    | {"Am", "As", "At", "Be", "Er", "Es", "Fr", "He", "Ho", "In", "Md", "Mt", "No", "Pa"}
    | {"Po", "Re"}
)
"""Symbols that are also English words or abbreviations: elements only in a chemical context."""

CRYSTAL_SYSTEMS: dict[str, tuple[int, ...]] = {
    "triclinic": tuple(range(1, 3)),
    "monoclinic": tuple(range(3, 16)),
    "orthorhombic": tuple(range(16, 75)),
    "tetragonal": tuple(range(75, 143)),
    "trigonal": tuple(range(143, 168)),
    "rhombohedral": (146, 148, 155, 160, 161, 166, 167),
    "hexagonal": tuple(range(168, 195)),
    "cubic": tuple(range(195, 231)),
}
"""Crystal-system adjective -> international space-group numbers."""

PROPERTY_PHRASES: dict[str, str] = {
    "e_above_hull": (
        r"e[ _-]?above[ _-]?hull|energy\s+above\s+(?:the\s+)?(?:convex\s+)?hull"
        r"|e[ _-]?hull|hull\s+(?:energy|distance)"
        r"|distance\s+(?:to|from)\s+(?:the\s+)?(?:convex\s+)?hull"
        r"|(?:above|from|of|off|to)\s+(?:the\s+)?(?:convex\s+)?hull"
        r"|(?:the\s+)?(?:convex\s+)?hull"
    ),
    "formation_energy": (
        r"formation\s+(?:energy|energies|enthalpy)|(?:energy|enthalpy)\s+of\s+formation"
        r"|e[ _-]?form"
    ),
    "band_gap": r"band[\s-]?gaps?|gaps?",
    "bulk_modulus": r"bulk\s+modul(?:us|i)",
    "density": r"(?:mass\s+)?density",
    "volume_per_atom": r"volume\s*(?:per|/)\s*atom|atomic\s+volume|volume",
    "magnetic_moment": r"magnetic\s+moments?|magneti[sz]ation",
}
"""Property name -> regular expression (case-insensitive) of the phrases that name it."""

_LABELS: dict[str, str] = {
    "e_above_hull": "energy above hull",
    "formation_energy": "formation energy",
    "band_gap": "band gap",
    "bulk_modulus": "bulk modulus",
    "density": "density",
    "volume_per_atom": "volume per atom",
    "magnetic_moment": "magnetic moment",
}
_NON_NEGATIVE = frozenset(PROPERTIES) - {"formation_energy"}

# --------------------------------------------------------------------------------------------
# Shared vocabulary
# --------------------------------------------------------------------------------------------

_SYMBOLS: frozenset[str] = frozenset(el.symbol for el in _ELEMENTS)
_NAME_TO_SYMBOL: dict[str, str] = {el.long_name.lower(): el.symbol for el in _ELEMENTS}
_NAME_TO_SYMBOL |= {"aluminium": "Al", "sulphur": "S", "caesium": "Cs"}

_NUMBER_WORDS: dict[str, int] = {
    **{
        word: value
        for value, word in enumerate(
            (
                *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight"),
                *("nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen"),
                *("sixteen", "seventeen", "eighteen", "nineteen", "twenty"),
            )
        )
    },
    **{"thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "a hundred": 100, "a dozen": 12},
}
_INT = r"(?:(?<![\w.])\d+(?![\w.])|\b(?:" + "|".join(sorted(_NUMBER_WORDS, key=len)[::-1]) + r")\b)"
_NUM = r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?!\d)"

Kind = Literal["ge", "gt", "le", "lt", "approx", "eq"]

_COMPARATOR_WORDS: dict[Kind, tuple[str, ...]] = {
    "ge": (
        *("at least", "no less than", "not less than", "a minimum of", "minimum of"),
        *("minimum", "min", "min.", "greater than or equal to", "more than or equal to"),
        *("at or above", ">=", "=>", "no lower than", "no smaller than"),
    ),
    "gt": (
        *("greater than", "more than", "higher than", "larger than", "bigger than", "above"),
        *("over", "exceeding", "exceeds", "exceed", "in excess of", ">"),
    ),
    "le": (
        *("at most", "no more than", "not more than", "a maximum of", "maximum of", "maximum"),
        *("max", "max.", "up to", "within", "less than or equal to", "at or below", "<="),
        *("=<", "no higher than", "no greater than", "no larger than", "not exceeding"),
    ),
    "lt": ("less than", "fewer than", "lower than", "smaller than", "below", "under", "<"),
    "approx": (
        *("around", "about", "approximately", "approx.", "approx", "roughly", "near"),
        *("close to", "circa", "~"),
    ),
    "eq": ("exactly", "equal to", "="),
}
_COMPARATORS: dict[str, Kind] = {
    word: kind for kind, words in _COMPARATOR_WORDS.items() for word in words
}


def _phrase_alternation(phrases: Iterable[str]) -> str:
    """A regex alternation of literal phrases, longest first, with word boundaries."""
    parts: list[str] = []
    for phrase in sorted(phrases, key=len, reverse=True):
        body = re.escape(phrase).replace(r"\ ", r"\s+")
        if phrase[0].isalpha():
            body = r"(?<![\w])" + body
        if phrase[-1].isalpha():
            body += r"(?![\w])"
        parts.append(body)
    return "(?:" + "|".join(parts) + ")"


_CMP = _phrase_alternation(_COMPARATORS)
_POST_GE = r"(?:or|and)\s+(?:more|higher|greater|above|larger|over|bigger|up)"
_POST_LE = r"(?:or|and)\s+(?:less|lower|below|smaller|fewer|under|down)"
_POST = rf"(?:\s+(?P<post>{_POST_GE}|{_POST_LE})\b(?!\s*[-+~<>=]?\s*\d))"


def _comparator(text: str) -> Kind:
    return _COMPARATORS[re.sub(r"\s+", " ", text.strip().lower())]


def _post_kind(text: str) -> Kind:
    return "ge" if re.fullmatch(_POST_GE, text.strip(), re.IGNORECASE) else "le"


def _int_value(token: str) -> int:
    token = re.sub(r"\s+", " ", token.strip().lower())
    return int(token) if token.isdigit() else _NUMBER_WORDS[token]


def _fmt(value: float) -> str:
    return f"{value:g}"


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" ,;")


# --------------------------------------------------------------------------------------------
# Text scanning
# --------------------------------------------------------------------------------------------

_CHAR_MAP = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u207b": "-",
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u00b7": " ",
        "\u00b3": "3",
        "\u00b5": "μ",
        "\u212b": "Å",
        "\u2018": "'",
        "\u2019": "'",
        "≥": ">=",
        "≤": "<=",
        "≈": "~",
    }
)
_CLAUSE_BREAK_RE = re.compile(r"[,;!?\n]|\.(?!\d)|\b(?:but|while|whereas)\b", re.IGNORECASE)
_SOFT_RE = re.compile(
    r"\b(?:ideally|ideal|preferabl[ey]|preferred|prefer|if\s+possible|where\s+possible"
    r"|would\s+be\s+nice(?:\s+to\s+have)?|nice\s+to\s+have|optionally|optional"
    r"|as\s+a\s+bonus)\b",
    re.IGNORECASE,
)


class _Scan:
    """The normalised request, with the spans that earlier stages consumed blanked out.

    ``text`` keeps the normalised request for context checks; ``masked`` is the same length
    with consumed spans replaced by spaces, and is what stages search.
    """

    def __init__(self, request: str) -> None:
        self.text = request.translate(_CHAR_MAP)
        self.masked = self.text
        breaks = list(_CLAUSE_BREAK_RE.finditer(self.text))
        self._breaks = [m.start() for m in breaks]
        self._break_ends = [m.end() for m in breaks]
        self._soft_spans: list[tuple[int, int]] = []
        for marker in _SOFT_RE.finditer(self.text):
            index = self._clause(marker.start())
            end = self._breaks[index] if index < len(self._breaks) else len(self.text)
            trailing = not re.search(r"\w", self.text[marker.end() : end])
            start = self.clause_start(marker.start()) if trailing else marker.start()
            self._soft_spans.append((start, end))

    def find(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        """All matches of ``pattern`` in the unconsumed text."""
        return list(pattern.finditer(self.masked))

    def consume(self, start: int, end: int) -> None:
        """Blank out ``[start, end)`` so that later stages do not read it."""
        self.masked = self.masked[:start] + " " * (end - start) + self.masked[end:]

    def _clause(self, pos: int) -> int:
        return bisect.bisect_right(self._breaks, pos)

    def clause_start(self, pos: int) -> int:
        """Offset where the clause holding ``pos`` starts."""
        index = self._clause(pos)
        return self._break_ends[index - 1] if index else 0

    def is_soft(self, *positions: int) -> bool:
        """Whether any of ``positions`` is under a soft marker ("ideally", "if possible").

        A marker softens the rest of its clause; a marker that ends its clause ("band gap
        above 2 eV if possible") softens the whole clause.
        """
        return any(start <= p < end for p in positions for start, end in self._soft_spans)


def _readable(error: ValidationError) -> str:
    parts: list[str] = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------

_BUDGET_LEAD = (
    r"(?:(?:in|within|using|with|for|over|under|in\s+under|in\s+less\s+than|"
    r"(?:a\s+)?budget\s+of)\s+)?"
    r"(?:(?:at\s+most|up\s+to|no\s+more\s+than|not\s+more\s+than|a\s+maximum\s+of|"
    r"maximum\s+of|max(?:imum)?|less\s+than|fewer\s+than|<=?)\s*)?"
)
_TIME_UNITS: dict[str, float] = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_BUDGET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "patience_rounds",
        re.compile(
            rf"(?:stop\s+after|patience\s+of)\s+(?P<n>{_INT})\s+(?:rounds?|iterations?)"
            r"(?:\s+without\s+(?:a\s+new\s+hit|new\s+hits|improvement|progress))?",
            re.IGNORECASE,
        ),
    ),
    (
        "samples_per_round",
        re.compile(
            rf"(?P<n>{_INT})\s+(?:samples?|structures?|candidates?)\s+(?:per|each|every|a)\s+"
            r"(?:round|iteration)",
            re.IGNORECASE,
        ),
    ),
    (
        "max_rounds",
        re.compile(
            rf"{_BUDGET_LEAD}(?P<n>{_INT})\s+(?:(?:design|generation|search)\s+)?"
            r"(?:rounds?|iterations?|cycles?)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "max_wall_time_s",
        re.compile(
            rf"{_BUDGET_LEAD}(?P<n>{_NUM}|{_INT})[\s-]*"
            r"(?P<unit>seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h)\b"
            r"(?:\s+(?:of\s+)?(?:wall[\s-]?(?:clock\s+)?)?time)?",
            re.IGNORECASE,
        ),
    ),
    (
        "max_validator_calls",
        re.compile(
            rf"{_BUDGET_LEAD}(?P<n>{_INT})\s+(?:(?:CHGNet|validator|validation|relaxation)\s+)?"
            r"(?:relaxations?|validations?|calls|evaluations?)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "max_llm_tokens",
        re.compile(
            rf"{_BUDGET_LEAD}(?P<n>{_NUM})\s*(?P<unit>k|thousand|m|million)?\s+"
            r"(?:LLM\s+)?tokens\b",
            re.IGNORECASE,
        ),
    ),
)


def _budget_value(name: str, match: re.Match[str]) -> float:
    raw = match.group("n")
    number = float(raw) if re.fullmatch(r"[-+]?[\d.]+", raw) else float(_int_value(raw))
    if name == "max_wall_time_s":
        unit = match.group("unit").lower()
        key = next(k for k in ("sec", "min", "h", "s", "m") if unit.startswith(k))
        return number * _TIME_UNITS[key]
    if name == "max_llm_tokens":
        unit = (match.group("unit") or "").lower()
        return number * {"": 1, "k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6}[unit]
    return number


def _parse_budget(scan: _Scan, defaults: Budget) -> Budget:
    """Budget phrases, applied on top of ``defaults``."""
    updates: dict[str, float] = {}
    for name, pattern in _BUDGET_PATTERNS:
        for match in scan.find(pattern):
            value = _budget_value(name, match)
            if name in updates and updates[name] != value:
                raise ClarificationNeeded(
                    f"The request sets {name} to both {_fmt(updates[name])} and "
                    f"{_fmt(value)}; which do you want?"
                )
            updates[name] = value
            scan.consume(*match.span())
    if not updates:
        return defaults
    values = defaults.model_dump() | {
        k: (v if k == "max_wall_time_s" else round(v)) for k, v in updates.items()
    }
    try:
        return Budget.model_validate(values)
    except ValidationError as error:
        raise RequestError(f"invalid budget in the request: {_readable(error)}") from None


# --------------------------------------------------------------------------------------------
# Atoms per cell
# --------------------------------------------------------------------------------------------

_ATOMS = (
    r"atoms?(?:\s*(?:/|per|in\s+(?:the|a|each|its)|a)\s*"
    r"(?:(?:unit|primitive|simulation|crystal)\s+)?cell)?"
    r"(?!\s*(?:/|per|in\s+the|in\s+a)\s*(?:formula|f\.u\.))"
)
_ATOM_RANGE_RE = re.compile(
    rf"(?:between\s+(?P<a1>{_INT})\s+and\s+(?P<b1>{_INT})|(?:from\s+)?(?P<a2>{_INT})\s*"
    rf"(?:-|to)\s*(?P<b2>{_INT}))\s+{_ATOMS}",
    re.IGNORECASE,
)
_ATOM_SINGLE_RE = re.compile(
    rf"(?:(?P<cmp>{_CMP})\s*)?(?P<n>{_INT})(?:\s+|-){_ATOMS}"
    rf"(?:\s+(?P<post>{_POST_GE}|{_POST_LE}))?",
    re.IGNORECASE,
)
_ATOM_REVERSE_RE = re.compile(
    rf"(?:number\s+of\s+)?atoms\s*(?:/|per)\s*(?:unit\s+)?cell\s*"
    rf"(?:of|:|is|should\s+be|must\s+be|to\s+be)?\s*(?P<cmp>{_CMP})?\s*(?P<n>{_INT})",
    re.IGNORECASE,
)


def _atom_bounds(kind: Kind | None, n: int) -> tuple[int | None, int | None]:
    """Integer bounds for "<kind> n atoms": strict comparisons move by one atom."""
    if kind == "ge":
        return n, None
    if kind == "gt":
        return n + 1, None
    if kind == "le":
        return None, n
    if kind == "lt":
        return None, n - 1
    if kind == "approx":
        return max(1, round(n * 0.8)), round(n * 1.2)
    return n, n


def _parse_atoms(scan: _Scan) -> tuple[int, int]:
    """Atoms-per-cell limits, as ``(min_atoms, max_atoms)``."""
    lows: list[int] = []
    highs: list[int] = []
    for match in scan.find(_ATOM_RANGE_RE):
        a = _int_value(match.group("a1") or match.group("a2"))
        b = _int_value(match.group("b1") or match.group("b2"))
        lows.append(min(a, b))
        highs.append(max(a, b))
        scan.consume(*match.span())
    for pattern in (_ATOM_SINGLE_RE, _ATOM_REVERSE_RE):
        for match in scan.find(pattern):
            kind = _comparator(match.group("cmp")) if match.group("cmp") else None
            post = match.groupdict().get("post")
            if post:
                kind = _post_kind(post)
            low, high = _atom_bounds(kind, _int_value(match.group("n")))
            if low is not None:
                lows.append(low)
            if high is not None:
                highs.append(high)
            scan.consume(*match.span())
    for value in lows + highs:
        if value < 1:
            raise RequestError(
                f"{value} atoms per cell is not possible: a cell needs at least 1 atom"
            )
    for value in highs:
        if value > MAX_ATOMS_LIMIT:
            raise RequestError(
                f"at most {value} atoms per cell is above the supported limit of {MAX_ATOMS_LIMIT}"
            )
    for value in lows:
        if value > MAX_ATOMS_LIMIT:
            raise RequestError(
                f"at least {value} atoms per cell is above the supported limit of {MAX_ATOMS_LIMIT}"
            )
    low = max(lows, default=1)
    ceiling = DEFAULT_MAX_ATOMS if low <= DEFAULT_MAX_ATOMS else MAX_ATOMS_LIMIT
    high = min(highs) if highs else ceiling
    if low > high:
        raise RequestError(
            f"contradictory atom limits: at least {low} and at most {high} atoms per cell"
        )
    return low, high


# --------------------------------------------------------------------------------------------
# Space groups and crystal systems
# --------------------------------------------------------------------------------------------

_HM = r"[PIFCABR][-_/0-9abcdemn]+"
_SG_KEYWORD_RE = re.compile(
    r"(?<![\w])(?i:space[\s-]?groups?|spacegroups?|sg|s\.g\.)\s*"
    r"(?:(?i:no\.?|number|num\.?)\s*|#\s*)?"
    rf"(?P<items>(?:\d+|{_HM})(?![\w/])(?:\s*(?:,\s*(?i:or|and)?|(?i:or|and)|/)\s*(?:#\s*)?"
    rf"(?:\d+|{_HM})(?![\w/]))*)"
)
_SG_ITEM_RE = re.compile(rf"\d+|{_HM}")
_SG_UNKNOWN_RE = re.compile(
    r"(?<![\w])(?i:space[\s-]?groups?|spacegroups?|sg)\s+(?:(?i:no\.?|number|of|is)\s+|:\s*)?"
    r"(?P<token>[A-Z][\w/-]*[-/_\d][\w/-]*)"
)
_HM_BARE_RE = re.compile(rf"(?<![\w/^-])(?P<hm>{_HM})(?![\w/^])")
_CRYSTAL_SYSTEM_RE = re.compile(
    r"(?<![\w-])(?P<neg>non-|not\s+)?(?P<system>" + "|".join(CRYSTAL_SYSTEMS) + r")(?![\w-])"
    r"(?!\s+(?:cm|centimet\w*|met(?:er|re)s?|angstr\w*|Å|nm|mm|inch\w*|f(?:ee|oo)t|units?)\b)",
    re.IGNORECASE,
)


@cache
def _resolve_hm(symbol: str) -> int | None:
    """International number of a Hermann–Mauguin symbol, trying common spellings."""
    variants = [symbol, re.sub(r"(\d)(\d)", r"\1_\2", symbol)]
    variants += [symbol[:i] + "-" + symbol[i:] for i, c in enumerate(symbol) if c.isdigit()]
    for variant in variants:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return int(SpaceGroup(variant).int_number)
        except (ValueError, KeyError):
            continue
    return None


def _space_group_number(item: str) -> int:
    if item.isdigit():
        number = int(item)
        if not 1 <= number <= 230:
            raise RequestError(f"space group {number} is not a space-group number (1-230)")
        return number
    number = _resolve_hm(item)
    if number is None:
        raise RequestError(
            f"unknown space-group symbol {item!r}; use a number 1-230 or a Hermann-Mauguin "
            "symbol such as 'Fm-3m' or 'P6_3/mmc'"
        )
    return number


def _parse_space_groups(scan: _Scan) -> tuple[int, ...]:
    """Space groups from numbers, Hermann–Mauguin symbols and crystal-system adjectives."""
    explicit: set[int] = set()
    for match in scan.find(_SG_KEYWORD_RE):
        explicit.update(_space_group_number(i) for i in _SG_ITEM_RE.findall(match["items"]))
        scan.consume(*match.span())
    for match in scan.find(_SG_UNKNOWN_RE):
        _space_group_number(match["token"])  # raises: the keyword is followed by a non-symbol
    for match in scan.find(_HM_BARE_RE):
        number = _resolve_hm(match["hm"]) if len(match["hm"]) >= 3 else None
        if number is not None:
            explicit.add(number)
            scan.consume(*match.span())
    systems: set[int] = set()
    named: list[str] = []
    for match in scan.find(_CRYSTAL_SYSTEM_RE):
        numbers = set(CRYSTAL_SYSTEMS[match["system"].lower()])
        systems |= set(range(1, 231)) - numbers if match["neg"] else numbers
        named.append(_squash(match.group()))
        scan.consume(*match.span())
    if not systems:
        return tuple(sorted(explicit))
    if not explicit:
        return tuple(sorted(systems))
    kept = explicit & systems
    if not kept:
        groups = ", ".join(str(n) for n in sorted(explicit))
        raise RequestError(
            f"space group {groups} does not belong to the crystal system "
            f"{' / '.join(repr(n) for n in named)} named in the request"
        )
    return tuple(sorted(kept))


# --------------------------------------------------------------------------------------------
# Number of candidates
# --------------------------------------------------------------------------------------------

_FUZZY_COUNTS: dict[str, int] = {
    "a few": 3,
    "a couple of": 2,
    "a couple": 2,
    "several": 5,
    "a handful of": 5,
    "a handful": 5,
    "a single": 1,
}
_COUNT = rf"(?:{_phrase_alternation(_FUZZY_COUNTS)}|{_INT})"
_CANDIDATE_NOUN = (
    r"(?:candidates?|structures?|materials?|compounds?|crystals?|options?|suggestions?"
    r"|designs?|phases?|polymorphs?|hits?)"
)
_NOT_UNIT = r"(?!\s*(?:eV|meV|GPa|MPa|g\s*/|g\s+cm|Å|A\^?3|μB|muB|atoms?\b|%|K\b|V\b))"
_COUNT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        rf"(?P<n>{_COUNT})\s+(?:(?!(?:atoms?|eV|meV|GPa|of|the)\b)[A-Za-z][\w-]*\s+){{0,3}}?"
        rf"{_CANDIDATE_NOUN}\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:find|give|show|generate|suggest|propose|return|list|want|need|get|produce"
        r"|predict|design)\s+(?:me\s+|us\s+)?(?:the\s+)?(?:top\s+|best\s+)?"
        rf"(?P<n>{_COUNT}){_NOT_UNIT}",
        re.IGNORECASE,
    ),
    re.compile(rf"\b(?:top|best)\s+(?P<n>{_COUNT}){_NOT_UNIT}", re.IGNORECASE),
)


def _count_value(token: str) -> int:
    key = re.sub(r"\s+", " ", token.strip().lower())
    return _FUZZY_COUNTS[key] if key in _FUZZY_COUNTS else _int_value(key)


def _parse_num_candidates(scan: _Scan) -> int | None:
    """How many candidates the request asks for, or ``None`` when it does not say."""
    counts: dict[int, str] = {}
    for pattern in _COUNT_PATTERNS:
        for match in scan.find(pattern):
            counts.setdefault(_count_value(match["n"]), _squash(match.group()))
            scan.consume(*match.span("n"))  # keep the words around it: "10 LiMnO2 structures"
    if len(counts) > 1:
        said = " and ".join(repr(text) for text in counts.values())
        raise ClarificationNeeded(
            f"The request asks for different numbers of candidates ({said}); how many do you want?"
        )
    if not counts:
        return None
    (count,) = counts
    if not 1 <= count <= 1000:
        raise RequestError(f"{count} candidates is not supported: ask for between 1 and 1000")
    return count


# --------------------------------------------------------------------------------------------
# Property targets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """One constraint on a property, before pieces on the same property are merged."""

    name: PropertyName
    low: float | None
    high: float | None
    hard: bool
    text: str
    """The words that gave the piece, e.g. ``band gap above 1 eV`` or ``metallic``."""
    qualitative: bool

    def describe(self) -> str:
        unit = PROPERTIES[self.name][0]
        label = _LABELS[self.name]
        if self.low is not None and self.high is not None:
            if self.low == self.high:
                return f"{label} = {_fmt(self.low)} {unit}"
            return f"{label} in [{_fmt(self.low)}, {_fmt(self.high)}] {unit}"
        if self.low is not None:
            return f"{label} >= {_fmt(self.low)} {unit}"
        return f"{label} <= {_fmt(self.high if self.high is not None else 0.0)} {unit}"


_QUALITATIVE: tuple[tuple[str, PropertyName, float | None, float | None], ...] = (
    (r"on\s+the\s+(?:convex\s+)?hull", "e_above_hull", None, 0.0),
    (r"(?:near|close\s+to)\s+the\s+(?:convex\s+)?hull", "e_above_hull", None, 0.1),
    (
        r"(?:(?:thermodynamically|highly|very)\s+)?(?:meta)?stable",
        "e_above_hull",
        None,
        DEFAULT_E_ABOVE_HULL_EV,
    ),
    (r"non-?metallic", "band_gap", METALLIC_MAX_GAP_EV, None),
    (r"semi-?conduct(?:ors?|ing)", "band_gap", *SEMICONDUCTOR_GAP_EV),
    (r"insulat(?:ors?|ing)", "band_gap", INSULATOR_MIN_GAP_EV, None),
    (r"metallic", "band_gap", None, METALLIC_MAX_GAP_EV),
    (
        r"(?:is\s+)?a\s+metal(?=\s*(?:[,.;]|$)|\s+(?:with|that|and|which|having|or)\b)",
        "band_gap",
        None,
        METALLIC_MAX_GAP_EV,
    ),
    (r"non-?magnetic", "magnetic_moment", None, NONMAGNETIC_MAX_MOMENT),
    (
        r"(?:ferro|ferri)?magnetic(?!\s+(?:moments?|fields?|propert\w+|order\w*|suscept\w+))",
        "magnetic_moment",
        MAGNETIC_MIN_MOMENT,
        None,
    ),
)
_QUALITATIVE_RES: tuple[tuple[re.Pattern[str], PropertyName, float | None, float | None], ...]
_QUALITATIVE_RES = tuple(
    (re.compile(rf"(?<![\w-]){pattern}(?![\w-])", re.IGNORECASE), name, low, high)
    for pattern, name, low, high in _QUALITATIVE
)
_NOT_THERMO_RE = re.compile(
    r"(?:dynamically|mechanically|phonon|air|water|moisture|not|never)[\s-]+$", re.IGNORECASE
)


def _parse_qualitative(scan: _Scan) -> list[_Piece]:
    """Pieces from words such as "stable", "metallic", "semiconducting", "magnetic"."""
    pieces: list[_Piece] = []
    for pattern, name, low, high in _QUALITATIVE_RES:
        for match in scan.find(pattern):
            if name == "e_above_hull" and _NOT_THERMO_RE.search(scan.text[: match.start()]):
                continue
            word = _squash(match.group())
            word = re.sub(r"^(?:is\s+)", "", word, flags=re.IGNORECASE)
            hard = not scan.is_soft(match.start())
            pieces.append(_Piece(name, low, high, hard, word, qualitative=True))
            scan.consume(*match.span())
    return pieces


_UNITS: tuple[tuple[str, str, float], ...] = (
    (r"meV\s*(?:/|per\s+)\s*atom", "eV/atom", 1e-3),
    (r"eV\s*(?:/|per\s+)\s*atom", "eV/atom", 1.0),
    (r"meV", "eV", 1e-3),
    (r"eV", "eV", 1.0),
    (r"GPa", "GPa", 1.0),
    (r"MPa", "GPa", 1e-3),
    (
        r"g\s*/\s*cm\^?3|g\s*cm\^?-3|g\s*/\s*cc|grams?\s+per\s+cubic\s+centimet(?:er|re)s?",
        "g/cm^3",
        1.0,
    ),
    (r"kg\s*/\s*m\^?3|kg\s*m\^?-3", "g/cm^3", 1e-3),
    (
        r"(?:Å|A|angstroms?)\^?3\s*(?:/|per\s+)\s*atom|Å\^?3|cubic\s+angstroms?\s+per\s+atom",
        "Å^3/atom",
        1.0,
    ),
    (
        r"(?:μ_?B|mu_?B|uB|bohr\s+magnetons?)(?:\s*(?:/|per\s+)\s*atom)?",
        "μB/atom",
        1.0,
    ),
)
_UNIT = "(?:" + "|".join(pattern for pattern, _, _ in _UNITS) + r")(?![\w^])"
_UNIT_FAMILIES: dict[str, frozenset[str]] = {
    "e_above_hull": frozenset({"eV/atom", "eV"}),
    "formation_energy": frozenset({"eV/atom", "eV"}),
    "band_gap": frozenset({"eV"}),
    "bulk_modulus": frozenset({"GPa"}),
    "density": frozenset({"g/cm^3"}),
    "volume_per_atom": frozenset({"Å^3/atom"}),
    "magnetic_moment": frozenset({"μB/atom"}),
}
_RANGE_RE = re.compile(
    rf"(?:between\s+(?P<a1>{_NUM})\s*(?P<ua1>{_UNIT})?\s*(?:and|-|to)\s*(?P<b1>{_NUM})"
    rf"|from\s+(?P<a2>{_NUM})\s*(?P<ua2>{_UNIT})?\s*(?:to|-)\s*(?P<b2>{_NUM})"
    rf"|(?P<a3>{_NUM})\s*(?P<ua3>{_UNIT})?\s*(?:-|to)\s*(?P<b3>{_NUM}))"
    rf"\s*(?P<unit>{_UNIT})?",
    re.IGNORECASE,
)
_SINGLE_RE = re.compile(
    rf"(?:(?P<cmp>{_CMP})\s*(?:of\s+|than\s+)?)?(?P<num>{_NUM})\s*(?P<unit>{_UNIT})?{_POST}?",
    re.IGNORECASE,
)
_PROPERTY_RE = re.compile(
    "|".join(
        rf"(?P<{name}>(?<![\w])(?:{pattern})(?![\w]))" for name, pattern in PROPERTY_PHRASES.items()
    ),
    re.IGNORECASE,
)
_BOUND_WORD_RE = re.compile(r"(?:minimum|min\.?|lowest|maximum|max\.?|highest)\s+$", re.I)
_SENTENCE_END_RE = re.compile(r"[;!?\n]|\.(?!\d)")
_CHAIN_GAP_RE = re.compile(
    r"[\s,]*(?:(?:and|but|or|ideally|preferably|optionally|if\s+possible)[\s,]+)*",
    re.IGNORECASE,
)


_Bounds = tuple[float | None, float | None]


@dataclass
class _Quantity:
    """A number or range with an optional unit and comparison, not yet tied to a property."""

    start: int
    end: int
    low: float
    high: float
    kind: Kind | Literal["range", "bare"]
    unit: str | None
    """Unit family (``eV``, ``eV/atom``, ``GPa``, ...), ``None`` when the request gave none."""
    factor: float
    text: str
    bound: bool = False


@dataclass
class _Phrase:
    name: PropertyName
    start: int
    end: int
    text: str
    default_kind: Kind | None
    quantities: list[_Quantity] = field(default_factory=list)


def _unit_of(text: str | None) -> tuple[str | None, float]:
    """Unit family and factor to that family's canonical unit for a matched unit text."""
    if not text:
        return None, 1.0
    for pattern, family, factor in _UNITS:
        if re.fullmatch(pattern, text.strip(), re.IGNORECASE):
            return family, factor
    raise AssertionError(f"unit regex and table disagree on {text!r}")  # internal invariant


def _find_quantities(masked: str) -> list[_Quantity]:
    """Every range ("1-2 eV") and single value ("above 1 eV") in ``masked``, in text order."""
    quantities: list[_Quantity] = []
    for match in _RANGE_RE.finditer(masked):
        groups = match.groupdict()
        index = next(i for i in "123" if groups[f"a{i}"] is not None)
        a, b = float(groups[f"a{index}"]), float(groups[f"b{index}"])
        family, factor = _unit_of(groups["unit"] or groups[f"ua{index}"])
        text = _squash(match.group())
        quantities.append(
            _Quantity(
                match.start(), match.end(), min(a, b), max(a, b), "range", family, factor, text
            )
        )
        masked = masked[: match.start()] + " " * len(match.group()) + masked[match.end() :]
    for match in _SINGLE_RE.finditer(masked):
        family, factor = _unit_of(match["unit"])
        kind: Kind | Literal["bare"] = _comparator(match["cmp"]) if match["cmp"] else "bare"
        if match["post"]:
            kind = _post_kind(match["post"])
        value = float(match["num"])
        text = _squash(match.group())
        quantities.append(
            _Quantity(match.start(), match.end(), value, value, kind, family, factor, text)
        )
    return sorted(quantities, key=lambda q: q.start)


def _compatible(name: PropertyName, quantity: _Quantity) -> bool:
    """Whether the quantity's unit (or lack of one) fits property ``name``."""
    return quantity.unit is None or quantity.unit in _UNIT_FAMILIES[name]


def _find_phrases(scan: _Scan) -> list[_Phrase]:
    """Property phrases, each with a leading "minimum"/"maximum" folded in."""
    phrases: list[_Phrase] = []
    for match in scan.find(_PROPERTY_RE):
        name = cast("PropertyName", match.lastgroup)
        start = match.start()
        before = _BOUND_WORD_RE.search(scan.masked[:start])
        default: Kind | None = None
        if before:
            default = "ge" if before.group().lower().startswith(("min", "low")) else "le"
            start = before.start()
        phrases.append(_Phrase(name, start, match.end(), scan.text[start : match.end()], default))
    return phrases


def _pair(scan: _Scan, phrases: list[_Phrase], quantities: list[_Quantity]) -> None:
    """Tie quantities to property phrases (see the module docstring for the rules)."""
    masked = scan.masked

    def follows_a_phrase(quantity: _Quantity) -> bool:
        return any(
            p.end <= quantity.start
            and not re.search(r"[,;.]", masked[p.end : quantity.start])
            and len(masked[p.end : quantity.start].split()) <= 3
            for p in phrases
        )

    # 1. A quantity right before a phrase, with a matching unit: "a 1.5 eV band gap", unless
    #    it directly follows another phrase ("e_hull below 50 meV band gap ...").
    for phrase in phrases:
        for quantity in quantities:
            if (
                not quantity.bound
                and quantity.end <= phrase.start
                and re.fullmatch(r"[\s-]*", masked[quantity.end : phrase.start])
                and quantity.unit is not None
                and _compatible(phrase.name, quantity)
                and not follows_a_phrase(quantity)
            ):
                quantity.bound = True
                phrase.quantities.append(quantity)
    # 2. Quantities after a phrase, in the same sentence, before the next phrase.
    for index, phrase in enumerate(phrases):
        if phrase.quantities:
            continue
        stop = phrases[index + 1].start if index + 1 < len(phrases) else len(masked)
        sentence_end = _SENTENCE_END_RE.search(masked, phrase.end, stop)
        stop = sentence_end.start() if sentence_end else stop
        previous = phrase.end
        for quantity in quantities:
            if quantity.bound or quantity.start < phrase.end or quantity.end > stop:
                continue
            gap = masked[previous : quantity.start]
            first = not phrase.quantities
            if first and len(gap.split()) > 6:
                break
            if not first and not _CHAIN_GAP_RE.fullmatch(gap):
                break
            if not _compatible(phrase.name, quantity):
                if first:
                    unit = PROPERTIES[phrase.name][0]
                    raise RequestError(
                        f"{quantity.text!r} cannot be a {_LABELS[phrase.name]}: the "
                        f"{_LABELS[phrase.name]} is measured in {unit}"
                    )
                break
            quantity.bound = True
            phrase.quantities.append(quantity)
            previous = quantity.end


def _quantity_bounds(name: PropertyName, quantity: _Quantity, default: Kind | None) -> _Bounds:
    """Closed bounds, in the canonical unit, that a quantity puts on property ``name``."""
    low, high = quantity.low * quantity.factor, quantity.high * quantity.factor
    kind = quantity.kind
    if kind == "bare" and default is not None:
        kind = default
    if kind in ("ge", "gt"):
        return low, None
    if kind in ("le", "lt"):
        return None, high
    if kind in ("approx", "bare"):
        tolerance = max(abs(low) * APPROX_RELATIVE_TOLERANCE, APPROX_MIN_TOLERANCE[name])
        low, high = low - tolerance, high + tolerance
        if name in _NON_NEGATIVE:
            low = max(low, 0.0)
        return low, high
    return low, high


def _parse_quantities(scan: _Scan) -> list[_Piece]:
    """Pieces from property phrases with numbers: "band gap above 1 eV"."""
    phrases = _find_phrases(scan)
    for phrase in phrases:
        scan.consume(phrase.start, phrase.end)
    quantities = _find_quantities(scan.masked)
    _pair(scan, phrases, quantities)
    pieces: list[_Piece] = []
    for phrase in phrases:
        for quantity in phrase.quantities:
            if phrase.name in _NON_NEGATIVE and min(quantity.low, quantity.high) < 0:
                raise RequestError(f"{_LABELS[phrase.name]} cannot be negative: {quantity.text!r}")
            low, high = _quantity_bounds(phrase.name, quantity, phrase.default_kind)
            phrase_text = _squash(phrase.text)
            if quantity.start < phrase.start:
                text = f"{quantity.text} {phrase_text}"
            else:
                text = f"{phrase_text} {quantity.text}"
            hard = not scan.is_soft(phrase.start, quantity.start)
            pieces.append(_Piece(phrase.name, low, high, hard, text, qualitative=False))
            scan.consume(quantity.start, quantity.end)
    for quantity in quantities:
        if not quantity.bound and quantity.unit is not None:
            raise ClarificationNeeded(
                f"Which property does {quantity.text!r} refer to? Name it, for example "
                f"'bulk modulus at least 150 GPa' or 'band gap above 1 eV'."
            )
    return pieces


def _intersect(pieces: Iterable[_Piece]) -> _Bounds:
    lows = [p.low for p in pieces if p.low is not None]
    highs = [p.high for p in pieces if p.high is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _overlap(a: _Piece, b: _Piece) -> bool:
    """Whether two pieces share more than a single boundary point."""
    low, high = _intersect((a, b))
    if low is None or high is None:
        return True
    return low < high or (low == high and (a.low == a.high or b.low == b.high))


def _merge(name: PropertyName, pieces: list[_Piece]) -> PropertyTarget:
    numeric = [p for p in pieces if not p.qualitative]
    words = [p for p in pieces if p.qualitative]
    for i, word in enumerate(words):
        for other in words[i + 1 :]:
            if not _overlap(word, other):
                raise ClarificationNeeded(
                    f"'{word.text}' means {word.describe()} but '{other.text}' means "
                    f"{other.describe()}; which do you want?"
                )
    for word in words:
        for piece in numeric:
            if not _overlap(word, piece):
                raise ClarificationNeeded(
                    f"'{word.text}' means {word.describe()} but you also asked for "
                    f"{piece.describe()}; which do you want?",
                    assumption=f"the number wins: {piece.describe()} ('{word.text}' dropped)",
                    drop=word.text,
                )
    chosen = numeric or words
    if any(p.hard for p in chosen):
        chosen = [p for p in chosen if p.hard]
    low, high = _intersect(chosen)
    if low is not None and high is not None and low > high:
        said = " and ".join(repr(p.text) for p in chosen)
        raise RequestError(
            f"contradictory range for {_LABELS[name]}: {said} leave no value between "
            f"{_fmt(low)} and {_fmt(high)} {PROPERTIES[name][0]}"
        )
    source = "request: " + " and ".join(f"'{p.text}'" for p in chosen)
    return PropertyTarget(name=name, min=low, max=high, hard=chosen[0].hard, source=source)


def _build_targets(pieces: list[_Piece]) -> tuple[PropertyTarget, ...]:
    """Merge pieces per property and add the default stability target."""
    by_name: dict[PropertyName, list[_Piece]] = {}
    for piece in pieces:
        by_name.setdefault(piece.name, []).append(piece)
    targets = [_merge(name, group) for name, group in by_name.items()]
    if "e_above_hull" not in by_name:
        targets.insert(
            0,
            PropertyTarget(name="e_above_hull", max=DEFAULT_E_ABOVE_HULL_EV, source="default"),
        )
    return tuple(targets)


# --------------------------------------------------------------------------------------------
# Chemistry
# --------------------------------------------------------------------------------------------


@dataclass
class _Chemistry:
    """Element constraints found so far, each with the words that gave it."""

    systems: dict[tuple[str, ...], str] = field(default_factory=dict)
    formulas: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    required: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    only: dict[str, str] | None = None
    anion_elements: set[str] = field(default_factory=set)

    def require(self, symbol: str, why: str) -> None:
        self.required.setdefault(symbol, why)

    def exclude(self, symbol: str, why: str) -> None:
        self.excluded.setdefault(symbol, why)


_SYSTEM_RE = re.compile(
    r"(?<![\w-])(?P<system>[A-Z][a-z]?(?:-[A-Z][a-z]?)+)(?![\w])(?!-?\s*free\b)"
)


def _parse_systems(scan: _Scan, chem: _Chemistry) -> None:
    for match in scan.find(_SYSTEM_RE):
        text = match["system"]
        parts = text.split("-")
        unknown = [p for p in parts if p not in _SYMBOLS]
        if unknown and len(unknown) == len(parts):
            continue  # "A-B": not chemistry at all
        if unknown:
            raise RequestError(
                f"unknown element {unknown[0]!r} in chemical system {text!r}; use element "
                "symbols such as 'Li-Mn-O'"
            )
        chem.systems.setdefault(tuple(sorted(set(parts))), text)
        scan.consume(*match.span())


_FORMULA_TOKEN_RE = re.compile(r"(?<![\w)(-])[A-Z(][A-Za-z0-9().]*(?<![.])(?![\w])")
_FORMULA_GRAMMAR_RE = re.compile(
    r"(?:(?:[A-Z][a-z]?|\((?:[A-Z][a-z]?(?:\d+(?:\.\d+)?)?)+\))(?:\d+(?:\.\d+)?)?)+"
)
_FORMULA_PART_RE = re.compile(r"[A-Z][a-z]?")
_CAPITAL_BINARIES = frozenset({"BN", "BP", "KF", "KI", "VN", "WC", "YN"})


def _parse_formulas(scan: _Scan, chem: _Chemistry) -> None:
    for match in scan.find(_FORMULA_TOKEN_RE):
        token, start, end = match.group(), match.start(), match.end()
        while token.endswith(")") and token.count(")") > token.count("("):
            token, end = token[:-1], end - 1  # "(see LiCoO2)"
        while token.startswith("(") and token.count("(") > token.count(")"):
            token, start = token[1:], start + 1  # "(LiCoO2 or ..."
        if not _FORMULA_GRAMMAR_RE.fullmatch(token):
            continue
        parts = _FORMULA_PART_RE.findall(token)
        unknown = [p for p in parts if p not in _SYMBOLS]
        if unknown:
            if any(c.isdigit() for c in token) and any(len(p) == 2 for p in unknown):
                raise RequestError(f"unknown element {unknown[0]!r} in formula {token!r}")
            continue
        if len(set(parts)) < 2:
            continue
        if token.isupper() and token.isalpha() and token not in _CAPITAL_BINARIES:
            continue  # an acronym such as CO, NO, FCC or CPU
        composition = Composition(token)
        elements = tuple(sorted(el.symbol for el in composition.elements))
        chem.formulas.setdefault(composition.reduced_formula, (elements, token))
        scan.consume(start, end)


_NEG_CUE = (
    r"(?:no|not|nor|without|excluding|exclude|excludes|except(?:\s+for)?|avoid|avoiding"
    r"|avoids|free\s+(?:of|from)|lacking|minus|sans"
    r"|not\s+(?:containing|contain|including|include|using|use|with|any)"
    r"|(?:does|do|must|should|shall|can|will)(?:\s+not|n't)\s+(?:contain|include|use|have))"
)
_ONLY_CUE = (
    r"(?:only|exclusively|nothing\s+but|made\s+(?:only\s+)?(?:of|from)"
    r"|composed\s+(?:only\s+)?of|consisting\s+(?:only\s+)?of|containing\s+only"
    r"|contains\s+only|only\s+containing|built\s+(?:only\s+)?from)"
)
_POS_CUE = (
    r"(?:containing|contains|contain|with|including|includes|include|of|plus"
    r"|doped\s+with|based\s+on|using|uses|use)"
)
_ARTICLE = r"(?:(?:any|a|an|the|some|elemental|either)\s+)?"
Polarity = Literal["positive", "negative", "only"]
_CUE_RES: tuple[tuple[Polarity, re.Pattern[str]], ...] = (
    ("only", re.compile(rf"(?<![\w]){_ONLY_CUE}\s+{_ARTICLE}$", re.IGNORECASE)),
    ("negative", re.compile(rf"(?<![\w]){_NEG_CUE}\s+{_ARTICLE}$", re.IGNORECASE)),
    ("positive", re.compile(rf"(?<![\w]){_POS_CUE}\s+{_ARTICLE}$", re.IGNORECASE)),
)


def _cue_before(scan: _Scan, start: int) -> tuple[Polarity | None, int]:
    """The cue word right before ``start`` in its clause, and where the cue starts."""
    clause_start = scan.clause_start(start)
    prefix = scan.text[clause_start:start]
    for polarity, pattern in _CUE_RES:
        match = pattern.search(prefix)
        if match:
            return polarity, clause_start + match.start()
    return None, start


_ANION_RE = re.compile(
    r"(?<![\w])(?P<non>non-?)?(?P<word>"
    + "|".join(sorted(ANION_CLASSES, key=len, reverse=True))
    + r")s?(?![\w])(?P<free>[\s-]free\b)?",
    re.IGNORECASE,
)
_ANION_FOLLOW = "|".join(ANION_CLASSES)


def _parse_anions(scan: _Scan, chem: _Chemistry) -> None:
    for match in scan.find(_ANION_RE):
        word = match["word"].lower()
        elements = ANION_CLASSES[word]
        negative = bool(match["non"] or match["free"])
        negative = negative or _cue_before(scan, match.start())[0] == "negative"
        if negative:
            if len(elements) == 1:
                chem.exclude(elements[0], _squash(match.group()))
        else:
            for symbol in elements:
                chem.require(symbol, word)
                chem.anion_elements.add(symbol)
        scan.consume(*match.span())


_GROUP_WORDS = r"toxic|radioactive|rare[\s-]earths?|precious[\s-]metals?|noble[\s-]metals?"
_GROUP_RE = re.compile(
    r"(?<![\w])(?P<pre>non-?|no\s+|not\s+|without\s+(?:any\s+)?|avoid(?:ing)?\s+(?:any\s+)?"
    r"|free\s+of\s+|excluding\s+)?"
    rf"(?P<group>{_GROUP_WORDS})(?:\s+(?:elements?|metals?))?(?P<post>[\s-]free\b)?",
    re.IGNORECASE,
)


def _parse_element_groups(scan: _Scan, chem: _Chemistry) -> None:
    for match in scan.find(_GROUP_RE):
        if not (match["pre"] or match["post"]):
            continue  # a positive group ("a rare-earth oxide") cannot be a fixed element set
        key = re.sub(r"[\s-]+", " ", match["group"].lower()).removesuffix("s")
        for symbol in ELEMENT_GROUPS[key]:
            chem.exclude(symbol, _squash(match.group()))
        scan.consume(*match.span())


@dataclass
class _Mention:
    """An element named in the text, by symbol or English name."""

    start: int
    end: int
    symbol: str
    text: str
    weak: bool
    suffix: str | None
    """A chemical suffix right after it ("free", "rich", "doped", ...), lowercased."""
    accepted: bool = False


_NAME_RE = re.compile(
    r"(?<![\w])(?P<name>" + "|".join(sorted(_NAME_TO_SYMBOL, key=len, reverse=True)) + r")(?![\w])",
    re.IGNORECASE,
)
_SYMBOL_RE = re.compile(r"(?<![\w'])(?P<symbol>[A-Z][a-z]?)(?![\w'])")
_CHEM_SUFFIX_RE = re.compile(
    r"(?:-\s*|\s+)(?P<suffix>free|rich|poor|doped|based|containing|bearing|substituted|ions?"
    r"|sites?|deficient)\b",
    re.IGNORECASE,
)
_CHEM_NOUN_RE = re.compile(
    rf"[\s-]+(?:(?:{_ANION_FOLLOW})s?|halides?|compounds?|perovskites?|alloys?|salts?"
    r"|phases?|frameworks?|cations?|anions?|atoms?)\b",
    re.IGNORECASE,
)
_LIST_SEPARATOR_RE = re.compile(
    r"-?\s*(?:,\s*(?:(?:and|or|nor)\s+)?|(?:and|or|nor|&|\+|/)\s*|,?\s*as\s+well\s+as\s+)",
    re.IGNORECASE,
)
_LIST_FOLLOWER_RE = re.compile(
    r"\s*(?:$|[,.;:!?)\]/&+-]|(?:and|or|nor|with|without|in|as|for|at|of|on|to|that|which"
    r"|but|only|plus|by|from|where|while|is|are|should|must)\b)",
    re.IGNORECASE,
)


def _find_mentions(scan: _Scan) -> list[_Mention]:
    found: list[_Mention] = []
    for match in scan.find(_NAME_RE):
        name = match["name"].lower()
        found.append(
            _Mention(match.start(), match.end(), _NAME_TO_SYMBOL[name], match.group(), False, None)
        )
        if name == "lead":
            found[-1].weak = True
    for match in scan.find(_SYMBOL_RE):
        symbol = match["symbol"]
        if symbol not in _SYMBOLS or re.search(r"\d\s*$", scan.text[: match.start()]):
            continue  # not an element, or a unit after a number ("300 K")
        weak = symbol in WEAK_SYMBOLS
        found.append(_Mention(match.start(), match.end(), symbol, symbol, weak, None))
    mentions: list[_Mention] = []
    for mention in sorted(found, key=lambda m: m.start):
        after = scan.text[mention.end :]
        suffix = _CHEM_SUFFIX_RE.match(after)
        if suffix:
            mention.suffix = suffix["suffix"].lower()
        elif re.match(r"-[a-z]", after):
            continue  # "Co-design", "Be-careful": a prefix, not an element
        mentions.append(mention)
    return mentions


def _group_mentions(scan: _Scan, mentions: list[_Mention]) -> list[tuple[list[_Mention], bool]]:
    """Split mentions into lists ("Li, Mn and O"); each with whether "or" joined it."""
    groups: list[tuple[list[_Mention], bool]] = []
    for mention in mentions:
        if groups:
            last = groups[-1][0][-1]
            gap = scan.text[last.end : mention.start]
            if _LIST_SEPARATOR_RE.fullmatch(gap):
                members, has_or = groups[-1]
                groups[-1] = (
                    [*members, mention],
                    has_or or bool(re.search(r"\bor\b", gap, re.IGNORECASE)),
                )
                continue
        groups.append(([mention], False))
    return groups


def _accept(scan: _Scan, members: list[_Mention], cue: Polarity | None) -> None:
    """Decide which mentions of one list are elements (see the module docstring)."""
    for index, mention in enumerate(members):
        after = scan.text[mention.end :]
        mention.accepted = (
            not mention.weak
            or (cue is not None and index == 0)
            or mention.suffix is not None
            or bool(_CHEM_NOUN_RE.match(after))
        )
    if any(m.accepted for m in members):
        for mention in members:
            if not mention.accepted and _LIST_FOLLOWER_RE.match(scan.text[mention.end :]):
                mention.accepted = True


def _parse_mentions(scan: _Scan, chem: _Chemistry) -> None:
    for members, has_or in _group_mentions(scan, _find_mentions(scan)):
        cue, cue_start = _cue_before(scan, members[0].start)
        _accept(scan, members, cue)
        accepted = [m for m in members if m.accepted]
        if not accepted:
            continue
        free_list = accepted[-1].suffix == "free"
        positive: list[_Mention] = []
        for mention in accepted:
            dangling = scan.text[mention.end : mention.end + 1] == "-" and mention.suffix is None
            if cue == "negative" or mention.suffix == "free" or (dangling and free_list):
                start = cue_start if cue == "negative" else mention.start
                end = accepted[-1].end if cue == "negative" else mention.end
                why = _squash(scan.text[start:end] + ("-free" if mention.suffix else ""))
                chem.exclude(mention.symbol, why)
            else:
                positive.append(mention)
        if has_or and len(positive) > 1 and cue != "only":
            listed = " or ".join(m.text for m in positive)
            raise ClarificationNeeded(
                f"'{listed}': should every candidate contain all of these elements, or any one "
                "of them? Name one set of elements, e.g. a chemical system such as 'Ti-O'."
            )
        for mention in positive:
            chem.require(mention.symbol, mention.text)
            if cue == "only":
                chem.only = (chem.only or {}) | {mention.symbol: mention.text}
        for mention in accepted:
            scan.consume(mention.start, mention.end)


def _parse_chemistry(scan: _Scan) -> _Chemistry:
    """Element constraints: systems, formulae, anion classes, groups and element mentions."""
    chem = _Chemistry()
    _parse_systems(scan, chem)
    _parse_formulas(scan, chem)
    _parse_anions(scan, chem)
    _parse_element_groups(scan, chem)
    _parse_mentions(scan, chem)
    return chem


def _system_of(chem: _Chemistry) -> tuple[tuple[str, ...] | None, str | None]:
    """The chemical system and formula the request fixes, checked for agreement."""
    if len(chem.systems) > 1:
        named = " or ".join(repr(t) for t in chem.systems.values())
        raise ClarificationNeeded(
            f"The request names more than one chemical system ({named}); which one do you want?"
        )
    if len(chem.formulas) > 1:
        named = " or ".join(repr(t) for _, t in chem.formulas.values())
        raise ClarificationNeeded(
            f"The request names more than one formula ({named}); which one do you want?"
        )
    system = next(iter(chem.systems), None)
    formula = next(iter(chem.formulas), None)
    if formula is not None:
        elements, token = chem.formulas[formula]
        if system is not None and elements != system:
            raise RequestError(
                f"formula {token!r} has the elements {'-'.join(elements)} but the chemical "
                f"system is {chem.systems[system]!r}"
            )
        system = elements
    return system, formula


def _check_elements(chem: _Chemistry, system: tuple[str, ...] | None) -> None:
    system_text = "-".join(system) if system else ""
    for symbol, why in sorted(chem.excluded.items()):
        if system and symbol in system:
            raise RequestError(
                f"element {symbol!r} is in the chemical system {system_text!r} but the request "
                f"excludes it ({why!r})"
            )
        if symbol in chem.required:
            raise RequestError(
                f"element {symbol!r} is both required ({chem.required[symbol]!r}) and excluded "
                f"({why!r})"
            )
    for symbol, why in sorted(chem.required.items()):
        if system and symbol not in system:
            raise RequestError(
                f"element {symbol!r} is required ({why!r}) but is not in the chemical system "
                f"{system_text!r}"
            )
        if chem.only is not None and symbol not in chem.only and symbol not in chem.anion_elements:
            allowed = ", ".join(sorted(set(chem.only) | chem.anion_elements))
            raise RequestError(
                f"element {symbol!r} is required ({why!r}) but the request allows only {allowed}"
            )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_request(text: str, *, defaults: Budget | None = None) -> DesignSpec:
    """Compile a plain-English design request into a :class:`DesignSpec`.

    The grammar and the meaning of qualitative words are in the module docstring.

    Args:
        text: The request, e.g. ``"a stable Li-Mn-O oxide, at most 16 atoms per cell"``.
        defaults: Budget to start from; phrases in the request override its fields. Defaults
            to ``Budget()``.

    Returns:
        The compiled spec; ``spec.request`` is ``text`` unchanged.

    Raises:
        RequestError: The request is empty, names an unknown element or space group, gives a
            value out of range, or contradicts itself.
        ClarificationNeeded: The request is ambiguous (no chemistry, two chemical systems, a
            number without a property) or a qualitative word contradicts a number.

    Examples:
        >>> spec = parse_request("a stable Li-Mn-O oxide, at most 16 atoms per cell")
        >>> spec.chemical_system, spec.max_atoms
        (('Li', 'Mn', 'O'), 16)
    """
    if not text or not text.strip():
        raise RequestError(
            "the design request is empty; describe the crystals you want, e.g. "
            "'a stable Li-Mn-O oxide with at most 16 atoms per cell'"
        )
    scan = _Scan(text)
    budget = _parse_budget(scan, defaults if defaults is not None else Budget())
    min_atoms, max_atoms = _parse_atoms(scan)
    space_groups = _parse_space_groups(scan)
    num_candidates = _parse_num_candidates(scan)
    pieces = _parse_qualitative(scan)
    pieces += _parse_quantities(scan)
    chem = _parse_chemistry(scan)
    system, formula = _system_of(chem)
    if system is None and not chem.required and chem.only is None:
        raise ClarificationNeeded(
            "Which elements or chemical system should the candidates be made of? For example "
            "'a Li-Mn-O oxide', 'LiFePO4' or 'a nitride of Ti and Al'."
        )
    _check_elements(chem, system)
    targets = _build_targets(pieces)
    required = set(chem.required) | set(system or ())
    if system is not None:
        allowed: set[str] | None = set(system)
    elif chem.only is not None:
        allowed = set(chem.only) | chem.anion_elements
    else:
        allowed = None
    try:
        return DesignSpec(
            request=text,
            required_elements=tuple(required),
            allowed_elements=tuple(allowed) if allowed is not None else None,
            excluded_elements=tuple(chem.excluded),
            chemical_system=system,
            formula=formula,
            min_atoms=min_atoms,
            max_atoms=max_atoms,
            space_groups=space_groups,
            targets=targets,
            num_candidates=num_candidates if num_candidates is not None else 3,
            budget=budget,
        )
    except ValidationError as error:
        raise RequestError(f"the request cannot be compiled: {_readable(error)}") from None


# --------------------------------------------------------------------------------------------
# Follow-ups: refine a compiled spec
# --------------------------------------------------------------------------------------------


def refine_spec(spec: DesignSpec, text: str) -> tuple[DesignSpec, list[str]]:
    """Apply a follow-up ("now without manganese", "at most 12 atoms") to a compiled spec.

    The follow-up is read with the same stages as :func:`parse_request`, and only what it
    mentions changes: budget phrases, atom limits, space groups, the number of candidates,
    property targets (a new target on a property replaces the old one), and chemistry. An
    excluded element leaves the chemical system, the required and allowed sets (and drops a
    formula containing it); a required element joins them; a new chemical system or formula
    replaces the old one.

    Args:
        spec: The current spec.
        text: The follow-up.

    Returns:
        The refined spec (``request`` records both texts) and one line per change.

    Raises:
        RequestError: The follow-up changes nothing this parser can read, or the result is
            inconsistent (e.g. excluding every element of the system).
        ClarificationNeeded: The follow-up is ambiguous (as in :func:`parse_request`).
    """
    scan = _Scan(text)
    changes: list[str] = []
    updates: dict[str, object] = {}
    budget = _parse_budget(scan, spec.budget)
    if budget != spec.budget:
        updates["budget"] = budget
        changes.append("budget: " + ", ".join(
            f"{k} {v}" for k, v in budget.model_dump().items() if v != getattr(spec.budget, k)
        ))  # fmt: skip
    mentions_atoms = any(scan.find(p) for p in (_ATOM_RANGE_RE, _ATOM_SINGLE_RE, _ATOM_REVERSE_RE))
    if mentions_atoms:
        low, high = _parse_atoms(scan)
        updates["min_atoms"], updates["max_atoms"] = low, high
        changes.append(f"atoms per cell: {low}-{high}")
    space_groups = _parse_space_groups(scan)
    if space_groups:
        updates["space_groups"] = space_groups
        changes.append(f"space groups: {', '.join(map(str, space_groups))}")
    count = _parse_num_candidates(scan)
    if count is not None:
        updates["num_candidates"] = count
        changes.append(f"candidates wanted: {count}")
    pieces = _parse_qualitative(scan) + _parse_quantities(scan)
    if pieces:
        by_name: dict[PropertyName, list[_Piece]] = {}
        for piece in pieces:
            by_name.setdefault(piece.name, []).append(piece)
        new = {name: _merge(name, group) for name, group in by_name.items()}
        kept = [t for t in spec.targets if t.name not in new]
        updates["targets"] = (*kept, *new.values())
        changes += [f"target: {t.describe()}" for t in new.values()]

    chem = _parse_chemistry(scan)
    system, formula = _system_of(chem)
    required = set(spec.required_elements)
    allowed = set(spec.allowed_elements) if spec.allowed_elements is not None else None
    excluded = set(spec.excluded_elements)
    current_system = set(spec.chemical_system) if spec.chemical_system else None
    current_formula = spec.formula
    if system is not None:
        current_system, current_formula = set(system), formula
        allowed, required = set(system), set(system) | set(chem.required)
        excluded -= set(system)
        changes.append(f"chemical system: {'-'.join(sorted(system))}")
    if chem.only is not None:
        allowed = set(chem.only) | chem.anion_elements
        changes.append(f"allowed elements: {', '.join(sorted(allowed))}")
    for symbol in sorted(chem.excluded):
        excluded.add(symbol)
        required.discard(symbol)
        if allowed is not None:
            allowed.discard(symbol)
        if current_system is not None and symbol in current_system:
            current_system.discard(symbol)
        if current_formula is not None and symbol in Composition(current_formula):
            changes.append(f"formula {current_formula} dropped (it contains {symbol})")
            current_formula = None
        changes.append(f"excluded element: {symbol}")
    for symbol in sorted(set(chem.required) - required):
        required.add(symbol)
        excluded.discard(symbol)
        if allowed is not None:
            allowed.add(symbol)
        if current_system is not None:
            current_system.add(symbol)
        changes.append(f"required element: {symbol}")
    if current_system is not None and len(current_system) < 2:
        left = "".join(sorted(current_system)) or "nothing"
        raise RequestError(
            f"that would leave the chemical system with {left}; name another element or a "
            "new system"
        )
    if not changes:
        raise RequestError(
            f"I could not read a change in {text!r}; try e.g. 'now without Mn', 'at most 12 "
            "atoms', 'band gap above 2 eV' or 'find 5 candidates'"
        )
    updates.update(
        request=f"{spec.request}; {text}" if spec.request else text,
        required_elements=tuple(required),
        allowed_elements=tuple(allowed) if allowed is not None else None,
        excluded_elements=tuple(excluded),
        chemical_system=tuple(current_system) if current_system is not None else None,
        formula=current_formula,
    )
    try:
        refined = DesignSpec.model_validate({**spec.model_dump(), **updates})
    except ValidationError as error:
        raise RequestError(f"the follow-up cannot be applied: {_readable(error)}") from None
    return refined, changes
