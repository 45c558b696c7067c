"""Helpers for tests and recipe checks: small synthetic checkpoints and fixtures."""
