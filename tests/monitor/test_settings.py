"""Settings from an environment mapping: casts, errors naming the variable, cross-field checks."""

from __future__ import annotations

import pytest

from mlci.monitor.errors import MonitorError
from mlci.monitor.settings import Settings


def test_defaults_and_overrides_from_a_mapping() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({"MLCI_MONITOR_WINDOW": "2000", "MLCI_MONITOR_ALPHA": "0.01", "MLCI_MONITOR_CORRECTION": "holm",
                           "MLCI_MONITOR_WEBHOOK": "http://127.0.0.1:9/hook", "UNRELATED": "x"})  # fmt: skip
    assert (s.window, s.alpha, s.correction, s.webhook) == (2000, 0.01, "holm", "http://127.0.0.1:9/hook")
    assert s.drift().alpha == 0.01 and s.drift().correction == "holm"
    assert s.policy().bad_windows == s.bad_windows


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("WINDOW", "abc", "Not a positive int"),
        ("WINDOW", "0", "Not a positive int"),
        ("ALPHA", "1.5", "Not a probability in (0, 1)"),
        ("CORRECTION", "bonferroni", "Not one of bh, by, holm, none"),
        ("COOLDOWN_S", "-1", "Not a float ≥ 0 (seconds)"),
    ],
)
def test_bad_values_name_the_variable(key: str, value: str, expected: str) -> None:
    with pytest.raises(MonitorError) as info:
        Settings.from_env({f"MLCI_MONITOR_{key}": value})
    assert str(info.value) == f"Config 'MLCI_MONITOR_{key}' has value {value!r}. {expected}."
    assert info.value.exit_code == 2


def test_window_smaller_than_min_rows_is_refused() -> None:
    with pytest.raises(MonitorError, match="window is 50 rows but min_rows is 100"):
        Settings(window=50)
