"""Settings from an environment mapping: defaults, casts, errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlci.errors import ConfigError
from mlci.serving.settings import DEFAULT_LOG_DIR, Settings, default_log_dir


def test_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "MLCI_SERVE_PORT": "9000",
            "MLCI_SERVE_LOG_DIR": "/tmp/x",
            "MLCI_SERVE_MAX_BODY_BYTES": "10",
            "PATH": "/bin",
        }
    )
    assert (s.port, s.log_dir, s.max_body_bytes, s.host) == (9000, Path("/tmp/x"), 10, "127.0.0.1")
    assert Settings.from_env({"MLCI_SERVE_LOG_DIR": ""}).log_dir is None
    assert Settings.from_env({"MLCI_SERVE_BATCH_MAX_ROWS": "0"}).batch_max_rows == 0
    limits = Settings.from_env(
        {
            "MLCI_SERVE_HEADER_TIMEOUT_S": "2.5",
            "MLCI_SERVE_BODY_TIMEOUT_S": "7",
            "MLCI_SERVE_KEEP_ALIVE_TIMEOUT_S": "1",
            "MLCI_SERVE_MAX_CONNECTIONS": "16",
            "MLCI_SERVE_MAX_BUFFERED_BYTES": "9000000",
        }
    )
    assert (
        limits.header_timeout_s,
        limits.body_timeout_s,
        limits.keep_alive_timeout_s,
        limits.max_connections,
        limits.max_buffered_bytes,
    ) == (2.5, 7.0, 1.0, 16, 9_000_000)
    default = Settings()
    assert (default.header_timeout_s, default.body_timeout_s, default.keep_alive_timeout_s) == (10, 30, 5)
    assert (default.max_connections, default.max_buffered_bytes) == (1024, 128 << 20)


def test_default_log_dir_is_per_model_state_never_the_cwd() -> None:
    assert Settings().log_dir == DEFAULT_LOG_DIR
    env = {"XDG_STATE_HOME": "/st", "HOME": "/h"}
    assert default_log_dir("bc", env) == Path("/st/mlci/bc/predictions")
    for state in ("", "relative/dir"):  # empty or relative: ignored (XDG base directory spec)
        assert default_log_dir("bc", {"XDG_STATE_HOME": state, "HOME": "/h"}) == Path(
            "/h/.local/state/mlci/bc/predictions"
        )
    assert Settings().for_model("bc", env).log_dir == Path("/st/mlci/bc/predictions")
    for given in (Path("/x"), None):  # an explicit directory, or no log: kept as they are
        assert Settings(log_dir=given).for_model("bc", env).log_dir == given
    with pytest.raises(ConfigError, match="cannot name a directory; pass --log-dir"):
        default_log_dir("../up", env)


def test_body_budget_must_hold_the_largest_body() -> None:
    Settings(max_body_bytes=10, max_buffered_bytes=10).check()
    with pytest.raises(ConfigError, match=r"--max-buffered-bytes \(9\) is below --max-body-bytes \(10\)"):
        Settings(max_body_bytes=10, max_buffered_bytes=9).check()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"MLCI_SERVE_PORT": "abc"},
            "Config 'MLCI_SERVE_PORT' has value 'abc'. Not valid: expected a port number",
        ),
        ({"MLCI_SERVE_PORT": "70000"}, "'70000'"),
        ({"MLCI_SERVE_MAX_BODY_BYTES": "0"}, "a positive int"),
        ({"MLCI_SERVE_LOG_LEVEL": "loud"}, "one of critical"),
        ({"MLCI_SERVE_PROT": "1"}, "Unknown setting 'MLCI_SERVE_PROT'"),
        ({"MLCI_SERVE_BATCH_MAX_ROWS": "-1"}, "an int >= 0"),
        ({"MLCI_SERVE_LOG_MAX_PENDING_BYTES": "0"}, "expected a positive int"),
        ({"MLCI_SERVE_HEADER_TIMEOUT_S": "0"}, "a positive number of seconds"),
        ({"MLCI_SERVE_BODY_TIMEOUT_S": "inf"}, "a positive number of seconds"),
        ({"MLCI_SERVE_KEEP_ALIVE_TIMEOUT_S": "nan"}, "a positive number of seconds"),
        ({"MLCI_SERVE_MAX_CONNECTIONS": "0"}, "expected a positive int"),
        ({"MLCI_SERVE_MAX_BUFFERED_BYTES": "-5"}, "expected a positive int"),
    ],
)
def test_bad_values_name_key_and_value(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        Settings.from_env(env)
