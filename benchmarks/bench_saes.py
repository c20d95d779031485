"""Batched per-head SAE training against the same SAEs trained one head at a time.

Both arms run the same code (:func:`cgc_lens.saes.train_batched`): the batched arm trains all
heads as one ``BatchedTopKSAE`` (weights ``[n_heads_total, d_head, d_sae]``); the loop arm
trains ``n_heads_total`` one-head SAEs, one after the other, for the same number of steps each
(Adam is elementwise and the losses are independent, so both arms compute the same updates;
``tests/unit/test_saes_per_head.py`` checks that). Per-step times are means over a timed run after
a warm-up run; the loop arm may run fewer steps than the batched arm (``--loop-steps``)
and its time per full step (all heads once) is extrapolated from its per-head step time.

Activations are ``hook_z`` of a random TransformerLens model with GPT-2-medium block shapes
(24 layers × 16 heads, d_head 64, d_model 1024, d_mlp 4096; vocabulary shrunk to 1024, which
``hook_z`` does not depend on), or of cgc-tiny with ``--model cgc-tiny`` (random weights of the
same shapes when it is not built).

    python benchmarks/bench_saes.py                          # GPT-2-medium shapes
    python benchmarks/bench_saes.py --model cgc-tiny
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import replace

import torch

from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE, TrainConfig, site_activations
from cgc_lens.saes.train import train_batched

SHAPES = {  # random TransformerLens models; hook_z does not depend on the vocabulary size
    "gpt2-medium-shapes": dict(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096,
                               d_vocab=1024, n_ctx=512),
    "cgc-tiny-shapes": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                            d_vocab=2048, n_ctx=128),
}


def get_model(name: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if name not in SHAPES:
        try:
            from cgc_lens.models import load_model

            return name, load_model(name, device="cpu")
        except Exception as err:  # cgc-tiny may not be built yet: same shapes, and say so
            print(f"({name} not loadable: {type(err).__name__}; using random weights)")
            name = f"{name}-shapes"
    cfg = HookedTransformerConfig(**SHAPES[name], act_fn="gelu_new", normalization_type="LN",
                                  model_name=name, device="cpu", seed=0)
    return name, HookedTransformer(cfg).eval()


def timed_train(sae: BatchedTopKSAE, acts: torch.Tensor, cfg: TrainConfig) -> float:
    """Seconds per step of one ``train_batched`` run of ``cfg.max_steps`` steps."""
    t0 = time.perf_counter()
    res = train_batched(sae, acts, cfg, progress=False)
    return (time.perf_counter() - t0) / res.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2-medium-shapes",
                        help=f"one of {list(SHAPES)} (random weights) or a name for load_model")
    parser.add_argument("--steps", type=int, default=200, help="batched-arm steps")
    parser.add_argument("--loop-steps", type=int, default=10, help="loop-arm steps per head")
    parser.add_argument("--loop-heads", type=int, default=None,
                        help="time the loop arm on this many heads and scale to all")
    parser.add_argument("--batch-size", type=int, default=128, help="tokens per step")
    parser.add_argument("--seqs", type=int, default=4, help="sequences read from the model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    name, model = get_model(args.model)
    n_ctx = min(model.cfg.n_ctx, 128)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.seqs, n_ctx))
    sae_cfg = BatchedSAEConfig.for_heads(model, expansion=8, k=25)
    acts = site_activations(model, tokens, sae_cfg.sites, batch_size=4, progress=False)
    del model
    print(f"model {name}: {sae_cfg.n} heads, d_head {sae_cfg.d_in}, d_sae {sae_cfg.d_sae}, "
          f"k {sae_cfg.k}; {acts.shape[1]} activation tokens read in "
          f"{time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} torch threads")

    warm = 3
    cfg = TrainConfig(batch_size=args.batch_size, epochs=10**6, max_steps=warm, log_every=10**6)
    print(f"batched arm: {warm} warm-up + {args.steps} timed steps of {args.batch_size} tokens …",
          flush=True)
    batched = BatchedTopKSAE(sae_cfg, seed=0)
    timed_train(batched, acts, cfg)  # warm-up
    per_step_batched = timed_train(
        batched, acts, replace(cfg, max_steps=args.steps)
    )
    print(f"batched: {args.steps} steps, {per_step_batched * 1e3:.1f} ms/step "
          f"({args.steps * per_step_batched:.1f} s)")

    loop_cfg = replace(cfg, max_steps=args.loop_steps)
    per_head: list[float] = []
    t_loop = time.perf_counter()
    loop_heads = sae_cfg.n if args.loop_heads is None else min(args.loop_heads, sae_cfg.n)
    for i in range(loop_heads):
        one = batched.select([i])
        timed_train(one, acts[i : i + 1], cfg)  # warm-up, untimed
        per_head.append(timed_train(one, acts[i : i + 1], loop_cfg))
    loop_wall = time.perf_counter() - t_loop
    per_step_loop = sum(per_head) * sae_cfg.n / loop_heads
    scaled = "" if loop_heads == sae_cfg.n else f", scaled from {loop_heads} heads"
    print(f"loop: {loop_heads} heads × {args.loop_steps} steps (+{warm} warm-up) in "
          f"{loop_wall:.1f} s; median {statistics.median(per_head) * 1e3:.2f} ms per head-step; "
          f"{per_step_loop * 1e3:.1f} ms per step of all {sae_cfg.n} heads{scaled}")
    print(f"speed-up batched / loop (per step, {name}): "
          f"{per_step_loop / per_step_batched:.1f}x")
    if args.loop_steps < args.steps:
        loop_total, batched_total = per_step_loop * args.steps, per_step_batched * args.steps
        print(f"  (loop time for {args.steps} steps extrapolated from {args.loop_steps}: "
              f"{loop_total:.0f} s vs batched {batched_total:.1f} s)")


if __name__ == "__main__":
    main()
