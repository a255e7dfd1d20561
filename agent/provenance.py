"""The provenance gate: every number in the final answer must come from this run.

:func:`collect_numbers` gathers every number in the run's state and tool results (energies,
counts, budgets, ids excluded). :func:`gate` finds the numbers in an answer and checks each
against that set, tolerant of rounding (a number written with ``d`` decimals matches a source
within half a unit of its last digit), of sign (``-0.12`` and "0.12 below"), and of the unit
written after it (meV for an eV value, per cent for a fraction, minutes or hours for seconds).
A number that matches nothing is flagged in place (or removed) and listed, so the report says
what was not backed.

Identifiers are not numbers: candidate ids (``c-0a1b...``), material ids (``mp-1234``), formulae
(``LiMn2O4``) and space-group symbols (``Fm-3m``, ``P6_3/mmc``) are masked before the scan.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

GateMode = Literal["flag", "remove"]

UNIT_FACTORS: tuple[tuple[re.Pattern[str], tuple[float, ...]], ...] = (
    (re.compile(r"\s*meV"), (1000.0, 1.0)),
    (re.compile(r"\s*(?:%|per ?cent)"), (100.0, 1.0)),
    (re.compile(r"\s*(?:min\b|minutes?)"), (1 / 60, 1.0)),
    (re.compile(r"\s*(?:h\b|hours?)"), (1 / 3600, 1.0)),
)
"""The unit written after a number -> factors (source value x factor = written value). A
number with no such unit must match a source as is: a loose table would back invented values
by accident."""

_IDENTIFIER = re.compile(
    r"(?<![\w])(?:[A-Za-z][A-Za-z0-9_]*(?:[-/][A-Za-z0-9_]+)*\d[A-Za-z0-9_/-]*"
    r"|[A-Za-z]+-\d[\w-]*)"
)
"""Words that contain digits but are names: ids, formulae, space-group symbols."""

_NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]*\d)")


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """What the gate did to an answer."""

    text: str
    """The answer with unbacked numbers flagged or removed."""
    checked: int
    """Numbers found in the answer."""
    unbacked: list[str] = field(default_factory=list)
    """The numbers (as written) that no tool result or state value supports."""

    @property
    def passed(self) -> bool:
        """True when every number was backed."""
        return not self.unbacked


def collect_numbers(*values: Any) -> list[float]:
    """Every finite number inside JSON-like values (dict keys too, and numbers inside strings)."""
    found: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            if math.isfinite(value):
                found.append(float(value))
        elif isinstance(value, str):
            found.extend(number for number, _ in numbers_in(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list | tuple | set):
            for v in value:
                walk(v)

    for value in values:
        walk(value)
    return found


def _masked(text: str) -> str:
    return _IDENTIFIER.sub(lambda m: " " * len(m.group(0)), text)


def numbers_in(text: str) -> list[tuple[float, re.Match[str]]]:
    """The numbers written in ``text`` (identifiers masked), with their matches."""
    out: list[tuple[float, re.Match[str]]] = []
    for match in _NUMBER.finditer(_masked(text)):
        raw = match.group(0).replace("\u2212", "-")
        try:
            out.append((float(raw), match))
        except ValueError:
            continue
    return out


def _decimals(written: str) -> int:
    mantissa = written.lower().split("e")[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def unit_factors(after: str) -> tuple[float, ...]:
    """The conversion factors allowed by the text right after a number."""
    for pattern, factors in UNIT_FACTORS:
        if pattern.match(after):
            return factors
    return (1.0,)


def is_backed(written: str, sources: list[float], *, after: str = "") -> bool:
    """True when the number as written matches a source within rounding, sign and its unit.

    Args:
        written: The number as it appears in the text.
        sources: Numbers from the run.
        after: The text that follows it (its unit: meV, %, min, h convert; else as is).
    """
    value = abs(float(written.replace("\u2212", "-")))
    tolerance = 0.5 * 10 ** (-_decimals(written)) + 1e-9
    factors = unit_factors(after)
    for source in sources:
        magnitude = abs(source)
        for factor in factors:
            if abs(magnitude * factor - value) <= tolerance:
                return True
    return False


def gate(text: str, sources: list[float], *, mode: GateMode = "flag") -> GateResult:
    """Check every number of ``text`` against ``sources``.

    Args:
        text: The final answer.
        sources: Numbers from the run (see :func:`collect_numbers`).
        mode: ``flag`` appends ``[unverified]`` after an unbacked number; ``remove`` replaces it
            with ``[number removed: not from this run]``.
    """
    pieces: list[str] = []
    unbacked: list[str] = []
    last = 0
    found = numbers_in(text)
    for _, match in found:
        written = text[match.start() : match.end()]
        if is_backed(written, sources, after=text[match.end() : match.end() + 12]):
            continue
        unbacked.append(written)
        pieces.append(text[last : match.start()])
        if mode == "flag":
            pieces.append(f"{written} [unverified]")
        else:
            pieces.append("[number removed: not from this run]")
        last = match.end()
    pieces.append(text[last:])
    return GateResult(text="".join(pieces), checked=len(found), unbacked=unbacked)
