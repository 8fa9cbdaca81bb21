"""Deploy targets: run an environment's tagged artifact locally (a supervised `mlci serve` process), or
render Kubernetes manifests for it (applied with kubectl when a context is configured).

A local deploy pulls the tagged artifact, replaces the environment's server process (state file under
the workspace), then runs the post-deploy check: readiness and a smoke test against the live endpoint. If
the check fails, the environment is rolled back to its previous version, that version is started again,
and the deploy fails with the reason (exit 1).

The check judges mlci's own server, never whoever answers on the port: the process it started must be the
one listening there (its socket, read from /proc) and must serve the deployed digest (the model's version in
``GET /v2/models/{name}``). A server that lost its port to another process is a port clash, named as such
(the port, the other process, the fix), with no rollback: the artifact was not at fault.

The state file is a record, not an authority: it names the server by PID *and* start time (field 22 of
``/proc/<pid>/stat``), and mlci signals a process only while both still match and it leads its own process
group, so a stale record never hits a process that merely reuses the PID. The file is written atomically
(old or new, never empty), a damaged one is reported and never trusted, and deploys and stops of one
environment take turns (an exclusive lock beside the state file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from mlci.canonical import atomic_write
from mlci.config import Config
from mlci.errors import CheckFailed, ConfigError, MlciError
from mlci.release.promote import Release, rollback
from mlci.release.smoke import ServerProcess, start_server, wait_ready

__all__ = [
    "Applied",
    "DeployResult",
    "apply_kubernetes",
    "confirm_serving",
    "deploy",
    "listening_pids",
    "local_state",
    "process_start_time",
    "render_kubernetes",
    "running",
    "served_version",
    "stop",
]

ALREADY_STOPPED = "already stopped (no local server was running)"
Checker = Callable[[Path, str], Any]  # (artifact dir, live url) -> SmokeReport-like with .passed/.reason


@dataclass(frozen=True)
class DeployResult:
    """Where an environment now serves, and whether it had to roll back."""

    env: str
    digest: str
    url: str
    pid: int
    rolled_back_from: str | None = None
    reason: str = ""
    note: str | None = None  # what was wrong with the previous state file, if anything


def _env_dir(config: Config, env: str) -> Path:
    return config.workspace / "deploy" / env


def _state_file(config: Config, env: str) -> Path:
    return _env_dir(config, env) / "state.json"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of process ``pid`` from /proc, or None if absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 2 (the command name, in parentheses) may itself hold spaces and ')': fields 3.. follow the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (field 22 of /proc/<pid>/stat); with the PID, it names one process for good."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _is_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` and has not exited."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == start_time and stat[0] not in ("Z", "X")


def _state_problem(state: Any) -> str | None:
    """What makes a parsed state file unusable, or None. PID 0, -1 or 1 must never reach kill()."""
    if not isinstance(state, dict):
        return f"holds a JSON {type(state).__name__}, not an object"
    pid, start_time = state.get("pid"), state.get("start_time")
    if type(pid) is not int or pid <= 1:
        return f"records pid {pid!r}, which is not the PID of a server (expected an integer above 1)"
    if type(start_time) is not int or start_time < 0:
        return f"records no valid start time for pid {pid} ({start_time!r}), so it cannot say which process that is"
    for key in ("url", "digest", "artifact"):
        if not isinstance(state.get(key), str):
            return f"has no {key!r} text"
    return None


def local_state(config: Config, env: str) -> tuple[dict[str, Any] | None, str | None]:
    """(state of the environment's live server, None), or (None, why the state file names no live server).

    (None, None) when there is no state file. A state file is trusted only when it is well formed and its
    PID is still the process it recorded: same start time, alive, leading its own process group.
    """
    path = _state_file(config, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror}); nothing was signalled"
    try:
        state = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        what = "is empty" if not raw.strip() else f"is not valid JSON ({str(exc)[:80]})"
        return None, f"{path} {what}; nothing was signalled. If a server still runs for {env}, stop it by hand"
    problem = _state_problem(state)
    if problem is not None:
        return None, f"{path} {problem}; nothing was signalled. If a server still runs for {env}, stop it by hand"
    pid, recorded = state["pid"], state["start_time"]
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None, f"{path} records server pid {pid}, which is no longer running; nothing was signalled"
    if stat[1] != recorded:
        return None, (
            f"{path} records server pid {pid} started at tick {recorded}, but pid {pid} is now another process "
            f"(started at tick {stat[1]}): the recorded server is gone; nothing was signalled"
        )
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        leads_group = False
    if not leads_group:
        return None, f"{path} records pid {pid}, which does not lead its own process group as mlci's servers do; nothing was signalled"
    return dict(state), None


def running(config: Config, env: str) -> dict[str, Any] | None:
    """The state of the environment's server if its recorded process is alive (pid, start_time, port, digest, url)."""
    return local_state(config, env)[0]


@contextlib.contextmanager
def _env_lock(config: Config, env: str) -> Iterator[None]:
    """Deploys and stops of one environment take turns: each holds an exclusive lock on its `.lock` file."""
    folder = _env_dir(config, env)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _wait_gone(pid: int, start_time: int, timeout: float) -> bool:
    """Wait until the process is gone (reaping it if it is our child); False if it still runs at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
            os.waitpid(pid, os.WNOHANG)  # a child of ours stays a zombie until reaped
        if not _is_alive(pid, start_time):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # it exited in between
    except PermissionError as exc:
        raise MlciError(
            f"Not allowed to signal the server (pid {pid}); it runs as another user. Stop it as that user."
        ) from exc


def _stop_recorded(config: Config, env: str, timeout: float) -> tuple[int | None, str | None]:
    """Stop the server if it is the process the state file recorded, then remove the file.

    Returns (the PID stopped or None, a note on why the state file named no live server, or None).
    """
    state, note = local_state(config, env)
    pid = None
    if state is not None:
        pid, start_time = state["pid"], state["start_time"]
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, start_time, timeout) and _is_alive(pid, start_time):
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, start_time, 5.0)
    _state_file(config, env).unlink(missing_ok=True)
    return pid, note


def stop(config: Config, env: str, timeout: float = 15.0) -> str:
    """SIGTERM the environment's server (graceful drain, log flush) and wait; SIGKILL if it hangs.

    Only the process the state file recorded is signalled; a state file that names no live server of
    mlci's is removed. Returns what happened, in a sentence.
    """
    if not _env_dir(config, env).is_dir():
        return ALREADY_STOPPED
    with _env_lock(config, env):
        pid, note = _stop_recorded(config, env, timeout)
    if note is not None:
        return f"{note}. Removed the state file."
    return f"stopped its server (pid {pid})" if pid is not None else ALREADY_STOPPED


def _materialise(store: Any, config: Config, env: str, digest: str) -> Path:
    from mlci.registry import pull_artifact

    target = _env_dir(config, env) / "artifacts" / digest.replace(":", "-")
    pull_artifact(store, digest, target)
    return target


def _require_free_port(host: str, port: int, env: str) -> None:
    """Refuse to start when something else listens on the port: the new server could not bind, and its
    failed post-deploy check would roll the environment back because of a process that is not ours."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind(address)
    except OSError as exc:
        raise MlciError(
            f"Port {port} on {host} ({env}'s port) is in use by another process ({exc.strerror or exc}), one mlci "
            f"did not start or no longer tracks; nothing was deployed. Stop it (`ss -ltnp 'sport = :{port}'` "
            f"shows which), or set [deploy] {env}_port to a free port, then deploy again."
        ) from exc


class _PortTaken(MlciError):
    """The environment's port belongs to another process: deploy's own server could not bind it."""


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (any address, IPv4 or IPv6), from /proc/net; None without /proc."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st … uid timeout inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if readable else None


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    """Whether process ``pid`` has one of the socket ``inodes`` open (False where its fds cannot be read)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def listening_pids(port: int) -> set[int] | None:
    """PIDs of the processes listening on TCP ``port`` that this user may see; None where /proc cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    if not inodes:
        return set()
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _holds_socket(int(p.name), inodes)}


def _describe(pid: int) -> str:
    """``pid N (its command line)``, shortened, for an error message."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv)
    except OSError:
        command = ""
    command = command if len(command) <= 120 else command[:117] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def _listens(server: ServerProcess, port: int) -> bool:
    """Whether the process we started holds the socket listening on ``port`` (alive, where /proc cannot tell)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return server.process.poll() is None
    return bool(inodes) and _holds_socket(server.process.pid, inodes)


def served_version(url: str, name: str, timeout: float = 5.0) -> tuple[str | None, str]:
    """(the version the server at ``url`` serves as model ``name``, what it answered).

    The version is the first of ``versions`` in the V2 model metadata (``GET /v2/models/{name}``): mlci's
    server puts the artifact digest there. None, with the reason, when nothing or something else answers.
    """
    import httpx

    try:
        response = httpx.get(f"{url}/v2/models/{name}", timeout=timeout)
    except httpx.HTTPError as exc:
        return None, f"no answer ({type(exc).__name__})"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code} for model {name!r}"
    try:
        versions = response.json().get("versions")
    except (ValueError, AttributeError):
        return None, "an answer that is not V2 model metadata"
    if not isinstance(versions, list) or not versions or not isinstance(versions[0], str):
        return None, "model metadata without a version"
    return versions[0], f"version {versions[0]}"


def confirm_serving(server: ServerProcess, port: int, digest: str, name: str, timeout: float) -> None:
    """Raise CheckFailed unless the process we started listens on ``port`` and serves ``digest``.

    A ready answer on the port proves nothing by itself: another process may hold it while ours is still
    loading, or after ours failed to bind.
    """
    pid = server.process.pid
    deadline = time.monotonic() + timeout
    while not _listens(server, port):
        if server.process.poll() is not None:
            raise CheckFailed(
                f"The server (pid {pid}) exited with code {server.process.returncode}.\n"
                f"Server log (tail):\n{server.log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise CheckFailed(f"The server (pid {pid}) does not listen on port {port} after {timeout:.0f} s.")
        time.sleep(0.05)
    version, answer = served_version(server.url, name)
    if version != digest:
        raise CheckFailed(f"{server.url} answers {answer}, not the deployed {digest}.")


def _port_clash(server: ServerProcess, host: str, port: int, env: str) -> _PortTaken | None:
    """The error for a server of ours that another process kept off its port, or None if that did not happen."""
    pid = server.process.pid
    holders = listening_pids(port)
    others = sorted(holders - {pid}) if holders is not None else []
    log = server.log_tail()
    exited = server.process.poll() is not None
    bind_failed = exited and ("address already in use" in log.lower() or "errno 98" in log.lower())
    if not bind_failed and not (others and pid not in (holders or set())):
        return None
    who = ", ".join(map(_describe, others)) or f"another process (`ss -ltnp 'sport = :{port}'` shows which)"
    how = "address already in use" if bind_failed else "it never listened there"
    return _PortTaken(
        f"{env}'s server (pid {pid}) could not bind port {port} on {host} ({how}): {who} listens there. "
        f"The post-deploy check stopped: what answers on port {port} is not mlci's {env} server, so nothing "
        f"was judged and nothing rolled back; the {env} tag is unchanged and no server of mlci's serves {env} "
        f"now. Stop that process, or set [deploy] {env}_port to a free port in mlci.toml, then run "
        f"`mlci deploy {env}` again."
    )


def _record(path: Path, server: ServerProcess, state: dict[str, Any], env: str) -> None:
    """Write the state file atomically; if that fails, stop the server so that none runs untracked."""
    try:
        atomic_write(path, (json.dumps(state, indent=2) + "\n").encode())
    except BaseException as exc:
        server.stop()
        if not isinstance(exc, OSError):
            raise
        raise MlciError(
            f"Cannot record {env}'s server in {path}: {exc.strerror or exc}. The server was stopped so that "
            f"none runs untracked; nothing serves {env} now. Free space in {path.parent} (or fix its "
            f"permissions), then run `mlci deploy {env}` again."
        ) from exc


def _port(config: Config, env: str) -> int:
    return config.deploy.staging_port if env == "staging" else config.deploy.production_port


def _start(config: Config, env: str, artifact: Path, digest: str) -> ServerProcess:
    port = _port(config, env)
    folder = _env_dir(config, env)
    folder.mkdir(parents=True, exist_ok=True)
    _require_free_port(config.deploy.host, port, env)
    server = start_server(artifact, port, folder / "server.log", host=config.deploy.host, log_dir=folder / "predictions")
    pid = server.process.pid
    state = {
        "pid": pid, "start_time": process_start_time(pid), "port": port, "digest": digest,
        "url": server.url, "artifact": str(artifact),
    }  # fmt: skip
    _record(_state_file(config, env), server, state, env)
    return server


def _check(server: ServerProcess, artifact: Path, digest: str, config: Config, env: str, checker: Checker) -> str | None:
    """None when our own server is ready, listens on the port, serves ``digest`` and passes the check, else
    the reason. Raises _PortTaken when another process holds the port (then nothing of ours was checked)."""
    from mlci.model.artifact import read_manifest

    port, timeout = _port(config, env), config.deploy.check_timeout_s
    try:
        wait_ready(server.url, timeout, server)
        name = str(read_manifest(artifact)["name"])
        confirm_serving(server, port, digest, name, timeout)
        report = checker(artifact, server.url)
        confirm_serving(server, port, digest, name, timeout)  # still ours when the check ended
    except MlciError as exc:
        clash = _port_clash(server, config.deploy.host, port, env)
        if clash is not None:
            raise clash from exc
        return str(exc)
    return None if report.passed else report.reason


def _forget(config: Config, env: str, server: ServerProcess) -> None:
    """Stop a server of ours that must not stay, and remove its state file."""
    server.stop()
    _state_file(config, env).unlink(missing_ok=True)


def deploy(config: Config, store: Any, env: str, *, release: Release, checker: Checker) -> DeployResult:
    """Serve ``env``'s tagged artifact locally and check it live; roll back automatically on failure."""
    from mlci.registry import tag_digest

    digest = tag_digest(store, env)
    if digest is None:
        raise MlciError(f"{env} has no artifact yet; promote one first (`mlci promote {env} --approve`).")
    artifact = _materialise(store, config, env, digest)
    with _env_lock(config, env):
        _, note = _stop_recorded(config, env, 15.0)
        server = _start(config, env, artifact, digest)
        try:
            problem = _check(server, artifact, digest, config, env, checker)
        except _PortTaken:
            _forget(config, env, server)
            raise
        if problem is not None:
            _roll_back(config, store, env, release, server, digest, problem, checker)
    return DeployResult(env, digest, server.url, server.process.pid, note=note)


def _roll_back(
    config: Config, store: Any, env: str, release: Release, server: ServerProcess, digest: str, problem: str, checker: Checker
) -> NoReturn:
    """The post-deploy check failed: stop the new server, move the tag back, start the previous version; raise."""
    _forget(config, env, server)
    tail = server.log_tail()
    try:
        entry = rollback(store, env, release=release, reason=f"post-deploy check failed for {digest[:19]}: {problem[:200]}")
    except MlciError as exc:
        raise CheckFailed(
            f"Deploy of {digest[:19]} to {env} failed its post-deploy check ({problem}) and there is no earlier "
            f"version to roll back to ({exc}). Nothing serves {env} now.\nServer log (tail):\n{tail}"
        ) from exc
    previous = entry["to"]
    restored = _start(config, env, _materialise(store, config, env, previous), previous)
    previous_dir = _env_dir(config, env) / "artifacts" / previous.replace(":", "-")
    try:
        restored_problem = _check(restored, previous_dir, previous, config, env, checker)
    except _PortTaken as exc:
        _forget(config, env, restored)
        restored_problem = str(exc)
    state = "is serving again" if restored_problem is None else f"was restarted but fails its check too ({restored_problem})"
    raise CheckFailed(
        f"Deploy of {digest[:19]} to {env} failed its post-deploy check: {problem}. Rolled back automatically: "
        f"{previous[:19]} {state} at {restored.url}.\nFailed server's log (tail):\n{tail}"
    )


PREDICTION_LOG_DIR = "/var/lib/mlci/predictions"  # where the serving container writes its prediction log


def _dump_yaml(docs: list[dict[str, Any]]) -> str:
    """YAML for ``docs`` with every object written out in full: no ``&id001`` anchors for shared ones."""
    import yaml

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump_all(docs, Dumper=NoAliases, sort_keys=False)


def _not_a_registry_url(url: str, key: str, fix: str) -> str:
    """Why ``url`` (neither http nor https) is no registry a pod can pull from."""
    if "://" in url:
        return f"{key} is {url!r}, whose scheme is not http or https; expected e.g. 'https://ghcr.io'. {fix}"
    if url.startswith(("oci-layout:", ".", "~")) or "/" in url:
        return f"{key} is {url!r}, an OCI layout on this machine: a pod in the cluster cannot read it. {fix}"
    return (
        f"{key} is {url!r}, which has no scheme; expected a registry URL such as 'https://{url}' "
        f"(or 'http://{url}' for a plain-http registry). {fix}"
    )


def _cluster_registry(config: Config) -> str:
    """The registry URL the cluster pulls from; refused when a pod cannot reach it."""
    assert config.registry is not None
    url = config.deploy.cluster_registry or config.registry.url
    key = "[deploy] cluster_registry" + ("" if config.deploy.cluster_registry else " (it defaults to [registry] url)")
    fix = (
        f"Push to a registry the cluster can pull from and set [registry] url to it, or set {key.split(' (')[0]} "
        'to the address the cluster knows it by (e.g. "https://ghcr.io", "http://registry.kube-system:5000").'
    )
    from mlci.registry.settings import check_registry_url

    secret = f"Give the pods credentials in the optional Secret `{config.name}-<env>-registry` (MLCI_REGISTRY_* keys)."
    if check_registry_url(url, key, credentials=secret) is None:
        raise ConfigError(_not_a_registry_url(url, key, fix))
    import httpx

    from mlci.registry.http import is_loopback

    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{key} is {url!r}, which is not a URL ({exc}). {fix}") from exc
    if is_loopback(host):
        raise ConfigError(
            f"{key} is {url!r}, a loopback address: inside a pod that is the pod itself, not this machine's "
            f"registry. {fix}"
        )
    return url


def _pinned_image(config: Config) -> str:
    """The serving image, refused unless pinned (a digest, or a tag other than ``latest``)."""
    image = config.deploy.image
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else None
    if "@sha256:" not in image and tag in (None, "latest"):
        raise ConfigError(
            f"[deploy] image is {image!r}, which is not pinned (no tag, or :latest): the pods would run whatever that "
            "name points at when they start, not the serving code mlci checked. Set [deploy] image to an image "
            "with mlci installed, by digest (…@sha256:<hex>) or by a release tag (…:1.4.2)."
        )
    return image


def _resources(config: Config) -> dict[str, dict[str, str]]:
    """Requests and limits for every container, from [deploy] cpu/memory_request/limit ("" leaves one out)."""
    d = config.deploy
    requests = {k: v for k, v in (("cpu", d.cpu_request), ("memory", d.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", d.cpu_limit), ("memory", d.memory_limit)) if v}
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _prediction_log_volume(config: Config) -> dict[str, Any]:
    """The prediction log's volume: the configured PersistentVolumeClaim, else an emptyDir (lost with the pod)."""
    claim = config.deploy.prediction_log_claim
    if claim:
        return {"name": "predictions", "persistentVolumeClaim": {"claimName": claim}}
    return {"name": "predictions", "emptyDir": {}}


def render_kubernetes(config: Config, env: str, digest: str) -> str:
    """YAML for a Deployment + Service (or a KServe InferenceService) serving ``digest``.

    An init container pulls the artifact by digest with `mlci pull` (verifying every blob; registry
    credentials from the optional Secret `<name>-registry`), and the serving container runs
    `mlci serve` on the pulled directory, writing its prediction log to a volume of its own. Refused
    (ConfigError) when the cluster could not reach the registry or the image is not pinned. The YAML has
    no anchors: every object is written out in full.
    """
    name = f"{config.name}-{env}"
    labels = {"app.kubernetes.io/name": config.name, "app.kubernetes.io/instance": name, "mlci.dev/environment": env}
    assert config.registry is not None
    registry, repository = _cluster_registry(config), config.registry.repository
    image, resources = _pinned_image(config), _resources(config)
    annotations = {"mlci.dev/digest": digest, "mlci.dev/registry": registry, "mlci.dev/repository": repository}
    volumes = [{"name": "artifact", "emptyDir": {}}, _prediction_log_volume(config)]
    pull = {
        "name": "pull-artifact",
        "image": image,
        "command": ["mlci", "pull", digest, "--registry", registry, "--repository", repository, "--out", "/artifact/model"],
        "envFrom": [{"secretRef": {"name": f"{name}-registry", "optional": True}}],
        "resources": resources,
        "volumeMounts": [{"name": "artifact", "mountPath": "/artifact"}],
    }
    serve = {
        "name": "server",
        "image": image,
        "command": [
            "mlci", "serve", "/artifact/model", "--host", "0.0.0.0", "--port", "8080", "--log-dir", PREDICTION_LOG_DIR,
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "resources": resources,
        "volumeMounts": [
            {"name": "artifact", "mountPath": "/artifact"},
            {"name": "predictions", "mountPath": PREDICTION_LOG_DIR},
        ],
    }  # fmt: skip
    meta = {"name": name, "namespace": config.deploy.namespace, "labels": labels, "annotations": annotations}
    pod = {"initContainers": [pull], "containers": [serve], "volumes": volumes}
    if config.deploy.kind == "inferenceservice":
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": meta,
                "spec": {"predictor": {"minReplicas": config.deploy.replicas, **pod}},
            }
        ]
    else:
        docs = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "replicas": config.deploy.replicas,
                    "selector": {"matchLabels": labels},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                    "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": config.deploy.namespace, "labels": labels},
                "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            },
        ]
    return _dump_yaml(docs)


@dataclass(frozen=True)
class Applied:
    """What `kubectl` did with a manifest: the context it applied to (None: not applied, and why)."""

    context: str | None
    not_applied: str = ""
    rollout: str = ""


def _kubectl(kubectl: str, args: list[str], env: dict[str, str], timeout: float, manifest: str | None = None) -> Any:
    """Run kubectl with a deadline; stdin is the manifest or nothing (never the caller's terminal)."""
    try:
        return subprocess.run(
            [kubectl, *args], input=manifest, stdin=None if manifest is not None else subprocess.DEVNULL,
            capture_output=True, text=True, check=False, env=env, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"`kubectl {' '.join(args)}` did not finish within {timeout:.0f} s.") from exc


def apply_kubernetes(manifest: str, config: Config, env: str) -> Applied:
    """`kubectl apply` the manifest when kubectl and a current context exist, then wait (bounded by
    [deploy] rollout_timeout_s) for the rollout; otherwise say why nothing was applied."""
    from mlci.registry.settings import without_credentials

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return Applied(None, "kubectl is not on PATH")
    environ = without_credentials(os.environ)  # kubectl needs its kubeconfig, never the registry's password
    context = _kubectl(kubectl, ["config", "current-context"], environ, 30)
    if context.returncode != 0 or not context.stdout.strip():
        return Applied(None, f"kubectl has no current context ({(context.stderr.strip() or 'none set')[:200]})")
    done = _kubectl(kubectl, ["apply", "-f", "-"], environ, 120, manifest)
    if done.returncode != 0:
        raise CheckFailed(f"kubectl apply failed ({done.returncode}): {done.stderr.strip()[:500]}")
    name, namespace, timeout = f"{config.name}-{env}", config.deploy.namespace, config.deploy.rollout_timeout_s
    if config.deploy.kind == "inferenceservice":
        wait = ["wait", "--for=condition=Ready", f"inferenceservice/{name}", "-n", namespace, f"--timeout={timeout:.0f}s"]
        undo = f"`kubectl -n {namespace} describe inferenceservice/{name}` says why; `mlci rollback {env}` goes back"
    else:
        wait = ["rollout", "status", f"deployment/{name}", "-n", namespace, f"--timeout={timeout:.0f}s"]
        undo = (
            f"the previous pods keep serving (maxUnavailable 0); `kubectl -n {namespace} describe deployment/{name}` "
            f"says why; `kubectl -n {namespace} rollout undo deployment/{name}` or `mlci rollback {env}` goes back"
        )
    rolled = _kubectl(kubectl, wait, environ, timeout + 30)
    if rolled.returncode != 0:
        raise CheckFailed(
            f"Applied to {context.stdout.strip()}, but the rollout of {name} did not complete within {timeout:.0f} s "
            f"([deploy] rollout_timeout_s): {(rolled.stderr or rolled.stdout).strip()[:500]}. {undo}."
        )
    return Applied(context.stdout.strip(), rollout=rolled.stdout.strip()[:200])
