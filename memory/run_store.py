"""The candidate store of one run: content-addressed JSON files, written atomically.

Graph state carries candidate ids; the structures, provenance and validation results live here,
one file per candidate, so that a run killed at any moment keeps every candidate whose result
was written, and a resumed run skips them.

Layout inside the run directory::

    candidates/<id>.json   generated structure + provenance
    results/<id>.json      final (relaxed) structure, properties and every verdict
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymatgen.core import Structure

from crystalforge.core.candidate import Candidate, Verdict
from crystalforge.core.errors import RunError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, default=_json_default)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in metrics; everything else is a bug worth seeing.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class StoredResult:
    """A validated candidate as read back from the store."""

    candidate: Candidate
    """The candidate with its final (relaxed, if it got that far) structure and properties."""
    verdicts: tuple[Verdict, ...]
    passed: bool
    """Whether every validation stage passed."""
    failed_stage: str | None

    @property
    def reason(self) -> str | None:
        """The reason of the first failed verdict, if any."""
        return next((v.reason for v in self.verdicts if not v.passed), None)


class RunStore:
    """Candidates and results of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._candidates = self.run_dir / "candidates"
        self._results = self.run_dir / "results"

    # -- candidates -------------------------------------------------------------------------
    def save_candidate(self, candidate: Candidate) -> None:
        """Store a generated candidate (idempotent: an id already stored is left as it is)."""
        path = self._candidates / f"{candidate.id}.json"
        if path.exists():
            return
        write_json_atomic(path, _candidate_to_json(candidate))

    def load_candidate(self, candidate_id: str) -> Candidate:
        """The generated candidate with this id."""
        path = self._candidates / f"{candidate_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunError(
                f"candidate {candidate_id!r} is not in the store {self.run_dir}"
            ) from None
        return _candidate_from_json(data)

    # -- results ----------------------------------------------------------------------------
    def has_result(self, candidate_id: str) -> bool:
        """Whether a validation result for this id is stored."""
        return (self._results / f"{candidate_id}.json").exists()

    def save_result(
        self,
        candidate: Candidate,
        verdicts: list[Verdict] | tuple[Verdict, ...],
        *,
        passed: bool,
        failed_stage: str | None,
    ) -> None:
        """Store the outcome of validating one candidate."""
        write_json_atomic(
            self._results / f"{candidate.id}.json",
            {
                "candidate": _candidate_to_json(candidate),
                "verdicts": [v.to_json() for v in verdicts],
                "passed": passed,
                "failed_stage": failed_stage,
            },
        )

    def load_result(self, candidate_id: str) -> StoredResult:
        """The stored validation result of one candidate."""
        path = self._results / f"{candidate_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunError(f"no result for {candidate_id!r} in {self.run_dir}") from None
        return StoredResult(
            candidate=_candidate_from_json(data["candidate"]),
            verdicts=tuple(Verdict.from_json(v) for v in data["verdicts"]),
            passed=bool(data["passed"]),
            failed_stage=data.get("failed_stage"),
        )

    def results(self, ids: list[str] | None = None) -> Iterator[StoredResult]:
        """Stored results, for ``ids`` (those that have one) or all, in id order."""
        if ids is None:
            ids = sorted(p.stem for p in self._results.glob("c-*.json"))
        for candidate_id in ids:
            if self.has_result(candidate_id):
                yield self.load_result(candidate_id)


def _candidate_to_json(candidate: Candidate) -> dict[str, Any]:
    return {
        "id": candidate.id,
        "structure": candidate.structure.as_dict(),
        **candidate.provenance(),
        "properties": dict(candidate.properties),
    }


def _candidate_from_json(data: Mapping[str, Any]) -> Candidate:
    return Candidate(
        id=data["id"],
        structure=Structure.from_dict(data["structure"]),
        generator=data["generator"],
        seed=data.get("seed"),
        parameters=dict(data.get("parameters") or {}),
        parent_id=data.get("parent_id"),
        round=int(data.get("round") or 0),
        properties=dict(data.get("properties") or {}),
    )
