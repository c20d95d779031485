"""Apply + restore of RTN over all block weights, against a plain clone() of the same tensors.

Target (issue 3): ``with compressed(model, RTN(b)): pass`` costs at most 3x
``[p.clone() for p in touched]`` on cgc-tiny and on a random GPT-2-medium-shaped model.

Run by hand:  python benchmarks/bench_compress.py [--reps-small 100] [--reps-large 3]
              [--vocab 2048] [--skip-large] [--threads 1]
              python benchmarks/bench_compress.py --smoke   # seconds, every code path (CI)
Embeddings are never touched, so the GPT-2-medium shape uses a shrunk vocabulary (--vocab).

Two memory regimes. "fresh" (the target's): a full ``gc.collect()`` and glibc ``malloc_trim``
before every timed call, so clone() and the snapshot both fault in fresh pages from cold caches,
as between the evaluations of a sweep. "reused" (cgc-tiny only): calls back to back, freed
memory reused and caches warm; clone() is then a bare memcpy and the ratio shows the fixed cost
of quantizing (two reductions and three elementwise passes) and of Python.

Each call is timed twice: wall clock and this thread's CPU time (``time.thread_time``). With
``--threads 1`` the CPU time is the cost of the call; on a shared machine the wall clock also
holds time spent preempted, which grows faster than linearly once a call outlasts a scheduler
slice (a few ms), so wall-clock ratios of medians overstate the cost of the longer call.
The calls are interleaved so that all see the same load. Quote medians with the IQR.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable

import torch
from common import add_smoke, smoke
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cgc_lens.compress import RTN, Targets, compressed


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so every call allocates the same way.

    Without this a 1 GB clone() costs anywhere from one memcpy (memory the allocator kept) to
    several (fresh pages, faulted in one by one) depending on what ran before it.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: allocation state is left as it is
        pass


def _interleaved(
    fns: list[Callable[[], object]], reps: int, fresh: bool = True
) -> list[tuple[list[float], list[float]]]:
    """(wall, CPU) seconds per call of each of ``fns``, taken in turn so all see the same load."""
    for fn in fns:
        fn()  # warm-up
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in fns]
    for _ in range(reps):
        for fn, (wall, cpu) in zip(fns, times, strict=True):
            if fresh:
                gc.collect()
                _release_freed_memory()
            start, start_cpu = time.perf_counter(), time.thread_time()
            fn()
            cpu.append(time.thread_time() - start_cpu)
            wall.append(time.perf_counter() - start)
    return times


def _ms(t: list[float]) -> str:
    q1, med, q3 = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else t * 3
    return f"{med * 1e3:8.3f} ms [{q1 * 1e3:.3f}-{q3 * 1e3:.3f}]"


def _random_model(**shape: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(act_fn="gelu", normalization_type="LN", device="cpu",
                                  init_weights=False, **shape)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # init_weights=False leaves memory uninitialised
            p.normal_(0.0, 0.02)
    return model.eval()


def _cgc_tiny() -> tuple[str, HookedTransformer]:
    try:
        from cgc_lens import load_model  # type: ignore[attr-defined]

        return "cgc-tiny", load_model("cgc-tiny")
    except Exception as err:  # fall back to the same shapes, and say so
        print(f"(cgc-tiny not loadable: {type(err).__name__}: {err}; using random weights)")
        return "cgc-tiny shape (random)", _random_model(
            n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=2048, n_ctx=128
        )


def bench(
    label: str, model: HookedTransformer, reps: int, bits: int = 6, fresh: bool = True
) -> dict[str, tuple[float, float]]:
    """Print and return ``{mode: (wall ratio, CPU ratio)}`` of medians against clone()."""
    touched = [model.get_parameter(r.param) for r in Targets().resolve(model)]
    checked = [*touched[:4], touched[-1]]
    before = [p.detach().clone() for p in checked]
    n = sum(p.numel() for p in touched)

    def clone() -> object:
        return [p.detach().clone() for p in touched]

    def apply_restore(restore: str) -> Callable[[], None]:
        def run() -> None:
            with compressed(model, RTN(bits), restore=restore):
                pass

        return run

    results = _interleaved([clone, apply_restore("copy"), apply_restore("swap")], reps, fresh)
    exact = all(torch.equal(a, b) for a, b in zip(before, checked, strict=True))
    print(f"{label}, {'fresh' if fresh else 'reused'} memory: {len(touched)} tensors, "
          f"{n / 1e6:.1f}M params, {reps} reps, restored exactly: {exact}")
    print(f"  {'median [IQR]':30s} {'wall':>27s} {'CPU (thread_time)':>27s}   ratio wall / CPU")
    ratios = {}
    (c_wall, c_cpu), *rest = results
    print(f"  {'clone()':30s} {_ms(c_wall):>27s} {_ms(c_cpu):>27s}")
    for mode, (wall, cpu) in zip(("copy", "swap"), rest, strict=True):
        ratios[mode] = (statistics.median(wall) / statistics.median(c_wall),
                        statistics.median(cpu) / statistics.median(c_cpu))
        name = f"RTN{bits} apply+restore {mode!r}"
        print(f"  {name:30s} {_ms(wall):>27s} {_ms(cpu):>27s}   "
              f"{ratios[mode][0]:.2f}x / {ratios[mode][1]:.2f}x  (target <= 3)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps-small", type=int, default=100)
    parser.add_argument("--reps-large", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=2048, help="GPT-2-medium vocab (50257 full)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    add_smoke(parser)
    args = smoke(parser.parse_args(), reps_small=1, reps_large=1, vocab=64)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}")
    label, tiny = _cgc_tiny()
    bench(label, tiny, args.reps_small)
    bench(label, tiny, args.reps_small * 10, fresh=False)
    if not args.skip_large:
        shape = dict(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096)
        if args.smoke:  # the same path on a model of milliseconds
            shape = dict(n_layers=2, d_model=64, n_heads=2, d_head=32, d_mlp=128)
        medium = _random_model(**shape, d_vocab=args.vocab, n_ctx=1024)
        name = "GPT-2-medium shape" if not args.smoke else f"smoke shape {shape}"
        bench(f"{name} (random, vocab {args.vocab})", medium, args.reps_large)


if __name__ == "__main__":
    main()
