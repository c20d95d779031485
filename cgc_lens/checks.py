"""Checks of what a run is given before its first forward pass: the dtype is a floating one, the
device exists here, and the model's weights are finite.

All are cheap (a dtype lookup, a string parse, one ``torch.isfinite`` per parameter) and refuse
bad input with the value and the fix, where it would otherwise surface as a raw traceback from
torch or as a silently wrong number (TransformerLens zeroes NaN attention patterns, so a NaN in
``W_Q`` still gives a finite, plausible perplexity).
"""

from __future__ import annotations

import difflib

import torch

from cgc_lens.errors import CgcLensError

__all__ = [
    "DEVICE_TYPES", "check_device", "check_device_name", "check_finite_weights", "resolve_dtype",
]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float64": torch.float64,
    "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"bfloat16"``, ``"fp16"``, ``torch.float32`` ... into a floating ``torch.dtype``.

    Example:
        >>> resolve_dtype("bf16")
        torch.bfloat16
        >>> resolve_dtype(None) is None
        True
    """
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in _DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise CgcLensError(f"Expected a floating dtype, got {dtype!r}. Valid: {sorted(_DTYPES)}.")


DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "meta")
"""Device types a model may be loaded onto (``cuda`` and ``mps`` only where present)."""


def check_device_name(device: str | torch.device | None) -> None:
    """Raise unless ``device`` is None or a well-formed device (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``, ``meta``); whether it is present here is :func:`check_device`'s question.

    Example:
        >>> check_device_name("tpu:0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Unknown device 'tpu:0'...
    """
    if device is None or isinstance(device, torch.device):
        return
    if not isinstance(device, str):
        raise CgcLensError(f"Expected a device name such as 'cpu' or 'cuda:0', got {device!r}.")
    kind, colon, index = device.partition(":")
    if kind not in DEVICE_TYPES or (colon and not index.isdigit()):
        close = difflib.get_close_matches(kind, DEVICE_TYPES, n=2)
        raise CgcLensError(f"Unknown device {device!r}. Expected one of {list(DEVICE_TYPES)}, "
                           "optionally with an index ('cuda:1')"
                           f"{f'; closest: {close}' if close else ''}.")


def check_device(device: str | torch.device | None) -> None:
    """Raise unless ``device`` is None or a device present on this machine, saying which are.

    Example:
        >>> check_device("cpu") is None
        True
    """
    check_device_name(device)
    if device is None:
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            have = f"{n} CUDA device(s) (cuda:0 .. cuda:{n - 1})" if n else "no CUDA device"
            raise CgcLensError(f"Device {str(device)!r} is not available: this machine has {have} "
                               f"(torch {torch.__version__}, CUDA build "
                               f"{torch.version.cuda or 'none'}). Pass device='cpu' or leave it "
                               "unset for the best available one.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CgcLensError(f"Device {str(device)!r} is not available here (no Apple MPS backend); "
                           "pass device='cpu' or leave it unset.")


def check_finite_weights(model: torch.nn.Module, *, what: str = "the model") -> None:
    """Raise unless every parameter of ``model`` is finite, naming those holding NaN or inf.

    One ``torch.isfinite`` per parameter. A NaN does not always show in the loss:
    TransformerLens zeroes NaN attention patterns, so a NaN in ``W_Q`` still gives a finite,
    plausible perplexity.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     lin.weight[0, 0] = float("nan")
        >>> check_finite_weights(lin)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Expected finite weights in the model, got NaN or inf in...
    """
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CgcLensError(f"Expected finite weights in {what}, got NaN or inf in {bad[:5]}{more}."
                           " Reload the model from its files (a compression left unrestored or a "
                           "diverged training run leaves such values).")
