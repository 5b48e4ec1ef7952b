"""The Segment widget with a multi-channel model: the scan's channels are the image layers named for the
model's channels (preselected by name, in the model's order); a missing channel is said in words."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.models.checkpoint import save_checkpoint
from napari_sscce.widgets.segment import SegmentWidget, channel_layers, model_channels
from sscce_factory import tiny_dual_model

WAIT_MS = 120_000


def _two_channel_model(path):
    model = tiny_dual_model(base_filters=2, in_channels=2)
    meta = {"method": "cce", "patch_size": [16, 32, 32], "spacing": [2.0, 1.0, 0.5],
            "normalization": {"mode": "zscore"}, "channel_names": ["T1", "FLAIR"]}
    return save_checkpoint(path, model, meta)


def test_channels_come_from_the_layers_named_for_them(qtbot, make_napari_viewer, scan, tmp_path):
    image, _ = scan
    viewer = make_napari_viewer()
    flair = viewer.add_image(image.array * -1.0, name="case FLAIR", scale=image.spacing)
    t1 = viewer.add_image(image.array, name="case T1", scale=image.spacing)
    viewer.add_image(image.array[:, :8], name="other T1", scale=image.spacing)  # another grid: not a channel
    assert channel_layers(viewer, flair, ["T1", "FLAIR"]) == [t1, flair]  # the model's order
    model = _two_channel_model(tmp_path / "m2.safetensors")
    assert model_channels({"in_channels": 2, "channel_names": ["T1", "FLAIR"]}) == ["T1", "FLAIR"]
    assert model_channels({"in_channels": 1}) == []
    widget = SegmentWidget(viewer)
    widget.set_model(model)
    volume = widget._volume_for_model(flair)
    assert volume.channel_names == ("T1", "FLAIR") and volume.array.shape == (2, *image.array.shape)
    np.testing.assert_array_equal(volume.array[0], image.array.astype(np.float32))  # T1 first
    picker = widget.channel_picker
    widget._refresh_channels(flair)
    assert not picker.isHidden()
    assert [c.currentText() for c in picker.combos.values()] == ["case T1", "case FLAIR"]
    picker.combos["T1"].setCurrentText("case FLAIR")  # a person's choice wins over the names
    assert widget._volume_for_model(flair).array[0].mean() == pytest.approx(-image.array.mean(), rel=1e-5)
    picker.combos["T1"].setCurrentText("case T1")
    widget.run(flair)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "case FLAIR segmentation" in viewer.layers, widget.status.text()
    assert viewer.layers["case FLAIR segmentation"].data.shape == image.array.shape


def test_a_missing_channel_is_said(make_napari_viewer, scan, tmp_path):
    image, _ = scan
    viewer = make_napari_viewer()
    t1 = viewer.add_image(image.array, name="case T1", scale=image.spacing)
    widget = SegmentWidget(viewer)
    widget.set_model(_two_channel_model(tmp_path / "m2.safetensors"))
    widget.run(t1)
    assert not widget.runner.running
    text = widget.status.text()
    assert "expects the channels T1, FLAIR" in text and "FLAIR" in text.split("named for")[1]


def test_a_multichannel_case_goes_into_the_workspace_with_its_channels(qtbot, make_napari_viewer, scan,
                                                                     tmp_path):
    from napari_sscce.widgets.finetune import FinetuneWidget
    from napari_sscce.workspace import Workspace

    image, _ = scan
    viewer = make_napari_viewer()
    viewer.add_image(image.array, name="case T1", scale=image.spacing)
    viewer.add_image(image.array * -1.0, name="case FLAIR", scale=image.spacing)
    segment = SegmentWidget(viewer)
    segment.set_model(_two_channel_model(tmp_path / "m2.safetensors"))
    widget = FinetuneWidget(viewer)
    segment.run(viewer.layers["case T1"])
    qtbot.waitUntil(lambda: not segment.runner.running, timeout=WAIT_MS)
    widget.image_combo.setCurrentText("case T1")
    seg = viewer.layers["case T1 segmentation"]
    assert widget.segmentation_layer() is seg
    seg.brush_size = 4
    seg.paint((8, 16, 16), 1 - int(seg.data[8, 16, 16]))  # a real change
    widget.set_workspace(tmp_path / "ws")
    name = widget.add_to_labeled_set()
    assert name is not None, widget.status.text()
    ws = Workspace(tmp_path / "ws")
    stored, labels, _ = ws.load_case(name)
    assert stored.channel_names == ("T1", "FLAIR") and stored.array.shape == (2, *image.array.shape)
    assert labels.array.shape == image.array.shape and len(ws.cases) == 1  # no channel added as a scan
