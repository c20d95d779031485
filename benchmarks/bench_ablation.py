"""The per-head ablation sweep does no forward work it can avoid.

Three timings in CPU seconds of this process (steadier than wall time on a shared machine),
interleaved in one run (medians and minima over ``--reps``):

- **sweep**: ``cgc_lens.forward.ablation.head_ablation`` as the study calls it (one dense forward
  per batch caching ``hook_z`` and ``hook_resid_mid``, then per head: subtract its contribution,
  rest of block ℓ, blocks > ℓ, unembedding, NLL and KL; ``--heads-per-pass`` heads of a layer
  stacked, 1 by default as the library does on CPU);
- **floor**: only the work no exact method can skip, on the same stacked shapes: per head, the
  rest of block ℓ after its attention (``ln2`` + MLP; nothing for attention-only blocks), the
  blocks after ℓ, the unembedding and the loss (log-softmax, NLL, KL); reported alone and plus
  the one dense forward per batch that ΔPPL and ΔKL are measured against;
- **naive**: one full hooked forward per head and batch (``head_ablation_naive``).

Targets: sweep / floor ≤ 1.15; ΔPPL equal to the naive loop's to 1e-5 (checked in float64,
where float32 rounding through many layers of a random model does not blur it; the float32
difference is printed too). The exit status is 1 when the float64 check fails.

    python benchmarks/bench_ablation.py --smoke                      # seconds, random model (CI)
    python benchmarks/bench_ablation.py --threads 1 --reps 5         # cgc-tiny (random if absent)
    python benchmarks/bench_ablation.py --model gpt2-medium-shapes --threads 1 --reps 3 \
        --seq 32 --layers 0 12 23 --check-heads 2                   # 24 × 16 heads, vocab 8192
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from common import add_smoke, get_model, smoke

from cgc_lens.forward.ablation import head_ablation, head_ablation_naive
from cgc_lens.forward.head_edits import logits_from_residual, residual_start
from cgc_lens.forward.metrics import log_probs, nll_kl_sums
from cgc_lens.sites import Head, hook_name

SHAPES = {  # random TransformerLens models with the real shapes (vocab reduced where noted)
    "cgc-tiny-shapes": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                            d_vocab=2048, n_ctx=128),
    "gpt2-medium-shapes": dict(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096,
                               d_vocab=8192, n_ctx=1024),  # real vocab: 50257
    "smoke": dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=512, n_ctx=32),
}
DEFAULTS = {  # blocks, seq, batch size, layers swept (None: all)
    "cgc-tiny": (8, 128, 8, None),
    "cgc-tiny-shapes": (8, 128, 8, None),
    "gpt2-medium-shapes": (1, 64, 1, (0, 8, 16, 23)),
    "smoke": (2, 32, 2, None),
}


@torch.no_grad()
def floor_inputs(model, tokens, heads, batch_size, per_pass):
    """Per batch: (batch, dense log-probs, [(layer, stacked residual)]) built outside the clock."""
    start = residual_start(model)
    layers = sorted({h.layer for h in heads})
    out = []
    for batch in tokens.split(batch_size):
        _, cache = model.run_with_cache(
            batch, names_filter=[hook_name(start, layer=ell) for ell in layers])
        ref = log_probs(model(batch))
        work = []
        for ell in layers:
            n = sum(h.layer == ell for h in heads)
            resid = cache[hook_name(start, layer=ell)]
            for lo in range(0, n, per_pass):
                e = min(per_pass, n - lo)
                work.append((ell, e, resid.repeat(e, 1, 1).clone()))
        out.append((batch, ref, work))
    return start, out


@torch.no_grad()
def floor(model, start, inputs, *, with_dense: bool) -> None:
    for batch, cached, work in inputs:
        ref = log_probs(model(batch)) if with_dense else cached
        ref_p = ref.exp()
        b, pos = batch.shape
        for ell, e, x in work:
            logp = log_probs(logits_from_residual(model, ell, x, start)).view(e, b, pos, -1)
            nll_kl_sums(logp, batch, ref, ref_p)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_smoke(parser)
    parser.add_argument("--model", default="cgc-tiny", choices=["cgc-tiny", *SHAPES])
    parser.add_argument("--vocab", type=int, default=None, help="override d_vocab (random)")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--layers", type=int, nargs="*", default=None)
    parser.add_argument("--heads-per-pass", type=int, default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--check-heads", type=int, default=None,
                        help="heads per layer checked in float64 (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is steadier on a shared machine)")
    args = smoke(parser.parse_args(), model="smoke", reps=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, model = get_model(args.model, SHAPES, args.vocab)
    blocks, seq, batch_size, layers = DEFAULTS[name]
    blocks, seq = args.blocks or blocks, min(args.seq or seq, model.cfg.n_ctx)
    batch_size, layers = args.batch_size or batch_size, args.layers or layers
    layers = range(model.cfg.n_layers) if layers is None else layers
    heads = [Head(ell, h) for ell in layers for h in range(model.cfg.n_heads)]
    per_pass = args.heads_per_pass or 1  # the library's CPU default (stacking helps on CUDA)
    if name == "cgc-tiny":  # real text from its held-out split
        from cgc_lens.data import token_blocks

        tokens = token_blocks("cgc-tiny", model, block_len=seq, n_blocks=blocks, seed=1,
                              split="eval").tokens
    else:
        tokens = torch.randint(0, model.cfg.d_vocab, (blocks, seq),
                               generator=torch.Generator().manual_seed(1))
    print(f"model {name}: {model.cfg.n_layers} layers × {model.cfg.n_heads} heads, d_model "
          f"{model.cfg.d_model}, d_vocab {model.cfg.d_vocab}; {len(heads)} heads of layers "
          f"{list(layers)}; {blocks} × {seq} tokens, batch {batch_size}, {per_pass} heads per "
          f"pass; {torch.get_num_threads()} torch threads")

    fast = head_ablation(model, tokens, heads=heads, batch_size=batch_size,
                         heads_per_pass=per_pass, progress=False)
    start, inputs = floor_inputs(model, tokens, heads, batch_size, per_pass)
    runs = {
        "sweep": lambda: head_ablation(model, tokens, heads=heads, batch_size=batch_size,
                                       heads_per_pass=per_pass, progress=False),
        "floor": lambda: floor(model, start, inputs, with_dense=False),
        "floor+dense": lambda: floor(model, start, inputs, with_dense=True),
        "naive": lambda: head_ablation_naive(model, tokens, heads=heads, batch_size=batch_size,
                                             progress=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    naive = None
    for rep in range(args.reps):
        for key, fn in runs.items():
            t0 = time.process_time()
            out = fn()
            times[key].append(time.process_time() - t0)
            if key == "naive" and rep == 0:
                naive = out
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    for k in runs:
        print(f"  {k:12s} median {med[k]:8.3f} s   min {low[k]:8.3f} s   "
              f"({med[k] / len(heads) * 1e3:.1f} ms per head)")
    print(f"sweep / floor        : median {med['sweep'] / med['floor']:.3f}, min "
          f"{low['sweep'] / low['floor']:.3f} (target <= 1.15)")
    print(f"sweep / (floor+dense): median {med['sweep'] / med['floor+dense']:.3f}, min "
          f"{low['sweep'] / low['floor+dense']:.3f}")
    print(f"speed-up over naive  : sweep {med['naive'] / med['sweep']:.2f}× (floor's own "
          f"{med['naive'] / med['floor+dense']:.2f}× with the dense pass, "
          f"{med['naive'] / med['floor']:.2f}× without)")
    sel = tuple(np.array([(h.layer, h.head) for h in heads]).T)
    diff = np.abs(fast.delta_ppl - naive.delta_ppl)[sel]
    print(f"float32 ΔPPL vs naive: max |diff| {diff.max():.2e} at dense PPL "
          f"{fast.dense_ppl:.4g} (relative {diff.max() / fast.dense_ppl:.1e}: float32 rounding "
          f"through {model.cfg.n_layers} layers)")
    # Exactness of the method, free of float32 rounding: the same comparison in float64.
    import copy

    model64 = copy.deepcopy(model).to(torch.float64)
    few = [h for h in heads if h.head < (args.check_heads or model.cfg.n_heads)]
    a = head_ablation(model64, tokens, heads=few, batch_size=batch_size, progress=False)
    b = head_ablation_naive(model64, tokens, heads=few, batch_size=batch_size, progress=False)
    sel = tuple(np.array([(h.layer, h.head) for h in few]).T)
    d_ppl = np.abs(a.delta_ppl - b.delta_ppl)[sel].max()
    d_kl = np.abs(a.delta_kl - b.delta_kl)[sel].max()
    print(f"float64 ΔPPL vs naive ({len(few)} heads): max |diff| {d_ppl:.2e}, ΔKL {d_kl:.2e}; "
          f"target 1e-5: {'OK' if d_ppl <= 1e-5 else 'MISSED'}")
    return 0 if d_ppl <= 1e-5 and d_kl <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
