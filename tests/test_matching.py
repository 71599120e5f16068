"""Tests for mrcnn_np.matching: the Matcher and the balanced sampler.

Golden matcher cases are small quality matrices whose answer is worked out by
hand in the comments (per anchor: best ground truth and its quality, then the
threshold rule, then the low-quality restoration).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    balanced_positive_negative_sampler,
    matcher,
    matcher_naive,
)

BOTH = [matcher, matcher_naive]


def test_codes():
    assert BELOW_LOW_THRESHOLD == -1
    assert BETWEEN_THRESHOLDS == -2


@pytest.mark.parametrize("fn", BOTH)
def test_threshold_boundaries(fn):
    # one GT; qualities 0.7 (== high -> positive), 0.69 (between), 0.3 (== low -> between),
    # 0.29 (below low). The GT's best anchor is a0, already positive.
    m = np.array([[0.7, 0.69, 0.3, 0.29]])
    for allow in (True, False):
        out = fn(m, allow_low_quality_matches=allow)
        np.testing.assert_array_equal(out, [0, -2, -2, -1])
        assert out.dtype == np.int64


@pytest.mark.parametrize("fn", BOTH)
def test_custom_thresholds(fn):
    # RoI-heads setting: 0.5 / 0.5 -> no "between" band
    m = np.array([[0.5, 0.49, 0.1]])
    out = fn(m, high_threshold=0.5, low_threshold=0.5, allow_low_quality_matches=False)
    np.testing.assert_array_equal(out, [0, -1, -1])


@pytest.mark.parametrize("fn", BOTH)
def test_ties_of_a_gt_best_all_kept(fn):
    # a0: best g0 (0.5) -> between; a1: best g0 (0.5) -> between
    # a2: best g1 (0.8) -> 1;        a3: best g1 (0.25) -> below
    # g0's maximum 0.5 is reached by a0 AND a1 -> both restored to g0
    m = np.array([[0.5, 0.5, 0.2, 0.1],
                  [0.1, 0.0, 0.8, 0.25]])
    np.testing.assert_array_equal(fn(m), [0, 0, 1, -1])
    np.testing.assert_array_equal(fn(m, allow_low_quality_matches=False), [-2, -2, 1, -1])


@pytest.mark.parametrize("fn", BOTH)
def test_gt_touched_only_by_low_quality_anchors(fn):
    # g1 overlaps only a1 (0.2) and a2 (0.1): both below 0.3 -> -1,
    # but a1 is g1's best anchor -> restored to its own argmax, g1.
    m = np.array([[0.9, 0.0, 0.0],
                  [0.0, 0.2, 0.1]])
    np.testing.assert_array_equal(fn(m), [0, 1, -1])
    np.testing.assert_array_equal(fn(m, allow_low_quality_matches=False), [0, -1, -1])


@pytest.mark.parametrize("fn", BOTH)
def test_low_quality_anchor_keeps_its_own_argmax(fn):
    # g1's best anchor is a0 (0.4), but a0's own best GT is g0 (0.6):
    # a0 is restored to g0, not g1 (torchvision restores all_matches[a]).
    # a1: best g0 at 0.1 -> below, and no GT has its maximum at a1.
    m = np.array([[0.6, 0.1],
                  [0.4, 0.05]])
    np.testing.assert_array_equal(fn(m), [0, -1])


@pytest.mark.parametrize("fn", BOTH)
def test_gt_overlapping_nothing_torchvision_quirk(fn):
    # g1 has IoU 0 with everything: its maximum is 0, reached by every anchor,
    # so every anchor is restored to its own argmax (g0 for all; ties -> first).
    m = np.array([[0.8, 0.0, 0.0],
                  [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(fn(m), [0, 0, 0])


@pytest.mark.parametrize("fn", BOTH)
def test_argmax_tie_between_gts_goes_to_first(fn):
    m = np.array([[0.75, 0.1], [0.75, 0.9]])
    np.testing.assert_array_equal(fn(m, allow_low_quality_matches=False), [0, 1])


@pytest.mark.parametrize("fn", BOTH)
def test_empty(fn):
    out = fn(np.zeros((0, 5)))
    np.testing.assert_array_equal(out, [-1] * 5)
    assert out.dtype == np.int64
    out = fn(np.zeros((3, 0)))
    assert out.shape == (0,) and out.dtype == np.int64


@settings(max_examples=60)
@given(
    g=st.integers(1, 5),
    a=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    low=st.sampled_from([0.0, 0.25, 0.3, 0.5]),
    allow=st.booleans(),
)
def test_fast_equals_naive(g, a, seed, low, allow):
    rng = np.random.default_rng(seed)
    # coarse values -> plenty of ties, and values exactly on the thresholds
    m = rng.integers(0, 11, size=(g, a)) / 10.0
    kw = dict(high_threshold=0.7, low_threshold=low, allow_low_quality_matches=allow)
    np.testing.assert_array_equal(matcher(m, **kw), matcher_naive(m, **kw))


@settings(max_examples=40)
@given(g=st.integers(1, 6), a=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_every_gt_gets_a_match_with_low_quality(g, a, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((g, a)) * 0.5  # all below high
    out = matcher(m)
    for gi in range(g):
        best = np.flatnonzero(m[gi] == m[gi].max())
        # every best anchor of this GT is matched (to its own argmax)
        np.testing.assert_array_equal(out[best], np.argmax(m[:, best], axis=0))
    # matched values always lie in [-2, G)
    assert out.min() >= -2 and out.max() < g


def test_matcher_bad_inputs():
    with pytest.raises(ValueError, match="match_quality_matrix"):
        matcher(np.zeros(4))
    with pytest.raises(TypeError, match="match_quality_matrix"):
        matcher(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="match_quality_matrix"):
        matcher([[0.1, 0.2]])
    with pytest.raises(ValueError, match="match_quality_matrix"):
        matcher(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="low_threshold"):
        matcher(np.zeros((2, 3)), high_threshold=0.3, low_threshold=0.7)
    with pytest.raises(TypeError, match="high_threshold"):
        matcher(np.zeros((2, 3)), high_threshold="0.7")


# ----------------------------------------------------------------- sampler


def _labels(num_pos, num_neg, num_ignore, seed=0):
    lab = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignore, dtype=np.int64)
    return np.random.default_rng(seed).permutation(lab)


@pytest.mark.parametrize(
    "num_pos,num_neg,batch,fraction,want_pos,want_neg",
    [
        (300, 1000, 256, 0.5, 128, 128),  # enough of both: exact quotas
        (10, 1000, 256, 0.5, 10, 246),    # few positives: negatives fill up to 256
        (10, 20, 256, 0.5, 10, 20),       # too few of both: take all
        (300, 50, 256, 0.5, 128, 50),     # few negatives: positives stay capped
        (7, 7, 5, 0.5, 2, 3),             # int(5 * 0.5) = 2 positives, 5 - 2 = 3 negatives
        (40, 40, 512, 0.25, 40, 40),
        (200, 600, 512, 0.25, 128, 384),  # RoI heads preset: 512 * 0.25 = 128
        (0, 30, 16, 0.5, 0, 16),
    ],
)
def test_sampler_counts(num_pos, num_neg, batch, fraction, want_pos, want_neg):
    labels = _labels(num_pos, num_neg, 17)
    pos, neg = balanced_positive_negative_sampler(
        labels, batch_size_per_image=batch, positive_fraction=fraction,
        rng=np.random.default_rng(3))
    assert pos.dtype == bool and neg.dtype == bool
    assert pos.shape == labels.shape and neg.shape == labels.shape
    assert pos.sum() == want_pos and neg.sum() == want_neg
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    assert not np.any(pos & neg)


def test_sampler_class_labels_are_positive():
    # RoI heads pass class labels (2, 3, ...) as positives
    labels = np.array([0, 3, -1, 2, 0, 1, 0], dtype=np.int64)
    pos, neg = balanced_positive_negative_sampler(
        labels, batch_size_per_image=100, positive_fraction=0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(pos, labels >= 1)
    np.testing.assert_array_equal(neg, labels == 0)


def test_sampler_float_labels():
    labels = np.array([1.0, 0.0, -1.0, 0.0])
    pos, neg = balanced_positive_negative_sampler(
        labels, batch_size_per_image=4, positive_fraction=0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(pos, [True, False, False, False])
    np.testing.assert_array_equal(neg, [False, True, False, True])


def test_sampler_reproducible_and_seed_dependent():
    labels = _labels(300, 1000, 100)
    kw = dict(batch_size_per_image=256, positive_fraction=0.5)
    a = balanced_positive_negative_sampler(labels, rng=np.random.default_rng(7), **kw)
    b = balanced_positive_negative_sampler(labels, rng=np.random.default_rng(7), **kw)
    c = balanced_positive_negative_sampler(labels, rng=np.random.default_rng(8), **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_sampler_is_uniform():
    # 10 positives, 3 drawn per call: each is picked with probability 0.3.
    # Over 3000 calls the count is Binomial(3000, 0.3): mean 900, sd ~25.
    labels = np.array([1] * 10 + [0] * 10)
    rng = np.random.default_rng(0)
    counts = np.zeros(20)
    for _ in range(3000):
        pos, neg = balanced_positive_negative_sampler(
            labels, batch_size_per_image=6, positive_fraction=0.5, rng=rng)
        counts += pos + neg
    assert np.all(np.abs(counts - 900) < 150)


@settings(max_examples=50)
@given(
    num_pos=st.integers(0, 60), num_neg=st.integers(0, 60), num_ign=st.integers(0, 10),
    batch=st.integers(1, 80), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 1000),
)
def test_sampler_never_exceeds_quotas(num_pos, num_neg, num_ign, batch, fraction, seed):
    labels = _labels(num_pos, num_neg, num_ign, seed)
    pos, neg = balanced_positive_negative_sampler(
        labels, batch_size_per_image=batch, positive_fraction=fraction,
        rng=np.random.default_rng(seed))
    quota = int(batch * fraction)
    assert pos.sum() == min(quota, num_pos)
    assert neg.sum() == min(batch - pos.sum(), num_neg)
    assert pos.sum() + neg.sum() <= batch
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)


def test_sampler_bad_inputs():
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, -1])
    with pytest.raises(ValueError, match="labels"):
        balanced_positive_negative_sampler(labels[None], batch_size_per_image=2,
                                           positive_fraction=0.5, rng=rng)
    with pytest.raises(TypeError, match="labels"):
        balanced_positive_negative_sampler(labels.astype(bool), batch_size_per_image=2,
                                           positive_fraction=0.5, rng=rng)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        balanced_positive_negative_sampler(labels, batch_size_per_image=0,
                                           positive_fraction=0.5, rng=rng)
    with pytest.raises(ValueError, match="positive_fraction"):
        balanced_positive_negative_sampler(labels, batch_size_per_image=2,
                                           positive_fraction=1.5, rng=rng)
    with pytest.raises(TypeError, match="rng"):
        balanced_positive_negative_sampler(labels, batch_size_per_image=2,
                                           positive_fraction=0.5, rng=0)
    with pytest.raises(TypeError, match="rng"):
        balanced_positive_negative_sampler(labels, batch_size_per_image=2, positive_fraction=0.5,
                                           rng=np.random.RandomState(0))
