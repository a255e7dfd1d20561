"""crystalforge.memory."""

from __future__ import annotations
