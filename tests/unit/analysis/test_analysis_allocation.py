import numpy as np
import pytest
from scipy import stats

from cgc_lens.analysis.allocation import (
    Allocation,
    cgc_l,
    density_ceilings,
    inverted,
    uniform,
)
from cgc_lens.analysis.evolution import EvoConfig, cgc_f, snap_to_levels
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head


def budget(a: Allocation) -> float:
    return float((a.retention * a.sizes).sum())


def test_uniform_and_allocation_views():
    a = uniform((2, 3), 0.4)
    assert a.global_retention == pytest.approx(0.4, abs=1e-15)
    view = a.by_head()
    assert len(view) == 6 and view[Head(1, 2)] == 0.4
    assert a.to_frame().shape[0] == 6
    with pytest.raises(ValueError, match="read-only"):
        a.retention[0, 0] = 1.0


def test_ceilings_follow_def5():
    d = np.array([[0.0, 0.09, 0.49, 1.0]])
    np.testing.assert_allclose(
        density_ceilings(d, rho_min=0.1, rho_max=0.9), 0.1 + 0.8 * np.sqrt(d)
    )
    np.testing.assert_allclose(density_ceilings(d, gamma=1.0), d)
    with pytest.raises(CgcLensError, match="rho_min <= rho_max"):
        density_ceilings(d, rho_min=0.8, rho_max=0.2)


def test_cgc_l_closed_form_without_binding_ceilings():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.6, 0.8, size=(3, 4))
    a = cgc_l(d, rho=0.5)
    np.testing.assert_allclose(a.retention, 0.5 * d / d.mean(), rtol=1e-12)
    sizes = rng.integers(1, 10, size=(3, 4)).astype(float)
    b = cgc_l(d, sizes, 0.5)
    w = d / d.mean()
    np.testing.assert_allclose(b.retention, 0.5 * w * sizes.sum() / (w * sizes).sum(), rtol=1e-12)
    assert budget(b) == pytest.approx(0.5 * sizes.sum(), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_cgc_l_spends_budget_exactly_and_respects_ceilings(seed):
    rng = np.random.default_rng(seed)
    d = rng.random((4, 6)) ** 2
    sizes = rng.integers(1, 20, size=d.shape).astype(float)
    a = cgc_l(d, sizes, 0.45, rho_min=0.15, rho_max=0.95, floor=0.05)
    assert abs(budget(a) - 0.45 * sizes.sum()) <= 1e-9
    assert (a.retention <= a.ceilings + 1e-12).all() and (a.retention >= 0.05 - 1e-12).all()
    np.testing.assert_allclose(a.ceilings, 0.15 + 0.8 * np.sqrt(d))
    # water-filling: the heads strictly between floor and ceiling stay proportional to density
    free = (a.retention > 0.05 + 1e-9) & (a.retention < a.ceilings - 1e-9)
    assert free.sum() >= 2
    ratio = a.retention[free] / d[free]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    at_ceiling = a.retention >= a.ceilings - 1e-9  # clipped heads would have wanted more
    assert (d[at_ceiling] * ratio[0] >= a.ceilings[at_ceiling] - 1e-9).all()


def test_cgc_l_redistributes_what_a_ceiling_cuts():
    d = np.array([[0.01, 0.25, 0.5, 1.0]])  # proportional retention would give the last 1.14
    a = cgc_l(d, rho=0.5)
    lam = 1.0 / 0.76  # the last head sits at its ceiling 1; the others share the remaining 1.0
    np.testing.assert_allclose(a.retention, [[0.01 * lam, 0.25 * lam, 0.5 * lam, 1.0]], rtol=1e-12)
    assert budget(a) == pytest.approx(2.0, abs=1e-12)


def test_zero_density_heads_fill_last_and_infeasible_raises():
    d = np.array([[0.0, 0.0, 0.5, 1.0]])
    a = cgc_l(d, rho=0.4, rho_min=0.3, rho_max=0.6)
    ceil = a.ceilings
    np.testing.assert_allclose(a.retention[0, 2:], ceil[0, 2:])
    np.testing.assert_allclose(a.retention[0, :2], (1.6 - ceil[0, 2:].sum()) / 2)
    assert budget(a) == pytest.approx(1.6, abs=1e-12)
    with pytest.raises(CgcLensError, match=r"Infeasible budget: the ceilings allow .*0\.428"):
        cgc_l(d, rho=0.5, rho_min=0.3, rho_max=0.6)
    with pytest.raises(CgcLensError, match="density 0"):
        cgc_l(np.zeros((2, 2)), rho=0.5)
    with pytest.raises(CgcLensError, match=r"in \[0, 1\]"):
        cgc_l(np.full((2, 2), 1.5), rho=0.5)
    with pytest.raises(CgcLensError, match="exceeds the ceiling"):
        cgc_l(d, rho=0.4, rho_min=0.0, floor=0.2)


def test_shape_checks_name_the_bad_shapes(unchecked):
    # our own checks, for users who run without the type checker (it would pre-empt them here)
    with pytest.raises(CgcLensError, match=r"density's shape \(1, 4\), got \(2, 2\)"):
        cgc_l(np.array([[0.0, 0.0, 0.5, 1.0]]), np.ones((2, 2)), 0.4)
    ok = {"retention": np.full((2, 2), 0.5), "sizes": np.ones((2, 2)), "rho": 0.5, "method": "m"}
    with pytest.raises(CgcLensError, match=r"retention and sizes .*got \(2, 2\), \(2, 3\)"):
        Allocation(**ok | {"sizes": np.ones((2, 3))})


def test_inverted_mirrors_cgc_l():
    rng = np.random.default_rng(1)
    d = rng.uniform(0.5, 0.9, size=(3, 5))
    a, b = cgc_l(d, rho=0.5), inverted(d, rho=0.5)
    assert budget(b) == pytest.approx(budget(a), abs=1e-9)
    assert stats.spearmanr(a.retention.ravel(), b.retention.ravel()).statistic == pytest.approx(-1)
    assert b.method == "inverted"
    sym = np.array([[0.6, 0.7], [0.8, 0.9]])  # symmetric about its mid-range: an exact mirror
    np.testing.assert_allclose(
        inverted(sym, rho=0.5).retention - 0.5, -(cgc_l(sym, rho=0.5).retention - 0.5), atol=1e-12
    )
    ceilings = {"rho_min": 0.2, "rho_max": 0.9, "gamma": 1.5, "floor": 0.1}
    c = inverted(d, np.full(d.shape, 2.0), 0.4, **ceilings)
    ref = cgc_l(d.max() + d.min() - d, np.full(d.shape, 2.0), 0.4, **ceilings)
    np.testing.assert_array_equal(c.retention, ref.retention)
    np.testing.assert_array_equal(c.ceilings, ref.ceilings)


def test_allocation_validation():
    ok = {"retention": np.full((2, 2), 0.5), "sizes": np.ones((2, 2)), "rho": 0.5, "method": "m"}
    with pytest.raises(CgcLensError, match=r"\[0, 1\]"):
        Allocation(**ok | {"retention": np.full((2, 2), 1.5)})
    with pytest.raises(CgcLensError, match="exceeds a ceiling"):
        Allocation(**ok | {"ceilings": np.full((2, 2), 0.4)})
    with pytest.raises(CgcLensError, match="rho"):
        Allocation(**ok | {"rho": 0.0})


def test_snap_keeps_budget_on_grid_within_ceilings():
    rng = np.random.default_rng(2)
    d = rng.random((4, 4))
    a = cgc_l(d, rho=0.5, rho_min=0.1, rho_max=0.9)
    s = snap_to_levels(a, level_step=0.05)
    assert abs(budget(s) - 0.5 * 16) <= 1e-9
    assert (s.retention <= a.ceilings + 1e-12).all()
    np.testing.assert_allclose(s.retention * 20, np.round(s.retention * 20), atol=1e-9)
    # without binding ceilings, largest-remainder rounding moves no head by a full step
    free = cgc_l(rng.uniform(0.4, 0.6, (4, 4)), rho=0.5)
    assert np.abs(snap_to_levels(free).retention - free.retention).max() < 0.05
    with pytest.raises(CgcLensError, match="not reachable"):
        snap_to_levels(uniform((1, 3), 0.55), level_step=0.1)
    with pytest.raises(CgcLensError, match="same size"):
        snap_to_levels(cgc_l(d, rng.integers(1, 5, (4, 4)).astype(float), 0.5))


def quadratic_problem(seed=0, shape=(3, 4), step=0.1):
    """A separable convex fitness whose optimum on the grid is known by greedy allocation."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.2, 1.0, size=shape)
    start = cgc_l(d, rho=0.5, rho_min=0.2, rho_max=0.9)
    target = rng.uniform(0.0, 1.0, size=shape)
    n_levels = round(1 / step)
    kmax = np.floor(start.ceilings * n_levels + 1e-9).astype(int).ravel()
    # greedy on marginal gains is optimal for separable convex resource allocation
    k = np.zeros(target.size, int)
    for _ in range(round(0.5 * target.size * n_levels)):
        gain = (k / n_levels - target.ravel()) ** 2 - ((k + 1) / n_levels - target.ravel()) ** 2
        gain[k >= kmax] = -np.inf
        k[int(np.argmax(gain))] += 1
    optimum = float((((k / n_levels) - target.ravel()) ** 2).sum())
    return start, target, optimum


def test_cgc_f_finds_the_optimum_keeps_budget_and_ceilings():
    start, target, optimum = quadratic_problem()
    calls = []

    def fitness(ret, n_tokens):
        r = np.array([[ret[Head(ell, h)] for h in range(4)] for ell in range(3)])
        assert abs(r.sum() - 6.0) <= 1e-9  # every candidate spends exactly the budget
        assert (r <= start.ceilings + 1e-12).all()
        calls.append(n_tokens)
        return float(((r - target) ** 2).sum())

    cfg = EvoConfig(
        generations=60,
        offspring=6,
        survivors_per_stage=(2, 1),
        tokens_per_stage=(16, 64),
        level_step=0.1,
        seed=0,
        progress=False,
    )
    res = cgc_f(start, fitness, cfg)
    assert res.history[-1] == pytest.approx(optimum, abs=1e-12)
    assert (np.diff(res.history) <= 1e-12).all()  # elitism: never worse
    assert abs(budget(res.allocation) - 6.0) <= 1e-9
    assert (res.allocation.retention <= start.ceilings + 1e-12).all()
    assert res.allocation.method == "cgc_f" and len(res.history) == 61
    # multi-stage: offspring on 16 tokens, the 2 survivors + the parent on 64
    assert calls[0] == 64 and calls[1:7] == [16] * 6 and calls[7:10] == [64] * 3
    assert res.n_evaluations == len(calls) == 1 + 60 * 9
    assert res.to_frame().shape == (61, 2)


def test_cgc_f_is_reproducible_by_seed():
    start, target, _ = quadratic_problem(seed=1)

    def fitness(ret, n_tokens):
        r = np.array([[ret[Head(ell, h)] for h in range(4)] for ell in range(3)])
        return float(np.abs(r - target).sum())

    cfg = EvoConfig(
        generations=8, offspring=4, level_step=0.1, progress=False, seed=5, tokens_per_stage=(1, 2)
    )
    a, b = cgc_f(start, fitness, cfg), cgc_f(start, fitness, cfg)
    np.testing.assert_array_equal(a.history, b.history)
    np.testing.assert_array_equal(a.allocation.retention, b.allocation.retention)


def test_cgc_f_errors():
    start = cgc_l(np.array([[0.3, 0.6], [0.9, 0.5]]), rho=0.5)
    cfg = EvoConfig(generations=1, offspring=2, level_step=0.1, progress=False)
    with pytest.raises(CgcLensError, match="finite"):
        cgc_f(start, lambda ret, n: float("nan"), cfg)
    for kwargs, msg in (
        ({"survivors_per_stage": (2, 2)}, "last"),
        ({"tokens_per_stage": (10, 5)}, "non-decreasing"),
        ({"survivors_per_stage": (1, 2, 1), "tokens_per_stage": (1, 2, 3)}, "non-increasing"),
        ({"level_step": 0.3}, "divide 1"),
        ({"offspring": 0}, "offspring"),
    ):
        with pytest.raises(CgcLensError, match=msg):
            EvoConfig(**kwargs)


def test_cgc_f_from_starts_keeps_a_start_that_stays_better() -> None:
    from cgc_lens.analysis.evolution import cgc_f_from_starts

    # The unsnapped start (0.33 per head) is off the 0.1 grid, so the search cannot reach it.
    def fit(ret, n_tokens):
        return sum(abs(ret[Head(0, h)] - 0.33) for h in range(3))

    cfg = EvoConfig(generations=2, offspring=2, level_step=0.1, progress=False,
                    tokens_per_stage=(8,), survivors_per_stage=(1,))
    starts = {"a": cgc_l(np.array([[0.3, 0.3, 0.4]]), rho=0.4),
              "b": uniform((1, 3), 0.4)}
    best = cgc_f_from_starts(starts, fit, cfg)
    assert best.start == min(best.start_fitness, key=best.start_fitness.__getitem__)
    assert best.fitness == min([*best.start_fitness.values(), float(best.search.history[-1])])
    assert best.allocation.method == "cgc_f"
    if best.origin != "search":
        np.testing.assert_array_equal(best.allocation.retention,
                                      starts[best.origin].retention)

