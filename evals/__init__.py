"""crystalforge.evals."""

from __future__ import annotations
