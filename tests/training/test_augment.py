"""Spatial augmentation (rotation and zoom) moves image, label and mask together."""

from __future__ import annotations

import numpy as np
import pytest


def test_random_spatial_rotates_and_zooms_consistently():
    from napari_sscce.training.augment import AugmentConfig, Sample, augment, random_spatial

    label = np.zeros((8, 24, 24), np.uint8)
    label[2:6, 6:18, 10:14] = 1  # a bar along y
    image = label[None].astype(np.float32) * 5.0
    mask = np.ones(label.shape, np.float32)
    sample = Sample(image, label, mask, {})
    same = random_spatial(sample, np.random.default_rng(0), degrees=15.0, scale=0.15, p=0.0)
    assert same is sample  # no draw took effect
    turned = random_spatial(sample, np.random.default_rng(0), degrees=90.0, scale=0.0, p=1.0)
    assert set(np.unique(turned.label)) <= {0, 1} and turned.label.shape == label.shape
    assert (turned.image[0] > 2.5).astype(np.uint8).sum() == pytest.approx(turned.label.sum(), rel=0.25)
    assert not np.array_equal(turned.label, label)  # it moved
    outs = [random_spatial(sample, np.random.default_rng(s), degrees=0.0, scale=0.3, p=1.0)
            for s in range(10)]
    shrunk = [o for o in outs if o.mask.min() == 0.0]
    assert shrunk and len(shrunk) < len(outs)  # zooming out fills a border, zooming in does not
    assert all(o.mask[0, 0, 0] == 0.0 and o.mask[4, 12, 12] == 1.0 for o in shrunk)  # unsupervised border
    a = augment(sample, np.random.default_rng(5), AugmentConfig(flip=False, rot90=False, spatial=True))
    b = augment(sample, np.random.default_rng(5), AugmentConfig(flip=False, rot90=False, spatial=True))
    np.testing.assert_array_equal(a.label, b.label)  # reproducible from the seed
