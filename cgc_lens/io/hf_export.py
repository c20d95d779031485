"""A (compressed) TransformerLens model written as a folder :func:`~cgc_lens.load_model` reads
back bit for bit: :func:`save_model`.

TransformerLens's weight conversion of GPT-2 and GPT-NeoX (Pythia) is a set of splits,
reshapes and transposes, so it is inverted exactly here (``W_Q [n_heads, d_model, d_head]``
back into GPT-2's ``c_attn`` columns, NeoX's ``(head, qkv, d_head)`` rows ...). cgc-lens loads
models unprocessed (no ``fold_ln``, no centring, no value-bias folding), so the inverse never
has to undo a fold; a processed model (``normalization_type`` ``LNPre``) is refused.

Layouts:

- ``"hf"``: a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files) of
  ``GPT2LMHeadModel`` (GPT-2 and GPT-2-shaped models such as cgc-tiny) or ``GPTNeoXForCausalLM``;
  usable by ``transformers`` directly.
- ``"transformer_lens"``: the embedded layout of cgc-tiny (HookedTransformerConfig keywords,
  the TransformerLens ``state_dict``, ``tokenizer.json``), for any architecture.
- ``"auto"``: ``"hf"`` when the Hugging Face architecture holds every weight exactly, else
  ``"transformer_lens"`` (cgc-tiny has a trained unembedding bias ``b_U``, which
  ``GPT2LMHeadModel`` has no place for).

The folder is written whole or not at all (:func:`cgc_lens.io.staging.staged_folder`: a
staging sibling renamed into place, ``MANIFEST.json`` last); a non-empty folder is refused
unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from cgc_lens.errors import CgcLensError
from cgc_lens.io.staging import staged_folder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["FUNCTION_FIELDS", "HF_ARCHITECTURES", "config_mismatches", "save_model"]

log = logging.getLogger(__name__)

HF_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "cgc-tiny": "gpt2", "GPTNeoXForCausalLM": "neox"}
"""TransformerLens ``original_architecture`` → the Hugging Face family it is written as."""

FUNCTION_FIELDS = (
    "d_model",
    "d_head",
    "n_heads",
    "d_mlp",
    "n_layers",
    "d_vocab",
    "n_ctx",
    "eps",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "rotary_dim",
    "rotary_base",
    "rotary_adjacent_pairs",
    "parallel_attn_mlp",
    "attn_only",
    "gated_mlp",
    "final_rms",
    "n_key_value_heads",
    "use_attn_scale",
    "attn_scale",
    "use_local_attn",
    "scale_attn_by_inverse_layer_idx",
)
"""HookedTransformerConfig fields that decide what a set of weights computes."""


def config_mismatches(a: Any, b: Any, fields: tuple[str, ...] = FUNCTION_FIELDS) -> list[str]:
    """``"field: A vs B"`` for every field of ``fields`` where two configs differ (floats
    within 1e-6 relative agree: GGUF stores ``eps`` as float32).

    Example:
        >>> from types import SimpleNamespace as N
        >>> config_mismatches(N(d_model=8, n_layers=2), N(d_model=8, n_layers=3),
        ...                   ("d_model", "n_layers"))
        ['n_layers: 2 vs 3']
    """
    out = []
    for name in fields:
        x, y = getattr(a, name, None), getattr(b, name, None)
        floats = isinstance(x, float) and isinstance(y, float)
        if x != y and not (floats and math.isclose(x, y, rel_tol=1e-6)):
            out.append(f"{name}: {x!r} vs {y!r}")
    return out


def _heads_in(w: torch.Tensor) -> torch.Tensor:
    """``[n_heads, d_model, d_head]`` → ``[d_model, n_heads·d_head]`` (inverse of TL's split)."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)


def _gpt2_state(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The GPT2LMHeadModel state of a TransformerLens model (inverse of convert_gpt2_weights)."""
    sd, cfg = model.state_dict(), model.cfg
    out = {
        "transformer.wte.weight": sd["embed.W_E"],
        "transformer.wpe.weight": sd["pos_embed.W_pos"],
        "transformer.ln_f.weight": sd["ln_final.w"],
        "transformer.ln_f.bias": sd["ln_final.b"],
        "lm_head.weight": sd["unembed.W_U"].T,
    }
    for layer in range(cfg.n_layers):
        p, h = f"blocks.{layer}.", f"transformer.h.{layer}."
        out |= {
            h + "ln_1.weight": sd[p + "ln1.w"],
            h + "ln_1.bias": sd[p + "ln1.b"],
            h + "ln_2.weight": sd[p + "ln2.w"],
            h + "ln_2.bias": sd[p + "ln2.b"],
            h + "attn.c_attn.weight": torch.cat(
                [_heads_in(sd[p + f"attn.W_{x}"]) for x in "QKV"], dim=1
            ),
            h + "attn.c_attn.bias": torch.cat([sd[p + f"attn.b_{x}"].reshape(-1) for x in "QKV"]),
            h + "attn.c_proj.weight": sd[p + "attn.W_O"].reshape(-1, cfg.d_model),
            h + "attn.c_proj.bias": sd[p + "attn.b_O"],
            h + "mlp.c_fc.weight": sd[p + "mlp.W_in"],
            h + "mlp.c_fc.bias": sd[p + "mlp.b_in"],
            h + "mlp.c_proj.weight": sd[p + "mlp.W_out"],
            h + "mlp.c_proj.bias": sd[p + "mlp.b_out"],
        }
    return out


def _neox_state(model: HookedTransformer, lm_head: str) -> dict[str, torch.Tensor]:
    """The GPTNeoXForCausalLM state of a TransformerLens model (inverse of convert_neox_weights:
    the fused QKV rows are ordered (head, qkv, d_head))."""
    sd, cfg = model.state_dict(), model.cfg
    out = {
        "gpt_neox.embed_in.weight": sd["embed.W_E"],
        "gpt_neox.final_layer_norm.weight": sd["ln_final.w"],
        "gpt_neox.final_layer_norm.bias": sd["ln_final.b"],
        f"{lm_head}.weight": sd["unembed.W_U"].T,
    }
    for layer in range(cfg.n_layers):
        p, h = f"blocks.{layer}.", f"gpt_neox.layers.{layer}."
        qkv = torch.stack([sd[p + f"attn.W_{x}"] for x in "QKV"])  # [qkv, i, m, h]
        qkv_b = torch.stack([sd[p + f"attn.b_{x}"] for x in "QKV"])  # [qkv, i, h]
        out |= {
            h + "input_layernorm.weight": sd[p + "ln1.w"],
            h + "input_layernorm.bias": sd[p + "ln1.b"],
            h + "post_attention_layernorm.weight": sd[p + "ln2.w"],
            h + "post_attention_layernorm.bias": sd[p + "ln2.b"],
            h + "attention.query_key_value.weight": qkv.permute(1, 0, 3, 2).reshape(
                -1, cfg.d_model
            ),
            h + "attention.query_key_value.bias": qkv_b.permute(1, 0, 2).reshape(-1),
            h + "attention.dense.weight": sd[p + "attn.W_O"].reshape(-1, cfg.d_model).T,
            h + "attention.dense.bias": sd[p + "attn.b_O"],
            h + "mlp.dense_h_to_4h.weight": sd[p + "mlp.W_in"].T,
            h + "mlp.dense_h_to_4h.bias": sd[p + "mlp.b_in"],
            h + "mlp.dense_4h_to_h.weight": sd[p + "mlp.W_out"].T,
            h + "mlp.dense_4h_to_h.bias": sd[p + "mlp.b_out"],
        }
    return out


def _hf_config(model: HookedTransformer, family: str) -> Any:
    from transformers import GPT2Config, GPTNeoXConfig

    cfg, tok = model.cfg, model.tokenizer
    special = {
        "bos_token_id": getattr(tok, "bos_token_id", None),
        "eos_token_id": getattr(tok, "eos_token_id", None),
    }
    if family == "gpt2":
        return GPT2Config(
            vocab_size=cfg.d_vocab,
            n_positions=cfg.n_ctx,
            n_ctx=cfg.n_ctx,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_mlp,
            activation_function=cfg.act_fn,
            layer_norm_epsilon=cfg.eps,
            scale_attn_weights=cfg.use_attn_scale,
            tie_word_embeddings=False,
            architectures=["GPT2LMHeadModel"],
            dtype=cfg.dtype,
            **special,
        )
    return GPTNeoXConfig(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        hidden_act=cfg.act_fn,
        max_position_embeddings=cfg.n_ctx,
        layer_norm_eps=cfg.eps,
        rotary_pct=cfg.rotary_dim / cfg.d_head,
        rotary_emb_base=cfg.rotary_base,
        rope_parameters={
            "rope_theta": float(cfg.rotary_base),
            "rope_type": "default",
            "partial_rotary_factor": cfg.rotary_dim / cfg.d_head,
        },
        use_parallel_residual=cfg.parallel_attn_mlp,
        tie_word_embeddings=False,
        architectures=["GPTNeoXForCausalLM"],
        dtype=cfg.dtype,
        **special,
    )


def _hf_blockers(model: HookedTransformer) -> list[str]:
    """Why ``model`` cannot be written exactly as a Hugging Face folder (empty: it can)."""
    cfg = model.cfg
    arch = cfg.original_architecture
    if arch not in HF_ARCHITECTURES:
        return [f"its architecture {arch!r} is not one of {sorted(HF_ARCHITECTURES)}"]
    blockers = []
    b_u = model.b_U.detach()
    if bool(torch.any(b_u != 0)):
        blockers.append(
            f"its unembedding bias b_U is non-zero (max |b_U| "
            f"{float(b_u.abs().max()):.3g}) and {arch!r} written as "
            f"{HF_ARCHITECTURES[arch]} has no lm_head bias"
        )
    if HF_ARCHITECTURES[arch] == "gpt2" and cfg.d_mlp != 4 * cfg.d_model:
        blockers.append(
            f"TransformerLens reads GPT-2's d_mlp as 4·d_model = {4 * cfg.d_model}, "
            f"this model has d_mlp {cfg.d_mlp}"
        )
    return blockers


def _check_round_trip_config(model: HookedTransformer, folder: Path) -> None:
    """TransformerLens reads the written config.json back into the model's function fields."""
    from transformer_lens import loading_from_pretrained as loading

    hf_cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    back = loading.get_pretrained_model_config(str(folder), hf_cfg=hf_cfg, device="cpu")
    diff = config_mismatches(model.cfg, back)
    if diff:
        raise CgcLensError(
            f"Cannot write {model.cfg.model_name!r} as a Hugging Face folder: "
            f"TransformerLens would read it back differently ({diff}). Use "
            "layout='transformer_lens'."
        )


def _write_hf(model: HookedTransformer, stage: Path) -> None:
    from transformers import AutoModelForCausalLM

    family = HF_ARCHITECTURES[model.cfg.original_architecture]
    hf_cfg = _hf_config(model, family)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(hf_cfg)
    head = next(n for n, m in hf_model.named_modules() if m is hf_model.get_output_embeddings())
    state = _gpt2_state(model) if family == "gpt2" else _neox_state(model, head)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    hf_model.load_state_dict(state, strict=True, assign=True)
    hf_model.save_pretrained(str(stage))
    _check_round_trip_config(model, stage)


def _write_transformer_lens(model: HookedTransformer, stage: Path) -> None:
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformerConfig

    defaults = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, act_fn="relu")
    kwargs = {}
    for f in dataclasses.fields(model.cfg):
        value = getattr(model.cfg, f.name)
        if f.name in ("device", "dtype", "n_params", "tokenizer_name") or not f.init:
            continue
        if value != getattr(defaults, f.name) or f.name in (
            "n_layers",
            "d_model",
            "n_ctx",
            "d_head",
            "act_fn",
        ):
            try:
                json.dumps(value)
            except TypeError:
                continue
            kwargs[f.name] = value
    (stage / "config.json").write_text(json.dumps(kwargs, indent=2), encoding="utf-8")
    params = {n for n, _ in model.named_parameters()}
    save_file(
        {
            k: v.detach().to("cpu").contiguous()
            for k, v in model.state_dict().items()
            if k in params
        },
        str(stage / "model.safetensors"),
    )


def _write_tokenizer(model: HookedTransformer, stage: Path, layout: str) -> None:
    tok = model.tokenizer
    if tok is None and layout == "hf":
        return
    if tok is None:
        raise CgcLensError(
            f"{model.cfg.model_name!r} has no tokenizer; the transformer_lens "
            "layout needs tokenizer.json (attach one: model.set_tokenizer(tok))."
        )
    if layout == "hf":
        tok.save_pretrained(str(stage))
    elif getattr(tok, "backend_tokenizer", None) is not None:
        tok.backend_tokenizer.save(str(stage / "tokenizer.json"))
    else:
        raise CgcLensError(
            f"The tokenizer of {model.cfg.model_name!r} is not a fast tokenizer; "
            "the transformer_lens layout stores tokenizer.json only. Use "
            "layout='hf' or detach the tokenizer (model.tokenizer = None)."
        )


def _choose_layout(model: HookedTransformer, layout: str) -> str:
    """``"hf"`` or ``"transformer_lens"`` for ``layout`` (see the module docstring)."""
    if layout not in ("auto", "hf", "transformer_lens"):
        raise CgcLensError(f"layout must be 'auto', 'hf' or 'transformer_lens', got {layout!r}.")
    cfg = model.cfg
    if cfg.normalization_type in ("LNPre", "RMSPre"):
        raise CgcLensError(
            f"{cfg.model_name!r} was loaded with weight processing (folded "
            "LayerNorm); save_model writes weights as deployed: load it with "
            "processing=False (the default of cgc_lens.load_model)."
        )
    blockers = _hf_blockers(model) if layout != "transformer_lens" else []
    if layout == "hf" and blockers:
        raise CgcLensError(
            f"Cannot write {cfg.model_name!r} as a Hugging Face folder exactly: "
            f"{'; '.join(blockers)}. Use layout='transformer_lens' (read back "
            "by cgc_lens.load_model)."
        )
    chosen = "transformer_lens" if layout == "transformer_lens" or blockers else "hf"
    if layout == "auto" and blockers:
        log.warning(
            "Writing %s in the transformer_lens layout: %s.", cfg.model_name, "; ".join(blockers)
        )
    return chosen


def save_model(
    model: HookedTransformer,
    out: str | Path,
    *,
    layout: Literal["auto", "hf", "transformer_lens"] = "auto",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (compressed or not) as a folder ``load_model(out)`` reads back exactly.

    Args:
        model: an unprocessed HookedTransformer (as :func:`cgc_lens.load_model` loads it).
        out: the folder; made if missing.
        layout: ``"hf"``, ``"transformer_lens"`` or ``"auto"`` (see the module docstring).
        overwrite: replace a non-empty ``out`` whole (refused otherwise).

    Returns:
        The folder written.

    Raises:
        CgcLensError: a processed model (folded LayerNorm), an architecture or weight the
            Hugging Face layout cannot hold (with ``layout="hf"``), ``out`` a file or not
            empty without ``overwrite``.

    Example:
        >>> import tempfile
        >>> from cgc_lens import load_model
        >>> model = load_model("cgc-tiny", device="cpu")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     folder = save_model(model, Path(d) / "tiny")
        ...     back = load_model(folder, device="cpu")
        ...     all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
        True
    """
    chosen = _choose_layout(model, layout)
    target = Path(out).expanduser().absolute()
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise CgcLensError(
            f"{target} is not empty: pass overwrite=True to replace it whole, or "
            "choose another folder."
        )
    with staged_folder(target, overwrite=overwrite) as stage:
        if chosen == "hf":
            _write_hf(model, stage)
        else:
            _write_transformer_lens(model, stage)
        _write_tokenizer(model, stage, chosen)
    log.info("saved %s to %s (%s layout)", model.cfg.model_name, target, chosen)
    return target
