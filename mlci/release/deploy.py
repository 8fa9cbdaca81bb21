"""Deploy targets: run an environment's tagged artifact locally (a supervised `mlci serve` process), or
render Kubernetes manifests for it (applied with kubectl when a context is configured).

A local deploy pulls the tagged artifact, replaces the environment's server process (pid file + state
file under the workspace), then runs the post-deploy check: readiness and a smoke test against the live
endpoint. If the check fails, the environment is rolled back to its previous version, that version is
started again, and the deploy fails with the reason (exit 1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import CheckFailed, MlciError
from mlci.release.promote import Release, rollback
from mlci.release.smoke import ServerProcess, start_server, wait_ready

__all__ = ["DeployResult", "deploy", "render_kubernetes", "running", "stop"]

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


def _env_dir(config: Config, env: str) -> Path:
    return config.workspace / "deploy" / env


def running(config: Config, env: str) -> dict[str, Any] | None:
    """The state of the environment's server if its process is alive (pid, port, digest, url)."""
    state_file = _env_dir(config, env) / "state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return None
    return dict(state)


def stop(config: Config, env: str, timeout: float = 15.0) -> None:
    """SIGTERM the environment's server (graceful drain, log flush) and wait; SIGKILL if it hangs."""
    state = running(config, env)
    if state is None:
        return
    pid = int(state["pid"])
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # Reap it if it is our child (a zombie would still answer kill 0).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            pass
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
    (_env_dir(config, env) / "state.json").unlink(missing_ok=True)


def _materialise(store: Any, config: Config, env: str, digest: str) -> Path:
    from mlci.registry import pull_artifact

    target = _env_dir(config, env) / "artifacts" / digest.replace(":", "-")
    pull_artifact(store, digest, target)
    return target


def _start(config: Config, env: str, artifact: Path, digest: str) -> ServerProcess:
    port = config.deploy.staging_port if env == "staging" else config.deploy.production_port
    folder = _env_dir(config, env)
    folder.mkdir(parents=True, exist_ok=True)
    server = start_server(artifact, port, folder / "server.log", host=config.deploy.host, log_dir=folder / "predictions")
    state = {"pid": server.process.pid, "port": port, "digest": digest, "url": server.url, "artifact": str(artifact)}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    return server


def _check(server: ServerProcess, artifact: Path, config: Config, checker: Checker) -> str | None:
    """None when the live server is ready and passes the check, else the reason."""
    try:
        wait_ready(server.url, config.deploy.check_timeout_s, server)
        report = checker(artifact, server.url)
    except MlciError as exc:
        return str(exc)
    return None if report.passed else report.reason


def deploy(config: Config, store: Any, env: str, *, release: Release, checker: Checker) -> DeployResult:
    """Serve ``env``'s tagged artifact locally and check it live; roll back automatically on failure."""
    from mlci.registry import tag_digest

    digest = tag_digest(store, env)
    if digest is None:
        raise MlciError(f"{env} has no artifact yet; promote one first (`mlci promote {env} --approve`).")
    artifact = _materialise(store, config, env, digest)
    stop(config, env)
    server = _start(config, env, artifact, digest)
    problem = _check(server, artifact, config, checker)
    if problem is None:
        return DeployResult(env, digest, server.url, server.process.pid)

    server.stop()
    tail = server.log_tail()
    try:
        entry = rollback(store, env, release=release, reason=f"post-deploy check failed for {digest[:19]}: {problem[:200]}")
    except MlciError as exc:
        (_env_dir(config, env) / "state.json").unlink(missing_ok=True)
        raise CheckFailed(
            f"Deploy of {digest[:19]} to {env} failed its post-deploy check ({problem}) and there is no earlier "
            f"version to roll back to ({exc}). Nothing serves {env} now.\nServer log (tail):\n{tail}"
        ) from exc
    previous = entry["to"]
    restored = _start(config, env, _materialise(store, config, env, previous), previous)
    restored_problem = _check(restored, _env_dir(config, env) / "artifacts" / previous.replace(":", "-"), config, checker)
    state = "is serving again" if restored_problem is None else f"was restarted but fails its check too ({restored_problem})"
    raise CheckFailed(
        f"Deploy of {digest[:19]} to {env} failed its post-deploy check: {problem}. Rolled back automatically: "
        f"{previous[:19]} {state} at {restored.url}.\nFailed server's log (tail):\n{tail}"
    )


def render_kubernetes(config: Config, env: str, digest: str) -> str:
    """YAML for a Deployment + Service (or a KServe InferenceService) serving ``digest``.

    An init container pulls the artifact by digest with `mlci pull` (verifying every blob; registry
    credentials from the optional Secret `<name>-registry`), and the serving container runs
    `mlci serve` on the pulled directory.
    """
    import yaml

    name = f"{config.name}-{env}"
    labels = {"app.kubernetes.io/name": config.name, "app.kubernetes.io/instance": name, "mlci.dev/environment": env}
    assert config.registry is not None
    registry, repository = config.registry.url, config.registry.repository
    annotations = {"mlci.dev/digest": digest, "mlci.dev/registry": registry, "mlci.dev/repository": repository}
    volume = {"name": "artifact", "emptyDir": {}}
    pull = {
        "name": "pull-artifact",
        "image": config.deploy.image,
        "command": ["mlci", "pull", digest, "--registry", registry, "--repository", repository, "--out", "/artifact/model"],
        "envFrom": [{"secretRef": {"name": f"{name}-registry", "optional": True}}],
        "volumeMounts": [{"name": "artifact", "mountPath": "/artifact"}],
    }
    serve = {
        "name": "server",
        "image": config.deploy.image,
        "command": ["mlci", "serve", "/artifact/model", "--host", "0.0.0.0", "--port", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "artifact", "mountPath": "/artifact"}],
    }
    meta = {"name": name, "namespace": config.deploy.namespace, "labels": labels, "annotations": annotations}
    if config.deploy.kind == "inferenceservice":
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": meta,
                "spec": {"predictor": {"minReplicas": config.deploy.replicas, "initContainers": [pull], "containers": [serve], "volumes": [volume]}},
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
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations},
                        "spec": {"initContainers": [pull], "containers": [serve], "volumes": [volume]},
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": config.deploy.namespace, "labels": labels},
                "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            },
        ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply_kubernetes(manifest: str) -> str | None:
    """`kubectl apply` the manifest when kubectl and a current context exist; None means render-only."""
    from mlci.registry.settings import without_credentials

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    env = without_credentials(os.environ)  # kubectl needs its kubeconfig, never the registry's password
    context = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True, check=False, env=env)
    if context.returncode != 0 or not context.stdout.strip():
        return None
    done = subprocess.run([kubectl, "apply", "-f", "-"], input=manifest, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise CheckFailed(f"kubectl apply failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return context.stdout.strip()
