"""Fine-tune widget: edits become an annotation mask, workspace writes, fine-tune, re-segment, revert."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.sample_data import make_synthetic
from napari_sscce.training.config import TrainConfig
from napari_sscce.widgets import finetune as finetune_module
from napari_sscce.widgets.finetune import FINETUNE_OVERRIDES, FinetuneWidget, build_finetune_config
from napari_sscce.widgets.segment import SegmentWidget
from napari_sscce.workspace import Workspace

WAIT_MS = 120_000


@pytest.fixture
def segmented(qtbot, viewer_with_scan, tiny_model_path):
    """The scan segmented by the tiny model; returns (viewer, segment widget, fine-tune widget)."""
    viewer = viewer_with_scan
    segment = SegmentWidget(viewer)
    segment.set_model(tiny_model_path)
    finetune = FinetuneWidget(viewer)
    segment.run()
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=WAIT_MS)
    assert "scan segmentation" in viewer.layers
    return viewer, segment, finetune


def test_defaults_come_from_train_config(make_napari_viewer, tmp_path):
    widget = FinetuneWidget(make_napari_viewer())
    defaults = TrainConfig()
    assert widget.method is None  # automatic: the loop chooses (supervised fine-tune, CCE new model)
    widget.method_combo.setCurrentIndex(widget.method_combo.findData(defaults.method))
    assert widget.method == defaults.method
    assert widget.iterations_spin.value() == FINETUNE_OVERRIDES["iterations"]
    assert widget.mode == "slices"
    config = build_finetune_config(
        Workspace(tmp_path / "ws"),
        {},
        defaults.method,
        widget.iterations_spin.value(),
        tmp_path / "out",
        unlabeled_bs=defaults.unlabeled_bs,
    )
    differing = {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(config, f.name) != getattr(defaults, f.name)
    }
    assert differing == set(FINETUNE_OVERRIDES) | {"data", "out"}


def test_edits_become_an_annotation_mask_in_the_workspace(segmented, tmp_path):
    viewer, _, widget = segmented
    seg = viewer.layers["scan segmentation"]
    assert widget.tracker is not None and widget.tracker.layer is seg
    seg.brush_size = 3
    seg.paint((5, 10, 10), 1 - int(seg.data[5, 10, 10]))  # a 2D brush stroke in slice 5
    viewer.dims.set_current_step(0, 9)
    widget.mark_current_slice()
    assert widget.tracker.edited_voxels > 0
    assert {i for _, i in widget.tracker.planes} == {5, 9}
    assert "checked slices: 2" in widget.counts.text()

    widget.set_workspace(tmp_path / "ws")
    assert widget.add_to_labeled_set() == "scan"
    ws = Workspace(tmp_path / "ws")
    image, labels, mask = ws.load_case("scan")
    np.testing.assert_array_equal(labels.array, seg.data)
    expected = np.zeros(seg.data.shape, np.uint8)
    expected[[5, 9]] = 1
    np.testing.assert_array_equal(mask.array, expected)
    np.testing.assert_allclose(image.spacing, viewer.layers["scan"].scale)


def test_finetune_adds_a_version_resegments_and_reverts(qtbot, segmented, tmp_path):
    viewer, segment, widget = segmented
    viewer.add_image(
        viewer.layers["scan"].data[:, ::-1].copy(), name="other", scale=viewer.layers["scan"].scale
    )
    seg = viewer.layers["scan segmentation"]
    seg.brush_size = 4
    seg.paint((8, 16, 16), 1 - int(seg.data[8, 16, 16]))  # a real change
    widget.set_workspace(tmp_path / "ws")
    widget.iterations_spin.setValue(2)
    original_model = segment.model_path

    widget.finetune()
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    assert widget.last_result is not None and not widget.last_result.cancelled, widget.status.text()
    ws = Workspace(tmp_path / "ws")
    assert [v.version for v in ws.versions] == ["v0001", "v0002"]  # the starting model, then the new one
    assert ws.current_version == "v0002"
    assert segment.model_path == ws.current_model_path  # the Segment widget uses the new model
    assert {c.name: c.labeled for c in ws.cases} == {"scan": True, "other": False}
    assert len(widget.plot.loss) == 2
    assert "segmented again" in widget.status.text()
    assert not widget.tracker.has_edits  # the new segmentation starts a new record

    widget.revert("v0001")
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    assert Workspace(tmp_path / "ws").current_version == "v0001"
    assert segment.model_path == ws.version_path("v0001")
    assert ws.version_path("v0001").read_bytes() == original_model.read_bytes()


def test_cancel_keeps_the_model(qtbot, segmented, tmp_path):
    viewer, segment, widget = segmented
    seg = viewer.layers["scan segmentation"]
    seg.paint((8, 16, 16), 1 - int(seg.data[8, 16, 16]))
    widget.set_workspace(tmp_path / "ws")
    widget.iterations_spin.setValue(1000)
    original_model = segment.model_path
    widget.runner.progress.connect(lambda event: widget.runner.cancel())
    widget.finetune()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "cancelled" in widget.status.text()
    ws = Workspace(tmp_path / "ws")
    assert [v.version for v in ws.versions] == ["v0001"]  # only the starting model
    assert segment.model_path == original_model
    assert widget.last_result.cancelled and widget.last_result.iterations < 1000


def test_finetune_keeps_corrections_and_uses_the_segment_settings(qtbot, segmented, tmp_path, monkeypatch):
    viewer, segment, widget = segmented
    segment.overlap_spin.setValue(0.25)
    segment.tta_check.setChecked(True)
    segment.largest_check.setChecked(True)
    seen = []

    def spy(model, volume, config, **kwargs):
        seen.append(config)
        return predict_volume(model, volume, config, **kwargs)

    monkeypatch.setattr(finetune_module, "predict_volume", spy)
    seg = viewer.layers["scan segmentation"]
    seg.brush_size = 6
    seg.paint((8, 16, 16), 1 - int(seg.data[8, 16, 16]))
    corrected = np.array(seg.data)
    confirmed = np.zeros(seg.data.shape, bool)
    confirmed[8] = True  # "slices" mode: the edited slice is confirmed
    widget.set_workspace(tmp_path / "ws")
    widget.iterations_spin.setValue(2)
    widget.finetune()
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    assert widget.last_result is not None and widget.last_result.adopted, widget.status.text()

    assert len(seen) == 1
    assert (seen[0].overlap, seen[0].tta, seen[0].largest_component) == (0.25, True, True)
    new = viewer.layers["scan segmentation"].data
    np.testing.assert_array_equal(new[confirmed], corrected[confirmed])  # bit for bit
    raw = predict_volume(
        str(widget.last_result.model_path), finetune_module.volume_from_layer(viewer.layers["scan"]), seen[0]
    ).labels
    assert (raw[confirmed] != corrected[confirmed]).any(), (
        "the model alone would have overwritten corrections"
    )
    assert (viewer.layers["scan entropy"].data[confirmed] == 0).all()  # confirmed voxels are not uncertain
    assert "confirmed voxels kept" in widget.status.text()


def test_finetune_shows_the_held_aside_scores(qtbot, segmented, tmp_path):
    viewer, segment, widget = segmented
    seg = viewer.layers["scan segmentation"]
    seg.brush_size = 4
    seg.paint((8, 16, 16), 1 - int(seg.data[8, 16, 16]))
    for z in (2, 5, 11):
        viewer.dims.set_current_step(0, z)
        widget.mark_current_slice()
    widget.set_workspace(tmp_path / "ws")
    widget.iterations_spin.setValue(2)
    widget.finetune()
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    result = widget.last_result
    assert result.before is not None and result.after is not None, widget.status.text()
    text = widget.score_label.text()
    assert f"v0001 {result.before:.3f}" in text and f"v0002 {result.after:.3f}" in text
    ws = Workspace(tmp_path / "ws")
    assert ws.current_version == ("v0002" if result.adopted else "v0001")
    if not result.adopted:
        assert (
            f"{result.after:.3f}" in widget.status.text() and f"{result.before:.3f}" in widget.status.text()
        )


def test_train_new_model_on_two_generated_cases(qtbot, viewer_with_scan, tmp_path):
    viewer = viewer_with_scan
    segment = SegmentWidget(viewer)
    widget = FinetuneWidget(viewer)
    ws = Workspace(tmp_path / "ws")
    for seed in (3, 4):
        image, gt = make_synthetic((16, 32, 32), (2.0, 1.0, 0.5), seed=seed, num_classes=2)
        ws.add_case(image, gt, None, name=f"generated{seed}")
    widget.set_workspace(ws.folder)
    widget.finetune()
    assert "train a new model" in widget.status.text()  # no model yet: the widget says what to do
    widget.train_new_model(iterations=2)
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    assert widget.last_result is not None and not widget.last_result.cancelled, widget.status.text()
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001"] and ws.current_version == "v0001"
    assert segment.model_path == ws.current_model_path
    assert "scan segmentation" in viewer.layers
    assert viewer.layers["scan segmentation"].data.shape == viewer.layers["scan"].data.shape
    assert "from scratch" in widget.status.text() and "segmented again" in widget.status.text()


def test_update_preview_shows_the_adapted_segmentation_and_saves_nothing(qtbot, segmented, tmp_path,
                                                                          monkeypatch, tiny_model_path):
    viewer, segment, widget = segmented
    monkeypatch.setattr(finetune_module, "PREVIEW_SECONDS", 2.0)
    model_bytes = tiny_model_path.read_bytes()
    seg = viewer.layers["scan segmentation"]
    seg.brush_size = 6
    for z in (4, 8, 12):
        seg.paint((z, 16, 16), 1 - int(seg.data[z, 16, 16]))
    corrected = np.array(seg.data)
    assert widget.tracker is not None and widget.tracker.has_edits
    mask = widget.tracker.mask(widget.mode).astype(bool)
    widget.set_workspace(tmp_path / "ws")
    widget.update_preview()
    assert widget._stage == "preview" and not widget.preview_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    assert "preview" in widget.status.text(), widget.status.text()
    shown = viewer.layers["scan segmentation"].data
    np.testing.assert_array_equal(shown[mask], corrected[mask])  # the corrections are on screen
    np.testing.assert_array_equal(widget.tracker.mask(widget.mode).astype(bool), mask)  # and still recorded
    assert tiny_model_path.read_bytes() == model_bytes  # nothing saved
    assert not (tmp_path / "ws").exists()
    assert widget.preview_button.isEnabled()


def test_update_preview_needs_corrections(segmented):
    viewer, segment, widget = segmented
    widget.update_preview()
    assert not widget.runner.running and "Correct or mark" in widget.status.text()
