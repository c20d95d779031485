"""The survival audit on 2 gloo ranks (127.0.0.1) equals the single process: every per-feature
statistic to 1e-10 (in fact bit for bit), uneven shares and a rank with no blocks included,
split by tokens or by conditions; the results folders are byte-identical except timings and
the recorded world size; a rank that fails ends both ranks with its message. And the command
itself under ``torchrun --standalone``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cgc_lens.distributed import run_local, world
from cgc_lens.errors import CgcLensError
from cgc_lens.models import load_model
from cgc_lens.studies.survival import SurvivalConfig, run_survival

BASE = dict(bits=(8, 4), match_pruning=None, progress=False, seed=3)
UNEVEN = SurvivalConfig(tokens=5 * 1024, eval_tokens=3 * 1024, n_shards=3, **BASE)
"""5 batches of 8 blocks in 3 shards: rank 0 streams 4 batches, rank 1 one; 3 eval batches."""
ONE_BATCH = SurvivalConfig(tokens=1024, eval_tokens=1024, **BASE)
"""1 batch, 1 shard: rank 1 streams nothing and scores nothing."""
BY_CONDITIONS = SurvivalConfig(tokens=2 * 1024, eval_tokens=1024, split_by="conditions", **BASE)
"""3 conditions (reference, INT8, INT4) over 2 ranks: 2 and 1."""
TIMING = ("seconds",)
"""results.json ``info`` keys that differ between runs (wall times)."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread, as each rank has: the same kernels, the same float64 sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stats(result) -> dict[str, np.ndarray]:
    """Every per-feature statistic of a result, by name."""
    out = {f"r/{k}": np.asarray(v) for k, v in result.r.items()}
    out.update({f"r_intervals/{k}": np.asarray(v) for k, v in result.r_intervals.items()})
    ref = result.reference
    for name in (
        "fire_count",
        "sum_activation",
        "sum_activation_firing",
        "sum_sq_firing",
        "peak_activation",
        "firing_rate",
        "mean_when_firing",
    ):
        if hasattr(ref, name):
            out[f"reference/{name}"] = np.asarray(getattr(ref, name))
    out["active"] = np.asarray(result.active)
    return out


def _ranks_worker(configs: list[SurvivalConfig], outs: list[str]) -> list[dict]:
    """On every rank: each audit under the process group; rank 0 saves its folder."""
    model = load_model("cgc-tiny")
    results = []
    for config, out in zip(configs, outs, strict=True):
        result = run_survival(config, model=model)
        if world().is_main:
            result.save(out)
        results.append(
            {
                "stats": _stats(result),
                "ppl": [c.ppl for c in result.conditions],
                "info": result.info,
            }
        )
    return results


def _fail_worker(config: SurvivalConfig) -> None:
    if world().rank == 1:
        raise CgcLensError("injected failure on rank 1 before its sweep")
    run_survival(config, model=load_model("cgc-tiny"))  # waits for rank 1 in the first merge


def _doc(folder: Path) -> dict:
    """results.json without its timings and with the world size blanked."""
    doc = json.loads((folder / "results.json").read_text())
    for key in TIMING:
        doc["info"].pop(key)
    dist = doc["info"].pop("distributed")
    return {**doc, "world": {k: v for k, v in dist.items() if k == "split_by"}}


def _same_folders(one: Path, two: Path) -> None:
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert _doc(one) == _doc(two)
    differ = [f for f in files if (one / f).read_bytes() != (two / f).read_bytes()]
    # results.json holds the timings, MANIFEST.json its checksum (and the figures'), nothing else
    assert set(differ) <= {Path("results.json"), Path("MANIFEST.json")}, [
        (f, _first_difference((one / f).read_bytes(), (two / f).read_bytes())) for f in differ
    ]


def _first_difference(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[max(0, i - 200) : i + 100], b[max(0, i - 200) : i + 100]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], list[Path]]:
    root = tmp_path_factory.mktemp("ranks")
    configs = [UNEVEN, ONE_BATCH, BY_CONDITIONS]
    outs = [root / f"two-{i}" for i in range(len(configs))]
    ranks = run_local(_ranks_worker, 2, args=(configs, [str(o) for o in outs]), timeout_s=300)
    return ranks, outs


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2], ids=["uneven", "empty-rank", "by-conditions"])
def test_two_ranks_equal_one_process(index, two_ranks, _cgc_tiny_cached, tmp_path):
    ranks, outs = two_ranks
    config = [UNEVEN, ONE_BATCH, BY_CONDITIONS][index]
    single = run_survival(config, model=copy.deepcopy(_cgc_tiny_cached))
    want = _stats(single)
    assert want["r/RTN INT4"].size > 0 and len(want) >= 8
    for rank in ranks:  # both ranks end with the whole audit's statistics
        got = rank[index]["stats"]
        assert set(got) == set(want)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-10, err_msg=key)
            np.testing.assert_array_equal(got[key], value, err_msg=key)  # and bit for bit
        assert rank[index]["ppl"] == [c.ppl for c in single.conditions]
    info = ranks[0][index]["info"]["distributed"]
    assert info["world_size"] == 2 and info["split_by"] == config.split_by
    assert single.info["distributed"] == {"world_size": 1, "split_by": config.split_by}
    _same_folders(single.save(tmp_path / "one"), outs[index])


@pytest.mark.slow
def test_a_failing_rank_stops_both_with_its_message():
    t0 = time.monotonic()
    with pytest.raises(CgcLensError, match="rank 1 of 2 failed: CgcLensError: injected failure"):
        run_local(_fail_worker, 2, args=(ONE_BATCH,), timeout_s=60)
    assert time.monotonic() - t0 < 75


def _command(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python *argv`` with one torch thread, its output captured."""
    return subprocess.run([sys.executable, *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, check=False)


def test_torchrun_command_writes_one_folder(tmp_path):
    """``torchrun --standalone --nproc-per-node 2 -m cgc_lens survival``: rank 0 writes the
    folder and prints the table, rank 1 logs to OUT.rank1.log; the folder equals one process's.
    ``torchrun`` is the console script of ``torch.distributed.run``, run here as that module
    (always there with torch, whether or not its scripts are on the path)."""
    args = ["survival", "--bits", "8", "4", "--match-tokens", "1024", "--tokens", "2048",
            "--eval-tokens", "1024", "--quiet"]
    one = _command("-m", "cgc_lens", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _command("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "cgc_lens", *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("RTN INT4") == one.stdout.count("RTN INT4") > 0  # printed once
    log = (tmp_path / "two.rank1.log").read_text()
    assert "rank 1 of 2" in log and not (tmp_path / "two.rank0.log").exists()
    _same_folders(tmp_path / "one", tmp_path / "two")
