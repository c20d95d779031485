"""Per-token CPU costs of the passes the studies are made of, for the worked estimates.

For cgc-tiny and for random weights of real architectures' shapes (few tokens: the cost per
token of a dense forward hardly depends on the weights), one thread, CPU seconds per token:

- **block**: one transformer block (a forward to the last block's output, over ``n_layers``);
- **unembed + NLL**: ``ln_final``, the unembedding and the log-softmax NLL (full forward with
  the loss, less the blocks);
- **SAE encode**: a ReLU SAE's encoder on one layer's residual (``d_sae`` latents,
  ``x @ W_enc + b_enc``, ReLU), as a survival read-out encodes it.

Gemma-2-2B's unembedding (256k vocabulary) is not run here: its 2.4 GB float32 ``W_U`` is too
large for the shared machine; ``gemma-2-2b-2l`` (its block shape, 2 layers, a 4,096-token
vocabulary) times its blocks and docs/performance.md scales the unembedding by FLOPs.

    OMP_NUM_THREADS=1 python benchmarks/bench_per_token.py --reps 3
    python benchmarks/bench_per_token.py --smoke   # seconds: cgc-tiny, 16 tokens
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import add_smoke, smoke

SHAPES = {
    "gpt2-medium-shape": dict(
        n_layers=24,
        d_model=1024,
        n_heads=16,
        d_head=64,
        d_mlp=4096,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        d_sae=16384,
    ),
    "gemma-2-2b-2l": dict(
        n_layers=2,
        d_model=2304,
        n_heads=8,
        d_head=256,
        n_key_value_heads=4,
        d_mlp=9216,
        gated_mlp=True,
        d_vocab=4096,
        n_ctx=1024,
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        d_sae=16384,
    ),
}


def model_of(name: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from cgc_lens.models import load_model

    if name not in SHAPES:
        return load_model(name, device="cpu"), 1024
    shape = dict(SHAPES[name])
    d_sae = shape.pop("d_sae")
    cfg = HookedTransformerConfig(**shape, model_name=name, device="cpu", seed=0)
    return HookedTransformer(cfg).eval(), d_sae


def median_cpu(fn, reps: int) -> float:
    times = []
    for _ in range(reps + 1):  # the first call warms up and is dropped
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times[1:])


@torch.no_grad()
def bench(name: str, *, batch: int, pos: int, reps: int) -> dict[str, object]:
    model, d_sae = model_of(name)
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    tokens = torch.randint(
        0, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(0)
    )
    n = batch * pos
    blocks = median_cpu(lambda: model(tokens, stop_at_layer=n_layers, return_type=None), reps)
    full = median_cpu(lambda: model(tokens, return_type="loss"), reps)
    gen = torch.Generator().manual_seed(1)
    w_enc = torch.randn(d_model, d_sae, generator=gen) / d_model**0.5
    b_enc = torch.zeros(d_sae)
    x = torch.randn(n, d_model, generator=gen)
    encode = median_cpu(lambda: torch.relu(x @ w_enc + b_enc), reps)
    params = sum(p.numel() for k, p in model.named_parameters() if k.startswith("blocks.0."))
    return {
        "model": name,
        "tokens": n,
        "n_layers": n_layers,
        "d_model": d_model,
        "d_vocab": model.cfg.d_vocab,
        "d_sae": d_sae,
        "block_params": params,
        "block_us_per_token": 1e6 * blocks / (n * n_layers),
        "unembed_nll_us_per_token": 1e6 * max(full - blocks, 0.0) / n,
        "sae_encode_us_per_token": 1e6 * encode / n,
        "block_gflops_per_s": 2 * params * n * n_layers / blocks / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["cgc-tiny", "gpt2-medium-shape", "gemma-2-2b-2l"]
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    add_smoke(parser)
    args = smoke(parser.parse_args(), models=["cgc-tiny"], batch=1, pos=16, reps=1)
    torch.set_num_threads(1)
    for name in args.models:
        print(json.dumps(bench(name, batch=args.batch, pos=args.pos, reps=args.reps)), flush=True)


if __name__ == "__main__":
    main()
