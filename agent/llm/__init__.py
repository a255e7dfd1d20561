"""LLM backends: an OpenAI-compatible client and a scripted stand-in for tests."""

from __future__ import annotations
