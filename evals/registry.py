"""Evaluation suites by name, loaded lazily (each may need heavy extras)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, cast

from crystalforge.core.errors import UnknownPluginError

if TYPE_CHECKING:
    from crystalforge.evals.base import SuiteOptions, SuiteResult


class SuiteRunner(Protocol):
    """A suite's entry point."""

    def __call__(self, options: SuiteOptions) -> SuiteResult:
        """Run the suite."""
        ...


SUITES: dict[str, tuple[str, str]] = {
    "csp": (
        "crystalforge.evals.csp",
        "crystal structure prediction on held-out MP-20 rows: match rate, RMSE (diffusion, pyxtal)",
    ),
    "generators": (
        "crystalforge.evals.generators",
        "validity, SMACT, uniqueness, novelty, E_hull <= 0.1 and S.U.N. per generator family",
    ),
    "hull-accuracy": (
        "crystalforge.evals.hull_accuracy",
        "CHGNet energy above hull vs held-out DFT: MAE and stable/unstable precision, recall, F1",
    ),
    "memory": (
        "crystalforge.evals.memory",
        "memory store: ingest time, query latency p50/p95 at 1x and 10x, novelty-check time",
    ),
    "properties": (
        "crystalforge.evals.properties",
        "band-gap MAE on held-out rows (ours vs baselines), CHGNet EOS bulk modulus vs experiment",
    ),
    "throughput": (
        "crystalforge.evals.throughput",
        "batched vs one-by-one CHGNet relaxation: structures/s and energy agreement",
    ),
}
"""Suite name -> (module, one-line description). Every module exposes ``run(options)``."""


def available_suites() -> dict[str, str]:
    """Suite names and descriptions."""
    return {name: description for name, (_, description) in sorted(SUITES.items())}


def load_suite(name: str) -> SuiteRunner:
    """The ``run`` function of suite ``name``.

    Raises:
        UnknownPluginError: no suite has this name (the message lists the valid ones).
    """
    try:
        module_name, _ = SUITES[name]
    except KeyError:
        raise UnknownPluginError(
            f"unknown eval suite {name!r}; choose from {sorted(SUITES)}"
        ) from None
    return cast("SuiteRunner", importlib.import_module(module_name).run)
