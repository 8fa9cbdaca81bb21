"""Run the CI vendor configs' shell for real, against fake `dagger`, `gh` and `curl` programs, and read back
the exact command lines they ran.

A config is data (YAML) plus shell. This module executes the shell the way each vendor would for one
scenario (an event, the variables and secrets a repository has, what the fake dagger answers) and
returns every argv the steps passed to the fakes. :func:`dagger_calls` is the list of `dagger` argvs: the
same calls the workflow makes, which the executor tests can run against a real graph.

What is modelled, and from where:

- GitHub Actions: steps run in order; ``if:`` is an expression with an implicit ``success() &&`` unless it
  names a status function; ``${{ … }}`` in ``env`` is evaluated (``||``/``&&`` return an operand, string
  ``==`` ignores case, a missing property is null); ``shell: bash`` runs ``bash --noprofile --norc -eo
  pipefail {0}`` (``bash -e {0}`` when no shell is named). Secrets a run does not get (fork pull requests) evaluate to ''. ``uses:`` steps are
  stood in for: checkout and upload-artifact record what they would do; dagger/dagger-for-github only
  installs the CLI when given no ``call``/``args``/``shell``/``check`` and the default verb (its
  action.yml, step ``should-exec``), so it must be given none of those here.
- GitLab CI: ``rules:`` (``$VAR == "…"``, ``$A == $B``) pick whether the job runs; project variables
  override the YAML's; a protected variable is absent (unset, not empty) on a pipeline for an unprotected
  ref; ``before_script`` + ``script`` run in one POSIX shell with ``set -e``; artifacts upload either way.
- The fake `dagger` resolves ``--password=env://NAME`` as the engine's env secret provider does
  (engine/client/secretprovider/env.go at v0.21.8: ``os.LookupEnv``; an unset variable is the error
  ``secret env var not found``), prints ``FAKE_GATE_MD`` for ``gate-report``, and for ``pipeline`` either
  fails (a failed stage, without ``--keep-going``: nothing exported) or exports ``pipeline.json``
  ``{"ok": …}`` and ``junit.xml`` to ``export --path``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GITHUB",
    "GITLAB",
    "PASSWORD",
    "Run",
    "Scenario",
    "dagger_calls",
    "evaluate",
    "run",
]

PASSWORD = "s3cr3t-registry-token"  # a value that must never appear in any argv
SHA = "0123456789abcdef0123456789abcdef01234567"
GATE_MD = "## mlci gate: pass\n\n| metric | candidate |\n|---|---|\n| accuracy | 0.97 |\n"

FAKE_PROGRAM = r'''#!{python}
"""A stand-in for {{prog}} that records its argv (one JSON list a line in $FAKE_CI_LOG)."""
import json, os, sys

prog, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_CI_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps([prog, *argv]) + "\n")
if prog == "sudo":  # run the command as this user
    command = [a for a in argv if not a.startswith("-")]
    os.execvp(command[0], command)
if prog == "gh" and "--body-file" in argv:  # gh refuses an empty comment body
    with open(argv[argv.index("--body-file") + 1], encoding="utf-8") as body:
        if not body.read().strip():
            sys.exit("Body cannot be blank")
if prog != "dagger":
    sys.exit(0)
for word in argv:
    if word.startswith("--password=env://"):
        name = word.split("env://", 1)[1]
        if name not in os.environ:  # engine/client/secretprovider/env.go
            sys.exit(f"Error: secret env var not found: \"{name[:3]}...\"")
if "gate-report" in argv:
    sys.stdout.write(os.environ.get("FAKE_GATE_MD", ""))
    sys.exit(int(os.environ.get("FAKE_GATE_EXIT", "0")))
if "pipeline" in argv:
    ok = os.environ.get("FAKE_PIPELINE_OK", "true") == "true"
    if not ok and "--keep-going" not in argv:
        sys.exit("Error: a pipeline stage failed")
    path = next(w.split("=", 1)[1] for w in argv if w.startswith("--path="))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "pipeline.json"), "w") as f:
        json.dump({"ok": ok}, f)
    with open(os.path.join(path, "junit.xml"), "w") as f:
        f.write("<testsuites/>\n")
    with open(os.path.join(path, "verdict.md"), "w") as f:
        f.write(os.environ.get("FAKE_GATE_MD", ""))
'''
FAKES = ("dagger", "gh", "curl", "apk", "sudo")


@dataclass(frozen=True)
class Scenario:
    """One event with what the repository has configured, and what the fake dagger answers."""

    event: str  # github: push | pull_request; gitlab: push | merge_request_event
    branch: str = "main"
    fork: bool = False  # github: the pull request's head is another repository
    variables: Mapping[str, str] = field(default_factory=dict)  # vars (github) / project variables (gitlab)
    secrets: Mapping[str, str] = field(default_factory=dict)  # github secrets; gitlab: protected variables
    protected_ref: bool = True  # gitlab: protected variables reach this pipeline
    gate_md: str = GATE_MD
    gate_exit: int = 0
    pipeline_ok: bool = True


REGISTRY_VARS = {
    "MLCI_REGISTRY_USERNAME": "bot",
    "MLCI_IMAGE_REGISTRY": "ghcr.io",
    "MLCI_IMAGE_REPOSITORY": "acme/churn-serving",
}
SECRET = {"MLCI_REGISTRY_PASSWORD": PASSWORD}

GITHUB = {
    "push-main": Scenario("push", variables=REGISTRY_VARS, secrets=SECRET),
    "push-main-unconfigured": Scenario("push"),
    "pull-request": Scenario("pull_request", branch="feature", variables=REGISTRY_VARS, secrets=SECRET),
    "fork-pull-request": Scenario("pull_request", branch="feature", fork=True, variables=REGISTRY_VARS),
    "pull-request-empty-verdict": Scenario(
        "pull_request", branch="feature", variables=REGISTRY_VARS, secrets=SECRET, gate_md=""
    ),
    "pull-request-gate-report-fails": Scenario(
        "pull_request", branch="feature", variables=REGISTRY_VARS, secrets=SECRET, gate_md="", gate_exit=1
    ),
    "push-main-stage-fails": Scenario("push", variables=REGISTRY_VARS, secrets=SECRET, pipeline_ok=False),
}
GITLAB = {
    "push-main": Scenario("push", variables=REGISTRY_VARS, secrets=SECRET),
    "push-main-unconfigured": Scenario("push"),
    "push-other-branch": Scenario("push", branch="feature", variables=REGISTRY_VARS, secrets=SECRET),
    "merge-request": Scenario(
        "merge_request_event", branch="feature", variables={**REGISTRY_VARS, "MLCI_GITLAB_TOKEN": "glpat-x"},
        secrets=SECRET, protected_ref=False,
    ),
    "merge-request-gate-report-fails": Scenario(
        "merge_request_event", branch="feature", variables={**REGISTRY_VARS, "MLCI_GITLAB_TOKEN": "glpat-x"},
        protected_ref=False, gate_md="", gate_exit=1,
    ),
    "push-main-stage-fails": Scenario("push", variables=REGISTRY_VARS, secrets=SECRET, pipeline_ok=False),
}  # fmt: skip


@dataclass
class Run:
    """What one scenario did: every faked argv in order, each step's outcome, the job's result."""

    calls: list[list[str]]
    steps: dict[str, str]  # step name → success | failure | skipped
    ok: bool
    uploaded: list[str]  # paths an artifact upload found
    workdir: Path

    def of(self, prog: str) -> list[list[str]]:
        """The argvs (without the program name) of one faked program."""
        return [argv[1:] for argv in self.calls if argv[0] == prog]


# -- GitHub expressions ---------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(==|!=|&&|\|\||!|\(|\))|([A-Za-z_][\w.-]*))")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot parse the expression {text!r} at {text[pos:]!r}")
        out.append(m.group(m.lastindex or 0))
        pos = m.end()
    return out


def _truthy(value: Any) -> bool:
    return value not in (None, "", False, 0)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def evaluate(text: str, contexts: Mapping[str, Any], status: Mapping[str, Callable[[], bool]]) -> Any:
    """The value of a GitHub Actions expression (the subset: literals, paths, ! == != && || (), status())."""
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary() -> Any:
        token = take()
        if token == "(":
            value = either()
            assert take() == ")", text
            return value
        if token == "!":
            return not _truthy(primary())
        if token.startswith("'"):
            return token[1:-1].replace("''", "'")
        if token in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token]
        if peek() == "(":
            take(), take()
            return status[token]()
        value: Any = contexts
        for part in token.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    def comparison() -> Any:
        left = primary()
        while peek() in ("==", "!="):
            op, right = take(), primary()
            left = _equal(left, right) == (op == "==")
        return left

    def both() -> Any:
        left = comparison()
        while peek() == "&&":
            take()
            right = comparison()
            left = right if _truthy(left) else left
        return left

    def either() -> Any:
        left = both()
        while peek() == "||":
            take()
            right = both()
            left = left if _truthy(left) else right
        return left

    value = either()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r} in {text!r}")
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _interpolate(value: Any, contexts: Mapping[str, Any], status: Mapping[str, Callable[[], bool]]) -> str:
    return re.sub(
        r"\$\{\{(.*?)\}\}", lambda m: _as_text(evaluate(m.group(1), contexts, status)), _as_text(value)
    )


def _condition(value: Any) -> str:
    """A step's ``if:`` as an expression, with GitHub's implicit ``success() &&``."""
    if value is None:
        return "success()"
    text = str(value).strip() if not isinstance(value, bool) else _as_text(value)
    text = text.removeprefix("${{").removesuffix("}}").strip() if text.startswith("${{") else text
    return text if re.search(r"\b(success|failure|always|cancelled)\(\)", text) else f"success() && ({text})"


# -- running --------------------------------------------------------------------------------------


def _fake_bin(root: Path) -> Path:
    """A directory with the fake programs, to put first on PATH."""
    bin_dir = root / "fake-bin"
    bin_dir.mkdir()
    for prog in FAKES:
        path = bin_dir / prog
        path.write_text(FAKE_PROGRAM.replace("{python}", sys.executable).replace("{{prog}}", prog))
        path.chmod(0o755)
    return bin_dir


def _base_env(root: Path, scenario: Scenario) -> dict[str, str]:
    return {
        "PATH": f"{_fake_bin(root)}:/usr/bin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "FAKE_CI_LOG": str(root / "calls.jsonl"),
        "FAKE_GATE_MD": scenario.gate_md,
        "FAKE_GATE_EXIT": str(scenario.gate_exit),
        "FAKE_PIPELINE_OK": _as_text(scenario.pipeline_ok),
    }


def _calls(root: Path) -> list[list[str]]:
    log = root / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _github_contexts(scenario: Scenario) -> dict[str, Any]:
    repository = "acme/churn"
    pull = scenario.event == "pull_request"
    event = (
        {
            "pull_request": {
                "number": 42,
                "head": {"repo": {"full_name": "someone/churn" if scenario.fork else repository}},
            }
        }
        if pull
        else {}
    )
    return {
        "github": {
            "event_name": scenario.event, "ref": "refs/pull/42/merge" if pull else f"refs/heads/{scenario.branch}",
            "sha": SHA, "repository": repository, "event": event, "token": "ghs_token", "workflow": "mlci",
        },
        "vars": dict(scenario.variables),
        # Fork pull requests get no secrets (GITHUB_TOKEN aside): each evaluates to ''.
        "secrets": {} if scenario.fork else dict(scenario.secrets),
    }  # fmt: skip


def _run_github(config: Path, scenario: Scenario, root: Path) -> Run:
    data = yaml.safe_load(config.read_text())
    contexts = _github_contexts(scenario)
    failed = False
    status = {
        "success": lambda: not failed,
        "failure": lambda: failed,
        "always": lambda: True,
        "cancelled": lambda: False,
    }
    shell = data.get("defaults", {}).get("run", {}).get("shell")
    env = _base_env(root, scenario) | {
        "GITHUB_EVENT_NAME": scenario.event, "GITHUB_SHA": SHA, "GITHUB_REPOSITORY": "acme/churn",
        "GITHUB_STEP_SUMMARY": str(root / "summary.md"), "GITHUB_PATH": str(root / "github_path"),
    }  # fmt: skip
    env |= {k: _interpolate(v, contexts, status) for k, v in data.get("env", {}).items()}
    workdir = root / "checkout"
    workdir.mkdir()
    (job,) = data["jobs"].values()
    steps: dict[str, str] = {}
    uploaded: list[str] = []
    for i, step in enumerate(job["steps"]):
        name = step.get("name") or step.get("uses") or f"step {i}"
        if not _truthy(evaluate(_condition(step.get("if")), contexts, status)):
            steps[name] = "skipped"
            continue
        if "uses" in step:
            ok = _stand_in(step, workdir, uploaded)
        else:
            step_shell = step.get("shell") or shell
            assert step_shell in (None, "bash"), f"step {name!r}: no stand-in for shell {step_shell!r}"
            step_env = env | {k: _interpolate(v, contexts, status) for k, v in step.get("env", {}).items()}
            script = root / f"step-{i}.sh"
            script.write_text(step["run"])
            # GitHub's defaults: `bash -e {0}` when no shell is named, the stricter line for `shell: bash`.
            argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail"] if step_shell else ["bash", "-e"]
            argv.append(str(script))
            ok = subprocess.run(argv, cwd=workdir, env=step_env, capture_output=True).returncode == 0
        steps[name] = "success" if ok else "failure"
        failed = failed or not ok
    return Run(_calls(root), steps, not failed, uploaded, workdir)


def _stand_in(step: Mapping[str, Any], workdir: Path, uploaded: list[str]) -> bool:
    """What a ``uses:`` step would do, as far as the shell steps after it can tell."""
    action = step["uses"].split("@", 1)[0]
    inputs = step.get("with", {})
    if action == "actions/checkout":
        return True
    if action == "dagger/dagger-for-github":
        runs_a_command = {"call", "args", "shell", "check"} & set(inputs) or inputs.get(
            "verb", "call"
        ) != "call"
        assert not runs_a_command, f"dagger-for-github is meant to install the CLI only here; got {inputs}"
        return True
    if action == "actions/upload-artifact":
        path = workdir / inputs["path"]
        if path.exists():
            uploaded.append(inputs["path"])
        return path.exists() or inputs.get("if-no-files-found", "warn") != "error"
    raise AssertionError(f"no stand-in for the action {action!r}")


_RULE = re.compile(r'\s*\$(\w+)\s*(==|!=)\s*(?:"([^"]*)"|\$(\w+))\s*')


def _rule_matches(expression: str, variables: Mapping[str, str]) -> bool:
    """A GitLab ``rules: if:`` of comparisons joined by && or ||."""
    return any(
        all(_compare(part, variables) for part in alternative.split("&&"))
        for alternative in expression.split("||")
    )


def _compare(part: str, variables: Mapping[str, str]) -> bool:
    m = _RULE.fullmatch(part)
    if not m:
        raise ValueError(f"cannot parse the GitLab rule {part!r}")
    name, op, literal, other = m.groups()
    right = literal if literal is not None else variables.get(other)
    return (variables.get(name) == right) == (op == "==")


def _gitlab_variables(data: Mapping[str, Any], job: Mapping[str, Any], scenario: Scenario) -> dict[str, str]:
    mr = scenario.event == "merge_request_event"
    predefined = {
        "CI_PIPELINE_SOURCE": scenario.event, "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_SHA": SHA,
        "CI_API_V4_URL": "https://gitlab.example/api/v4", "CI_PROJECT_ID": "7", "CI_SERVER_HOST": "gitlab.example",
    }  # fmt: skip
    predefined |= {"CI_MERGE_REQUEST_IID": "42"} if mr else {"CI_COMMIT_BRANCH": scenario.branch}
    variables = predefined | {k: str(v) for k, v in data.get("variables", {}).items()}
    variables |= {k: str(v) for k, v in job.get("variables", {}).items()}
    variables |= dict(scenario.variables)
    # Protected variables only reach pipelines for protected refs.
    return variables | (dict(scenario.secrets) if scenario.protected_ref else {})


def _run_gitlab(config: Path, scenario: Scenario, root: Path) -> Run:
    data = yaml.safe_load(config.read_text())
    job = data["mlci"]
    variables = _gitlab_variables(data, job, scenario)
    workdir = root / "checkout"
    workdir.mkdir()
    if not any(_rule_matches(rule["if"], variables) for rule in job["rules"]):
        return Run([], {}, True, [], workdir)
    lines = [*job.get("before_script", []), *job["script"]]
    script = root / "job.sh"
    script.write_text("set -e\n" + "\n".join(lines) + "\n")
    env = _base_env(root, scenario) | variables
    ok = subprocess.run(["sh", str(script)], cwd=workdir, env=env, capture_output=True).returncode == 0
    artifacts = job.get("artifacts", {})
    uploaded = (
        [p for p in artifacts.get("paths", []) if (workdir / p).exists()]
        if ok or artifacts.get("when") == "always"
        else []
    )
    return Run(_calls(root), {"mlci": "success" if ok else "failure"}, ok, uploaded, workdir)


def run(config: Path, scenario: Scenario, root: Path) -> Run:
    """Run ``config`` (a GitHub workflow or a .gitlab-ci.yml) for ``scenario`` in the empty directory ``root``."""
    data = yaml.safe_load(config.read_text())
    return (_run_github if "jobs" in data else _run_gitlab)(config, scenario, root)


def dagger_calls(config: Path, scenario: str) -> list[list[str]]:
    """Every `dagger` argv (without 'dagger') ``config`` runs in the named scenario, in order."""
    scenarios = GITHUB if "jobs" in yaml.safe_load(config.read_text()) else GITLAB
    with tempfile.TemporaryDirectory(prefix="mlci-ci-") as tmp:
        return run(config, scenarios[scenario], Path(tmp)).of("dagger")


if __name__ == "__main__":  # python -m tests.dagger.ci_calls CONFIG SCENARIO
    print(json.dumps(dagger_calls(Path(sys.argv[1]), sys.argv[2]), indent=2))
