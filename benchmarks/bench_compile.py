"""Does ``torch.compile`` pay on CPU? The model's forward eager against compiled (issue 18, item 6).

Times, on one thread, ``model(tokens)`` (logits, as perplexity runs it) and the survival
sweep's read (a forward stopped after the read-out layer with a hook reading
``hook_resid_post``) for cgc-tiny and for random weights of GPT-2-small's shape:

- **eager**: the model as TransformerLens runs it;
- **compiled**: ``torch.compile(model)`` (inductor, the default backend), after a warm-up call
  whose time (the compilation) is reported apart, with the largest difference in the output.

A ``--compile`` option would pay only if the compiled forward's saving over the calls of a study
outweighs the compilation; the figures and the decision are in docs/performance.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --reps 5
    python benchmarks/bench_compile.py --smoke   # seconds: cgc-tiny, one tiny batch, eager

``--smoke`` times the eager calls and builds the compiled module but does not call it: a first
call compiles, which took 5 s of CPU even with dynamo's tracing alone (backend "eager") on
cgc-tiny and a minute or more with inductor, far over a smoke run's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from common import add_smoke, get_model, smoke

SHAPES = {
    "gpt2-small-shape": dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
    )
}


def cpu_seconds(fn, reps: int) -> float:
    """Median CPU seconds of ``fn()`` over ``reps`` calls (one thread: CPU time ≈ work done)."""
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def _cpu_with_children() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench(
    name: str, *, batch: int, pos: int, reps: int, backend: str, skip_compiled: bool = False
) -> dict[str, object]:
    import torch._dynamo

    name, model = get_model(name, SHAPES)
    tokens = torch.randint(
        0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(0)
    )
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    read: list[torch.Tensor] = []

    def reader(act, hook):  # one function object: a new one per call would recompile each time
        read.append(act.sum())

    def logits(m):
        return m(tokens)

    def sweep_read(m):  # the survival reader: hook at the read-out layer, stop after it
        with m.hooks(fwd_hooks=[(hook, reader)]):
            m(tokens, stop_at_layer=model.cfg.n_layers // 2 + 1, return_type=None)

    out: dict[str, object] = {"model": name, "tokens": batch * pos, "backend": backend}
    with torch.no_grad():
        eager_logits = logits(model)
        for what, fn in (("logits", logits), ("read", sweep_read)):
            out[f"{what}_eager_s"] = cpu_seconds(lambda fn=fn: fn(model), reps)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        if skip_compiled:  # --smoke: compiling takes seconds to minutes, more than a smoke run
            return out
        for what, fn in (("logits", logits), ("read", sweep_read)):
            wall, cpu = time.perf_counter(), _cpu_with_children()
            first = fn(compiled)  # compiles (inductor runs its C++ compiler in subprocesses)
            out[f"{what}_compile_s"] = _cpu_with_children() - cpu
            out[f"{what}_compile_wall_s"] = time.perf_counter() - wall
            if what == "logits":
                out["max_abs_diff"] = float((first - eager_logits).abs().max())
            out[f"{what}_compiled_s"] = cpu_seconds(lambda fn=fn: fn(compiled), reps)
            out[f"{what}_speedup"] = out[f"{what}_eager_s"] / out[f"{what}_compiled_s"]
            out[f"{what}_break_even_calls"] = (
                out[f"{what}_compile_s"] / (out[f"{what}_eager_s"] - out[f"{what}_compiled_s"])
                if out[f"{what}_eager_s"] > out[f"{what}_compiled_s"]
                else None
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cgc-tiny", "gpt2-small-shape"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    add_smoke(parser)
    args = smoke(parser.parse_args(), models=["cgc-tiny"], batch=1, pos=16, reps=1)
    torch.set_num_threads(1)
    for name in args.models:
        print(
            json.dumps(
                bench(
                    name,
                    batch=args.batch,
                    pos=args.pos,
                    reps=args.reps,
                    backend=args.backend,
                    skip_compiled=args.smoke,
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
