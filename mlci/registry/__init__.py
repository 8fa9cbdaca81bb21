"""The OCI registry layer: push, pull and tag model artifacts in an OCI layout directory or a registry.

``open_store(url, repository, ...)`` picks the store from ``[registry] url``:

- ``oci-layout:.mlci/registry`` (or a plain path): an OCI image layout per repository, no server needed;
  ``skopeo inspect --raw oci:<dir>/<repository>:candidate`` reads it.
- ``http://127.0.0.1:5000``: a local ``docker-registry`` (no TLS).
- GHCR: ``https://ghcr.io``, repository ``<owner>/<model>``; MLCI_REGISTRY_USERNAME = the GitHub user,
  MLCI_REGISTRY_PASSWORD = a token with ``write:packages`` (``GITHUB_TOKEN`` in Actions). Bearer flow.
- ECR: ``https://<account>.dkr.ecr.<region>.amazonaws.com``, repository created beforehand;
  MLCI_REGISTRY_USERNAME = ``AWS``, MLCI_REGISTRY_PASSWORD = ``$(aws ecr get-login-password)``. Basic.
- Docker Hub: ``https://registry-1.docker.io``, repository ``<user>/<model>``; an access token. Bearer flow.

``insecure = true`` skips TLS certificate verification (self-signed registries only).
"""

from __future__ import annotations

from mlci.registry.artifacts import (
    PushResult,
    digest_tag,
    expand_ref,
    get_document,
    pull_artifact,
    push_artifact,
    put_document,
    resolve,
    tag_artifact,
    tag_digest,
)
from mlci.registry.cache import default_cache_dir, fetch
from mlci.registry.http import HttpStore
from mlci.registry.layout import LayoutStore
from mlci.registry.settings import open_store, registry_settings_from_env
from mlci.registry.store import Store

__all__ = [
    "HttpStore",
    "LayoutStore",
    "PushResult",
    "Store",
    "default_cache_dir",
    "digest_tag",
    "expand_ref",
    "fetch",
    "get_document",
    "open_store",
    "pull_artifact",
    "push_artifact",
    "put_document",
    "registry_settings_from_env",
    "resolve",
    "tag_artifact",
    "tag_digest",
]
