"""Real registries on 127.0.0.1 (Debian's docker-registry), real artifacts, and one store of each kind."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from mlci.registry import Store, open_store

if TYPE_CHECKING:
    from tests.registry.token_service import TokenService

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "breast_cancer"
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USERNAME, PASSWORD = "ci-robot", "s3cret-Pa55word-do-not-leak"

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: mlci-test-secret
{auth}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Registry:
    """A running `docker-registry serve`, with its storage directory and log."""

    root: Path
    port: int
    auth: str = ""  # the config's `auth:` section, if any
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def start(self, timeout: float = 15.0) -> Registry:
        config = self.root / "config.yml"
        config.write_text(CONFIG.format(storage=self.storage, port=self.port, auth=self.auth))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"docker-registry did not answer GET /v2/ on {self.url} within {timeout}s; log tail:\n{tail}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def new_registry(root: Path, auth: str = "") -> Registry:
    root.mkdir(parents=True, exist_ok=True)
    return Registry(root, free_port(), auth)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry for the whole session."""
    reg = new_registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd (bcrypt) Basic auth."""
    bcrypt = pytest.importorskip(
        "bcrypt", reason="the auth registry needs `pip install bcrypt` (a test dependency)"
    )
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USERNAME}:{hashed}\n")
    reg = new_registry(root, f"auth:\n  htpasswd:\n    realm: mlci-test\n    path: {htpasswd}\n").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenService]]:
    """A registry behind the Bearer token flow, with its token service (both on 127.0.0.1)."""
    pytest.importorskip(
        "cryptography", reason="the token registry needs `pip install cryptography` (a test dependency)"
    )
    from tests.registry.token_service import TokenService

    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(root, USERNAME, PASSWORD).start()
    reg = new_registry(root, tokens.registry_auth_yaml())
    try:
        yield reg.start(), tokens
    finally:
        reg.stop()
        tokens.stop()


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """Start extra registries for one test (stopped at its end)."""
    started: list[Registry] = []

    def start() -> Registry:
        reg = new_registry(tmp_path / f"registry{len(started)}").start()
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


def _train(root: Path, c: str) -> Path:
    from mlci.config import load_config
    from mlci.pipeline import run_pipeline

    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".mlci"))
    toml = root / "mlci.toml"
    text = toml.read_text()
    if "C = 1.0" not in text:
        raise RuntimeError(f"{toml} no longer sets 'C = 1.0'; update the registry test fixture.")
    toml.write_text(text.replace("C = 1.0", f"C = {c}"))
    artifact = run_pipeline(load_config(toml)).artifact
    if artifact is None:
        raise RuntimeError("run_pipeline produced no artifact")
    return Path(artifact)


@pytest.fixture(scope="session")
def artifact_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact of the bundled example (C = 1.0)."""
    return _train(tmp_path_factory.mktemp("train") / "a", "1.0")


@pytest.fixture(scope="session")
def artifact_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different artifact (C = 0.5)."""
    return _train(tmp_path_factory.mktemp("train") / "b", "0.5")


@dataclass
class Target:
    """Where a store lives: enough to reopen it (also from another process) and to reach its raw storage."""

    kind: str
    url: str
    repository: str
    storage: Path  # the layout directory, or the registry's storage root

    def open(self) -> Store:
        return open_store(self.url, self.repository)

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        if self.kind == "layout":
            return self.storage / "blobs" / "sha256" / hex_
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


@pytest.fixture(params=["layout", "registry"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """A fresh, empty repository in an OCI layout or in the session registry."""
    repository = f"mlci/test-{uuid.uuid4().hex[:10]}"
    if request.param == "layout":
        return Target("layout", str(tmp_path / "layouts"), repository, tmp_path / "layouts" / repository)
    reg: Registry = request.getfixturevalue("registry")
    return Target("registry", reg.url, repository, reg.storage)


@pytest.fixture
def store(target: Target) -> Iterator[Store]:
    with open_store(target.url, target.repository) as opened:
        yield opened
