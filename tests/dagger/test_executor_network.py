"""The executor's service network: one network namespace per service, reached by alias, as the engine does.

Engine files followed (dagger v0.21.8): core/service.go startContainer (own netns, health check, the error
when a service exits first), core/healthcheck.go portHealthChecker (dial every exposed port), core/services.go
StartBindings/stopGraceful (start before the client, SIGTERM then SIGKILL after), core/container.go
WithServiceBinding and AsService, core/container_exec.go (HostAliases), engine/engineutil/executor_spec.go
and internal/buildkit/executor/oci/hosts.go (the hosts file). Real processes and real namespaces: needs root.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dagger.executor import network
from tests.dagger.executor.network import (
    Namespace,
    NetnsError,
    NoServiceCommand,
    ServiceFailed,
    cleanup_stale,
    connect,
    hosts_file,
    new_namespace,
    service_command,
    start_service,
)

pytestmark = pytest.mark.executor

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


@pytest.fixture
def make_ns() -> Iterator[Callable[[], Namespace]]:
    """Create namespaces for one test; close every one afterwards."""
    made: list[Namespace] = []

    def make() -> Namespace:
        made.append(new_namespace())
        return made[-1]

    yield make
    for ns in made:
        ns.close()


def free_port() -> int:
    """A TCP port nothing on the host's loopback listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_server(root: Path, port: int) -> list[str]:
    """argv for Python's http.server serving `root` on every address of its namespace."""
    return [sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", str(root)]


def refused(ip: str, port: int) -> bool:
    """Whether a TCP connection to ip:port fails."""
    try:
        with socket.create_connection((ip, port), timeout=1):
            return False
    except OSError:
        return True


def link_exists(name: str) -> bool:
    """Whether the host has a network interface called `name`."""
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def test_service_is_reached_at_its_namespace_ip_and_not_on_host_loopback(make_ns, tmp_path):
    (tmp_path / "hello.txt").write_text("from the namespace\n")
    port = free_port()
    ns = make_ns()
    svc = start_service(http_server(tmp_path, port), env=ENV, ns=ns, ports=[port])
    try:
        ipaddress.ip_address(ns.ip)  # a real address in the plan
        assert ipaddress.ip_address(ns.ip) in network.NETWORK
        with urllib.request.urlopen(f"http://{ns.ip}:{port}/hello.txt", timeout=5) as resp:
            assert resp.read() == b"from the namespace\n"
        assert refused("127.0.0.1", port), "the service leaked onto the host's loopback"
    finally:
        svc.stop()
    assert "GET /hello.txt" in svc.stderr  # http.server logs requests to stderr; stop() collected it


def test_the_host_reaches_a_service_over_the_veth_without_forwarding(make_ns, tmp_path):
    """The host is an endpoint on the /30, not a router: forwarding is not involved (it is 0 here)."""
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    ns = make_ns()
    route = subprocess.run(["ip", "route", "get", ns.ip], capture_output=True, text=True, check=True).stdout
    assert f"dev {ns.host_iface}" in route and "via" not in route, route  # directly connected
    svc = start_service(http_server(tmp_path, 8000), env=ENV, ns=ns, ports=[8000])
    try:
        assert not refused(ns.ip, 8000), f"unreachable with net.ipv4.ip_forward={forwarding}"
    finally:
        svc.stop()


def test_two_services_in_their_own_namespaces_share_a_port(make_ns, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "who").write_text("a")
    (second / "who").write_text("b")
    ns_a, ns_b = make_ns(), make_ns()
    assert ns_a.ip != ns_b.ip and ns_a.name != ns_b.name
    svc_a = start_service(http_server(first, 8000), env=ENV, ns=ns_a, ports=[8000])
    svc_b = start_service(http_server(second, 8000), env=ENV, ns=ns_b, ports=[8000])
    try:
        for ns, expected in ((ns_a, b"a"), (ns_b, b"b")):
            with urllib.request.urlopen(f"http://{ns.ip}:8000/who", timeout=5) as resp:
                assert resp.read() == expected
    finally:
        svc_a.stop()
        svc_b.stop()


def test_a_service_that_exits_at_once_fails_quoting_its_stderr(make_ns):
    argv = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('boom: model.joblib missing\\n'); sys.exit(3)",
    ]
    start = time.monotonic()
    with pytest.raises(ServiceFailed) as info:
        start_service(argv, env=ENV, ns=make_ns(), ports=[8000], timeout=30)
    assert time.monotonic() - start < 10, "an early exit must not wait for the timeout"
    message = str(info.value)
    assert "boom: model.joblib missing" in message
    assert "exit code: 3" in message and "before its health check" in message
    assert info.value.returncode == 3 and "boom" in info.value.stderr


def test_a_service_that_exits_zero_before_its_port_opens_fails_like_the_engine(make_ns):
    argv = [sys.executable, "-c", "print('done already')"]
    with pytest.raises(ServiceFailed, match="exited before healthcheck") as info:
        start_service(argv, env=ENV, ns=make_ns(), ports=[8000], timeout=30)
    assert "done already" in str(info.value) and info.value.returncode == 0


def test_a_service_that_never_opens_its_port_times_out_clearly_and_is_stopped(make_ns, tmp_path):
    pidfile = tmp_path / "pid"
    argv = ["sh", "-c", f"echo $$ > {pidfile}; echo listening soon >&2; exec sleep 300"]
    ns = make_ns()
    with pytest.raises(ServiceFailed) as info:
        start_service(argv, env=ENV, ns=ns, ports=[8000], timeout=1.5)
    message = str(info.value)
    assert f"did not accept TCP on {ns.ip}:8000 within 1.5s" in message
    assert "listening soon" in message  # the output tail is quoted
    assert not Path(f"/proc/{pidfile.read_text().strip()}").exists(), "the timed-out service still runs"


def test_a_service_without_ports_is_healthy_at_once(make_ns):
    """core/healthcheck.go: no exposed ports → the health check passes without dialing."""
    svc = start_service(["sleep", "300"], env=ENV, ns=make_ns(), ports=[], timeout=5)
    assert svc.alive()
    svc.stop()
    assert svc.returncode == -signal.SIGTERM


def test_stop_leaves_no_process_and_close_leaves_no_namespace(make_ns, tmp_path):
    child = tmp_path / "child"
    # a shell that starts a background child, then becomes the server: both are in the service's group
    argv = ["sh", "-c", f"sleep 300 & echo $! > {child}; exec {' '.join(http_server(tmp_path, 8000))}"]
    ns = make_ns()
    svc = start_service(argv, env=ENV, ns=ns, ports=[8000])
    child_pid = int(child.read_text())
    assert Path(f"/proc/{child_pid}").exists()
    svc.stop()
    assert svc.returncode is not None and not svc.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(svc.proc.pid, 0)
    assert not Path(f"/proc/{child_pid}").exists(), "the service's child outlived stop()"
    ns.close()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not link_exists(ns.host_iface)
    ns.close()  # idempotent


def test_stop_kills_a_service_that_ignores_sigterm(make_ns, tmp_path):
    ready = tmp_path / "ready"
    argv = ["sh", "-c", f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done"]
    svc = start_service(argv, env=ENV, ns=make_ns(), ports=[])
    while not ready.exists():  # the trap is set before stop() signals
        time.sleep(0.02)
    start = time.monotonic()
    svc.stop(grace=0.5)
    assert svc.returncode == -signal.SIGKILL
    assert time.monotonic() - start < 5


def test_a_stale_namespace_of_a_dead_pid_is_cleaned(make_ns):
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not network._pid_alive(dead.pid)
    with network._allocation_lock():
        slot = max(network._used_slots() | {0}) + 1
        host_ip, ns_ip, plen = network.slot_addresses(slot)
        stale = Namespace(name=f"mlci-{dead.pid}-{slot}", slot=slot, ip=ns_ip, host_ip=host_ip)
        network._ip("netns", "add", stale.name)
        network._wire(stale, plen)  # a crashed run leaves the namespace and its veth
    mine = make_ns()  # alive: must survive the clean-up that new_namespace runs
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert stale.name not in listing, listing
    assert not link_exists(stale.host_iface)
    assert mine.name in listing and mine.name not in cleanup_stale()


def test_names_carry_the_creating_pid_and_slots_do_not_collide(make_ns):
    namespaces = [make_ns() for _ in range(3)]
    assert {ns.name.split("-")[1] for ns in namespaces} == {str(os.getpid())}
    assert len({ns.slot for ns in namespaces}) == 3 and len({ns.ip for ns in namespaces}) == 3


def test_concurrent_processes_allocate_distinct_namespaces():
    """Several pytest processes at once: the flock keeps their slots apart."""
    code = (
        "from tests.dagger.executor.network import new_namespace; import sys, time\n"
        "ns = new_namespace(); print(ns.name, ns.ip, flush=True); sys.stdin.read(); ns.close()"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        lines = [p.stdout.readline().split() for p in procs]
    finally:
        for p in procs:
            p.communicate("")
    assert all(len(line) == 2 for line in lines), lines
    assert len({ip for _, ip in lines}) == 4, lines
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name, _ in lines), "a child did not close its namespace"


def test_a_client_sandbox_resolves_the_alias_through_its_hosts_file(make_ns, tmp_path):
    """The exec sandbox stays in the host network; /etc/hosts maps the binding alias to the service."""
    (tmp_path / "v1").write_text("ok")
    ns = make_ns()
    hosts = hosts_file({"model": ns.ip}, tmp_path / "hosts")
    svc = start_service(http_server(tmp_path, 8080), env=ENV, ns=ns, ports=[8080])
    client = "import urllib.request; print(urllib.request.urlopen('http://model:8080/v1', timeout=5).read().decode())"
    try:
        out = subprocess.run(
            [
                BWRAP,
                "--ro-bind",
                "/",
                "/",
                "--ro-bind",
                str(hosts),
                "/etc/hosts",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                sys.executable,
                "-c",
                client,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        svc.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_hosts_file_has_the_engine_layout(tmp_path):
    path = hosts_file({"model": "10.213.0.2", "db": "10.213.0.6"}, tmp_path / "hosts")
    assert path.read_text() == (
        "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "\n10.213.0.2\tmodel\n\n10.213.0.6\tdb\n"
    )


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"not a host": "10.213.0.2"}, "is not a hostname"),
        ({"-model": "10.213.0.2"}, "is not a hostname"),
        ({"model": "model.local"}, "is not an IP address"),
    ],
)
def test_hosts_file_rejects_bad_input(tmp_path, aliases, message):
    with pytest.raises(ValueError, match=message):
        hosts_file(aliases, tmp_path / "hosts")


def test_a_client_in_its_own_namespace_reaches_a_service_over_connect(make_ns, tmp_path):
    (tmp_path / "x").write_text("linked")
    client, server = make_ns(), make_ns()
    for ns in (client, server):  # endpoints only: no forwarding anywhere
        subprocess.run([*ns.prefix(), "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    svc = start_service(http_server(tmp_path, 8000), env=ENV, ns=server, ports=[8000])
    fetch = [
        *client.prefix(),
        sys.executable,
        "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://{server.ip}:8000/x', timeout=3).read().decode())",
    ]
    try:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0":
            before = subprocess.run(fetch, capture_output=True, text=True, timeout=30, check=False)
            assert before.returncode != 0, "reachable without a link: the host forwards"
        connect(client, server)
        after = subprocess.run(fetch, capture_output=True, text=True, timeout=30, check=False)
    finally:
        svc.stop()
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "linked"


def test_an_address_plan_that_clashes_with_a_route_is_refused(monkeypatch):
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    taken = next(line.split()[0] for line in routes.splitlines() if line and not line.startswith("default"))
    monkeypatch.setattr(network, "NETWORK", ipaddress.IPv4Network(taken, strict=False))
    with pytest.raises(NetnsError, match="MLCI_EXECUTOR_NET"):
        new_namespace()


def test_start_service_rejects_bad_input(make_ns):
    ns = make_ns()
    with pytest.raises(ValueError, match="empty argv"):
        start_service([], env=ENV, ns=ns, ports=[80])
    with pytest.raises(ValueError, match="1…65535"):
        start_service(["true"], env=ENV, ns=ns, ports=[70000])
    ns.close()
    with pytest.raises(ValueError, match="is closed"):
        start_service(["true"], env=ENV, ns=ns, ports=[80])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # args replace the default args; no entrypoint unless asked
        ({"entrypoint": ["/ep"], "cmd": ["serve"], "args": ["run"]}, ["run"]),
        ({"entrypoint": ["/ep"], "cmd": ["serve"], "args": ["run"], "use_entrypoint": True}, ["/ep", "run"]),
        # no args: the image's entrypoint + Cmd, unless withDefaultArgs set them (then only if asked)
        ({"entrypoint": ["/ep"], "cmd": ["serve"], "args": []}, ["/ep", "serve"]),
        ({"entrypoint": ["/ep"], "cmd": ["serve"], "args": [], "default_args_set": True}, ["serve"]),
        (
            {
                "entrypoint": ["/ep"],
                "cmd": ["serve"],
                "args": [],
                "default_args_set": True,
                "use_entrypoint": True,
            },
            ["/ep", "serve"],
        ),
        ({"entrypoint": [], "cmd": ["serve"], "args": [], "use_entrypoint": True}, ["serve"]),
        ({"entrypoint": ["/ep"], "cmd": [], "args": []}, ["/ep"]),
    ],
)
def test_service_command_follows_as_service(kwargs, expected):
    assert service_command(**kwargs) == expected


def test_service_command_without_any_command_fails_like_the_engine():
    with pytest.raises(NoServiceCommand, match="no service command has been set"):
        service_command(entrypoint=[], cmd=[], args=[])
