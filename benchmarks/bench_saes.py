"""Batched per-head SAE training against the same SAEs trained one head at a time.

Arms, measured round-robin in every repetition (medians and min–max over ``--reps``):

- ``batched``: all heads as one ``BatchedTopKSAE`` (weights ``[n_heads_total, d_head, d_sae]``),
  ``train_batched`` with the sparse kernel (``TrainConfig.kernel="sparse"``, the CPU default);
- ``batched-dense``: the same, with the dense autograd kernel (the trainer before the sparse
  kernel; ``kernel="dense"``);
- ``loop-dense``: one head at a time, dense autograd kernel: a one-head TopK SAE trained the way
  SAELens trains one by default (dense ``[tokens, d_sae]`` code); the baseline of issue 7;
- ``loop-sparse``: one head at a time with the sparse kernel (the same code as ``batched``).

Loop arms run on ``--loop-heads`` heads spread over the layers and are scaled to all heads. All
arms compute the same updates (Adam is elementwise, the per-head losses independent;
``tests/unit/saes/test_saes_per_head.py``). Times are per optimizer step of *all* heads: wall
clock and process CPU time (on a shared, loaded machine CPU time is the steadier figure with 1
thread).

End to end (``--e2e``): a streaming trainer also runs the model to read the activations. Batched:
one forward per step (a ``--batch-size``-token block, hooks on every layer's ``hook_z``, stopping
after the last block); one head at a time: one forward per step *per head*, stopping after that
head's layer (as SAELens's ``ActivationsStore`` does), timed once per layer and scaled by the heads
per layer.

Activations are ``hook_z`` of a random TransformerLens model with GPT-2-medium block shapes
(24 layers × 16 heads, d_head 64, d_model 1024, d_mlp 4096; vocabulary shrunk to 1024, which
``hook_z`` does not depend on), or of cgc-tiny with ``--model cgc-tiny``.

    OMP_NUM_THREADS=1 python benchmarks/bench_saes.py --threads 1 --e2e
    OMP_NUM_THREADS=1 python benchmarks/bench_saes.py --model cgc-tiny --threads 1 --e2e
    OMP_NUM_THREADS=1 python benchmarks/bench_saes.py --smoke     # seconds, every arm (CI)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import defaultdict
from dataclasses import replace

import torch
from common import add_smoke, get_model, smoke

from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE, TrainConfig, site_activations
from cgc_lens.saes.train import train_batched

SHAPES = {  # random TransformerLens models; hook_z does not depend on the vocabulary size
    "gpt2-medium-shapes": dict(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096,
                               d_vocab=1024, n_ctx=512),
    "cgc-tiny-shapes": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                            d_vocab=2048, n_ctx=128),
}
WARM = 3


def clock(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def train_time(sae: BatchedTopKSAE, acts: torch.Tensor, cfg: TrainConfig) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``cfg.max_steps`` steps, after WARM warm-up steps."""
    train_batched(sae, acts, replace(cfg, max_steps=WARM), progress=False)
    wall, cpu = clock(lambda: train_batched(sae, acts, cfg, progress=False))
    return wall / cfg.max_steps, cpu / cfg.max_steps


def forward_time(model, tokens: torch.Tensor, layer_heads: dict[int, list[int]]) -> tuple:
    """(wall, CPU) seconds of one forward reading ``hook_z`` of ``layer_heads``, stopping after the
    deepest layer read."""
    store = {}

    def keep(heads):
        return lambda z, hook: store.__setitem__(hook.name, z[:, :, heads].clone())

    hooks = [(f"blocks.{layer}.attn.hook_z", keep(heads)) for layer, heads in layer_heads.items()]
    with torch.inference_mode():
        return clock(lambda: model.run_with_hooks(tokens, fwd_hooks=hooks,
                                                  stop_at_layer=max(layer_heads) + 1))


def spread(values: list[float], unit: float = 1e3) -> str:
    return (f"{statistics.median(values) * unit:8.1f} "
            f"[{min(values) * unit:.1f}–{max(values) * unit:.1f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2-medium-shapes",
                        help=f"one of {list(SHAPES)} (random weights) or a name for load_model")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--loop-heads", type=int, default=16,
                        help="time the one-at-a-time arms on this many heads and scale to all")
    parser.add_argument("--batch-size", type=int, default=128, help="tokens per step")
    parser.add_argument("--seqs", type=int, default=8, help="128-token blocks read for training")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (arms interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--e2e", action="store_true", help="also time activation harvesting")
    parser.add_argument("--skip-dense-batched", action="store_true",
                        help="leave out the batched-dense arm")
    add_smoke(parser)
    args = smoke(parser.parse_args(), model="cgc-tiny-shapes", steps=1, loop_heads=2,
                 batch_size=16, seqs=1, reps=1, e2e=True, skip_dense_batched=False)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    name, model = get_model(args.model, SHAPES)
    n_ctx = min(model.cfg.n_ctx, 128)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.seqs, n_ctx))
    sae_cfg = BatchedSAEConfig.for_heads(model, expansion=8, k=25)
    acts = site_activations(model, tokens, sae_cfg.sites, batch_size=4, progress=False)
    n, n_layers, n_heads = sae_cfg.n, model.cfg.n_layers, model.cfg.n_heads
    loop_heads = sorted({round(i * (n - 1) / max(args.loop_heads - 1, 1))
                         for i in range(min(args.loop_heads, n))})
    print(f"model {name}: {n} heads, d_head {sae_cfg.d_in}, d_sae {sae_cfg.d_sae}, k {sae_cfg.k}; "
          f"{acts.shape[1]} activation tokens in {time.perf_counter() - t0:.1f} s; "
          f"{torch.get_num_threads()} torch threads; {args.steps} timed steps of "
          f"{args.batch_size} tokens (+{WARM} warm-up); one-at-a-time arms on {len(loop_heads)} "
          f"heads scaled to {n}; {args.reps} reps", flush=True)

    cfg = TrainConfig(batch_size=args.batch_size, epochs=10**6, max_steps=args.steps,
                      log_every=10**6)
    block = tokens[:1, : args.batch_size] if args.batch_size <= n_ctx else tokens[:1]
    arms: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rep in range(args.reps):
        arms["batched"].append(train_time(BatchedTopKSAE(sae_cfg, seed=0), acts, cfg))
        if not args.skip_dense_batched:
            arms["batched-dense"].append(
                train_time(BatchedTopKSAE(sae_cfg, seed=0), acts, replace(cfg, kernel="dense")))
        for kernel in ("dense", "sparse"):
            per_head = [train_time(BatchedTopKSAE(sae_cfg, seed=0).select([i]), acts[i : i + 1],
                                   replace(cfg, kernel=kernel)) for i in loop_heads]
            arms[f"loop-{kernel}"].append(
                tuple(sum(t[j] for t in per_head) * n / len(per_head) for j in (0, 1)))
        if args.e2e:
            all_heads = {layer: list(range(n_heads)) for layer in range(n_layers)}
            forward_time(model, block, all_heads)  # warm-up
            arms["harvest-batched"].append(forward_time(model, block, all_heads))
            per_layer = [forward_time(model, block, {layer: [0]}) for layer in range(n_layers)]
            arms["harvest-loop"].append(
                tuple(sum(t[j] for t in per_layer) * n_heads for j in (0, 1)))
        print(f"rep {rep + 1}/{args.reps} done at {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\nms per optimizer step of all {n} heads: median [min–max] over {args.reps} reps")
    print(f"{'arm':18s} {'wall':>24s} {'CPU':>24s}")
    for arm, times in arms.items():
        wall, cpu = spread([t[0] for t in times]), spread([t[1] for t in times])
        print(f"{arm:18s} {wall:>24s} {cpu:>24s}")

    def ratio(num: str, den: str, *, plus: tuple[str, str] | None = None) -> str:
        out = []
        for j in (0, 1):
            per_rep = [
                (a[j] + (pa[j] if plus else 0)) / (b[j] + (pb[j] if plus else 0))
                for a, b, pa, pb in zip(arms[num], arms[den], arms[plus[0]] if plus else arms[num],
                                        arms[plus[1]] if plus else arms[den], strict=True)
            ]
            out.append(f"{spread(per_rep, 1):>8s}x")
        return f"wall {out[0]}   CPU {out[1]}"

    print("\nspeed-up = time(one at a time) / time(batched), median [min–max] of per-rep ratios")
    print(f"(a) training steps, loop-dense  / batched:       {ratio('loop-dense', 'batched')}")
    print(f"    training steps, loop-sparse / batched:       {ratio('loop-sparse', 'batched')}")
    if not args.skip_dense_batched:
        print(f"    batched-dense (before) / batched (after):    "
              f"{ratio('batched-dense', 'batched')}")
        print(f"    before: loop-dense / batched-dense:          "
              f"{ratio('loop-dense', 'batched-dense')}")
    if args.e2e:
        print(f"(b) end to end (harvest + step), loop-dense / batched: "
              f"{ratio('loop-dense', 'batched', plus=('harvest-loop', 'harvest-batched'))}")


if __name__ == "__main__":
    main()
