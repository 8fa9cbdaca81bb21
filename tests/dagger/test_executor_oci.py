"""The executor's OCI part: overlay layer dirs pushed to a real docker-registry, read back by skopeo, pulled.

Engine files followed (Dagger v0.21.8): core/container.go `Publish` (the returned
`registry/repository:tag@sha256:<root digest>`), `useOCIMediaTypes` (OCI unless Docker is asked for),
`WithExposedPort` ("8080/tcp"); engine/engineutil/imageexport/writer.go `Assemble` (one platform: the
manifest is the root; several: an index), `commitPlatformManifest` and `patchImageConfig` (config and
manifest JSON). Whiteouts and opaque directories follow the OCI image-spec layer.md and overlayfs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.conftest import Registry, new_registry

from .executor.oci import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageConfig,
    Layer,
    LayerRefused,
    OCIError,
    layer_blob,
    layer_from_blob,
    machine_arch,
    parse_reference,
    pull_image,
    push_image,
    push_index,
    push_layers,
    unpack_layer,
)

pytestmark = pytest.mark.executor

CONFIG = ImageConfig(
    env=("PATH=/usr/local/bin:/usr/bin:/bin", "MLCI_MODE=serve"),
    entrypoint=("/bin/serve", "--port"),
    cmd=("8080",),
    workdir="/srv",
    user="1000:1000",
    labels=(("org.opencontainers.image.title", "bc-serving"), ("mlci.gate", "passed")),
    exposed_ports=("8080/tcp", "9090/udp"),
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real Debian docker-registry on 127.0.0.1 for this module (tests/registry/conftest.py)."""
    if shutil.which("skopeo") is None:
        pytest.fail(
            "skopeo is not installed: apt-get install -y skopeo (the executor tests read images back with it)"
        )
    reg = new_registry(tmp_path_factory.mktemp("oci-registry")).start()
    yield reg
    reg.stop()


def host(reg: Registry) -> str:
    return f"127.0.0.1:{reg.port}"


def skopeo(*args: str) -> bytes:
    """Run skopeo against the plain-HTTP test registry; its stdout."""
    done = subprocess.run(["skopeo", *args], capture_output=True, check=False)
    assert done.returncode == 0, f"skopeo {' '.join(args)} failed: {done.stderr.decode(errors='replace')}"
    return done.stdout


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.fixture
def two_layers(tmp_path: Path) -> list[Path]:
    """A base layer, and an upper layer that deletes etc/gone and makes opq/ opaque (as overlayfs writes them)."""
    lower, upper = tmp_path / "layer0", tmp_path / "layer1"
    for d in (lower / "etc", lower / "opq" / "sub", lower / "bin", upper / "etc", upper / "opq"):
        d.mkdir(parents=True)
    (lower / "etc" / "gone").write_text("deleted above\n")
    (lower / "etc" / "kept").write_text("still here\n")
    (lower / "opq" / "old").write_text("hidden by the opaque dir\n")
    (lower / "opq" / "sub" / "deep").write_text("hidden too\n")
    (lower / "bin" / "serve").write_text("#!/bin/sh\necho serving\n")
    os.chmod(lower / "bin" / "serve", 0o755)
    os.symlink("serve", lower / "bin" / "alias")
    os.link(lower / "etc" / "kept", lower / "etc" / "kept-link")
    whiteout(upper / "etc" / "gone")
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq" / "new").write_text("the only entry of opq\n")
    return [lower, upper]


def merged_view(layers: list[Path], mountpoint: Path) -> dict[str, str]:
    """Mount the layers (lowest first) as a read-only overlay in a private mount namespace; its listing."""
    mountpoint.mkdir(exist_ok=True)
    lowerdir = ":".join(str(p) for p in reversed(layers))
    script = (
        f"mount -t overlay overlay -o lowerdir={lowerdir} {mountpoint} && cd {mountpoint} && "
        "find . -mindepth 1 -printf '%p\\t%y\\t%m\\t%l\\n' | sort && "
        "find . -type f -exec sha256sum {} + | sort -k2"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"overlay mount of {lowerdir} failed: {done.stderr}"
    view: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if "\t" in line:
            path, rest = line.split("\t", 1)
            view[path] = view.get(path, "") + rest
        else:
            digest, path = line.split(maxsplit=1)
            view[path] += " " + digest
    return view


def test_publish_string_and_config_as_skopeo_reads_them(registry: Registry, two_layers: list[Path]) -> None:
    """push_image returns Publish's `registry/repo:tag@sha256:<manifest>`; skopeo reads the same config."""
    ref = push_image(host(registry), "acme/bc-serving", "v1", two_layers, CONFIG)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host(registry)}/acme/bc-serving:v1")
    assert ref == f"{host(registry)}/acme/bc-serving:v1@sha256:{hashlib.sha256(raw).hexdigest()}"
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST and len(manifest["layers"]) == 2
    inspect = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{host(registry)}/acme/bc-serving:v1")
    )
    assert inspect["Digest"] == ref.rsplit("@", 1)[1]
    assert (inspect["Os"], inspect["Architecture"]) == ("linux", machine_arch())
    config = json.loads(
        skopeo("inspect", "--config", "--tls-verify=false", f"docker://{host(registry)}/acme/bc-serving:v1")
    )
    assert config["config"] == {
        "User": "1000:1000",
        "ExposedPorts": {"8080/tcp": {}, "9090/udp": {}},
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "MLCI_MODE=serve"],
        "Entrypoint": ["/bin/serve", "--port"],
        "Cmd": ["8080"],
        "WorkingDir": "/srv",
        "Labels": {"org.opencontainers.image.title": "bc-serving", "mlci.gate": "passed"},
    }
    assert len(config["rootfs"]["diff_ids"]) == 2


def layer_tars(oci_dir: Path) -> list[tarfile.TarFile]:
    """The layer tars of the one image in an OCI layout directory, lowest first."""
    index = json.loads((oci_dir / "index.json").read_text())
    blob = lambda digest: oci_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_bytes())
    return [
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(d["digest"]).read_bytes())))
        for d in manifest["layers"]
    ]


def test_skopeo_copy_shows_whiteout_entries(
    registry: Registry, two_layers: list[Path], tmp_path: Path
) -> None:
    """The upper layer's tar carries `.wh.gone` and `opq/.wh..wh..opq` as empty files (OCI layer.md)."""
    push_image(host(registry), "acme/whiteouts", "v1", two_layers, CONFIG)
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{host(registry)}/acme/whiteouts:v1",
        f"oci:{tmp_path / 'oci'}:v1",
    )
    lower, upper = layer_tars(tmp_path / "oci")
    assert not [m.name for m in lower.getmembers() if ".wh." in m.name]
    members = {m.name: m for m in upper.getmembers()}
    assert sorted(members) == ["etc", "etc/.wh.gone", "opq", "opq/.wh..wh..opq", "opq/new"]
    for marker in ("etc/.wh.gone", "opq/.wh..wh..opq"):
        assert members[marker].isreg() and members[marker].size == 0
    names = [m.name for m in lower.getmembers()]
    assert names == sorted(names, key=lambda n: n.split("/"))  # depth-first, sorted
    assert {(m.uname, m.gname) for m in lower.getmembers()} == {("", "")}
    assert lower.getmember("etc/kept-link").islnk() and lower.getmember("bin/alias").linkname == "serve"


def test_pull_round_trips_to_the_same_overlay_view(
    registry: Registry, two_layers: list[Path], tmp_path: Path
) -> None:
    """Pulled layers mount to the same merged tree as the originals: etc/gone deleted, opq's lower hidden."""
    ref = push_image(host(registry), "acme/roundtrip", "v1", two_layers, CONFIG)
    pulled, config = pull_image(ref, tmp_path / "pulled")
    assert pulled == [tmp_path / "pulled" / "0", tmp_path / "pulled" / "1"]
    assert config == CONFIG
    assert stat.S_ISCHR(os.lstat(pulled[1] / "etc" / "gone").st_mode)
    assert os.getxattr(pulled[1] / "opq", "trusted.overlay.opaque") == b"y"
    view = merged_view(pulled, tmp_path / "mnt")
    assert "./etc/gone" not in view and "./opq/old" not in view and "./opq/sub" not in view
    assert view["./opq/new"].startswith("f\t644")
    assert view["./bin/serve"].startswith("f\t755") and view["./bin/alias"].startswith("l\t777\tserve")
    assert view == merged_view(two_layers, tmp_path / "mnt")
    assert os.lstat(pulled[0] / "etc" / "kept").st_ino == os.lstat(pulled[0] / "etc" / "kept-link").st_ino
    assert int(os.lstat(pulled[0] / "bin" / "serve").st_mtime) == int(
        os.lstat(two_layers[0] / "bin" / "serve").st_mtime
    )


def test_docker_media_types_and_a_skopeo_written_image_pull(
    registry: Registry, two_layers: list[Path], tmp_path: Path
) -> None:
    """media_types="Docker" pushes a v2s2 manifest; an image skopeo rewrote pulls to the same layers."""
    ref = push_image(host(registry), "acme/docker", "v1", two_layers, CONFIG, media_types="Docker")
    raw = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host(registry)}/acme/docker:v1")
    )
    assert raw["mediaType"] == DOCKER_MANIFEST
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {d["mediaType"] for d in raw["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    src, dst = f"docker://{host(registry)}/acme/docker:v1", f"docker://{host(registry)}/acme/by-skopeo:v1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--format", "oci", src, dst)
    pulled, config = pull_image(f"{host(registry)}/acme/by-skopeo:v1", tmp_path / "pulled")
    assert config == CONFIG
    assert merged_view(pulled, tmp_path / "mnt") == merged_view(two_layers, tmp_path / "mnt")
    assert parse_reference(ref)[2] == ref.rsplit("@", 1)[1]


def test_same_layer_twice_is_not_uploaded_again(registry: Registry, two_layers: list[Path]) -> None:
    """Blobs are deterministic, so a second push only HEADs them (200) and puts the manifest."""
    exchanges: list[tuple[str, str, int]] = []

    def record(response: httpx.Response) -> None:
        exchanges.append((response.request.method, response.request.url.path, response.status_code))

    with httpx.Client(event_hooks={"response": [record]}) as client:
        first = push_image(host(registry), "acme/twice", "a", two_layers, CONFIG, client=client)
        assert [(m, s) for m, _, s in exchanges] == [("HEAD", 404), ("POST", 202), ("PUT", 201)] * 3 + [
            ("PUT", 201)
        ]
        exchanges.clear()
        second = push_image(host(registry), "acme/twice", "b", two_layers, CONFIG, client=client)
    assert [(m, s) for m, _, s in exchanges] == [("HEAD", 200)] * 3 + [("PUT", 201)]
    assert exchanges[-1][1] == "/v2/acme/twice/manifests/b"
    assert first.rsplit("@", 1)[1] == second.rsplit("@", 1)[1]


def test_layer_blob_is_deterministic(two_layers: list[Path], tmp_path: Path) -> None:
    """The same directory gives the same blob; the diff_id is the sha256 of the tar inside."""
    a, b = layer_blob(two_layers[0], tmp_path / "a"), layer_blob(two_layers[0], tmp_path / "b")
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    assert a.digest == "sha256:" + hashlib.sha256(a.path.read_bytes()).hexdigest()
    assert a.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(a.path.read_bytes())).hexdigest()
    assert layer_from_blob(a.path) == a


def test_index_pull_picks_this_machines_platform(registry: Registry, tmp_path: Path) -> None:
    """push_index publishes an OCI index (the root digest); pull picks linux/<this arch>."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    for d, text in ((mine, "native"), (other, "foreign")):
        d.mkdir()
        (d / "arch").write_text(text)
    foreign = "arm64" if machine_arch() != "arm64" else "amd64"
    ref = push_index(
        host(registry),
        "acme/multi",
        "v1",
        [
            (f"linux/{machine_arch()}", [mine], CONFIG),
            (f"linux/{foreign}", [other], ImageConfig(architecture=foreign)),
        ],
    )
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host(registry)}/acme/multi:v1")
    assert ref.endswith("@sha256:" + hashlib.sha256(raw).hexdigest())
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == sorted(
        [machine_arch(), foreign]
    )
    layers, config = pull_image(ref, tmp_path / "pulled")
    assert (layers[0] / "arch").read_text() == "native" and config == CONFIG
    with pytest.raises(OCIError, match=r"no manifest for linux/.*it has \['linux/"):
        only_foreign = push_index(
            host(registry),
            "acme/foreign",
            "v1",
            [(f"linux/{foreign}", [other], ImageConfig(architecture=foreign))],
        )
        pull_image(only_foreign, tmp_path / "none")


def crafted_tar(tmp_path: Path, build: Callable[[tarfile.TarFile], None]) -> Layer:
    """A gzip'd layer tar written entry by entry, as an untrusted registry could serve it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    path = tmp_path / "crafted.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    return layer_from_blob(path)


def entry(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


OUTSIDE = "outside"  # a sibling of the pull destination, that no crafted entry may reach


@pytest.mark.parametrize(
    ("case", "build", "message"),
    [
        ("dotdot", lambda t: entry(t, f"../{OUTSIDE}/pwned"), "contains '..'"),
        ("absolute", lambda t: entry(t, "/tmp/pwned"), "absolute path"),
        (
            "absolute-symlink",
            lambda t: (entry(t, "esc", tarfile.SYMTYPE, link="{outside}"), entry(t, "esc/pwned")),
            "through the symlink esc",
        ),
        (
            "relative-symlink",
            lambda t: (entry(t, "esc", tarfile.SYMTYPE, link=f"../../{OUTSIDE}"), entry(t, "esc/pwned")),
            "through the symlink esc",
        ),
        (
            "hardlink-out",
            lambda t: entry(t, "h", tarfile.LNKTYPE, link=f"../{OUTSIDE}/target"),
            "contains '..'",
        ),
        ("device", lambda t: entry(t, "dev/sda", tarfile.CHRTYPE), "a device node"),
        ("whiteout-dotdot", lambda t: entry(t, "etc/.wh..."), "names no entry"),
        ("aufs-marker", lambda t: entry(t, ".wh..wh.plnk/1"), "unknown .wh..wh. marker"),
    ],
)
def test_crafted_layer_is_refused(
    registry: Registry, tmp_path: Path, case: str, build: Callable[[tarfile.TarFile], object], message: str
) -> None:
    """An untrusted layer never writes outside dest: the pull stops with LayerRefused, dest/<n> is removed."""
    outside = tmp_path / OUTSIDE
    outside.mkdir()
    (outside / "target").write_text("must stay single-linked")

    def fill(tar: tarfile.TarFile) -> None:
        build(_Linking(tar, str(outside)))  # type: ignore[arg-type]

    layer = crafted_tar(tmp_path, fill)
    ref = push_layers(host(registry), f"acme/crafted-{case}", "v1", [layer], ImageConfig())
    dest = tmp_path / "pull" / "dest"
    with pytest.raises(LayerRefused, match=message):
        pull_image(ref, dest)
    assert (
        sorted(p.name for p in outside.iterdir()) == ["target"] and os.stat(outside / "target").st_nlink == 1
    )
    assert not (dest / "0").exists() and not Path("/tmp/pwned").exists()


class _Linking:
    """A TarFile proxy that fills `{outside}` into link targets (the absolute path is known only per test)."""

    def __init__(self, tar: tarfile.TarFile, outside: str) -> None:
        self.tar, self.outside = tar, outside

    def addfile(self, info: tarfile.TarInfo, data: io.BytesIO | None = None) -> None:
        info.linkname = info.linkname.replace("{outside}", self.outside)
        self.tar.addfile(info, data)


def test_corrupted_blob_and_wrong_diff_id_are_refused(
    registry: Registry, two_layers: list[Path], tmp_path: Path
) -> None:
    """A blob whose bytes do not hash to its digest, and a config whose diff_id lies, stop the pull."""
    blob = layer_blob(two_layers[0], tmp_path / "blobs")
    lying = Layer(blob.digest, "sha256:" + "0" * 64, blob.size, blob.path)
    ref = push_layers(host(registry), "acme/lying", "v1", [lying], ImageConfig())
    with pytest.raises(OCIError, match=r"its tar hashes to sha256:.*but the config's diff_id is sha256:0000"):
        pull_image(ref, tmp_path / "lying")
    assert not (tmp_path / "lying" / "0").exists()

    ref = push_image(host(registry), "acme/corrupt", "v1", [tmp_path / "blobs"], ImageConfig())
    digest = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host(registry)}/acme/corrupt:v1")
    )["layers"][0]["digest"]
    hexdigest = digest.removeprefix("sha256:")
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    data.write_bytes(data.read_bytes()[:-1] + b"!")
    with pytest.raises(OCIError, match=f"blob {digest} .* hashing to sha256:"):
        pull_image(ref, tmp_path / "corrupt")


def test_bad_input_is_refused_with_what_to_do(registry: Registry, tmp_path: Path) -> None:
    """Each bad input names what was expected, what came, and how to fix it."""
    dev = tmp_path / "dev-layer"
    dev.mkdir()
    os.mknod(dev / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(OCIError, match=r"'null' is a device node.*empty its dev/"):
        layer_blob(dev, tmp_path / "out")
    named = tmp_path / "named"
    named.mkdir()
    (named / ".wh.file").write_text("")
    with pytest.raises(OCIError, match="named like a whiteout"):
        layer_blob(named, tmp_path / "out")
    redirect = tmp_path / "redirect"
    (redirect / "d").mkdir(parents=True)
    os.setxattr(redirect / "d", "trusted.overlay.redirect", b"/elsewhere")
    with pytest.raises(OCIError, match="redirect_dir=off"):
        layer_blob(redirect, tmp_path / "out")
    with pytest.raises(OCIError, match="expected a layer directory"):
        layer_blob(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(OCIError, match="repository must be lowercase"):
        push_image(host(registry), "Acme/Img", "v1", [], ImageConfig())
    with pytest.raises(OCIError, match="tag must match"):
        push_image(host(registry), "acme/img", "bad tag", [], ImageConfig())
    with pytest.raises(OCIError, match="media_types must be 'OCI' or 'Docker'"):
        push_image(host(registry), "acme/img", "v1", [], ImageConfig(), media_types="oci")  # type: ignore[arg-type]
    with pytest.raises(OCIError, match="names no tag and no digest"):
        pull_image(f"{host(registry)}/acme/img", tmp_path / "x")
    with pytest.raises(OCIError, match=r"answered HTTP 404"):
        pull_image(f"{host(registry)}/acme/absent:v1", tmp_path / "x")


def test_xattrs_and_file_capabilities_survive_the_round_trip(tmp_path: Path) -> None:
    """PAX SCHILY.xattr records carry xattrs; security.capability (ping's cap_net_raw) outlives the chown."""
    layer = tmp_path / "layer"
    layer.mkdir()
    ping = layer / "ping"
    ping.write_bytes(b"\x7fELF")
    os.chown(ping, 1000, 1000)  # before the capability: chown drops it
    cap_net_raw = bytes.fromhex(
        "0100000200200000000000000000000000000000"
    )  # vfs cap v2, permitted: cap_net_raw
    os.setxattr(ping, "security.capability", cap_net_raw)
    os.setxattr(ping, "user.mlci", b"\xff\x00binary")
    blob = layer_blob(layer, tmp_path / "blobs")
    out = unpack_layer(blob.path, tmp_path / "out", diff_id=blob.diff_id)
    assert os.getxattr(out / "ping", "user.mlci") == b"\xff\x00binary"
    assert os.getxattr(out / "ping", "security.capability") == cap_net_raw
    assert (os.lstat(out / "ping").st_uid, os.lstat(out / "ping").st_gid) == (1000, 1000)
