"""crystalforge.agent.nodes."""

from __future__ import annotations
