"""The executor's own semantics, each as the engine defines it (dagger/dagger v0.21.8, files cited).

Graphs built with the real SDK against the FakeEngine, run by the executor (tests/dagger/executor): the
behaviour the module's executed tests rely on, checked on small graphs first.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import dagger
import pytest
from dagger import dag

pytestmark = pytest.mark.executor

IMAGE = "python:3.11-slim-bookworm"


def run(fn: Any) -> Any:
    return anyio.run(fn)


def test_exec_outputs_layers_and_exit_codes(executed: Any) -> None:
    """core/container_exec.go: each exec adds a layer; expect decides which exit codes are errors
    (core/exec_error.go: EXEC_ERROR with cmd, exit code, stdout, stderr)."""

    async def go() -> None:
        base = dag.container().from_(IMAGE).with_new_file("/app/in.txt", "hello").with_workdir("/app")
        ran = base.with_exec(["sh", "-c", "cat in.txt; rm /etc/hostname; echo made > out.txt"])
        assert await ran.stdout() == "hello"
        assert await ran.file("out.txt").contents() == "made\n"
        gone = ran.with_exec(["sh", "-c", "test -e /etc/hostname && echo there || echo gone"])
        assert await gone.stdout() == "gone\n"  # a deletion in a layer hides the lower file (a whiteout)
        with pytest.raises(dagger.ExecError) as info:
            await base.with_exec(["sh", "-c", "echo out; echo err >&2; exit 3"]).sync()
        assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (3, "out\n", "err\n")
        removed = ran.without_directory("/app").without_file("/etc/os-release")
        assert await removed.with_exec(["sh", "-c", "ls /app /etc/os-release 2>&1 | wc -l"]).stdout() == "2\n"
        anyway = base.with_exec(["sh", "-c", "exit 4"], expect=dagger.ReturnType.ANY)
        assert await anyway.exit_code() == 4
        with pytest.raises(dagger.ExecError):
            await base.with_exec(["true"], expect=dagger.ReturnType.FAILURE).sync()
        with pytest.raises(dagger.QueryError, match="no such file"):
            await base.file("/app/missing").contents()

    run(go)


def test_directory_mount_changes_stay_with_that_container_only(executed: Any) -> None:
    """core/container_exec.go (mountOutputBindings): a writable directory mount's changes become the mount's
    new contents in the resulting container; the source directory and any new container from it see none."""

    async def go() -> None:
        src = dag.directory().with_new_file("f", "1")
        ctr = dag.container().from_(IMAGE).with_mounted_directory("/m", src)
        wrote = ctr.with_exec(["sh", "-c", "echo 2 > /m/g"])
        assert await wrote.directory("/m").entries() == ["f", "g"]
        assert await wrote.with_exec(["cat", "/m/g"]).stdout() == "2\n"
        assert await src.entries() == ["f"]
        assert await ctr.with_exec(["ls", "/m"]).stdout() == "f\n"
        # not in the image: the root filesystem below the mount has no /m/g
        assert (
            await wrote.without_mount("/m").with_exec(["sh", "-c", "ls /m 2>/dev/null | wc -l"]).stdout()
            == "0\n"
        )

    run(go)


def test_cache_volumes_persist_across_containers(executed: Any) -> None:
    """core/cache.go: a cache volume is shared by every container mounting it and outlives them."""
    key = f"semantics-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        vol = dag.cache_volume(key)
        a = (
            dag.container()
            .from_(IMAGE)
            .with_mounted_cache("/c", vol)
            .with_exec(["sh", "-c", "echo a >> /c/log"])
        )
        await a.sync()
        b = dag.container().from_(IMAGE).with_env_variable("X", "b").with_mounted_cache("/c", vol)
        assert await b.with_exec(["cat", "/c/log"]).stdout() == "a\n"

    run(go)


def test_secrets_reach_the_process_only_and_are_scrubbed(executed: Any, tmp_path: Path) -> None:
    """engine/engineutil/secret_scrub.go: secret values in an exec's output become ***; the value is in the
    process's environment or an in-memory file, never in a layer or the executor's store."""
    value = f"s3cret-{uuid.uuid4().hex}"

    async def go() -> None:
        secret = dag.set_secret("token", value)
        ctr = (
            dag.container().from_(IMAGE)
            .with_secret_variable("TOKEN", secret)
            .with_mounted_secret("/run/token", secret)
        )  # fmt: skip
        out = await ctr.with_exec(
            ["sh", "-c", 'echo "$TOKEN"; cat /run/token; test "$TOKEN" = "$(cat /run/token)" && echo same']
        ).stdout()
        assert out == "***\n***same\n"

    run(go)
    found = subprocess.run(
        ["grep", "-rlF", value, str(executed.work)], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", f"the secret was written to disk: {found.stdout}"


def test_services_are_reached_by_alias_in_their_own_network(executed: Any) -> None:
    """core/container.go WithServiceBinding + core/service.go: the service starts before the exec, is
    health-checked on its exposed ports, reached by alias; the client's own 127.0.0.1 is not the service's."""

    async def go() -> None:
        server = (
            dag.container().from_(IMAGE).with_workdir("/srv").with_new_file("/srv/index.html", "from the service")
            .with_exposed_port(8000)
            .as_service(args=["python", "-m", "http.server", "8000"])
        )  # fmt: skip
        client = dag.container().from_(IMAGE).with_service_binding("web", server)
        fetch = "import urllib.request as u; print(u.urlopen('http://web:8000/index.html', timeout=10).read().decode())"
        assert await client.with_exec(["python", "-c", fetch]).stdout() == "from the service\n"
        local = "import socket; s=socket.socket(); print(s.connect_ex(('127.0.0.1', 8000)) != 0)"
        assert await client.with_exec(["python", "-c", local]).stdout() == "True\n"

    run(go)


def test_a_service_that_exits_fails_the_client(executed: Any) -> None:
    """core/services.go StartBindings: a service that exits before its health check fails the exec."""

    async def go() -> None:
        broken = (
            dag.container()
            .from_(IMAGE)
            .with_exposed_port(8000)
            .as_service(args=["sh", "-c", "echo nope >&2; exit 7"])
        )
        with pytest.raises(dagger.QueryError, match="nope"):
            await dag.container().from_(IMAGE).with_service_binding("web", broken).with_exec(["true"]).sync()

    run(go)


def test_registry_service_publish_and_pull(executed: Any) -> None:
    """core/container.go Publish with registryService: the image goes to the service (registry:2, here
    Debian's docker-registry with the image's config); a container from that address runs it back."""
    key = f"registry-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        registry = (
            dag.container().from_("registry:2")
            .with_mounted_cache("/var/lib/registry", dag.cache_volume(key))
            .with_exposed_port(5000)
            .as_service(use_entrypoint=True)
        )  # fmt: skip
        image = (
            dag.container().from_(IMAGE).with_new_file("/hello.txt", "published")
            .with_env_variable("GREETING", "hi").with_entrypoint(["cat", "/hello.txt"])
            .with_label("org.opencontainers.image.title", "t")
        )  # fmt: skip
        ref = await image.publish("registry:5000/acme/hello:v1", registry_service=registry)
        assert ref.startswith("registry:5000/acme/hello:v1@sha256:")
        probe = "import urllib.request as u; print(u.urlopen('http://registry:5000/v2/acme/hello/tags/list', timeout=10).read().decode())"
        listed = (
            await dag.container()
            .from_(IMAGE)
            .with_service_binding("registry", registry)
            .with_exec(["python", "-c", probe])
            .stdout()
        )
        assert '"tags":["v1"]' in listed

    run(go)


def test_a_service_is_stopped_with_sigterm_and_time_to_finish(executed: Any) -> None:
    """core/services.go stopGraceful: a service gets SIGTERM and a grace period before SIGKILL, so a
    server can finish what it holds (mlci serve closes its prediction log): its handler's write lands."""
    key = f"graceful-{uuid.uuid4().hex[:8]}"
    server = (
        "import signal, socket, sys, time\n"
        "def done(*_):\n"
        "    time.sleep(1.0)\n"
        "    open('/c/stopped', 'w').write('clean')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, done)\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8000)); s.listen()\n"
        "while True:\n"
        "    c, _ = s.accept(); c.close()\n"
    )

    async def go() -> None:
        vol = dag.cache_volume(key)
        svc = (
            dag.container().from_(IMAGE).with_mounted_cache("/c", vol).with_new_file("/srv.py", server)
            .with_exposed_port(8000).as_service(args=["python", "/srv.py"])
        )  # fmt: skip
        await dag.container().from_(IMAGE).with_service_binding("svc", svc).with_exec(["true"]).sync()
        check = dag.container().from_(IMAGE).with_env_variable("N", key).with_mounted_cache("/c", vol)
        assert await check.with_exec(["cat", "/c/stopped"]).stdout() == "clean"

    run(go)


def test_a_container_of_another_platform_is_refused_not_run_as_this_one(executed: Any) -> None:
    """core/schema/container.go `container(platform:)`: the container runs as that platform, emulated where
    the engine's host is another (core/platform.go; QEMU binfmt in the engine image). The executor cannot
    emulate: running an arm64 container as x86-64 would pass a test a real engine might fail, so another
    platform is refused, and this machine's own runs (what `train`'s default linux/amd64 is here)."""
    from .executor.oci import machine_arch

    async def go() -> None:
        uname = f"{__import__('platform').machine()}\n"
        for spelling in (f"linux/{machine_arch()}", f"linux/{__import__('platform').machine()}"):  # amd64, x86_64
            native = dag.container(platform=dagger.Platform(spelling)).from_(IMAGE)
            assert await native.with_exec(["uname", "-m"]).stdout() == uname
        other = "linux/arm64" if machine_arch() != "arm64" else "linux/amd64"
        foreign = dag.container(platform=dagger.Platform(other)).from_(IMAGE)
        with pytest.raises(dagger.QueryError, match=f"{other}.*only this machine's platform.*real engine"):
            await foreign.with_exec(["uname", "-m"]).stdout()

    run(go)
