"""Protocol checks of the survival audit: the bos policy and a baseline that is not broken.

- :func:`bos_policy`: whether a bos token is fed before each block. Unset in the config, the
  SAE's own ``prepend_bos`` (SAELens metadata) decides, since its features were trained on
  activations read that way; no bos when it names none. An explicit config value wins, with a
  warning when it contradicts the SAE.
- :func:`unigram_perplexity`: exp of the entropy of the empirical token distribution of the
  positions the chunked perplexity scores (every position after the first of each block, or
  every position with a bos): the perplexity of the best context-free model of these very
  tokens.
- :func:`baseline_check`: a reference whose perplexity is above that has learnt less than the
  token frequencies, the signature of a broken protocol (e.g. a model trained with bos read
  without it: the survival paper's public code reports a Gemma baseline of 458.5 so); a
  condition "improving" on such a baseline may be an artifact. The run is refused with a
  :class:`~cgc_lens.errors.CgcLensError` unless ``allow`` names ``"baseline-perplexity"``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["baseline_check", "bos_policy", "unigram_perplexity"]

log = logging.getLogger(__name__)


def bos_policy(prepend_bos: bool | None, sae: Any) -> tuple[bool, dict[str, Any]]:
    """``(prepend_bos used, record)``: the config's value if set, else the SAE's metadata.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> bos_policy(None, NS(cfg=NS(metadata=NS(prepend_bos=True))))
        (True, {'prepend_bos': True, 'source': 'sae', 'sae_prepend_bos': True})
    """
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    from_sae = getattr(meta, "prepend_bos", None)
    if from_sae is None:
        from_sae = getattr(getattr(sae, "cfg", None), "prepend_bos", None)
    from_sae = None if from_sae is None else bool(from_sae)
    if prepend_bos is not None:
        used, source = bool(prepend_bos), "config"
        if from_sae is not None and used != from_sae:
            log.warning(
                "prepend_bos=%s contradicts the SAE's prepend_bos=%s (its features were "
                "trained on activations read %s a bos token).",
                used,
                from_sae,
                "with" if from_sae else "without",
            )
    elif from_sae is not None:
        used, source = from_sae, "sae"
    else:
        used, source = False, "default"
    return used, {"prepend_bos": used, "source": source, "sae_prepend_bos": from_sae}


def unigram_perplexity(tokens: Tensor, *, prepend_bos: bool) -> float:
    """Perplexity of the empirical unigram distribution of the scored positions of ``tokens``
    (``[n_blocks, block_len]``, chunked protocol).

    Example:
        >>> unigram_perplexity(torch.tensor([[9, 1, 1, 2, 2]]), prepend_bos=False)
        2.0
    """
    scored = tokens if prepend_bos else tokens[:, 1:]
    counts = torch.bincount(scored.reshape(-1).long()).double()
    if counts.sum() == 0:
        raise CgcLensError(
            "No scored positions to take a unigram perplexity over: the "
            "evaluation blocks need at least 2 tokens each (1 with a bos)."
        )
    p = counts[counts > 0] / counts.sum()
    return float(math.exp(-(p * p.log()).sum()))


def baseline_check(
    eval_tokens: Tensor | None,
    reference_ppl: float | None,
    *,
    prepend_bos: bool,
    allow: tuple[str, ...],
) -> dict[str, Any]:
    """Compare the reference's perplexity with the unigram perplexity of the same tokens;
    return what ``results.json`` records, or raise when the baseline is broken.

    Raises:
        CgcLensError: the reference's perplexity is above the unigram perplexity and ``allow``
            does not name ``"baseline-perplexity"``.
    """
    if eval_tokens is None or reference_ppl is None:
        return {"baseline_ppl": None, "unigram_ppl": None, "baseline_check": "skipped"}
    unigram = unigram_perplexity(eval_tokens, prepend_bos=prepend_bos)
    out = {"baseline_ppl": reference_ppl, "unigram_ppl": unigram, "baseline_check": "passed"}
    if reference_ppl > unigram:
        msg = (
            f"The reference's perplexity on the evaluation tokens, {reference_ppl:.4g}, is "
            f"above their unigram perplexity {unigram:.4g} (prepend_bos={prepend_bos}): the "
            "model predicts them worse than their token frequencies do, so the baseline is "
            "broken (a model trained with a bos token read without one, the wrong tokenizer, "
            "or corrupt weights) and any condition may look like an improvement on it. Check "
            "prepend_bos (unset follows the SAE) and the corpus, or pass --allow "
            "baseline-perplexity to run anyway."
        )
        if "baseline-perplexity" not in allow:
            raise CgcLensError(msg)
        log.warning("%s (allowed)", msg)
        out["baseline_check"] = "failed (allowed)"
    return out
