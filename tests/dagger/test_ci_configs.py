"""The CI vendor configs: pinned Dagger CLI, the module's real flags, credentials only from the secret store."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .registration import Fn

CONFIGS = [REPO / ".github" / "workflows" / "mlci.yml", REPO / ".gitlab-ci.yml"]


def scripts(path: Path) -> str:
    """Every shell line the config runs."""
    data = yaml.safe_load(path.read_text())
    if "jobs" in data:
        return "\n".join(step.get("run", "") for job in data["jobs"].values() for step in job["steps"])
    job = data["mlci"]
    return "\n".join([*job["before_script"], *job["script"]])


def dagger_calls(text: str) -> list[list[str]]:
    """The words of each `dagger call` line, from the function name on (constructor flags kept apart)."""
    calls = []
    for line in text.splitlines():
        if "dagger call" in line:
            words = shlex.split(line.split("dagger call", 1)[1].split(">")[0])
            calls.append(words)
    return calls


def flag_names(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0][2:].replace("-", "_") for w in words if w.startswith("--")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_dagger_cli_is_pinned_to_the_engine_version(path: Path) -> None:
    engine = json.loads((REPO / "dagger.json").read_text())["engineVersion"]
    text = path.read_text()
    assert f'DAGGER_VERSION: "{engine.removeprefix("v")}"' in text
    assert 'DAGGER_VERSION="$DAGGER_VERSION"' in scripts(path)


def arrays(text: str) -> dict[str, list[str]]:
    """Every word each bash array (`args=(...)`, `args+=(...)`) is given, nested arrays expanded."""
    found: dict[str, list[str]] = {}
    for name, body in re.findall(r"\b(\w+)\+?=\((.*?)\)", text):
        for word in shlex.split(body):
            inner = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            found.setdefault(name, []).extend(found.get(inner.group(1), []) if inner else [word])
    return found


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_flag_is_one_the_module_registers(path: Path, registered: tuple[str, dict[str, Fn], Fn]) -> None:
    _, functions, ctor = registered
    text = scripts(path)
    expansions = arrays(text)
    called = set()
    for words in dagger_calls(text):
        module_flag, module, *rest = words
        assert module_flag == "-m" and module == "$MLCI_MODULE"
        fn_at = next(i for i, w in enumerate(rest) if not w.startswith("-"))
        fn = rest[fn_at].replace("-", "_")
        called.add(fn)
        assert set(flag_names(rest[:fn_at])) <= set(ctor.args), rest[:fn_at]
        own = rest[fn_at + 1 :]
        own = own[: own.index("export")] if "export" in own else own
        words_passed = []
        for word in own:
            inner = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            words_passed += expansions[inner.group(1)] if inner else [word]
        used = set(flag_names(words_passed))
        assert used, f"no flags found for {fn}"
        assert used <= set(functions[fn].args), sorted(used - set(functions[fn].args))
    assert called == {"gate_report", "pipeline"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_password_reaches_dagger_as_a_secret_reference_only(path: Path) -> None:
    text = scripts(path)
    assert "--password=env://MLCI_REGISTRY_PASSWORD" in text
    assert not re.search(r"--password=(?!env://)", text)
    assert "$MLCI_REGISTRY_PASSWORD" not in text


def test_github_takes_the_password_from_secrets_and_comments_on_the_pr() -> None:
    data = yaml.safe_load(CONFIGS[0].read_text())
    assert data["env"]["MLCI_REGISTRY_PASSWORD"] == "${{ secrets.MLCI_REGISTRY_PASSWORD }}"
    steps = data["jobs"]["pipeline"]["steps"]
    comment = next(s for s in steps if "gh pr comment" in s.get("run", ""))
    assert "--body-file gate.md" in comment["run"] and data["permissions"]["pull-requests"] == "write"


def test_gitlab_posts_the_verdict_as_an_mr_note() -> None:
    text = scripts(CONFIGS[1])
    assert "merge_requests/$CI_MERGE_REQUEST_IID/notes" in text and "body@gate.md" in text
    assert "MLCI_REGISTRY_PASSWORD" not in yaml.safe_load(CONFIGS[1].read_text())["variables"]
