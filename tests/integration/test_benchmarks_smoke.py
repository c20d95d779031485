"""Benchmarks never rot: every ``benchmarks/bench_*.py`` runs with ``--smoke`` and exits 0.

The benchmarks are found by glob, so a new one is covered without a change here (and one
without ``--smoke`` fails, argparse refusing the flag). Each runs in its own process, as a user
runs it (``OMP_NUM_THREADS=1``, the session's temporary cache folder); the runs of the selected
benchmarks start together, two at a time, when the first of these tests asks for its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("bench_*.py"))
WORKERS = max(1, min(2, os.cpu_count() or 1))
TIMEOUT_S = 300  # a smoke run takes seconds; this only stops a hung one


def _run(bench: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(bench), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    return done, time.perf_counter() - start


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future]]:
    """The smoke run of every benchmark selected in this session, started ``WORKERS`` at a time."""
    selected = [item.callspec.params["bench"] for item in request.session.items
                if getattr(item, "module", None) is request.module
                and "bench" in getattr(getattr(item, "callspec", None), "params", {})]
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        yield {bench.name: pool.submit(_run, bench) for bench in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_benchmarks_are_found() -> None:
    names = {b.name for b in BENCHMARKS}
    assert {"bench_compress.py", "bench_streaming.py", "bench_survival.py"} <= names, names


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_smoke(bench: Path, smoke_runs: dict[str, Future]) -> None:
    done, seconds = smoke_runs[bench.name].result()
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
    hint = (" (it has no --smoke mode: add one with benchmarks/common.add_smoke)"
            if "unrecognized arguments: --smoke" in done.stderr else "")
    assert done.returncode == 0, (
        f"python {bench.relative_to(ROOT)} --smoke exited {done.returncode} after "
        f"{seconds:.1f} s{hint}:\n{tail}")
