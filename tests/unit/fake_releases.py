"""Stand-ins for the pretrained releases cgc-lens loads by name, in the files the hub serves.

Each builder returns ``{path inside the hub repository: content}`` for
:func:`hub_cache.write_hub_snapshot`. Shapes and configs are the real ones except where a
docstring says what was shrunk (and why). Used by ``tests/unit/saes/test_saes_loading.py`` and by
``tests/integration/test_notebooks.py``, which writes all of them into one cache for
``notebooks/04_pretrained_saes.ipynb``.

This module imports no sibling test module, so it can be imported both as ``fake_releases``
(from ``tests/unit``) and as ``unit.fake_releases`` (from ``tests/integration``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

__all__ = [
    "GEMMA_PATH", "GEMMA_REPO", "GPT2_REPO", "KK_FILE", "KK_REPO", "PYTHIA_MODEL_REPO",
    "PYTHIA_PATH", "PYTHIA_REPO", "gemma_scope_npz", "gpt2_config_files", "kk_files",
    "pythia_70m_deduped_files", "pythia_res_sm_files",
]

# The hub repositories (and files) behind the SAELens releases the docs and notebooks name.
GEMMA_REPO, GEMMA_PATH = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
PYTHIA_REPO, PYTHIA_PATH = "ctigges/pythia-70m-deduped__res-sm_processed", "4-res-sm"
KK_REPO = "ckkissane/attn-saes-gpt2-small-all-layers"
KK_FILE = (  # the release's file for blocks.5.hook_z
    "gpt2-small_L5_Hcat_z_lr1.20e-03_l11.00e+00_ds49152_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9"
)
PYTHIA_MODEL_REPO = "EleutherAI/pythia-70m-deduped"
GPT2_REPO = "gpt2"


def gemma_scope_npz() -> bytes:
    """Gemma Scope params.npz with the real shapes (d_in 2304, d_sae 16384), int8 in {0, 1}.

    One-hot encoder columns compress to ~160 kB and save in about a second; random {-1, 0, 1}
    would be ~18 MB and take ~10 s to compress.
    """
    rng = np.random.default_rng(0)
    w_enc = np.zeros((2304, 16384), np.int8)
    w_enc[rng.integers(0, 2304, 16384), np.arange(16384)] = 1
    buf = io.BytesIO()
    np.savez_compressed(
        buf, W_enc=w_enc, W_dec=np.ascontiguousarray(w_enc.T), b_enc=np.zeros(16384, np.int8),
        b_dec=np.zeros(2304, np.int8), threshold=np.zeros(16384, np.int8),
    )
    return buf.getvalue()


def _sae_weights(d_in: int, d_sae: int, *, seed: int) -> dict[str, torch.Tensor]:
    """Small random SAE weights in SAELens's names, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=gen) / 20,
            "W_dec": torch.randn(d_sae, d_in, generator=gen) / 20,
            "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)}


def pythia_res_sm_files(d_sae: int = 64) -> dict[str, bytes | str]:
    """A pre-6.0 SAELens folder like the real res-sm release (d_sae shrunk from 32768)."""
    weights = _sae_weights(512, d_sae, seed=0)
    cfg = {
        "model_name": "pythia-70m-deduped", "hook_point": "blocks.4.hook_resid_post",
        "hook_point_layer": 4, "d_in": 512, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "context_size": 128, "activation_fn_str": "relu",
    }
    return {f"{PYTHIA_PATH}/cfg.json": json.dumps(cfg),
            f"{PYTHIA_PATH}/sae_weights.safetensors": save_safetensors(weights)}


def kk_files(d_sae: int = 64) -> dict[str, bytes | str]:
    """Connor & Rob's hook_z format: a torch .pt state dict plus ``_cfg.json`` (d_sae shrunk)."""
    weights = _sae_weights(768, d_sae, seed=1)
    buf = io.BytesIO()
    torch.save(weights, buf)
    cfg = {"act_size": 768, "dict_size": d_sae, "act_name": "blocks.5.attn.hook_z"}
    return {f"{KK_FILE}.pt": buf.getvalue(), f"{KK_FILE}_cfg.json": json.dumps(cfg)}


# EleutherAI/pythia-70m-deduped's config.json, as the hub serves it (vocab_size aside).
_PYTHIA_70M_CONFIG: dict[str, Any] = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
    "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
    "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "use_cache": True, "use_parallel_residual": True, "vocab_size": 50304,
}


def pythia_70m_deduped_files(
    folder: Path, tokenizer: Any, *, vocab_size: int = 512, seed: int = 0
) -> dict[str, Path]:
    """A random-weight GPTNeoX with Pythia-70M-deduped's real config, saved in ``folder``.

    Everything is the real model's (6 layers, d_model 512, 8 heads, d_mlp 2048, n_ctx 2048,
    partial rotary 0.25, parallel residual) except ``vocab_size``, shrunk from 50,304 so the
    embeddings do not dominate (19M parameters instead of 70M; 38 MB in float16, as the hub
    stores it). ``tokenizer`` (a ``PreTrainedTokenizerFast`` of at most ``vocab_size`` tokens) is
    saved beside it. Returns ``{file name: path}`` for :func:`hub_cache.write_hub_snapshot`.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size={vocab_size}")
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(**{**_PYTHIA_70M_CONFIG, "vocab_size": vocab_size})
    model = GPTNeoXForCausalLM(cfg).eval().to(torch.float16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {p.name: p for p in sorted(Path(folder).iterdir()) if p.is_file()}


def gpt2_config_files() -> dict[str, str]:
    """GPT-2 small's config.json only (no weights): enough for a shape-only model skeleton."""
    from transformers import GPT2Config

    # GPT2Config's defaults are GPT-2 small's (12 layers, d_model 768, 12 heads, vocab 50257).
    cfg = GPT2Config(n_ctx=1024, architectures=["GPT2LMHeadModel"])
    return {"config.json": cfg.to_json_string()}


def random_saelens_sae(kind: str, d_in: int, d_sae: int, k: int = 8,
                       hook: str = "blocks.1.hook_resid_post"):
    """A SAELens TopK, JumpReLU or standard (ReLU) SAE with random weights that fire."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook)
    if kind == "topk":
        return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta))
    if kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    with torch.no_grad():  # SAELens initialises zero biases and thresholds: make them count
        sae.W_enc.normal_()
        sae.b_enc.normal_(-1.0, 1.0)
        sae.b_dec.normal_()
        if kind == "jumprelu":
            sae.threshold.uniform_(-0.5, 1.0)  # some below 0: the ReLU still applies there
    return sae
