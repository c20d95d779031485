"""Small stand-ins for real assets: a byte-level BPE tokenizer, tiny HF models, a fake cgc-tiny.

Everything here is seeded and takes well under a second, so unit tests can build their own.
"""

from __future__ import annotations

import functools
import json
import lzma
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = [
    "EOS", "TEXTS", "bpe_tokenizer", "tiny_gpt2", "tiny_neox", "write_fake_embedded",
]

EOS = "<|endoftext|>"
TEXTS = [
    "the quick brown fox jumps over the lazy dog. ",
    "def add(a, b):\n    return a + b\n",
    "It was the best of times, it was the worst of times, it was the age of wisdom. ",
    "1 + 2 = 3. 4 + 5 = 9. ( [ { } ] ) < > ",
]


@functools.lru_cache(maxsize=4)
def _bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    return tok.to_str()


def bpe_tokenizer(vocab_size: int = 300, *, name: str = "fake-bpe"):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` = id 0 as bos/eos/pad."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_json(vocab_size)),
        bos_token=EOS, eos_token=EOS, pad_token=EOS, add_bos_token=True,
    )
    tok.init_kwargs["name_or_path"] = name
    return tok


def tiny_gpt2(*, vocab_size: int = 320, n_ctx: int = 64, seed: int = 0):
    """A random 2-layer GPT2LMHeadModel (config carries ``n_ctx``, which TransformerLens reads)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_ctx, n_ctx=n_ctx, n_embd=32, n_layer=2,
                     n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(*, vocab_size: int = 320, n_ctx: int = 64, seed: int = 0):
    """A random 2-layer GPTNeoXForCausalLM (the Pythia architecture), partial rotary."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab_size, max_position_embeddings=n_ctx, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        rotary_pct=0.25, bos_token_id=0, eos_token_id=0)
    return GPTNeoXForCausalLM(cfg).eval()


def write_fake_embedded(
    folder: Path, *, records: list[dict[str, str]] | None = None, n_ctx: int = 32, seed: int = 0
):
    """Write a cgc-tiny-layout folder (config, weights, tokenizer, corpus); return the model."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(300)
    cfg = {"model_name": "cgc-tiny", "n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8,
           "d_mlp": 64, "d_vocab": 300, "n_ctx": n_ctx, "act_fn": "gelu_new",
           "normalization_type": "LN", "positional_embedding_type": "standard",
           "default_prepend_bos": False, "original_architecture": "cgc-tiny", "seed": seed}
    model = HookedTransformer(HookedTransformerConfig(**cfg, device="cpu"))
    with torch.no_grad():  # non-trivial LayerNorm weights, so that weight processing shows
        for name, p in model.named_parameters():
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
                p.uniform_(0.5, 1.5)
            elif name.endswith(("b_in", "b_out", "b_O", "b_U", ".b")):
                p.normal_(0, 0.1)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(_bpe_json(300))
    records = records if records is not None else [
        {"id": f"doc-{i}", "category": cat, "split": split, "text": text * 3}
        for i, (cat, split, text) in enumerate(
            [("prose", s, TEXTS[0]) for s in ("train", "calibration", "eval")]
            + [("code", s, TEXTS[1]) for s in ("train", "calibration", "eval")])
    ]
    with lzma.open(folder / "corpus.jsonl.xz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    assert tok.eos_token_id == 0
    return model
