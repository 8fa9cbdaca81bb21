"""OCI images for the graph executor: overlay layer directories to registry blobs and back.

What the engine does, and what this module copies (Dagger v0.21.8, /work/.mirror/dagger+dagger/repo):

- core/container.go `Container.Publish`: the engine pushes the image, then returns
  `reference.WithDigest(reference.ParseNormalizedNamed(ref), resp.RootDesc.Digest).String()`, i.e.
  `registry/repository:tag@sha256:<root digest>`. The root descriptor is the manifest for one platform and
  the image index for several (engine/engineutil/imageexport/writer.go `Assemble`).
- core/container.go `useOCIMediaTypes`: OCI media types unless Docker ones are asked for; layers are gzip by
  default (engine/engineutil/containerimage.go `exportCommitOpts`, `compression.Default`).
- engine/engineutil/imageexport/writer.go `commitPlatformManifest` / `patchImageConfig`: the config is the
  Container's `dockerspec.DockerOCIImageConfig` (core/container.go `Container.Config`) inside an image with
  `architecture`, `os`, `rootfs.diff_ids` and `history`, marshalled compactly with sorted top-level keys; the
  manifest is `json.MarshalIndent(manifest, "", "  ")`.
- The config fields Dagger sets: Env (`withEnvVariable`, "K=V"), Entrypoint (`withEntrypoint`), Cmd
  (`withDefaultArgs`), WorkingDir (`withWorkdir`), User (`withUser`), Labels (`withLabel`), ExposedPorts
  (`WithExposedPort`: "<port>/<tcp|udp>").

Layer tars: an overlayfs upper directory becomes a tar the way containerd's diff writer emits it: a
whiteout (character device 0/0) becomes an empty regular file `.wh.<name>`, an opaque directory
(xattr `trusted.overlay.opaque` = "y") is followed by `<dir>/.wh..wh..opq`. `pull_image` turns them back.
Blobs are deterministic: entries in sorted depth-first order, PAX format, numeric uid/gid with empty
user/group names, mtimes kept (whole seconds: the engine's layers keep file mtimes too), gzip header
without name or time. Pulled layers are unpacked by this module's own extractor, which refuses anything
that could write outside the destination (see `LayerRefused`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MEDIA_TYPES = {
    "OCI": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER_GZIP},
    "Docker": {
        "manifest": DOCKER_MANIFEST,
        "index": DOCKER_LIST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER_GZIP,
    },
}
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
GZIP_LAYERS = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTRS = "trusted.overlay."
# overlayfs's own bookkeeping on copied-up entries (Documentation/filesystems/overlayfs.rst): it says where
# an entry came from, not what it holds, so a layer tar leaves it out. redirect and metacopy do change
# what an entry holds, and stay refused.
OVERLAY_BOOKKEEPING = tuple(
    f"trusted.overlay.{n}" for n in ("origin", "impure", "nlink", "upper", "uuid", "protattr")
)
PAX_XATTR = "SCHILY.xattr."
# zlib level for layer blobs. Measured on a 258 MB tree (mmdebstrap bookworm minbase + 80 MB of Python), 2 shared
# cores: level 1 gives 100 MB in 9 s, level 6 gives 90 MB in 16 s (zlib is ~80% of the time). Level 1 it is.
COMPRESSLEVEL = 1
CHUNK = 1 << 20

# The distribution reference grammar (github.com/distribution/reference, regexp.go).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
REGISTRY_RE = re.compile(r"(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class OCIError(RuntimeError):
    """A registry exchange or an image that is not what the OCI specs say it must be."""


class LayerRefused(OCIError):
    """A layer tar with an entry that would write outside its directory, or one overlay cannot carry."""


def machine_arch() -> str:
    """This machine's architecture, in GOARCH terms (what the engine's default platform says)."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


@dataclass(frozen=True)
class ImageConfig:
    """The OCI image config fields Dagger's Container sets (core/container.go `Container.Config`)."""

    env: tuple[str, ...] = ()  # "K=V"
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    os: str = "linux"
    architecture: str = machine_arch()

    def __post_init__(self) -> None:
        """Labels and exposed ports are maps in the config: keep them sorted, so equal configs compare equal."""
        keys = [key for key, _ in self.labels]
        if len(set(keys)) != len(keys):
            raise OCIError(f"ImageConfig labels must have distinct keys (the config holds a map), got {keys}")
        for port in self.exposed_ports:
            if not re.fullmatch(r"[0-9]{1,5}/(tcp|udp)", port):
                raise OCIError(
                    f"ImageConfig exposed_ports entries must be '<port>/tcp' or '<port>/udp', got {port!r}"
                )
        object.__setattr__(self, "labels", tuple(sorted(self.labels)))
        object.__setattr__(self, "exposed_ports", tuple(sorted(set(self.exposed_ports))))

    def config_object(self) -> dict[str, Any]:
        """The `config` object, in `specs.ImageConfig` field order with Go's omitempty."""
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in sorted(self.exposed_ports)}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.labels:
            out["Labels"] = dict(sorted(self.labels))
        return out

    def to_json(self, diff_ids: list[str]) -> bytes:
        """The config blob: compact, sorted top-level keys (writer.go `patchImageConfig` marshals a map)."""
        image = {
            "architecture": self.architecture,
            "config": self.config_object(),
            "history": [{"created_by": f"mlci executor layer {i}"} for i in range(len(diff_ids))],
            "os": self.os,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
        return go_json(image)

    @classmethod
    def from_json(cls, blob: bytes) -> ImageConfig:
        """Read the fields back from a config blob (any writer's)."""
        try:
            image = json.loads(blob)
            config = image.get("config") or {}
            return cls(
                env=tuple(config.get("Env") or ()),
                entrypoint=tuple(config.get("Entrypoint") or ()),
                cmd=tuple(config.get("Cmd") or ()),
                workdir=config.get("WorkingDir") or "",
                user=config.get("User") or "",
                labels=tuple(sorted((config.get("Labels") or {}).items())),
                exposed_ports=tuple(sorted(config.get("ExposedPorts") or {})),
                os=image.get("os", ""),
                architecture=image.get("architecture", ""),
            )
        except (ValueError, AttributeError, TypeError) as exc:
            raise OCIError(
                f"the image config is not an OCI image config JSON object ({exc}): {blob[:200]!r}"
            ) from exc


def go_json(value: Any, indent: int | None = None) -> bytes:
    """JSON as Go's encoding/json writes it: UTF-8, with <, >, & and U+2028/9 escaped."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


# --- layer blobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer blob on disk: its compressed digest and size, and the digest of the tar inside (diff_id)."""

    digest: str
    diff_id: str
    size: int
    path: Path
    media_type: str = OCI_LAYER_GZIP


class _HashingWriter(io.RawIOBase):
    """Pass bytes on to `sink`, hashing and counting them."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.sha, self.count = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.sink.write(view)
        self.count += len(view)
        return len(view)

    def tell(self) -> int:
        return self.count


def layer_blob(layer: Path, out_dir: Path, *, compresslevel: int = COMPRESSLEVEL) -> Layer:
    """Write the gzip'd tar of one overlay layer directory into `out_dir`, named by its digest."""
    if not layer.is_dir():
        raise OCIError(f"layer_blob expected a layer directory, got {layer!r} (not a directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".layer-", suffix=".tar.gz")
    try:
        with os.fdopen(fd, "wb") as raw:
            compressed = _HashingWriter(raw)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=compressed, compresslevel=compresslevel, mtime=0
            ) as gz:
                plain = _HashingWriter(gz)  # type: ignore[arg-type]
                with tarfile.TarFile(
                    fileobj=plain, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK
                ) as tar:
                    _add_tree(tar, layer)
        digest = "sha256:" + compressed.sha.hexdigest()
        path = out_dir / (digest.removeprefix("sha256:") + ".tar.gz")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Layer(digest, "sha256:" + plain.sha.hexdigest(), compressed.count, path)


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `root` (not root itself), depth-first in byte order of names, with its lstat."""
    base = root / rel if rel else root
    for name in sorted(os.listdir(base)):
        path = f"{rel}/{name}" if rel else name
        st = os.lstat(root / path)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


def _xattrs(path: Path, rel: str) -> dict[str, str]:
    """The PAX records for a file's xattrs; overlay's own xattrs other than opaque are refused."""
    records: dict[str, str] = {}
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return records
    for name in names:
        if name == OPAQUE_XATTR or name in OVERLAY_BOOKKEEPING:
            continue
        if name.startswith(OVERLAY_XATTRS):
            raise OCIError(
                f"layer entry {rel!r} carries overlay xattr {name!r}: only whiteouts and {OPAQUE_XATTR} "
                "can go into a layer tar; mount the overlay with redirect_dir=off,metacopy=off"
            )
        value = os.getxattr(path, name, follow_symlinks=False)
        records[PAX_XATTR + name] = value.decode("utf-8", "surrogateescape")
    return records


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    """Add every entry of a layer directory, translating overlay whiteouts and opaque directories."""
    links: dict[tuple[int, int], str] = {}
    for rel, st in _walk(root):
        path = root / rel
        name = os.path.basename(rel)
        if name.startswith(WHITEOUT):
            raise OCIError(
                f"layer entry {rel!r} is named like a whiteout ({WHITEOUT}*); overlay layers cannot carry it"
            )
        info = tarfile.TarInfo(rel)
        info.mtime = int(st.st_mtime)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            tar.addfile(_marker(os.path.join(os.path.dirname(rel), WHITEOUT + name), info.mtime))
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            raise OCIError(
                f"layer entry {rel!r} is a device node or socket: Dagger layers never carry them (/dev is a "
                "mount at run time); remove it from the layer (for an mmdebstrap root: empty its dev/)"
            )
        info.pax_headers = _xattrs(path, rel)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
            tar.addfile(info)
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            links[key] = rel
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            if _is_opaque(path):
                tar.addfile(_marker(f"{rel}/{OPAQUE}", info.mtime))
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            tar.addfile(info)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        else:
            info.size = st.st_size
            with open(path, "rb") as src:
                tar.addfile(info, src)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _marker(name: str, mtime: int) -> tarfile.TarInfo:
    """An empty regular file standing for a whiteout or an opaque directory (containerd writes mode 0)."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uname, info.gname = 0, mtime, "", ""
    return info


def layer_from_blob(path: Path, media_type: str = OCI_LAYER_GZIP) -> Layer:
    """Describe an existing layer blob (e.g. a hand-made tar.gz): digest, size and diff_id."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    diff_id = hashlib.sha256()
    with gzip.open(path, "rb") if media_type in GZIP_LAYERS else open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            diff_id.update(chunk)
    return Layer(
        "sha256:" + digest.hexdigest(), "sha256:" + diff_id.hexdigest(), path.stat().st_size, path, media_type
    )


# --- the registry ------------------------------------------------------------------------------------


def _check_name(registry: str, repository: str, tag: str | None = None) -> None:
    if not REGISTRY_RE.fullmatch(registry):
        raise OCIError(f"registry must be a host[:port] like '127.0.0.1:5000', got {registry!r}")
    if not REPOSITORY_RE.fullmatch(repository):
        raise OCIError(
            f"repository must be lowercase path components ([a-z0-9] joined by '.', '_', '__' or '-', separated "
            f"by '/'), got {repository!r}"
        )
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise OCIError(f"tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}, got {tag!r}")


class RegistryClient:
    """The OCI distribution HTTP API of one repository, over plain HTTP (the test registries on 127.0.0.1)."""

    def __init__(self, registry: str, repository: str, client: httpx.Client | None = None) -> None:
        _check_name(registry, repository)
        self.registry, self.repository = registry, repository
        self.base = f"http://{registry}/v2/{repository}"
        self.http = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        self._owned = client is None

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _fail(self, what: str, response: httpx.Response) -> OCIError:
        body = response.text[:500] if response.content else ""
        return OCIError(
            f"{what}: {response.request.method} {response.request.url} answered HTTP {response.status_code} {body}"
        )

    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: True when the registry already holds it (then it is not uploaded again)."""
        response = self.http.head(f"{self.base}/blobs/{digest}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(f"checking blob {digest}", response)

    def put_blob(self, digest: str, size: int, body: bytes | Path) -> bool:
        """Upload a blob monolithically (POST, then PUT ?digest=) unless present; True when uploaded."""
        if self.has_blob(digest):
            return False
        start = self.http.post(f"{self.base}/blobs/uploads/")
        if start.status_code != 202 or "location" not in start.headers:
            raise self._fail(f"starting the upload of blob {digest}", start)
        location = httpx.URL(self.base).join(start.headers["location"])
        location = location.copy_merge_params({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(body, Path):
            with open(body, "rb") as f:
                done = self.http.put(location, content=iter(lambda: f.read(CHUNK), b""), headers=headers)
        else:
            done = self.http.put(location, content=body, headers=headers)
        if done.status_code != 201:
            raise self._fail(f"uploading blob {digest}", done)
        return True

    def put_manifest(self, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest or index under a tag; returns its digest, checked against the registry's."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = self.http.put(
            f"{self.base}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise self._fail(f"putting manifest {reference}", response)
        answered = response.headers.get("docker-content-digest")
        if answered and answered != digest:
            raise OCIError(
                f"the registry stored manifest {reference} as {answered}, but its bytes hash to {digest}"
            )
        return digest

    def get_manifest(self, reference: str) -> tuple[str, bytes, str]:
        """GET a manifest or index by tag or digest: (media type, bytes, digest), the digest verified."""
        accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
        response = self.http.get(f"{self.base}/manifests/{reference}", headers={"Accept": accept})
        if response.status_code != 200:
            raise self._fail(f"getting manifest {reference}", response)
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = (
            reference if DIGEST_RE.fullmatch(reference) else response.headers.get("docker-content-digest")
        )
        if expected and expected != digest:
            raise OCIError(
                f"manifest {reference} should have digest {expected}, but the bytes received hash to {digest}"
            )
        try:
            media_type = (
                json.loads(body).get("mediaType") or response.headers.get("content-type", "").split(";")[0]
            )
        except (ValueError, AttributeError) as exc:
            raise OCIError(f"manifest {reference} is not a JSON object: {body[:200]!r}") from exc
        return media_type, body, digest

    def get_blob(self, digest: str, size: int, dest: Path) -> Path:
        """Stream a blob to `dest`, refusing it unless its size and sha256 are what the manifest says."""
        if not DIGEST_RE.fullmatch(digest):
            raise OCIError(f"blob digest must be sha256:<64 hex>, got {digest!r}")
        sha, got = hashlib.sha256(), 0
        with self.http.stream("GET", f"{self.base}/blobs/{digest}") as response:
            if response.status_code != 200:
                response.read()
                raise self._fail(f"getting blob {digest}", response)
            with open(dest, "wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    got += len(chunk)
                    if got > size:
                        raise OCIError(f"blob {digest} is longer than the {size} bytes its descriptor says")
                    sha.update(chunk)
                    out.write(chunk)
        if got != size or "sha256:" + sha.hexdigest() != digest:
            dest.unlink()
            raise OCIError(
                f"blob {digest} ({size} bytes) arrived as {got} bytes hashing to sha256:{sha.hexdigest()}"
            )
        return dest


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def manifest_json(layers: list[Layer], config_blob: bytes, media_types: str = "OCI") -> bytes:
    """The image manifest, as writer.go `commitPlatformManifest` marshals it (indented by two spaces)."""
    types = MEDIA_TYPES[media_types]
    manifest = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": _descriptor(
            types["config"], "sha256:" + hashlib.sha256(config_blob).hexdigest(), len(config_blob)
        ),
        "layers": [
            _descriptor(
                types["layer"] if layer.media_type in GZIP_LAYERS else layer.media_type,
                layer.digest,
                layer.size,
            )
            for layer in layers
        ],
    }
    return go_json(manifest, indent=2)


def _check_media_types(media_types: str) -> None:
    if media_types not in MEDIA_TYPES:
        raise OCIError(
            f"media_types must be 'OCI' or 'Docker' (Dagger's ImageMediaTypes), got {media_types!r}"
        )


def push_layers(
    registry: str,
    repository: str,
    tag: str,
    layers: list[Layer],
    config: ImageConfig,
    *,
    media_types: Literal["OCI", "Docker"] = "OCI",
    client: httpx.Client | None = None,
) -> str:
    """Push ready layer blobs, the config and the manifest; returns what Dagger's `publish` returns."""
    _check_name(registry, repository, tag)
    _check_media_types(media_types)
    with RegistryClient(registry, repository, client) as reg:
        digest = _push_manifest(reg, tag, layers, config, media_types)[0]
    return f"{registry}/{repository}:{tag}@{digest}"


def _push_manifest(
    reg: RegistryClient, reference: str | None, layers: list[Layer], config: ImageConfig, media_types: str
) -> tuple[str, int]:
    """Upload blobs and the manifest under `reference` (a tag; None: its digest); returns (digest, size)."""
    for layer in layers:
        reg.put_blob(layer.digest, layer.size, layer.path)
    config_blob = config.to_json([layer.diff_id for layer in layers])
    reg.put_blob("sha256:" + hashlib.sha256(config_blob).hexdigest(), len(config_blob), config_blob)
    manifest = manifest_json(layers, config_blob, media_types)
    reference = reference or "sha256:" + hashlib.sha256(manifest).hexdigest()
    return reg.put_manifest(reference, MEDIA_TYPES[media_types]["manifest"], manifest), len(manifest)


def push_image(
    registry: str,
    repository: str,
    tag: str,
    layers: list[Path],
    config: ImageConfig,
    *,
    media_types: Literal["OCI", "Docker"] = "OCI",
    client: httpx.Client | None = None,
    compresslevel: int = COMPRESSLEVEL,
) -> str:
    """Push layer directories (lowest first) as one image: `registry/repository:tag@sha256:<manifest>`."""
    _check_name(registry, repository, tag)
    _check_media_types(media_types)
    with tempfile.TemporaryDirectory(prefix="mlci-oci-push-") as tmp:
        blobs = [layer_blob(layer, Path(tmp), compresslevel=compresslevel) for layer in layers]
        return push_layers(registry, repository, tag, blobs, config, media_types=media_types, client=client)


def push_index(
    registry: str,
    repository: str,
    tag: str,
    images: list[tuple[str, list[Path], ImageConfig]],
    *,
    media_types: Literal["OCI", "Docker"] = "OCI",
    client: httpx.Client | None = None,
) -> str:
    """Push one image per platform ("linux/arm64") and an index over them, as a multi-platform publish."""
    _check_name(registry, repository, tag)
    _check_media_types(media_types)
    if not images:
        raise OCIError("push_index needs at least one (platform, layers, config) image, got none")
    entries = []
    with (
        tempfile.TemporaryDirectory(prefix="mlci-oci-push-") as tmp,
        RegistryClient(registry, repository, client) as reg,
    ):
        for plat, layers, config in sorted(
            images, key=lambda image: image[0]
        ):  # writer.go sorts by platform key
            os_name, _, arch = plat.partition("/")
            if not os_name or not arch or (os_name, arch) != (config.os, config.architecture):
                raise OCIError(
                    f"platform {plat!r} must be '<os>/<arch>' and match its config ({config.os}/{config.architecture})"
                )
            blobs = [layer_blob(layer, Path(tmp)) for layer in layers]
            digest, size = _push_manifest(reg, None, blobs, config, media_types)
            entries.append(
                {
                    **_descriptor(MEDIA_TYPES[media_types]["manifest"], digest, size),
                    "platform": {"architecture": arch, "os": os_name},
                }
            )
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPES[media_types]["index"], "manifests": entries}
        digest = reg.put_manifest(tag, MEDIA_TYPES[media_types]["index"], go_json(index, indent=2))
    return f"{registry}/{repository}:{tag}@{digest}"


# --- pulling -----------------------------------------------------------------------------------------


def parse_reference(reference: str) -> tuple[str, str, str]:
    """Split `registry/repository[:tag][@sha256:…]` into (registry, repository, tag or digest)."""
    registry, slash, rest = reference.partition("/")
    if not slash or not rest:
        raise OCIError(
            f"image reference must be 'host:port/repository:tag' (or '@sha256:…'), got {reference!r}"
        )
    rest, at, digest = rest.partition("@")
    repository, tag = rest, ""
    if ":" in rest:
        repository, _, tag = rest.rpartition(":")
    _check_name(registry, repository, tag or None)
    if at:
        if not DIGEST_RE.fullmatch(digest):
            raise OCIError(f"image reference digest must be sha256:<64 hex>, got {digest!r} in {reference!r}")
        return registry, repository, digest
    if not tag:
        raise OCIError(
            f"image reference {reference!r} names no tag and no digest; add ':<tag>' or '@sha256:…'"
        )
    return registry, repository, tag


def _pick_platform(index: dict[str, Any], reference: str) -> dict[str, Any]:
    want = ("linux", machine_arch())
    found = []
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        found.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if (plat.get("os"), plat.get("architecture")) == want:
            return dict(entry)
    raise OCIError(
        f"image index {reference} has no manifest for {want[0]}/{want[1]}; it has {found or 'none'}"
    )


def pull_image(
    reference: str, dest: Path, *, client: httpx.Client | None = None, layer_cache: Path | None = None
) -> tuple[list[Path], ImageConfig]:
    """Pull an image into `dest/<n>/` (n = 0 is the lowest layer) as overlay-ready directories.

    With `layer_cache`, each layer is unpacked once under it, keyed by its blob digest *and* diff_id (an
    entry exists only after that blob was verified to unpack to that diff_id), and reused from there."""
    registry, repository, ref = parse_reference(reference)
    dest.mkdir(parents=True, exist_ok=True)
    with RegistryClient(registry, repository, client) as reg:
        media_type, body, _ = reg.get_manifest(ref)
        if media_type in INDEX_TYPES:
            entry = _pick_platform(json.loads(body), reference)
            media_type, body, _ = reg.get_manifest(entry["digest"])
        if media_type not in MANIFEST_TYPES:
            raise OCIError(f"{reference} is a {media_type!r}; expected one of {MANIFEST_TYPES + INDEX_TYPES}")
        manifest = json.loads(body)
        config_desc = manifest.get("config") or {}
        with tempfile.TemporaryDirectory(prefix="mlci-oci-pull-") as tmp:
            config_blob = reg.get_blob(
                config_desc.get("digest", ""), int(config_desc.get("size", 0)), Path(tmp) / "config"
            ).read_bytes()
            config = ImageConfig.from_json(config_blob)
            diff_ids = (json.loads(config_blob).get("rootfs") or {}).get("diff_ids") or []
            layers = manifest.get("layers") or []
            if len(diff_ids) != len(layers):
                raise OCIError(
                    f"{reference}: the manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
                )
            out = []
            for n, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
                kept = None
                if layer_cache is not None:
                    key = hashlib.sha256(f"{desc.get('digest', '')} {diff_id}".encode()).hexdigest()[:32]
                    kept = layer_cache / key
                    if kept.is_dir():
                        os.utime(kept)
                        out.append(kept)
                        continue
                blob = reg.get_blob(desc.get("digest", ""), int(desc.get("size", 0)), Path(tmp) / f"layer{n}")
                target = dest / str(n)
                out.append(unpack_layer(blob, target, desc.get("mediaType", ""), diff_id))
                blob.unlink()
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(OSError):  # another run kept it first: use that one
                        target.rename(kept)
                    out[-1] = kept if kept.is_dir() else target
    return out, config


def _open_layer(blob: Path, media_type: str) -> io.BufferedIOBase:
    if media_type in GZIP_LAYERS:
        return gzip.open(blob, "rb")
    if media_type in (OCI_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar"):
        return open(blob, "rb")
    raise OCIError(
        f"layer media type {media_type!r} is not supported here; expected one of {(*GZIP_LAYERS, OCI_LAYER_TAR)}"
    )


class _HashingReader(io.RawIOBase):
    """Pass reads through from `source`, hashing the bytes (the diff_id of a layer being unpacked)."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        self.source, self.sha = source, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.sha.update(data)
        return data


def unpack_layer(blob: Path, out: Path, media_type: str = OCI_LAYER_GZIP, diff_id: str | None = None) -> Path:
    """Unpack one layer tar into a new directory `out`, turning `.wh.` entries into overlay whiteouts."""
    if out.exists():
        raise OCIError(f"unpack destination {out} already exists; pull into an empty directory")
    out.mkdir()
    try:
        with _open_layer(blob, media_type) as source:
            reader = _HashingReader(source)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                _Extractor(tar, out).run()
            while reader.read(CHUNK):
                pass
        got = "sha256:" + reader.sha.hexdigest()
        if diff_id is not None and got != diff_id:
            raise OCIError(
                f"layer {blob.name}: its tar hashes to {got}, but the config's diff_id is {diff_id}"
            )
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise OCIError(f"layer {blob.name} is not a readable tar ({type(exc).__name__}: {exc})") from exc
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


class _Extractor:
    """Write tar members under `root` only: no absolute names, no `..`, nothing through a symlink."""

    def __init__(self, tar: tarfile.TarFile, root: Path) -> None:
        self.tar, self.root = tar, root
        self.dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def refuse(self, member: tarfile.TarInfo, why: str) -> LayerRefused:
        return LayerRefused(
            f"layer entry {member.name!r} refused: {why}; a layer tar must only name paths inside the layer"
        )

    def parts(self, member: tarfile.TarInfo, name: str) -> list[str]:
        """The normalized path components of `name`, refused if it is absolute or climbs out."""
        if name.startswith("/"):
            raise self.refuse(member, f"absolute path {name!r}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, f"path {name!r} contains '..'")
        for part in parts[:-1]:
            if part.startswith(WHITEOUT + WHITEOUT):
                raise self.refuse(
                    member, f"an unknown .wh..wh. marker {part!r} (only .wh..wh..opq is meaningful)"
                )
            if part.startswith(WHITEOUT):
                raise self.refuse(member, f"its directory {part!r} is a whiteout name")
        return parts

    def parent(self, member: tarfile.TarInfo, parts: list[str]) -> Path:
        """The directory to create `parts[-1]` in, made as needed, never through a symlink or a non-directory."""
        path = self.root
        for part in parts[:-1]:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.refuse(
                    member,
                    f"it would be written through the symlink {path.relative_to(self.root)!s} -> {os.readlink(path)!r}",
                )
            if not stat.S_ISDIR(st.st_mode):
                raise self.refuse(member, f"its parent {path.relative_to(self.root)!s} is not a directory")
        return path

    def run(self) -> None:
        for member in self.tar:
            self.extract(member)
        for path, member in reversed(self.dirs):
            os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, (member.mtime, member.mtime))

    def extract(self, member: tarfile.TarInfo) -> None:
        parts = self.parts(member, member.name)
        if not parts:
            return  # the layer root ("./") itself
        parent = self.parent(member, parts)
        base = parts[-1]
        if base == OPAQUE:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            raise self.refuse(member, "an unknown .wh..wh. marker (only .wh..wh..opq is meaningful)")
        if base.startswith(WHITEOUT):
            name = base.removeprefix(WHITEOUT)
            if name in ("", ".", ".."):
                raise self.refuse(member, f"a whiteout of {name!r}, which names no entry of its directory")
            target = parent / name
            self.clear(target)
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
            return
        self.create(member, parent / base)

    def clear(self, path: Path) -> None:
        """Remove what a later entry replaces (a directory stays when a directory replaces it)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def create(self, member: tarfile.TarInfo, path: Path) -> None:
        if member.isdir():
            if not path.is_dir() or path.is_symlink():
                self.clear(path)
                os.mkdir(path, 0o700)
            self.dirs.append((path, member))
            self.xattrs(member, path)
            return
        if member.ischr() or member.isblk():
            raise self.refuse(member, "a device node (layers carry none; whiteouts are .wh. files)")
        self.clear(path)
        if member.issym():
            os.symlink(member.linkname, path)  # stored, never followed: parents are checked with lstat
        elif member.islnk():
            target_parts = self.parts(member, member.linkname)
            target = self.parent(member, target_parts) / target_parts[-1] if target_parts else self.root
            if not os.path.lexists(target) or (os.path.isdir(target) and not os.path.islink(target)):
                raise self.refuse(
                    member, f"hard link to {member.linkname!r}, which is not an earlier file of this layer"
                )
            os.link(target, path, follow_symlinks=False)
            return
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        elif member.isreg():
            source = self.tar.extractfile(member)
            assert source is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        else:
            raise self.refuse(member, f"unsupported tar entry type {member.type!r}")
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        self.xattrs(member, path)  # after chown, which drops security.capability
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def xattrs(self, member: tarfile.TarInfo, path: Path) -> None:
        for key, value in sorted(member.pax_headers.items()):
            if not key.startswith(PAX_XATTR):
                continue
            name = key.removeprefix(PAX_XATTR)
            if name.startswith(OVERLAY_XATTRS):
                raise self.refuse(
                    member,
                    f"it sets the overlay xattr {name!r} (only .wh. entries may change overlay semantics)",
                )
            os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
