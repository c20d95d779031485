"""Start-up: cgc-tiny's corpus and token streams in a first process and in a second one.

Each run is a fresh Python process that imports cgc_lens, then loads the splits of the embedded
corpus and their token streams as the studies do (``load_corpus`` + ``token_stream`` with
cgc-tiny's tokenizer), and reports the import and the load apart (wall clock and CPU time):

- **cache off** (``CGC_LENS_CACHE=off``): what every process paid before the on-disk cache;
- **first process**: an empty cache folder (it generates, tokenizes and writes the entries);
- **second process**: the same folder (it loads them). Target: its load under 1 s.

The three runs' streams are compared by SHA-256: they must be bit-identical (exit status 1
otherwise). The runs take turns in each repetition so that all see the same load; a cache
folder is made afresh for each repetition. Run with one thread (``OMP_NUM_THREADS=1``) and
quote the CPU times on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_startup.py --reps 3
    python benchmarks/bench_startup.py --smoke   # seconds: eval split, the runs in this process
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import add_smoke, smoke

SPLITS = ("train", "calibration", "eval")
RUNS = ("cache off", "first process", "second process")


def load(splits: list[str]) -> dict[str, object]:
    """Import cgc_lens, then load ``splits`` and their token streams; times and stream digests."""
    wall, cpu = time.perf_counter(), time.process_time()
    from cgc_lens.data import load_corpus, token_stream
    from cgc_lens.models import load_tokenizer

    tokenizer = load_tokenizer("cgc-tiny")
    out: dict[str, object] = {"import_s": time.perf_counter() - wall,
                              "import_cpu_s": time.process_time() - cpu}
    wall, cpu = time.perf_counter(), time.process_time()
    streams = {s: token_stream(load_corpus("cgc-tiny", split=s), tokenizer) for s in splits}
    out["load_s"], out["load_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out["tokens"] = {s: int(t.numel()) for s, t in streams.items()}
    out["sha256"] = {s: hashlib.sha256(t.numpy().tobytes()).hexdigest() for s, t in streams.items()}
    return out


def in_subprocess(splits: list[str], cache: str) -> dict[str, object]:
    env = {**os.environ, "CGC_LENS_CACHE": cache, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--splits", *splits]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_this_process(splits: list[str], cache: str) -> dict[str, object]:
    """:func:`load` here (smoke): the in-memory caches a fresh process would not have are
    emptied first, so the on-disk cache is read or written as in a new process."""
    from cgc_lens.data import files

    files._cached_synthetic.cache_clear()
    files._cached_records.cache_clear()
    before = os.environ.get("CGC_LENS_CACHE")
    os.environ["CGC_LENS_CACHE"] = cache
    try:
        return load(splits)
    finally:
        if before is None:
            del os.environ["CGC_LENS_CACHE"]
        else:
            os.environ["CGC_LENS_CACHE"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the three runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_smoke(parser)
    args = smoke(parser.parse_args(), splits=["eval"], reps=1)
    if args.child:
        print(json.dumps(load(args.splits)))
        return
    run = in_this_process if args.smoke else in_subprocess
    print(f"splits {' '.join(args.splits)}; {args.reps} repetitions; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; "
          f"{'in this process (smoke)' if args.smoke else 'one fresh process per run'}")
    rows: dict[str, list[dict[str, object]]] = {r: [] for r in RUNS}
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="cgc-lens-cache-") as folder:
            for name, cache in zip(RUNS, ("off", folder, folder), strict=True):
                rows[name].append(run(args.splits, cache))
    digests = {json.dumps(row["sha256"], sort_keys=True) for runs in rows.values() for row in runs}
    tokens = rows[RUNS[0]][0]["tokens"]
    print(f"tokens per split: {tokens}; streams bit-identical across runs: {len(digests) == 1}")
    print(f"  {'run':16s} {'import wall / CPU':>22s} {'corpus + streams wall / CPU':>30s}"
          "  (medians, s)")
    for name, runs in rows.items():
        med = {k: statistics.median(float(r[k]) for r in runs)
               for k in ("import_s", "import_cpu_s", "load_s", "load_cpu_s")}
        print(f"  {name:16s} {med['import_s']:10.2f} / {med['import_cpu_s']:5.2f}"
              f" {med['load_s']:18.2f} / {med['load_cpu_s']:5.2f}")
    second = statistics.median(float(r["load_s"]) for r in rows["second process"])
    first = statistics.median(float(r["load_s"]) for r in rows["first process"])
    print(f"second process / first process (load): {second / first:.3f}; second process load "
          f"{second:.2f} s (target < 1 s)")
    if len(digests) != 1:
        sys.exit("the streams differ between runs")


if __name__ == "__main__":
    main()
