"""The survival sweep against (1 + C) bare forward passes, and its memory at 10× the tokens.

**Time.** A sweep over C conditions (the null, RTN 8..4 and a magnitude-pruning plan: C = 7)
streams the reference once and each condition once, through the frozen SAE, into float64 sums
(:func:`cgc_lens.studies.survival.passes.stream_conditions`). It is timed side by side
(arms interleaved, the order rotated each repetition; medians, paired ratios and their range)
with (1 + C) bare ``model(tokens, stop_at_layer=ℓ + 1)`` passes over the same batches (target:
ratio <= 1.2) and with the floors no audit can go below: (1 + C) such passes that also form the
SAE pre-activations ``(x - b_dec) @ W_enc + b_enc`` and select the active features (``torch.topk``
or the sweep's exact two-stage top-k for TopK SAEs; the ReLU mask otherwise). Also timed: the
(1 + C) passes through SAELens's ``sae.encode``, the forwards on each condition's weights, and
the weight edits alone. Both orders of work can be timed: the default chunked order (sparse
reference cache, ``cache_mb=32``) and the batch-outer order (``cache_mb=0``: the weights are
edited once per batch per condition).

**Memory.** ``run_survival`` (the whole audit) runs in a fresh process at 1× and at 10× the
token budget; the peak resident set size of each is compared (target: ratio <= 1.1).

Models: cgc-tiny with its embedded residual SAE (random weights of the same shapes and a random
TopK SAE, d_sae 1024, k 32, when the assets are not built), and a random GPT-2-small-shaped model
with a random ReLU SAE at layer 6 (d_sae 24,576 as gpt2-small-res-jb; biases set for ~64 active
features per token), or a random TopK SAE of any width (``--sae-kind topk --d-sae --k``).

    python benchmarks/bench_survival.py                     # both models, time and memory
    python benchmarks/bench_survival.py --model gpt2-small-shapes --skip-memory
    python benchmarks/bench_survival.py --model gpt2-small-shapes --sae-kind topk --d-sae 8192 \
        --k 64 --batches 1 --batch-size 4 --seq 256 --reps 3 --skip-memory --no-batch-outer
    python benchmarks/bench_survival.py --smoke             # seconds, every code path (CI)

``--smoke`` times cgc-tiny (TopK SAE) and a random cgc-tiny-shaped model with a ReLU SAE (the
GPT-2-small path), and runs the memory comparison once, on cgc-tiny, with a tiny budget and its
two runs in this process (their peak RSS then means nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import add_smoke, smoke

SHAPES = {
    "cgc-tiny-shapes": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                            d_vocab=2048, n_ctx=128),
    "gpt2-small-shapes": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                              d_vocab=50257, n_ctx=1024),
}


def model_and_sae(name: str, d_sae: int | None = None, kind: str | None = None,
                  k: int | None = None, layer: int | None = None):
    """(label, model, SAELens SAE, read-out layer)."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if name == "cgc-tiny":
        try:
            from cgc_lens.models import load_model
            from cgc_lens.saes import load_sae

            model, sae = load_model("cgc-tiny", device="cpu"), load_sae("cgc-tiny")
            return "cgc-tiny", model, sae, int(sae.cfg.metadata.hook_name.split(".")[1])
        except Exception as err:  # the assets may not be built yet: same shapes, and say so
            print(f"(cgc-tiny not loadable: {type(err).__name__}; random weights, same shapes)")
            name = "cgc-tiny-shapes"
    cfg = HookedTransformerConfig(**SHAPES[name], act_fn="gelu_new", normalization_type="LN",
                                  model_name=name, device="cpu", seed=0)
    model = HookedTransformer(cfg).eval()
    layer = cfg.n_layers // 2 if layer is None else layer
    meta = SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post")
    tiny = name == "cgc-tiny-shapes"
    kind = kind or ("topk" if tiny else "relu")
    d_sae = d_sae or (1024 if tiny else 24576)
    if kind == "topk":
        k = k or (32 if tiny else 64)
        return name, model, TopKSAE(TopKSAEConfig(d_in=cfg.d_model, d_sae=d_sae, k=k,
                                                  metadata=meta)), layer
    sae = StandardSAE(StandardSAEConfig(d_in=cfg.d_model, d_sae=d_sae, metadata=meta))
    with torch.no_grad():  # one bias for ~64 firing features per token, as trained SAEs have
        _, cache = model.run_with_cache(torch.randint(0, cfg.d_vocab, (4, 64)),
                                        stop_at_layer=layer + 1, names_filter=meta.hook_name)
        pre = (cache[meta.hook_name].reshape(-1, cfg.d_model) - sae.b_dec) @ sae.W_enc
        top = pre.flatten().topk(64 * pre.shape[0]).values[-1]
        sae.b_enc.fill_(-float(top))
    return name, model, sae, layer


def conditions():
    from cgc_lens.compress import RTN, MagnitudePrune, Plan

    return [("reference", None), *[(f"RTN INT{b}", Plan.of(RTN(b))) for b in (8, 7, 6, 5, 4)],
            ("magnitude 0.2", Plan.of(MagnitudePrune(0.2)))]


def time_sweep(args: argparse.Namespace) -> None:
    from cgc_lens.compress import compressed
    from cgc_lens.saes import validate_sae
    from cgc_lens.saes.sparse_encoder import topk_rows
    from cgc_lens.studies.survival.passes import stream_conditions

    label, model, sae, layer = model_and_sae(args.model, args.d_sae, args.sae_kind, args.k,
                                             args.layer)
    conds = conditions()
    seq = min(args.seq, model.cfg.n_ctx)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batches * args.batch_size, seq),
                           generator=torch.Generator().manual_seed(0))
    target = validate_sae(model, sae)
    batches = tokens.split(args.batch_size)
    k = getattr(sae.cfg, "k", None)
    print(f"\n== {label}: read-out {target.hook} (d_sae {sae.cfg.d_sae}, "
          f"{type(sae).__name__}{f' k {k}' if k else ''}); {tokens.shape[0]} × {seq} tokens, "
          f"batch {args.batch_size}; C = {len(conds)} conditions; {torch.get_num_threads()} "
          f"torch thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    def forwards(hook_fn=None):
        @torch.no_grad()
        def run() -> None:
            hooks = [] if hook_fn is None else [(target.hook, hook_fn)]
            with model.hooks(fwd_hooks=hooks):
                for _ in range(len(conds) + 1):
                    for batch in batches:
                        model(batch, stop_at_layer=layer + 1, return_type=None)
        return run

    def pre_act(act: torch.Tensor) -> torch.Tensor:  # the encoder matmul no SAE can skip
        x = act.reshape(-1, act.shape[-1]) - sae.b_dec * sae.cfg.apply_b_dec_to_input
        return torch.matmul(x, sae.W_enc).add_(sae.b_enc)

    def floor(select):
        def hook_fn(act, hook) -> None:
            pre = pre_act(act)
            if k is None:  # ReLU: which features fire
                (pre > 0).sum()
            else:
                select(pre, k)
        return forwards(hook_fn)

    def sae_encode(act, hook) -> None:
        sae.encode(act)
    def sweep(cache_mb: float):
        def run() -> None:
            stream_conditions(model, tokens, [target], conds, batch_size=args.batch_size,
                              cache_bytes=int(cache_mb * 2**20), progress=False)
        return run

    arms = {"bare forwards": forwards(),
            "+ matmul, torch.topk (floor)": floor(lambda p, k: p.topk(k, sorted=False)),
            "+ matmul, two-stage top-k (floor)": floor(topk_rows),
            "+ SAELens sae.encode": forwards(sae_encode),
            "sweep, chunked (cache_mb=32)": sweep(32), "sweep, batch-outer (cache_mb=0)": sweep(0)}
    if k is None:  # the top-k does not apply: one floor
        del arms["+ matmul, two-stage top-k (floor)"]
        arms = {("+ matmul, ReLU (floor)" if n.startswith("+ matmul") else n): f
                for n, f in arms.items()}
    if not args.batch_outer:  # on large models one weight edit per batch costs several forwards
        del arms["sweep, batch-outer (cache_mb=0)"]

    @torch.no_grad()
    def compressed_forwards() -> None:  # the sweep's forwards, on each condition's weights
        for _ in range(2):  # the sweep's reference and null passes
            for batch in batches:
                model(batch, stop_at_layer=layer + 1, return_type=None)
        for _, plan in conds:
            if plan is not None:
                with compressed(model, plan):
                    for batch in batches:
                        model(batch, stop_at_layer=layer + 1, return_type=None)

    arms["forwards on each condition's weights"] = compressed_forwards

    def edits() -> None:  # what the chunked sweep pays once per chunk (one chunk here)
        for _, plan in conds:
            if plan is not None:
                with compressed(model, plan):
                    pass

    arms["weight edits, once each"] = edits
    for fn in arms.values():  # warm-up
        fn()
    # Wall time, and this process's CPU time: with one torch thread the latter is the work done,
    # steady on a machine other jobs share. Ratios are paired within each repetition.
    wall: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.reps):
        names = list(arms)[rep % len(arms):] + list(arms)[: rep % len(arms)]  # rotate the order
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            arms[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    for name in arms:
        base_wall, base_cpu = wall["bare forwards"], cpu["bare forwards"]
        r_wall = statistics.median(w / b for w, b in zip(wall[name], base_wall, strict=True))
        r_cpu = statistics.median(c / b for c, b in zip(cpu[name], base_cpu, strict=True))
        ratios = sorted(c / b for c, b in zip(cpu[name], base_cpu, strict=True))
        of_medians = statistics.median(cpu[name]) / statistics.median(base_cpu)
        print(f"  {name:37s} wall median {statistics.median(wall[name]):7.3f} s, CPU median "
              f"{statistics.median(cpu[name]):7.3f} s; / (1 + C) bare forwards: wall "
              f"{r_wall:.3f}, CPU {r_cpu:.3f} (paired per repetition; range {ratios[0]:.3f}-"
              f"{ratios[-1]:.3f}; ratio of the CPU medians {of_medians:.3f})")
    edit_cpu = statistics.median(cpu["weight edits, once each"])
    rest = statistics.median((c - edit_cpu) / b for c, b in
                             zip(cpu["sweep, chunked (cache_mb=32)"], cpu["bare forwards"],
                                 strict=True))
    print(f"  chunked sweep without its {len(conds) - 1} weight edits (amortised over a chunk of "
          f"~40k tokens at L0 64 in a real run): CPU {rest:.3f} × the bare forwards")
    for name in arms:
        if name.endswith("(floor)"):
            over = statistics.median(s / f for s, f in zip(
                cpu["sweep, chunked (cache_mb=32)"], cpu[name], strict=True))
            print(f"  chunked sweep / {name[2:]}: CPU {over:.3f}")
    print("  target: sweep / (1 + C) bare forwards <= 1.2")


def memory_child(args: argparse.Namespace) -> None:
    """One audit in this process; print its peak RSS (MiB) and the RSS before the run."""
    from cgc_lens.studies.survival.run import SurvivalConfig, run_survival

    _, model, sae, _ = model_and_sae(args.model, args.d_sae, args.sae_kind, args.k,
                                    args.layer)
    seq = min(args.seq, model.cfg.n_ctx)
    gen = torch.Generator().manual_seed(0)
    n_blocks = args.memory_tokens * args.scale // seq
    tokens = torch.randint(0, model.cfg.d_vocab, (n_blocks, seq), generator=gen)
    eval_tokens = torch.randint(0, model.cfg.d_vocab, (16, seq), generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = SurvivalConfig(bits=(8, 4), match_pruning=None, batch_size=args.batch_size,
                            active_rate=0.0, progress=False,
                            allow=("baseline-perplexity",))  # random weights, random tokens
    t0 = time.perf_counter()
    result = run_survival(config, model=model, sae=sae, tokens=tokens, eval_tokens=eval_tokens)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": int(tokens.numel()), "before_mib": before, "peak_mib": peak,
                      "seconds": time.perf_counter() - t0,
                      "cache_peak_mb": result.info["cache_peak_mb"]}))


def memory(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    rows = {}
    for scale in (1, 10):
        cmd = [sys.executable, __file__, "--memory-child", "--scale", str(scale), "--model",
               args.model, "--memory-tokens", str(args.memory_tokens), "--seq", str(args.seq),
               "--batch-size", str(args.batch_size)]
        for flag in ("d_sae", "sae_kind", "k", "layer"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        if args.smoke:  # the child's options and code in this process, without its imports
            child = io.StringIO()
            with contextlib.redirect_stdout(child):
                memory_child(parser.parse_args(cmd[2:]))
            out = child.getvalue()
        else:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[scale] = json.loads(out.strip().splitlines()[-1])
    one, ten = rows[1], rows[10]
    where = "in this process (smoke)" if args.smoke else "in a fresh process"
    print(f"\n== memory, {args.model}: run_survival (null, RTN 8, RTN 4) {where}")
    for scale, row in rows.items():
        print(f"  {scale:2d}× budget ({row['tokens']:,} tokens): peak RSS {row['peak_mib']:.0f} "
              f"MiB (before the run {row['before_mib']:.0f}), reference cache peak "
              f"{row['cache_peak_mb']:.1f} MB, {row['seconds']:.1f} s")
    print(f"  peak at 10× / peak at 1×: {ten['peak_mib'] / one['peak_mib']:.3f} (target <= 1.1); "
          f"growth during the run: {one['peak_mib'] - one['before_mib']:.0f} → "
          f"{ten['peak_mib'] - ten['before_mib']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, choices=["cgc-tiny", *SHAPES],
                        help="one model (default: cgc-tiny, then gpt2-small-shapes)")
    parser.add_argument("--d-sae", type=int, default=None, help="SAE width of the random models")
    parser.add_argument("--sae-kind", choices=["relu", "topk"], default=None,
                        help="random SAE of the random models (default: topk on cgc-tiny "
                        "shapes, relu on GPT-2-small shapes)")
    parser.add_argument("--k", type=int, default=None, help="TopK k (default 32 / 64)")
    parser.add_argument("--layer", type=int, default=None,
                        help="read-out block of the random models (default n_layers // 2)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on "
                        "a shared machine)")
    parser.add_argument("--memory-tokens", type=int, default=16384, help="1× budget")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--no-batch-outer", dest="batch_outer", action="store_false",
                        help="leave out the batch-outer arm (slow on large models)")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    add_smoke(parser)
    args = smoke(parser.parse_args(), batches=1, batch_size=2, seq=16, reps=1, memory_tokens=64)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        memory_child(args)
        return
    models = [args.model] if args.model else ["cgc-tiny", "gpt2-small-shapes"]
    if args.smoke and args.model is None:  # the GPT-2 path (ReLU SAE) on a tiny model
        models = ["cgc-tiny", "cgc-tiny-shapes"]
    for name in models:
        run = argparse.Namespace(**{**vars(args), "model": name})
        if name == "gpt2-small-shapes" and args.model is None:  # keep the default run short
            run.batches, run.batch_size, run.seq, run.reps = 2, 8, 64, 3
            run.batch_outer = False
        if args.smoke and name == "cgc-tiny-shapes" and args.model is None:
            run.sae_kind, run.d_sae = "relu", 256
        if not args.skip_time:
            time_sweep(run)
        if not args.skip_memory and name != "gpt2-small-shapes" and (
                not args.smoke or name == models[0]):  # smoke: one memory run (two processes)
            memory(run, parser)


if __name__ == "__main__":
    main()
