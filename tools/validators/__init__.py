"""Validators: batched checks that turn candidates into verdicts, cheapest first."""

from __future__ import annotations
