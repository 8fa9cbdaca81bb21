"""One ``withExec``: an overlayfs over the container's layers, bwrap on top, the process's output and exit code.

What the engine does for an exec (dagger/dagger v0.21.8 ``core/container_exec.go`` WithExec, and
``engine/engineutil/executor_spec.go`` for the mounts): the root filesystem is the container's layers with a
new writable layer on top; every mount is bound at its path (directories and files as copies whose changes
become the mount's new contents in the resulting container, caches shared and kept, secrets from memory,
tmpfs); the working directory is created when missing; the process gets exactly the container's
environment; secrets are scrubbed from its output (``engine/engineutil/secret_scrub.go``: "***").

Here: ``unshare --mount`` gives a private mount namespace, ``mount -t overlay`` stacks the layers (relative
lowerdir names, from the layer store directory, so dozens of layers fit in the mount options), and ``bwrap``
runs the command with that root, its own PID/IPC/UTS namespaces, /proc and /dev. The network namespace is
the host's for build steps (pip reaches the package index) or a service's own one (``network.py``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Bind", "Result", "run"]

# The machine's resolver and CA bundle, bound read-only over the root filesystem's own copies (both exist in
# it, so no mount point is left in the new layer), and its package-index settings as environment defaults
# for every process (the container's own variables win): a runner gives its engine the same through its
# network and --index-url. Local file indexes of this machine are not passed (they would need binds).
HOST_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")


_PIP_KEYS = {
    "index-url": "PIP_INDEX_URL",
    "cert": "PIP_CERT",
    "timeout": "PIP_DEFAULT_TIMEOUT",
    "default-timeout": "PIP_DEFAULT_TIMEOUT",
}


def host_env() -> dict[str, str]:
    """PIP_INDEX_URL / PIP_CERT / PIP_DEFAULT_TIMEOUT as this machine's pip is configured (pip.conf, then env)."""
    env: dict[str, str] = {}
    for conf in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")):
        if os.path.exists(conf):
            for line in Path(conf).read_text().splitlines():
                key, sep, value = (part.strip() for part in line.partition("="))
                if sep and key in _PIP_KEYS and not value.startswith("file:"):
                    env[_PIP_KEYS[key]] = value
    env.update({k: os.environ[k] for k in set(_PIP_KEYS.values()) if os.environ.get(k)})
    return env


def _host_settings() -> list[str]:
    args: list[str] = []
    for path in HOST_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


_DRIVER = r"""
set -e
layers="$1"; lower="$2"; upper="$3"; work="$4"; merged="$5"; workdir="$6"; shift 6
cd "$layers"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work,redirect_dir=off,metacopy=off,index=off" "$merged"
cd /
mkdir -p "$merged$workdir"
unset OLDPWD
exec bwrap "$@"
"""


# A service's PID 1 (the engine injects dagger-init for this): start the command, pass SIGTERM/SIGINT on to
# it (PID 1 itself would ignore a signal it has no handler for), exit with the command's status.
SERVICE_INIT = (
    'trap \'kill -TERM "$child" 2>/dev/null\' TERM INT; "$@" & child=$!; '
    'while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done; exit "$status"'
)


@dataclass(frozen=True)
class Bind:
    """One mount of the exec: ``source`` on the host bound at ``target`` in the container."""

    source: Path
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


def command(
    *,
    layers_dir: Path,
    lower: list[str],
    upper: Path,
    work: Path,
    merged: Path,
    argv: list[str],
    workdir: str,
    binds: list[Bind],
    hosts: Path | None,
    netns_prefix: list[str] | None = None,
    service: bool = False,
) -> list[str]:
    """The argv that runs ``argv`` in the container (for a service too, started by network.start_service).

    An exec dies with its parent (a crashed test leaves nothing running). A service does not: it is stopped
    as the engine stops one (core/services.go stopGraceful: SIGTERM, then SIGKILL after a grace period), and
    with --die-with-parent the SIGTERM that ends bwrap's outer process would SIGKILL the service before it
    could shut down cleanly (a server closing its prediction log, say)."""
    bwrap = [
        "--bind", str(merged), "/",
        "--proc", "/proc", "--dev", "/dev",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "dagger",
        *(["--as-pid-1"] if service else ["--die-with-parent"]),
    ]  # fmt: skip
    bwrap += _host_settings()
    if hosts is not None:
        bwrap += ["--ro-bind", str(hosts), "/etc/hosts"]
    for b in binds:
        bwrap += ["--ro-bind" if b.readonly else "--bind", str(b.source), b.target]
    if service:  # PID 1 forwards SIGTERM to the service, as the engine's dagger-init does
        argv = ["/bin/sh", "-c", SERVICE_INIT, "init", *argv]
    bwrap += ["--chdir", workdir or "/", "--", *argv]
    # lowerdir lists the top layer first.
    driver = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _DRIVER, "driver"]
    driver += [
        str(layers_dir),
        ":".join(reversed(lower)),
        str(upper),
        str(work),
        str(merged),
        workdir or "/",
        *bwrap,
    ]
    return [*(netns_prefix or []), *driver]


def scrub(text: str, secrets: list[str]) -> str:
    """The engine's secret scrubbing: every secret value (and its whitespace-trimmed form) becomes ***."""
    for value in sorted(secrets, key=len, reverse=True):
        for form in {value, value.strip()}:
            if form:
                text = text.replace(form, "***")
    return text


def run(
    argv: list[str],
    *,
    env: dict[str, str],
    stdin: str = "",
    timeout: float = 1800,
    secrets: list[str] = (),
    **layout,
) -> Result:  # type: ignore[assignment]
    """Run one exec to completion; its exit code and scrubbed output."""
    full = command(argv=argv, **layout)
    done = subprocess.run(
        full,
        env={**host_env(), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        errors="replace",
    )
    return Result(done.returncode, scrub(done.stdout, list(secrets)), scrub(done.stderr, list(secrets)))
