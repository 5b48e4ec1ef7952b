"""Uncertain regions by hand: sizes, means, score = expected wrong voxels, order, min_size, centroid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_sscce.uncertainty import label_regions, rank_slices, volume_score


def _error_of_entropy(h: float) -> float:
    """The e in [0, 0.5] whose normalised binary entropy is ``h`` (bisection; the contract's reading of u)."""
    lo, hi = 0.0, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2
        if -(mid * math.log(mid) + (1 - mid) * math.log(1 - mid)) / math.log(2) < h:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _maps():
    shape = (4, 8, 10)
    entropy = np.zeros(shape, np.float32)
    kl = np.zeros(shape, np.float32)
    entropy[0:2, 0:2, 0:3] = 0.9  # region A: 12 voxels, u = 0.9
    kl[0:2, 0:2, 0:3] = 0.2
    entropy[2:4, 5:6, 5:10] = 0.3  # region B: 10 voxels, u = max(0.3, 0.8) = 0.8
    kl[2:4, 5:6, 5:10] = 0.8
    return entropy, kl


def test_label_regions_by_hand():
    entropy, kl = _maps()
    image, regions = label_regions(entropy, kl, spacing=(2.0, 1.0, 0.5), threshold=0.5, min_size=10)
    assert [r.size_voxels for r in regions] == [12, 10]
    a, b = regions
    # score = expected wrong voxels = sum of the error probability that u implies
    assert a.score == pytest.approx(12 * _error_of_entropy(0.9), rel=1e-4)
    assert b.score == pytest.approx(10 * _error_of_entropy(0.8), rel=1e-4)
    assert (a.mean_entropy, a.mean_kl, a.mean_uncertainty) == pytest.approx((0.9, 0.2, 0.9), rel=1e-5)
    assert (b.mean_entropy, b.mean_kl, b.mean_uncertainty) == pytest.approx((0.3, 0.8, 0.8), rel=1e-5)
    assert a.volume_mm3 == pytest.approx(12 * 2.0 * 1.0 * 0.5)
    assert a.centroid == pytest.approx((0.5, 0.5, 1.0))
    assert b.centroid == pytest.approx((2.5, 5.0, 7.0))
    assert tuple(a.bbox) == (0, 0, 0, 2, 2, 3)
    assert (a.id, b.id) == (1, 2)
    assert int((image == 1).sum()) == 12 and int((image == 2).sum()) == 10 and int((image > 0).sum()) == 22
    # min_size is inclusive: 10 keeps B, 11 drops it
    assert [r.size_voxels for r in label_regions(entropy, kl, threshold=0.5, min_size=11)[1]] == [12]
    # without the KL map, B (entropy 0.3) is not uncertain
    assert [r.size_voxels for r in label_regions(entropy, None, threshold=0.5, min_size=10)[1]] == [12]
    assert label_regions(entropy, kl, threshold=0.5, min_size=10, max_regions=1)[1][0].size_voxels == 12


def test_rank_slices_by_hand():
    u = np.zeros((3, 2, 2), np.float32)
    u[1] = [[0.6, 0.2], [0.05, 0.0]]  # busy (u >= 0.1): 0.6 and 0.2
    u[2] = [[0.3, 0.0], [0.0, 0.0]]
    labels = np.zeros(u.shape, np.uint8)
    labels[1, 0, :] = 1
    labels[2] = 2
    slices = rank_slices(u, labels=labels)
    assert [s.index for s in slices] == [1, 2, 0]
    one, two, zero = slices
    assert one.score == pytest.approx(sum(_error_of_entropy(v) for v in (0.6, 0.2, 0.05)), rel=1e-4)
    assert one.mean_uncertainty == pytest.approx(0.4, rel=1e-6)  # (0.6 + 0.2) / 2, 0.05 is not busy
    assert two.mean_uncertainty == pytest.approx(0.3, rel=1e-6)
    assert (zero.score, zero.mean_uncertainty) == (0.0, 0.0)
    assert [s.foreground_voxels for s in slices] == [2, 4, 0]


def test_volume_score_of_a_single_voxel_is_its_uncertainty():
    assert volume_score(np.full((1, 1, 1), 0.7, np.float32)) == pytest.approx(0.7)
    assert volume_score(np.full((1, 1, 1), 0.7, np.float32), labels=np.ones((1, 1, 1), np.uint8)) == \
        pytest.approx(0.7)


def test_a_single_uncertain_voxel_is_a_region_when_min_size_allows_it():
    u = np.zeros((5, 5, 5), np.float32)
    u[2, 2, 2] = 0.9
    for min_size in (0, 1):
        regions = label_regions(u, None, threshold=0.5, min_size=min_size)[1]
        assert [r.size_voxels for r in regions] == [1], min_size
    assert label_regions(u, None, threshold=0.5, min_size=2)[1] == []


def test_region_classes_are_the_labels_inside_or_touching_in_26_neighbourhood():
    u = np.zeros((7, 7, 7), np.float32)
    u[3, 3, 3] = 0.9
    labels = np.zeros(u.shape, np.uint8)
    labels[3, 3, 3] = 1  # inside
    labels[4, 4, 4] = 2  # corner neighbour: touching in the 26-neighbourhood only
    labels[3, 3, 5] = 3  # two voxels away: not touching
    labels[1:, 0, 0] = 4  # far away
    (region,) = label_regions(u, None, labels, threshold=0.5, min_size=1)[1]
    assert region.classes == (0, 1, 2)


def test_expected_threshold_keeps_as_many_voxels_as_are_expected_wrong():
    from napari_sscce.uncertainty import error_probability, expected_threshold

    rng = np.random.default_rng(0)
    u = rng.uniform(0.0, 1.0, (20, 20, 20)).astype(np.float32)
    expected = float(error_probability(u).sum())
    t = expected_threshold(u, floor=0.0, ceiling=1.0)
    assert abs(int((u >= t).sum()) - round(expected)) <= 1
    assert expected_threshold(u) >= 0.5  # the floor
    assert expected_threshold(np.zeros((4, 4, 4), np.float32)) > 0.0  # nothing expected wrong: no region
    assert label_regions(np.zeros((4, 4, 4), np.float32), None)[1] == []
    # 100 voxels at 0.99 (44 expected wrong) + 900 at 0.6 (135): the 100 are not enough, the 0.6 ones come in
    mixed = np.full((10, 10, 10), 0.6, np.float32)
    mixed[0] = 0.99
    assert expected_threshold(mixed, floor=0.0) == pytest.approx(0.6)
    # 500 at 0.99 (220 expected) + 500 at 0.1 (6): the 500 most uncertain already hold more than expected
    half = np.full((10, 10, 10), 0.1, np.float32)
    half[:5] = 0.99
    assert expected_threshold(half, floor=0.0, ceiling=1.0) == pytest.approx(0.99)
    assert expected_threshold(half, floor=0.0) == pytest.approx(0.8)  # the ceiling: 0.8 is always a region
