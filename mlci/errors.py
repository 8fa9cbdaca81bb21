"""One error base for mlci; each error carries how a shell should report it."""

from __future__ import annotations

__all__ = ["CheckFailed", "ConfigError", "DataError", "ExportError", "MlciError", "RegistryError"]


class MlciError(Exception):
    """Base error. ``exit_code`` follows the CLI contract: 1 = a check failed, 2 = bad usage/config/input."""

    exit_code = 2


class ConfigError(MlciError):
    """`mlci.toml` is missing, malformed, or names something that does not exist."""


class DataError(MlciError):
    """The dataset does not match what the config or the schema expects."""


class ExportError(MlciError):
    """The estimator cannot be converted to ONNX."""


class CheckFailed(MlciError):
    """A quality check ran and failed (parity, gate, smoke)."""

    exit_code = 1


class RegistryError(MlciError):
    """The registry is unreachable, refused a request, or holds content that fails verification."""

    exit_code = 1
