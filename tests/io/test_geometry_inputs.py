"""Issue 24: labels on their image's grid (not mirrored or shifted), singular affines, DICOM slice positions,
model files with deeply nested JSON."""

from __future__ import annotations

import json
import struct

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import read_volume
from napari_sscce.io.validate import check_pair, check_same_grid, reorient_like


def _pair(tmp_path, label_affine):
    data = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    label = (data > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, label_affine), str(tmp_path / "lab.nii.gz"))
    return read_volume(tmp_path / "img.nii.gz"), read_volume(tmp_path / "lab.nii.gz", is_label=True)


def test_a_mirrored_label_is_refused_naming_both_files_and_can_be_reoriented_explicitly(tmp_path):
    mirror = np.diag([-1.0, 1, 1, 1])
    mirror[0, 3] = 5.0  # the same extent, stored left-right flipped
    image, label = _pair(tmp_path, mirror)
    with pytest.raises(VolumeError, match=r"lab.nii.gz: label lies elsewhere.*img.nii.gz.*mirrored along x"):
        check_pair(image, label)
    fixed = reorient_like(label, image)
    check_pair(image, fixed)
    expected = nib.load(str(tmp_path / "lab.nii.gz")).get_fdata()[::-1].transpose(2, 1, 0)
    assert np.array_equal(fixed.array, expected)


def test_a_shifted_label_is_refused_and_cannot_be_reoriented(tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = (2.0, 0, 0)
    image, label = _pair(tmp_path, shifted)
    with pytest.raises(VolumeError, match="origins differ by"):
        check_same_grid(image, label, what="mask")
    with pytest.raises(VolumeError, match="cannot be reoriented"):
        reorient_like(label, image)


def test_a_label_within_float_rounding_of_its_image_is_accepted(tmp_path):
    close = np.eye(4)
    close[:3, 3] = 1e-5
    image, label = _pair(tmp_path, close)
    check_pair(image, label)


def test_a_singular_affine_is_refused_at_read_time(tmp_path):
    affine = np.eye(4)
    affine[:3, 1] = affine[:3, 0]  # two axes pointing the same way
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), affine)
    nib.save(img, str(tmp_path / "singular.nii.gz"))
    with pytest.raises(VolumeError, match="singular.nii.gz: .*singular"):
        read_volume(tmp_path / "singular.nii.gz")


def _write_dicom(folder, positions):
    sitk = pytest.importorskip("SimpleITK")
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, z in enumerate(positions):
        img = sitk.GetImageFromArray(np.full((1, 6, 7), i, np.int16))[:, :, 0]
        for tag, value in {"0020|000e": "1.2.826.0.9", "0020|0013": str(i + 1), "0020|0032": f"0\\0\\{z}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0008|0060": "CT", "0020|000d": "1.2.3"}.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{i:03d}.dcm"))
        writer.Execute(img)


def test_dicom_duplicated_slice_positions_are_refused(tmp_path):
    _write_dicom(tmp_path / "dup", [0.0, 2.5, 2.5, 5.0, 7.5])
    with pytest.raises(VolumeError, match="dup: 2 of its 5 DICOM slices share a position"):
        read_volume(tmp_path / "dup")


def test_dicom_slice_gaps_must_be_uniform(tmp_path):
    _write_dicom(tmp_path / "gap", [0.0, 2.5, 5.0, 10.0, 12.5])
    with pytest.raises(VolumeError, match="not uniformly spaced"):
        read_volume(tmp_path / "gap")
    _write_dicom(tmp_path / "ok", [0.0, 2.5, 5.0, 7.5])
    volume = read_volume(tmp_path / "ok")
    assert volume.shape == (4, 6, 7) and volume.spacing[0] == pytest.approx(2.5)


def test_a_model_file_with_deeply_nested_json_is_a_message(tmp_path):
    from napari_sscce.models.checkpoint import CheckpointError, read_checkpoint_metadata

    nested = "[" * 200_000 + "]" * 200_000
    header = json.dumps({"__metadata__": {"format": "napari-sscce"}})[:-1] + f', "x": {nested}}}'
    raw = header.encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="deep.safetensors.*nest"):
        read_checkpoint_metadata(path)
