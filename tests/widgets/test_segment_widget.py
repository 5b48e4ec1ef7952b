"""Segment widget: layers on the image grid, cancel, re-run replaces, defaults from InferenceConfig."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.widgets.segment import SegmentWidget

WAIT_MS = 60_000


def _segment(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)


def test_defaults_come_from_inference_config(make_napari_viewer):
    widget = SegmentWidget(make_napari_viewer())
    assert widget.config() == InferenceConfig()


def test_segment_adds_three_layers_on_the_image_grid(qtbot, viewer_with_scan, tiny_model_path):
    viewer = viewer_with_scan
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    assert "method: cce" in widget.model_info.text()
    widget.per_network_check.setChecked(True)
    _segment(qtbot, widget)
    assert widget.status.text().startswith("scan: done"), widget.status.text()
    image = viewer.layers["scan"]
    seg = viewer.layers["scan segmentation"]
    ent = viewer.layers["scan entropy"]
    kl = viewer.layers["scan KL"]
    assert isinstance(seg, Labels) and isinstance(ent, Image) and isinstance(kl, Image)
    for layer in (seg, ent, kl):
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    assert tuple(ent.contrast_limits) == (0.0, 1.0) and ent.blending == "additive"
    assert 0.0 <= float(ent.data.min()) and float(ent.data.max()) <= 1.0
    assert widget.progress_bar.value() == 100
    for tag in ("A", "B"):
        probs = viewer.layers[f"scan probabilities {tag}"]
        assert probs.data.shape == (2, *image.data.shape)
        np.testing.assert_allclose(probs.scale[1:], image.scale)


def test_rerun_replaces_layers(qtbot, viewer_with_scan, tiny_model_path):
    viewer = viewer_with_scan
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    _segment(qtbot, widget)
    seg = viewer.layers["scan segmentation"]
    seg.data[:] = 0
    n_layers = len(viewer.layers)
    _segment(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["scan segmentation"] is seg
    np.testing.assert_array_equal(seg.data, widget.last_prediction.labels)


def test_cancel_keeps_previous_state(qtbot, viewer_with_scan, tiny_model_path, monkeypatch):
    viewer = viewer_with_scan
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    widget.runner.progress.connect(lambda event: widget.runner.cancel())  # cancel at the first report
    with qtbot.waitSignal(widget.runner.cancelled, timeout=WAIT_MS):
        widget.run()
    assert "cancelled" in widget.status.text()
    assert "scan segmentation" not in viewer.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_bad_model_file_is_reported(make_napari_viewer, tmp_path):
    widget = SegmentWidget(make_napari_viewer())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.safetensors"):
        widget.set_model(bad)


def test_nan_voxels_are_named_in_the_status_and_nothing_runs(viewer_with_scan, tiny_model_path):
    viewer = viewer_with_scan
    data = np.array(viewer.layers["scan"].data, dtype=np.float32)
    data[0, 0, :3] = np.nan
    viewer.add_image(data, name="holes")
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    widget.run(viewer.layers["holes"])
    assert not widget.runner.running
    text = widget.status.text()
    assert text.startswith("cannot segment holes") and "3 NaN and 0 Inf voxels" in text, text
    assert "holes segmentation" not in viewer.layers


def test_device_tooltip_is_the_quick_doctor_report(make_napari_viewer):
    widget = SegmentWidget(make_napari_viewer())
    tip = widget.device_combo.toolTip()
    assert "sscce doctor" in tip and "torch:" in tip and "precision auto on cpu" in tip
# --------------------------------------------------------------------------------- packaged models (issue 13)
@pytest.fixture
def packaged_models(tmp_path, monkeypatch, tiny_model_path):
    """A packaged-models folder holding the tiny model as "hippocampus-cce" with a model card."""
    from napari_sscce.io.volume import Volume
    from napari_sscce.models.pretrained import training_statistics, write_packaged_model

    folder = tmp_path / "packaged"
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(folder))
    rng = np.random.default_rng(0)
    train = [Volume(rng.uniform(0, 1000, (16, 32, 32)).astype(np.float32), (2.0, 1.0, 0.5))]
    card = {"data": "generated scans", "training_data": training_statistics(train),
            "validation": {"cases": 3, "dice_mean": 0.8, "hd95_mm": 2.0}}
    write_packaged_model(tiny_model_path, folder / "hippocampus-cce.safetensors", card)
    return folder


def test_lists_packaged_models_by_name(make_napari_viewer, packaged_models, tiny_model_path):
    widget = SegmentWidget(make_napari_viewer())
    labels = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert labels[0] == "Hippocampus MRI — CCE"
    assert widget.model_path == packaged_models / "hippocampus-cce.safetensors"  # adopted as the default
    assert "trained on: generated scans" in widget.model_info.text()
    assert "held-out Dice 0.800 on 3 cases" in widget.model_info.text()
    widget.set_model(tiny_model_path)  # a file chosen by hand joins the list; the packaged one stays first
    labels = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert labels[0] == "Hippocampus MRI — CCE" and "tiny.safetensors" in labels


def test_warns_when_the_scan_is_far_from_the_training_data(qtbot, make_napari_viewer, packaged_models, scan):
    viewer = make_napari_viewer()
    image, _ = scan
    viewer.add_image(image.array, name="same", scale=(2.0, 1.0, 0.5))
    viewer.add_image(image.array, name="coarse", scale=(2.0, 1.0, 1.0))  # x spacing 2x the model's
    widget = SegmentWidget(viewer)
    widget.run(viewer.layers["same"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert widget.domain_warnings == [] and "warning" not in widget.status.text()
    widget.run(viewer.layers["coarse"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "done" in widget.status.text()  # a warning, not a refusal
    assert "warning: spacing 2 x 1 x 1 mm is more than 1.5x coarser than the model's training scans' " in (
        widget.status.text()
    )
    assert len(widget.domain_warnings) == 1
