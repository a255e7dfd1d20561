"""Shared domain types, settings and errors that every part of crystalforge may import.

Nothing here imports the agent, the tools, the generators or memory: this is the bottom layer.
"""

from __future__ import annotations
