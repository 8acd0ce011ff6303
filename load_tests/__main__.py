"""One entry point for the benchmarks: `python -m load_tests NAME [ARGS...]` runs
`load_tests.NAME` (its own `--help` lists its arguments); `python -m load_tests` lists them,
each with the first line of what it measures (load_tests/README.md has more)."""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Runnable benchmarks; the rest of the package is their shared parts (load, report, servers...).
BENCHMARKS = (
    "compare",
    "bench_vs_piper",
    "bench_engine",
    "bench_encoders",
    "bench_serving",
    "bench_server",
    "bench_streaming",
    "bench_playback",
    "bench_admission",
    "bench_burst",
    "bench_limits",
    "bench_scale_out",
    "bench_gpu",
    "bench_server_gpu",
)


def summary(name: str) -> str:
    doc = importlib.import_module(f"load_tests.{name}").__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), end="\n\n")
        for name in BENCHMARKS:
            print(f"  {name:<18} {summary(name)}")
        return
    name = argv[0].removeprefix("load_tests.")
    if name not in BENCHMARKS:
        sys.exit(f"unknown benchmark {name!r}; one of: {', '.join(BENCHMARKS)}")
    sys.argv = [f"python -m load_tests {name}", *argv[1:]]
    runpy.run_module(f"load_tests.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
