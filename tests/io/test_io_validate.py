"""Bad input: every problem raises VolumeError naming the file and saying what is wrong."""

from __future__ import annotations

import gzip

import h5py
import nibabel as nib
import numpy as np
import pytest

from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import read_image_label, read_volume
from napari_sscce.io.validate import check_image, check_labels, check_pair
from napari_sscce.io.volume import Volume


def save_nifti(path, data, zooms=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def raises_naming(path, *fragments):
    """Context: VolumeError whose message names ``path`` and contains every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(VolumeError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert str(path) in message, message
            for fragment in fragments:
                assert fragment in message, message
            return handled

    return _Check()


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1)])
def test_2d_image_is_refused(tmp_path, shape):
    path = save_nifti(tmp_path / "slice.nii.gz", np.zeros(shape, np.float32))
    with raises_naming(path, "is 2D", "segments 3D volumes"):
        read_volume(path)


def test_4d_volume_asks_for_a_channel(tmp_path):
    path = save_nifti(tmp_path / "multi.nii.gz", np.zeros((6, 7, 8, 2), np.float32))
    with raises_naming(path, "4D", "--channel N", "read_volume(path, channel=N)", "0..1"):
        read_volume(path)
    with raises_naming(path, "channel 5 does not exist"):
        read_volume(path, channel=5)


def test_shape_mismatch(tmp_path):
    image = Volume(np.zeros((4, 5, 6)), source=tmp_path / "img.nii.gz")
    label = Volume(np.zeros((4, 5, 7), np.uint8), source=tmp_path / "lab.nii.gz", is_label=True)
    with raises_naming(tmp_path / "lab.nii.gz", "label shape (4, 5, 7) does not match image shape (4, 5, 6)"):
        check_pair(image, label)


def test_spacing_mismatch(tmp_path):
    image = Volume(np.zeros((4, 5, 6)), spacing=(2.0, 1.0, 1.0), source=tmp_path / "img.nii.gz")
    label = Volume(np.zeros((4, 5, 6), np.uint8), spacing=(1.0, 1.0, 1.0), source=tmp_path / "lab.nrrd")
    with raises_naming(tmp_path / "lab.nrrd", "spacing"):
        check_pair(image, label)
    check_pair(image, Volume(np.zeros((4, 5, 6), np.uint8), spacing=(2.0, 1.0, 1.0)))  # same grid: fine


def test_non_integer_labels(tmp_path):
    path = save_nifti(tmp_path / "lab.nii.gz", np.full((4, 5, 6), 0.5, np.float32))
    with raises_naming(path, "not an integer label map", "0.5"):
        read_volume(path, is_label=True)


def test_negative_labels(tmp_path):
    path = save_nifti(tmp_path / "lab.nii.gz", np.full((4, 5, 6), -1, np.int16))
    with raises_naming(path, "negative labels"):
        read_volume(path, is_label=True)


def test_labels_above_class_count(tmp_path):
    label = Volume(np.array([0, 1, 3] * 40, np.uint8).reshape(4, 5, 6), source=tmp_path / "l.nii.gz")
    with raises_naming(tmp_path / "l.nii.gz", "label 3", "2 classes"):
        check_labels(label, num_classes=2)
    assert check_labels(label, num_classes=4) is label


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_voxels(tmp_path, bad):
    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = bad
    path = save_nifti(tmp_path / "scan.nii.gz", data)
    volume = read_volume(path)
    with raises_naming(path, "NaN" if np.isnan(bad) else "Inf"):
        check_image(volume)


def test_truncated_file(tmp_path):
    path = save_nifti(tmp_path / "scan.nii.gz", np.ones((20, 20, 20), np.float32))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with raises_naming(path, "cannot be read as NIfTI", "truncated"):
        read_volume(path)


@pytest.mark.parametrize("name", ["notes.nrrd", "notes.mha", "notes.nii", "notes.h5", "notes.tif"])
def test_non_image_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n" * 20)
    with raises_naming(path, "cannot be read"):
        read_volume(path)


def test_unsupported_extension_and_missing_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with raises_naming(tmp_path / "a.png", "unsupported file type"):
        read_volume(tmp_path / "a.png")
    with raises_naming(tmp_path / "b.nii.gz", "no such file"):
        read_volume(tmp_path / "b.nii.gz")


def test_h5_without_expected_datasets_lists_its_content(tmp_path):
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f["volume"] = np.zeros((4, 5, 6), np.float32)
        f["group/seg"] = np.zeros((4, 5, 6), np.uint8)
    with raises_naming(path, "no 'image' dataset", "'volume' (4, 5, 6) float32", "'group/seg'"):
        read_image_label(path)
    with raises_naming(path, "no 'label' dataset"):
        read_volume(path, is_label=True)


def test_empty_folder_is_not_dicom(tmp_path):
    with raises_naming(tmp_path, "no DICOM series"):
        read_volume(tmp_path)
