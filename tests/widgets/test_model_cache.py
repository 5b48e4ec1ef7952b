"""The session keeps the loaded model file: a second Segment run does not read it again."""

from __future__ import annotations

import os
import shutil

import napari_sscce.widgets._state as state
from napari_sscce.widgets._state import Session
from napari_sscce.widgets.segment import SegmentWidget

WAIT_MS = 60_000


def _counting_loads(monkeypatch) -> list:
    loads = []
    real = state.load_checkpoint

    def counting(path, *args, **kwargs):
        loads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(state, "load_checkpoint", counting)
    return loads


def test_checkpoint_is_kept_until_the_file_changes(tiny_model_path, tmp_path, monkeypatch):
    loads = _counting_loads(monkeypatch)
    path = tmp_path / "model.safetensors"
    shutil.copy(tiny_model_path, path)
    session = Session()
    first = session.checkpoint(path)
    assert session.checkpoint(str(path)) is first and len(loads) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was rewritten
    second = session.checkpoint(path)
    assert second is not first and len(loads) == 2
    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_model_path, other)
    assert session.checkpoint(other) is not second and len(loads) == 3


def test_segmenting_twice_loads_the_model_once(qtbot, viewer_with_scan, tiny_model_path, monkeypatch):
    loads = _counting_loads(monkeypatch)
    widget = SegmentWidget(viewer_with_scan)
    widget.set_model(tiny_model_path)
    for _ in range(2):
        widget.run()
        qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
        assert widget.last_prediction is not None, widget.status.text()
    assert len(loads) == 1
