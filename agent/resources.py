"""Heavy objects shared by the nodes of a process: the reference hull and the run store.

They are loaded once per process and looked up from the per-run context, so graph state stays
small and JSON-ready.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from crystalforge.memory.reference_data import ElementalOnlyReference, load_reference
from crystalforge.memory.run_store import RunStore

if TYPE_CHECKING:
    from crystalforge.agent.context import Context
    from crystalforge.core.settings import Device
    from crystalforge.memory.reference_data import ReferenceHull


@cache
def _elemental_only(device: Device) -> ElementalOnlyReference:
    return ElementalOnlyReference(device=device)


def reference_for(context: Context) -> ReferenceHull:
    """The reference hull of a run.

    Its data folder's; else the Materials Project (``MP_API_KEY`` set, ``mp`` extra
    installed); else elemental references only.
    """
    if context.data_dir is None:
        from crystalforge.memory.mp import mp_reference_or_none

        return mp_reference_or_none() or _elemental_only(context.device)
    return load_reference(context.data_dir)


def store_for(context: Context) -> RunStore:
    """The candidate store of a run."""
    return RunStore(context.run_dir)
