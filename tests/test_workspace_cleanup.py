"""Workspace contract details (docs/contracts.md): opening removes orphans and counts them in ``.cleaned``;
an update deletes the replaced case files after the commit; the summary counts unlabeled cases;
labels and masks are stored as integer label maps; a case with a vanished file can still be removed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace

SHAPE = (4, 5, 6)


def _volumes(value: int, name: str = "c"):
    image = Volume(np.full(SHAPE, float(value), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    return image, image.with_array(np.full(SHAPE, value % 2, np.uint8), is_label=True)


def _case_files(folder):
    return {f"{sub}/{p.name}" for sub in ("images", "labels", "masks") if (folder / sub).is_dir()
            for p in (folder / sub).iterdir()}


def test_a_clean_workspace_reports_nothing_removed(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_volumes(1))
    assert Workspace(tmp_path / "ws").cleaned == {"temporaries": 0, "orphans": 0, "bytes": 0}


def test_opening_removes_orphan_case_files_and_version_folders_and_counts_them(tmp_path):
    folder = tmp_path / "ws"
    ws = Workspace(folder)
    ws.add_case(*_volumes(1), name="c")
    kept = _case_files(folder)
    image = folder / ws.case("c").image
    orphan = folder / "images" / "gone__0123abcd.nii.gz"  # a case file the manifest does not name
    shutil.copyfile(image, orphan)
    version = folder / "models" / "v0007"  # a version folder the manifest does not list
    version.mkdir(parents=True)
    (version / "model.safetensors").write_bytes(b"x" * 10)
    expected_bytes = orphan.stat().st_size + 10
    again = Workspace(folder)
    assert again.cleaned == {"temporaries": 0, "orphans": 2, "bytes": expected_bytes}
    assert not orphan.exists() and not version.exists()
    assert _case_files(folder) == kept  # referenced files untouched


def test_an_update_deletes_the_replaced_files(tmp_path):
    folder = tmp_path / "ws"
    ws = Workspace(folder)
    ws.add_case(*_volumes(1), name="c")
    before = set(ws.case("c").files)
    assert len(before) == 3
    ws.add_case(*_volumes(2), name="c", update=True)
    after = set(ws.case("c").files)
    assert not before & after  # new names for every file of the new version
    assert _case_files(folder) == after  # the replaced ones are gone
    assert float(ws.load_case("c")[0].array.flat[0]) == pytest.approx(2.0)


def test_summary_counts_labeled_and_unlabeled_cases(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_volumes(1, "a"))
    ws.add_unlabeled(_volumes(2, "b")[0])
    ws.add_unlabeled(_volumes(3, "d")[0])
    assert "1 labeled / 2 unlabeled cases" in repr(ws)


def test_labels_and_masks_are_stored_as_integer_label_maps(tmp_path):
    import nibabel as nib

    folder = tmp_path / "ws"
    ws = Workspace(folder)
    image, labels = _volumes(1)
    mask = image.with_array(np.zeros(SHAPE, np.uint8), is_label=True)
    mask.array[0] = 1
    ws.add_case(image, labels, mask, name="c")
    entry = ws.case("c")
    for rel in (entry.label, entry.mask):
        assert np.issubdtype(nib.load(folder / rel).get_data_dtype(), np.integer), rel
    assert nib.load(folder / entry.image).get_data_dtype() == np.float32
    back = ws.load_case("c")[2]
    assert back.is_label and np.array_equal(back.array, mask.array)


def test_a_case_whose_file_vanished_can_still_be_removed_completely(tmp_path):
    folder = tmp_path / "ws"
    ws = Workspace(folder)
    ws.add_case(*_volumes(1), name="c")
    ws.add_case(*_volumes(2), name="other")
    other = set(ws.case("other").files)
    (folder / ws.case("c").image).unlink()  # e.g. deleted by hand
    ws.remove_case("c")
    assert _case_files(folder) == other  # the label and mask of "c" are gone too (not left for a cleanup)
    assert [c.name for c in ws.cases] == ["other"]
    assert [c.name for c in Workspace(folder).cases] == ["other"]
