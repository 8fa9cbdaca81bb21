"""The Mlci object: every pipeline stage as a Dagger function that builds a container graph.

Each stage container runs the mlci CLI (the argv lists live in ``commands.py``); nothing here imports
mlci's ML code. Functions return lazy Containers, Directories and Files, and await only where the result
is a value (a manifest digest, a pushed reference) or where a failure must stop what follows.
"""

import asyncio
import json
import re
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any

import dagger
from dagger import DefaultPath, Doc, Ignore, check, dag, function, object_type

from . import commands as cmd

__all__ = ["GateFailed", "Mlci", "SmokeFailed", "StageFailed"]

# python:3.11-slim-bookworm pinned by digest. Taken from public Dockerfiles that pin this tag (two
# independent repositories use this one); not checked against Docker Hub, which these machines cannot reach.
# Refresh: `docker buildx imagetools inspect python:3.11-slim-bookworm` (the index digest, every platform).
PYTHON_IMAGE_DIGEST = "sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b"
PYTHON_IMAGE = "python:3.11-slim-bookworm" + (f"@{PYTHON_IMAGE_DIGEST}" if PYTHON_IMAGE_DIGEST else "")
PIP_CACHE = "/root/.cache/pip"
MLCI_HOME = "/opt/mlci"
MLCI_BUILD = "/tmp/mlci-build"  # the serving runtime's requirement files (removed from the image)
WHEEL_DIR = "/tmp/mlci-wheel"  # mlci's wheel, mounted into the serving runtime for its install only
# moby/patternmatcher anchors a pattern at the source root unless it starts with `**/`
# (internal/fsutil/filter.go): every local state directory and build output, at any depth.
SOURCE_IGNORE = [
    "**/.git", "**/.venv", "**/.venv-*", "**/.mlci", "**/__pycache__", "**/.pytest_cache", "**/.mypy_cache",
    "**/.ruff_cache", "**/.hypothesis", "**/*.egg-info", "**/build", "**/dist", "ci/sdk", "bench/.work",
]  # fmt: skip
# Only what `pip install` of mlci reads: editing tests, docs or examples leaves the install layers cached.
MLCI_SOURCE_IGNORE = [
    "**", "!pyproject.toml", "!constraints.txt", "!README.md", "!mlci/**", "!model/**", "!serving/**", "!monitor/**",
    "**/__pycache__",
]  # fmt: skip
# Debian packages mlci's own suite runs (the Makefile's APT_PACKAGES without the graph executor's tools):
# qemu-user runs the artifact under an emulated CPU without AVX (tests/test_qemu_cpus.py).
SYSTEM_PACKAGES = ["git", "docker-registry", "skopeo", "qemu-user"]
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Distributions the serving and monitor images leave out (distribution -> import name): `mlci serve` and
# `mlci monitor` never import them (tests/dagger/test_lean_runtime.py runs both with them blocked).
SERVING_DROPS = {"scikit-learn": "sklearn", "skl2onnx": "skl2onnx", "skops": "skops"}
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# The platform `train` builds the artifact on. x86-64 is what CI runners are; an arm64 engine (Apple silicon,
# Graviton) runs it emulated, so every machine computes the same floating-point bits and the same digest.
TRAIN_PLATFORM = dagger.Platform("linux/amd64")
# [os]/[arch][/variant], as containerd's platforms.Parse reads a Platform (core/platform.go DecodeInput).
PLATFORM = re.compile(r"linux/[a-z0-9_]+(/[a-z0-9]+)?")
ENVIRONMENTS = ("staging", "production")
REQUIREMENTS_SCRIPT = (Path(__file__).parent / "requirements.py").read_text(encoding="utf-8")
OUTPUT_TAIL = 4000  # characters of a failed command's output kept in an error or pipeline.json

Source = Annotated[
    dagger.Directory,
    DefaultPath("/"),
    Ignore(SOURCE_IGNORE),
    Doc("The model repository: code, data and mlci.toml. From another repository pass --source=."),
]
MlciSource = Annotated[
    dagger.Directory,
    DefaultPath("/"),
    Ignore(MLCI_SOURCE_IGNORE),
    Doc(
        "mlci's own source tree, installed in every container (default: this module's repository; "
        "a pinned release is a git ref, e.g. https://github.com/ORG/mlci#v0.1.0)"
    ),
]
ArtifactArg = Annotated[
    dagger.Directory | None,
    Doc("An artifact directory from `train` (or `mlci evaluate`); trained from --source when omitted"),
]
Username = Annotated[str, Doc("Registry user (goes with --password)")]
Password = Annotated[dagger.Secret | None, Doc("Registry password or token, e.g. env://REGISTRY_TOKEN")]
Production = Annotated[
    str,
    Doc("Production model the gate compares with: 'registry' (the production tag of [registry]) or 'none'"),
]
ProductionArtifact = Annotated[
    dagger.Directory | None, Doc("A production artifact directory to compare with (overrides --production)")
]
Env = Annotated[str, Doc("Environment: staging or production")]
Kubeconfig = Annotated[dagger.Secret | None, Doc("kubeconfig for [deploy] target = \"kubernetes\" (needs kubectl in the image)")]
Platform = Annotated[
    dagger.Platform,
    Doc(
        "Platform the training container runs on (train → export → evaluate): linux/amd64 by default, so an arm64 "
        "laptop or runner builds the artifact x86-64 builds (emulated); linux/arm64 trains natively there"
    ),
]
TrainPlatform = Annotated[
    dagger.Platform,
    Doc("Platform `train` runs on when no --artifact is given (see train --platform)"),
]
RegistryService = Annotated[
    dagger.Service | None,
    Doc(
        "A registry running as a Dagger service, bound in every container that talks to it under the host "
        "of [registry] url (e.g. registry for http://registry:5000)"
    ),
]


def tail(text: str) -> str:
    """The end of a command's output, where its error is."""
    return text if len(text) <= OUTPUT_TAIL else "…" + text[-OUTPUT_TAIL:]


def url_host(url: str) -> str:
    """host[:port] of an http(s) URL."""
    return url.split("://", 1)[1].split("/", 1)[0]


def service_alias(host: str, flag: str) -> str:
    """The name a registry service is bound by: the host without its port, as the engine aliases an image
    registry (core/container.go ContainerRegistryServiceBinding); never a loopback name or an IP literal."""
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name in LOOPBACK:
        raise ValueError(
            f"{flag} {host!r} is a loopback address: a registry service bound as {name!r} would shadow each "
            "container's own loopback. Give the service a name, e.g. --registry=registry:5000 with "
            '[registry] url = "http://registry:5000" in mlci.toml.'
        )
    if ":" in name or re.fullmatch(r"[0-9.]+", name):
        raise ValueError(f"{flag} {host!r}: a registry service is bound by a host name, not an IP address; use e.g. registry:5000.")
    return name


def checked_platform(platform: str) -> dagger.Platform:
    """``platform`` checked to be a Linux platform the engine can start the Python image as."""
    if not PLATFORM.fullmatch(platform):
        raise ValueError(
            f"--platform (or --train-platform) {platform!r} is not a Linux platform: the training container runs "
            f"the Linux image {PYTHON_IMAGE.split('@')[0]}, so give linux/<arch>[/<variant>], e.g. {TRAIN_PLATFORM} (the default: "
            "every x86-64 machine, and an arm64 one under emulation, builds the same artifact) or linux/arm64."
        )
    return dagger.Platform(platform)


class StageFailed(Exception):
    """A pipeline stage failed: its exit code and the files it still wrote (for `pipeline --keep-going`)."""

    def __init__(self, stage: str, message: str, exit_code: int | None = None, files: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stage, self.exit_code, self.files = stage, exit_code, files or {}


class GateFailed(StageFailed):
    """The gate judged the candidate not releasable (mlci gate exit 1 with a verdict saying passed = false)."""


class SmokeFailed(StageFailed):
    """The smoke test failed: the served model did not answer as the in-process one does."""


async def exec_result(ctr: dagger.Container) -> tuple[int, str]:
    """An expect=ANY exec's exit code, and its output when it failed."""
    code = await ctr.exit_code()
    return (code, "") if code == 0 else (code, tail(await ctr.stdout() + await ctr.stderr()))


class _Stages:
    """The stages `pipeline` ran and how each ended; with keep_going a failure is recorded, not raised."""

    def __init__(self, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.report: dict[str, dict[str, Any]] = {}

    async def run(self, name: str, work: Any) -> Any:
        """Await ``work``; its result, or (keep_going) the exception it raised."""
        try:
            value = await work
        except (StageFailed, dagger.ExecError) as exc:
            if not self.keep_going:
                raise
            output = f"{exc.stdout}{exc.stderr}" if isinstance(exc, dagger.ExecError) else ""
            self.report[name] = {"ok": False, "exit_code": exc.exit_code, "error": tail(f"{exc}\n{output}".strip())}
            return exc
        self.report[name] = {"ok": True}
        return value

    def skip(self, name: str, why: str) -> None:
        self.report[name] = {"ok": False, "skipped": why}

    def json(self) -> str:
        ok = all(stage["ok"] for stage in self.report.values())
        return json.dumps({"ok": ok, "stages": self.report}, indent=2, sort_keys=True) + "\n"


@object_type
class Mlci:
    """mlci's pipeline as container graphs: lint, test, train, smoke, gate, publish, deploy, rollback."""

    source: Source
    mlci_source: MlciSource
    config: Annotated[str, Doc("Path of mlci.toml inside --source")] = "mlci.toml"
    python_image: Annotated[
        str, Doc("Python image every container starts from, pinned by digest (a mirror works offline)")
    ] = PYTHON_IMAGE
    index_url: Annotated[str, Doc("Python package index for pip (PIP_INDEX_URL); empty: pip's default")] = ""
    extras: Annotated[
        list[str] | None, Doc("mlci extras every stage container installs, e.g. parquet for a Parquet dataset")
    ] = None

    # -- containers ---------------------------------------------------------------------------------

    def _python(self, platform: str | None = None) -> dagger.Container:
        ctr = (
            (dag.container(platform=dagger.Platform(platform)) if platform else dag.container())
            .from_(self.python_image)
            .with_env_variable("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .with_env_variable("PIP_ROOT_USER_ACTION", "ignore")
            .with_env_variable("PYTHONUNBUFFERED", "1")
            .with_mounted_cache(PIP_CACHE, dag.cache_volume("mlci-pip"))
        )
        return ctr.with_env_variable("PIP_INDEX_URL", self.index_url) if self.index_url else ctr

    @staticmethod
    def _apt(ctr: dagger.Container, packages: list[str]) -> dagger.Container:
        """Debian packages, with apt's lists and archives on cache volumes (the image's docker-clean hook,
        which empties /var/cache/apt after every install, removed so the cache is kept)."""
        bad = [p for p in packages if not DEBIAN_PACKAGE.fullmatch(p)]
        if bad:
            raise ValueError(
                f"system_packages: {bad[0]!r} is not a Debian package name (lowercase letters, digits, '+', '-', '.'); "
                "pass one name per --system-packages item, e.g. --system-packages=git,skopeo."
            )
        if not packages:
            return ctr
        keep = "echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/keep-cache"
        locked = dagger.CacheSharingMode.LOCKED  # apt takes its own lock on both directories
        return (
            ctr.with_env_variable("DEBIAN_FRONTEND", "noninteractive")
            .with_exec(["sh", "-c", f"rm -f /etc/apt/apt.conf.d/docker-clean && {keep}"])
            .with_mounted_cache("/var/cache/apt", dag.cache_volume("mlci-apt-cache"), sharing=locked)
            .with_mounted_cache("/var/lib/apt/lists", dag.cache_volume("mlci-apt-lists"), sharing=locked)
            .with_exec(["sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends " + " ".join(packages)])
        )

    def _runtime(self, extras: list[str], start: dagger.Container | None = None) -> dagger.Container:
        """Python with mlci installed: dependencies from pyproject.toml alone first, then the package."""
        return (
            (start if start is not None else self._python())
            .with_workdir(MLCI_HOME)
            .with_file(f"{MLCI_HOME}/pyproject.toml", self.mlci_source.file("pyproject.toml"))
            .with_file(f"{MLCI_HOME}/constraints.txt", self.mlci_source.file("constraints.txt"))
            .with_new_file(f"{MLCI_HOME}/requirements.py", REQUIREMENTS_SCRIPT)
            .with_exec(["python", "requirements.py", "pyproject.toml", *extras], redirect_stdout="requirements.txt")
            # The same pins as the local venv: the artifact's digest depends on these libraries' versions.
            .with_exec(["pip", "install", "-r", "requirements.txt", "-c", "constraints.txt"])
            .with_directory(MLCI_HOME, self.mlci_source)
            .with_exec(["pip", "install", "--no-deps", "--no-build-isolation", "."])
        )

    def _base(
        self, extras: list[str], system_packages: list[str] | None = None, platform: str | None = None
    ) -> dagger.Container:
        """The runtime with the model source at /src, on ``platform`` (default: the engine's own)."""
        wanted = list(dict.fromkeys([*extras, *(self.extras or [])]))
        start = self._python(platform)
        start = self._apt(start, system_packages) if system_packages is not None else start
        return (
            self._runtime(wanted, start)
            .with_directory(cmd.OUT, dag.directory())  # mlci smoke/gate --out do not create parent directories
            .with_mounted_directory(cmd.SRC, self.source)
            .with_workdir(cmd.SRC)
        )

    @function
    def base(
        self,
        extras: Annotated[list[str] | None, Doc("mlci extras to install as well, e.g. test or dev")] = None,
    ) -> dagger.Container:
        """Python with mlci installed and the model source at /src (the workdir); pip cache on a volume."""
        return self._base(extras or [])

    def _credentials(self, ctr: dagger.Container, username: str, password: dagger.Secret | None) -> dagger.Container:
        """The registry credentials mlci reads: the password only ever as a secret variable."""
        if password is None:
            if username:
                raise ValueError(f"--username {username!r} was given without --password; pass both, or neither for an anonymous registry.")
            return ctr
        if not username:
            raise ValueError("--password was given without --username; pass both, or neither for an anonymous registry.")
        return ctr.with_env_variable("MLCI_REGISTRY_USERNAME", username).with_secret_variable(
            "MLCI_REGISTRY_PASSWORD", password
        )

    @staticmethod
    def _bind(ctr: dagger.Container, service: dagger.Service | None, url: str | None) -> dagger.Container:
        """The registry service under the host of [registry] url, for a container running mlci against it."""
        if service is None or url is None:
            return ctr
        return ctr.with_service_binding(service_alias(url_host(url), "[registry] url"), service)

    # -- mlci.toml ----------------------------------------------------------------------------------

    async def _registry_url(self) -> str | None:
        """[registry] url of --config in --source when it names a registry server; None for an OCI layout."""
        try:
            text = await self.source.file(self.config).contents()
        except dagger.QueryError as exc:
            raise ValueError(
                f"--config {self.config!r} is not a file in --source ({exc}). Pass the path of mlci.toml inside "
                "the source, e.g. --config=models/churn/mlci.toml."
            ) from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {self.config!r} in --source is not valid TOML: {exc}.") from exc
        url = str((raw.get("registry") or {}).get("url", ""))
        return url if url.startswith(("http://", "https://")) else None

    async def _release_registry(self) -> str:
        """[registry] url for a release; refused when it is an OCI layout (the default)."""
        url = await self._registry_url()
        if url is None:
            raise ValueError(
                f"[registry] url in {self.config} is a local OCI layout (the default when unset): `mlci push` "
                "would write it into /src of one container, which is discarded when that exec ends, so nothing "
                f'would be released and deploy would find no candidate. In {self.config}, set [registry] url = '
                '"https://<registry host>" (and [registry] repository): the registry releases go to.'
            )
        return url

    def _release(
        self,
        argv: list[str],
        username: str,
        password: dagger.Secret | None,
        kubeconfig: dagger.Secret | None,
        registry_service: dagger.Service | None,
        url: str,
    ) -> dagger.Container:
        """A release command with its credentials; never served from the exec cache (it has side effects)."""
        ctr = self._bind(self._credentials(self.base(), username, password), registry_service, url)
        if kubeconfig is not None:
            ctr = ctr.with_mounted_secret("/root/.kube/config", kubeconfig)
        return ctr.with_env_variable("MLCI_RUN_NONCE", uuid.uuid4().hex).with_exec(argv)

    # -- checks -------------------------------------------------------------------------------------

    @function
    @check
    def lint(self) -> dagger.Container:
        """ruff over the source (its own ruff configuration applies)."""
        return self.base(["dev"]).with_exec(cmd.lint())

    async def _test_container(self, system_packages: list[str]) -> dagger.Container:
        """pytest over the source (expect=ANY: the report of a failed run is still there to read)."""
        ctr = self._base(["test"], system_packages)
        names = await self.source.entries()
        if "pyproject.toml" in names or "setup.py" in names:
            # Build isolation: any backend the project declares; mlci's pins hold for what it shares.
            ctr = ctr.with_exec(["pip", "install", "-c", f"{MLCI_HOME}/constraints.txt", "-e", "."])
        return ctr.with_exec(cmd.test(cmd.JUNIT), expect=dagger.ReturnType.ANY)

    @staticmethod
    async def _tested(ctr: dagger.Container) -> dagger.File:
        """The JUnit report; StageFailed (carrying it) when pytest failed."""
        junit = ctr.file(cmd.JUNIT)
        code, output = await exec_result(ctr)
        if code:
            raise StageFailed("test", f"pytest failed (exit {code}):\n{output}", code, {"junit.xml": junit})
        return junit

    @function
    @check
    async def test(
        self,
        system_packages: Annotated[
            list[str], Doc("Debian packages the test suite runs (apt-get install); [] for none")
        ] = SYSTEM_PACKAGES,
    ) -> dagger.File:
        """The source's pytest suite (the source installed first when it is a Python project); the JUnit XML report."""
        return await self._tested(await self._test_container(system_packages))

    # -- the artifact -------------------------------------------------------------------------------

    @function
    def train(self, platform: Platform = TRAIN_PLATFORM) -> dagger.Directory:
        """train → export → evaluate, one `mlci` command each, as the local stages run; the artifact directory.

        All three run in one container on ``platform``: the artifact's every byte (the fitted model, the
        export's parity figures, evaluate's metrics and profile) comes from that one platform.
        """
        ctr = self._base([], platform=checked_platform(platform))
        for argv in cmd.train(self.config):
            ctr = ctr.with_exec(argv)
        return ctr.directory(f"{cmd.OUT}/artifact")

    def _serving_runtime(self, platform: str | None = None) -> dagger.Container:
        """What `mlci serve` and `mlci monitor` need: mlci's wheel and its dependencies without the training
        stack (SERVING_DROPS); no mlci source tree, no build tools, no pip cache."""
        wheel = (
            self._runtime([])
            .with_exec(["pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", WHEEL_DIR, "."])
            .directory(WHEEL_DIR)
        )
        drops = [f"--without={d}" for d in sorted(SERVING_DROPS)]
        return (
            self._python(platform)
            .with_workdir(MLCI_BUILD)
            .with_file(f"{MLCI_BUILD}/pyproject.toml", self.mlci_source.file("pyproject.toml"))
            .with_file(f"{MLCI_BUILD}/constraints.txt", self.mlci_source.file("constraints.txt"))
            .with_new_file(f"{MLCI_BUILD}/requirements.py", REQUIREMENTS_SCRIPT)
            .with_exec(["python", "requirements.py", "pyproject.toml", "--runtime", *drops], redirect_stdout="runtime.txt")
            .with_exec(["pip", "install", "-r", "runtime.txt", "-c", "constraints.txt"])
            .with_mounted_directory(WHEEL_DIR, wheel)
            .with_exec(["pip", "install", "--no-deps", "--no-index", "--find-links", WHEEL_DIR, "mlci"])
            .without_mount(WHEEL_DIR)
            .without_mount(PIP_CACHE)
            .with_workdir("/mlci")
            .without_directory(MLCI_BUILD)
        )

    def _baked(self, artifact: dagger.Directory, manifest: dict, role: str, platform: str | None = None) -> dagger.Container:
        """The serving runtime with the artifact at /mlci/artifact, the prediction log directory the server
        writes and the monitor reads, and the artifact's digest as a label."""
        return (
            self._serving_runtime(platform)
            .with_directory(cmd.ARTIFACT, artifact)
            .with_directory(cmd.PREDICTIONS, dag.directory())
            .with_directory(cmd.MONITOR_STATE, dag.directory())
            .with_label("org.opencontainers.image.title", f"{manifest['name']} (mlci {role})")
            .with_label("dev.mlci.artifact.digest", manifest["digest"])
        )

    def _serving(self, artifact: dagger.Directory, manifest: dict, commit: str, platform: str | None = None) -> dagger.Container:
        revision = commit or (manifest.get("runtime") or {}).get("git_commit") or "unknown"
        return (
            self._baked(artifact, manifest, "serving", platform)
            .with_label("org.opencontainers.image.revision", revision)
            .with_exposed_port(cmd.PORT, description="Open Inference Protocol (KServe V2 REST)")
            .with_entrypoint(cmd.serve())
        )

    def _monitor(self, artifact: dagger.Directory, manifest: dict, interval: float, platform: str | None = None) -> dagger.Container:
        return self._baked(artifact, manifest, "monitor", platform).with_entrypoint(cmd.monitor(interval))

    @function
    async def serving_image(
        self,
        artifact: ArtifactArg = None,
        commit: Annotated[str, Doc("Source commit for the image label (default: the one the manifest records)")] = "",
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> dagger.Container:
        """The model server image: `mlci serve` with the artifact baked in, port 8080, OCI labels."""
        artifact = artifact or self.train(train_platform)
        manifest = json.loads(await artifact.file("manifest.json").contents())
        return self._serving(artifact, manifest, commit)

    @function
    async def monitor_image(
        self,
        artifact: ArtifactArg = None,
        interval: Annotated[float, Doc("Seconds between monitoring cycles")] = 60.0,
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> dagger.Container:
        """The monitor image: `mlci monitor` on the artifact baked in, reading the prediction log volume.

        Mount the serving containers' prediction log at /var/lib/mlci/predictions; set
        MLCI_MONITOR_WEBHOOK for alerts.
        """
        artifact = artifact or self.train(train_platform)
        manifest = json.loads(await artifact.file("manifest.json").contents())
        return self._monitor(artifact, manifest, interval)

    # -- judging it ---------------------------------------------------------------------------------

    async def _smoke_container(self, artifact: dagger.Directory) -> dagger.Container:
        """The smoke client with the server bound; expect=ANY, one exec that gate, gate_report and pipeline share."""
        server = (await self.serving_image(artifact)).as_service(use_entrypoint=True)
        return (
            self.base()
            .with_directory(cmd.ARTIFACT, artifact)
            .with_service_binding(cmd.SERVER, server)
            .with_exec(cmd.smoke(self.config), expect=dagger.ReturnType.ANY)
        )

    async def _smoked(self, artifact: dagger.Directory) -> dagger.File:
        """smoke.json of a smoke test that passed; SmokeFailed with its output otherwise."""
        ctr = await self._smoke_container(artifact)
        code, output = await exec_result(ctr)
        if code:
            raise SmokeFailed("smoke", f"The smoke test failed (mlci smoke exit {code}):\n{output}", code)
        return ctr.file(cmd.SMOKE_OUT)

    @function
    @check
    async def smoke(
        self, artifact: ArtifactArg = None, train_platform: TrainPlatform = TRAIN_PLATFORM
    ) -> dagger.File:
        """The serving image as a service, real holdout rows sent to it by `mlci smoke`; smoke.json."""
        return await self._smoked(artifact or self.train(train_platform))

    async def _production(self, production: str, production_artifact: dagger.Directory | None) -> tuple[str, str, str | None]:
        """(--production for mlci gate, a note for the Markdown, the registry URL the gate reads)."""
        if production not in ("registry", "none"):
            raise ValueError(
                f"--production must be 'registry' or 'none'; got {production!r}. "
                "Pass a production artifact directory with --production-artifact."
            )
        if production_artifact is not None:
            return cmd.PRODUCTION, "", None
        if production == "none":
            return "none", "", None
        url = await self._registry_url()
        if url is None:
            note = (
                f"> **Note:** no production model was compared: [registry] url in {self.config} is a local OCI "
                "layout (inside the uploaded source, not where releases live), so the candidate was judged on "
                'its own. Set [registry] url = "https://…" to gate against production.\n\n'
            )
            print(note.strip(), file=sys.stderr)
            return "none", note, None
        return "registry", "", url

    async def _gate_container(
        self,
        artifact: dagger.Directory,
        smoke: dagger.File,
        production: str,
        production_artifact: dagger.Directory | None,
        username: str,
        password: dagger.Secret | None,
        registry_service: dagger.Service | None,
    ) -> tuple[dagger.Container, str]:
        """`mlci gate` (expect=ANY) and the note on what it compared with."""
        production, note, url = await self._production(production, production_artifact)
        ctr = self._bind(self._credentials(self.base(), username, password), registry_service, url)
        ctr = ctr.with_directory(cmd.ARTIFACT, artifact)
        if production_artifact is not None:
            ctr = ctr.with_directory(cmd.PRODUCTION, production_artifact)
        if production == "registry":  # the production tag moves: never replay an old reading of it
            ctr = ctr.with_env_variable("MLCI_RUN_NONCE", uuid.uuid4().hex)
        ctr = ctr.with_file(cmd.SMOKE_IN, smoke).with_exec(cmd.gate(self.config, production), expect=dagger.ReturnType.ANY)
        return ctr, note

    @staticmethod
    async def _rejected(verdict: dagger.File) -> bool:
        """Whether verdict.json exists and says passed = false."""
        try:
            return json.loads(await verdict.contents()).get("passed") is False
        except (dagger.QueryError, ValueError, AttributeError):
            return False

    async def _judge(
        self,
        artifact: dagger.Directory,
        smoke: dagger.File | None,
        production: str,
        production_artifact: dagger.Directory | None,
        username: str,
        password: dagger.Secret | None,
        registry_service: dagger.Service | None = None,
    ) -> tuple[dagger.File, str]:
        """verdict.json and the Markdown; GateFailed only when the gate says no, StageFailed on any other error."""
        smoke = smoke or await self._smoked(artifact)  # a smoke failure is reported as one, before any gate
        ctr, note = await self._gate_container(
            artifact, smoke, production, production_artifact, username, password, registry_service
        )
        verdict = ctr.file(cmd.VERDICT_OUT)
        code, output = await exec_result(ctr)
        if code == 0:
            return verdict, note + await ctr.stdout()
        if code == 1 and await self._rejected(verdict):
            markdown = note + await ctr.stdout()
            files = {"verdict.json": verdict, "verdict.md": markdown}
            raise GateFailed("gate", f"The gate rejected the candidate (mlci gate exit 1):\n{output}", 1, files)
        raise StageFailed(
            "gate", f"mlci gate failed (exit {code}) without a verdict rejecting the candidate:\n{output}", code
        )

    @function(cache="never")
    @check
    async def gate(
        self,
        artifact: ArtifactArg = None,
        production: Production = "registry",
        production_artifact: ProductionArtifact = None,
        smoke: Annotated[dagger.File | None, Doc("smoke.json from `smoke` (run here when omitted)")] = None,
        username: Username = "",
        password: Password = None,
        registry_service: RegistryService = None,
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> dagger.File:
        """The release policy, a trivial baseline and production on rows neither trained on; verdict.json. Fails when the gate fails."""
        artifact = artifact or self.train(train_platform)
        verdict, _ = await self._judge(artifact, smoke, production, production_artifact, username, password, registry_service)
        return verdict

    @function(cache="never")
    async def gate_report(
        self,
        artifact: ArtifactArg = None,
        production: Production = "registry",
        production_artifact: ProductionArtifact = None,
        username: Username = "",
        password: Password = None,
        registry_service: RegistryService = None,
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> str:
        """The gate's verdict as Markdown for a PR/MR comment; returns it whether the gate passes or not."""
        artifact = artifact or self.train(train_platform)
        smoker = await self._smoke_container(artifact)
        code, output = await exec_result(smoker)
        if code not in (0, 1):  # 1: smoke.json says why, and the gate reports it
            raise SmokeFailed("smoke", f"The smoke test could not run (mlci smoke exit {code}):\n{output}", code)
        ctr, note = await self._gate_container(
            artifact, smoker.file(cmd.SMOKE_OUT), production, production_artifact, username, password, registry_service
        )
        code, output = await exec_result(ctr)
        if code == 0 or (code == 1 and await self._rejected(ctr.file(cmd.VERDICT_OUT))):
            return note + await ctr.stdout()
        raise StageFailed("gate", f"mlci gate failed (exit {code}) without a verdict:\n{output}", code)

    # -- shipping it --------------------------------------------------------------------------------

    @staticmethod
    def _check_image_registry(registry: str, service: dagger.Service | None, url: str) -> None:
        """--registry as image references read it, and the same registry mlci push reaches with a service."""
        if service is not None:
            service_alias(registry, "--registry")
        if ":" not in registry and "." not in registry and registry != "localhost":
            raise ValueError(
                f"--registry {registry!r} has neither a port nor a dot, so an image reference reads it as a "
                f"Docker Hub namespace (docker.io/{registry}/…). Give host:port, e.g. --registry=registry:5000, "
                "or the registry's domain."
            )
        if service is not None and url_host(url) != registry:
            raise ValueError(
                f"--registry-service is reached at --registry's host, but [registry] url {url!r} names another "
                f"host than {registry!r}: `mlci push` would not reach the service. Set [registry] url = "
                f'"http://{registry}" (or https) in mlci.toml.'
            )

    @function(cache="never")
    async def publish(
        self,
        registry: Annotated[str, Doc("Image registry host, e.g. ghcr.io or registry:5000")],
        repository: Annotated[str, Doc("Serving image repository, e.g. acme/bc-serving (the monitor image goes to <repository>-monitor)")],
        artifact: ArtifactArg = None,
        tag: Annotated[str, Doc("Tag for the artifact and the serving image")] = "candidate",
        username: Username = "",
        password: Password = None,
        verdict: Annotated[dagger.File | None, Doc("verdict.json from `gate` (judged here when omitted)")] = None,
        commit: Annotated[str, Doc("Source commit for the serving image label")] = "",
        registry_service: Annotated[
            dagger.Service | None,
            Doc(
                "A registry running as a Dagger service, reached at the host of --registry (which must be the "
                "host of [registry] url). Plain http needs the engine's registries config: "
                '{"registries": {"registry:5000": {"http": true}}} in engine.json'
            ),
        ] = None,
        platforms: Annotated[
            list[str] | None,
            Doc("Image platforms, e.g. linux/amd64,linux/arm64 (default: the engine's; others need emulation)"),
        ] = None,
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> str:
        """Push the artifact with `mlci push` ([registry] of mlci.toml), publish the serving and monitor images; JSON references."""
        url = await self._release_registry()
        self._check_image_registry(registry, registry_service, url)
        artifact = artifact or self.train(train_platform)
        if verdict is None:
            verdict, _ = await self._judge(artifact, None, "registry", None, username, password, registry_service)
        pusher = self._bind(self._credentials(self.base(), username, password), registry_service, url)
        pushed = await (
            pusher.with_directory(cmd.ARTIFACT, artifact)
            .with_file(cmd.VERDICT_IN, verdict)
            .with_env_variable("MLCI_RUN_NONCE", uuid.uuid4().hex)
            .with_exec(cmd.push(self.config, tag))
            .stdout()
        )
        manifest = json.loads(await artifact.file("manifest.json").contents())
        targets = list(platforms or []) or [None]
        builds = {
            "serving_image": (lambda p: self._serving(artifact, manifest, commit, p), f"{registry}/{repository}:{tag}"),
            "monitor_image": (lambda p: self._monitor(artifact, manifest, 60.0, p), f"{registry}/{repository}-monitor:{tag}"),
        }
        references: dict[str, object] = {"artifact": json.loads(pushed)}
        for key, (build, address) in builds.items():
            image, *variants = [build(p) for p in targets]
            if password is not None:
                image = image.with_registry_auth(registry, username, password)
            extra = {"platform_variants": variants} if variants else {}
            references[key] = await image.publish(address, registry_service=registry_service, **extra)
        return json.dumps(references, indent=2, sort_keys=True)

    @function(cache="never")
    async def deploy(
        self,
        env: Env,
        promote: Annotated[bool, Doc("Promote first (staging takes candidate, production takes staging)")] = True,
        approve: Annotated[bool, Doc("A human approves the promotion (needed without continuous deployment)")] = False,
        username: Username = "",
        password: Password = None,
        kubeconfig: Kubeconfig = None,
        registry_service: RegistryService = None,
    ) -> str:
        """`mlci promote ENV` (or `mlci deploy ENV`) with the registry credentials as secrets; its JSON."""
        if env not in ENVIRONMENTS:
            raise ValueError(f"env must be one of {', '.join(ENVIRONMENTS)}; got {env!r}.")
        url = await self._release_registry()
        argv = cmd.promote(env, self.config, approve) if promote else cmd.deploy(env, self.config)
        return await self._release(argv, username, password, kubeconfig, registry_service, url).stdout()

    @function(cache="never")
    async def rollback(
        self,
        env: Env,
        username: Username = "",
        password: Password = None,
        kubeconfig: Kubeconfig = None,
        registry_service: RegistryService = None,
    ) -> str:
        """`mlci rollback ENV`: the environment back to the version it served before; its JSON."""
        if env not in ENVIRONMENTS:
            raise ValueError(f"env must be one of {', '.join(ENVIRONMENTS)}; got {env!r}.")
        url = await self._release_registry()
        argv = cmd.rollback(env, self.config)
        return await self._release(argv, username, password, kubeconfig, registry_service, url).stdout()

    # -- all of it ----------------------------------------------------------------------------------

    async def _train_and_smoke(self, stages: _Stages, artifact: dagger.Directory) -> dagger.File | None:
        """train, then smoke on its artifact; None when either failed (keep_going)."""
        if isinstance(await stages.run("train", artifact.sync()), Exception):
            stages.skip("smoke", "train failed")
            return None
        smoke = await stages.run("smoke", self._smoked(artifact))
        return None if isinstance(smoke, Exception) else smoke

    @function(cache="never")
    async def pipeline(
        self,
        checks: Annotated[bool, Doc("Run lint and test (off for a model repository without a Python test suite)")] = True,
        production: Production = "registry",
        registry: Annotated[str, Doc("Image registry host; publish is skipped when empty")] = "",
        repository: Annotated[str, Doc("Serving image repository (with --registry)")] = "",
        tag: Annotated[str, Doc("Tag for the artifact and the serving image")] = "candidate",
        username: Username = "",
        password: Password = None,
        deploy_to: Annotated[str, Doc("Promote and deploy to staging or production after publishing; empty: no deploy")] = "",
        approve: Annotated[bool, Doc("A human approves the promotion (with --deploy-to)")] = False,
        commit: Annotated[str, Doc("Source commit for the serving image label, e.g. $GITHUB_SHA")] = "",
        kubeconfig: Kubeconfig = None,
        registry_service: RegistryService = None,
        keep_going: Annotated[
            bool,
            Doc("Run every stage that can run, record failures in pipeline.json and return the directory anyway"),
        ] = False,
        train_platform: TrainPlatform = TRAIN_PLATFORM,
    ) -> dagger.Directory:
        """lint, test, train, smoke, gate, publish, deploy in order; a directory with every report and the artifact."""
        if registry and not repository:
            raise ValueError("--registry needs --repository: where the serving image goes, e.g. acme/model-serving.")
        if deploy_to and not registry:
            raise ValueError("--deploy-to needs --registry: only a published candidate can be promoted.")
        if deploy_to and deploy_to not in ENVIRONMENTS:
            raise ValueError(f"--deploy-to must be one of {', '.join(ENVIRONMENTS)}; got {deploy_to!r}.")
        if registry:
            self._check_image_registry(registry, registry_service, await self._release_registry())
        stages = _Stages(keep_going)
        artifact = self.train(train_platform)
        out = dag.directory()
        # lint, test and train → smoke are independent: the engine runs them side by side.
        if checks:
            test_ctr = await self._test_container(SYSTEM_PACKAGES)
            _, junit, smoke = await asyncio.gather(
                stages.run("lint", self.lint().sync()),
                stages.run("test", self._tested(test_ctr)),
                self._train_and_smoke(stages, artifact),
            )
            junit = junit.files.get("junit.xml") if isinstance(junit, StageFailed) else junit
            if isinstance(junit, dagger.File):
                out = out.with_file("junit.xml", junit)
        else:
            smoke = await self._train_and_smoke(stages, artifact)
        verdict = None
        if smoke is None:
            stages.skip("gate", "no smoke report")
        else:
            out = out.with_directory("artifact", artifact).with_file("smoke.json", smoke)
            judged = await stages.run(
                "gate", self._judge(artifact, smoke, production, None, username, password, registry_service)
            )
            files = judged.files if isinstance(judged, StageFailed) else {}
            if not isinstance(judged, Exception):
                verdict, markdown = judged
                files = {"verdict.json": verdict, "verdict.md": markdown}
            if files:
                out = out.with_file("verdict.json", files["verdict.json"]).with_new_file("verdict.md", files["verdict.md"])
        published = None
        if registry and verdict is None:
            stages.skip("publish", "the gate did not pass")
        elif registry:
            published = await stages.run(
                "publish",
                self.publish(
                    registry, repository, artifact, tag, username, password, verdict=verdict, commit=commit,
                    registry_service=registry_service,
                ),
            )  # fmt: skip
            if isinstance(published, Exception):
                published = None
            else:
                out = out.with_new_file("published.json", published)
        if deploy_to and published is None:
            stages.skip("deploy", "nothing was published")
        elif deploy_to:
            deployed = await stages.run(
                "deploy", self.deploy(deploy_to, True, approve, username, password, kubeconfig, registry_service)
            )
            if not isinstance(deployed, Exception):
                out = out.with_new_file("deployed.json", deployed)
        return out.with_new_file("pipeline.json", stages.json()) if keep_going else out
