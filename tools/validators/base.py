"""The Validator protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystalforge.core.candidate import Candidate, Verdict


@runtime_checkable
class Validator(Protocol):
    """A batched check.

    ``validate`` returns exactly one :class:`Verdict` per candidate, in the same order. A failure
    of one structure is a verdict with ``passed=False`` and a reason, never an exception;
    exceptions mean the validator itself cannot run (misconfiguration, missing extra).
    """

    @property
    def name(self) -> str:
        """Stage name used in verdicts, e.g. ``chgnet_relax``."""
        ...

    def validate(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """Judge each candidate."""
        ...
