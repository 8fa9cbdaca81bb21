"""The Mlci object: every pipeline stage as a Dagger function that builds a container graph.

Each stage container runs the mlci CLI (the argv lists live in ``commands.py``); nothing here imports
mlci's ML code. Functions return lazy Containers, Directories and Files, and await only where the result
is a value (a manifest digest, a pushed reference) or where a failure must stop what follows.
"""

import asyncio
import json
import uuid
from pathlib import Path
from typing import Annotated

import dagger
from dagger import DefaultPath, Doc, Ignore, check, dag, function, object_type

from . import commands as cmd

__all__ = ["GateFailed", "Mlci"]

PYTHON_IMAGE = "python:3.11-slim-bookworm"
PIP_CACHE = "/root/.cache/pip"
MLCI_HOME = "/opt/mlci"
SOURCE_IGNORE = [".venv", ".venv-kserve", ".git", ".mlci", "**/__pycache__", ".pytest_cache", "bench/.work"]
# Only what `pip install` of mlci reads: editing tests, docs or examples leaves the install layers cached.
MLCI_SOURCE_IGNORE = [
    "**", "!pyproject.toml", "!constraints.txt", "!README.md", "!mlci/**", "!model/**", "!serving/**", "!monitor/**",
    "**/__pycache__",
]  # fmt: skip
ENVIRONMENTS = ("staging", "production")
REQUIREMENTS_SCRIPT = (Path(__file__).parent / "requirements.py").read_text(encoding="utf-8")

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


class GateFailed(Exception):
    """The gate (or the smoke test it needs) judged the candidate not releasable."""


@object_type
class Mlci:
    """mlci's pipeline as container graphs: lint, test, train, smoke, gate, publish, deploy, rollback."""

    source: Source
    mlci_source: MlciSource
    config: Annotated[str, Doc("Path of mlci.toml inside --source")] = "mlci.toml"
    python_image: Annotated[str, Doc("Python image every container starts from (a mirror works offline)")] = (
        PYTHON_IMAGE
    )
    index_url: Annotated[str, Doc("Python package index for pip (PIP_INDEX_URL); empty: pip's default")] = ""

    # -- containers ---------------------------------------------------------------------------------

    def _python(self) -> dagger.Container:
        ctr = (
            dag.container()
            .from_(self.python_image)
            .with_env_variable("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .with_env_variable("PIP_ROOT_USER_ACTION", "ignore")
            .with_env_variable("PYTHONUNBUFFERED", "1")
            .with_mounted_cache(PIP_CACHE, dag.cache_volume("mlci-pip"))
        )
        return ctr.with_env_variable("PIP_INDEX_URL", self.index_url) if self.index_url else ctr

    def _runtime(self, extras: list[str]) -> dagger.Container:
        """Python with mlci installed: dependencies from pyproject.toml alone first, then the package."""
        return (
            self._python()
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

    @function
    def base(
        self,
        extras: Annotated[list[str] | None, Doc("mlci extras to install as well, e.g. test or dev")] = None,
    ) -> dagger.Container:
        """Python with mlci installed and the model source at /src (the workdir); pip cache on a volume."""
        return (
            self._runtime(extras or [])
            .with_directory(cmd.OUT, dag.directory())  # mlci smoke/gate --out do not create parent directories
            .with_mounted_directory(cmd.SRC, self.source)
            .with_workdir(cmd.SRC)
        )

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

    def _release(
        self, argv: list[str], username: str, password: dagger.Secret | None, kubeconfig: dagger.Secret | None
    ) -> dagger.Container:
        """A release command with its credentials; never served from the exec cache (it has side effects)."""
        ctr = self._credentials(self.base(), username, password)
        if kubeconfig is not None:
            ctr = ctr.with_mounted_secret("/root/.kube/config", kubeconfig)
        return ctr.with_env_variable("MLCI_RUN_NONCE", uuid.uuid4().hex).with_exec(argv)

    # -- checks -------------------------------------------------------------------------------------

    @function
    @check
    def lint(self) -> dagger.Container:
        """ruff over the source (its own ruff configuration applies)."""
        return self.base(["dev"]).with_exec(cmd.lint())

    @function
    @check
    def test(self) -> dagger.File:
        """The source's pytest suite (the source installed editable, without dependencies); the JUnit XML report."""
        junit = f"{cmd.OUT}/junit.xml"
        return (
            self.base(["test"])
            .with_exec(["pip", "install", "--no-deps", "--no-build-isolation", "-e", "."])
            .with_exec(cmd.test(junit))
            .file(junit)
        )

    # -- the artifact -------------------------------------------------------------------------------

    @function
    def train(self) -> dagger.Directory:
        """train → export → evaluate, one `mlci` command each, as the local stages run; the artifact directory."""
        ctr = self.base()
        for argv in cmd.train(self.config):
            ctr = ctr.with_exec(argv)
        return ctr.directory(f"{cmd.OUT}/artifact")

    @function
    async def serving_image(
        self,
        artifact: ArtifactArg = None,
        commit: Annotated[str, Doc("Source commit for the image label (default: the one the manifest records)")] = "",
    ) -> dagger.Container:
        """The model server image: `mlci serve` with the artifact baked in, port 8080, OCI labels."""
        artifact = artifact or self.train()
        manifest = json.loads(await artifact.file("manifest.json").contents())
        revision = commit or (manifest.get("runtime") or {}).get("git_commit") or "unknown"
        return (
            self._baked(artifact, manifest, "serving")
            .with_label("org.opencontainers.image.revision", revision)
            .with_exposed_port(cmd.PORT, description="Open Inference Protocol (KServe V2 REST)")
            .with_entrypoint(cmd.serve())
        )

    def _baked(self, artifact: dagger.Directory, manifest: dict, role: str) -> dagger.Container:
        """mlci installed (no build cache) with the artifact at /mlci/artifact and its digest as a label."""
        return (
            self._runtime([])
            .without_mount(PIP_CACHE)
            .with_directory(cmd.ARTIFACT, artifact)
            .with_workdir("/mlci")
            .with_label("org.opencontainers.image.title", f"{manifest['name']} (mlci {role})")
            .with_label("dev.mlci.artifact.digest", manifest["digest"])
        )

    @function
    async def monitor_image(
        self,
        artifact: ArtifactArg = None,
        interval: Annotated[float, Doc("Seconds between monitoring cycles")] = 60.0,
    ) -> dagger.Container:
        """The monitor image: `mlci monitor` on the artifact baked in, reading the prediction log volume.

        Mount the serving containers' prediction log at /var/lib/mlci/predictions; set
        MLCI_MONITOR_WEBHOOK for alerts.
        """
        artifact = artifact or self.train()
        manifest = json.loads(await artifact.file("manifest.json").contents())
        return self._baked(artifact, manifest, "monitor").with_entrypoint(cmd.monitor(interval))

    # -- judging it ---------------------------------------------------------------------------------

    async def _smoke_container(self, artifact: dagger.Directory, expect: dagger.ReturnType) -> dagger.Container:
        server = (await self.serving_image(artifact)).as_service(use_entrypoint=True)
        return (
            self.base()
            .with_directory(cmd.ARTIFACT, artifact)
            .with_service_binding(cmd.SERVER, server)
            .with_exec(cmd.smoke(self.config), expect=expect)
        )

    @function
    @check
    async def smoke(self, artifact: ArtifactArg = None) -> dagger.File:
        """The serving image as a service, real holdout rows sent to it by `mlci smoke`; smoke.json."""
        ctr = await self._smoke_container(artifact or self.train(), dagger.ReturnType.SUCCESS)
        return ctr.file(f"{cmd.OUT}/smoke.json")

    def _gate_container(
        self,
        artifact: dagger.Directory,
        smoke: dagger.File,
        production: str,
        production_artifact: dagger.Directory | None,
        username: str,
        password: dagger.Secret | None,
        expect: dagger.ReturnType,
    ) -> dagger.Container:
        if production not in ("registry", "none"):
            raise ValueError(
                f"--production must be 'registry' or 'none'; got {production!r}. "
                "Pass a production artifact directory with --production-artifact."
            )
        ctr = self._credentials(self.base(), username, password).with_directory(cmd.ARTIFACT, artifact)
        if production_artifact is not None:
            ctr, production = ctr.with_directory(cmd.PRODUCTION, production_artifact), cmd.PRODUCTION
        return ctr.with_file(cmd.SMOKE_IN, smoke).with_exec(cmd.gate(self.config, production), expect=expect)

    async def _judge(
        self,
        artifact: dagger.Directory,
        smoke: dagger.File | None,
        production: str,
        production_artifact: dagger.Directory | None,
        username: str,
        password: dagger.Secret | None,
    ) -> tuple[dagger.File, str]:
        """verdict.json and the Markdown; GateFailed (with the verdict) when the gate says no."""
        smoke = smoke or await self.smoke(artifact)
        ctr = self._gate_container(
            artifact, smoke, production, production_artifact, username, password, dagger.ReturnType.SUCCESS
        )
        try:
            markdown = await ctr.stdout()
        except dagger.ExecError as exc:
            if exc.exit_code != 1:
                raise
            raise GateFailed(f"The gate rejected the candidate (mlci gate exit 1):\n{exc.stdout}{exc.stderr}") from exc
        return ctr.file(f"{cmd.OUT}/verdict.json"), markdown

    @function
    @check
    async def gate(
        self,
        artifact: ArtifactArg = None,
        production: Production = "registry",
        production_artifact: ProductionArtifact = None,
        smoke: Annotated[dagger.File | None, Doc("smoke.json from `smoke` (run here when omitted)")] = None,
        username: Username = "",
        password: Password = None,
    ) -> dagger.File:
        """The release policy against production on the same holdout rows; verdict.json. Fails when the gate fails."""
        verdict, _ = await self._judge(artifact or self.train(), smoke, production, production_artifact, username, password)
        return verdict

    @function
    async def gate_report(
        self,
        artifact: ArtifactArg = None,
        production: Production = "registry",
        production_artifact: ProductionArtifact = None,
        username: Username = "",
        password: Password = None,
    ) -> str:
        """The gate's verdict as Markdown for a PR/MR comment; returns it whether the gate passes or not."""
        artifact = artifact or self.train()
        smoke = (await self._smoke_container(artifact, dagger.ReturnType.ANY)).file(f"{cmd.OUT}/smoke.json")
        return await self._gate_container(
            artifact, smoke, production, production_artifact, username, password, dagger.ReturnType.ANY
        ).stdout()

    # -- shipping it --------------------------------------------------------------------------------

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
            dagger.Service | None, Doc("A registry running as a Dagger service, reached at the host of --registry")
        ] = None,
    ) -> str:
        """Push the artifact with `mlci push` ([registry] of mlci.toml), publish the serving and monitor images; JSON references."""
        artifact = artifact or self.train()
        if verdict is None:
            verdict, _ = await self._judge(artifact, None, "registry", None, username, password)
        pusher = self._credentials(self.base(), username, password)
        if registry_service is not None:
            pusher = pusher.with_service_binding(registry.split(":", 1)[0], registry_service)
        pushed = await (
            pusher.with_directory(cmd.ARTIFACT, artifact)
            .with_file(cmd.VERDICT_IN, verdict)
            .with_env_variable("MLCI_RUN_NONCE", uuid.uuid4().hex)
            .with_exec(cmd.push(self.config, tag))
            .stdout()
        )
        images = {
            "serving_image": (await self.serving_image(artifact, commit), f"{registry}/{repository}:{tag}"),
            "monitor_image": (await self.monitor_image(artifact), f"{registry}/{repository}-monitor:{tag}"),
        }
        references: dict[str, object] = {"artifact": json.loads(pushed)}
        for key, (image, address) in images.items():
            if password is not None:
                image = image.with_registry_auth(registry, username, password)
            references[key] = await image.publish(address, registry_service=registry_service)
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
    ) -> str:
        """`mlci promote ENV` (or `mlci deploy ENV`) with the registry credentials as secrets; its JSON."""
        if env not in ENVIRONMENTS:
            raise ValueError(f"env must be one of {', '.join(ENVIRONMENTS)}; got {env!r}.")
        argv = cmd.promote(env, self.config, approve) if promote else cmd.deploy(env, self.config)
        return await self._release(argv, username, password, kubeconfig).stdout()

    @function(cache="never")
    async def rollback(
        self, env: Env, username: Username = "", password: Password = None, kubeconfig: Kubeconfig = None
    ) -> str:
        """`mlci rollback ENV`: the environment back to the version it served before; its JSON."""
        if env not in ENVIRONMENTS:
            raise ValueError(f"env must be one of {', '.join(ENVIRONMENTS)}; got {env!r}.")
        return await self._release(cmd.rollback(env, self.config), username, password, kubeconfig).stdout()

    # -- all of it ----------------------------------------------------------------------------------

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
    ) -> dagger.Directory:
        """lint, test, train, smoke, gate, publish, deploy in order; a directory with every report and the artifact."""
        if registry and not repository:
            raise ValueError("--registry needs --repository: where the serving image goes, e.g. acme/model-serving.")
        if deploy_to and not registry:
            raise ValueError("--deploy-to needs --registry: only a published candidate can be promoted.")
        if deploy_to and deploy_to not in ENVIRONMENTS:
            raise ValueError(f"--deploy-to must be one of {', '.join(ENVIRONMENTS)}; got {deploy_to!r}.")
        artifact = self.train()
        out = dag.directory()
        # lint, test and train → smoke are independent: the engine runs them side by side.
        if checks:
            junit = self.test()
            _, _, smoke = await asyncio.gather(self.lint().sync(), junit.sync(), self.smoke(artifact))
            out = out.with_file("junit.xml", junit)
        else:
            smoke = await self.smoke(artifact)
        verdict, markdown = await self._judge(artifact, smoke, production, None, username, password)
        out = (
            out.with_directory("artifact", artifact)
            .with_file("smoke.json", smoke)
            .with_file("verdict.json", verdict)
            .with_new_file("verdict.md", markdown)
        )
        if registry:
            published = await self.publish(
                registry, repository, artifact, tag, username, password, verdict=verdict, commit=commit
            )
            out = out.with_new_file("published.json", published)
        if deploy_to:
            deployed = await self.deploy(deploy_to, True, approve, username, password)
            out = out.with_new_file("deployed.json", deployed)
        return out
