"""The shape every evaluation suite shares: options in, a table (and figures) out.

A suite is a module with a ``run(options: SuiteOptions) -> SuiteResult`` function, registered by
name in :data:`crystalforge.evals.registry.SUITES`. ``crystalforge eval <suite>`` prints the
table and, with ``--json PATH``, writes the result with the commit, package versions, seeds and
the reference hull, so that every number in the docs can be traced to a command.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crystalforge.core.settings import Device

Scalar = float | int | str | bool | None


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    """What every suite accepts."""

    quick: bool = False
    """A small version that fits in CI."""
    seed: int = 0
    device: Device = "auto"
    data_dir: Path | None = None
    """Reference data folder (resolved by the CLI)."""
    out_dir: Path | None = None
    """Where figures go (the folder of ``--json``, else the current folder)."""
    limit: int | None = None
    """Cap on the number of items (structures, rows) a suite processes."""
    families: tuple[str, ...] = ()
    """Generator registry names to compare (empty: the suite's default)."""
    per_family: int | None = None
    """Structures requested per generator family and chemical system (``None``: the default)."""
    systems: int | None = None
    """Number of chemical systems drawn (``None``: the suite's default)."""
    workers: int = 1
    """Processes that share the work (suites that support it; 1: in this process)."""
    unconditional: bool = False
    """eval generators: seeded batches without a chemical system instead of held-out systems."""
    tuning: bool = False
    """Tuning rows instead of held-out ones: eval generators draws systems from the training
    rows (none held out), eval csp rows from the diffusion model's validation split."""
    partial: bool = False
    """eval generators: tabulate only the finished cells of the log (systems with every family
    done), computing nothing."""


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    """A suite's answer: one table, notes, figures and metadata."""

    suite: str
    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, Scalar]]
    notes: list[str] = field(default_factory=list)
    """Plain sentences printed under the table (anchors, caveats)."""
    figures: list[str] = field(default_factory=list)
    """Paths of pictures written."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Seeds, reference hull, data sizes: anything needed to reproduce the numbers."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form with provenance (commit, versions, time)."""
        return {
            "suite": self.suite,
            "title": self.title,
            "columns": list(self.columns),
            "rows": self.rows,
            "notes": self.notes,
            "figures": self.figures,
            "metadata": self.metadata,
            "provenance": provenance(),
        }

    def write_json(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, default=str))


def provenance() -> dict[str, Any]:
    """Commit, package versions and time of a measurement."""
    versions: dict[str, str] = {}
    for package in ("crystalforge", "chgnet", "torch", "pymatgen", "pyxtal", "smact", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "commit": _git_commit(),
        "versions": versions,
        "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def split_families(text: str) -> tuple[str, ...]:
    """Comma-separated family labels; commas inside ``[...]`` do not split."""
    out: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        depth += (char == "[") - (char == "]")
        if char == "," and depth <= 0:
            if part := text[start:i].strip():
                out.append(part)
            start = i + 1
    return tuple(out)
