"""Run, on this machine, the exact argv a module graph puts in its containers (container paths mapped)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .engine import Graph

MLCI = Path(sys.executable).with_name("mlci")


def local_argv(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """``argv`` with each container path prefix (longest first) replaced by its local directory."""
    out = []
    for arg in argv:
        for prefix in sorted(paths, key=len, reverse=True):
            if arg == prefix or arg.startswith(prefix + "/"):
                arg = str(paths[prefix]) + arg[len(prefix) :]
                break
        out.append(arg)
    return out


def run_mlci(argv: list[str], paths: dict[str, Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one container argv (starting with 'mlci') with the local mlci, in ``cwd`` (the container's workdir)."""
    if argv[0] != "mlci":
        raise AssertionError(f"not an mlci command: {argv}")
    mapped = local_argv(argv, paths)
    return subprocess.run([str(MLCI), *mapped[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def make_empty_dirs(graph: Graph, paths: dict[str, Path]) -> None:
    """Create locally the empty directories the graph puts into its container (``with_directory(p, dag.directory())``)."""
    for call in graph.calls("withDirectory"):
        if [s.field for s in graph.engine.chain_of(call["source"])] == ["directory"]:
            Path(local_argv([call["path"]], paths)[0]).mkdir(parents=True, exist_ok=True)
