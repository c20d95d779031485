"""What several benchmarks share: the model to time (cgc-tiny or random weights of a given shape)
and the ``--smoke`` mode.

Imported by the ``bench_*.py`` scripts, which run from this folder (``python benchmarks/...``).
Every benchmark takes ``--smoke``: a run of seconds (tiny sizes, one repetition, nothing
asserted about ratios) through every code path it times, so that a change to the library that
breaks a benchmark fails CI (``tests/integration/test_benchmarks_smoke.py`` runs them all).
"""

from __future__ import annotations

import argparse
from typing import Any

SMOKE_HELP = ("a run of seconds through every code path: tiny sizes, one repetition; its numbers "
              "mean nothing (CI runs it so that the benchmark cannot rot)")


def add_smoke(parser: argparse.ArgumentParser) -> None:
    """Add the ``--smoke`` flag every benchmark has."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def smoke(args: argparse.Namespace, **tiny: Any) -> argparse.Namespace:
    """With ``--smoke``, ``args`` with the given options set to their tiny values."""
    if args.smoke:
        for name, value in tiny.items():
            if not hasattr(args, name):
                raise AttributeError(f"--smoke sets {name!r}, which the parser does not define")
            setattr(args, name, value)
    return args


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
