"""The exact mlci command lines each container runs, and the paths they use inside the containers.

Pure functions over strings: the Dagger functions in ``main.py`` put these argv lists into
``with_exec``/``with_entrypoint`` unchanged, and the tests check them against the real mlci CLI and run
them locally to compare the artifact digest with `mlci run`.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT",
    "JUNIT",
    "MONITOR_STATE",
    "OUT",
    "PORT",
    "PREDICTIONS",
    "PRODUCTION",
    "SERVER",
    "SMOKE_IN",
    "SMOKE_OUT",
    "SRC",
    "VERDICT_IN",
    "VERDICT_OUT",
    "deploy",
    "gate",
    "lint",
    "monitor",
    "promote",
    "push",
    "rollback",
    "serve",
    "smoke",
    "test",
    "train",
]

SRC = "/src"  # the model repository: code, data and mlci.toml (the workdir of every stage container)
OUT = "/mlci/out"  # stage outputs, written outside the source so it stays as given
ARTIFACT = "/mlci/artifact"  # the artifact a smoke/gate/push/serve container works on
PRODUCTION = "/mlci/production"  # an explicitly given production artifact for the gate
SMOKE_IN = "/mlci/in/smoke.json"
SMOKE_OUT = f"{OUT}/smoke.json"
VERDICT_OUT = f"{OUT}/verdict.json"
JUNIT = f"{OUT}/junit.xml"
VERDICT_IN = "/mlci/in/verdict.json"
SERVER = "server"  # the alias the smoke client reaches the model server by
PORT = 8080
PREDICTIONS = "/var/lib/mlci/predictions"  # the prediction log volume a server writes and the monitor reads
MONITOR_STATE = "/var/lib/mlci/monitor"


def lint() -> list[str]:
    """ruff over the source tree (its own ruff config applies)."""
    return ["ruff", "check", "."]


def test(junit: str) -> list[str]:
    """The source's pytest suite, with a JUnit XML report."""
    return ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]


def train(config: str) -> list[list[str]]:
    """train → export → evaluate, one command each, directories in between (as `mlci run` does in-process)."""
    return [
        ["mlci", "train", "--config", config, "--out", f"{OUT}/train"],
        ["mlci", "export", "--config", config, "--train", f"{OUT}/train", "--out", f"{OUT}/export"],
        [
            "mlci", "evaluate", "--config", config, "--train", f"{OUT}/train", "--export", f"{OUT}/export",
            "--out", f"{OUT}/artifact",
        ],
    ]  # fmt: skip


def serve() -> list[str]:
    """The serving image's entrypoint: the Open Inference Protocol server on all interfaces, writing its
    prediction log where the monitor image reads it (given, not the server's per-user default)."""
    return ["mlci", "serve", ARTIFACT, "--host", "0.0.0.0", "--port", str(PORT), "--log-dir", PREDICTIONS]


def monitor(interval: float) -> list[str]:
    """The monitor image's entrypoint: watch the prediction log forever (drift, outliers, decay, alerts)."""
    return [
        "mlci", "monitor", ARTIFACT, "--log-dir", PREDICTIONS, "--state", MONITOR_STATE,
        "--interval", f"{interval:g}", "--cycles", "0",
    ]  # fmt: skip


def smoke(config: str) -> list[str]:
    """Real holdout rows through the served model, compared with in-process predictions."""
    return ["mlci", "smoke", ARTIFACT, "--config", config, "--url", f"http://{SERVER}:{PORT}", "--out", SMOKE_OUT]


def gate(config: str, production: str) -> list[str]:
    """The release policy; prints the PR-comment Markdown and writes verdict.json. Exit 1 on a failed gate."""
    return [
        "mlci", "gate", ARTIFACT, "--config", config, "--production", production, "--smoke", SMOKE_IN,
        "--out", VERDICT_OUT, "--format", "markdown",
    ]  # fmt: skip


def push(config: str, tag: str) -> list[str]:
    """The artifact and its verdict into the registry of mlci.toml's [registry]."""
    return ["mlci", "push", ARTIFACT, "--config", config, "--tag", tag, "--verdict", VERDICT_IN, "--json"]


def promote(env: str, config: str, approve: bool) -> list[str]:
    """Point ENV at the artifact the previous environment holds, then deploy it."""
    return ["mlci", "promote", env, "--config", config, *(["--approve"] if approve else []), "--json"]


def deploy(env: str, config: str) -> list[str]:
    """Redeploy what ENV's tag points at."""
    return ["mlci", "deploy", env, "--config", config, "--json"]


def rollback(env: str, config: str) -> list[str]:
    """Move ENV back to the version it served before and redeploy it."""
    return ["mlci", "rollback", env, "--config", config, "--json"]
