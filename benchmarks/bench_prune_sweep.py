"""The Theorem-1 prune sweep runs at its floor: no layer before the pruned head's is recomputed.

``cgc_lens.forward.prune_sweep.head_prune_sweep`` measures ΔPPL and ΔKL of pruning each head's
``W_O`` slice alone at each retention. Timings in CPU seconds of this process (steadier than
wall time on a shared machine), interleaved in one run (medians and minima over ``--reps``):

- **sweep**: ``head_prune_sweep`` as the capability study calls it (one dense forward per batch
  caching ``hook_z`` and the residual after each attention, then per (head, retention): subtract
  the pruned part of its contribution, rest of block ℓ, blocks > ℓ, unembedding, NLL and KL;
  the levels stacked along the batch axis up to ``PASS_LOGITS_ELEMENTS``);
- **floor**: only what no exact method can skip, on the sweep's stacked shapes: per (head,
  retention), the rest of block ℓ after its attention, the blocks after ℓ, the unembedding and
  the loss; **floor/1**: the same one edit per pass (the cheaper of the two on CPU for large
  batches); **floor+dense**: plus the one dense forward per batch ΔPPL and ΔKL are measured
  against;
- **naive**: one whole forward per head, retention and batch with the slice pruned in place
  (``head_prune_sweep_naive``).

Targets: sweep / min(floor, floor/1) ≤ 1.15; ΔPPL equal to the naive loop's to 1e-5 (checked in
float64, where it agrees to about 1e-12; the float32 difference is printed too). The exit status
is 1 when the float64 check fails.

    python benchmarks/bench_prune_sweep.py --smoke                      # seconds, random model
    python benchmarks/bench_prune_sweep.py --threads 1 --reps 5         # cgc-tiny, 5 levels
    python benchmarks/bench_prune_sweep.py --threads 1 --reps 5 --batch-size 1   # levels stacked
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch
from bench_ablation import SHAPES, floor, floor_inputs
from common import add_smoke, get_model, smoke

from cgc_lens.forward.prune_sweep import (
    PASS_LOGITS_ELEMENTS,
    head_prune_sweep,
    head_prune_sweep_naive,
)
from cgc_lens.sites import Head

DEFAULTS = {  # blocks, seq, batch size, layers swept (None: all)
    "cgc-tiny": (8, 128, 8, None),
    "cgc-tiny-shapes": (8, 128, 8, None),
    "gpt2-medium-shapes": (1, 64, 1, (0, 8, 16, 23)),
    "smoke": (2, 32, 2, None),
}
LEVELS = (0.9, 0.75, 0.5, 0.25, 0.1)  # the capability study's survival_retentions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_smoke(parser)  # a random 2-layer model, 3 levels, 1 rep
    parser.add_argument("--model", default="cgc-tiny", choices=["cgc-tiny", *SHAPES])
    parser.add_argument("--vocab", type=int, default=None, help="override d_vocab (random)")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--layers", type=int, nargs="*", default=None)
    parser.add_argument(
        "--heads-per-pass",
        type=int,
        default=None,
        help="(head, level) edits per pass; default: the library's memory cap",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip timing the naive loop")
    parser.add_argument(
        "--check-heads",
        type=int,
        default=None,
        help="heads per layer checked in float64 (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 is steadier on a shared machine)",
    )
    return parser


def _tokens(name: str, model, blocks: int, seq: int) -> torch.Tensor:
    if name == "cgc-tiny":  # real text from its held-out split
        from cgc_lens.data import token_blocks

        return token_blocks(
            "cgc-tiny", model, block_len=seq, n_blocks=blocks, seed=1, split="eval"
        ).tokens
    return torch.randint(
        0, model.cfg.d_vocab, (blocks, seq), generator=torch.Generator().manual_seed(1)
    )


def _time(runs: dict, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for key, fn in runs.items():
            t0 = time.process_time()
            fn()
            times[key].append(time.process_time() - t0)
    return (
        {k: statistics.median(v) for k, v in times.items()},
        {k: min(v) for k, v in times.items()},
    )


def _check64(model, tokens, heads, levels, *, batch_size, per_pass) -> bool:
    """Exactness of the method, free of float32 rounding: fast vs naive in float64."""
    model64 = copy.deepcopy(model).to(torch.float64)
    a = head_prune_sweep(
        model64,
        tokens,
        levels,
        heads=heads,
        batch_size=batch_size,
        heads_per_pass=per_pass,
        progress=False,
    )
    b = head_prune_sweep_naive(
        model64, tokens, levels, heads=heads, batch_size=batch_size, progress=False
    )
    sel = tuple(np.array([(h.layer, h.head) for h in heads]).T)
    d_ppl = np.abs(a.delta_ppl - b.delta_ppl)[sel].max()
    d_kl = np.abs(a.delta_kl - b.delta_kl)[sel].max()
    ok = bool(d_ppl <= 1e-5 and d_kl <= 1e-5)
    print(
        f"float64 ΔPPL vs naive ({len(heads)} heads × {len(levels)} levels): max |diff| "
        f"{d_ppl:.2e}, ΔKL {d_kl:.2e}; target 1e-5: {'OK' if ok else 'MISSED'}"
    )
    return ok


def main() -> int:
    args = smoke(_parser().parse_args(), model="smoke", reps=1, levels=list(LEVELS[::2]))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, model = get_model(args.model, SHAPES, args.vocab)
    blocks, seq, batch_size, layers = DEFAULTS[name]
    blocks, seq = args.blocks or blocks, min(args.seq or seq, model.cfg.n_ctx)
    batch_size, layers = args.batch_size or batch_size, args.layers or layers
    layers = range(model.cfg.n_layers) if layers is None else layers
    heads = [Head(ell, h) for ell in layers for h in range(model.cfg.n_heads)]
    levels = list(args.levels)
    tokens = _tokens(name, model, blocks, seq)
    per_edit = min(batch_size, blocks) * seq * model.cfg.d_vocab
    per_pass = args.heads_per_pass or max(1, PASS_LOGITS_ELEMENTS["cpu"] // per_edit)
    print(
        f"model {name}: {model.cfg.n_layers} layers × {model.cfg.n_heads} heads, d_model "
        f"{model.cfg.d_model}, d_vocab {model.cfg.d_vocab}; {len(heads)} heads of layers "
        f"{list(layers)} × {len(levels)} levels {levels}; {blocks} × {seq} tokens, batch "
        f"{batch_size}, {per_pass} edits per pass; {torch.get_num_threads()} torch threads"
    )

    def sweep():
        return head_prune_sweep(
            model,
            tokens,
            levels,
            heads=heads,
            batch_size=batch_size,
            heads_per_pass=args.heads_per_pass,
            progress=False,
        )

    fast = sweep()
    edits = [h for h in heads for _ in levels]  # floor_inputs counts edits per layer
    start, inputs = floor_inputs(model, tokens, edits, batch_size, per_pass)
    _, inputs1 = floor_inputs(model, tokens, edits, batch_size, 1)
    runs = {
        "sweep": sweep,
        "floor": lambda: floor(model, start, inputs, with_dense=False),
        "floor/1": lambda: floor(model, start, inputs1, with_dense=False),
        "floor+dense": lambda: floor(model, start, inputs, with_dense=True),
    }
    if not args.no_naive:
        runs["naive"] = lambda: head_prune_sweep_naive(
            model, tokens, levels, heads=heads, batch_size=batch_size, progress=False
        )
    med, low = _time(runs, args.reps)
    for k in runs:
        print(
            f"  {k:12s} median {med[k]:8.3f} s   min {low[k]:8.3f} s   "
            f"({med[k] / len(edits) * 1e3:.2f} ms per head and level)"
        )
    best = min(med["floor"], med["floor/1"])
    best_low = min(low["floor"], low["floor/1"])
    print(
        f"sweep / floor        : median {med['sweep'] / best:.3f}, min "
        f"{low['sweep'] / best_low:.3f} (target <= 1.15; floor: the cheaper stacking)"
    )
    print(f"sweep / (floor+dense): median {med['sweep'] / med['floor+dense']:.3f}")
    if "naive" in med:
        print(f"speed-up over naive  : {med['naive'] / med['sweep']:.2f}×")
        naive = head_prune_sweep_naive(
            model, tokens, levels, heads=heads, batch_size=batch_size, progress=False
        )
        sel = tuple(np.array([(h.layer, h.head) for h in heads]).T)
        diff = np.abs(fast.delta_ppl - naive.delta_ppl)[sel]
        print(
            f"float32 ΔPPL vs naive: max |diff| {diff.max():.2e} at dense PPL "
            f"{fast.dense_ppl:.4g} (float32 rounding through {model.cfg.n_layers} layers)"
        )
    few = [h for h in heads if h.head < (args.check_heads or model.cfg.n_heads)]
    return (
        0
        if _check64(model, tokens, few, levels, batch_size=batch_size, per_pass=args.heads_per_pass)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
