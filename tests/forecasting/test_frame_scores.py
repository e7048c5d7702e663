import numpy as np
import pytest

from forecasting.frame_scores import CausalSmoother, person_frame_scores, smooth, worst_person


def test_placement_end_and_cover() -> None:
    end = person_frame_scores(np.array([5, 6, 7]), np.array([1.0, 2.0, 3.0]), 10)
    assert np.isnan(end[:5]).all() and end[5:8].tolist() == [1, 2, 3] and np.isnan(end[8:]).all()
    cover = person_frame_scores(np.array([5, 6]), np.array([1.0, 3.0]), 10, "cover", horizon=3)
    # frame 4 is covered by windows ending at 5 and 6, frame 3 only by 5, frame 6 only by 6.
    assert cover[3] == 1.0 and cover[4] == 2.0 and cover[5] == 2.0 and cover[6] == 3.0
    assert np.isnan(cover[2]) and np.isnan(cover[7])
    out_of_range = person_frame_scores(np.array([-1, 12]), np.array([1.0, 1.0]), 10)
    assert np.isnan(out_of_range).all()


def test_frame_score_is_the_worst_person_and_empty_frames_get_the_lowest() -> None:
    a = np.array([np.nan, 1.0, 5.0, np.nan])
    b = np.array([np.nan, 3.0, 2.0, np.nan])
    f = worst_person([a, b], 4)
    assert f.tolist() == [3.0, 3.0, 5.0, 3.0]  # empty frames: the lowest frame score (3)
    assert worst_person([a], 4, empty=-7.0).tolist() == [-7.0, 1.0, 5.0, -7.0]
    assert worst_person([], 3).tolist() == [0.0, 0.0, 0.0]


def test_smoothing_offline_and_causal() -> None:
    x = np.zeros(101)
    x[50] = 1.0
    off = smooth(x, 5.0)
    assert off.sum() == pytest.approx(1.0, abs=1e-6)
    assert off.argmax() == 50 and off[45] == pytest.approx(off[55])
    cau = smooth(x, 5.0, causal=True)
    assert (cau[:50] == 0).all()  # nothing before the event: causal
    assert cau.argmax() == 50 and cau.sum() == pytest.approx(1.0, abs=1e-6)
    assert smooth(x, 0).tolist() == x.tolist()
    const = smooth(np.full(30, 2.5), 3.0, causal=True)
    np.testing.assert_allclose(const, 2.5)


def test_streaming_smoother_equals_batch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    sm = CausalSmoother(4.0)
    np.testing.assert_allclose([sm.update(v) for v in x], smooth(x, 4.0, causal=True), atol=1e-12)
