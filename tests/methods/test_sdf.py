"""Signed distance maps (UG-MCL's distance target)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sscce.methods.sdf import binary_sdf, compute_sdf


def _sphere(shape=(24, 24, 24), radius=6.0, center=(12, 12, 12)) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    dist = np.sqrt((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2)
    return dist <= radius


def test_sphere_sign_boundary_and_normalisation():
    ball = _sphere()
    sdf = compute_sdf(ball.astype(np.uint8), num_classes=2)
    assert sdf.shape == (1, *ball.shape) and sdf.dtype == np.float32
    s = sdf[0]
    boundary = ball & ~ndimage.binary_erosion(ball)
    interior = ball & ~boundary
    assert np.all(s[boundary] == 0)
    assert np.all(s[interior] < 0)
    assert np.all(s[~ball] > 0)
    assert s.min() == pytest.approx(-1.0) and s.max() == pytest.approx(1.0)
    assert s[12, 12, 12] == pytest.approx(-1.0)  # deepest voxel: the centre
    assert s[0, 0, 0] == pytest.approx(1.0) or s[23, 23, 23] == pytest.approx(1.0)  # a far corner


def test_distances_are_proportional_on_a_half_space():
    label = np.zeros((16, 4, 4), np.uint8)
    label[:8] = 1  # object = z < 8; inner boundary at z = 7
    s = compute_sdf(label, 2)[0]
    z = np.arange(16)
    inside = -(8 - z[:7]) / 8.0  # distance to z = 8, normalised by the deepest (z = 0: 8)
    outside = (z[8:] - 7) / 8.0  # distance to z = 7, normalised by the farthest (z = 15: 8)
    np.testing.assert_allclose(s[:7, 0, 0], inside, rtol=1e-6)
    assert s[7, 0, 0] == 0
    np.testing.assert_allclose(s[8:, 0, 0], outside, rtol=1e-6)
    assert np.all(s == s[:, :1, :1])  # constant across the plane


def test_spacing_scales_distances():
    label = np.zeros((16, 4, 4), np.uint8)
    label[:8] = 1
    # uniform scaling of the spacing does not change the normalised map
    scaled = compute_sdf(label, 2, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_allclose(scaled, compute_sdf(label, 2), rtol=1e-6)
    dot = np.zeros((9, 9, 9), np.uint8)
    dot[4, 4, 4] = 1
    s = compute_sdf(dot, 2, spacing=(3.0, 1.0, 1.0))[0]
    assert s[5, 4, 4] == pytest.approx(3 * s[4, 5, 4])  # one voxel away in z is 3 mm, in y 1 mm


def test_multi_class_channels_and_empty_class():
    label = np.zeros((16, 16, 16), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[9:14, 9:14, 9:14] = 2
    sdf = compute_sdf(label, num_classes=4)
    assert sdf.shape == (3, 16, 16, 16)
    np.testing.assert_array_equal(sdf[0], binary_sdf(label == 1))
    np.testing.assert_array_equal(sdf[1], binary_sdf(label == 2))
    assert np.all(sdf[2] == 0)  # class 3 absent -> zeros
    assert sdf[0][4, 4, 4] < 0 and sdf[0][11, 11, 11] > 0
    assert sdf[1][11, 11, 11] < 0 and sdf[1][4, 4, 4] > 0


def test_class_filling_the_volume_is_inside_everywhere():
    s = binary_sdf(np.ones((7, 7, 7), bool))
    assert np.all(s < 0) and s.min() == pytest.approx(-1.0) and s[3, 3, 3] == pytest.approx(-1.0)


def test_mask_zeroes_unsupervised_voxels():
    label = _sphere((16, 16, 16), 4.0, (8, 8, 8)).astype(np.uint8)
    mask = np.zeros_like(label)
    mask[:, :, :8] = 1
    full = compute_sdf(label, 2)
    masked = compute_sdf(label, 2, mask=mask)
    np.testing.assert_array_equal(masked[:, :, :, :8], full[:, :, :, :8])
    assert np.all(masked[:, :, :, 8:] == 0)


@pytest.mark.parametrize(
    "label, num_classes, mask, match",
    [
        (np.zeros((4, 4), np.uint8), 2, None, "3D"),
        (np.full((4, 4, 4), 3, np.uint8), 2, None, "label values"),
        (np.zeros((4, 4, 4), np.uint8), 1, None, "num_classes"),
        (np.zeros((4, 4, 4), np.uint8), 2, np.ones((4, 4, 5)), "mask shape"),
    ],
)
def test_bad_input_raises(label, num_classes, mask, match):
    with pytest.raises(ValueError, match=match):
        compute_sdf(label, num_classes, mask=mask)
