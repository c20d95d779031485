"""Apply + restore of RTN over all block weights, against a plain clone() of the same tensors.

Target (issue 3): ``with compressed(model, RTN(b)): pass`` costs at most 3x
``[p.clone() for p in touched]`` on cgc-tiny and on a random GPT-2-medium-shaped model.

Run by hand:  python benchmarks/bench_compress.py [--reps-small 100] [--reps-large 3]
              [--vocab 2048] [--skip-large] [--threads 1]
Embeddings are never touched, so the GPT-2-medium shape uses a shrunk vocabulary (--vocab).
Freed memory is handed back to the OS before every timed call (glibc ``malloc_trim``), so
clone() and the snapshot both allocate fresh pages; the calls are interleaved so that both see
the same machine load. Medians are the figures to quote; mins show the noise floor.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from collections.abc import Callable

import torch
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


def _interleaved(fns: list[Callable[[], object]], reps: int) -> list[list[float]]:
    """Seconds per call of each of ``fns``, taken in turn so that all see the same load."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times, strict=True):
            gc.collect()
            _release_freed_memory()
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


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
    label: str, model: HookedTransformer, reps: int, bits: int = 6
) -> dict[str, float]:
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

    t_clone, t_copy, t_swap = _interleaved(
        [clone, apply_restore("copy"), apply_restore("swap")], reps
    )
    exact = all(torch.equal(a, b) for a, b in zip(before, checked, strict=True))
    print(f"{label}: {len(touched)} tensors, {n / 1e6:.1f}M params, {reps} reps, "
          f"restored exactly: {exact}")
    print(f"  {'clone()':28s} median {statistics.median(t_clone) * 1e3:9.3f} ms"
          f"  min {min(t_clone) * 1e3:9.3f} ms")
    ratios = {}
    for mode, t in (("copy", t_copy), ("swap", t_swap)):
        ratios[mode] = statistics.median(t) / statistics.median(t_clone)
        name = f"RTN{bits} apply+restore {mode!r}"
        print(f"  {name:28s} median {statistics.median(t) * 1e3:9.3f} ms"
              f"  min {min(t) * 1e3:9.3f} ms  ratio median {ratios[mode]:.2f}x"
              f"  min {min(t) / min(t_clone):.2f}x  (target <= 3)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps-small", type=int, default=100)
    parser.add_argument("--reps-large", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=2048, help="GPT-2-medium vocab (50257 full)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    label, tiny = _cgc_tiny()
    bench(label, tiny, args.reps_small)
    if not args.skip_large:
        medium = _random_model(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096,
                               d_vocab=args.vocab, n_ctx=1024)
        bench(f"GPT-2-medium shape (random, vocab {args.vocab})", medium, args.reps_large)


if __name__ == "__main__":
    main()
