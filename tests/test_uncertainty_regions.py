"""Uncertain regions by hand: sizes, means, score = mean u x log(1 + size), order, min_size, centroid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_sscce.uncertainty import label_regions


def _maps():
    shape = (4, 8, 10)
    entropy = np.zeros(shape, np.float32)
    kl = np.zeros(shape, np.float32)
    entropy[0:2, 0:2, 0:3] = 0.9  # region A: 12 voxels, u = 0.9
    kl[0:2, 0:2, 0:3] = 0.2
    entropy[2:4, 5:6, 5:10] = 0.3  # region B: 10 voxels, u = max(0.3, 0.8) = 0.8
    kl[2:4, 5:6, 5:10] = 0.8
    return entropy, kl


def _inverse_binary_entropy(u: float) -> float:
    lo, hi = 1e-12, 0.5
    for _ in range(100):
        mid = (lo + hi) / 2
        h = -(mid * math.log2(mid) + (1 - mid) * math.log2(1 - mid))
        lo, hi = (mid, hi) if h < u else (lo, mid)
    return (lo + hi) / 2


def test_label_regions_by_hand():
    entropy, kl = _maps()
    image, regions = label_regions(entropy, kl, spacing=(2.0, 1.0, 0.5), threshold=0.5, min_size=10)
    assert [r.size_voxels for r in regions] == [12, 10]
    a, b = regions
    # score = expected wrong voxels: the sum of e with H2(e) = u, e <= 0.5 (binary entropy in bits)
    assert a.score == pytest.approx(12 * _inverse_binary_entropy(0.9), rel=1e-3)
    assert b.score == pytest.approx(10 * _inverse_binary_entropy(0.8), rel=1e-3)
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
