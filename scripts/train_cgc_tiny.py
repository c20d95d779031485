"""Train the embedded cgc-tiny model and its tokenizer (seeded, reproducible, CPU or GPU).

Writes into cgc_lens/assets/cgc-tiny/: tokenizer.json, config.json, model.safetensors and
train_log.json (loss, in-context-copying ratio and timing every ``--log-every`` steps).

Recipe (shared/DESIGN.md, measured here): a 4-layer, d_model 128, 4-head LayerNorm model,
byte-level BPE vocab 2048, n_ctx 128; AdamW lr 1e-3, batch 32 × 128; half of each batch is
natural + synthetic-task text from the corpus's train split, half is spans of uniformly random
token ids repeated to fill the context, which is what makes induction heads form within ~10M
tokens on 2 CPU cores.

Usage:
    python scripts/train_cgc_tiny.py [--steps 4000] [--device cpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cgc_lens.data.synth import synthetic_documents

ASSETS = Path(__file__).resolve().parents[1] / "cgc_lens" / "assets" / "cgc-tiny"
EOS = "<|endoftext|>"
MODEL_CFG = {
    "model_name": "cgc-tiny",
    "n_layers": 4,
    "d_model": 128,
    "n_heads": 4,
    "d_head": 32,
    "d_mlp": 512,
    "d_vocab": 2048,
    "n_ctx": 128,
    "act_fn": "gelu_new",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
    "tokenizer_prepends_bos": False,
    "default_prepend_bos": False,
    "original_architecture": "cgc-tiny",
}


def load_records(assets: Path) -> list[dict[str, str]]:
    with lzma.open(assets / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        natural = [json.loads(line) for line in f]
    return natural + synthetic_documents(seed=0)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def token_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def repeated_random(gen: torch.Generator, n: int, n_ctx: int, d_vocab: int,
                    span: tuple[int, int]) -> torch.Tensor:
    rows = []
    for _ in range(n):
        length = int(torch.randint(span[0], span[1] + 1, (1,), generator=gen))
        seq = torch.randint(1, d_vocab, (length,), generator=gen)
        rows.append(seq.repeat(math.ceil(n_ctx / length))[:n_ctx])
    return torch.stack(rows)


@torch.no_grad()
def copy_ratio(model: HookedTransformer, probe: torch.Tensor) -> tuple[float, float]:
    """Mean loss on the second copy / first copy of 64 random tokens repeated twice."""
    logits = model(probe)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, probe[:, 1:, None]).squeeze(-1)
    half = probe.shape[1] // 2
    first, second = nll[:, : half - 1].mean().item(), nll[:, half:].mean().item()
    return second / first, first


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_start = int(0.75 * steps)
    if step < decay_start:
        return lr
    return lr * (1.0 - 0.9 * (step - decay_start) / max(1, steps - decay_start))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--synthetic-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--init-from", type=Path, default=None,
                   help="continue from the model.safetensors and tokenizer.json in this folder "
                        "(a second stage; the recipe is recorded in train_log.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    records = load_records(ASSETS)
    train_texts = [r["text"] for r in records if r["split"] == "train"]
    order = np.random.default_rng(args.seed).permutation(len(train_texts))
    train_texts = [train_texts[i] for i in order]
    if args.init_from is not None:
        tok = Tokenizer.from_file(str(args.init_from / "tokenizer.json"))
    else:
        tok = train_tokenizer(train_texts, MODEL_CFG["d_vocab"])
    assert tok.token_to_id(EOS) == 0 and tok.get_vocab_size() == MODEL_CFG["d_vocab"]
    stream = torch.from_numpy(token_stream(tok, train_texts))
    print(f"tokenizer + stream: {len(stream):,} train tokens in {time.time() - t0:.0f}s")

    cfg = HookedTransformerConfig(**MODEL_CFG, seed=args.seed, device=args.device)
    model = HookedTransformer(cfg)
    previous_log: list[dict[str, object]] = []
    if args.init_from is not None:
        model.load_state_dict(load_file(str(args.init_from / "model.safetensors")), strict=False)
        previous = json.loads((args.init_from / "train_log.json").read_text())
        previous_log = [*previous.get("previous_stages", []),
                        {"args": previous["args"], "final": previous["log"][-1]}]
    n_ctx, d_vocab = cfg.n_ctx, cfg.d_vocab
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "W_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "W_pos" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    probe = repeated_random(torch.Generator().manual_seed(12345), 16, n_ctx, d_vocab, (64, 64))
    probe = probe.to(args.device)
    n_syn = round(args.batch * args.synthetic_frac)
    log: list[dict[str, float]] = []
    t_train = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(stream) - n_ctx, (args.batch - n_syn,), generator=gen)
        natural = torch.stack([stream[s : s + n_ctx] for s in starts.tolist()])
        synthetic = repeated_random(gen, n_syn, n_ctx, d_vocab, (8, 64))
        batch = torch.cat([natural, synthetic]).to(args.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0 or step == args.steps - 1:
            with torch.no_grad():
                nat_loss = model(natural.to(args.device), return_type="loss").item()
            ratio, first = copy_ratio(model, probe)
            elapsed = time.time() - t_train
            tps = (step + 1) * args.batch * n_ctx / elapsed
            log.append({"step": step + 1, "loss": loss.item(), "natural_loss": nat_loss,
                        "copy_ratio": ratio, "first_copy_loss": first, "seconds": elapsed})
            print(f"step {step + 1:5d}  loss {loss.item():.3f}  natural {nat_loss:.3f}  "
                  f"copy ratio {ratio:.3f}  {tps:,.0f} tok/s  {elapsed / 60:.1f} min", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    (args.out / "config.json").write_text(json.dumps(MODEL_CFG, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "train_tokens": len(stream),
               "previous_stages": previous_log,
               "total_seconds": time.time() - t0, "torch": torch.__version__, "log": log}
    (args.out / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"saved to {args.out} in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
