"""Run the query chains the FakeEngine records, with the engine's semantics: the graph executor.

The FakeEngine (``tests/dagger/engine.py``) turns every query the real ``dagger-io`` SDK sends into a chain
of fields, validated against the v0.21.8 schema. ``Executor`` plugs in as one of its responders and, when
a query asks for a value (``stdout``, ``contents``, ``sync``, ``export``, ``publish``, ``entries``, …),
*evaluates* the chain that produced the object, field by field, as dagger/dagger v0.21.8 defines them:

- ``Query.container/directory/host/cacheVolume/setSecret/secret`` (``core/schema/query.go``, ``host.go``);
- ``Container.from`` → a root filesystem standing in for the image (``rootfs.py``) or an image pulled from
  a registry on 127.0.0.1 (``oci.py``); every filesystem change is a new layer (``core/container.go``);
- ``withExec`` → ``sandbox.py`` (``core/container_exec.go``): expect SUCCESS/FAILURE/ANY, an exit code
  outside it is an ``EXEC_ERROR`` with cmd, exitCode, stdout and stderr (``core/exec_error.go``);
- mounts: a directory or file mount is a copy whose changes become the mount's contents in the resulting
  container only (the source stays as given; a new container from the same source sees none of them);
  cache volumes persist (between tests and runs, under ``MLCI_EXECUTOR_CACHE``); secrets reach the process
  only as environment values or in-memory files and are scrubbed from its output;
- ``asService`` + ``withServiceBinding``: each bound service is started in its own network namespace before
  the exec, health-checked on its exposed ports, reachable by its alias, stopped after (``core/service.go``);
- ``publish`` → a real OCI image pushed to a registry on 127.0.0.1 (or a registry service);
- ``Host.directory(exclude, include)`` and module ``Ignore`` → ``patterns.py`` (``internal/fsutil/filter.go``).

Evaluation is memoised per chain within a test session, as the engine dedupes identical operations, and
exec results are kept between runs by a content key (``ExecCache``: the parent's key, the field, its
arguments with object arguments replaced by their content keys, host directories by their files), as
BuildKit keeps them; execs bound to services always run. BuildKit's own cache keys, pruning and sharing
across engines only a real engine shows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import anyio

from ..engine import ExecFailure, FakeEngine, Step
from . import rootfs, sandbox

__all__ = ["EngineError", "Executor"]

EXECUTOR_VERSION = 1  # part of every content key: bump when the executor's semantics change
VALUE_LEAVES = {
    "stdout",
    "stderr",
    "exitCode",
    "contents",
    "export",
    "publish",
    "entries",
    "size",
    "name",
    "sync",
    "glob",
}


class EngineError(Exception):
    """An error the engine would answer with (not an exec failure): a missing file, an unknown image, …"""


# -- states --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dir:
    path: Path  # a materialised, never-modified directory


@dataclass(frozen=True)
class FileRef:
    path: Path  # a materialised, never-modified file


@dataclass(frozen=True)
class Secret:
    name: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class Cache:
    key: str
    path: Path


@dataclass(frozen=True)
class Mount:
    target: str
    kind: str  # dir | file | cache | secret | tmp
    source: Any = None
    readonly: bool = False
    mode: int = 0o400


@dataclass(frozen=True)
class Host:
    pass


@dataclass(frozen=True)
class Service:
    ctr: Ctr
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Ctr:
    layers: tuple[str, ...] = ()  # names in the layer store, bottom first
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[tuple[str, Secret], ...] = ()
    mounts: tuple[Mount, ...] = ()
    workdir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    default_args_set: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[int, ...] = ()
    bindings: tuple[tuple[str, Service], ...] = ()
    user: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    registry_auth: tuple[tuple[str, str, Secret], ...] = ()

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def with_env(self, name: str, value: str | None) -> Ctr:
        env = [(k, v) for k, v in self.env if k != name]
        if value is not None:
            env.append((name, value))
        return replace(self, env=tuple(env))


def _abs(path: str, workdir: str) -> str:
    """A container path made absolute against the working directory, normalised."""
    p = PurePosixPath(workdir or "/") / path
    parts: list[str] = []
    for part in p.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` if it lies inside it ('' for root itself), else None."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _expand(value: str, env: dict[str, str]) -> str:
    """The engine's ``expand``: $VAR and ${VAR} from the container's environment (unset: empty)."""
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), ""), value)


# -- the executor ----------------------------------------------------------------------------------------


class Executor:
    """A responder for FakeEngine that evaluates chains for real (see the module docstring)."""

    def __init__(
        self, engine: FakeEngine, work: Path, *, network: Any, registries: dict[str, str] | None = None,
        memo: dict[Any, Any] | None = None,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.work = work
        self.layers_dir = work / "l"  # overlay lowerdirs are named relative to this directory
        for sub in ("l", "d", "f", "x"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self._n = _counter(work)
        self.network = network
        self.registries = registries or {}  # address host as the module names it -> 127.0.0.1:PORT
        self.memo: dict[Any, Any] = {} if memo is None else memo
        self.exec_cache = ExecCache(rootfs.cache_root() / "execs")
        self.cache_service_execs = False  # execs bound to services always run: what they test is the wiring
        self._ckey = "root"
        self._host_reads: dict[Any, Any] = {}
        self.log: list[dict[str, Any]] = []  # one entry per exec: argv, exit code, seconds (for the tests)
        engine.responders.insert(0, self.respond)

    # -- responder ---------------------------------------------------------------------------------

    def respond(self, chain: list[Step], _: FakeEngine) -> Any:
        leaf = chain[-1]
        if leaf.field not in VALUE_LEAVES or (leaf.field == "name" and leaf.on != "File"):
            return None
        if leaf.on not in ("Container", "Directory", "File"):
            return None
        self._host_reads = {}  # host paths are read afresh for every query
        try:
            obj = self.eval(chain[:-1])
            value = self.leaf(obj, leaf)
        except EngineError as exc:
            raise _query_error(str(exc)) from exc
        return None if leaf.field == "sync" else value

    # -- evaluation --------------------------------------------------------------------------------

    def key(self, chain: list[Step]) -> tuple[Any, ...]:
        return tuple((s.on, s.field, self._arg_key(s.args)) for s in chain)

    def _arg_key(self, value: Any) -> Any:
        if isinstance(value, dict):
            return tuple(sorted((k, self._arg_key(v)) for k, v in value.items()))
        if isinstance(value, list):
            return tuple(self._arg_key(v) for v in value)
        if isinstance(value, str) and value in self.engine.objects:
            return ("id", self.key(self.engine.chain_of(value)))
        return value

    def eval(self, chain: list[Step]) -> Any:
        """The state ``chain`` produces."""
        return self.eval_keyed(chain)[0]

    def eval_keyed(self, chain: list[Step]) -> tuple[Any, str]:
        """The state ``chain`` produces and its content key, each step evaluated once per content key.

        Memoised by content, not by chain: a host directory is read again for every query (as the engine
        syncs it for every call), so an edited source gives new keys and new results from there on."""
        state: Any = None
        ckey = "root"
        for i, step in enumerate(chain):
            if step.on == "Host" or step.field == "host":
                k = self.key(chain[: i + 1])
                if k not in self._host_reads:
                    self._host_reads[k] = self._read_host(state, step, ckey)
                state, ckey = self._host_reads[k]
                continue
            ckey = self._content_key(ckey, step)
            if ckey in self.memo:
                state = self.memo[ckey]
                continue
            self._ckey = ckey
            state = self.apply(state, step)
            self.memo[ckey] = state
        return state, ckey

    def _read_host(self, state: Any, step: Step, ckey: str) -> tuple[Any, str]:
        """One host read: a directory is copied (filtered) only when its files' names, sizes, modes or times
        changed since the last read of the same path and patterns; its key is a digest of its contents."""
        if step.field != "directory":
            return self.apply(state, step), self._content_key(ckey, step)
        from .patterns import signature

        args = step.args
        patterns = _patterns(args.get("include") or [], args.get("exclude") or [])
        seen = ("host-directory", args["path"], tuple(patterns), signature(Path(args["path"]), patterns))
        if seen not in self.memo:
            read = self.apply(state, step)
            self.memo[seen] = (read, "host:" + tree_digest(read.path))
        return self.memo[seen]

    def _content_key(self, parent: str, step: Step) -> str:
        """What BuildKit keys an operation by, approximately: the parent's key, the field, its arguments with
        every object argument replaced by that object's own content key (a host directory by its files)."""

        def resolve(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in sorted(value.items())}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, str) and value in self.engine.objects:
                return {"object": self.eval_keyed(self.engine.chain_of(value))[1]}
            return value

        args = resolve(step.args)
        if step.on == "Query" and step.field == "setSecret":
            args = {"name": step.args["name"]}  # a secret's value never enters a key (nor the disk)
        if step.on == "Container" and step.field == "withSecretVariable":
            pass  # the secret's key is its name (above)
        payload = json.dumps(
            [EXECUTOR_VERSION, parent, step.on, step.field, args], sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def obj_of(self, sdk_object: Any) -> Any:
        """The evaluated state of an SDK object (its ID asked from the engine, then its chain run)."""
        return self.obj(anyio.run(sdk_object.id))

    def obj(self, object_id: str) -> Any:
        return self.eval(self.engine.chain_of(object_id))

    def apply(self, state: Any, step: Step) -> Any:
        handler = getattr(self, f"_{step.on}_{step.field}", None)
        if handler is None:
            raise EngineError(
                f"the executor does not implement {step.on}.{step.field} (add it in tests/dagger/executor)"
            )
        return handler(state, **step.args)

    # -- storage -----------------------------------------------------------------------------------

    def _new(self, kind: str) -> Path:
        path = self.work / kind / f"{next(self._n):x}"
        path.mkdir()
        return path

    def _layer_name(self, path: Path) -> str:
        """Register a directory as a layer (symlinked into the layer store) and return its short name."""
        if path.parent == self.layers_dir:
            return path.name
        name = f"r{next(self._n):x}"
        (self.layers_dir / name).symlink_to(path)
        return name

    def _copy_tree(self, src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)], check=True)

    def _copy_file(self, src: Path, dst: Path, permissions: int | None = None) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        shutil.copy2(src, dst, follow_symlinks=True)
        if permissions is not None:
            dst.chmod(permissions)

    def _read_view(self, ctr: Ctr, path: str) -> Path:
        """The container's merged filesystem at ``path`` (outside mounts), materialised."""
        out = self._new("d") / "v"
        script = 'set -e; cd "$1"; mount -t overlay overlay -o "lowerdir=$2" "$3"; cp -a --reflink=auto "$3$4" "$5"'
        merged = self._new("x")
        lower = list(reversed(ctr.layers))
        if len(lower) == 1:  # a single lowerdir cannot be an overlay; read the layer itself
            src = self.layers_dir / lower[0]
            target = src.resolve() / path.lstrip("/")
            if not target.exists() and not target.is_symlink():
                raise EngineError(f"{path}: no such file or directory")
            subprocess.run(["cp", "-a", "--reflink=auto", str(target), str(out)], check=True)
            return out
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(self.layers_dir), ":".join(lower), str(merged), path, str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise EngineError(f"{path}: no such file or directory ({done.stderr.strip()})")
        return out

    def _layer_with(self, place: str, write: Any) -> str:
        """A new layer holding what ``write(target)`` puts at container path ``place``."""
        layer = self._new("l")
        target = layer / place.lstrip("/")
        write(target)
        return layer.name

    # -- Query -------------------------------------------------------------------------------------

    def _Query_container(self, _: Any, platform: str | None = None) -> Ctr:
        """core/schema/container.go: no platform is the engine's own; another is emulated by a real engine
        (core/platform.go, QEMU binfmt), which the executor cannot do, so it refuses rather than run it as
        this machine's."""
        from .oci import _ARCH, machine_arch

        if platform is not None:
            os_name, _sep, rest = platform.partition("/")
            arch = rest.split("/", 1)[0].lower()
            # containerd's platforms.Normalize: x86_64 is amd64, aarch64 is arm64 (core/platform.go parses so)
            if (os_name.lower(), _ARCH.get(arch, arch)) != ("linux", machine_arch()):
                raise EngineError(
                    f"container(platform: {platform!r}): the executor runs only this machine's platform "
                    f"(linux/{machine_arch()}) and cannot emulate another; a real engine does (the `dagger` suite)"
                )
        return Ctr()

    def _Query_directory(self, _: Any) -> Dir:
        return Dir(self._new("d"))

    def _Query_host(self, _: Any) -> Host:
        return Host()

    def _Query_cacheVolume(self, _: Any, key: str, **__: Any) -> Cache:
        path = rootfs.cache_root() / "volumes" / re.sub(r"[^\w.-]", "_", key)
        path.mkdir(parents=True, exist_ok=True)
        return Cache(key, path)

    def _Query_setSecret(self, _: Any, name: str, plaintext: str) -> Secret:
        return Secret(name, plaintext)

    def _Query_secret(self, _: Any, uri: str, cacheKey: str | None = None) -> Secret:
        scheme, _, rest = uri.partition("://")
        if scheme == "env":
            if rest not in os.environ:
                raise EngineError(f"secret env var not found: {rest!r}")
            return Secret(uri, os.environ[rest])
        if scheme == "file":
            return Secret(uri, Path(rest).read_text())
        raise EngineError(f"unsupported secret provider in the executor: {uri!r}")

    def _Host_directory(
        self, _: Host, path: str, exclude: list[str] = (), include: list[str] = (), **__: Any
    ) -> Dir:  # type: ignore[assignment]
        from .patterns import copy_filtered

        out = self._new("d")
        copy_filtered(Path(path), out, _patterns(include, exclude))
        return Dir(out)

    def _Host_file(self, _: Host, path: str, **__: Any) -> FileRef:
        out = self._new("f") / Path(path).name
        self._copy_file(Path(path), out)
        return FileRef(out)

    # -- Directory ---------------------------------------------------------------------------------

    def _dir_edit(self, d: Dir, edit: Any) -> Dir:
        out = self._new("d")
        self._copy_tree(d.path, out)
        edit(out)
        return Dir(out)

    def _Directory_withDirectory(
        self, d: Dir, path: str, source: str, exclude: list[str] = (), include: list[str] = (), **__: Any
    ) -> Dir:  # type: ignore[assignment]
        from .patterns import copy_filtered

        src = self.obj(source)
        patterns = _patterns(include, exclude)
        return self._dir_edit(d, lambda out: copy_filtered(src.path, out / path.lstrip("/"), patterns))

    def _Directory_withFile(
        self, d: Dir, path: str, source: str, permissions: int | None = None, **__: Any
    ) -> Dir:
        src = self.obj(source)
        return self._dir_edit(d, lambda out: self._copy_file(src.path, out / path.lstrip("/"), permissions))

    def _Directory_withNewFile(self, d: Dir, path: str, contents: str, permissions: int = 0o644) -> Dir:
        def edit(out: Path) -> None:
            target = out / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(contents)
            target.chmod(permissions)

        return self._dir_edit(d, edit)

    def _Directory_withNewDirectory(self, d: Dir, path: str, permissions: int = 0o755) -> Dir:
        return self._dir_edit(d, lambda out: (out / path.lstrip("/")).mkdir(parents=True, exist_ok=True))

    def _Directory_withoutFile(self, d: Dir, path: str) -> Dir:
        return self._dir_edit(d, lambda out: (out / path.lstrip("/")).unlink(missing_ok=True))

    def _Directory_withoutDirectory(self, d: Dir, path: str) -> Dir:
        return self._dir_edit(d, lambda out: shutil.rmtree(out / path.lstrip("/"), ignore_errors=True))

    def _Directory_directory(self, d: Dir, path: str) -> Dir:
        target = d.path / path.lstrip("/")
        if not target.is_dir():
            raise EngineError(f"{path}: no such file or directory")
        return Dir(target)

    def _Directory_file(self, d: Dir, path: str) -> FileRef:
        target = d.path / path.lstrip("/")
        if not target.is_file():
            raise EngineError(f"{path}: no such file or directory")
        return FileRef(target)

    # -- Container: image and config ---------------------------------------------------------------

    def _Container_from(self, c: Ctr, address: str, registryService: str | None = None) -> Ctr:
        name = address.split("@", 1)[0]
        recipe = rootfs.IMAGES.get(name)
        if recipe is not None:
            layer = self._layer_name(rootfs.build(recipe))
            return replace(
                c, layers=(layer,), env=tuple(tuple(e.split("=", 1)) for e in recipe.env),  # type: ignore[misc]
                entrypoint=recipe.entrypoint, cmd=recipe.cmd, workdir="/",
                ports=tuple(int(p.split("/")[0]) for p in recipe.exposed_ports),
            )  # fmt: skip
        from . import oci

        host = address.split("/", 1)[0]
        pulled = self._new("x")
        layers, config = oci.pull_image(
            self.registries.get(host, host) + address[len(host) :],
            pulled,
            layer_cache=rootfs.cache_root() / "pulled",
        )
        return replace(
            c, layers=tuple(self._layer_name(p) for p in layers),
            env=tuple(tuple(e.split("=", 1)) for e in config.env),  # type: ignore[misc]
            entrypoint=tuple(config.entrypoint), cmd=tuple(config.cmd), workdir=config.workdir or "/",
            labels=tuple(config.labels), ports=tuple(int(p.split("/")[0]) for p in config.exposed_ports),
            user=config.user,
        )  # fmt: skip

    def _Container_withEnvVariable(self, c: Ctr, name: str, value: str, expand: bool = False) -> Ctr:
        return c.with_env(name, _expand(value, c.env_dict()) if expand else value)

    def _Container_withoutEnvVariable(self, c: Ctr, name: str) -> Ctr:
        return c.with_env(name, None)

    def _Container_withSecretVariable(self, c: Ctr, name: str, secret: str) -> Ctr:
        s = self.obj(secret)
        return replace(c, secret_env=(*[(k, v) for k, v in c.secret_env if k != name], (name, s)))

    def _Container_withWorkdir(self, c: Ctr, path: str, expand: bool = False) -> Ctr:
        return replace(c, workdir=_abs(_expand(path, c.env_dict()) if expand else path, c.workdir))

    def _Container_withEntrypoint(self, c: Ctr, args: list[str], keepDefaultArgs: bool = False) -> Ctr:
        return replace(
            c, entrypoint=tuple(args), **({} if keepDefaultArgs else {"cmd": (), "default_args_set": False})
        )

    def _Container_withoutEntrypoint(self, c: Ctr, keepDefaultArgs: bool = False) -> Ctr:
        return self._Container_withEntrypoint(c, [], keepDefaultArgs)

    def _Container_withDefaultArgs(self, c: Ctr, args: list[str]) -> Ctr:
        return replace(c, cmd=tuple(args), default_args_set=True)

    def _Container_withLabel(self, c: Ctr, name: str, value: str) -> Ctr:
        return replace(c, labels=(*[(k, v) for k, v in c.labels if k != name], (name, value)))

    def _Container_withExposedPort(self, c: Ctr, port: int, protocol: str = "TCP", **__: Any) -> Ctr:
        if protocol != "TCP":
            raise EngineError(f"the executor supports TCP ports only; got {protocol}")
        return replace(c, ports=(*[p for p in c.ports if p != port], port))

    def _Container_withUser(self, c: Ctr, name: str) -> Ctr:
        if name not in ("", "0", "root", "0:0"):
            raise EngineError(f"the executor runs as root only; withUser({name!r}) is not implemented")
        return replace(c, user=name)

    def _Container_withRegistryAuth(self, c: Ctr, address: str, username: str, secret: str) -> Ctr:
        return replace(c, registry_auth=(*c.registry_auth, (address, username, self.obj(secret))))

    def _Container_withServiceBinding(self, c: Ctr, alias: str, service: str) -> Ctr:
        svc = self.obj(service)
        return replace(c, bindings=(*[(a, s) for a, s in c.bindings if a != alias], (alias, svc)))

    def _Container_asService(
        self, c: Ctr, args: list[str] = (), useEntrypoint: bool = False, **__: Any
    ) -> Service:  # type: ignore[assignment]
        # core/container.go AsService at v0.21.8, line by line.
        if not args and not c.cmd and not c.entrypoint:
            raise EngineError("no service command: set an entrypoint, default args or pass args")
        use = useEntrypoint or (bool(c.entrypoint) and not c.default_args_set)
        argv = list(c.cmd)
        if args:
            argv = list(args)
            if not useEntrypoint:
                use = False
        if c.entrypoint and use:
            argv = [*c.entrypoint, *argv]
        return Service(c, tuple(argv))

    # -- Container: filesystem ---------------------------------------------------------------------

    def _mount_at(self, c: Ctr, path: str) -> tuple[int, Mount, str] | None:
        """The innermost mount holding container path ``path``: (index, mount, path inside it)."""
        best = None
        for i, m in enumerate(c.mounts):
            rel = _under(path, m.target)
            if rel is not None and (best is None or len(m.target) > len(best[1].target)):
                best = (i, m, rel)
        return best

    def _write(self, c: Ctr, path: str, write: Any) -> Ctr:
        """Apply ``write(target)`` at container path ``path``: into a mounted directory's copy, or a new layer."""
        hit = self._mount_at(c, path)
        if hit is None:
            return replace(c, layers=(*c.layers, self._layer_with(path, write)))
        i, m, rel = hit
        if m.kind != "dir" or m.readonly:
            raise EngineError(f"cannot write {path}: it is inside a {m.kind} mount at {m.target}")
        out = self._new("d")
        self._copy_tree(m.source.path, out)
        write(out / rel)
        mounts = list(c.mounts)
        mounts[i] = replace(m, source=Dir(out))
        return replace(c, mounts=tuple(mounts))

    def _Container_withDirectory(
        self,
        c: Ctr,
        path: str,
        source: str,
        exclude: list[str] = (),
        include: list[str] = (),
        expand: bool = False,
        permissions: int | None = None,
        **__: Any,
    ) -> Ctr:  # type: ignore[assignment]
        from .patterns import copy_filtered

        src = self.obj(source)
        patterns = _patterns(include, exclude)
        place = _abs(_expand(path, c.env_dict()) if expand else path, c.workdir)
        return self._write(c, place, lambda target: copy_filtered(src.path, target, patterns))

    def _Container_withFile(
        self, c: Ctr, path: str, source: str, permissions: int | None = None, expand: bool = False, **__: Any
    ) -> Ctr:
        src = self.obj(source)
        place = _abs(_expand(path, c.env_dict()) if expand else path, c.workdir)
        return self._write(c, place, lambda target: self._copy_file(src.path, target, permissions))

    def _Container_withNewFile(
        self, c: Ctr, path: str, contents: str, permissions: int = 0o644, expand: bool = False, **__: Any
    ) -> Ctr:
        def write(target: Path) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(contents)
            target.chmod(permissions)

        return self._write(c, _abs(_expand(path, c.env_dict()) if expand else path, c.workdir), write)

    def _remove(self, c: Ctr, path: str) -> Ctr:
        """Delete ``path``: from a mounted directory's copy, or with a whiteout in a new layer (overlayfs)."""
        hit = self._mount_at(c, path)
        if hit is not None:
            return self._write(
                c,
                path,
                lambda target: (
                    shutil.rmtree(target)
                    if target.is_dir() and not target.is_symlink()
                    else target.unlink(missing_ok=True)
                ),
            )
        return replace(c, layers=(*c.layers, self._layer_with(path, _whiteout)))

    def _Container_withoutDirectory(self, c: Ctr, path: str, expand: bool = False) -> Ctr:
        return self._remove(c, _abs(_expand(path, c.env_dict()) if expand else path, c.workdir))

    def _Container_withoutFile(self, c: Ctr, path: str, expand: bool = False) -> Ctr:
        return self._remove(c, _abs(_expand(path, c.env_dict()) if expand else path, c.workdir))

    def _mount(self, c: Ctr, m: Mount) -> Ctr:
        return replace(c, mounts=(*[x for x in c.mounts if x.target != m.target], m))

    def _Container_withMountedDirectory(
        self, c: Ctr, path: str, source: str, readOnly: bool = False, **__: Any
    ) -> Ctr:
        return self._mount(c, Mount(_abs(path, c.workdir), "dir", self.obj(source), readonly=readOnly))

    def _Container_withMountedFile(self, c: Ctr, path: str, source: str, **__: Any) -> Ctr:
        return self._mount(c, Mount(_abs(path, c.workdir), "file", self.obj(source)))

    def _Container_withMountedCache(self, c: Ctr, path: str, cache: str, **__: Any) -> Ctr:
        return self._mount(c, Mount(_abs(path, c.workdir), "cache", self.obj(cache)))

    def _Container_withMountedSecret(
        self, c: Ctr, path: str, source: str, mode: int = 0o400, **__: Any
    ) -> Ctr:
        return self._mount(
            c, Mount(_abs(path, c.workdir), "secret", self.obj(source), readonly=True, mode=mode)
        )

    def _Container_withMountedTemp(self, c: Ctr, path: str, **__: Any) -> Ctr:
        return self._mount(c, Mount(_abs(path, c.workdir), "tmp"))

    def _Container_withoutMount(self, c: Ctr, path: str, expand: bool = False) -> Ctr:
        target = _abs(path, c.workdir)
        return replace(c, mounts=tuple(m for m in c.mounts if m.target != target))

    def _Container_directory(self, c: Ctr, path: str, expand: bool = False) -> Dir:
        place = _abs(_expand(path, c.env_dict()) if expand else path, c.workdir)
        hit = self._mount_at(c, place)
        if hit is not None:
            _, m, rel = hit
            if m.kind not in ("dir", "cache"):
                raise EngineError(f"{place} is inside a {m.kind} mount")
            target = (m.source.path) / rel
            if not target.is_dir():
                raise EngineError(f"{place}: no such file or directory")
            if m.kind == "cache":  # a snapshot: the cache goes on changing
                out = self._new("d")
                self._copy_tree(target, out)
                return Dir(out)
            return Dir(target)
        view = self._read_view(c, place)
        if not view.is_dir():
            raise EngineError(f"{place}: not a directory")
        return Dir(view)

    def _Container_file(self, c: Ctr, path: str, expand: bool = False) -> FileRef:
        place = _abs(_expand(path, c.env_dict()) if expand else path, c.workdir)
        hit = self._mount_at(c, place)
        if hit is not None:
            _, m, rel = hit
            target = m.source.path if m.kind == "file" else m.source.path / rel
            if not target.is_file():
                raise EngineError(f"{place}: no such file or directory")
            return FileRef(target)
        view = self._read_view(c, place)
        if not view.is_file():
            raise EngineError(f"{place}: not a file")
        return FileRef(view)

    # -- Container: exec ---------------------------------------------------------------------------

    def _Container_withExec(
        self, c: Ctr, args: list[str], useEntrypoint: bool = False, stdin: str = "", redirectStdout: str = "",
        redirectStderr: str = "", expect: str = "SUCCESS", expand: bool = False, **__: Any,
    ) -> Ctr:  # fmt: skip
        key, env = self._ckey, c.env_dict()
        argv = [_expand(a, env) for a in args] if expand else list(args)
        if useEntrypoint and c.entrypoint:
            argv = [*c.entrypoint, *(argv or list(c.cmd))]
        if not argv:
            raise EngineError("no command has been set")
        cached = self.exec_cache.get(key, c) if not c.bindings or self.cache_service_execs else None
        if cached is not None:
            layer, result, mounts = cached
            upper_name = self._layer_name(layer)
            self.log.append({"argv": argv, "exit_code": result.exit_code, "seconds": 0.0, "cached": True})
        else:
            upper, work, merged = self._new("l"), self._new("x"), self._new("x")
            result, mounts = self._run(c, argv, upper, work, merged, stdin=stdin)
            upper_name = upper.name
            if {"SUCCESS": result.exit_code == 0, "FAILURE": result.exit_code != 0, "ANY": True}[expect]:
                layer, mounts = self.exec_cache.put(key, upper, result, mounts)
                upper_name = self._layer_name(layer)
        c = replace(c, layers=(*c.layers, upper_name), mounts=mounts, exit_code=result.exit_code,
                    stdout=result.stdout, stderr=result.stderr)  # fmt: skip
        for target, text in ((redirectStdout, result.stdout), (redirectStderr, result.stderr)):
            if target:
                c = self._Container_withNewFile(c, target, text)
        ok = {"SUCCESS": result.exit_code == 0, "FAILURE": result.exit_code != 0, "ANY": True}[expect]
        if not ok:
            raise ExecFailure(argv, result.exit_code, result.stdout, result.stderr)
        return c

    def _run(self, c: Ctr, argv: list[str], upper: Path, work: Path, merged: Path, *, stdin: str = "",
             netns: Any = None, service: bool = False) -> Any:  # fmt: skip
        """Prepare the mounts and services of one exec, then run it (or, for a service, start it)."""
        with ExitStack() as stack:
            binds, mounts, secrets = [], list(c.mounts), [v.value for _, v in c.secret_env]
            for i, m in enumerate(c.mounts):
                if m.kind == "dir":
                    if m.readonly:
                        binds.append(sandbox.Bind(m.source.path, m.target, readonly=True))
                        continue
                    copy = self._new("d")
                    self._copy_tree(m.source.path, copy)
                    binds.append(sandbox.Bind(copy, m.target))
                    mounts[i] = replace(m, source=Dir(copy))
                elif m.kind == "file":
                    copy = self._new("f") / m.source.path.name
                    self._copy_file(m.source.path, copy)
                    binds.append(sandbox.Bind(copy, m.target))
                    mounts[i] = replace(m, source=FileRef(copy))
                elif m.kind == "cache":
                    binds.append(sandbox.Bind(m.source.path, m.target))
                elif m.kind == "secret":
                    secrets.append(m.source.value)
                    binds.append(
                        sandbox.Bind(
                            stack.enter_context(_memory_file(m.source.value, m.mode)), m.target, True
                        )
                    )
                elif m.kind == "tmp":
                    binds.append(
                        sandbox.Bind(
                            Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm"))), m.target
                        )
                    )
            hosts = None
            if c.bindings:
                hosts_map = {alias: stack.enter_context(self.started(svc)) for alias, svc in c.bindings}
                hosts = self.network.hosts_file(hosts_map, self._new("x") / "hosts")
            env = {**c.env_dict(), **{k: v.value for k, v in c.secret_env}}
            layout = dict(layers_dir=self.layers_dir, lower=list(c.layers), upper=upper, work=work, merged=merged,
                          workdir=c.workdir or "/", binds=binds, hosts=hosts)  # fmt: skip
            if service:
                # A service's namespace has no route out of this machine (a real engine NATs it), so its
                # resolver points at its own loopback and fails at once instead of timing out (python's
                # http.server, for one, looks up its own name when it binds).
                resolv = self._new("x") / "resolv.conf"
                resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
                layout["binds"] = [*binds, sandbox.Bind(resolv, "/etc/resolv.conf", readonly=True)]
                cmd = sandbox.command(argv=argv, service=True, **layout)
                running = self.network.start_service(cmd, env=env, ns=netns, ports=list(c.ports))
                stack.pop_all()  # the service keeps its mounts and bindings until it is stopped
                return running
            import time

            t0 = time.monotonic()
            result = sandbox.run(argv, env=env, stdin=stdin, secrets=secrets, **layout)
            self.log.append(
                {"argv": argv, "exit_code": result.exit_code, "seconds": round(time.monotonic() - t0, 1)}
            )
            return result, tuple(mounts)

    @contextmanager
    def started(self, svc: Service) -> Iterator[str]:
        """Start a bound service in its own network namespace for the duration of one exec; its address."""
        ns = self.network.new_namespace()
        running = None
        try:
            upper, work, merged = self._new("l"), self._new("x"), self._new("x")
            try:
                running = self._run(svc.ctr, list(svc.argv), upper, work, merged, netns=ns, service=True)
            except self.network.ServiceFailed as exc:
                raise EngineError(f"start service {' '.join(svc.argv)}: {exc}") from exc
            yield ns.ip
        finally:
            if running is not None:
                running.stop()
            ns.close()

    # -- leaves ------------------------------------------------------------------------------------

    def leaf(self, obj: Any, step: Step) -> Any:
        name, args = step.field, step.args
        if name == "sync":
            return None
        if isinstance(obj, Ctr):
            if name in ("stdout", "stderr"):
                if obj.exit_code is None:
                    raise EngineError("no command has been set")
                return getattr(obj, name)
            if name == "exitCode":
                if obj.exit_code is None:
                    raise EngineError("no command has been set")
                return obj.exit_code
            if name == "publish":
                return self.publish(obj, **args)
        if isinstance(obj, Dir):
            if name == "entries":
                target = obj.path / (args.get("path") or "").lstrip("/")
                return sorted(
                    p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in target.iterdir()
                )
            if name == "export":
                dest = Path(args["path"])
                if args.get("wipe"):
                    shutil.rmtree(dest, ignore_errors=True)
                self._copy_tree(obj.path, dest)
                return str(dest)
        if isinstance(obj, FileRef):
            if name == "contents":
                return obj.path.read_text(errors="replace")
            if name == "size":
                return obj.path.stat().st_size
            if name == "name":
                return obj.path.name
            if name == "export":
                dest = Path(args["path"])
                self._copy_file(obj.path, dest)
                return str(dest)
        raise EngineError(f"the executor does not implement {step.on}.{name}")

    def image_layers(self, c: Ctr) -> list[Path]:
        return [(self.layers_dir / name).resolve() for name in c.layers]

    def image_config(self, c: Ctr) -> Any:
        from . import oci

        return oci.ImageConfig(
            env=tuple(f"{k}={v}" for k, v in c.env), entrypoint=c.entrypoint, cmd=c.cmd, workdir=c.workdir,
            user=c.user, labels=c.labels, exposed_ports=tuple(f"{p}/tcp" for p in c.ports),
        )  # fmt: skip

    def blob(self, layer: Path) -> Any:
        """A layer's gzip'd tar, made once: layers in the persistent store (root filesystems, kept exec
        results) never change, so their blobs are kept beside them; the session's own layers per session."""
        from . import oci

        root = rootfs.cache_root()
        persistent = layer.is_relative_to(root / "rootfs") or layer.is_relative_to(root / "execs")
        home = (root / "blobs") if persistent else (self.work / "blobs")
        entry = home / hashlib.sha256(str(layer).encode()).hexdigest()[:32]
        meta = entry / "layer.json"
        if meta.exists():
            os.utime(entry)  # kept by ExecCache.prune while runs use it
            known = json.loads(meta.read_text())
            return oci.Layer(known["digest"], known["diff_id"], known["size"], entry / "blob")
        tmp = entry.with_name(entry.name + f".{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        made = oci.layer_blob(layer, tmp)
        made.path.rename(tmp / "blob")
        (tmp / "layer.json").write_text(
            json.dumps({"digest": made.digest, "diff_id": made.diff_id, "size": made.size})
        )
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        return oci.Layer(made.digest, made.diff_id, made.size, entry / "blob")

    def publish(
        self,
        c: Ctr,
        address: str,
        platformVariants: list[str] = (),
        registryService: str | None = None,
        mediaTypes: str = "OCIMediaTypes",
        **__: Any,
    ) -> str:  # type: ignore[assignment]
        from . import oci

        if platformVariants:
            raise EngineError(
                "multi-platform publish is not executed here (one platform, one machine): a real engine only"
            )
        host, _, rest = address.partition("/")
        repository, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
        media = "Docker" if mediaTypes == "DockerMediaTypes" else "OCI"
        layers, config = [self.blob(p) for p in self.image_layers(c)], self.image_config(c)
        if registryService is not None:
            svc = self.obj(registryService)
            port = host.rpartition(":")[2] if ":" in host else "443"
            with self.started(svc) as ip:
                pushed = oci.push_layers(f"{ip}:{port}", repository, tag, layers, config, media_types=media)
        else:
            target = self.registries.get(host)
            if target is None:
                raise EngineError(
                    f"publish to {host!r}: only registries on 127.0.0.1 given to the executor are reachable here"
                )
            pushed = oci.push_layers(target, repository, tag, layers, config, media_types=media)
        return f"{address}@{pushed.rsplit('@', 1)[1]}"


def tree_digest(root: Path) -> str:
    """A digest of a directory's names, modes, link targets and file contents."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_mode:o}\0".encode())
            if os.path.islink(path):
                h.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
        for d in dirnames:
            h.update(f"{os.path.relpath(os.path.join(dirpath, d), root)}/\0".encode())
    return h.hexdigest()


class ExecCache:
    """Exec results kept between runs, keyed by content (as BuildKit keeps them): the new layer, the exit
    code and output, and the directory mounts' new contents. Without it every run would reinstall the
    Python dependencies from the index (this machine's index answers are not cacheable by pip)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def prune(self, max_age_days: float = 14.0) -> list[str]:
        """Drop entries no run has used for ``max_age_days`` (a hit refreshes an entry's mtime); their keys."""
        import time

        cutoff = time.time() - max_age_days * 86400
        gone = []
        for entry in self.root.iterdir():
            if entry.stat().st_mtime < cutoff or (
                entry.name.startswith(".") and entry.stat().st_mtime < time.time() - 3600
            ):
                shutil.rmtree(entry, ignore_errors=True)
                gone.append(entry.name)
        return gone

    def get(self, key: str, c: Ctr) -> tuple[Path, sandbox.Result, tuple[Mount, ...]] | None:
        entry = self.root / key
        if not (entry / "result.json").exists():
            return None
        meta = json.loads((entry / "result.json").read_text())
        mounts = list(c.mounts)
        for i, m in enumerate(mounts):
            if m.kind == "dir" and not m.readonly:
                mounts[i] = replace(m, source=Dir(entry / "mounts" / str(i)))
            elif m.kind == "file":
                mounts[i] = replace(m, source=FileRef(entry / "mounts" / str(i) / m.source.path.name))
        os.utime(entry)
        return (
            entry / "layer",
            sandbox.Result(meta["exit_code"], meta["stdout"], meta["stderr"]),
            tuple(mounts),
        )

    def put(
        self, key: str, upper: Path, result: sandbox.Result, mounts: tuple[Mount, ...]
    ) -> tuple[Path, tuple[Mount, ...]]:
        """Move the exec's outputs into the cache; the layer and mounts as they now live there."""
        entry = self.root / key
        tmp = self.root / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        subprocess.run(["cp", "-a", "--reflink=auto", str(upper), str(tmp / "layer")], check=True)
        out = list(mounts)
        for i, m in enumerate(mounts):
            if m.kind in ("dir", "file") and not m.readonly:
                (tmp / "mounts").mkdir(exist_ok=True)
                src = m.source.path if m.kind == "dir" else m.source.path.parent
                subprocess.run(
                    ["cp", "-a", "--reflink=auto", str(src), str(tmp / "mounts" / str(i))], check=True
                )
                kept = entry / "mounts" / str(i)
                out[i] = replace(
                    m, source=Dir(kept) if m.kind == "dir" else FileRef(kept / m.source.path.name)
                )
        (tmp / "result.json").write_text(
            json.dumps({"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr})
        )
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        return entry / "layer", tuple(out)


def _patterns(include: Any, exclude: Any) -> list[str]:
    """include + exclude as one exclude list with exceptions (the last matching pattern wins)."""
    return [*(["**", *(f"!{p}" for p in include)] if include else []), *exclude]


def _whiteout(target: Path) -> None:
    """An overlayfs whiteout at ``target``: a character device 0/0 hides the name in lower layers."""
    import stat

    target.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))


_COUNTERS: dict[Path, Iterator[int]] = {}


def _counter(work: Path) -> Iterator[int]:
    """One name counter per layer store (executors of one session share the store)."""
    return _COUNTERS.setdefault(work, itertools.count(1))


@contextmanager
def _memory_file(value: str, mode: int) -> Iterator[Path]:
    """A secret as a file in memory (/dev/shm), removed after the exec: never on disk."""
    fd, name = tempfile.mkstemp(dir="/dev/shm", prefix="mlci-secret-")
    try:
        os.write(fd, value.encode())
        os.close(fd)
        os.chmod(name, mode)
        yield Path(name)
    finally:
        os.unlink(name)


def _query_error(message: str) -> Exception:
    from gql.transport.exceptions import TransportQueryError

    return TransportQueryError(message, errors=[{"message": message}])


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
