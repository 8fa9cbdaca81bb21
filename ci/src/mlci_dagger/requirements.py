"""Print the requirements of a pyproject.toml, one a line: build requires, dependencies, chosen extras.

Runs inside the build container (standard library only), so the dependency layer can be installed from
pyproject.toml alone, before the source tree is copied in: a code edit then leaves that layer cached.
Usage: python requirements.py PYPROJECT [EXTRA ...]
       python requirements.py PYPROJECT --runtime [--without=DIST ...]
(--runtime: the dependencies alone, without build requires and without the named distributions: the
serving image's runtime, which installs a wheel built elsewhere.)
"""

import re
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


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503): 'uvicorn[standard]>=0.30' -> 'uvicorn'."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    if match is None:
        raise SystemExit(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def runtime_requirements(pyproject: dict, without: list[str]) -> list[str]:
    """project.dependencies without the named distributions (each must be one of them)."""
    deps = pyproject.get("project", {}).get("dependencies", [])
    names = {dist_name(d) for d in deps}
    unknown = [w for w in without if dist_name(w) not in names]
    if unknown:
        raise SystemExit(f"pyproject.toml has no dependency {unknown[0]!r}; it has {sorted(names)}.")
    dropped = {dist_name(w) for w in without}
    return [d for d in deps if dist_name(d) not in dropped]


if __name__ == "__main__":
    path, *wanted = sys.argv[1:]
    with open(path, "rb") as fh:
        pyproject = tomllib.load(fh)
    if wanted[:1] == ["--runtime"]:
        drops = [w.removeprefix("--without=") for w in wanted[1:]]
        print("\n".join(runtime_requirements(pyproject, drops)))
    else:
        print("\n".join(requirements(pyproject, wanted)))
