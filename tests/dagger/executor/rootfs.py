"""Root filesystems standing in for the images the module starts from, built from Debian's packages.

There is no image registry to pull ``python:3.11-slim-bookworm`` from here, so ``from_(…)`` resolves to a
root filesystem that ``mmdebstrap`` builds from Debian bookworm's own packages: minbase + python3, venv and
pip, with a virtual environment at ``/usr/local`` so that ``python``/``pip`` are on the image's PATH and
``pip install`` writes to ``/usr/local/lib/python3.11/site-packages`` as in the official image. It is a
stand-in, not the image: Debian's CPython 3.11.2 and pip 23.0 instead of the image's own build of the
latest 3.11 and its pip. Each root filesystem is built once and cached (``MLCI_EXECUTOR_CACHE``, default
``~/.cache/mlci-tests/executor``), keyed by its recipe, so only the first run pays the ~20 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CACHE", "IMAGES", "Recipe", "build", "cache_root"]


def cache_root() -> Path:
    """Where root filesystems, cache volumes and pulled layers persist between test runs."""
    return Path(os.environ.get("MLCI_EXECUTOR_CACHE", Path.home() / ".cache" / "mlci-tests" / "executor"))


CACHE = cache_root


@dataclass(frozen=True)
class Recipe:
    """How to build one stand-in image: Debian packages, shell run in the new root, and its image config."""

    name: str
    packages: tuple[str, ...]
    customize: str = ""  # shell run by mmdebstrap's --customize-hook with "$1" the new root
    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    stands_in_for: tuple[str, ...] = field(default=())

    def key(self) -> str:
        spec = json.dumps([self.name, self.packages, self.customize, "bookworm", "minbase", 2])
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

# The official python:3.11-slim-bookworm: CPython under /usr/local, pip on PATH, ca-certificates, netbase,
# tzdata, and Debian's docker-clean apt hook (the image's apt deletes downloaded .debs after each install).
PYTHON = Recipe(
    name="python-3.11-slim-bookworm",
    packages=("python3", "python3-venv", "python3-pip", "ca-certificates", "netbase", "tzdata"),
    customize=(
        'chroot "$1" python3 -m venv /usr/local && '
        'chroot "$1" ln -sf python3 /usr/local/bin/python && '
        "printf '%s\\n' 'DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };' "
        "'APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };' "
        '\'Dir::Cache::pkgcache "";\' \'Dir::Cache::srcpkgcache "";\' > "$1/etc/apt/apt.conf.d/docker-clean"'
    ),
    env=(f"PATH={PATH}", "LANG=C.UTF-8", "PYTHON_VERSION=3.11"),
    cmd=("python3",),
    stands_in_for=("python:3.11-slim-bookworm", "docker.io/library/python:3.11-slim-bookworm"),
)

# registry:2 (the CNCF distribution registry) as Debian packages it: docker-registry, with the image's own
# config.yml (no auth, storage under /var/lib/registry, :5000) in place of Debian's htpasswd one.
REGISTRY_CONFIG = """version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""
REGISTRY = Recipe(
    name="registry-2",
    packages=("docker-registry", "ca-certificates"),
    customize=f"printf '%s' '{REGISTRY_CONFIG}' > \"$1/etc/docker/registry/config.yml\" && mkdir -p \"$1/var/lib/registry\"",
    env=(f"PATH={PATH}",),
    entrypoint=("/usr/bin/docker-registry", "serve"),
    cmd=("/etc/docker/registry/config.yml",),
    exposed_ports=("5000/tcp",),
    stands_in_for=("registry:2", "docker.io/library/registry:2"),
)

IMAGES: dict[str, Recipe] = {name: r for r in (PYTHON, REGISTRY) for name in r.stands_in_for}


def build(recipe: Recipe) -> Path:
    """The recipe's root filesystem directory, built with mmdebstrap on first use (under a lock)."""
    root = cache_root() / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{recipe.name}-{recipe.key()}"
    if target.with_name(target.name + ".complete").exists():
        return target
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.with_name(target.name + ".complete").exists():
            return target
        if shutil.which("mmdebstrap") is None:
            raise RuntimeError(
                "mmdebstrap is not installed: sudo apt-get install -y mmdebstrap (make system-deps does it)"
            )
        tmp_tar = root / f".{target.name}.tar"
        argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(recipe.packages)}"]
        if recipe.customize:
            argv.append(f"--customize-hook={recipe.customize}")
        # No mirror given: mmdebstrap takes this machine's apt sources, so its package-index settings apply.
        argv += ["bookworm", str(tmp_tar)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"mmdebstrap failed (exit {done.returncode}) building {recipe.name}:\n{done.stderr[-3000:]}"
            )
        staging = root / f".{target.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with tarfile.open(tmp_tar) as tar:
            tar.extractall(
                staging, filter="fully_trusted"
            )  # our own mmdebstrap output: devices, owners as built
        tmp_tar.unlink()
        # An image's /dev is empty (the runtime mounts one); mmdebstrap leaves device nodes there.
        for node in (staging / "dev").iterdir():
            shutil.rmtree(node) if node.is_dir() and not node.is_symlink() else node.unlink()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        target.with_name(target.name + ".complete").write_text(
            json.dumps({"recipe": recipe.name, "packages": recipe.packages})
        )
        return target
