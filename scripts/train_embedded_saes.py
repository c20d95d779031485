"""Train the SAEs that ship with cgc-tiny and write them into its asset folder.

Two sets, both seeded and reproducible on CPU in a few minutes:

- ``per_head_z/``: one TopK SAE per attention head on ``hook_z`` (all layers), batched, with the
  capability-density paper's settings (§5.2): d_sae = 8 × d_head, k = 25, 5 epochs, Adam 2e-4,
  65,536 calibration tokens (512 blocks of 128 here; 128 × 512 in the paper, whose model has a
  512-token context).
- ``resid_post_layer{L}/``: a TopK SAE on a middle layer's ``hook_resid_post`` in SAELens
  ``save_model`` format, the default frozen SAE of the survival audit.

Figures on held-out eval tokens (explained variance, L0, dead fraction, spliced KL and CE loss
recovered) go to ``figures.json`` next to them and are printed as markdown for docs/saes.md.
Each set is written as soon as it is trained (``--sets`` retrains one alone).

    python scripts/train_embedded_saes.py          # writes cgc_lens/assets/cgc-tiny/saes
    python scripts/train_embedded_saes.py --sets resid --resid-k 24
    python scripts/train_embedded_saes.py --out /tmp/saes --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from cgc_lens.data import token_blocks
from cgc_lens.errors import CgcLensError
from cgc_lens.models import load_model
from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE, TrainConfig, evaluate_saes, fit_sae
from cgc_lens.sites import Site

OUT = Path(__file__).resolve().parents[1] / "cgc_lens" / "assets" / "cgc-tiny" / "saes"


def blocks(corpus: str, model, split: str, n: int | None, *, block_len: int, seed: int):
    """``n`` seeded blocks of a split (all of them when the split holds fewer)."""
    try:
        return token_blocks(corpus, model, block_len=block_len, n_blocks=n, seed=seed,
                            split=split).tokens
    except CgcLensError as err:  # fewer blocks than asked: take them all, and say so
        got = token_blocks(corpus, model, block_len=block_len, seed=seed, split=split).tokens
        print(f"({split}: {n} blocks asked, {got.shape[0]} available; using all) [{err}]")
        return got


def train_heads(model, calib, eval_tokens, seed: int) -> tuple[BatchedTopKSAE, dict[str, Any]]:
    """The paper's per-head SAEs (§5.2) on every head, and their eval figures."""
    train = TrainConfig(epochs=5, lr=2e-4, batch_size=128, seed=seed)
    cfg = replace(BatchedSAEConfig.for_heads(model, expansion=8, k=25),
                  extra={"train": asdict(train), "calibration_tokens": calib.numel()})
    t0 = time.perf_counter()
    heads, res = fit_sae(model, calib, cfg, train, progress=True)
    seconds = time.perf_counter() - t0
    ev = evaluate_saes(model, eval_tokens, [heads], progress=False)
    q = list(ev.per_sae.values())
    return heads, {
        "config": {k: v for k, v in cfg.to_json().items() if k not in ("sites", "extra")},
        "n_heads": heads.n, "train": asdict(train), "train_tokens": calib.numel(),
        "train_steps": res.steps, "train_seconds": round(seconds, 1),
        "explained_variance": {"min": min(x.explained_variance for x in q),
                               "mean": sum(x.explained_variance for x in q) / len(q)},
        "l0_mean": sum(x.l0 for x in q) / len(q),
        "dead_fraction_mean": sum(x.dead_fraction for x in q) / len(q),
        "dense_fraction_mean": sum(x.dense_fraction for x in q) / len(q),
        "per_sae": ev.to_dict()["per_sae"], "spliced_all_heads": ev.to_dict()["spliced"],
    }


def train_resid(model, tokens, eval_tokens, args, layer: int) -> tuple[Any, dict[str, Any]]:
    """A TopK SAE on ``blocks.{layer}.hook_resid_post``, exported to SAELens, and its figures."""
    train = TrainConfig(epochs=args.resid_epochs, lr=args.resid_lr, batch_size=args.resid_batch,
                        seed=args.seed)
    cfg = BatchedSAEConfig(sites=(Site.resid_post(layer),), d_in=model.cfg.d_model,
                           d_sae=args.resid_expansion * model.cfg.d_model, k=args.resid_k,
                           model_name=model.cfg.model_name)
    t0 = time.perf_counter()
    batched, res = fit_sae(model, tokens, cfg, train, progress=True)
    seconds = time.perf_counter() - t0
    sae = batched.to_saelens(0)
    ev = evaluate_saes(model, eval_tokens, [sae], progress=False)
    return sae, {
        "hook": cfg.sites[0].hook, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "k": cfg.k,
        "train": asdict(train), "train_tokens": tokens.numel(), "train_steps": res.steps,
        "train_seconds": round(seconds, 1), **ev.to_dict()["per_sae"][cfg.sites[0].key],
        "spliced": ev.to_dict()["spliced"],
    }


def table(figures: dict[str, Any]) -> str:
    """The markdown rows of docs/saes.md."""
    rows = ["| SAE | site | d_in → d_sae, k | train tokens × epochs (steps, s) | EV on eval "
            "| L0 | dead | spliced KL (nats) | CE loss recovered |",
            "|---|---|---|---|---|---|---|---|---|"]
    if "per_head" in figures:
        h = figures["per_head"]
        c = h["config"]
        rows.append(
            f"| per-head (×{h['n_heads']}) | every `blocks.l.attn.hook_z[h]` | {c['d_in']} → "
            f"{c['d_sae']}, k {c['k']} | {h['train_tokens']:,} × {h['train']['epochs']} "
            f"({h['train_steps']}, {h['train_seconds']}) | min "
            f"{h['explained_variance']['min']:.3f}, mean {h['explained_variance']['mean']:.3f} | "
            f"{h['l0_mean']:.1f} | {h['dead_fraction_mean']:.3f} | "
            f"{h['spliced_all_heads']['kl']:.4f} (all heads at once) | "
            f"{h['spliced_all_heads']['ce_loss_recovered']:.3f} (all heads at once) |")
    if "resid" in figures:
        r = figures["resid"]
        rows.append(
            f"| residual | `{r['hook']}` | {r['d_in']} → {r['d_sae']}, k {r['k']} | "
            f"{r['train_tokens']:,} × {r['train']['epochs']} ({r['train_steps']}, "
            f"{r['train_seconds']}) | {r['explained_variance']:.3f} | {r['l0']:.1f} | "
            f"{r['dead_fraction']:.3f} | {r['spliced']['kl']:.4f} | "
            f"{r['spliced']['ce_loss_recovered']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cgc-tiny")
    parser.add_argument("--corpus", default="cgc-tiny")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sets", nargs="+", choices=["heads", "resid"], default=["heads", "resid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-len", type=int, default=128)
    parser.add_argument("--calib-blocks", type=int, default=512, help="per-head SAE tokens / 128")
    parser.add_argument("--resid-blocks", type=int, default=1024, help="residual SAE tokens / 128")
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--resid-layer", type=int, default=None, help="default: n_layers // 2")
    parser.add_argument("--resid-expansion", type=int, default=8)
    parser.add_argument("--resid-k", type=int, default=32)
    parser.add_argument("--resid-epochs", type=int, default=5)
    parser.add_argument("--resid-lr", type=float, default=1e-3)
    parser.add_argument("--resid-batch", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="tiny run, for testing the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    if args.quick:
        args.calib_blocks, args.resid_blocks, args.eval_blocks = 16, 16, 4
        args.resid_epochs = 1

    t_start = time.perf_counter()
    model = load_model(args.model, device="cpu")
    block_len = min(args.block_len, model.cfg.n_ctx)
    layer = model.cfg.n_layers // 2 if args.resid_layer is None else args.resid_layer
    eval_tokens = blocks(args.corpus, model, "eval", args.eval_blocks, block_len=block_len,
                         seed=args.seed + 1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fig_file = out / "figures.json"
    figures = json.loads(fig_file.read_text()) if fig_file.is_file() else {}
    figures.update(model=args.model, seed=args.seed, block_len=block_len,
                   eval_tokens=eval_tokens.numel())

    if "heads" in args.sets:
        calib = blocks(args.corpus, model, "calibration", args.calib_blocks, block_len=block_len,
                       seed=args.seed)
        heads, figures["per_head"] = train_heads(model, calib, eval_tokens, args.seed)
        shutil.rmtree(out / "per_head_z", ignore_errors=True)
        heads.save(out / "per_head_z")
        fig_file.write_text(json.dumps(figures, indent=1))
    if "resid" in args.sets:
        tokens = blocks(args.corpus, model, "train", args.resid_blocks, block_len=block_len,
                        seed=args.seed)
        resid, figures["resid"] = train_resid(model, tokens, eval_tokens, args, layer)
        for old in out.glob("resid_post_layer*"):
            shutil.rmtree(old)
        resid.save_model(out / f"resid_post_layer{layer}")
        fig_file.write_text(json.dumps(figures, indent=1))

    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"\nwrote {out} ({size / 1e6:.2f} MB) in {time.perf_counter() - t_start:.0f} s\n")
    print(table(figures))


if __name__ == "__main__":
    main()
