"""``--compare`` against one reference pass plus one pass per compared model (issue 15).

The floor of auditing K saved checkpoints is what no audit of them can skip: one reference pass
and one pass per compared model, each a forward to the read-out layer, the SAE encode and the
statistics, on the same tokens. It is timed as the survival sweep
(:func:`cgc_lens.studies.survival.passes.stream_conditions`) over K conditions whose edit leaves
the reference as it is (so each runs a real forward and adds its sums, with no weight edit and
nothing loaded). Against it, ``--compare`` with K = 1 and K = 3 checkpoints written by
:func:`cgc_lens.save_model` (cgc-tiny at int4; at int8, int4 and int4 g32 asymmetric): the
checks against the reference (:func:`~cgc_lens.studies.survival.compare.compared_conditions`),
then the sweep, which loads each checkpoint once and swaps its weights in. Target: ``--compare``
/ floor <= 1.15. Loading is timed on its own (``load_tl_state`` of each checkpoint, once).

Both the study's default cache (``--cache-mb 32``: the run is one chunk) and a small one
(``--small-cache-mb``: several chunks, where the second and third checkpoints stream after the
chunk loop over reference codes kept on disk) are timed. For context, the bare floor of
``bench_survival.py``: (1 + K) forwards that also form the SAE pre-activations and select the
top k. Arms are interleaved, the order rotated each repetition; wall and CPU seconds
(``time.process_time``, one torch thread: steady on a shared machine), medians and ratios paired
within each repetition.

    python benchmarks/bench_compare.py                # cgc-tiny, 8 × 8 × 128 tokens, 5 reps
    python benchmarks/bench_compare.py --smoke        # seconds, every code path (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import add_smoke, smoke

from cgc_lens import RTN, compressed, load_model, load_sae
from cgc_lens.io.hf_export import save_model
from cgc_lens.saes import validate_sae
from cgc_lens.saes.sparse_encoder import topk_rows
from cgc_lens.studies.survival.compare import compared_conditions, describe, load_tl_state
from cgc_lens.studies.survival.passes import stream_conditions

CHECKPOINTS = {
    "int8": RTN(8),
    "int4": RTN(4),
    "int4-g32-asym": RTN(4, group_size=32, symmetric=False),
}


class NoEdit:
    """An edit that leaves the reference as it is: the sweep still runs a forward for it."""

    @contextlib.contextmanager
    def swapped(self, model):
        yield model


def save_checkpoints(model, folder: Path) -> dict[str, Path]:
    out = {}
    for name, op in CHECKPOINTS.items():
        with compressed(model, op):
            out[name] = save_model(model, folder / name)
    return out


def arms(model, target, tokens, folders, args):
    """``{name: fn}``: the floors and ``--compare`` at K = 1 and 3, for both caches."""
    stop = int(target.hook.split(".")[1]) + 1
    sae, k = target.sae, getattr(target.sae.cfg, "k", None)

    def sweep(conds, cache_mb):
        return stream_conditions(
            model,
            tokens,
            [target],
            conds,
            batch_size=args.batch_size,
            cache_bytes=int(cache_mb * 2**20),
            progress=False,
        )

    def floor(n, cache_mb):
        return lambda: sweep([(f"pass {i}", NoEdit()) for i in range(n)], cache_mb)

    def compare(names, cache_mb):
        def run():
            conds = compared_conditions(tuple(f"{n}={folders[n]}" for n in names), model)
            sums = sweep([(c.name, c.plan) for c in conds], cache_mb)
            conds[0].plan.slot.clear()
            return sums

        return run

    def bare(n):
        def hook_fn(act, hook):
            x = act.reshape(-1, act.shape[-1]) - sae.b_dec * sae.cfg.apply_b_dec_to_input
            pre = torch.matmul(x, sae.W_enc).add_(sae.b_enc)
            topk_rows(pre, k) if k else (pre > 0).sum()

        @torch.no_grad()
        def run():
            with model.hooks(fwd_hooks=[(target.hook, hook_fn)]):
                for _ in range(n + 1):
                    for batch in tokens.split(args.batch_size):
                        model(batch, stop_at_layer=stop, return_type=None)

        return run

    out = {}
    for cache_mb in (args.cache_mb, args.small_cache_mb):
        for names in (["int4"], list(CHECKPOINTS)):
            n = len(names)
            out[f"floor K={n}, cache {cache_mb} MB"] = floor(n, cache_mb)
            out[f"--compare K={n}, cache {cache_mb} MB"] = compare(names, cache_mb)
    for n in (1, 3):
        out[f"bare forwards + encode K={n}"] = bare(n)
    return out


def load_times(model, folders, reps: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of reading each checkpoint, and of the checks up front."""
    out = {}
    for name, path in folders.items():
        entry = describe(name, path)
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            load_tl_state(entry, model)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[f"load {name}"] = (statistics.median(walls), statistics.median(cpus))
    for names in (["int4"], list(folders)):
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            compared_conditions(tuple(f"{n}={folders[n]}" for n in names), model)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[f"checks K={len(names)} (config, tokenizer)"] = (
            statistics.median(walls),
            statistics.median(cpus),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=32.0,
        help="the sweep's reference cache (the study's default)",
    )
    parser.add_argument(
        "--small-cache-mb",
        type=float,
        default=0.5,
        help="a cache that splits the run into several chunks",
    )
    add_smoke(parser)
    args = smoke(parser.parse_args(), batches=2, batch_size=2, seq=16, reps=1, small_cache_mb=0.01)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model("cgc-tiny", device="cpu")
    target = validate_sae(model, load_sae("cgc-tiny"))
    tokens = torch.randint(
        0,
        model.cfg.d_vocab,
        (args.batches * args.batch_size, args.seq),
        generator=torch.Generator().manual_seed(0),
    )
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        folders = save_checkpoints(model, Path(tmp))
        fns = arms(model, target, tokens, folders, args)
        chunks = {name: fn().n_chunks for name, fn in fns.items() if name.startswith("--")}
        print(
            f"== cgc-tiny, read-out {target.hook} (d_sae {target.sae.cfg.d_sae}); "
            f"{tokens.shape[0]} × {args.seq} tokens, batch {args.batch_size}; "
            f"{torch.get_num_threads()} torch thread(s); load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; chunks: "
            f"{ {k.split(', ')[1]: v for k, v in chunks.items()} }"
        )
        wall = {k: [] for k in fns}
        cpu = {k: [] for k in fns}
        for rep in range(args.reps):
            names = list(fns)[rep % len(fns) :] + list(fns)[: rep % len(fns)]
            for name in names:
                t0, c0 = time.perf_counter(), time.process_time()
                fns[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        loads = load_times(model, folders, args.reps)
    med = statistics.median
    for name in fns:
        print(
            f"  {name:38s} wall median {med(wall[name]):7.3f} s, CPU median {med(cpu[name]):7.3f} s"
        )
    for name, (w, c) in loads.items():
        print(f"  {name:38s} wall median {w:7.3f} s, CPU median {c:7.3f} s")
    print("  --compare / floor (paired per repetition; median, range):")
    for name in fns:
        if not name.startswith("--"):
            continue
        base = name.replace("--compare", "floor")
        k = int(name.split("K=")[1].split(",")[0])
        load = sum(
            c
            for n, (_, c) in loads.items()
            if n.startswith("load") and (k == 3 or n == "load int4")
        )
        checks = loads[f"checks K={k} (config, tokenizer)"][1]
        for what, times in (("wall", wall), ("CPU", cpu)):
            r = sorted(a / b for a, b in zip(times[name], times[base], strict=True))
            line = f"    {name:34s} {what:4s} {med(r):.3f} ({r[0]:.3f}-{r[-1]:.3f})"
            if what == "CPU":
                rest = med(
                    (a - load - checks) / b for a, b in zip(cpu[name], cpu[base], strict=True)
                )
                line += (
                    f"; without the {k} load(s) ({load:.3f} s CPU) and the checks "
                    f"({checks:.3f} s): {rest:.3f}"
                )
            print(line)
    for n in (1, 3):
        base = f"bare forwards + encode K={n}"
        r = med(
            a / b
            for a, b in zip(cpu[f"floor K={n}, cache {args.cache_mb} MB"], cpu[base], strict=True)
        )
        print(f"  floor K={n} / bare forwards + encode: CPU {r:.3f} (the sweep's statistics)")
    print("  target: --compare / floor <= 1.15")


if __name__ == "__main__":
    main()
