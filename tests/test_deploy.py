"""Release end to end on this machine: run → push → promote → deploy (real servers), auto-rollback, hotfix, k8s."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import onnx
import pytest
import yaml
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import Config, load_config
from mlci.pipeline import open_registry
from mlci.registry import push_artifact, tag_digest
from mlci.release.deploy import render_kubernetes, running, stop
from mlci.release.promote import history, store_verdict
from mlci.release.smoke import free_port

from .conftest import EXAMPLE, reseal

# Every test deploys real servers (and most wait out post-deploy checks): `make test-slow`, not `make test`.
pytestmark = pytest.mark.slow


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


CLUSTER_DEPLOY = (
    '[deploy]\ntarget = "kubernetes"\nimage = "ghcr.io/acme/mlci:1.0"\n'
    'cluster_registry = "https://registry.example.com"\n'
)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    toml.write_text(toml.read_text() + f"\n[deploy]\nstaging_port = {free_port()}\nproduction_port = {free_port()}\ncheck_timeout_s = 30\n")
    yield toml
    config = load_config(toml)
    for env in ("staging", "production"):
        stop(config, env)


def ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200


def test_promote_deploys_and_a_broken_release_rolls_back_by_itself(project: Path, tmp_path: Path) -> None:
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    good = json.loads(out[out.index("{") :])["digest"]
    code, out = invoke("promote", "staging", "-c", str(project), "--json")
    assert code == 1 and "--approve" in out  # manual mode: a human must approve
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--reason", "first release", "--json")
    assert code == 0, out
    config = load_config(project)
    live = running(config, "staging")
    assert live is not None and live["digest"] == good and ready(live["url"])

    # A broken artifact that somehow passed its gate: a valid ONNX model (so `pull` takes it) that only
    # fails inside the server, whose inputs are not the schema's.
    artifact = Path(json.loads((config.workspace / "latest.json").read_text())["path"])
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, 1]) for n in ("x", "y"))
    wrong = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "wrong-inputs", [x], [y])
    (broken / "model.onnx").write_bytes(onnx.helper.make_model(wrong).SerializeToString())
    bad = reseal(broken)
    store = open_registry(config)
    push_artifact(store, broken)
    store_verdict(store, {"candidate": bad, "passed": True, "checks": []})
    code, out = invoke("promote", "staging", "-c", str(project), "--digest", bad, "--approve")
    assert code == 1
    assert "failed its post-deploy check" in out and "Rolled back automatically" in out and "is serving again" in out
    assert tag_digest(store, "staging") == good
    live = running(config, "staging")
    assert live is not None and live["digest"] == good and ready(live["url"])
    assert [e["action"] for e in history(store, "staging")] == ["promote", "promote", "rollback"]
    code, out = invoke("status", "-c", str(project), "--json")
    report = json.loads(out)
    assert report["staging"]["digest"] == good and report["staging"]["consistent"]
    assert report["staging"]["local_server"]["url"] == live["url"]


def test_rollback_command_redeploys_the_previous_version_and_hotfix_keeps_the_artifact(project: Path) -> None:
    assert invoke("run", "-c", str(project))[0] == 0
    first = tag_digest(open_registry(load_config(project)), "candidate")
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    assert invoke("promote", "production", "-c", str(project), "--approve")[0] == 0
    # A second, different model version.
    project.write_text(project.read_text().replace("C = 1.0", "C = 0.3"))
    assert invoke("run", "-c", str(project))[0] == 0
    config = load_config(project)
    store = open_registry(config)
    second = tag_digest(store, "candidate")
    assert second != first
    assert invoke("promote", "production", "-c", str(project), "--digest", str(second), "--approve")[0] == 0
    assert running(config, "production")["digest"] == second  # type: ignore[index]
    code, out = invoke("rollback", "production", "-c", str(project))
    assert code == 0, out
    live = running(config, "production")
    assert live is not None and live["digest"] == first and ready(live["url"])
    pid = live["pid"]
    code, out = invoke("hotfix", "production", "-c", str(project), "--reason", "serving fix", "--json")
    assert code == 0, out
    after = running(config, "production")
    assert after is not None and after["digest"] == first and after["pid"] != pid
    assert history(store, "production")[-1]["action"] == "hotfix"


def test_continuous_deployment_promotes_a_passing_candidate_through_both_environments(project: Path) -> None:
    project.write_text(project.read_text().replace("[deploy]\n", "[deploy]\ncontinuous_deployment = true\n"))
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 0, out
    payload = json.loads(out[out.index("{") :])
    stages = [s["stage"] for s in payload["stages"]]
    assert stages[-4:] == ["promote-staging", "deploy-staging", "promote-production", "deploy-production"]
    config = load_config(project)
    for env in ("staging", "production"):
        live = running(config, env)
        assert live is not None and live["digest"] == payload["digest"] and ready(live["url"])
        assert history(open_registry(config), env)[-1]["why"].startswith("continuous deployment")


def test_failing_gate_pushes_the_verdict_but_never_promotes(project: Path) -> None:
    project.write_text(
        project.read_text().replace("[deploy]\n", "[deploy]\ncontinuous_deployment = true\n") + "\n[gate]\nmax = { log_loss = 0.001 }\n"
    )
    code, out = invoke("run", "-c", str(project), "--json")
    assert code == 1 and "The gate failed" in out and "max log_loss" in out
    rejected = json.loads(out[out.index("{\n") : out.index("\nError:")])["digest"]
    config = load_config(project)
    store = open_registry(config)
    assert tag_digest(store, "candidate") is None  # stored by digest with its verdict, never tagged candidate
    assert tag_digest(store, "staging") is None and tag_digest(store, "production") is None
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--digest", rejected)
    assert code == 1 and "failed the gate (max log_loss)" in out


def test_kubernetes_target_renders_manifests_naming_the_digest(project: Path) -> None:
    project.write_text(project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY))
    assert invoke("run", "-c", str(project))[0] == 0
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--json")
    assert code == 0, out
    deployed = json.loads(out)["deployed"]
    docs = list(yaml.safe_load_all(Path(deployed["manifest"]).read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert docs[0]["metadata"]["annotations"]["mlci.dev/digest"] == deployed["digest"]
    pull = docs[0]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert pull[:3] == ["mlci", "pull", deployed["digest"]] and pull[pull.index("--repository") + 1] == "breast-cancer"
    assert pull[pull.index("--registry") + 1] == "https://registry.example.com"  # as the cluster reaches it
    assert deployed["applied_to"] is None and not deployed["applied"]  # no kubectl context here: render only
    project.write_text(project.read_text().replace('target = "kubernetes"', 'target = "kubernetes"\nkind = "inferenceservice"'))
    code, out = invoke("deploy", "staging", "-c", str(project), "--json")
    assert code == 0, out
    (isvc,) = yaml.safe_load_all(Path(json.loads(out)["manifest"]).read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"


def start_time_of(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


def mlci(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process and session of its own, as a user's shell runs it (a stray signal hits only it)."""
    return subprocess.run(
        [sys.executable, "-m", "mlci", *args], capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


def servers_under(folder: Path) -> list[int]:
    """PIDs of live `mlci serve` processes whose command line names a path under ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_bytes()
        except (OSError, ValueError):
            continue
        zombie = stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"
        if not zombie and b"serve" in argv and any(str(folder).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def fill(path: Path) -> None:
    """Write to ``path`` until its file system has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)


def test_stop_and_deploy_never_signal_a_process_the_state_file_only_names(project: Path) -> None:
    """Attack: state.json names the PID of an unrelated process (a stale record after a crash, a reboot or PID reuse).

    `mlci stop` SIGTERMed that PID's whole process group (the unrelated process died), `mlci deploy` did the
    same before starting its server, and `mlci status` reported the stranger as the environment's server.
    """
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    config = load_config(project)
    state_file = config.workspace / "deploy" / "staging" / "state.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a process-group leader, as a server is
    port = config.deploy.staging_port
    stale = {
        "pid": stranger.pid, "start_time": start_time_of(stranger.pid) - 1, "port": port,
        "digest": "sha256:" + "0" * 64, "url": f"http://127.0.0.1:{port}", "artifact": str(state_file.parent),
    }  # fmt: skip
    try:
        state_file.write_text(json.dumps(stale))
        code, out = invoke("stop", "staging", "-c", str(project))
        assert stranger.poll() is None, "mlci stop signalled a process it did not start"
        assert code == 0 and "another process" in out and "nothing was signalled" in out, out
        assert not state_file.exists()

        state_file.write_text(json.dumps(stale))
        code, out = invoke("status", "-c", str(project), "--json")
        assert code == 0, out
        staging = json.loads(out)["staging"]
        assert staging["local_server"] is None and "another process" in staging["local_server_problem"]

        code, out = invoke("deploy", "staging", "-c", str(project), "--json")
        assert stranger.poll() is None, "mlci deploy signalled a process it did not start"
        assert code == 0 and "another process" in json.loads(out)["note"], out
        live = running(config, "staging")
        assert live is not None and live["pid"] != stranger.pid and ready(live["url"])

        # What a full disk left behind: an empty state file. Deploy says so and carries on.
        assert invoke("stop", "staging", "-c", str(project)) == (0, f"staging: stopped its server (pid {live['pid']})\n")
        state_file.write_bytes(b"")
        code, out = invoke("deploy", "staging", "-c", str(project))
        assert code == 0 and f"note: {state_file} is empty" in out, out
        assert ready(running(config, "staging")["url"])  # type: ignore[index]
    finally:
        stranger.kill()
        stranger.wait()


DAMAGED_STATES = {
    "empty, as a full disk left it": b"",
    "truncated": b'{"pid": 12',
    "not an object": b"[1, 2]",
    "pid 0, the caller's own process group": b'{"pid": 0, "start_time": 1, "port": 1, "digest": "d", "url": "u", "artifact": "a"}',
    "pid -1, every process": b'{"pid": -1, "start_time": 1, "port": 1, "digest": "d", "url": "u", "artifact": "a"}',
    # Never "1" here: the old code would have run killpg(1, SIGTERM), which is kill(-1): every process.
    "pid as text": b'{"pid": "4194305", "start_time": 1, "port": 1, "digest": "d", "url": "u", "artifact": "a"}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("body", DAMAGED_STATES.values(), ids=list(DAMAGED_STATES))
def test_a_damaged_state_file_is_reported_and_never_trusted(project: Path, body: bytes) -> None:
    """Attack: state.json is empty (what a full disk during deploy left), truncated, of the wrong shape, or
    names PID 0 or -1. `status` and `stop` crashed on it with a traceback, and for PID 0 `stop` SIGTERMed its
    own process group (here only the `mlci` process: it runs in a session of its own)."""
    state_file = load_config(project).workspace / "deploy" / "staging" / "state.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_bytes(body)
    try:
        status = mlci("status", "-c", str(project), "--json")
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
        staging = json.loads(status.stdout)["staging"]
        assert staging["local_server"] is None and str(state_file) in staging["local_server_problem"]
        stopped = mlci("stop", "staging", "-c", str(project))
        assert stopped.returncode == 0 and "Traceback" not in stopped.stderr, (stopped.returncode, stopped.stderr)
        assert str(state_file) in stopped.stdout and "nothing was signalled" in stopped.stdout, stopped.stdout
        assert not state_file.exists()
    finally:  # the fixture's in-process stop must never read it (PID 0 would be this process group)
        state_file.unlink(missing_ok=True)


def test_deploy_next_to_an_untracked_server_refuses_and_moves_no_tag(project: Path) -> None:
    """Attack: a process mlci does not track (the orphan an older mlci left, a developer's server) holds the
    environment's port. The new server could not bind, its post-deploy check failed and deploy answered
    with an automatic rollback (exit 1): the environment was judged by someone else's process."""
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    config = load_config(project)
    store = open_registry(config)
    before = (tag_digest(store, "staging"), history(store, "staging"))
    folder = config.workspace / "deploy" / "staging"
    port = config.deploy.staging_port
    stranger = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while stranger.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        deploy = mlci("deploy", "staging", "-c", str(project))
        assert stranger.poll() is None
        assert deploy.returncode == 2 and "Traceback" not in deploy.stderr, deploy.stderr
        assert f"Port {port}" in deploy.stderr and "in use" in deploy.stderr and "staging_port" in deploy.stderr
        assert (tag_digest(store, "staging"), history(store, "staging")) == before  # no rollback, no entry
        assert servers_under(folder) == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_full_disk_during_deploy_leaves_no_server_and_no_broken_state(project: Path) -> None:
    """Attack: the disk fills up while deploy records the server's state (a tmpfs filled to the last byte).

    mlci left the new server running untracked (an orphan holding the port) and an empty state.json, on
    which `status`, `stop` and `deploy` all crashed with a traceback.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting the small file system this test fills needs root")
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    config = load_config(project)
    folder = config.workspace / "deploy" / "staging"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], check=True)
    cfg = str(project)
    try:
        first = mlci("deploy", "staging", "-c", cfg)  # the artifact lands on the small disk
        assert first.returncode == 0, first.stderr
        assert mlci("stop", "staging", "-c", cfg).returncode == 0
        (folder / "server.log").write_bytes(b"")  # so that reopening it frees nothing
        fill(folder / "filler")

        deploy = mlci("deploy", "staging", "-c", cfg)
        assert servers_under(folder) == [], "a server runs that no state file records"
        assert deploy.returncode == 2 and "Traceback" not in deploy.stderr, deploy.stderr
        assert "No space left on device" in deploy.stderr and "was stopped" in deploy.stderr, deploy.stderr
        assert not (folder / "state.json").exists()

        status = mlci("status", "-c", cfg, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["staging"]["local_server"] is None
        stopped = mlci("stop", "staging", "-c", cfg)
        assert stopped.returncode == 0 and "Traceback" not in stopped.stderr, stopped.stderr
        again = mlci("deploy", "staging", "-c", cfg)
        assert again.returncode == 2 and "No space left on device" in again.stderr and "Traceback" not in again.stderr
        assert servers_under(folder) == []

        (folder / "filler").unlink()  # space again: deploy works as before
        assert mlci("deploy", "staging", "-c", cfg).returncode == 0
        live = running(config, "staging")
        assert live is not None and ready(live["url"])
    finally:
        for pid in servers_under(folder):  # the one deployed last, and orphans should the code under test leave any
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_no_process_mlci_starts_inherits_the_registry_credentials(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: read the environment of what mlci starts: /proc/<pid>/environ of the deployed server, and the
    environment git (provenance) and kubectl (the Kubernetes target) get. The registry password was in each."""
    secret = "s3cret-Pa55word-do-not-leak"
    dumps = tmp_path / "environments"
    dumps.mkdir()
    shims = tmp_path / "bin"
    shims.mkdir()
    real_git = shutil.which("git") or "/usr/bin/git"
    (shims / "git").write_text(f'#!/bin/sh\nenv > "{dumps}/git.$$"\nexec {real_git} "$@"\n')
    (shims / "kubectl").write_text(
        f'#!/bin/sh\nenv > "{dumps}/kubectl.$$"\n'
        'if [ "$1" = config ]; then echo test-context; else cat >/dev/null; fi\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLCI_REGISTRY_USERNAME", "ci-robot")
    monkeypatch.setenv("MLCI_REGISTRY_PASSWORD", secret)

    assert invoke("run", "-c", str(project))[0] == 0
    code, out = invoke("promote", "staging", "-c", str(project), "--approve")
    assert code == 0, out
    live = running(load_config(project), "staging")
    assert live is not None
    server_env = Path(f"/proc/{live['pid']}/environ").read_bytes().decode(errors="replace")
    project.write_text(project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY))
    code, out = invoke("deploy", "staging", "-c", str(project), "--json")
    assert code == 0 and json.loads(out)["applied_to"] == "test-context", out

    seen = {"server": server_env.replace("\0", "\n")} | {p.name: p.read_text() for p in dumps.iterdir()}
    assert any(name.startswith("git.") for name in seen) and any(name.startswith("kubectl.") for name in seen)
    leaked = [name for name, text in seen.items() if "MLCI_REGISTRY_" in text or secret in text]
    assert leaked == [], f"registry credentials reached {leaked}"


# A real `mlci serve` that takes the port in the window between deploy's free-port probe and its server's
# bind: the socket is bound first (SO_REUSEADDR, not listening: the probe still binds beside it), and it
# listens as soon as the test says so. It then serves ARTIFACT on that socket until killed.
STRANGER = r"""
import dataclasses, socket, sys
from pathlib import Path
from mlci.serving.server import serve
from mlci.serving.settings import Settings
artifact, port = Path(sys.argv[1]), int(sys.argv[2])
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
print("bound", flush=True)
sys.stdin.readline()
sock.listen(128)
settings = Settings.from_env({})
serve(dataclasses.replace(settings, artifact=artifact, host="127.0.0.1", port=port, log_dir=None), sockets=[sock])
"""


def profile_variant(artifact: Path, root: Path) -> tuple[Path, str]:
    """Another version of ``artifact``: the same model (so the same outputs), another profile, another digest."""
    copy = root / "variant"
    shutil.copytree(artifact, copy)
    profile = json.loads((copy / "profile.json").read_text())
    profile["variant"] = 1
    (copy / "profile.json").write_text(json.dumps(profile))
    return copy, reseal(copy)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("stranger_serves", ["the same artifact", "another version"])
def test_deploy_whose_server_cannot_bind_names_the_port_clash(project: Path, tmp_path: Path, stranger_serves: str) -> None:
    """Issue 13 item 2: another process took the port after deploy's probe, so deploy's own server died with
    "address already in use" while the post-deploy check talked to the stranger: deploy printed
    `staging serves sha256:…`, exit 0 (or, depending on the race, blamed the artifact and rolled back).

    The stranger is a real `mlci serve` (of the same artifact, or of another version whose model gives the
    same outputs, so a smoke test alone cannot tell them apart). Deploy must check that its own process
    listens there and serves the deployed digest, and name the clash: the port, the other process, the fix.
    """
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    config = load_config(project)
    store = open_registry(config)
    before = (tag_digest(store, "staging"), history(store, "staging"))
    artifact = Path(json.loads((config.workspace / "latest.json").read_text())["path"])
    served = artifact if stranger_serves == "the same artifact" else profile_variant(artifact, tmp_path)[0]
    folder = config.workspace / "deploy" / "staging"
    port = config.deploy.staging_port
    stranger = subprocess.Popen(
        [sys.executable, "-c", STRANGER, str(served), str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
    )  # fmt: skip
    try:
        assert stranger.stdout is not None and stranger.stdin is not None
        assert stranger.stdout.readline().strip() == "bound"
        deploy = subprocess.Popen(
            [sys.executable, "-m", "mlci", "deploy", "staging", "-c", str(project)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: bool(servers_under(folder)) or deploy.poll() is not None, 120, "deploy to start its server")
        stranger.stdin.write("go\n")
        stranger.stdin.flush()
        out, err = deploy.communicate(timeout=240)
        assert stranger.poll() is None, "the stranger was signalled"
        assert deploy.returncode == 2 and "Traceback" not in err, (deploy.returncode, out, err)
        assert f"port {port}" in err and "staging_port" in err, err
        assert f"pid {stranger.pid}" in err and "could not bind" in err and "address already in use" in err, err
        assert "staging serves" not in out
        assert (tag_digest(store, "staging"), history(store, "staging")) == before  # no rollback for a port clash
        assert servers_under(folder) == [] and running(config, "staging") is None
        assert not (folder / "state.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_the_post_deploy_check_requires_the_deployed_digest(project: Path, tmp_path: Path) -> None:
    """The check reads the served version from `GET /v2/models/{name}` (serving/runtime.py's metadata puts the
    artifact digest in `versions`): a live server of another version of the model is not the deployment,
    even though its outputs are the same and a smoke test passes against it."""
    from mlci.errors import CheckFailed
    from mlci.release.deploy import confirm_serving
    from mlci.release.smoke import start_server, wait_ready

    assert invoke("run", "-c", str(project), "--until", "evaluate")[0] == 0
    config = load_config(project)
    artifact = Path(json.loads((config.workspace / "latest.json").read_text())["path"])
    deployed = json.loads((artifact / "manifest.json").read_text())["digest"]
    variant, other = profile_variant(artifact, tmp_path)
    port = free_port()
    server = start_server(variant, port, tmp_path / "server.log")
    try:
        wait_ready(server.url, 60, server)
        confirm_serving(server, port, other, "breast-cancer", 10)  # its own digest: fine
        with pytest.raises(CheckFailed) as caught:
            confirm_serving(server, port, deployed, "breast-cancer", 10)
        assert f"version {other}" in str(caught.value) and f"not the deployed {deployed}" in str(caught.value)
        with pytest.raises(CheckFailed) as caught:
            confirm_serving(server, port, other, "another-model", 10)
        assert "HTTP 404 for model 'another-model'" in str(caught.value)
    finally:
        server.stop()



def kubernetes_config(project: Path, extra: str = "") -> Config:
    """The project's config with the Kubernetes target, a pinned image and a registry a cluster can reach."""
    project.write_text(project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY + extra))
    return load_config(project)


@pytest.mark.parametrize("kind", ["deployment", "inferenceservice"])
def test_kubernetes_manifests_have_no_anchors_and_give_resources_and_a_prediction_log(project: Path, kind: str) -> None:
    """Issue 13 item 11: PyYAML wrote `&id001` anchors for the labels shared by selector and template; the
    containers had no resources; the server got no `--log-dir` and the pod no volume for the prediction log."""
    config = kubernetes_config(project, f'kind = "{kind}"\n')
    digest = "sha256:" + "ab" * 32
    text = render_kubernetes(config, "staging", digest)
    assert "&id" not in text and "*id" not in text, text
    docs = list(yaml.safe_load_all(text))
    pod = docs[0]["spec"]["predictor"] if kind == "inferenceservice" else docs[0]["spec"]["template"]["spec"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    (server,) = pod["containers"]
    log_dir = server["command"][server["command"].index("--log-dir") + 1]
    assert {"name": "predictions", "mountPath": log_dir} in server["volumeMounts"]
    assert {"name": "predictions", "emptyDir": {}} in pod["volumes"]

    project.write_text(
        project.read_text().replace(
            "[deploy]\n", '[deploy]\nprediction_log_claim = "demo-predictions"\ncpu_limit = "2"\nmemory_request = "1Gi"\n'
        )
    )
    text = render_kubernetes(load_config(project), "staging", digest)
    docs = list(yaml.safe_load_all(text))
    pod = docs[0]["spec"]["predictor"] if kind == "inferenceservice" else docs[0]["spec"]["template"]["spec"]
    assert {"name": "predictions", "persistentVolumeClaim": {"claimName": "demo-predictions"}} in pod["volumes"]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('cluster_registry = "oci-layout:/home/me/project/.mlci/registry"', "an OCI layout on this machine"),
        ('cluster_registry = "/home/me/registry"', "an OCI layout on this machine"),
        ('cluster_registry = "http://127.0.0.1:5000"', "loopback"),
        ('cluster_registry = "http://localhost:5000"', "loopback"),
        ('cluster_registry = "https://registry.example.com/team"', "has a path"),
        ('cluster_registry = "ghcr.io"', "'https://ghcr.io'"),
        ('cluster_registry = "registry.example.com:5000"', "'https://registry.example.com:5000'"),
        ('image = "ghcr.io/example/mlci-serving:latest"', "not pinned"),
        ('image = "ghcr.io/acme/mlci"', "not pinned"),
        ('memory_limit = "lots"', "memory_limit"),
    ],
)
def test_kubernetes_refuses_what_a_cluster_cannot_reach(project: Path, setting: str, words: str) -> None:
    """A laptop's `oci-layout:` path or a loopback registry cannot be pulled from inside a pod, and a `:latest`
    placeholder image names no particular serving code: each is refused with what to set instead."""
    from mlci.errors import ConfigError

    key = setting.split(" = ")[0]
    text = project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY)
    text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} = ")) + "\n"
    bad = project.with_name("bad.toml")  # beside mlci.toml, which the fixture's teardown still loads
    bad.write_text(text.replace("[deploy]\n", f"[deploy]\n{setting}\n"))
    with pytest.raises(ConfigError) as caught:
        render_kubernetes(load_config(bad), "staging", "sha256:" + "ab" * 32)
    assert words in str(caught.value) and f"[deploy] {key}" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("url", ["https://user:hunter2@registry.example.com", "http://token@registry:5000"])
def test_kubernetes_refuses_credentials_in_the_cluster_registry_url(project: Path, url: str) -> None:
    """The URL goes into pod annotations and the init container's command line: credentials in it would be
    published in the manifest, so it gets the same check as [registry] url, and the secret is not echoed."""
    from mlci.errors import ConfigError

    text = project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("cluster_registry = ")) + "\n"
    bad = project.with_name("bad.toml")
    bad.write_text(text.replace("[deploy]\n", f'[deploy]\ncluster_registry = "{url}"\n'))
    with pytest.raises(ConfigError) as caught:
        render_kubernetes(load_config(bad), "staging", "sha256:" + "ab" * 32)
    message = str(caught.value)
    assert "[deploy] cluster_registry must not carry credentials" in message, message
    assert "hunter2" not in message and "token" not in message and "-registry" in message, message


def test_a_bare_host_is_not_called_an_oci_layout(project: Path) -> None:
    """`ghcr.io` has no scheme; it used to be refused as "an OCI layout on this machine", which it is not."""
    from mlci.errors import ConfigError

    text = project.read_text().replace("[deploy]\n", CLUSTER_DEPLOY)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("cluster_registry = ")) + "\n"
    bad = project.with_name("bad.toml")
    bad.write_text(text.replace("[deploy]\n", '[deploy]\ncluster_registry = "ghcr.io"\n'))
    with pytest.raises(ConfigError) as caught:
        render_kubernetes(load_config(bad), "staging", "sha256:" + "ab" * 32)
    assert "OCI layout" not in str(caught.value) and "no scheme" in str(caught.value), str(caught.value)


FAKE_KUBECTL = r"""#!/bin/sh
# A stand-in for kubectl (no cluster can run here): records each call, keeps what `apply` was given, and
# answers `rollout status` / `wait` with $FAKE_ROLLOUT_RC (a failed rollout when it is not 0).
echo "$*" >> "$FAKE_KUBECTL_LOG"
case "$1" in
  config) echo fake-context ;;
  apply) cat > "$FAKE_KUBECTL_LOG.applied" ;;
  rollout|wait)
    if [ "${FAKE_ROLLOUT_RC:-0}" != 0 ]; then echo 'error: timed out waiting for the condition' >&2; exit "$FAKE_ROLLOUT_RC"; fi
    echo 'deployment "x" successfully rolled out' ;;
esac
"""


def test_kubernetes_deploy_tells_rendered_from_applied_and_waits_for_the_rollout(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 11: `deploy` printed "serving at …/kubernetes.yaml", exit 0, when nothing was applied, and
    never waited for the rollout it started.

    No cluster can run here, so applying is exercised with a fake `kubectl` on PATH (FAKE_KUBECTL: it records
    its argv and can simulate a failed rollout); without it, the autouse fixture's KUBECONFIG names no file.
    """
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    config = kubernetes_config(project, "rollout_timeout_s = 42\n")
    digest = tag_digest(open_registry(config), "staging")
    manifest = config.workspace / "deploy" / "staging" / "kubernetes.yaml"

    monkeypatch.setenv("PATH", "/nonexistent")  # no kubectl at all: rendered only, and said so
    code, out = invoke("deploy", "staging", "-c", str(project))
    assert code == 0 and "serves" not in out and "serving" not in out, out
    assert f"rendered {manifest}" in out and "NOT applied" in out and "kubectl is not on PATH" in out, out
    code, out = invoke("deploy", "staging", "-c", str(project), "--json")
    report = json.loads(out)
    assert report["applied"] is False and report["applied_to"] is None and "kubectl" in report["not_applied"]

    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "kubectl").write_text(FAKE_KUBECTL)
    (shims / "kubectl").chmod(0o755)
    calls = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(calls))
    code, out = invoke("deploy", "staging", "-c", str(project))
    assert code == 0 and "applied to fake-context" in out and "rolled out" in out and digest in out, out
    lines = calls.read_text().splitlines()
    assert lines[1:] == ["apply -f -", "rollout status deployment/breast-cancer-staging -n default --timeout=42s"], lines
    assert Path(f"{calls}.applied").read_text() == manifest.read_text()

    calls.unlink()
    monkeypatch.setenv("FAKE_ROLLOUT_RC", "1")
    code, out = invoke("deploy", "staging", "-c", str(project))
    assert code == 1 and "did not complete within 42 s" in out and "timed out waiting" in out, out
    assert "kubectl rollout undo" in out or "mlci rollback staging" in out, out


def test_status_asks_the_server_what_it_serves(project: Path) -> None:
    """Issue 13 item 7: after `rollback --no-deploy` the tag names the older version while the server still
    serves the newer one; `status` said `staging <tag digest> serving at …` and `--json` `"consistent": true`.
    Its history also printed a literal `None` as the first move's origin."""
    assert invoke("run", "-c", str(project))[0] == 0
    config = load_config(project)
    store = open_registry(config)
    first = tag_digest(store, "candidate")
    assert invoke("promote", "staging", "-c", str(project), "--approve", "--no-deploy")[0] == 0
    project.write_text(project.read_text().replace("C = 1.0", "C = 0.3"))
    assert invoke("run", "-c", str(project))[0] == 0
    second = tag_digest(store, "candidate")
    assert first and second and first != second
    assert invoke("promote", "staging", "-c", str(project), "--approve")[0] == 0  # serves the second
    code, out = invoke("status", "-c", str(project), "--json")
    staging = json.loads(out)["staging"]
    assert staging["served_digest"] == second and staging["consistent"], staging

    assert invoke("rollback", "staging", "-c", str(project), "--no-deploy")[0] == 0
    assert tag_digest(store, "staging") == first
    code, out = invoke("status", "-c", str(project), "--json")
    staging = json.loads(out)["staging"]
    assert code == 0 and staging["digest"] == first and staging["served_digest"] == second, staging
    assert staging["consistent"] is False and staging["history_consistent"] is True
    code, out = invoke("status", "-c", str(project))
    line = next(x for x in out.splitlines() if x.startswith("staging"))
    assert f"tag {first}" in line and f"serves {second}" in line and "not what the tag names" in line, out
    assert "mlci deploy staging" in out
    assert "None" not in out and f"{'(first)':<19} → {first[:19]}" in out, out

    invoke("stop", "staging", "-c", str(project))
    code, out = invoke("status", "-c", str(project), "--json")
    staging = json.loads(out)["staging"]
    assert staging["served_digest"] is None and staging["local_server"] is None and staging["consistent"]


def test_stop_says_when_an_environment_is_already_stopped(project: Path) -> None:
    """Issue 13 item 12: `mlci stop` on a stopped environment says so, and exits 0 (the README's release
    exit codes: 0 unless a check failed or the input is bad)."""
    assert invoke("stop", "staging", "-c", str(project)) == (0, "staging: already stopped (no local server was running)\n")
    assert invoke("run", "-c", str(project))[0] == 0
    assert invoke("promote", "staging", "-c", str(project), "--approve")[0] == 0
    pid = running(load_config(project), "staging")["pid"]  # type: ignore[index]
    assert invoke("stop", "staging", "-c", str(project)) == (0, f"staging: stopped its server (pid {pid})\n")
    assert invoke("stop", "staging", "-c", str(project)) == (0, "staging: already stopped (no local server was running)\n")


def test_servers_a_portable_run_starts_get_the_users_numerics_not_the_builds(project: Path) -> None:
    """Portable numerics (one thread, a baseline OpenBLAS kernel and numpy dispatch) are for building.
    The servers `mlci run` starts (continuous deployment's staging server) serve with the environment
    the user gave mlci, as the same `mlci serve` does anywhere else: a user's own OMP_NUM_THREADS comes
    back, and none of the pins mlci set is left behind."""
    from tests.simulated_cpus import VARIABLES

    project.write_text(project.read_text().replace("[deploy]\n", "[deploy]\ncontinuous_deployment = true\n", 1))
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | {"OMP_NUM_THREADS": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "mlci", "run", "-c", str(project)],
        capture_output=True, text=True, timeout=300, start_new_session=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = load_config(project)
    pids = servers_under(config.workspace / "deploy" / "staging")
    assert len(pids) == 1, pids
    served = dict(
        item.split("=", 1) for item in Path(f"/proc/{pids[0]}/environ").read_text().split("\0") if "=" in item
    )
    assert served.get("OMP_NUM_THREADS") == "3"
    left = {k: served[k] for k in VARIABLES if k in served and k != "OMP_NUM_THREADS"}
    assert left == {}, f"the build's numerics leaked into the server: {left}"
