"""GPTQ's cost against its floor, and calibration memory against the number of tokens.

1. Time: GPTQ of one weight (``gptq_quantize``: Cholesky factors of ``H⁻¹``, the column loop
   with lazy batches) against the float64 matmuls that accumulate its Hessian ``Σ XᵀX`` over the
   calibration tokens plus one Cholesky of ``H``. Target: at most 3x.
2. Memory: the sequential GPTQ operator on a whole model (``compressed(model, GPTQ(...))``) for
   two token counts, each in a fresh process; the rise of the peak resident set over the
   process's state before calibration. Target: the same for both counts (streaming holds one
   batch of activations, never all of them), while holding every activation would grow with
   the tokens by the amount printed.

Usage::

    python benchmarks/bench_gptq.py            # GPT-2-medium W_in shape, cgc-tiny memory
    python benchmarks/bench_gptq.py --smoke    # seconds, every code path (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch
from common import add_smoke, get_model, smoke

from cgc_lens.compress.operators.gptq import gptq_quantize
from cgc_lens.compress.operators.grid import quantize_groups

SHAPES = {
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=97)
}


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_one_weight(n_out: int, n_in: int, n_tokens: int, batch: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_tokens, n_in, generator=g) * torch.linspace(0.1, 3, n_in)
    w = torch.randn(n_out, n_in, generator=g) / n_in**0.5

    def hessian() -> torch.Tensor:  # what collect_layer_inputs does per batch
        h = torch.zeros(n_in, n_in, dtype=torch.float64)
        for xb in x.split(batch):
            xd = xb.double()
            h += xd.T @ xd
        return h * 2

    h = hessian()
    t_h = best_of(hessian, reps)
    t_chol = best_of(lambda: torch.linalg.cholesky(h), reps)
    q = None

    def run() -> None:
        nonlocal q
        q = gptq_quantize(w, h, 4, group_size=128, symmetric=False)

    t_gptq = best_of(run, reps)
    xd = x.double()
    err = float(((w.double() - q.double()) @ xd.T).square().sum())
    rtn = float(((w.double() - quantize_groups(w, 4, 128, False).double()) @ xd.T).square().sum())
    return dict(
        shape=[n_out, n_in],
        tokens=n_tokens,
        hessian_s=t_h,
        cholesky_s=t_chol,
        gptq_s=t_gptq,
        ratio=t_gptq / (t_h + t_chol),
        error_vs_rtn=err / rtn,
    )


def rss_mib() -> float:
    """Resident set of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:  # noqa: PTH123 - a procfs read
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rise(model_name: str, n_seqs: int, seq_len: int, batch: int, group: int) -> dict:
    """In this (fresh) process: the peak rise of the resident set during sequential GPTQ over
    the resident set just before it, sampled every millisecond by a thread."""
    from cgc_lens.compress import compressed
    from cgc_lens.compress.operators import GPTQ

    _, model = get_model(model_name, SHAPES)
    tokens = torch.randint(
        0, model.cfg.d_vocab, (n_seqs, seq_len), generator=torch.Generator().manual_seed(0)
    )
    op = GPTQ(4, group_size=group, symmetric=False).calibrate(model, tokens, batch_size=batch)
    with torch.no_grad():  # warm the allocator with one batch through the whole model
        model(tokens[:batch])
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    with compressed(model, op):
        pass
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    per_token = 8 * (2 * model.cfg.d_model + model.cfg.n_heads * model.cfg.d_head + model.cfg.d_mlp)
    return dict(
        tokens=n_seqs * seq_len,
        rise_mib=max(0.0, peak[0] - before),
        seconds=seconds,
        all_activations_mib=per_token * n_seqs * seq_len / 2**20,
    )


def memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_seqs in args.seqs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            args.mem_model,
            str(n_seqs),
            str(args.seq_len),
            str(args.batch_seqs),
            str(args.mem_group),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, n_seqs, seq_len, batch, group = sys.argv[2:7]
        print(json.dumps(peak_rise(name, int(n_seqs), int(seq_len), int(batch), int(group))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--in-features", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mem-model", default="cgc-tiny")
    parser.add_argument("--mem-group", type=int, default=128)
    parser.add_argument("--seqs", type=int, nargs=2, default=[16, 256])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-seqs", type=int, default=8)
    add_smoke(parser)
    args = smoke(
        parser.parse_args(),
        out_features=128,
        in_features=256,
        tokens=1024,
        batch_tokens=256,
        reps=1,
        mem_model="tiny",
        mem_group=64,
        seqs=[4, 16],
        seq_len=32,
        batch_seqs=4,
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t = time_one_weight(
        args.out_features, args.in_features, args.tokens, args.batch_tokens, args.reps
    )
    print(
        f"GPTQ of one [{t['shape'][0]}, {t['shape'][1]}] weight, int4 g128 asym, "
        f"{t['tokens']} tokens: Hessian matmuls {t['hessian_s']:.3f} s + Cholesky "
        f"{t['cholesky_s']:.3f} s; GPTQ {t['gptq_s']:.3f} s = {t['ratio']:.2f}x "
        f"(target <= 3x); output error {t['error_vs_rtn']:.3f} of RTN's"
    )
    rows = memory(args)
    for r in rows:
        print(
            f"sequential GPTQ on {args.mem_model}, {r['tokens']:6d} calibration tokens: "
            f"peak RSS rise {r['rise_mib']:.1f} MiB in {r['seconds']:.1f} s "
            f"(holding every activation in float64 would take {r['all_activations_mib']:.1f} MiB)"
        )
    growth = rows[1]["rise_mib"] - rows[0]["rise_mib"]
    held = rows[1]["all_activations_mib"] - rows[0]["all_activations_mib"]
    print(
        f"peak growth {growth:.1f} MiB for {rows[1]['tokens'] / rows[0]['tokens']:.0f}x the "
        f"tokens (all activations would grow {held:.1f} MiB)"
    )
    if not args.smoke:
        if t["ratio"] > 3:
            raise SystemExit(f"GPTQ costs {t['ratio']:.2f}x its Hessian + Cholesky (> 3x)")
        if growth > max(4.0, 0.1 * held):
            raise SystemExit(f"peak memory grew {growth:.1f} MiB with the tokens")


if __name__ == "__main__":
    main()
