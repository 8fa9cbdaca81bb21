"""One error base for mlci; each error carries how a shell should report it."""

from __future__ import annotations

import errno

__all__ = [
    "CheckFailed",
    "ConfigError",
    "DataError",
    "ExportError",
    "MlciError",
    "RegistryError",
    "StorageError",
    "storage_error",
]


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


class StorageError(MlciError):
    """The machine refused a write: the disk is full, the filesystem read-only, or permission denied."""

    exit_code = 1


_STORAGE_FIXES = {
    errno.ENOSPC: "Free space on that filesystem (`df -h`), or point the workspace elsewhere with "
    "--workspace or [workspace] path, then re-run.",
    errno.EDQUOT: "Your disk quota there is used up: free some, or point the workspace elsewhere with "
    "--workspace or [workspace] path, then re-run.",
    errno.EROFS: "That filesystem is read-only: pass --workspace DIR (or set [workspace] path) on a "
    "writable one.",
    errno.EACCES: "Run as a user who may write there, or pass --workspace DIR (or set [workspace] path) "
    "to a directory you own.",
    errno.EPERM: "Run as a user who may write there, or pass --workspace DIR (or set [workspace] path) "
    "to a directory you own.",
}


def storage_error(exc: OSError) -> StorageError | None:
    """The named error for a write the machine refused, or None for any other OSError.

    mlci writes every stored file under a temporary name and renames it into place, so what was stored
    before the failure is intact; the message says so.
    """
    fix = _STORAGE_FIXES.get(exc.errno or 0)
    if fix is None:
        return None
    where = f" '{exc.filename}'" if exc.filename else ""
    return StorageError(
        f"Cannot write{where}: {exc.strerror or exc}. {fix} Nothing stored before was changed."
    )
