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


def _textured_sample(seed: int = 0):
    from napari_sscce.training.augment import Sample

    rng = np.random.default_rng(seed)
    image = rng.normal(3.0, 2.0, (1, 12, 16, 16)).astype(np.float32)
    label = (rng.random((12, 16, 16)) > 0.5).astype(np.uint8)
    return Sample(image, label, np.ones((12, 16, 16), np.float32), {})


def test_random_gamma_keeps_mean_and_std_and_changes_the_histogram():
    from napari_sscce.training.augment import random_gamma

    sample = _textured_sample()
    out = random_gamma(sample, np.random.default_rng(0), gamma_range=(1.5, 1.5), p=1.0)
    assert np.isclose(out.image.mean(), sample.image.mean(), atol=1e-4)
    assert np.isclose(out.image.std(), sample.image.std(), rtol=1e-4)
    # a power of 1.5 on [0, 1] skews the values: the ranks stay, the values move
    assert not np.allclose(out.image, sample.image, atol=1e-2)
    flat_in, flat_out = sample.image.ravel(), out.image.ravel()
    assert (np.argsort(flat_in) == np.argsort(flat_out)).mean() > 0.99
    assert out.label is sample.label
    skipped = random_gamma(sample, np.random.default_rng(0), p=0.0)
    assert skipped.image is sample.image


def test_random_blur_and_lowres_smooth_the_image_only():
    from napari_sscce.training.augment import random_blur, random_lowres

    sample = _textured_sample(1)
    blurred = random_blur(sample, np.random.default_rng(0), sigma=(1.0, 1.0), p=1.0)
    assert blurred.image.shape == sample.image.shape
    assert blurred.image.std() < 0.7 * sample.image.std()  # white noise loses most of its variance
    assert np.array_equal(blurred.label, sample.label)
    low = random_lowres(sample, np.random.default_rng(0), zoom=(0.5, 0.5), p=1.0)
    assert low.image.shape == sample.image.shape and low.image.dtype == np.float32
    # neighbouring voxels now share values: the difference between neighbours shrinks
    assert np.abs(np.diff(low.image, axis=3)).mean() < 0.8 * np.abs(np.diff(sample.image, axis=3)).mean()
    assert np.array_equal(low.label, sample.label)


def test_augment_applies_gamma_blur_lowres_when_switched_on():
    from napari_sscce.training.augment import AugmentConfig, augment

    sample = _textured_sample(2)
    off = AugmentConfig(flip=False, rot90=False)
    on = AugmentConfig(flip=False, rot90=False, gamma=True, gamma_p=1.0, blur=True, blur_p=1.0,
                       lowres=True, lowres_p=1.0)
    assert np.array_equal(augment(sample, np.random.default_rng(0), off).image, sample.image)
    changed = augment(sample, np.random.default_rng(0), on)
    assert changed.image.std() < 0.7 * sample.image.std()
    assert np.array_equal(changed.label, sample.label)


def test_train_config_and_cli_switch_the_new_augmentations():
    from napari_sscce.cli.train import AUGMENTATIONS
    from napari_sscce.training.augment import AugmentConfig
    from napari_sscce.training.config import TrainConfig

    for kind in ("gamma", "blur", "lowres"):
        config = TrainConfig(**{AUGMENTATIONS[kind]: True})
        assert getattr(AugmentConfig.from_train_config(config), kind) is True
        assert getattr(AugmentConfig.from_train_config(TrainConfig()), kind) is False


def test_random_spatial_3d_rotation_tilts_the_slices_and_keeps_labels_with_image():
    from napari_sscce.training.augment import Sample, random_spatial

    label = np.zeros((24, 24, 24), np.uint8)
    label[10:14, 4:20, 4:20] = 1  # a slab across z
    sample = Sample(label[None].astype(np.float32) * 5.0, label, np.ones(label.shape, np.float32), {})
    flat = random_spatial(sample, np.random.default_rng(3), degrees=40.0, scale=0.0, p=1.0)
    tilted = random_spatial(sample, np.random.default_rng(3), degrees=40.0, scale=0.0, p=1.0, rotate_3d=True)
    # an in-plane rotation keeps the slab in its z range; rotating about y or x tilts it out of it
    assert flat.label[:10].sum() == 0 and flat.label[14:].sum() == 0
    assert tilted.label[:10].sum() + tilted.label[14:].sum() > 0
    assert (tilted.image[0] > 2.5).sum() == pytest.approx(tilted.label.sum(), rel=0.25)
