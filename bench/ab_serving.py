"""A/B of `mlci serve` between this checkout and another (e.g. a worktree of main), with wrk, interleaved.

Usage: .venv/bin/python bench/ab_serving.py OLD_CHECKOUT [--rounds 5] [--duration 5]

Both servers run at once, pinned to core 0 (log on, as in production; dynamic batching on), and wrk
(core 1) alternates between them round by round, so a slow spell of a shared machine hits both. The old
code runs in this venv: its packages are laid out as installed (``mlci``, ``mlci.serving`` = ``serving/``
...) under a temporary directory put first on PYTHONPATH, which the editable install's finder comes after.
Prints each run and, per configuration, the median req/s and the median server CPU µs per request.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as b

PATH = "/v2/models/breast-cancer/infer"


def installed_layout(checkout: Path, into: Path) -> Path:
    """``checkout``'s packages as the wheel installs them (pyproject's package-dir), under ``into``."""
    root = into / "site"
    shutil.copytree(checkout / "mlci", root / "mlci")
    for package in ("model", "serving", "monitor"):
        (root / "mlci" / package).symlink_to(checkout / package)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = parser.parse_args()
    b.WORK.mkdir(parents=True, exist_ok=True)
    artifact = b.build_artifact()
    names, matrix, _ = b.read_rows()
    bodies = b.WORK / "ab-bodies"
    bodies.mkdir(exist_ok=True)
    (bodies / "row.json").write_bytes(b.v2_named(names, matrix[:1]))
    binary, header_length = b.v2_binary(names, (matrix * 2)[: b.BATCH])
    (bodies / "batch.bin").write_bytes(binary)
    configs = [
        ("1 row, 30 JSON inputs, c=8", bodies / "row.json", 8, None),
        (f"{b.BATCH} rows, binary tensors, c=4", bodies / "batch.bin", 4, header_length),
    ]
    with tempfile.TemporaryDirectory(prefix="mlci-ab-") as tmp, ExitStack() as stack:
        paths = {"old": str(installed_layout(args.old.resolve(), Path(tmp))), "new": None}
        urls = {}
        for name, pythonpath in paths.items():
            port = b.free_port()
            env = {"MLCI_SERVE_LOG_KEEP": "4", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
            argv = [sys.executable, "-m", "mlci", "serve", str(artifact), "--port", str(port)]
            argv += ["--log-dir", str(Path(tmp) / f"log-{name}")]
            urls[name] = f"http://127.0.0.1:{port}"
            ready = f"{urls[name]}/v2/health/ready"
            stack.enter_context(b.server(argv, ready, cwd=Path(tmp), log=Path(tmp) / f"{name}.log", env=env))
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for label, body, connections, length in configs:
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    run = b.wrk(urls[name] + PATH, body, connections, args.duration, length)
                    runs.setdefault((label, name), []).append(run)
                    print(f"round {r} | {label} | {name}: {run['rps']:,.0f} req/s, "
                          f"{run['cpu_us_per_request']:.0f} µs CPU/request, errors {run['non2xx']}", flush=True)  # fmt: skip
    for (label, name), done in runs.items():
        rps = statistics.median(x["rps"] for x in done)
        cpu = statistics.median(x["cpu_us_per_request"] for x in done)
        shown = ", ".join(f"{x['rps']:,.0f}" for x in done)
        print(f"{label} | {name} | median {rps:,.0f} req/s | median {cpu:.0f} µs CPU/request | runs {shown}")


if __name__ == "__main__":
    main()
