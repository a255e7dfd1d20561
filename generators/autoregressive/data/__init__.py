"""The shipped checkpoint of the autoregressive generator and its metrics (package data)."""

from __future__ import annotations
