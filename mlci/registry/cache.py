"""A local, digest-named cache of pulled artifacts: what `mlci serve <ref>` serves from."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mlci.errors import MlciError
from mlci.model.artifact import check_models, verify_artifact
from mlci.registry.artifacts import pull_artifact
from mlci.registry.store import Store

__all__ = ["default_cache_dir", "fetch"]


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$MLCI_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlci/artifacts``, else ``~/.cache/mlci/artifacts``."""
    env = os.environ if environ is None else environ
    if env.get("MLCI_CACHE_DIR"):
        return Path(env["MLCI_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "mlci" / "artifacts"


def fetch(store: Store, ref: str, cache_dir: Path) -> Path:
    """Pull ``ref`` (every blob verified) into ``cache_dir/sha256-<hex>`` and return that directory.

    A tag can move, so the pull lands in a scratch directory first and is named by the digest it
    turned out to hold. An artifact already in the cache is reused if it really holds that digest;
    anything else under its name (the cache is not ours alone) is moved aside and replaced.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".pull-", dir=cache_dir))
    try:
        manifest = pull_artifact(store, ref, scratch / "artifact")
        target = cache_dir / str(manifest["digest"]).replace(":", "-")
        if target.exists() and not _holds(target, str(manifest["digest"])):
            os.replace(target, scratch / "replaced")  # removed with the scratch directory
        if not target.exists():
            os.replace(scratch / "artifact", target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _holds(path: Path, digest: str) -> bool:
    """Whether the directory is a sound artifact with this digest."""
    try:
        held = verify_artifact(path)["digest"]
        check_models(path)
    except (MlciError, OSError):
        return False
    return bool(held == digest)
