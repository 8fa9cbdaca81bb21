"""Casts for settings read from environment variables: each raises ValueError on a bad value.

Shared by ``serving.settings`` and ``monitor.settings``, whose ``from_env`` turn the ValueError into a
message naming the variable, its value and what was expected.
"""

from __future__ import annotations

__all__ = ["non_negative_float", "non_negative_int", "positive_float", "positive_int", "probability"]


def positive_int(text: str) -> int:
    """An int > 0."""
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    """A float > 0 (NaN refused)."""
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def non_negative_float(text: str) -> float:
    """A float >= 0 (NaN refused)."""
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def probability(text: str) -> float:
    """A float strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise ValueError(text)
    return value
