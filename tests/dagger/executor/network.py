"""Services in their own network namespaces, reachable by alias, the way the Dagger engine runs them.

What the engine does (dagger v0.21.8; files in /work/.mirror/dagger+dagger/repo) and what this mirrors:

- Own network: every service container gets its own network namespace on the engine's CNI bridge
  (engine/engineutil/executor_spec.go `provider.New`; network/consts.go DefaultCIDR 10.87.0.0/16). Its
  hostname is network.HostHash(digest) plus the session domain "<hash>.dagger.local" (core/service.go
  Hostname and startContainer, network/hosts.go), served by the engine's DNS. Here: one `ip netns` per
  service with a veth pair to the host (`Namespace`); two services can listen on the same port.
- Aliases: `withServiceBinding(alias, svc)` records (hostname, [alias]) (core/container.go
  WithServiceBinding); core/container_exec.go copies them into execMD.HostAliases; executor_spec.go looks
  each hostname up through the search domains and appends "\\n<ip>\\t<alias>\\n" to a copy of the base hosts
  file (internal/buildkit/executor/oci/hosts.go initHostsFile), and appends the session domain to
  resolv.conf's `search` line. Here: `hosts_file` writes that file with alias → `Namespace.ip`.
- Health check before the client runs: core/container_exec.go calls `svcs.StartBindings` before
  `engineClient.Run`; StartBindings starts each binding and returns once it is healthy. Without an image
  HEALTHCHECK, core/healthcheck.go portHealthChecker dials every exposed port (those without
  ExperimentalSkipHealthcheck) at the service's hostname, 1 s dial timeout, exponential backoff from
  100 ms; no exposed ports → healthy at once. Here: `start_service` dials every port at `ns.ip`.
- Exits early: core/service.go startContainer returns an ExecError ("exit code: N", with the stdout and
  stderr captured while starting) or "service exited before healthcheck" for exit 0; core/services.go
  StartBindings wraps it as "start <hostname> ([alias]): …", the error the client's withExec gets. A bound
  service that exits while the client runs cancels it with "bound service <hostname> ([alias]) exited"
  (core/container_exec.go serviceBindingExitError). Here: `ServiceFailed` with the output tail.
- Stopped after: the client's `defer detach()` detaches after DetachGracePeriod (10 s), then stopGraceful
  sends SIGTERM and SIGKILL after TerminateGracePeriod (10 s) (core/services.go). Here: `Running.stop`.
- asService(args, useEntrypoint): core/container.go AsService; here `service_command`.

Address plan: 10.213.0.0/16 (MLCI_EXECUTOR_NET overrides it), one /30 per namespace: slot s holds
base = net + 4·s, host side base+1 (interface mlci<s>), namespace side base+2 (interface eth0). Clients
run in the host network namespace (so pip reaches PyPI) and reach a service over the directly connected
/30 route; the host is an endpoint, not a router, so net.ipv4.ip_forward stays as it is. A client (or a
service that binds another service) inside its own namespace reaches a service over `connect`, a direct
veth between the two namespaces with /32 routes on both sides; again no forwarding.

Namespaces are named mlci-<pid>-<slot>; slots are taken under an flock on LOCK_FILE, so several pytest
processes can allocate at once; `cleanup_stale` removes those whose creating pid is dead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
NETWORK = ipaddress.IPv4Network(os.environ.get("MLCI_EXECUTOR_NET", "10.213.0.0/16"))
LOCK_FILE = Path(os.environ.get("MLCI_EXECUTOR_NETNS_LOCK", "/run/mlci-executor-netns.lock"))
NAME_RE = re.compile(r"^mlci-(\d+)-(\d+)$")
HOST_IFACE = "mlci{slot}"  # host side of the veth; ≤ 15 characters for every slot of a /16
NS_IFACE = "eth0"  # namespace side, as in the engine's CNI containers
TERMINATE_GRACE = 10.0  # core/services.go TerminateGracePeriod
TAIL = 2000  # characters of output quoted in errors

_local = threading.Lock()  # slot allocation within this process (the flock covers other processes)
_open: dict[str, Namespace] = {}  # namespaces this process created and has not closed


class NetnsError(RuntimeError):
    """An `ip` command for the executor's namespaces failed, or the address plan cannot be used."""


class ServiceFailed(RuntimeError):
    """A service exited, or never opened its ports, before its health check passed."""

    def __init__(self, message: str, *, argv: list[str], returncode: int | None, stdout: str, stderr: str):
        super().__init__(message)
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise NetnsError with its stderr when it fails and `check` is set."""
    proc = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_names() -> list[str]:
    """The names `ip netns list` shows (every namespace on the machine, not only ours)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def slot_addresses(slot: int) -> tuple[str, str, int]:
    """(host-side ip, namespace-side ip, prefix length) of `slot`'s /30 in NETWORK."""
    count = NETWORK.num_addresses // 4
    if not 0 <= slot < count:
        raise NetnsError(f"slot {slot} is outside {NETWORK}, which has {count} /30 slots (0…{count - 1})")
    base = NETWORK.network_address + 4 * slot
    return str(base + 1), str(base + 2), 30


@dataclass
class Namespace:
    """One `ip netns` with a veth pair to the host; created and torn down by the test session."""

    name: str
    slot: int
    ip: str  # the address other sandboxes reach it at
    host_ip: str  # the host side of the veth
    closed: bool = field(default=False, repr=False)

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command inside this namespace."""
        return [IP, "netns", "exec", self.name]

    @property
    def host_iface(self) -> str:
        """The host-side interface name of this namespace's veth."""
        return HOST_IFACE.format(slot=self.slot)

    def close(self) -> None:
        """Delete the veth pair and the namespace (idempotent); processes still inside keep it alive."""
        if self.closed:
            return
        _remove(self.name, self.slot)
        self.closed = True
        _open.pop(self.name, None)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove(name: str, slot: int) -> None:
    """Delete the host end of `slot`'s veth (which deletes its peer) and the namespace `name`."""
    _ip("link", "del", HOST_IFACE.format(slot=slot), check=False)
    if name in netns_names():
        _ip("netns", "del", name)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as alive until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove the mlci-<pid>-<slot> namespaces whose creating pid is dead; return their names."""
    removed = []
    for name in netns_names():
        match = NAME_RE.match(name)
        if match and not _pid_alive(int(match[1])):
            _remove(name, int(match[2]))
            removed.append(name)
    return removed


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Hold the process-local lock and the machine-wide flock that serialise slot allocation."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with _local, LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _used_slots() -> set[int]:
    """Slots held by a namespace name or a lingering host-side interface (deletion is asynchronous)."""
    used = {int(m[2]) for name in netns_names() if (m := NAME_RE.match(name))}
    links = _ip("-o", "link", "show").stdout
    used |= {int(m[1]) for m in re.finditer(r"^\d+: mlci(\d+)[@:]", links, re.MULTILINE)}
    return used


def check_address_plan() -> None:
    """Raise NetnsError if a route not made by this module overlaps NETWORK (another network uses it)."""
    routes = json.loads(_ip("-4", "-j", "route", "show", "table", "all").stdout or "[]")
    for route in routes:
        dst, dev = route.get("dst", "default"), route.get("dev", "")
        if dst == "default" or re.fullmatch(r"mlci\d+", dev):
            continue
        try:
            dest = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if dest.overlaps(NETWORK):
            raise NetnsError(
                f"the executor's address range {NETWORK} overlaps the route to {dst} on {dev or '?'}; "
                "set MLCI_EXECUTOR_NET to a free /16 (for example 10.214.0.0/16)"
            )


def new_namespace() -> Namespace:
    """Create a unique namespace: lo up, a veth to the host up, default route via the host side."""
    check_address_plan()
    with _allocation_lock():
        cleanup_stale()
        used = _used_slots()
        slot = next((s for s in range(NETWORK.num_addresses // 4) if s not in used), None)
        if slot is None:
            raise NetnsError(f"all {NETWORK.num_addresses // 4} /30 slots of {NETWORK} are in use")
        host_ip, ns_ip, plen = slot_addresses(slot)
        name = f"mlci-{os.getpid()}-{slot}"
        _ip("netns", "add", name)
        ns = Namespace(name=name, slot=slot, ip=ns_ip, host_ip=host_ip)
        _open[name] = ns
    try:
        _wire(ns, plen)
    except BaseException:
        ns.close()
        raise
    return ns


def _wire(ns: Namespace, plen: int) -> None:
    """Create the veth pair with its peer inside `ns`, address both ends, bring them up, route."""
    _ip("link", "add", ns.host_iface, "type", "veth", "peer", "name", NS_IFACE, "netns", ns.name)
    _ip("addr", "add", f"{ns.host_ip}/{plen}", "dev", ns.host_iface)
    _ip("link", "set", ns.host_iface, "up")
    inside = ["-n", ns.name]
    _ip(*inside, "link", "set", "lo", "up")
    _ip(*inside, "addr", "add", f"{ns.ip}/{plen}", "dev", NS_IFACE)
    _ip(*inside, "link", "set", NS_IFACE, "up")
    _ip(*inside, "route", "add", "default", "via", ns.host_ip)


def connect(client: Namespace, service: Namespace) -> None:
    """Let a process in `client`'s namespace reach `service.ip` over a direct veth (no forwarding).

    Each end gets a /32 route to the other namespace's address with that address as source, so the
    service answers on the same link; ARP works because a namespace answers for any of its addresses.
    """
    to_service, to_client = f"to{service.slot}", f"to{client.slot}"
    link = ["link", "add", to_service, "netns", client.name, "type", "veth"]
    _ip(*link, "peer", "name", to_client, "netns", service.name)
    for ns, iface, peer in ((client, to_service, service), (service, to_client, client)):
        _ip("-n", ns.name, "link", "set", iface, "up")
        _ip("-n", ns.name, "route", "add", f"{peer.ip}/32", "dev", iface, "src", ns.ip)


@atexit.register
def _close_open() -> None:
    """Close the namespaces this process still holds when it exits normally."""
    for ns in list(_open.values()):
        with contextlib.suppress(Exception):
            ns.close()


HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def hosts_file(aliases: dict[str, str], path: Path, hostname: str = "buildkitsandbox") -> Path:
    """Write an /etc/hosts with the engine's localhost lines and one "ip<TAB>alias" line per alias.

    The layout is the engine's: oci/hosts.go initHostsFile, then executor_spec.go appends
    "\\n<ip>\\t<alias>\\n" for each alias of each binding.
    """
    lines = [f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"]
    for alias, ip in aliases.items():
        if not HOSTNAME_RE.match(alias):
            raise ValueError(
                f"service alias {alias!r} is not a hostname: expected letters, digits and '-' in "
                "dot-separated labels (as withServiceBinding's alias must resolve); rename the alias"
            )
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(
                f"address {ip!r} for alias {alias!r} is not an IP address; pass Namespace.ip"
            ) from None
        lines.append(f"\n{addr}\t{alias}\n")
    path.write_text("".join(lines))
    path.chmod(0o644)
    return path


class NoServiceCommand(ValueError):
    """core/container_exec.go ErrNoSvcCommand."""

    def __init__(self) -> None:
        super().__init__(
            "no service command has been set: asService needs args, or an image with a default command "
            "or an entrypoint; pass args=[...] or call withDefaultArgs/withEntrypoint first"
        )


def service_command(
    *,
    entrypoint: list[str],
    cmd: list[str],
    args: list[str],
    use_entrypoint: bool = False,
    default_args_set: bool = False,
) -> list[str]:
    """The argv `asService(args, useEntrypoint)` runs (core/container.go AsService).

    `default_args_set` is the container's DefaultArgs flag: true after withDefaultArgs, false for an
    image's own Cmd and after withoutDefaultArgs/withEntrypoint.
    """
    if not args and not cmd and not entrypoint:
        raise NoServiceCommand()
    use = use_entrypoint or bool(entrypoint and not default_args_set)
    command = cmd
    if args:
        command = args
        if not use_entrypoint:
            use = False
    return [*entrypoint, *command] if entrypoint and use else list(command)


class _Collector(threading.Thread):
    """Reads one pipe to its end into a buffer, so a chatty service never blocks on a full pipe."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.chunks = stream, []

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read1(65536), b""):
            self.chunks.append(chunk)
        self.stream.close()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


@dataclass
class Running:
    """A started service process: its own process group, inside a namespace."""

    argv: list[str]
    ns: Namespace
    proc: subprocess.Popen[bytes]
    _out: _Collector
    _err: _Collector
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None

    def alive(self) -> bool:
        """Whether the service's main process has not exited yet."""
        return self.proc.poll() is None

    def output(self) -> tuple[str, str]:
        """The stdout and stderr read so far."""
        return self._out.text(), self._err.text()

    def stop(self, grace: float = TERMINATE_GRACE) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds, reap it and collect its output."""
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        # The grace period is for the whole group, not only its leader: the outer bwrap ends on SIGTERM at
        # once while the service inside is still finishing (a SIGKILL then would cut that short).
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader, so a zombie does not count as the group being alive
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)  # the leader may be gone while its children linger
        self.proc.wait()
        _wait_group_gone(pgid)
        self._finish()

    def _finish(self) -> None:
        """Join the pipe readers and record the output and exit status."""
        self._out.join(5)
        self._err.join(5)
        self.stdout, self.stderr = self.output()
        self.returncode = self.proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of group `pgid` is left (killed children are reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _port_open(ip: str, port: int) -> bool:
    """One dial of ip:port with the engine's 1 s dial timeout."""
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(text: str) -> str:
    """The last TAIL characters of `text`, marked when cut."""
    return text if len(text) <= TAIL else "…" + text[-TAIL:]


def _failure(running: Running, reason: str) -> ServiceFailed:
    """A ServiceFailed quoting the service's command, exit status and output tails."""
    parts = [f"service {running.argv!r} in {running.ns.name} ({running.ns.ip}) {reason}"]
    for label, text in (("stderr", running.stderr), ("stdout", running.stdout)):
        if text.strip():
            parts.append(f"--- {label} (tail) ---\n{_tail(text.rstrip())}")
    return ServiceFailed(
        "\n".join(parts),
        argv=running.argv,
        returncode=running.returncode,
        stdout=running.stdout,
        stderr=running.stderr,
    )


def start_service(
    argv: list[str], *, env: dict[str, str], ns: Namespace, ports: list[int], timeout: float = 60
) -> Running:
    """Run ns.prefix() + argv in a new process group; return once every port accepts TCP on ns.ip.

    Raises ServiceFailed, quoting the output tail, when the process exits first (the engine's ExecError,
    or "service exited before healthcheck" for exit 0) or `timeout` seconds pass (the process is stopped).
    No ports: healthy at once, as in core/healthcheck.go.
    """
    if not argv:
        raise ValueError("start_service needs a command: got an empty argv; pass the service's argv")
    if ns.closed:
        raise ValueError(f"namespace {ns.name} is closed; create one with new_namespace()")
    bad = [p for p in ports if not isinstance(p, int) or not 0 < p < 65536]
    if bad:
        raise ValueError(f"ports must be TCP port numbers 1…65535: got {bad!r}")
    proc = subprocess.Popen(
        [*ns.prefix(), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out, err = _Collector(proc.stdout), _Collector(proc.stderr)
    out.start()
    err.start()
    running = Running(argv=list(argv), ns=ns, proc=proc, _out=out, _err=err)
    try:
        _await_ports(running, ports, timeout)
    except BaseException:
        running.stop(grace=2.0)  # no-op when it already exited; never leave a half-started service
        raise
    return running


def _await_ports(running: Running, ports: list[int], timeout: float) -> None:
    """Dial each port with backoff until it accepts; raise ServiceFailed on exit or timeout."""
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(ports))
    delay = 0.1
    while pending:
        if not running.alive():
            running._finish()
            code = running.returncode
            reason = (
                f"exited before its health check (exit code: {code}; ports {ports} never accepted TCP)"
                if code
                else f"exited before healthcheck (exit code 0; ports {ports} never accepted TCP)"
            )
            raise _failure(running, reason)
        if _port_open(running.ns.ip, pending[0]):
            pending.pop(0)
            continue
        if time.monotonic() >= deadline:
            running.stop(grace=2.0)
            waiting = ", ".join(f"{running.ns.ip}:{p}" for p in pending)
            raise _failure(
                running,
                f"did not accept TCP on {waiting} within {timeout:g}s (health check timed out; the "
                "service was stopped). Does it listen on 0.0.0.0 or the namespace address, not 127.0.0.1?",
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)
