"""Segment again: every result layer (labels, entropy, KL) shows the new prediction; a cancelled second
run keeps the first one's layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.widgets.segment import SegmentWidget

WAIT_MS = 60_000
ROLES = {"segmentation": "labels", "entropy": "entropy", "KL": "kl"}


@pytest.fixture(scope="module")
def other_model_path(make_tiny_model):
    """A second tiny model (other seed, shifted output bias): its labels, entropy and KL differ."""
    return make_tiny_model(1, bias_shift=0.5)


def _segment(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "done" in widget.status.text(), widget.status.text()


def _layer_data(viewer):
    return {role: np.array(viewer.layers[f"scan {role}"].data, copy=True) for role in ROLES}


def _first_run(qtbot, viewer, model_path):
    """A Segment widget that has segmented the scan once: the widget, its layers' data and its prediction."""
    widget = SegmentWidget(viewer)
    widget.set_model(model_path)
    _segment(qtbot, widget)
    return widget, _layer_data(viewer), widget.last_prediction


def test_all_three_layers_change_on_a_rerun(qtbot, viewer_with_scan, tiny_model_path, other_model_path):
    viewer = viewer_with_scan
    widget, first, first_prediction = _first_run(qtbot, viewer, tiny_model_path)
    for role, attr in ROLES.items():
        np.testing.assert_allclose(first[role], getattr(first_prediction, attr), atol=1e-6)

    widget.set_model(other_model_path)
    _segment(qtbot, widget)
    second = _layer_data(viewer)
    for role, attr in ROLES.items():
        new = getattr(widget.last_prediction, attr)
        assert not np.allclose(new, getattr(first_prediction, attr)), f"{role}: the two models agree"
        np.testing.assert_allclose(second[role], new, atol=1e-6, err_msg=f"{role} layer not updated")
        assert not np.allclose(second[role], first[role]), f"{role} layer kept the first run's data"


def test_cancel_after_a_first_segmentation_keeps_it(
    qtbot, viewer_with_scan, tiny_model_path, other_model_path
):
    viewer = viewer_with_scan
    widget, first, first_prediction = _first_run(qtbot, viewer, tiny_model_path)
    layers = {role: viewer.layers[f"scan {role}"] for role in ROLES}
    n_layers = len(viewer.layers)

    widget.set_model(other_model_path)  # a completed second run would change every layer
    connection = widget.runner.progress.connect(lambda event: widget.runner.cancel())
    with qtbot.waitSignal(widget.runner.cancelled, timeout=WAIT_MS):
        widget.run()
    widget.runner.progress.disconnect(connection)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "cancelled" in widget.status.text()
    assert len(viewer.layers) == n_layers
    for role in ROLES:
        assert viewer.layers[f"scan {role}"] is layers[role]
        np.testing.assert_array_equal(viewer.layers[f"scan {role}"].data, first[role])
    assert widget.last_prediction is first_prediction
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
