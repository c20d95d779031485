"""Streaming reads cost no more than the bare forward they need.

For a site at layer ℓ, ``run_sites`` (hooks, per-head slicing, an accumulator call, the progress
bar switched off) is timed against a bare ``model(tokens, stop_at_layer=ℓ + 1)`` over the same
batches; the two are interleaved and their medians and minima compared (the minimum is the
steadier estimate on a shared machine). Target: ratio ≤ 1.1.

    python benchmarks/bench_streaming.py                     # cgc-tiny (random if not built)
    python benchmarks/bench_streaming.py --model gpt2-small-shapes
    python benchmarks/bench_streaming.py --smoke             # seconds, every code path (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import add_smoke, get_model, smoke

from cgc_lens.forward.streaming import run_sites
from cgc_lens.sites import Site

SHAPES = {  # random TransformerLens models, for when no weights are at hand
    "cgc-tiny-shapes": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                            d_vocab=2048, n_ctx=128),
    "gpt2-small-shapes": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                              d_vocab=50257, n_ctx=1024),
}


class SumAccumulator:
    """A realistic cheap consumer: float64 sums of every reading."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, acts, batch_index):
        for key, act in acts.items():
            s = act.double().sum(dim=(0, 1))
            self.sums[key] = self.sums[key] + s if key in self.sums else s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cgc-tiny", choices=["cgc-tiny", *SHAPES])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=9)
    add_smoke(parser)
    args = smoke(parser.parse_args(), batches=1, batch_size=2, seq=16, reps=1)
    torch.manual_seed(0)
    name, model = get_model(args.model, SHAPES)
    seq = min(args.seq, model.cfg.n_ctx)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batches * args.batch_size, seq))
    print(f"model {name}: {model.cfg.n_layers} layers; {tokens.shape[0]} × {seq} tokens, "
          f"batch {args.batch_size}; {torch.get_num_threads()} torch threads")

    for layer in sorted({0, model.cfg.n_layers // 2, model.cfg.n_layers - 1}):
        sites = [Site.z(layer, head=0), Site.z(layer), Site.resid_post(layer)]

        @torch.no_grad()
        def bare(layer: int = layer) -> None:
            for batch in tokens.split(args.batch_size):
                model(batch, stop_at_layer=layer + 1)

        def streamed(sites: list[Site] = sites) -> None:
            run_sites(model, tokens, sites, batch_size=args.batch_size,
                      accumulators=[SumAccumulator()], progress=False)

        bare()
        streamed()  # warm-up
        t_bare, t_stream = [], []
        for _ in range(args.reps):
            for fn, out in ((bare, t_bare), (streamed, t_stream)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        ratio = statistics.median(t_stream) / statistics.median(t_bare)
        best = min(t_stream) / min(t_bare)
        med_bare = statistics.median(t_bare)
        print(f"layer {layer}: bare stop_at_layer={layer + 1} median {med_bare:.3f}"
              f" s (min {min(t_bare):.3f}); run_sites (z[h0], z, resid_post + float64 sums) "
              f"median {statistics.median(t_stream):.3f} s (min {min(t_stream):.3f}); ratio of "
              f"medians {ratio:.3f}, of minima {best:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
