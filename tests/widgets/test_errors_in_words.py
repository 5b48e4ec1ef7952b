"""Issue 25: errors a person can cause are said in words: a read-only workspace, a spacing assumed from a
file format (said once)."""

from __future__ import annotations

import errno

import h5py
import numpy as np
import pytest

from napari_sscce import workspace as workspace_module
from napari_sscce.io.napari_io import read_layers
from napari_sscce.widgets.finetune import FinetuneWidget
from napari_sscce.widgets.segment import SegmentWidget

WAIT_MS = 120_000


class _ReadOnlyLock:
    """What ``filelock`` raises on a read-only file system: creating ``manifest.lock`` fails (EROFS)."""

    def __init__(self, path: str, timeout: float = 0.0):
        self.path = path

    def acquire(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", self.path)

    def release(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        return False


def test_a_read_only_workspace_is_a_sentence_in_the_widget(make_napari_viewer, tmp_path, monkeypatch,
                                                           tiny_model_path):
    widget = FinetuneWidget(make_napari_viewer())
    widget.session.set_model(tiny_model_path)
    monkeypatch.setattr(workspace_module, "FileLock", _ReadOnlyLock)
    widget.set_workspace(tmp_path / "ro")
    for action in (widget.finetune, widget.train_new_model):
        widget.status.setText("")
        action()
        text = widget.status.text()
        assert "Errno" not in text and "manifest.lock" not in text, text
        assert f"Cannot write to {tmp_path / 'ro'}: it is read-only" in text
        assert not widget.runner.running


def _write_h5(path, spacing=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["image"] = rng.normal(size=(32, 32, 16)).astype(np.float32)  # stored (x, y, z)
        f["label"] = (rng.random((32, 32, 16)) > 0.7).astype(np.uint8)
        if spacing is not None:
            f["image"].attrs["spacing"] = spacing
    return path


def _open(viewer, path):
    for data, kwargs, kind in read_layers(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)


def test_a_spacing_assumed_from_the_h5_format_is_said_once(qtbot, make_napari_viewer, tmp_path,
                                                           tiny_model_path):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    _open(viewer, _write_h5(tmp_path / "no_spacing.h5"))
    note = "no_spacing's file stores no voxel size, so 0.625 mm, the voxel size of the LA 2018 .h5 files"
    assert note in widget.status.text()  # told when the image is opened
    widget.run(viewer.layers["no_spacing"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "done in" in widget.status.text() and "stores no voxel size" not in widget.status.text()


@pytest.mark.parametrize("spacing", [1.0, [0.7, 0.7, 1.4]])
def test_a_file_with_its_spacing_gets_no_note(qtbot, make_napari_viewer, tmp_path, tiny_model_path, spacing):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.set_model(tiny_model_path)
    _open(viewer, _write_h5(tmp_path / "with_spacing.h5", spacing))
    widget.run(viewer.layers["with_spacing"])
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    assert "stores no voxel size" not in widget.status.text()
    np.testing.assert_allclose(viewer.layers["with_spacing"].scale, np.broadcast_to(spacing, 3)[::-1])
