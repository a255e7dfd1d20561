"""Reusable contract tests for the plugin protocols."""
