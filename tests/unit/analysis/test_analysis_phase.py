import numpy as np
import pytest

from cgc_lens.analysis.phase import phase_transition_point, phase_transition_points
from cgc_lens.errors import CgcLensError

SPARSITY = np.linspace(0.0, 0.9, 19)  # step 0.05


def hockey_stick(x, knee, slope=20.0):
    return 0.05 * x + slope * np.maximum(0.0, x - knee)


@pytest.mark.parametrize("method", ["kneedle", "curvature"])
def test_finds_the_kink_of_a_hockey_stick(method):
    y = hockey_stick(SPARSITY, 0.6)
    res = phase_transition_point(SPARSITY, y, method=method)
    assert res.found and res.x == pytest.approx(0.6) and res.y == pytest.approx(y[res.index])
    assert res.method == method and res.score.shape == SPARSITY.shape


def test_answer_does_not_depend_on_units_order_or_direction():
    y = hockey_stick(SPARSITY, 0.45)
    ref = phase_transition_point(SPARSITY, y).x
    perm = np.random.default_rng(0).permutation(SPARSITY.size)
    assert phase_transition_point(SPARSITY[perm], y[perm]).x == pytest.approx(ref)
    assert phase_transition_point(SPARSITY, 100 * y + 7).x == pytest.approx(ref)
    retention = 1.0 - SPARSITY  # the same curve read against retention
    assert phase_transition_point(retention, y).x == pytest.approx(1.0 - ref)


def test_kneedle_is_the_farthest_point_from_the_chord():
    x = np.array([0.0, 0.1, 0.3, 0.35, 0.6, 1.0])
    y = np.array([0.0, 0.05, 0.1, 0.4, 0.8, 1.0])
    p, q = np.array([x[0], y[0]]), np.array([x[-1], y[-1]])
    dist = [
        abs(np.cross(q - p, np.array([a, b]) - p)) / np.linalg.norm(q - p)
        for a, b in zip(x, y, strict=True)
    ]
    res = phase_transition_point(x, y)
    np.testing.assert_allclose(res.score, dist, atol=1e-12)
    assert res.index == int(np.argmax(dist))


def test_straight_or_flat_curves_have_no_knee():
    for y in (3 * SPARSITY + 1, np.ones_like(SPARSITY)):
        for method in ("kneedle", "curvature"):
            res = phase_transition_point(SPARSITY, y, method=method)
            assert not res.found and np.isnan(res.x) and res.index == -1
    weak = hockey_stick(SPARSITY, 0.5, slope=0.01)
    assert phase_transition_point(SPARSITY, weak).found
    assert not phase_transition_point(SPARSITY, weak, min_score=0.5).found


def test_many_curves():
    ys = np.stack([hockey_stick(SPARSITY, k) for k in (0.3, 0.5, 0.7)] + [SPARSITY])
    got = phase_transition_points(SPARSITY, ys)
    np.testing.assert_allclose(got[:3], [0.3, 0.5, 0.7])
    assert np.isnan(got[3])


def test_bad_input_raises(unchecked):  # our checks, which users meet
    with pytest.raises(CgcLensError, match=">= 3"):
        phase_transition_point(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(CgcLensError, match="distinct"):
        phase_transition_point(np.array([0.0, 0.5, 0.5]), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(CgcLensError, match="finite"):
        phase_transition_point(np.array([0.0, 0.5, 1.0]), np.array([0.0, np.nan, 2.0]))
    with pytest.raises(CgcLensError, match="method must be 'kneedle' or 'curvature', got 'elbow'"):
        phase_transition_point(SPARSITY, SPARSITY, method="elbow")
    with pytest.raises(CgcLensError, match=r"ys must be \[n_curves, n_points\], got shape \(19,\)"):
        phase_transition_points(SPARSITY, SPARSITY)


def test_points_of_curves_with_missing_values_are_nan_on_request() -> None:
    s = np.linspace(0.0, 0.9, 10)
    ys = np.stack([np.maximum(0, s - 0.3) * 10, np.full(10, np.nan)])
    with pytest.raises(CgcLensError):
        phase_transition_points(s, ys)
    points = phase_transition_points(s, ys, nonfinite="nan")
    assert points[0] == pytest.approx(0.3) and np.isnan(points[1])
