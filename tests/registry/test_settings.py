"""Registry URLs and credentials from configuration and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlci.errors import ConfigError
from mlci.registry import HttpStore, LayoutStore, open_store, registry_settings_from_env


def test_layout_urls(tmp_path: Path) -> None:
    for url in (f"oci-layout:{tmp_path}/reg", f"{tmp_path}/reg"):
        store = open_store(url, "acme/model")
        assert isinstance(store, LayoutStore) and store.root == tmp_path / "reg" / "acme" / "model"
    relative = open_store("oci-layout:.mlci/registry", "model", base_dir=tmp_path)
    assert isinstance(relative, LayoutStore) and relative.root == tmp_path / ".mlci" / "registry" / "model"


def test_http_urls() -> None:
    with open_store("http://127.0.0.1:5000/", "acme/model") as store:
        assert isinstance(store, HttpStore)
        assert (store.base_url, store.repository) == ("http://127.0.0.1:5000", "acme/model")
    with open_store("https://ghcr.io", "acme/model", username="u", password="p", insecure=True) as store:
        assert repr(store) == "HttpStore('https://ghcr.io', 'acme/model', with credentials)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "unsupported scheme"),
        ("localhost:5000", "did you mean 'http://localhost:5000'"),
        ("oci-layout:", "names no directory"),
        ("https://ghcr.io/acme", "put 'acme/…' in \\[registry\\] repository"),
        ("https://", "has no host"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        open_store(url, "model")
    assert info.value.exit_code == 2
    assert "accepted forms" in str(info.value) or "repository" in str(info.value)


@pytest.mark.parametrize(
    "url", ["https://bob:hunter2@ghcr.io", "https://bob:hunter2@ghcr.io/acme", "ftp://bob:hunter2@x"]
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError, match="MLCI_REGISTRY_USERNAME") as info:
        open_store(url, "model")
    assert "hunter2" not in str(info.value) and "bob" not in str(info.value)


def test_credentials_over_plain_http_need_loopback_or_insecure() -> None:
    with pytest.raises(ConfigError, match="unencrypted") as info:
        open_store("http://registry.internal:5000", "model", username="u", password="p")
    assert info.value.exit_code == 2
    for url, insecure in [("http://registry.internal:5000", True), ("http://127.0.0.1:5000", False)]:
        with open_store(url, "model", username="u", password="p", insecure=insecure) as store:
            assert isinstance(store, HttpStore)


@pytest.mark.parametrize("repository", ["", "Acme/Model", "acme//model", "-acme", "acme/model/"])
def test_bad_repository_names(repository: str) -> None:
    with pytest.raises(ConfigError, match="not a valid name"):
        open_store("http://127.0.0.1:5000", repository)


def test_credentials_from_env() -> None:
    assert registry_settings_from_env({}) == (None, None)
    assert registry_settings_from_env({"MLCI_REGISTRY_USERNAME": "", "MLCI_REGISTRY_PASSWORD": ""}) == (
        None,
        None,
    )
    env = {"MLCI_REGISTRY_USERNAME": "robot", "MLCI_REGISTRY_PASSWORD": "tok"}
    assert registry_settings_from_env(env) == ("robot", "tok")
    with pytest.raises(
        ConfigError, match="MLCI_REGISTRY_PASSWORD is set but MLCI_REGISTRY_USERNAME is not"
    ) as info:
        registry_settings_from_env({"MLCI_REGISTRY_PASSWORD": "tok"})
    assert "tok" not in str(info.value)
    with pytest.raises(ConfigError, match="MLCI_REGISTRY_USERNAME is set but MLCI_REGISTRY_PASSWORD is not"):
        registry_settings_from_env({"MLCI_REGISTRY_USERNAME": "robot"})


@pytest.mark.parametrize(
    ("url", "username", "insecure", "needles"),
    [
        ("http://registry.example:5000", None, False, ["plain http", "not this machine", "https"]),
        ("http://registry.example:5000", "u", True, ["clear text", "insecure = true"]),
        ("https://registry.example", None, True, ["certificate", "SSL_CERT_FILE"]),
        ("https://registry.example", "u", True, ["certificate", "SSL_CERT_FILE"]),
    ],
)
def test_risky_registry_settings_are_said_out_loud(
    capsys: pytest.CaptureFixture[str], url: str, username: str | None, insecure: bool, needles: list[str]
) -> None:
    """`insecure = true` used to allow clear-text credentials and unverified TLS silently, and a plain-http
    registry on another host was accepted without a word: each now prints a warning with the fix."""
    open_store(url, "acme/bc", username=username, password="p" if username else None, insecure=insecure)
    err = capsys.readouterr().err
    assert err.startswith("mlci: warning: [registry]"), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "p\n" not in err and "'p'" not in err  # the password is never echoed


@pytest.mark.parametrize(
    ("url", "insecure"),
    [("https://registry.example", False), ("http://127.0.0.1:5000", False), ("http://localhost:5000", True)],
)
def test_safe_registry_settings_say_nothing(capsys: pytest.CaptureFixture[str], url: str, insecure: bool) -> None:
    open_store(url, "acme/bc", username="u", password="p", insecure=insecure)
    assert capsys.readouterr().err == ""
