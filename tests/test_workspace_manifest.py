"""The manifest (issue 24): a format version; a newer format, wrong types or deep nesting give a message
naming the file (no traceback, no data touched); unknown keys of a newer version are kept; a read-only or
full disk says so in words."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from napari_sscce import workspace as ws_module
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace, WorkspaceError, WorkspaceWriteError

SHAPE = (4, 5, 6)


def _volumes(value: int, name: str = "c", shape=SHAPE):
    image = Volume(np.full(shape, float(value), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    return image, image.with_array(np.full(shape, value % 2, np.uint8), is_label=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def folder(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_volumes(1), name="a")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"w" * 100)
    ws.add_model_version(model)
    return tmp_path / "ws"


def _edit(folder: Path, change) -> dict[str, bytes]:
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return _files(folder)


def test_a_new_manifest_records_its_format(folder):
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert data["format"] == ws_module.FORMAT_VERSION


def test_a_manifest_from_a_newer_version_is_refused_naming_the_file(folder):
    before = _edit(folder, lambda d: d.update(format=ws_module.FORMAT_VERSION + 1, future_thing={"x": 1}))
    with pytest.raises(WorkspaceError, match=r"manifest\.json: manifest format 2 .*newer napari-sscce"):
        Workspace(folder)
    assert _files(folder) == before


@pytest.mark.parametrize(("change", "text"), [
    (lambda d: d.update(models={"v0001": {}}), r"'models' must be a list, not dict"),
    (lambda d: d.update(num_classes="three"), r"'num_classes' must be an integer or null, not str"),
    (lambda d: d.update(format="1"), r"'format' must be an integer, not str"),
    (lambda d: d["cases"]["a"].update(label=5), r"case 'a': 'label' must be a string or null, not int"),
    (lambda d: d["cases"]["a"].update(confirmed_fraction="all"), r"case 'a': 'confirmed_fraction'"),
    (lambda d: d["models"][0].update(info=[1]), r"model entry 1: 'info' must be an object, not list"),
    (lambda d: d.update(current="v0099"), r"current model 'v0099' is not one of the listed versions"),
])
def test_wrong_types_are_named(folder, change, text):
    before = _edit(folder, change)
    with pytest.raises(WorkspaceError, match=text) as info:
        Workspace(folder)
    assert str(folder / "manifest.json") in str(info.value)
    assert _files(folder) == before


def test_deeply_nested_json_is_a_message(folder):
    (folder / "manifest.json").write_text('{"cases": ' + "[" * 100000 + "]" * 100000 + "}", encoding="utf-8")
    with pytest.raises(WorkspaceError, match="manifest.json: cannot read the workspace manifest"):
        Workspace(folder)


def test_unknown_keys_of_a_newer_version_are_kept(folder):
    def change(d):
        d["shared_with"] = ["x"]
        d["cases"]["a"]["reviewer"] = "dr. who"
        d["models"][0]["signature"] = "abc"
    _edit(folder, change)
    ws = Workspace(folder)
    assert ws.case("a").name == "a" and ws.versions[0].version == "v0001"
    ws.add_case(*_volumes(2), name="a", update=True)
    ws.add_case(*_volumes(3), name="b")
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert data["shared_with"] == ["x"] and data["cases"]["a"]["reviewer"] == "dr. who"
    assert data["models"][0]["signature"] == "abc"


@pytest.mark.parametrize(("code", "text"), [(errno.EROFS, "the folder is read-only"),
                                            (errno.EACCES, "the folder is read-only"),
                                            (errno.ENOSPC, "disk full")])
def test_write_failures_are_said_in_words(folder, monkeypatch, code, text):
    ws = Workspace(folder)
    before = _files(folder)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ws_module, "_write_volume", fail)
    with pytest.raises(WorkspaceWriteError, match=f"cannot write {folder}.*: {text}") as info:
        ws.add_case(*_volumes(2), name="b")
    assert "Errno" not in str(info.value)
    assert _files(folder) == before


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_a_message_and_the_workspace_stays_consistent(tmpfs):
    ws = Workspace(tmpfs / "ws")
    rng = np.random.default_rng(0)
    added = []
    with pytest.raises(WorkspaceWriteError, match="disk full"):
        for _ in range(200):
            image = Volume(rng.normal(size=(16, 32, 32)).astype(np.float32), spacing=(1.0, 1.0, 1.0))
            added.append(ws.add_case(image, image.with_array(np.ones(image.shape, np.uint8), is_label=True),
                                     name=f"c{uuid.uuid4().hex[:4]}"))
    assert added
    again = Workspace(tmpfs / "ws")
    assert sorted(c.name for c in again.cases) == sorted(added)
    for name in added:
        assert again.load_case(name)[0].shape == (16, 32, 32)


def test_a_read_only_folder_opens_for_reading_and_refuses_writes_in_words(tmpfs):
    ws = Workspace(tmpfs / "ws")
    ws.add_case(*_volumes(1), name="a")
    before = _files(tmpfs / "ws")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    ro = Workspace(tmpfs / "ws")
    assert ro.read_only and [c.name for c in ro.cases] == ["a"]
    assert float(ro.load_case("a")[0].array.flat[0]) == 1.0
    with pytest.raises(WorkspaceWriteError, match=r"cannot write .*manifest\.lock: the folder is read-only"):
        ro.add_case(*_volumes(2), name="b")
    assert _files(tmpfs / "ws") == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_chmod_read_only_folder_refuses_writes_in_words(folder):
    os.chmod(folder, 0o555)
    try:
        ro = Workspace(folder)
        assert ro.read_only
        with pytest.raises(WorkspaceWriteError, match="the folder is read-only"):
            ro.add_case(*_volumes(2), name="b")
    finally:
        os.chmod(folder, 0o755)
