"""Issue 25: the right model for a scan, no wrong-class fine-tune, safe closing, honest spacing warnings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.loop import run_finetune
from napari_sscce.models.matching import ClassMismatchError
from napari_sscce.models.pretrained import training_statistics, write_packaged_model
from napari_sscce.widgets import _close_guard
from napari_sscce.widgets.finetune import FinetuneWidget
from napari_sscce.widgets.segment import SegmentWidget
from napari_sscce.workspace import Workspace
from sscce_factory import tiny_model_file

SHAPE = (16, 32, 32)  # as tests/widgets/conftest.py (conftest modules are not importable by name)
SPACING = (2.0, 1.0, 0.5)
WAIT_MS = 120_000


def _model(path, num_classes, class_names, spacing=SPACING):
    return tiny_model_file(path, num_classes=num_classes, base_filters=4, has_dropout=None,
                           patch_size=list(SHAPE), spacing=list(spacing), normalization={"mode": "zscore"},
                           class_names=class_names)


@pytest.fixture
def binary_workspace(tmp_path, scan):
    """A workspace holding one case with binary labels, confirmed everywhere."""
    image, label = scan
    ws = Workspace(tmp_path / "ws")
    mask = label.with_array(np.ones(label.shape, np.uint8), is_label=True)
    ws.add_case(image, label, mask, name="la_case")
    return ws


# ------------------------------------------------------------------------------ wrong-class fine-tune
def test_finetune_refuses_a_model_whose_classes_do_not_match(make_napari_viewer, binary_workspace, tmp_path):
    three = _model(tmp_path / "hippo.safetensors", 3, ["background", "anterior", "posterior"])
    widget = FinetuneWidget(make_napari_viewer())  # no image open, as in the issue
    widget.set_workspace(binary_workspace.folder)
    widget.session.set_model(three)
    widget.finetune()
    text = widget.status.text()
    assert not widget.runner.running
    assert "predicts 3 classes (background, anterior, posterior)" in text and "has 2" in text
    assert str(binary_workspace.folder) in text
    binary_workspace.reload()
    assert binary_workspace.versions == [] and binary_workspace.current_version is None
    with pytest.raises(ClassMismatchError, match="predicts 3 classes"):  # the headless rule, CLI included
        run_finetune(binary_workspace, three, iterations=1)
    binary_workspace.reload()
    assert binary_workspace.versions == []


# -------------------------------------------------------------------------------- close while training
def test_closing_the_viewer_while_finetuning_cancels_and_adopts_nothing(
    qtbot, make_napari_viewer, binary_workspace, tiny_model_path, monkeypatch
):
    asked = []
    monkeypatch.setattr(_close_guard, "ask_cancel_on_close", lambda parent, what: asked.append(what) or True)
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    widget.set_workspace(binary_workspace.folder)
    widget.session.set_model(tiny_model_path)
    widget.iterations_spin.setValue(100_000)
    steps = []
    widget.runner.progress.connect(lambda e: steps.append(e.step) if e.stage == "train" and e.step else None)
    widget.finetune()
    assert widget.runner.running
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=WAIT_MS)
    run = widget._run_folder
    assert run is not None and run.is_dir()
    viewer.close()
    assert asked == ["Training"]
    assert not widget.runner.running
    assert not run.exists()
    ws = Workspace(binary_workspace.folder)
    # only the starting model is registered (v0001, in use); no fine-tuned version was added or adopted
    assert [v.version for v in ws.versions] == ["v0001"] and ws.current_version == "v0001"
    assert [c.name for c in ws.labeled_cases] == ["la_case"]  # the correction is kept
    qtbot.wait(200)  # nothing arrives late


# ------------------------------------------------------------------------------------- model proposal
def _card(title, volumes):
    return {"title": title, "data": title, "training_data": training_statistics(volumes),
            "validation": {"cases": 1, "dice_mean": 0.8}}


@pytest.fixture
def two_packaged(tmp_path, monkeypatch):
    """Packaged "hippocampus-cce" (small 1 mm crops, raw MRI values) and "left-atrium-cce" (1.9 mm, large
    field of view, normalised values) with cards from generated training scans."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "packaged"
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(folder))
    hippo = [Volume(rng.uniform(0, 900, (36, 50, 35)).astype(np.float32), (1.0, 1.0, 1.0))]
    la = [Volume(rng.normal(0, 1, (29, 48, 64)).astype(np.float32), (1.9, 1.875, 1.875))]
    hippo_model = _model(tmp_path / "h.safetensors", 3, ["background", "anterior", "posterior"], (1, 1, 1))
    la_model = _model(tmp_path / "l.safetensors", 2, ["background", "left atrium"], (1.9, 1.875, 1.875))
    write_packaged_model(hippo_model, folder / "hippocampus-cce.safetensors", _card("Hippocampus MRI", hippo))
    write_packaged_model(la_model, folder / "left-atrium-cce.safetensors", _card("Left atrium MRI", la))
    return folder


def test_segment_proposes_the_model_whose_data_fits_the_scan(make_napari_viewer, two_packaged):
    rng = np.random.default_rng(1)
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    # an LA-like scan: full resolution (0.625 mm), 55 x 100 x 100 mm, raw 0..255 intensities
    viewer.add_image(rng.uniform(0, 255, (88, 160, 160)).astype(np.float32), name="la", scale=(0.625,) * 3)
    assert widget.model_path == two_packaged / "left-atrium-cce.safetensors"
    assert "Left atrium" in widget.model_combo.currentText()
    # a hippocampus-like crop: 1 mm, 40 x 48 x 36 mm
    viewer.add_image(rng.uniform(0, 800, (40, 48, 36)).astype(np.float32), name="hippo", scale=(1.0,) * 3)
    widget.image_combo.setCurrentText("hippo")
    assert widget.model_path == two_packaged / "hippocampus-cce.safetensors"
    assert "Hippocampus" in widget.model_combo.currentText()
    # a model the person picks stays, whatever image is chosen
    index = widget.model_combo.findData(str(two_packaged / "left-atrium-cce.safetensors"))
    widget._on_model_chosen(index)
    widget.image_combo.setCurrentText("la")
    widget.image_combo.setCurrentText("hippo")
    assert widget.model_path == two_packaged / "left-atrium-cce.safetensors"


# ------------------------------------------------------------------------------------ spacing warnings
def test_spacing_warning_only_for_a_scan_truly_far_off(qtbot, make_napari_viewer, tiny_model_path, scan):
    image, _ = scan
    viewer = make_napari_viewer()
    finer = tuple(s / 3 for s in SPACING)  # full resolution of the model's own kind: resampled, no warning
    coarser = tuple(s * 3 for s in SPACING)  # 3x coarser than anything the model saw
    viewer.add_image(image.array, name="fine", scale=finer)
    viewer.add_image(image.array, name="coarse", scale=coarser)
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    widget.run(viewer.layers["fine"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert widget.domain_warnings == [] and "warning" not in widget.status.text()
    widget.run(viewer.layers["coarse"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert len(widget.domain_warnings) == 1
    assert "warning: spacing 6 x 3 x 1.5 mm is more than 1.5x coarser" in widget.status.text()



# ----------------------------------------------------------------------------------- errors in words
def test_a_read_only_workspace_is_said_in_words_not_an_errno(tmp_path):
    import errno

    from napari_sscce.widgets._messages import explain_error

    exc = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ws" / "manifest.lock"))
    text = explain_error(exc, tmp_path / "ws")
    assert "Errno" not in text and "read-only" in text and "Choose another workspace folder" in text
    assert str(tmp_path / "ws") in text
    assert explain_error(ValueError("bad labels")) == "bad labels"  # own messages pass through
