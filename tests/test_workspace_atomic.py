"""The manifest is replaced atomically: a failure in the write itself leaves the old, valid manifest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace


def _case(name="case_a", shape=(4, 6, 8)):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=shape).astype(np.float32), metadata={"name": name})
    labels = image.with_array((rng.random(shape) > 0.5).astype(np.uint8), is_label=True)
    return image, labels


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_case())
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"model one")
    ws.add_model_version(ckpt)
    ws.add_model_version(ckpt)
    return ws


def _fail_on_manifest(monkeypatch, what: str):
    """Make ``os.<what>`` raise when it would put ``manifest.json`` in place (other files go through)."""
    real = getattr(os, what)

    def broken(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith("manifest.json"):
            raise OSError(f"simulated crash in {what}")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, what, broken)


def _fail_fsync(monkeypatch):
    def broken(fd):
        raise OSError("simulated crash in fsync")

    monkeypatch.setattr(os, "fsync", broken)


OPERATIONS = {
    "revert": lambda ws, tmp: ws.revert("v0001"),
    "add_model_version": lambda ws, tmp: ws.add_model_version(tmp / "m.safetensors"),
    "add_case": lambda ws, tmp: ws.add_case(*_case("case_b")),
    "remove_case": lambda ws, tmp: ws.remove_case("case_a"),
}


@pytest.mark.parametrize("failure", ["replace", "fsync"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_failed_manifest_write_keeps_the_old_manifest(workspace, tmp_path, monkeypatch, operation, failure):
    manifest = workspace.manifest_path
    before = manifest.read_bytes()
    if failure == "fsync":
        _fail_fsync(monkeypatch)
    else:
        _fail_on_manifest(monkeypatch, "replace")
        _fail_on_manifest(monkeypatch, "rename")
    try:
        OPERATIONS[operation](workspace, tmp_path)
    except OSError:
        pass
    monkeypatch.undo()
    assert manifest.read_bytes() == before, f"{operation}: manifest changed although its write failed"
    data = json.loads(manifest.read_text())
    reopened = Workspace(manifest.parent)
    assert reopened.current_version == data["current"] == "v0002"
    assert [c.name for c in reopened.cases] == ["case_a"]
    assert not [p.name for p in manifest.parent.glob(".manifest.json*")]  # no temporary left behind


def test_a_failed_manifest_write_raises(workspace, monkeypatch):
    """The caller learns that the change was not saved (no silent success)."""
    _fail_on_manifest(monkeypatch, "replace")
    _fail_on_manifest(monkeypatch, "rename")
    with pytest.raises(OSError, match="simulated crash"):
        workspace.revert("v0001")
    assert workspace.current_version == "v0002"  # the object did not move on without its file
