"""Uncertainty widget: ranked regions, navigation to a region, volume ranking."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sscce.widgets._layers import show_prediction
from napari_sscce.widgets.uncertainty import UncertaintyWidget

SHAPE = (16, 32, 32)


def _fake_prediction(blobs):
    """A prediction whose entropy is high in the given boxes (z0, z1, y0, y1, x0, x1, value)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:12, 8:24, 8:24] = 1
    entropy = np.zeros(SHAPE, np.float32)
    for z0, z1, y0, y1, x0, x1, value in blobs:
        entropy[z0:z1, y0:y1, x0:x1] = value
    return SimpleNamespace(labels=labels, entropy=entropy, kl=entropy * 0.5, per_network=None)


@pytest.fixture
def viewer_with_results(make_napari_viewer):
    viewer = make_napari_viewer()
    scale, translate = (2.0, 1.0, 0.5), (10.0, 0.0, -5.0)
    a = viewer.add_image(np.zeros(SHAPE, np.float32), name="a", scale=scale, translate=translate)
    b = viewer.add_image(np.zeros(SHAPE, np.float32), name="b", scale=scale, translate=translate)
    # "a": one big very uncertain region at slice 11 and a smaller one at slice 3
    show_prediction(viewer, a, _fake_prediction([(10, 13, 10, 20, 10, 20, 0.9), (2, 5, 2, 6, 25, 29, 0.8)]))
    # "b": barely uncertain
    show_prediction(viewer, b, _fake_prediction([(6, 8, 10, 14, 10, 14, 0.6)]))
    return viewer


def test_regions_are_listed_and_navigated(viewer_with_results):
    viewer = viewer_with_results
    widget = UncertaintyWidget(viewer)
    assert [name for name, _ in widget.volume_scores] == ["a", "b"]  # correct "a" first
    assert widget.image_name == "a"
    assert len(widget.regions) == 2
    assert widget.region_table.rowCount() == 2

    widget.select_region(0)
    first = widget.regions[0]
    assert viewer.dims.current_step[0] == round(first.centroid[0]) == 11
    layer = viewer.layers["a entropy"]
    expected_centre = layer.data_to_world(first.centroid)
    np.testing.assert_allclose(viewer.camera.center[-2:], expected_centre[-2:], atol=1e-6)

    widget.step(1)
    assert widget.current_index() == 1
    assert viewer.dims.current_step[0] == round(widget.regions[1].centroid[0]) == 3
    # a one-voxel region keeps context: the view spans >= 30 % of the scan (not a 1-voxel close-up)
    from dataclasses import replace

    from napari_sscce.widgets.uncertainty import MIN_CONTEXT, go_to_region

    tiny = replace(first, centroid=(8.0, 16.0, 16.0), bbox=(8, 16, 16, 9, 17, 17), size_voxels=1)
    go_to_region(viewer, layer, tiny)
    canvas = min(viewer.canvas.size)
    scan_extent = max(np.asarray(layer.data.shape[1:], float) * np.asarray(layer.scale[1:], float))
    assert canvas / viewer.camera.zoom >= MIN_CONTEXT * scan_extent * 0.999
    widget.select_region(1)
    widget.step(-1)
    assert viewer.dims.current_step[0] == 11


def test_choosing_a_volume_lists_its_regions(viewer_with_results):
    widget = UncertaintyWidget(viewer_with_results)
    widget.volume_table.selectRow(1)
    assert widget.image_name == "b"
    assert len(widget.regions) == 1


def test_new_results_refresh_the_lists(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = UncertaintyWidget(viewer)
    assert widget.volume_scores == [] and widget.regions == []
    image = viewer.add_image(np.zeros(SHAPE, np.float32), name="c")
    show_prediction(viewer, image, _fake_prediction([(1, 4, 1, 9, 1, 9, 0.95)]))
    assert [name for name, _ in widget.volume_scores] == ["c"]
    assert len(widget.regions) == 1


def test_slices_to_check_next_are_listed_and_navigated(viewer_with_results):
    viewer = viewer_with_results
    widget = UncertaintyWidget(viewer)
    # "a": slices 10-12 hold the big region (equal, ties by index), 2-4 the small one
    assert [s.index for s in widget.slices[:3]] == [10, 11, 12]
    assert {s.index for s in widget.slices[3:6]} == {2, 3, 4}
    assert widget.slice_table.rowCount() == len(widget.slices) <= 10
    assert widget.region_table.item(0, 1).text() == f"{widget.regions[0].score:.0f}"
    widget.select_slice(3)
    assert viewer.dims.current_step[0] == widget.slices[3].index
    widget.select_slice(0)
    assert viewer.dims.current_step[0] == 10
