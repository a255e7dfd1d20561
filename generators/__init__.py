"""Structure generators behind one batched Generator protocol (see ``base.py``).

Resolve them by name with :func:`crystalforge.generators.registry.load_generator`.
"""

from __future__ import annotations
