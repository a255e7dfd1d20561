"""Tools: the validators, and the LLM-facing tools built on generators, validators and memory."""

from __future__ import annotations
