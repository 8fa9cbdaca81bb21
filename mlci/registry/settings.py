"""From configuration to a store: the registry URL forms we accept, and credentials from the environment."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from mlci.errors import ConfigError
from mlci.registry.http import HttpStore, is_loopback
from mlci.registry.layout import LayoutStore

__all__ = [
    "CREDENTIAL_ENV",
    "PASSWORD_ENV",
    "USERNAME_ENV",
    "check_registry_url",
    "check_repository",
    "open_store",
    "registry_settings_from_env",
    "without_credentials",
]

USERNAME_ENV = "MLCI_REGISTRY_USERNAME"
PASSWORD_ENV = "MLCI_REGISTRY_PASSWORD"
# Secrets mlci reads from the environment: every MLCI_REGISTRY_* variable, and the monitor's webhook URL
# (a Slack or Teams incoming-webhook URL is itself the credential).
CREDENTIAL_ENV = ("MLCI_REGISTRY_", "MLCI_MONITOR_WEBHOOK")

_FORMS = (
    "accepted forms: 'oci-layout:<path>' or a plain path (an OCI layout directory), "
    "'http://host:port' or 'https://host' (a registry)"
)
# The distribution spec's repository-name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d+(?:/.*)?")
_USERINFO = re.compile(r"://[^/@]*@")


def registry_settings_from_env(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(username, password) from MLCI_REGISTRY_USERNAME / MLCI_REGISTRY_PASSWORD; empty counts as unset."""
    username = environ.get(USERNAME_ENV) or None
    password = environ.get(PASSWORD_ENV) or None
    if (username is None) != (password is None):
        have, missing = (USERNAME_ENV, PASSWORD_ENV) if password is None else (PASSWORD_ENV, USERNAME_ENV)
        raise ConfigError(
            f"{have} is set but {missing} is not. Set both, or neither for an anonymous registry."
        )
    return username, password


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` for a process mlci starts (a server, kubectl, git), without the secrets in it.

    None of those processes needs the registry credentials, and a process's environment is readable by
    anything running as the same user (``/proc/<pid>/environ``), ends up in crash reports, and is visible
    to all the code the process loads.
    """
    return {key: value for key, value in environ.items() if not key.startswith(CREDENTIAL_ENV)}


def check_repository(repository: str) -> str:
    """Return ``repository`` if it follows the distribution name grammar, else raise."""
    if _REPOSITORY.fullmatch(repository) is None or len(repository) > 255:
        raise ConfigError(
            f"Registry repository {repository!r} is not a valid name: expected lowercase letters, digits and "
            "'.', '_', '-' separators, with '/' between components (e.g. 'acme/breast-cancer')."
        )
    return repository


_WARNED: set[str] = set()


def _warn_if_risky(url: str, scheme: str, loopback: bool, credentials: bool, insecure: bool) -> None:
    """Say, once per process, what a registry setting gives away: nothing here is silent."""
    if scheme == "https" and insecure:
        risk = (
            f"[registry] url {url!r} with insecure = true: TLS certificates are not verified, so anyone on the "
            "path can pose as the registry"
            + (" and take the credentials" if credentials else "")
            + ". For a self-signed registry, trust its CA instead (SSL_CERT_FILE=/path/to/ca.pem) and drop insecure."
        )
    elif scheme == "http" and not loopback and credentials:  # insecure = true, or open_store refused it
        risk = (
            f"[registry] url {url!r} is plain http: the credentials cross the network in clear text "
            "(insecure = true allows it). Use https."
        )
    elif scheme == "http" and not loopback and not insecure:
        risk = (
            f"[registry] url {url!r} is plain http to a host that is not this machine: tags and documents "
            "travel unauthenticated and can be changed on the way (blobs are still checked against their "
            "digests). Use https, or set [registry] insecure = true to say this is intended."
        )
    else:
        return
    if risk not in _WARNED:
        _WARNED.add(risk)
        print(f"mlci: warning: {risk}", file=sys.stderr)


def check_registry_url(
    url: str,
    key: str = "[registry] url",
    credentials: str = f"Set {USERNAME_ENV} and {PASSWORD_ENV} instead.",
) -> tuple[str, str] | None:
    """Refuse credentials in ``url`` (never echoing them) and, for an http(s) registry, a path or no host.

    Returns (scheme, host[:port]) for an http(s) URL, None for any other form (the caller judges those).
    ``key`` names the setting in messages; ``credentials`` says where credentials go instead.
    """
    shown = _USERINFO.sub("://…@", url)  # never echo credentials someone put in the URL
    if shown != url:
        raise ConfigError(f"{key} must not carry credentials (got {shown!r}). {credentials}")
    if not url.startswith(("http://", "https://")):
        return None
    scheme, _, rest = url.partition("://")
    host, _, url_path = rest.partition("/")
    if url_path.strip("/"):
        raise ConfigError(
            f"{key} {url!r} has a path; give the registry root (e.g. 'https://ghcr.io') "
            f"and put '{url_path.strip('/')}/…' in [registry] repository."
        )
    if not host:
        raise ConfigError(f"{key} {url!r} has no host; {_FORMS}.")
    return scheme, host


def open_store(
    url: str,
    repository: str,
    *,
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    base_dir: Path | None = None,
) -> LayoutStore | HttpStore:
    """The store for ``repository`` at ``url`` (an OCI layout directory or a registry)."""
    check_repository(repository)
    web = check_registry_url(url)
    if web is not None:
        scheme, host = web
        if (
            scheme == "http"
            and username is not None
            and not insecure
            and not is_loopback(host.rsplit(":", 1)[0])
        ):
            raise ConfigError(
                f"[registry] url {url!r} is plain http, so the credentials would cross the network unencrypted. "
                "Use https, or set [registry] insecure = true if that is really intended."
            )
        _warn_if_risky(url, scheme, is_loopback(host.rsplit(":", 1)[0]), username is not None, insecure)
        return HttpStore(f"{scheme}://{host}", repository, username, password, insecure=insecure)
    path_text = url.removeprefix("oci-layout:")
    if not path_text:
        raise ConfigError(f"[registry] url {url!r} names no directory; {_FORMS}.")
    if "://" in url:
        raise ConfigError(f"[registry] url {url!r} has an unsupported scheme; {_FORMS}.")
    if _HOST_PORT.fullmatch(url):
        raise ConfigError(
            f"[registry] url {url!r} looks like a registry address; did you mean 'http://{url}'? {_FORMS}."
        )
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return LayoutStore(path / repository)
