"""AnnotationTracker: paint events of a Labels layer become an annotation mask."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_sscce.widgets._annotation import AnnotationTracker


def _layer():
    return Labels(np.zeros((6, 10, 12), np.uint8))


def test_brush_stroke_marks_its_slice():
    layer = _layer()
    tracker = AnnotationTracker(layer)
    layer.brush_size = 3
    layer.paint((2, 5, 5), 1)
    assert tracker.edited_voxels == int((layer.data > 0).sum()) > 0
    assert tracker.planes == {(0, 2)}
    slices = tracker.mask("slices")
    assert slices[2].all() and slices.sum() == 10 * 12
    np.testing.assert_array_equal(tracker.mask("voxels"), layer.data > 0)
    assert tracker.mask("volume").all()


def test_plane_axis_follows_the_view():
    layer = _layer()
    tracker = AnnotationTracker(layer, plane_axis=lambda: 2)
    layer.data_setitem((np.array([1, 3]), np.array([4, 7]), np.array([9, 9])), 1)  # fancy-index atom
    assert tracker.planes == {(2, 9)}
    assert tracker.mask("slices")[:, :, 9].all()


def test_3d_edit_adds_only_voxels_and_new_data_resets():
    layer = _layer()
    tracker = AnnotationTracker(layer)
    layer.data_setitem((np.array([0, 4]), np.array([1, 1]), np.array([2, 3])), 1)  # spans two z planes
    assert tracker.planes == set()
    assert tracker.mask("slices").sum() == 2
    tracker.mark_plane(0, 5)
    assert tracker.has_edits and tracker.mask("slices")[5].all()
    with pytest.raises(IndexError):
        tracker.mark_plane(0, 6)
    layer.data = np.ones((6, 10, 12), np.uint8)
    assert not tracker.has_edits
