"""Monitor settings: a frozen dataclass built from an environment mapping (``MLCI_MONITOR_*``).

The CLI builds one with :meth:`Settings.from_env` (``os.environ``) and overrides it with its options;
tests pass a dict. Casts fail with the variable, the value and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from mlci.envcast import non_negative_float, positive_int, probability
from mlci.monitor.alerts import webhook_problem
from mlci.monitor.drift import DriftSettings
from mlci.monitor.errors import MonitorError
from mlci.monitor.policy import PolicySettings

__all__ = ["PREFIX", "Settings"]

PREFIX = "MLCI_MONITOR_"


def _correction(text: str) -> str:
    if text not in ("bh", "by", "holm", "none"):
        raise ValueError
    return text


def _optional_str(text: str) -> str | None:
    return text or None


def _positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value <= 0:
        raise ValueError
    return value


_CASTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "window": (positive_int, "a positive int"),
    "min_rows": (positive_int, "a positive int"),
    "alpha": (probability, "a probability in (0, 1)"),
    "psi_threshold": (non_negative_float, "a float ≥ 0"),
    "missing_threshold": (non_negative_float, "a float ≥ 0"),
    "correction": (_correction, "one of bh, by, holm, none"),
    "outlier_min_increase": (non_negative_float, "a float ≥ 0"),
    "decay_margin": (non_negative_float, "a float ≥ 0"),
    "min_labelled": (positive_int, "a positive int"),
    "bad_windows": (positive_int, "a positive int"),
    "good_windows": (positive_int, "a positive int"),
    "cooldown_s": (non_negative_float, "a float ≥ 0 (seconds)"),
    "max_failures": (positive_int, "a positive int"),
    "attempts_per_cycle": (positive_int, "a positive int"),
    "backoff_s": (non_negative_float, "a float ≥ 0 (seconds)"),
    "reject_backoff_s": (non_negative_float, "a float ≥ 0 (seconds)"),
    "max_rejections": (positive_int, "a positive int"),
    "delivery_deadline_s": (_positive_float, "a float > 0 (seconds)"),
    "webhook": (_optional_str, "a URL"),
    "interval_s": (non_negative_float, "a float ≥ 0 (seconds)"),
    "error_backoff_s": (non_negative_float, "a float ≥ 0 (seconds)"),
}


@dataclass(frozen=True)
class Settings:
    """Everything a monitoring cycle needs besides its inputs; defaults suit the bundled example."""

    window: int = 5000
    min_rows: int = 100
    alpha: float = 0.05
    psi_threshold: float = 0.1
    missing_threshold: float = 0.05
    correction: str = "bh"
    outlier_min_increase: float = 0.10
    decay_margin: float = 0.05
    min_labelled: int = 50
    bad_windows: int = 2
    good_windows: int = 2
    cooldown_s: float = 3600.0
    max_failures: int = 5
    attempts_per_cycle: int = 3
    backoff_s: float = 0.5
    reject_backoff_s: float = 300.0  # a 3xx/4xx answer: the next try of that alert waits this long, doubling
    max_rejections: int = 24  # ... up to an hour; dead after this many rejections (about a day)
    delivery_deadline_s: float = 10.0  # one POST, connect to last byte
    webhook: str | None = None
    interval_s: float = 60.0
    error_backoff_s: float = 5.0  # after a failed cycle: the wait before the next, doubling while they fail

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``MLCI_MONITOR_<FIELD>`` variables (e.g. ``MLCI_MONITOR_WINDOW=2000``)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name.upper()
            if key not in environ:
                continue
            cast, expected = _CASTS[f.name]
            try:
                values[f.name] = cast(environ[key])
            except ValueError:
                raise MonitorError(f"Config '{key}' has value {environ[key]!r}. Not {expected}.") from None
        return cls(**values)

    def __post_init__(self) -> None:
        if self.window < self.min_rows:
            raise MonitorError(
                f"window is {self.window} rows but min_rows is {self.min_rows}; a window must hold at least min_rows rows."
            )
        self.drift()  # validates alpha and correction
        self.policy()
        if self.delivery_deadline_s <= 0:
            raise MonitorError(
                f"delivery_deadline_s is {self.delivery_deadline_s}; a delivery needs a deadline > 0 s."
            )
        if self.webhook is not None and (problem := webhook_problem(self.webhook)) is not None:
            raise MonitorError(
                f"Webhook URL {self.webhook!r} cannot be used: {problem}. Expected an http:// or https:// URL with "
                "a host, e.g. https://hooks.example.com/mlci (from --webhook or MLCI_MONITOR_WEBHOOK)."
            )

    def drift(self) -> DriftSettings:
        """The drift checks' part."""
        return DriftSettings(
            alpha=self.alpha,
            min_rows=self.min_rows,
            psi_threshold=self.psi_threshold,
            missing_threshold=self.missing_threshold,
            correction=self.correction,
        )

    def policy(self) -> PolicySettings:
        """The policy's part."""
        return PolicySettings(
            bad_windows=self.bad_windows, good_windows=self.good_windows, cooldown_s=self.cooldown_s
        )
