"""Streaming Pearson and reference statistics against materialised numpy (QDM App. I)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgc_lens import CgcLensError
from cgc_lens.analysis import accumulator_base
from cgc_lens.analysis.accumulators import (
    PearsonAccumulator,
    ReferenceAccumulator,
    ZeroVariance,
    merge_all,
)

BATCHES = (7, 130, 1, 64, 333, 2)  # uneven on purpose, including a single-row batch


def sae_like(n: int, d_sae: int, *, noise: float | np.ndarray, seed: int = 0):
    """Sparse non-negative reference codes and a condition with per-feature noise of known scale."""
    g = torch.Generator().manual_seed(seed)
    bias = torch.linspace(-2.0, 0.5, d_sae)  # firing rates from ~2% to ~70%
    pre = torch.randn(n, d_sae, generator=g) + bias
    ref = torch.relu(pre) * torch.linspace(0.5, 5.0, d_sae)
    scale = torch.as_tensor(noise, dtype=torch.float32)
    other = torch.relu(pre + scale * torch.randn(n, d_sae, generator=g)) * torch.linspace(
        0.5, 5.0, d_sae
    )
    return ref, other


def numpy_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(x.shape[1])])


def accumulate(ref, other, sizes=BATCHES):
    acc = PearsonAccumulator(ref.shape[-1])
    for a, b in zip(ref.split(list(sizes)), other.split(list(sizes)), strict=True):
        acc.update(a, b)
    return acc


def test_streaming_r_matches_numpy_corrcoef_over_uneven_batches():
    ref, other = sae_like(sum(BATCHES), 16, noise=np.linspace(0.05, 2.0, 16))
    r = accumulate(ref, other).pearson()
    expected = numpy_corr(ref.double().numpy(), other.double().numpy())
    np.testing.assert_allclose(r, expected, rtol=0, atol=1e-9)
    assert r.dtype == np.float64


def test_merge_across_shards_equals_single_pass():
    ref, other = sae_like(sum(BATCHES), 12, noise=0.3, seed=1)
    whole = accumulate(ref, other)
    shard_a, shard_b = PearsonAccumulator(12), PearsonAccumulator(12)
    pairs = zip(ref.split(list(BATCHES)), other.split(list(BATCHES)), strict=True)
    for i, (a, b) in enumerate(pairs):
        (shard_a if i % 2 else shard_b).update(a, b)
    merged = merge_all([shard_a, shard_b])
    assert merged.n_tokens == whole.n_tokens == sum(BATCHES)
    assert shard_a.n_tokens + shard_b.n_tokens == sum(BATCHES)  # merge_all copies, never mutates
    expected = numpy_corr(ref.double().numpy(), other.double().numpy())
    np.testing.assert_allclose(merged.pearson(), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(merged.pearson(), whole.pearson(), rtol=0, atol=1e-12)


def test_state_dict_round_trip_and_empty_merge():
    ref, other = sae_like(50, 4, noise=0.5)
    acc = PearsonAccumulator(4).update(ref, other)
    restored = PearsonAccumulator(4).load_state_dict(acc.state_dict())
    np.testing.assert_array_equal(restored.pearson(), acc.pearson())
    assert PearsonAccumulator(4).merge(acc).n_tokens == 50
    assert acc.copy().merge(PearsonAccumulator(4)).n_tokens == 50
    with pytest.raises(CgcLensError, match="state keys"):
        PearsonAccumulator(4).load_state_dict({"sum_x": torch.zeros(4)})


def test_chunked_update_and_leading_dims(monkeypatch):
    ref, other = sae_like(96, 8, noise=0.4, seed=2)
    plain = PearsonAccumulator(8).update(ref, other).pearson()
    monkeypatch.setattr(accumulator_base, "CHUNK_ELEMENTS", 8 * 5)  # 5 rows per chunk
    chunked = PearsonAccumulator(8).update(ref.reshape(4, 24, 8), other.reshape(4, 24, 8))
    assert chunked.n_tokens == 96
    np.testing.assert_allclose(chunked.pearson(), plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_accumulate_in_float64(dtype):
    ref, other = sae_like(300, 6, noise=0.5, seed=3)
    ref, other = ref.to(dtype), other.to(dtype)
    r = PearsonAccumulator(6).update(ref, other).pearson()
    expected = numpy_corr(ref.double().numpy(), other.double().numpy())
    np.testing.assert_allclose(r, expected, rtol=0, atol=1e-9)


def test_null_condition_gives_r_exactly_one():
    ref, _ = sae_like(sum(BATCHES), 32, noise=0.0, seed=4)
    r = accumulate(ref, ref.clone()).pearson()
    assert (r == 1.0).all()


def test_dense_offset_feature_survives_cancellation():
    # Dense feature with mean 10 and spread 0.01: var/E[x^2] = 1e-6, the risky regime of Eq. I.2.
    g = torch.Generator().manual_seed(5)
    x = 10 + 0.01 * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    y = x + 0.005 * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    acc = PearsonAccumulator(1)
    for a, b in zip(x.split(333), y.split(333), strict=True):
        acc.update(a, b)
    expected = np.corrcoef(x[:, 0].numpy(), y[:, 0].numpy())[0, 1]
    assert abs(acc.pearson()[0] - expected) < 1e-7


def test_zero_variance_outcomes_are_explicit():
    n = 40
    g = torch.Generator().manual_seed(6)
    varying = torch.rand(n, generator=g)
    ref = torch.stack([
        torch.zeros(n),          # dead in both
        torch.full((n,), 3.0),   # constant reference, varying condition
        varying,                 # varying reference, condition switched off
        torch.full((n,), 2.0),   # constant in both, different values
        torch.full((n,), 1e3),   # large constant in both, equal: rounding must not break it
        varying,                 # ordinary
    ], dim=1)  # fmt: skip
    other = ref.clone()
    other[:, 1] = torch.rand(n, generator=g)
    other[:, 2] = 0.0
    other[:, 3] = 5.0
    other[:, 5] = varying + 0.1 * torch.rand(n, generator=g)
    acc = PearsonAccumulator(6).update(ref, other)
    codes = acc.zero_variance().tolist()
    assert codes == [
        ZeroVariance.FLAT_BOTH_EQUAL, ZeroVariance.FLAT_REFERENCE, ZeroVariance.FLAT_OTHER,
        ZeroVariance.FLAT_BOTH_DIFFERENT, ZeroVariance.FLAT_BOTH_EQUAL, ZeroVariance.NONE,
    ]  # fmt: skip
    r = acc.pearson()
    assert r[0] == 1.0 and r[4] == 1.0 and r[2] == 0.0
    assert np.isnan(r[1]) and np.isnan(r[3])
    assert 0.9 < r[5] < 1.0
    assert np.isnan(acc.pearson(flat_other="undefined")[2])


def test_bad_inputs_raise(unchecked):
    acc = PearsonAccumulator(3)
    with pytest.raises(CgcLensError, match="no tokens"):
        acc.pearson()
    with pytest.raises(CgcLensError, match="identical positions"):
        acc.update(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(CgcLensError, match="d_sae=3"):
        acc.update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(CgcLensError, match="floating-point"):
        acc.update(torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(CgcLensError, match="positive int"):
        PearsonAccumulator(0)
    with pytest.raises(CgcLensError, match="flat_other"):
        PearsonAccumulator(3).update(torch.rand(4, 3), torch.rand(4, 3)).pearson(flat_other="x")
    bad = torch.rand(4, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(CgcLensError, match="Non-finite"):
        PearsonAccumulator(3).update(bad, torch.rand(4, 3)).pearson()
    with pytest.raises(CgcLensError, match="lives on meta"):
        PearsonAccumulator(3, device="meta").update(torch.rand(4, 3), torch.rand(4, 3))
    with pytest.raises(CgcLensError, match="different settings"):
        wider = PearsonAccumulator(4).update(torch.rand(2, 4), torch.rand(2, 4))
        PearsonAccumulator(3).merge(wider)
    with pytest.raises(CgcLensError, match="Cannot merge"):
        PearsonAccumulator(3).merge(ReferenceAccumulator(3))


def test_empty_batch_is_a_no_op():
    acc = PearsonAccumulator(3).update(torch.zeros(0, 3), torch.zeros(0, 3))
    assert acc.n_tokens == 0


def test_reference_accumulator_matches_numpy():
    ref, _ = sae_like(sum(BATCHES), 10, noise=0.0, seed=7)
    acc = ReferenceAccumulator(10)
    parts = [ReferenceAccumulator(10).update(chunk) for chunk in ref.split(list(BATCHES))]
    for chunk in ref.split(list(BATCHES)):
        acc.update(chunk)
    x = ref.double().numpy()
    fires = x > 0
    for stats in (acc.stats(), merge_all(parts).stats()):
        assert stats.n_tokens == x.shape[0]
        np.testing.assert_array_equal(stats.fire_count, fires.sum(0))
        np.testing.assert_allclose(stats.firing_rate, fires.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.peak_activation, x.max(0), rtol=1e-12)
        np.testing.assert_allclose(stats.mean_activation, x.mean(0), rtol=1e-12)
        mean_fire = (x * fires).sum(0) / fires.sum(0)
        np.testing.assert_allclose(stats.mean_when_firing, mean_fire, rtol=1e-12)
        np.testing.assert_allclose(
            stats.second_moment_when_firing, (x**2 * fires).sum(0) / fires.sum(0), rtol=1e-12
        )


def test_reference_threshold_and_never_firing_feature():
    x = torch.tensor([[0.5, 0.0], [2.0, 0.0], [1.5, 0.0]])
    stats = ReferenceAccumulator(2, fire_threshold=1.0).update(x).stats()
    assert stats.fire_count.tolist() == [2, 0]
    assert stats.mean_when_firing.tolist() == [1.75, 0.0]  # defined as 0 when it never fires
    with pytest.raises(CgcLensError, match="different settings"):
        ReferenceAccumulator(2).merge(ReferenceAccumulator(2, fire_threshold=1.0).update(x))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="checks the float64 sums on a CUDA device against CPU; no CUDA here")
def test_cuda_matches_cpu():
    ref, other = sae_like(sum(BATCHES), 16, noise=0.3)
    cpu = accumulate(ref, other)
    gpu = accumulate(ref.cuda(), other.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.pearson(), cpu.pearson(), rtol=0, atol=1e-12)
    merged = cpu.copy().merge(gpu)  # shards on different devices merge onto self's device
    np.testing.assert_allclose(merged.pearson(), cpu.pearson(), rtol=0, atol=1e-12)
    ref_gpu = ReferenceAccumulator(16).update(ref.cuda()).stats()
    ref_cpu = ReferenceAccumulator(16).update(ref).stats()
    np.testing.assert_array_equal(ref_gpu.fire_count, ref_cpu.fire_count)
    np.testing.assert_allclose(ref_gpu.peak_activation, ref_cpu.peak_activation)
