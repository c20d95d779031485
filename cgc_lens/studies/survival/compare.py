"""Checkpoints the user already has, audited as conditions (``--compare PATH``).

A compared model is a Hugging Face folder of the reference's architecture (plain weights, or a
compressed-tensors checkpoint as llm-compressor writes it, dequantized by ``transformers`` on
load), a folder in cgc-lens's own layout (:func:`cgc_lens.save_model`), or a ``.gguf`` file
(dequantized by ``transformers``; needs the ``gguf`` package). It becomes a condition whose edit
swaps its weights into the reference model: the parameters' storage is exchanged for the
compared model's (in TransformerLens layout, converted by TransformerLens's own weight
conversion) and exchanged back on exit, so the restore is exact, the tokens and the frozen SAE
are the reference's, and only one compared state dict is held at a time
(:class:`CheckpointSlot`), each read once per sweep (:func:`deferred_swaps`).

Up front (:func:`check_compared`, before the sweep): the architecture's function fields
(d_model, layers, heads, d_mlp, vocabulary, activation, normalization, positions ...) and the
tokenizer's vocabulary must equal the reference's, else a :class:`~cgc_lens.CgcLensError` names
the difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cgc_lens.errors import CgcLensError
from cgc_lens.io.hf_export import FUNCTION_FIELDS, config_mismatches
from cgc_lens.studies.survival.conditions import Condition
from cgc_lens.studies.survival.config import parse_compare

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "COMPARE_FORMATS",
    "CheckpointSlot",
    "ComparedModel",
    "WeightSwap",
    "check_compared",
    "compared_conditions",
    "deferred_swaps",
    "describe",
    "load_tl_state",
    "parse_compare",
    "tl_config",
]

log = logging.getLogger(__name__)

COMPARE_FORMATS = ("checkpoint", "gguf", "compressed-tensors")
_SAMPLE = "The quick brown fox, 12 + 30 = 42; def f(x): return x  # émigré"


@dataclass(frozen=True)
class ComparedModel:
    """One ``--compare`` entry: its condition name, where it is, and its format."""

    name: str
    path: Path
    format: str
    bits: float | None = None
    """Nominal bits per weight of its quantized weights (None: plain weights)."""


def _quantization(path: Path) -> dict[str, Any] | None:
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return cfg.get("quantization_config") if isinstance(cfg, dict) else None


def describe(name: str, path: Path) -> ComparedModel:
    """The format of a compared path; a clear error when it is none of the accepted forms."""
    if path.is_file() and path.suffix == ".gguf":
        return ComparedModel(name=name, path=path, format="gguf", bits=_gguf_bits(path))
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise CgcLensError(
            f"--compare {name}: {path} is not a model folder (config.json and weights) or a "
            f".gguf file{' (no such path)' if not path.exists() else ''}."
        )
    q = _quantization(path)
    if q is None:
        return ComparedModel(name=name, path=path, format="checkpoint")
    method = q.get("quant_method")
    if method != "compressed-tensors":
        raise CgcLensError(
            f"--compare {name}: {path} is quantized with {method!r}; cgc-lens dequantizes "
            f"compressed-tensors checkpoints (llm-compressor's format) and GGUF files on CPU. "
            f"Dequantize it to plain weights first (or export it with llm-compressor)."
        )
    groups = q.get("config_groups") or {}
    bits = [g.get("weights", {}).get("num_bits") for g in groups.values() if g.get("weights")]
    return ComparedModel(
        name=name, path=path, format="compressed-tensors", bits=float(min(bits)) if bits else None
    )


def _gguf_bits(path: Path) -> float | None:
    """Nominal bits of a GGUF file's quantized 2-D weights (Q4_0 → 4; None if all float)."""
    gguf = _import_gguf(path)
    reader = gguf.GGUFReader(str(path))
    names = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    bits = [int(n[1]) for n in names if n.startswith(("Q", "IQ")) and n[1].isdigit()]
    return float(min(bits)) if bits else None


def _import_gguf(path: Path) -> Any:
    try:
        import gguf
    except ImportError as err:
        raise CgcLensError(
            f"--compare {path}: reading GGUF files needs the 'gguf' package (pip install gguf)."
        ) from err
    return gguf


def _hf_load_args(model: ComparedModel) -> tuple[str, dict[str, Any]]:
    """``(folder, kwargs)`` for ``transformers``' ``from_pretrained`` of a compared model."""
    if model.format == "gguf":
        _import_gguf(model.path)
        return str(model.path.parent), {"gguf_file": model.path.name}
    if model.format == "compressed-tensors":
        try:
            import compressed_tensors  # noqa: F401
            from transformers.utils.quantization_config import CompressedTensorsConfig
        except ImportError as err:
            raise CgcLensError(
                f"--compare {model.name}: {model.path} is a compressed-tensors "
                "checkpoint; reading it needs the 'compressed-tensors' package "
                "(pip install compressed-tensors)."
            ) from err
        return str(model.path), {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    return str(model.path), {}


def _is_tl_layout(path: Path) -> bool:
    if not path.is_dir():
        return False
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return "model_type" not in cfg and "d_model" in cfg


def _hf_config(model: ComparedModel) -> Any:
    from transformers import AutoConfig

    folder, kwargs = _hf_load_args(model)
    kwargs.pop("quantization_config", None)
    try:
        cfg = AutoConfig.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise CgcLensError(
            f"--compare {model.name}: transformers cannot read the config of "
            f"{model.path}: {type(err).__name__}: {str(err)[:300]}"
        ) from err
    if model.format == "gguf" and cfg.model_type == "gpt2":
        cfg.n_positions = cfg.n_ctx  # GGUF stores the context length once (as n_ctx)
    if not getattr(cfg, "architectures", None):
        from transformers import AutoModelForCausalLM

        cls = AutoModelForCausalLM._model_mapping[type(cfg)]
        cfg.architectures = [cls.__name__]
    return cfg


def tl_config(model: ComparedModel, dtype: torch.dtype) -> HookedTransformerConfig:
    """The TransformerLens config of a compared model, from its config alone."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    if _is_tl_layout(model.path):
        kwargs = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
        kwargs.pop("device", None)
        return HookedTransformerConfig(**kwargs, dtype=dtype, device="cpu")
    hf_cfg = _hf_config(model)
    try:
        with _tl_folder(model, hf_cfg) as folder:
            cfg = loading.get_pretrained_model_config(
                folder, hf_cfg=hf_cfg.to_dict(), device="cpu", dtype=dtype
            )
        return dataclasses.replace(cfg, model_name=model.name)
    except (AttributeError, KeyError, NotImplementedError, ValueError) as err:
        raise CgcLensError(
            f"--compare {model.name}: TransformerLens cannot read the "
            f"architecture of {model.path} ({type(err).__name__}: "
            f"{str(err)[:200]})."
        ) from err


@contextlib.contextmanager
def _tl_folder(model: ComparedModel, hf_cfg: Any) -> Iterator[str]:
    """A local folder TransformerLens's loaders accept (they read ``config.json`` from it): the
    model's own, or for a GGUF file a temporary one holding the config transformers read."""
    if model.format != "gguf":
        yield str(model.path)
        return
    with tempfile.TemporaryDirectory(prefix="cgc-compare-") as folder:
        hf_cfg.to_json_file(str(Path(folder) / "config.json"))
        yield folder


def _tokenizer(model: ComparedModel) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if _is_tl_layout(model.path):
        file = model.path / "tokenizer.json"
        return PreTrainedTokenizerFast(tokenizer_file=str(file)) if file.is_file() else None
    folder, kwargs = _hf_load_args(model)
    kwargs.pop("quantization_config", None)
    has = model.format == "gguf" or any(
        (model.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    )
    if not has:
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning(
            "--compare %s: its tokenizer cannot be read (%s); only the vocabulary size is checked.",
            model.name,
            err,
        )
        return None


def check_compared(model: ComparedModel, reference: HookedTransformer) -> None:
    """Refuse a compared model whose architecture, vocabulary or tokenizer differs from the
    reference's (config and tokenizer files only; no weights are read)."""
    ref = reference.cfg
    if ref.normalization_type in ("LNPre", "RMSPre"):
        raise CgcLensError(
            "--compare needs the reference loaded without weight processing "
            "(cgc_lens.load_model's default), so both sides are deployed weights."
        )
    cfg = tl_config(model, ref.dtype)
    diff = config_mismatches(ref, cfg, FUNCTION_FIELDS)
    if diff:
        raise CgcLensError(
            f"--compare {model.name}: {model.path} is not the reference's architecture "
            f"({cfg.original_architecture} vs {ref.original_architecture}; differs in "
            f"{'; '.join(diff)}). Compare checkpoints of the same model only."
        )
    theirs, ours = _tokenizer(model), reference.tokenizer
    if theirs is None or ours is None:
        log.warning(
            "--compare %s: %s has no tokenizer to check; only the vocabulary size (%d) is.",
            model.name,
            model.path if theirs is None else "the reference",
            ref.d_vocab,
        )
        return
    a, b = ours.get_vocab(), theirs.get_vocab()
    if a != b:
        n = len(set(a.items()) ^ set(b.items()))
        raise CgcLensError(
            f"--compare {model.name}: its tokenizer differs from the reference's "
            f"({n} token↔id pairs differ, sizes {len(b)} vs {len(a)}); the audit "
            "needs the same tokens on both sides."
        )
    enc_a = ours(_SAMPLE, add_special_tokens=False)["input_ids"]
    enc_b = theirs(_SAMPLE, add_special_tokens=False)["input_ids"]
    if enc_a != enc_b:
        raise CgcLensError(
            f"--compare {model.name}: its tokenizer splits text differently from "
            f"the reference's ({enc_b[:8]} vs {enc_a[:8]} on a sample); the audit "
            "needs the same tokens on both sides."
        )


def load_tl_state(model: ComparedModel, reference: HookedTransformer) -> dict[str, torch.Tensor]:
    """The compared model's weights in TransformerLens layout, on the reference's device and
    dtype, one tensor per reference parameter (finite, of the reference's shapes)."""
    from transformer_lens import loading_from_pretrained as loading

    ref, params = reference.cfg, dict(reference.named_parameters())
    dtype, device = ref.dtype, next(reference.parameters()).device
    if _is_tl_layout(model.path):
        from safetensors.torch import load_file

        state = load_file(str(model.path / "model.safetensors"), device="cpu")
    else:
        from transformers import AutoModelForCausalLM

        folder, kwargs = _hf_load_args(model)
        hf_cfg = _hf_config(model)
        try:
            hf = AutoModelForCausalLM.from_pretrained(folder, config=hf_cfg, dtype=dtype, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise CgcLensError(
                f"--compare {model.name}: transformers cannot load the weights "
                f"of {model.path}: {type(err).__name__}: {str(err)[:300]}"
            ) from err
        with _tl_folder(model, hf_cfg) as tl_folder:
            state = loading.get_pretrained_state_dict(
                tl_folder, tl_config(model, dtype), hf, dtype=dtype
            )
        state = {k: v.detach().clone() for k, v in state.items()}  # not views of hf's storage
        del hf
    if "unembed.b_U" not in state and "unembed.b_U" in params:
        state["unembed.b_U"] = torch.zeros(ref.d_vocab, dtype=dtype)  # HF heads have no bias
    out = {}
    for name, p in params.items():
        w = state.get(name)
        if w is None or w.shape != p.shape:
            got = None if w is None else tuple(w.shape)
            raise CgcLensError(
                f"--compare {model.name}: weight {name} is {got} in {model.path}, "
                f"the reference has {tuple(p.shape)}."
            )
        w = w.detach().to(device=device, dtype=p.dtype).contiguous()
        if not bool(torch.isfinite(w).all()):
            raise CgcLensError(
                f"--compare {model.name}: weight {name} of {model.path} holds non-finite values."
            )
        out[name] = w
    return out


@dataclass
class CheckpointSlot:
    """The one compared state dict held at a time (reloaded when another one is asked for).

    The sweep asks for each checkpoint once (:func:`deferred_swaps`); ``loads`` counts the
    reads per checkpoint name.
    """

    name: str | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)
    """Times each checkpoint was read from its path."""

    def get(self, model: ComparedModel, reference: HookedTransformer) -> dict[str, torch.Tensor]:
        """``model``'s weights, loading them (and dropping the held ones) when not held."""
        if self.name != model.name:
            self.clear()
            self.state = load_tl_state(model, reference)
            self.name = model.name
            self.loads[model.name] = self.loads.get(model.name, 0) + 1
        return self.state

    def clear(self) -> None:
        """Drop the held weights."""
        self.name, self.state = None, {}


@dataclass(frozen=True)
class WeightSwap:
    """A condition's edit that swaps a compared model's weights into the reference."""

    model: ComparedModel
    slot: CheckpointSlot = field(compare=False)

    @contextlib.contextmanager
    def swapped(self, reference: HookedTransformer) -> Iterator[HookedTransformer]:
        """The reference computing with the compared weights inside the block; its own
        parameter storage exchanged back on exit (bit-exact; also on an exception)."""
        state = self.slot.get(self.model, reference)
        params = dict(reference.named_parameters())
        originals: dict[str, torch.Tensor] = {}
        try:
            for name, p in params.items():
                originals[name] = p.data
                p.data = state[name]
            yield reference
        finally:
            for name, data in originals.items():
                params[name].data = data


def deferred_swaps(conditions: Sequence[tuple[str, Any]]) -> list[int]:
    """Indices (in ``conditions``, ``(name, plan)`` pairs) of the compared checkpoints after the
    first: the sweep streams them after its chunk loop, each loaded once, over the reference
    codes kept on disk (:class:`~cgc_lens.studies.survival.spill.ReferenceSpill`), since two
    checkpoints alternating per chunk in the one :class:`CheckpointSlot` would each be read
    from their files once per chunk."""
    swaps = [c for c, (_, plan) in enumerate(conditions) if isinstance(plan, WeightSwap)]
    return swaps[1:]


def compared_conditions(specs: tuple[str, ...], reference: HookedTransformer) -> list[Condition]:
    """One condition per ``--compare`` entry, each checked against the reference up front."""
    slot = CheckpointSlot()
    out = []
    for spec in specs:
        model = describe(*parse_compare(spec))
        check_compared(model, reference)
        out.append(Condition(model.name, WeightSwap(model, slot), model.bits, None,  # type: ignore[arg-type]
                             format=model.format))
    return out
