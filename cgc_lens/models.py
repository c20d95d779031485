"""Loading models and tokenizers by name or path, the weights as deployed.

Three kinds of name reach :func:`load_model`:

- an embedded model (``"cgc-tiny"``), shipped in ``cgc_lens/assets/<name>/`` as
  ``config.json`` (HookedTransformerConfig keyword arguments), ``model.safetensors`` (the
  HookedTransformer ``state_dict``) and ``tokenizer.json`` (a ``tokenizers`` tokenizer);
- a TransformerLens pretrained name or alias (``"gpt2-medium"``, ``"pythia-70m-deduped"``,
  ``"gemma-2-2b"`` ...), read through the Hugging Face cache;
- a local directory: a Hugging Face model (``config.json`` with ``model_type`` plus weights)
  or a folder in the embedded layout above.

Compression studies need the weights as they are deployed, so nothing is folded or centred
unless ``processing=True``: ``fold_ln`` and centring rewrite ``W_O`` and shift the residual
stream that SAEs read (TransformerLens issues 526 and 557).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cgc_lens.checks import check_device, resolve_dtype
from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "EMBEDDED_MODELS", "embedded_asset_dir", "load_model", "load_model_shape", "load_tokenizer",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

ASSETS_ROOT = Path(__file__).parent / "assets"
EMBEDDED_MODELS: tuple[str, ...] = ("cgc-tiny",)
EOS_TOKEN = "<|endoftext|>"
_EMBEDDED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
def embedded_asset_dir(name: str = "cgc-tiny") -> Path:
    """The folder holding an embedded model's config, weights, tokenizer and corpus.

    Example:
        >>> embedded_asset_dir().name
        'cgc-tiny'
    """
    if name not in EMBEDDED_MODELS:
        raise unknown_name("embedded model", name, EMBEDDED_MODELS)
    return ASSETS_ROOT / name


def _read_config_json(file: Path) -> dict[str, Any]:
    """A model folder's ``config.json`` as a dict; a clear error when it is not one."""
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CgcLensError(f"The model config {file} is not valid JSON ({err}); restore it from "
                           "the model's source (re-download or re-save the model).") from err
    if not isinstance(cfg, dict):
        raise CgcLensError(f"The model config {file} must hold a JSON object, got "
                           f"{type(cfg).__name__}; restore it from the model's source.")
    return cfg


def _is_embedded_layout(path: Path) -> bool:
    """A folder in the embedded layout: HookedTransformerConfig kwargs, not a HF config."""
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    cfg = _read_config_json(config)
    return "model_type" not in cfg and "d_model" in cfg


def _wrap_tokenizer(path: Path, name: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(path)),
        bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        # TransformerLens rebuilds any tokenizer without add_bos_token by calling
        # AutoTokenizer.from_pretrained(name_or_path, add_bos_token=True), which for a name that
        # is on no hub means a network retry loop and then OSError.
        add_bos_token=True,
    )
    # TransformerLens reads init_kwargs["name_or_path"] (KeyError when it is missing).
    tok.init_kwargs["name_or_path"] = name
    tok.name_or_path = name
    return tok


def _missing_error(name: str, repo: str, kind: str, err: Exception) -> CgcLensError:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / "--".join([f"{kind}s", *repo.split("/")])
    state = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "online"
    return CgcLensError(
        f"Could not load {kind} {name!r} (hub repo {repo!r}) while {state}: it is not in the "
        f"local Hugging Face cache. Searched: {folder}. To fix: run once with network access "
        f"(unset HF_HUB_OFFLINE), or `hf download {repo}` on a machine that has it and copy the "
        f"cache, or set HF_HUB_CACHE / HF_HOME to a cache that holds it, or pass a local "
        f"directory holding the model. Cause: {type(err).__name__}: {str(err)[:300]}"
    )


def _official_name(name: str) -> str | None:
    from transformer_lens import loading_from_pretrained as loading

    return loading.make_model_alias_map().get(name.lower())


def _unknown_model(name: str) -> CgcLensError:
    from transformer_lens import loading_from_pretrained as loading

    path = Path(name).expanduser()
    if path.is_file():
        return CgcLensError(f"Expected a model directory, got the file {name!r}; pass the folder "
                            f"holding it ({str(path.parent)!r}) with config.json and the weights.")
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        return CgcLensError(f"Expected an existing model directory, got {name!r} (no such path).")
    aliases = [a for names in loading.MODEL_ALIASES.values() for a in names]
    err = unknown_name("model", name, [*EMBEDDED_MODELS, *loading.OFFICIAL_MODEL_NAMES, *aliases])
    return CgcLensError(
        f"{err} Expected an embedded model {list(EMBEDDED_MODELS)}, a TransformerLens "
        "pretrained name or alias, or a local directory holding a Hugging Face model."
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of an embedded model, a TransformerLens pretrained model, or a local folder.

    Embedded tokenizers use ``<|endoftext|>`` as bos, eos and pad; encoding a text with
    ``add_special_tokens=False`` gives the raw token ids.

    Example:
        >>> load_tokenizer("no-such-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Unknown model 'no-such-model'...
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        path = embedded_asset_dir(name) / "tokenizer.json"
        if not path.is_file():
            raise CgcLensError(f"Expected the embedded tokenizer at {path}; it is missing "
                               "(reinstall cgc-lens or rebuild it with scripts/train_cgc_tiny.py).")
        return _wrap_tokenizer(path, name)
    path = Path(name).expanduser()
    if path.is_file() and path.name == "tokenizer.json":
        return _wrap_tokenizer(path, str(path.parent))
    if path.is_dir():
        if _is_embedded_layout(path):
            return _wrap_tokenizer(path / "tokenizer.json", str(path))
        return AutoTokenizer.from_pretrained(str(path))
    official = _official_name(name)
    if official is None:
        raise _unknown_model(name)
    try:
        return AutoTokenizer.from_pretrained(official)
    except OSError as err:
        raise _missing_error(name, official, "model", err) from err


def _require_embedded(path: Path) -> Path:
    missing = [f for f in _EMBEDDED_FILES if not (path / f).is_file()]
    if missing:
        raise CgcLensError(
            f"Expected the model files {list(_EMBEDDED_FILES)} in {path}, missing {missing}. "
            "The embedded assets ship with the package (reinstall it), or are rebuilt with "
            "`python scripts/train_cgc_tiny.py`."
        )
    return path


def _embedded_config(path: Path, **overrides: Any) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a folder in the embedded layout (its saved device
    dropped), with ``overrides``."""
    from transformer_lens import HookedTransformerConfig

    kwargs = _read_config_json(_require_embedded(path) / "config.json")
    kwargs.pop("device", None)
    try:
        return HookedTransformerConfig(**{**kwargs, **overrides})
    except (TypeError, ValueError, AssertionError) as err:
        raise CgcLensError(f"Bad HookedTransformerConfig in {path / 'config.json'}: {err}") from err


def _load_embedded(
    path: Path, name: str, device: Any, dtype: torch.dtype | None, processing: bool
) -> HookedTransformer:
    from transformer_lens import HookedTransformer

    cfg = _embedded_config(path, dtype=dtype or torch.float32,
                           **({"device": str(device)} if device is not None else {}))
    model = HookedTransformer(cfg, tokenizer=_wrap_tokenizer(path / "tokenizer.json", name))
    state = _load_safetensors(path / "model.safetensors")
    # The attention masks (`mask`, `IGNORE`) are buffers the constructor rebuilds; every
    # parameter must come from the file.
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CgcLensError(f"Weights in {path / 'model.safetensors'} do not fit the config: "
                           f"{str(err)[:400]}") from err
    params = {n for n, _ in model.named_parameters()}
    if unexpected or params & set(missing):
        raise CgcLensError(
            f"Weights in {path / 'model.safetensors'} do not fit the config: missing "
            f"{sorted(params & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    if processing:
        model.load_and_process_state_dict(
            model.state_dict(), fold_ln=True, center_writing_weights=True, center_unembed=True,
            fold_value_biases=True,
        )
    return model


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a clear error when it is truncated or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CgcLensError(f"The weights file {file} ({file.stat().st_size} bytes) cannot be read: "
                           f"{err}. It is truncated or corrupt: copy or download it again (the "
                           "embedded model: reinstall cgc-lens).") from err


def _load_hf_dir(
    path: Path, device: Any, dtype: torch.dtype | None, processing: bool
) -> HookedTransformer:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as err:
        raise CgcLensError(f"Expected a Hugging Face causal LM (config.json and weights) in "
                           f"{path}: {type(err).__name__}: {str(err)[:300]}") from err
    try:
        cfg = loading.get_pretrained_model_config(
            str(path), hf_cfg=hf_model.config.to_dict(), fold_ln=processing, device=device,
            dtype=dtype,
        )
    except (AttributeError, KeyError) as err:
        raise CgcLensError(
            f"TransformerLens cannot read the config in {path / 'config.json'}: it expects the "
            f"field named in {err!r} (e.g. GPT-2 configs need 'n_ctx'). Add it to config.json."
        ) from err
    state = loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(path)) if has_tokenizer else None
    if tokenizer is None:
        cfg.tokenizer_name = None
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=processing, center_writing_weights=processing,
        center_unembed=processing, fold_value_biases=processing,
    )
    model.move_model_modules_to_device()
    return model


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    processing: bool = False,
) -> HookedTransformer:
    """Load a HookedTransformer with its weights as deployed (unprocessed unless asked).

    Args:
        name_or_path: ``"cgc-tiny"``, a TransformerLens pretrained name or alias, or a local
            directory (a Hugging Face model, or a folder in the embedded layout).
        device: where to put the model; TransformerLens's default (CUDA when present) if None.
        dtype: parameter dtype (``"float32"``, ``"bfloat16"``, ``torch.float16`` ...);
            float32 if None.
        processing: apply TransformerLens's weight processing (``fold_ln``, centring of writing
            weights and unembedding, value-bias folding). Off by default: it changes ``W_O``
            and the residual stream an SAE reads.

    Returns:
        The model in eval mode, with its tokenizer attached.

    Raises:
        CgcLensError: unknown name, bad local folder, or a named model missing from the
            Hugging Face cache when offline (the message names the cache folder searched).

    Example:
        >>> load_model("gtp2-medium")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Unknown model 'gtp2-medium'. Closest: [...'gpt2-medium'...
    """
    torch_dtype = resolve_dtype(dtype)
    check_device(device)
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in EMBEDDED_MODELS:
        model = _load_embedded(embedded_asset_dir(name), name, device, torch_dtype, processing)
    elif path.is_dir():
        if _is_embedded_layout(path):
            model = _load_embedded(path, str(path), device, torch_dtype, processing)
        elif (path / "config.json").is_file():
            model = _load_hf_dir(path, device, torch_dtype, processing)
        else:
            raise CgcLensError(
                f"Expected a model directory with config.json and weights, got {path} "
                f"(holds {sorted(p.name for p in path.iterdir())[:10]})."
            )
    else:
        official = _official_name(name)
        if official is None:
            raise _unknown_model(name)
        model = _load_pretrained(name, official, device, torch_dtype, processing)
    model.eval()
    logger.info("loaded %s (%s layers, d_model %s)", name, model.cfg.n_layers, model.cfg.d_model)
    return model


def load_model_shape(name_or_path: str | Path) -> HookedTransformer:
    """A weightless HookedTransformer with a model's config and hook points, on the meta device.

    For checking SAEs, hook names and compression targets against models too large to load
    here (Gemma-2-2B on a laptop): only the config is read (from TransformerLens's tables, the
    Hugging Face cache, or the folder); no weights are read or allocated. It cannot run.

    Raises:
        CgcLensError: as :func:`load_model` (unknown name, bad folder, config missing offline).

    Example:
        >>> shape = load_model_shape("cgc-tiny")
        >>> shape.cfg.d_model, shape.W_Q.device.type, "blocks.2.hook_resid_post" in shape.hook_dict
        (128, 'meta', True)
    """
    import dataclasses

    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in EMBEDDED_MODELS or (path.is_dir() and _is_embedded_layout(path)):
        cfg = _embedded_config(embedded_asset_dir(name) if name in EMBEDDED_MODELS else path)
    elif path.is_dir():
        from transformers import AutoConfig

        try:
            hf_cfg = AutoConfig.from_pretrained(str(path)).to_dict()
            cfg = loading.get_pretrained_model_config(str(path), hf_cfg=hf_cfg, device="meta")
        except (OSError, ValueError, AttributeError, KeyError) as err:
            raise CgcLensError(f"Expected a Hugging Face config.json TransformerLens can read in "
                               f"{path}: {type(err).__name__}: {str(err)[:300]}") from err
    else:
        official = _official_name(name)
        if official is None:
            raise _unknown_model(name)
        try:
            cfg = loading.get_pretrained_model_config(official, device="meta")
        except OSError as err:
            raise _missing_error(name, official, "model", err) from err
    cfg = dataclasses.replace(cfg, device="meta", tokenizer_name=None)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        model = HookedTransformer(cfg, move_to_device=False)
    return model.eval()


def _load_pretrained(
    name: str, official: str, device: Any, dtype: Any, processing: bool
) -> HookedTransformer:
    from transformer_lens import HookedTransformer

    try:
        with warnings.catch_warnings():
            # HookedTransformer is what cgc-lens builds on; its v3 migration notice is noise here.
            warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
            return HookedTransformer.from_pretrained(
                official, fold_ln=processing, center_writing_weights=processing,
                center_unembed=processing, fold_value_biases=processing,
                refactor_factored_attn_matrices=False, device=device,
                dtype=dtype or torch.float32,
            )
    except OSError as err:
        raise _missing_error(name, official, "model", err) from err
