"""The errors of the ranking services."""

from __future__ import annotations


class TrainingError(Exception):
    """Training cannot run (no data, bad window); the message says what to do."""


class TrainingBusy(TrainingError):
    """Another training holds the lock."""
