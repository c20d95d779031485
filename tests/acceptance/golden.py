"""The golden cgc-tiny numbers: computed here, stored in ``golden_cgc_tiny.json``.

``python scripts/regenerate_golden.py`` rewrites the JSON from :func:`compute_golden`; the
acceptance test recomputes and compares. Regenerate only when a change is *meant* to move a
number, and say why in the commit. Everything goes through the public API (``import cgc_lens``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

import cgc_lens

GOLDEN_FILE = Path(__file__).with_name("golden_cgc_tiny.json")

# Relative tolerance of the comparison: float32 forwards on one CPU thread repeat exactly on one
# machine, but BLAS kernels may sum in another order on another CPU; 1e-5 of relative drift is
# far below any effect a change of method would have on these numbers.
RTOL = 1e-5

_SURVIVAL = dict(tokens=8192, eval_tokens=4096, match_tokens=2048, bits=(8, 4), match_pruning=None,
                 null=False, progress=False)


def _survival(model) -> dict[str, object]:
    result = cgc_lens.run_survival(cgc_lens.SurvivalConfig(**_SURVIVAL), model=model)
    frame = result.to_frame().set_index("name")
    cols = ["ppl", "mean_corr", "median_corr", "survived_pct", "degraded_pct", "damaged_pct",
            "n_active"]
    return {name: {c: float(frame.loc[name, c]) for c in cols if c in frame.columns}
            for name in frame.index}


def _capability(model) -> dict[str, object]:
    corpus = cgc_lens.load_corpus("cgc-tiny", split="calibration")
    blocks = cgc_lens.token_blocks(corpus, model, block_len=128, n_blocks=32, seed=0)
    sae = cgc_lens.saes.load_batched_sae("cgc-tiny")
    density = cgc_lens.head_density(model, blocks, sae, progress=False)
    evaluation = cgc_lens.token_blocks(cgc_lens.load_corpus("cgc-tiny", split="eval"), model,
                                       block_len=128, n_blocks=16, seed=0)
    with cgc_lens.compressed(model, cgc_lens.RTN(4)):
        ppl_int4 = cgc_lens.perplexity(model, evaluation, progress=False)
    return {
        "density": np.asarray(density.density, dtype=float).round(12).tolist(),
        "ppl_eval": cgc_lens.perplexity(model, evaluation, progress=False),
        "ppl_eval_rtn4": ppl_int4,
    }


def compute_golden() -> dict[str, object]:
    """Every golden number, computed afresh on cgc-tiny (about 30 s on one CPU thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = cgc_lens.load_model("cgc-tiny")
        return {"survival": _survival(copy.deepcopy(model)), "capability": _capability(model)}
    finally:
        torch.set_num_threads(threads)


def write_golden(path: Path = GOLDEN_FILE) -> Path:
    """Recompute and store the golden numbers."""
    path.write_text(json.dumps(compute_golden(), indent=1, sort_keys=True) + "\n")
    return path
