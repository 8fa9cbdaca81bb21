"""Print the requirements of a pyproject.toml, one a line: build requires, dependencies, chosen extras.

Runs inside the build container (standard library only), so the dependency layer can be installed from
pyproject.toml alone, before the source tree is copied in: a code edit then leaves that layer cached.
Usage: python requirements.py PYPROJECT [EXTRA ...]
"""

import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """build-system.requires + project.dependencies + each extra's list, in that order."""
    project = pyproject.get("project", {})
    optional = project.get("optional-dependencies", {})
    missing = [e for e in extras if e not in optional]
    if missing:
        raise SystemExit(f"pyproject.toml has no extra {missing[0]!r}; it has {sorted(optional)}.")
    reqs = [*pyproject.get("build-system", {}).get("requires", []), *project.get("dependencies", [])]
    for extra in extras:
        reqs += optional[extra]
    return reqs


if __name__ == "__main__":
    path, *wanted = sys.argv[1:]
    with open(path, "rb") as fh:
        print("\n".join(requirements(tomllib.load(fh), wanted)))
