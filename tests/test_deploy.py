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
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
import yaml
from click.testing import CliRunner

from mlci.cli import cli
from mlci.config import load_config
from mlci.pipeline import open_registry
from mlci.registry import push_artifact, tag_digest
from mlci.release.deploy import running, stop
from mlci.release.promote import history, store_verdict
from mlci.release.smoke import free_port

from .conftest import EXAMPLE, reseal


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


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
    code, out = invoke("run", "-c", str(project))
    assert code == 1 and "The gate failed" in out and "max log_loss" in out
    config = load_config(project)
    store = open_registry(config)
    assert tag_digest(store, "candidate") is not None
    assert tag_digest(store, "staging") is None and tag_digest(store, "production") is None
    code, out = invoke("promote", "staging", "-c", str(project), "--approve")
    assert code == 1 and "failed the gate (max log_loss)" in out


def test_kubernetes_target_renders_manifests_naming_the_digest(project: Path) -> None:
    project.write_text(project.read_text().replace("[deploy]\n", '[deploy]\ntarget = "kubernetes"\nimage = "ghcr.io/acme/mlci:1.0"\n'))
    assert invoke("run", "-c", str(project))[0] == 0
    code, out = invoke("promote", "staging", "-c", str(project), "--approve", "--json")
    assert code == 0, out
    deployed = json.loads(out)["deployed"]
    docs = list(yaml.safe_load_all(Path(deployed["manifest"]).read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    assert docs[0]["metadata"]["annotations"]["mlci.dev/digest"] == deployed["digest"]
    pull = docs[0]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert pull[:3] == ["mlci", "pull", deployed["digest"]] and pull[pull.index("--repository") + 1] == "breast-cancer"
    assert deployed["applied_to"] is None  # no kubectl context here: render only
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
    project.write_text(project.read_text().replace("[deploy]\n", '[deploy]\ntarget = "kubernetes"\n'))
    code, out = invoke("deploy", "staging", "-c", str(project), "--json")
    assert code == 0 and json.loads(out)["applied_to"] == "test-context", out

    seen = {"server": server_env.replace("\0", "\n")} | {p.name: p.read_text() for p in dumps.iterdir()}
    assert any(name.startswith("git.") for name in seen) and any(name.startswith("kubectl.") for name in seen)
    leaked = [name for name, text in seen.items() if "MLCI_REGISTRY_" in text or secret in text]
    assert leaked == [], f"registry credentials reached {leaked}"
