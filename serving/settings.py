"""Server configuration: a frozen dataclass built from an environment mapping (``MLCI_SERVE_*``).

Tests pass a plain dict; the CLI passes ``os.environ`` and then overrides with its options.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

from mlci.envcast import non_negative_int, positive_float, positive_int
from mlci.errors import ConfigError

__all__ = ["DEFAULT_LOG_DIR", "PREFIX", "Settings", "default_log_dir"]

PREFIX = "MLCI_SERVE_"
DEFAULT_LOG_DIR: Final = "default"  # log_dir's default: default_log_dir() once the model's name is known
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError
    return value


def _log_level(text: str) -> str:
    if text.lower() not in _LOG_LEVELS:
        raise ValueError
    return text.lower()


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _seconds(text: str) -> float:
    value = positive_float(text)
    if value == float("inf"):
        raise ValueError(text)
    return value


def default_log_dir(model: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/mlci/<model>/predictions``, else ``~/.local/state/mlci/<model>/predictions``.

    Not the current directory: started from a model repository, the server left an untracked
    ``predictions/`` in it. The XDG *state* directory, because the log is data the monitor reads later
    (not a cache to throw away). One directory per model, so that ``mlci monitor``'s default state
    directory, ``<log-dir>/../monitor-state``, lands beside it and not beside other models' logs.
    """
    env = os.environ if environ is None else environ
    if not _SAFE_NAME.fullmatch(model):
        raise ConfigError(f"The model name {model!r} cannot name a directory; pass --log-dir.")
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # unset, empty or relative: ignored, as the XDG spec says
        try:
            home = env.get("HOME") or str(Path.home())
        except RuntimeError:  # no HOME and no passwd entry
            raise ConfigError("No home directory for the default prediction log; pass --log-dir.") from None
        state = os.path.join(home, ".local", "state")
    return Path(state) / "mlci" / model / "predictions"


_CASTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "artifact": (_optional_path, "a path"),
    "host": (str, "a host name"),
    "port": (_port, "a port number 0-65535"),
    "log_dir": (_optional_path, "a directory path (empty to disable the prediction log)"),
    "log_max_bytes": (positive_int, "a positive int (bytes)"),
    "log_keep": (non_negative_int, "an int >= 0 (0 keeps every rotated file)"),
    "log_flush_interval_s": (positive_float, "a positive number of seconds"),
    "log_max_pending": (positive_int, "a positive int (records)"),
    "log_max_pending_bytes": (positive_int, "a positive int (bytes)"),
    "max_body_bytes": (positive_int, "a positive int (bytes)"),
    "threads": (positive_int, "a positive int"),
    "batch_max_rows": (non_negative_int, "an int >= 0 (0 or 1: no batching across requests)"),
    "graceful_timeout_s": (positive_float, "a positive number of seconds"),
    "log_level": (_log_level, f"one of {', '.join(_LOG_LEVELS)}"),
    "header_timeout_s": (_seconds, "a positive number of seconds"),
    "body_timeout_s": (_seconds, "a positive number of seconds"),
    "keep_alive_timeout_s": (_seconds, "a positive number of seconds"),
    "max_connections": (positive_int, "a positive int (connections)"),
    "max_buffered_bytes": (positive_int, "a positive int (bytes)"),
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs; every field can come from ``MLCI_SERVE_<FIELD>``."""

    artifact: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    log_dir: Path | Literal["default"] | None = DEFAULT_LOG_DIR  # None: no prediction log
    log_max_bytes: int = 64 * 1024 * 1024
    log_keep: int = 0
    log_flush_interval_s: float = 0.2
    log_max_pending: int = 200_000
    log_max_pending_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    threads: int = 1
    batch_max_rows: int = 256
    graceful_timeout_s: float = 30.0
    log_level: str = "warning"
    # Slow and greedy clients (see serving/http.py): each phase of a request is bounded in time, open
    # connections in number, and the request bodies being received in bytes, across all connections.
    header_timeout_s: float = 10.0  # connection open / first byte of a request → its headers complete
    body_timeout_s: float = 30.0  # headers complete → the whole body received
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1024  # connections beyond it get a JSON 503 and are closed
    max_buffered_bytes: int = 128 * 1024 * 1024  # request bodies being received, all connections together

    def for_model(self, model: str, environ: Mapping[str, str] | None = None) -> Settings:
        """These settings with the default log directory resolved for ``model`` (see :func:`default_log_dir`)."""
        if self.log_dir != DEFAULT_LOG_DIR:
            return self
        return replace(self, log_dir=default_log_dir(model, environ))

    def check(self) -> None:
        """Refuse combinations no single field's cast can see."""
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigError(
                f"--max-buffered-bytes ({self.max_buffered_bytes}) is below --max-body-bytes "
                f"({self.max_body_bytes}): a body of the largest size allowed could never be received. "
                "Raise --max-buffered-bytes or lower --max-body-bytes."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = PREFIX) -> Settings:
        """Read ``<prefix><FIELD>`` keys; a bad value names the key, the value and what is allowed."""
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, raw in environ.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in known:
                allowed = ", ".join(prefix + n.upper() for n in sorted(known))
                raise ConfigError(f"Unknown setting {key!r}. Known settings: {allowed}.")
            cast, expected = _CASTS[name]
            try:
                values[name] = cast(raw.strip())
            except ValueError:
                raise ConfigError(
                    f"Config {key!r} has value {raw!r}. Not valid: expected {expected}."
                ) from None
        return cls(**values)
