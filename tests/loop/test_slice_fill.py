"""Filling between painted slices: shape interpolation, only far from the interpolated boundary."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.loop.data_view import FILL_WEIGHT, build_view
from napari_sscce.loop.slice_fill import fill_between_slices, painted_slices
from napari_sscce.training.sampling import WEIGHTED_MASK_SCALE, mask_weights
from napari_sscce.workspace import Workspace


def _cone(shape=(21, 40, 40)) -> np.ndarray:
    """A disc whose radius grows linearly along z (4 -> 14 voxels): interpolation is exact for it."""
    z, y, x = np.indices(shape)
    radius = 4 + 10 * z / (shape[0] - 1)
    return (np.hypot(y - 20, x - 20) <= radius).astype(np.uint8)


def test_the_fill_recovers_a_smoothly_changing_shape_between_painted_slices():
    truth = _cone()
    mask = np.zeros(truth.shape, np.uint8)
    mask[[2, 10, 18]] = 1
    sparse = np.where(mask > 0, truth, 0)
    labels, filled = fill_between_slices(sparse, mask, margin_mm=1.5)
    assert painted_slices(mask) == [2, 10, 18]
    assert not filled[mask > 0].any()  # never a painted voxel
    assert not filled[:2].any() and not filled[19:].any()  # nothing outside the painted span
    assert (labels[filled] == truth[filled]).mean() > 0.99
    inside = truth[3:18].astype(bool) & filled[3:18]
    assert inside.sum() > 0.5 * truth[3:18].sum()  # the organ is supervised between the slices
    # the band around the interpolated boundary stays unlabeled
    z, y, x = 14, 20, 20 + int(4 + 10 * 14 / 20)
    assert not filled[z, y, x]
    np.testing.assert_array_equal(labels[mask > 0], truth[mask > 0])  # the person's labels untouched


def test_spacing_sets_the_margin_in_millimetres_and_classes_stay_apart():
    truth = _cone()
    mask = np.zeros(truth.shape, np.uint8)
    mask[[2, 18]] = 1
    sparse = np.where(mask > 0, truth, 0)
    _, fine = fill_between_slices(sparse, mask, spacing=(1.0, 0.5, 0.5), margin_mm=2.0)
    _, coarse = fill_between_slices(sparse, mask, spacing=(1.0, 1.0, 1.0), margin_mm=2.0)
    assert fine.sum() < coarse.sum()  # 2 mm are 4 voxels at 0.5 mm, 2 at 1 mm
    two = np.zeros((11, 20, 30), np.uint8)
    two[:, 5:15, 3:12], two[:, 5:15, 18:27] = 1, 2
    m = np.zeros(two.shape, np.uint8)
    m[[0, 10]] = 1
    labels, filled = fill_between_slices(np.where(m > 0, two, 0), m, margin_mm=1.0)
    assert set(np.unique(labels[filled])) == {0, 1, 2}
    assert (labels[filled] == two[filled]).all()


def test_nothing_is_filled_from_one_slice_or_a_full_mask():
    truth = _cone()
    one = np.zeros(truth.shape, np.uint8)
    one[5] = 1
    assert not fill_between_slices(truth, one)[1].any()
    assert not fill_between_slices(truth, np.ones(truth.shape))[1].any()
    with pytest.raises(ValueError, match="differ in shape"):
        fill_between_slices(truth, one[:-1])


def test_a_first_models_view_trains_on_the_fill_with_its_weight(tmp_path):
    from napari_sscce.io.volume import Volume

    truth = _cone()
    mask = np.zeros(truth.shape, np.uint8)
    mask[[2, 10, 18]] = 1
    ws = Workspace(tmp_path / "ws")
    image = Volume(truth.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, truth.shape),
                   spacing=(1.0, 1.0, 1.0))
    ws.add_case(image, image.with_array(np.where(mask > 0, truth, 0).astype(np.uint8), is_label=True),
                image.with_array(mask, is_label=True), name="painted")
    view = build_view(ws, tmp_path / "view", None, holdout=0.0, fill=FILL_WEIGHT)
    assert view.filled_voxels["painted"] > 0
    from napari_sscce.io.readers import read_volume

    weights = mask_weights(np.asarray(read_volume(tmp_path / "view" / "masks" / "painted.nii.gz").array))
    np.testing.assert_allclose(weights[mask > 0], 1.0)
    filled = (weights > 0) & (mask == 0)
    assert filled.sum() == view.filled_voxels["painted"]
    expected = round(FILL_WEIGHT * WEIGHTED_MASK_SCALE) / WEIGHTED_MASK_SCALE
    np.testing.assert_allclose(weights[filled], expected)
    plain = build_view(ws, tmp_path / "plain", None, holdout=0.0)
    assert not plain.filled_voxels  # fine-tunes keep the person's mask as it is
