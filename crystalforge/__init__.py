"""crystalforge: an agentic assistant for the inverse design of inorganic crystals.

The design's parts install as sub-packages of this namespace: ``crystalforge.core`` (shared
domain types, settings, errors), ``crystalforge.agent`` (graph, CLI), ``crystalforge.tools``
(validators and LLM-facing tools), ``crystalforge.generators``, ``crystalforge.memory`` and
``crystalforge.evals``.

Example:
    >>> import crystalforge
    >>> outcome = crystalforge.design("a stable Li-Mn-O oxide")  # doctest: +SKIP
"""

from __future__ import annotations

import os

# numpy and scipy bundle an OpenBLAS whose threads fight torch's for the two cores of a laptop;
# CHGNet relaxes about twice as fast with one BLAS thread. This must happen before numpy loads,
# and every entry point (CLI, Python API, tests) imports this package first. A value the user
# set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crystalforge.agent.api import design as design

__version__ = "0.1.0"
__all__ = ["__version__", "design"]


def __getattr__(name: str) -> Any:
    # The agent (langgraph, pymatgen, ...) loads only when the Python API is used, so that
    # `import crystalforge.core` stays light.
    if name == "design":
        from crystalforge.agent.api import design

        return design
    raise AttributeError(f"module 'crystalforge' has no attribute {name!r}")
