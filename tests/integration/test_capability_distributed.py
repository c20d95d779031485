"""The capability study on 2 gloo ranks (127.0.0.1) equals the study in one process.

A small study on cgc-tiny with freshly trained per-head SAEs (heads split over the ranks),
calibration blocks split unevenly (3 batches: 2 and 1) and held-out blocks in one batch (rank 1
reads none), and a tiny CGC-F whose candidates are split over the ranks: every per-head number
equals the single-process run to 1e-10, and the results folders hold the same files with the
same numbers (timings aside).
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.numpy import load_file

from cgc_lens.analysis.evolution import EvoConfig
from cgc_lens.studies.capability import CapabilityConfig, run_capability
from cgc_lens.studies.capability.result import CapabilityResult

SMALL = CapabilityConfig(
    block_len=64,
    calibration_tokens=5 * 64,
    eval_tokens=2 * 64,
    batch_size=2,
    saes="train",
    d_sae=32,
    k=4,
    sae_epochs=1,
    sae_batch_size=64,
    sae_max_steps=4,
    survival_tokens=3 * 64,
    survival_retentions=(0.5, 0.25),
    probes=("induction",),
    bootstrap_resamples=49,
    evo=EvoConfig(
        generations=2,
        offspring=4,
        survivors_per_stage=(2, 1),
        tokens_per_stage=(64, 128),
        progress=False,
    ),
    progress=False,
)
"""5 calibration blocks in 3 batches (rank 0: 4 blocks, rank 1: 1); 2 held-out blocks in one
batch (rank 1: none); 16 heads, 8 per rank; 3 selection stages' candidates split per rank."""
RTOL = 1e-10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    try:
        result = run_capability(SMALL)
        if rank == 0:
            result.save(Path(out))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cgc_dist")
    mp.spawn(_rank_main, args=(_free_port(), str(root / "two")), nprocs=2, join=True)
    run_capability(SMALL).save(root / "one")
    return root / "one", root / "two"


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            if k not in ("timings", "world_size"):
                _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(
            a, b, rel_tol=RTOL, abs_tol=RTOL
        ), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_every_per_head_number_equals_one_process(folders):
    one, two = (CapabilityResult.load(f) for f in folders)
    pairs = {
        "density": (one.density.density, two.density.density),
        "breadth": (one.density.breadth, two.density.breadth),
        "entropy": (one.density.entropy, two.density.entropy),
        "consistency": (one.density.consistency, two.density.consistency),
        "wanda": (one.wanda, two.wanda),
        "ablation dppl": (one.ablation.delta_ppl, two.ablation.delta_ppl),
        "ablation dkl": (one.ablation.delta_kl, two.ablation.delta_kl),
        "destruction": (one.theorem1.destruction, two.theorem1.destruction),
        "sweep dppl": (one.theorem1.delta_ppl, two.theorem1.delta_ppl),
        "cgc_f": (one.allocations["cgc_f"].retention, two.allocations["cgc_f"].retention),
        "search": (one.search.history, two.search.history),
    }
    for name, (a, b) in pairs.items():
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=RTOL, atol=RTOL, err_msg=name)
    assert one.density.density.shape == (4, 4) and np.isfinite(one.density.density).all()
    assert one.search.n_evaluations == two.search.n_evaluations
    for method, row in one.scores.items():
        for key in ("ppl", "kl", "kl_calibration"):
            assert two.scores[method][key] == pytest.approx(row[key], rel=RTOL, abs=RTOL)


def test_results_folders_hold_the_same_numbers(folders):
    one, two = folders
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    _close(
        json.loads((one / "results.json").read_text()),
        json.loads((two / "results.json").read_text()),
        "results.json",
    )
    for name in files:
        if name.endswith(".csv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(two / name), pd.read_csv(one / name), rtol=RTOL, atol=RTOL
            )
        elif name.endswith(".safetensors"):
            a, b = load_file(str(one / name)), load_file(str(two / name))
            assert set(a) == set(b)
            for key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=RTOL, atol=RTOL, err_msg=key)
