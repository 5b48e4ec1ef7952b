"""Workspace: cases and model versions on disk, atomic manifest."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_sscce import workspace as ws_module
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace, WorkspaceError


def _case(rng, shape=(6, 8, 10), name="case_a"):
    data = rng.normal(size=shape).astype(np.float32)
    image = Volume(data, spacing=(2.0, 1.0, 0.5), metadata={"name": name})
    labels = image.with_array((rng.random(shape) > 0.5).astype(np.uint8), is_label=True)
    mask = image.with_array(np.zeros(shape, np.uint8), is_label=True)
    mask.array[2] = 1
    return image, labels, mask


def test_add_case_writes_files_and_manifest(tmp_path, rng):
    image, labels, mask = _case(rng)
    ws = Workspace(tmp_path / "ws")
    name = ws.add_case(image, labels, mask)
    assert name == "case_a"
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    entry = manifest["cases"]["case_a"]
    assert re.fullmatch(r"images/case_a__[0-9a-f]{8}\.nii\.gz", entry["image"])
    assert entry["added_at"]
    assert entry["confirmed_fraction"] == pytest.approx(1 / 6)

    again = Workspace(tmp_path / "ws")  # a fresh object reads the same state back
    img2, lab2, mask2 = again.load_case("case_a")
    np.testing.assert_allclose(img2.array, image.array)
    np.testing.assert_array_equal(lab2.array, labels.array)
    np.testing.assert_array_equal(mask2.array, mask.array)
    assert img2.spacing == pytest.approx(image.spacing)


def test_readding_a_case_updates_it(tmp_path, rng):
    image, labels, mask = _case(rng)
    ws = Workspace(tmp_path)
    ws.add_case(image, labels, mask)
    first_added = ws.case("case_a").added_at
    labels2 = labels.with_array(np.ones(labels.shape, np.uint8))
    ws.add_case(image, labels2, None, update=True)
    assert [c.name for c in ws.cases] == ["case_a"]
    assert ws.case("case_a").added_at == first_added
    assert ws.case("case_a").confirmed_fraction == 1.0
    np.testing.assert_array_equal(ws.load_case("case_a")[1].array, 1)


def test_failed_write_leaves_manifest_and_files_untouched(tmp_path, rng, monkeypatch):
    image, labels, mask = _case(rng)
    ws = Workspace(tmp_path)
    ws.add_case(image, labels, mask)
    before_manifest = (tmp_path / "manifest.json").read_bytes()
    label_path = tmp_path / ws.case("case_a").label
    before_label = label_path.read_bytes()

    real_write = ws_module._write_volume

    def failing_write(volume, path):
        if path.parent.name == "masks":
            raise OSError("disk full")
        real_write(volume, path)

    monkeypatch.setattr(ws_module, "_write_volume", failing_write)
    new_labels = labels.with_array(np.zeros(labels.shape, np.uint8))
    with pytest.raises(OSError, match="disk full"):
        ws.add_case(image, new_labels, mask, update=True)
    with pytest.raises(OSError, match="disk full"):
        ws.add_case(image, new_labels, mask, name="case_b")
    assert (tmp_path / "manifest.json").read_bytes() == before_manifest
    assert label_path.read_bytes() == before_label  # not half-updated
    assert not list((tmp_path / "images").glob("case_b*"))
    assert len(list((tmp_path / "labels").iterdir())) == 1
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.is_file()]
    assert leftovers == []
    assert [c.name for c in Workspace(tmp_path).cases] == ["case_a"]


def test_failed_manifest_write_keeps_old_manifest(tmp_path, rng, monkeypatch):
    image, labels, mask = _case(rng)
    ws = Workspace(tmp_path)
    ws.add_case(image, labels, mask)
    before = (tmp_path / "manifest.json").read_bytes()
    label = ws.case("case_a").label

    def broken_dumps(*args, **kwargs):
        raise RuntimeError("crash while serialising")

    monkeypatch.setattr("napari_sscce.atomic.json.dumps", broken_dumps)
    with pytest.raises(RuntimeError):
        ws._save({"cases": {}, "models": [], "current": None})
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert Workspace(tmp_path).case("case_a").label == label


def test_corrupt_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="manifest.json"):
        Workspace(tmp_path)


def test_shape_mismatch_is_rejected(tmp_path, rng):
    image, labels, _ = _case(rng)
    bad = Volume(np.zeros((2, 2, 2), np.uint8), is_label=True)
    with pytest.raises(ValueError, match="differs from image shape"):
        Workspace(tmp_path).add_case(image, bad)


def test_dataset_folder_splits(tmp_path, rng):
    ws = Workspace(tmp_path)
    image, labels, mask = _case(rng)
    ws.add_case(image, labels, mask)
    ws.add_case(*_case(rng, name="case_b")[:2], name="case_b")
    ws.add_unlabeled(_case(rng, name="raw")[0])
    folder = ws.dataset_folder(val_cases=["case_b"])
    splits = json.loads((folder / "splits.json").read_text())
    assert splits == {"labeled": ["case_a"], "unlabeled": ["raw"], "val": ["case_b"]}
    with pytest.raises(KeyError):
        ws.dataset_folder(val_cases=["raw"])


def test_model_versions_and_revert(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert ws.current_model_path is None
    ckpt1 = tmp_path / "a.safetensors"
    ckpt1.write_bytes(b"first")
    ckpt2 = tmp_path / "b.safetensors"
    ckpt2.write_bytes(b"second")
    v1 = ws.add_model_version(ckpt1, {"method": "cce"}, {"dice": 0.5})
    v2 = ws.add_model_version(ckpt2, {"method": "cce"})
    assert (v1, v2) == ("v0001", "v0002")
    assert ws.current_model_path == tmp_path / "ws" / "models" / "v0002" / "model.safetensors"
    assert ws.current_model_path.read_bytes() == b"second"
    assert ws.versions[1].info["parent"] == "v0001"
    ws.revert(v1)
    reopened = Workspace(tmp_path / "ws")
    assert reopened.current_version == "v0001"
    assert reopened.current_model_path.read_bytes() == b"first"
    assert [v.version for v in reopened.versions] == ["v0001", "v0002"]  # newer versions are kept
    with pytest.raises(KeyError):
        ws.revert("v0009")
