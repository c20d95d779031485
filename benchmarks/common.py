"""What several benchmarks share: the model to time, cgc-tiny or random weights of a given shape.

Imported by the ``bench_*.py`` scripts, which run from this folder (``python benchmarks/...``).
"""

from __future__ import annotations

from typing import Any


def get_model(
    name: str, shapes: dict[str, dict[str, int]], vocab: int | None = None
) -> tuple[str, Any]:
    """``(name, model)``: an embedded or named model by ``load_model``, or, for a key of
    ``shapes``, a random-weight TransformerLens model with those shapes (``vocab`` overrides
    its ``d_vocab``; seed 0)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from cgc_lens.models import load_model

    if name not in shapes:
        return name, load_model(name, device="cpu")
    shape = dict(shapes[name], **({"d_vocab": vocab} if vocab else {}))
    cfg = HookedTransformerConfig(**shape, act_fn="gelu_new", normalization_type="LN",
                                  model_name=name, device="cpu", seed=0)
    return name, HookedTransformer(cfg).eval()
