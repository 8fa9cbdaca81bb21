"""The CI vendor configs, parsed and run: the exact `dagger` calls each event makes, pinned tools, credentials
only from the secret store and only when there are any, reports kept when a stage fails.

The shell runs for real (bash/sh) against fake `dagger`, `gh` and `curl` programs (tests/dagger/ci_calls.py).
Both mlci's own configs (module ".") and what `mlci init` writes in a user's repository are checked.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlci import __version__

from . import ci_calls
from .ci_calls import GITHUB, GITLAB, PASSWORD, SHA, Run, Scenario, evaluate
from .conftest import REPO
from .registration import Fn

OWN = {"github": REPO / ".github" / "workflows" / "mlci.yml", "gitlab": REPO / ".gitlab-ci.yml"}
ENGINE = json.loads((REPO / "dagger.json").read_text())["engineVersion"]
AUTH = ["--username=bot", "--password=env://MLCI_REGISTRY_PASSWORD"]
PUBLISH = ["--registry=ghcr.io", "--repository=acme/churn-serving"]
COMMENT = ["pr", "comment", "42", "--body-file", "gate.md", "--edit-last", "--create-if-none"]


def user_repo(tmp: Path, pyproject: bool) -> dict[str, Path]:
    """A model repository after `mlci init` (with or without its own pyproject.toml): the CI files it wrote."""
    from mlci.cli import cli

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data.csv").write_text("x,target\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    if pyproject:
        (tmp / "pyproject.toml").write_text('[project]\nname = "churn"\nversion = "0"\n')
    result = CliRunner().invoke(
        cli, ["init", str(tmp / "data.csv"), "--dir", str(tmp)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return {"github": tmp / ".github" / "workflows" / "mlci.yml", "gitlab": tmp / ".gitlab-ci.yml"}


def default_module() -> str:
    """What `mlci init` must pin by default: mlci's repository at the installed version's tag."""
    from mlci.scaffold import MODULE_REPOSITORY

    return f"{MODULE_REPOSITORY}@v{__version__}"


# Every config under test, with what its calls must carry: (config, module, config path, checks).
CASES = {
    "own": lambda tmp: (OWN, ".", "mlci.toml", "true"),
    "user": lambda tmp: (user_repo(tmp, pyproject=False), default_module(), "mlci.toml", "false"),
    "user-pyproject": lambda tmp: (user_repo(tmp, pyproject=True), default_module(), "mlci.toml", "true"),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, Path], str, str, str]:
    return CASES[request.param](tmp_path / "repo")


def head(module: str, config: str) -> list[str]:
    return ["call", "-m", module, "--source=.", f"--config={config}"]


def pipeline(module: str, config: str, checks: str, *extra: str) -> list[str]:
    return [*head(module, config), "pipeline", "--keep-going", f"--checks={checks}", f"--commit={SHA}", *extra,
            "export", "--path=mlci-out"]  # fmt: skip


def gate_report(module: str, config: str, *extra: str) -> list[str]:
    return [*head(module, config), "gate-report", *extra]


def run(config: Path, scenario: Scenario, tmp_path: Path) -> Run:
    root = tmp_path / "run"
    root.mkdir()
    return ci_calls.run(config, scenario, root)


# -- what each event runs -------------------------------------------------------------------------


def expected_github(name: str, m: str, c: str, k: str) -> tuple[list[list[str]], list[list[str]], bool]:
    """(dagger argvs, gh argvs, job passes) for one GitHub scenario."""
    return {
        "push-main": ([pipeline(m, c, k, *AUTH, *PUBLISH)], [], True),
        "push-main-unconfigured": ([pipeline(m, c, k)], [], True),
        "pull-request": ([gate_report(m, c, *AUTH), pipeline(m, c, k, *AUTH)], [COMMENT], True),
        # No secrets on a fork's pull request: no credentials at all (and no comment: the token is read-only).
        "fork-pull-request": ([gate_report(m, c), pipeline(m, c, k)], [], True),
        "pull-request-empty-verdict": ([gate_report(m, c, *AUTH), pipeline(m, c, k, *AUTH)], [], True),
        # Nothing to post; the pipeline still runs and exports its reports; the job fails.
        "pull-request-gate-report-fails": ([gate_report(m, c, *AUTH), pipeline(m, c, k, *AUTH)], [], False),
        "push-main-stage-fails": ([pipeline(m, c, k, *AUTH, *PUBLISH)], [], False),
    }[name]


@pytest.mark.parametrize("name", sorted(GITHUB))
def test_github_runs_exactly_these_calls(name: str, case: tuple, tmp_path: Path) -> None:
    configs, module, config, checks = case
    done = run(configs["github"], GITHUB[name], tmp_path)
    calls, comments, ok = expected_github(name, module, config, checks)
    assert done.of("dagger") == calls
    assert done.of("gh") == comments
    assert done.ok is ok, done.steps


def expected_gitlab(name: str, m: str, c: str, k: str) -> tuple[list[list[str]], int, bool]:
    """(dagger argvs, MR notes posted, job passes) for one GitLab scenario."""
    return {
        "push-main": ([pipeline(m, c, k, *AUTH, *PUBLISH)], 0, True),
        "push-main-unconfigured": ([pipeline(m, c, k)], 0, True),
        "push-other-branch": ([], 0, True),  # the rules do not create the job
        # The protected password is absent on an MR pipeline: no --username/--password.
        "merge-request": ([gate_report(m, c), pipeline(m, c, k)], 1, True),
        "merge-request-gate-report-fails": ([gate_report(m, c), pipeline(m, c, k)], 0, False),
        "push-main-stage-fails": ([pipeline(m, c, k, *AUTH, *PUBLISH)], 0, False),
    }[name]


@pytest.mark.parametrize("name", sorted(GITLAB))
def test_gitlab_runs_exactly_these_calls(name: str, case: tuple, tmp_path: Path) -> None:
    configs, module, config, checks = case
    done = run(configs["gitlab"], GITLAB[name], tmp_path)
    calls, notes, ok = expected_gitlab(name, module, config, checks)
    assert done.of("dagger") == calls
    posted = [argv for argv in done.of("curl") if any("merge_requests/42/notes" in w for w in argv)]
    assert len(posted) == notes, done.of("curl")
    assert done.ok is ok, done.steps


def test_the_mr_note_is_the_gate_report(tmp_path: Path) -> None:
    done = run(OWN["gitlab"], GITLAB["merge-request"], tmp_path)
    (note,) = (argv for argv in done.of("curl") if any("/notes" in w for w in argv))
    assert "body@gate.md" in note and "PRIVATE-TOKEN: glpat-x" in note
    assert (done.workdir / "gate.md").read_text() == ci_calls.GATE_MD


@pytest.mark.parametrize("vendor", ["github", "gitlab"])
def test_a_failed_stage_still_keeps_junit_and_the_verdict(vendor: str, tmp_path: Path) -> None:
    """`pipeline --keep-going` exports its reports; the upload runs; a later step fails the job on ok=false."""
    scenarios = GITHUB if vendor == "github" else GITLAB
    done = run(OWN[vendor], scenarios["push-main-stage-fails"], tmp_path)
    assert not done.ok
    assert (done.workdir / "mlci-out" / "junit.xml").is_file()
    assert json.loads((done.workdir / "mlci-out" / "pipeline.json").read_text()) == {"ok": False}
    assert [p.rstrip("/") for p in done.uploaded][:1] == ["mlci-out"]
    if vendor == "github":
        assert done.steps["Pipeline (lint, test, train, smoke, gate; publish on main)"] == "success"
        assert done.steps["Verdict: fail the job when a stage failed"] == "failure"


@pytest.mark.parametrize("vendor", ["github", "gitlab"])
def test_a_passing_pipeline_json_passes_and_a_missing_one_fails(vendor: str, tmp_path: Path) -> None:
    """The verdict check reads ok itself: true passes; the string "false" or no file at all does not."""
    config = yaml.safe_load(OWN[vendor].read_text())
    if vendor == "github":
        script = next(
            s["run"] for s in config["jobs"]["pipeline"]["steps"] if s.get("name", "").startswith("Verdict")
        )
    else:
        script = next(
            line for line in config["mlci"]["script"] if "pipeline.json" in line and "dagger" not in line
        )
    for content, passes in [
        ('{"ok": true}', True),
        ('{"ok": false}', False),
        ('{"ok": "false"}', False),
        (None, False),
    ]:
        out = tmp_path / "mlci-out"
        out.mkdir(exist_ok=True)
        (out / "pipeline.json").unlink(missing_ok=True)
        if content is not None:
            (out / "pipeline.json").write_text(content)
        env = {"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
        rc = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True
        ).returncode
        assert (rc == 0) is passes, (content, rc)


def test_the_password_never_reaches_an_argv(case: tuple, tmp_path: Path) -> None:
    configs, *_ = case
    for vendor, scenarios in (("github", GITHUB), ("gitlab", GITLAB)):
        for i, scenario in enumerate(scenarios.values()):
            done = ci_calls.run(configs[vendor], scenario, _fresh(tmp_path / f"{vendor}-{i}"))
            assert not [argv for argv in done.calls if any(PASSWORD in w for w in argv)]


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_every_flag_is_one_the_module_registers(registered: tuple[str, dict[str, Fn], Fn]) -> None:
    """The calls the configs really make (all scenarios) use only functions and flags the module has."""
    _, functions, ctor = registered
    scenarios = {"github": GITHUB, "gitlab": GITLAB}
    calls = [
        argv
        for vendor, cfg in OWN.items()
        for name in scenarios[vendor]
        for argv in ci_calls.dagger_calls(cfg, name)
    ]
    called = set()
    for argv in calls:
        assert argv[:2] == ["call", "-m"]
        words = argv[3:]
        at = next(i for i, w in enumerate(words) if not w.startswith("-"))
        fn = words[at].replace("-", "_")
        called.add(fn)
        own = words[at + 1 :]
        own = own[: own.index("export")] if "export" in own else own
        assert set(_flags(words[:at])) <= set(ctor.args), words[:at]
        assert set(_flags(own)) <= set(functions[fn].args), sorted(set(_flags(own)) - set(functions[fn].args))
    assert called == {"gate_report", "pipeline"}


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0][2:].replace("-", "_") for w in words if w.startswith("--")]


# -- structure ------------------------------------------------------------------------------------

ACTION = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)@(\S+)(?:\s+#\s*(\S+))?\s*$")


def test_every_github_action_is_pinned_to_a_commit_with_its_release_named(case: tuple) -> None:
    configs, *_ = case
    lines = [
        line for line in configs["github"].read_text().splitlines() if re.match(r"^\s*(-\s+)?uses:", line)
    ]
    assert lines
    for line in lines:
        m = ACTION.match(line)
        assert m, line
        action, ref, release = m.groups()
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action} is not pinned to a commit: @{ref}"
        assert release and re.fullmatch(r"v\d+\.\d+\.\d+", release), (
            f"{action}@{ref} has no '# vX.Y.Z' comment"
        )


def test_the_dagger_cli_comes_from_the_vendor_action_at_the_engine_version(case: tuple) -> None:
    configs, *_ = case
    data = yaml.safe_load(configs["github"].read_text())
    steps = data["jobs"]["pipeline"]["steps"]
    (install,) = (s for s in steps if s.get("uses", "").startswith("dagger/dagger-for-github@"))
    assert install["with"] == {"version": ENGINE.removeprefix("v")}
    assert steps.index(install) < min(i for i, s in enumerate(steps) if "dagger call" in s.get("run", ""))
    assert not [s for s in steps if re.search(r"\bcurl\b|\bsudo\b", s.get("run", ""))]


def test_gitlab_pins_the_cli_and_the_docker_images(case: tuple) -> None:
    configs, *_ = case
    data = yaml.safe_load(configs["gitlab"].read_text())
    job = data["mlci"]
    assert data["variables"]["DAGGER_VERSION"] == ENGINE.removeprefix("v")
    (install,) = (line for line in job["before_script"] if "install.sh" in line)
    assert 'DAGGER_VERSION="$DAGGER_VERSION"' in install and "sudo" not in install
    images = [job["image"], *(s if isinstance(s, str) else s["name"] for s in job["services"])]
    for image in images:
        assert re.fullmatch(r"docker:\d+\.\d+\.\d+-(cli|dind)", image), f"{image} is not pinned to a release"
    assert (
        job["artifacts"]["when"] == "always" and job["artifacts"]["reports"]["junit"] == "mlci-out/junit.xml"
    )


def test_pull_requests_cancel_their_previous_run_and_main_never_does(case: tuple) -> None:
    configs, *_ = case
    concurrency = yaml.safe_load(configs["github"].read_text())["concurrency"]
    expression = str(concurrency["cancel-in-progress"]).removeprefix("${{").removesuffix("}}")
    for scenario, cancels in (("pull-request", True), ("push-main", False)):
        contexts = ci_calls._github_contexts(GITHUB[scenario])
        assert evaluate(expression, contexts, {}) is cancels, scenario
    # One group per ref: runs on main wait for one another instead of running (and publishing) side by side.
    assert concurrency["group"] == "mlci-${{ github.ref }}"


def test_the_module_default_is_a_pinned_git_ref_dagger_parses() -> None:
    """core/modulerefs.go (v0.21.8) ParseGitRefString: `host/owner/repo[/subdir]@version`, split at '@'."""
    module = default_module()
    assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+/[\w.-]+/[\w.-]+@v\d+\.\d+\.\d+.*", module), module
