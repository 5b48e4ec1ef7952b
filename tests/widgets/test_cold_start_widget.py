"""Issues 25 and 27: "Train new model" as a person uses it: any painted Labels layer, class names asked
for, the plan and its time shown first, step n of N while training, the Segment widget shows the new model."""

from __future__ import annotations

import re

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.models.pretrained import write_packaged_model
from napari_sscce.widgets.finetune import FinetuneWidget, proposed_class_names
from napari_sscce.widgets.segment import SegmentWidget
from napari_sscce.workspace import Workspace

WAIT_MS = 180_000
#: seconds per step the timing probe is made to report (the plan's arithmetic, without measuring)
PROBE_SECONDS = 1.0


@pytest.fixture
def painted(qtbot, viewer_with_scan, scan, tiny_model_path, tmp_path, monkeypatch):
    """A Labels layer painted from scratch on the scan (no naming rule), with a Segment widget using a
    packaged model ("Hippocampus MRI — CCE", the tiny model); returns (viewer, segment widget, fine-tune
    widget, labels layer)."""
    packaged = tmp_path / "packaged"
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(packaged))
    write_packaged_model(tiny_model_path, packaged / "hippocampus-cce.safetensors",
                         {"title": "Hippocampus MRI — CCE", "data": "hippocampus"})
    viewer = viewer_with_scan
    segment = SegmentWidget(viewer)
    assert segment.model_combo.currentText() == "Hippocampus MRI — CCE"
    widget = FinetuneWidget(viewer)
    image = viewer.layers["scan"]
    _, truth = scan
    layer = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="my painting", scale=image.scale,
                              translate=image.translate)
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="elsewhere")  # another grid: not offered
    assert [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())] == ["my painting"]
    assert widget.segmentation_layer() is layer and widget.tracker is not None
    layer.brush_size = 40
    for z in (4, 8, 12):  # paint the true object into three slices, as strokes
        viewer.dims.set_current_step(0, z)
        target = np.asarray(truth.array[z] > 0)
        layer.paint((z, 16, 16), 1)  # a stroke to record the slice...
        layer.data[z] = target.astype(np.uint8)  # ...then its exact content
    layer.refresh()
    return viewer, segment, widget, layer


def test_train_new_model_from_a_painted_layer_asks_names_plans_and_shows_steps(
    qtbot, painted, tmp_path, monkeypatch
):
    viewer, segment, widget, layer = painted
    monkeypatch.setattr("napari_sscce.training.plan.probe_step_seconds", lambda *a, **k: PROBE_SECONDS)
    widget.set_workspace(tmp_path / "ws")
    assert widget.classes_edit.text() == "background, class 1"  # proposed from the labels' values
    widget.classes_edit.clear()
    qtbot.keyClicks(widget.classes_edit, "background, atrium")  # typed, as a person would
    widget.budget_spin.setValue(0.5)
    statuses: list[str] = []
    widget.runner.progress.connect(lambda e: statuses.append(widget.status.text()))
    qtbot.mouseClick(widget.new_button, Qt.MouseButton.LeftButton)
    assert widget.runner.running and "measuring a training step" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.runner.running and widget._stage == "", timeout=WAIT_MS)
    result = widget.last_result
    assert result is not None and not result.cancelled, widget.status.text()

    ws = Workspace(tmp_path / "ws")
    assert ws.class_names == ["background", "atrium"]  # confirmed by this first use
    meta = read_checkpoint_metadata(ws.current_model_path)
    assert meta["class_names"] == ["background", "atrium"] and meta["num_classes"] == 2
    plan = meta["config"]["plan"]
    assert plan["budget_seconds"] == 30.0 and plan["step_seconds"] == PROBE_SECONDS
    # the plan was stated before the steps, with its estimate, and the run did what it said
    assert widget.plan_label.text().startswith("plan: training a new model from scratch, about ")
    assert f"{plan['iterations']} iterations" in widget.plan_label.text()
    assert result.iterations == plan["iterations"]
    steps = [s for s in statuses if s.startswith("training: step")]
    assert steps and all(f"of {plan['iterations']}" in s for s in steps)
    assert any(re.search(r"about \d+ (s|min) left", s) for s in steps)
    # the Segment widget's model box names the new workspace model, not the one used before
    assert segment.model_combo.currentText() == f"{ws.folder.name} v0001"
    assert "background, atrium" in segment.model_info.text()
    assert "my painting" in viewer.layers


def test_confirmed_classes_are_fixed_for_the_workspace(qtbot, painted, tmp_path):
    viewer, _, widget, layer = painted
    widget.set_workspace(tmp_path / "ws")
    qtbot.mouseClick(widget.add_button, Qt.MouseButton.LeftButton)
    ws = Workspace(tmp_path / "ws")
    assert [c.name for c in ws.labeled_cases] == ["scan"], widget.status.text()
    assert ws.class_names == ["background", "class 1"]  # the proposal, confirmed by the first add
    assert widget.classes_edit.isReadOnly() and widget.classes_edit.text() == "background, class 1"
    layer.data[2, :4, :4] = 2  # a stray value does not add a class: it is refused, in words
    layer.paint((2, 10, 10), 1)
    qtbot.mouseClick(widget.add_button, Qt.MouseButton.LeftButton)
    assert "value 2, outside the 2 classes" in widget.status.text()
    assert Workspace(tmp_path / "ws").class_names == ["background", "class 1"]


def test_proposed_names_follow_the_model_when_it_fits():
    assert proposed_class_names(1, ["background", "left atrium"]) == ["background", "left atrium"]
    assert proposed_class_names(1, ["background", "anterior", "posterior"]) == ["background", "class 1"]
    assert proposed_class_names(0) == ["background", "class 1"]
    assert proposed_class_names(2) == ["background", "class 1", "class 2"]
