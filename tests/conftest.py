"""Shared fixtures: seeding, a random tiny model per test, and cgc-tiny cached once per session."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds the legacy global RNG code under test may use
    torch.manual_seed(0)


def make_tiny_model(
    *, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_head: int = 8, d_mlp: int = 64,
    d_vocab: int = 61, n_ctx: int = 32, act_fn: str = "gelu", gated: bool = False,
    seed: int | None = 0, normalization_type: str = "LN", **config: object,
) -> HookedTransformer:
    """A random HookedTransformer small enough for unit tests (milliseconds per forward).

    ``config`` passes any other ``HookedTransformerConfig`` field (``dtype``, ``attn_only``,
    ``positional_embedding_type`` …); ``seed=None`` draws the weights from the global RNG that
    the autouse ``_seed`` fixture seeds."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn=act_fn, normalization_type=normalization_type,
        gated_mlp=gated, model_name=f"random-tiny-{n_layers}l", device="cpu",
        **({} if seed is None else {"seed": seed}), **config,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture
def tiny_model() -> HookedTransformer:
    """A fresh random 2-layer model (4 heads, d_head 8)."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def _cgc_tiny_cached() -> HookedTransformer:
    from cgc_lens import load_model

    return load_model("cgc-tiny")


@pytest.fixture
def cgc_tiny(_cgc_tiny_cached: HookedTransformer) -> HookedTransformer:
    """The embedded cgc-tiny model, loaded once per session and deep-copied per test."""
    return copy.deepcopy(_cgc_tiny_cached)


@pytest.fixture
def unchecked():
    """Switch off the jaxtyping/beartype call checks for one test.

    For tests of cgc-lens's own validation of bad input (a wrong dtype, a mismatched shape, an
    unknown Literal): under pytest the type checker would otherwise pre-empt the check the
    library performs for its users, who run without it.
    """
    from jaxtyping import config

    config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        config.update("jaxtyping_disable", False)
