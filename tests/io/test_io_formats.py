"""Round trips per format: values, spacing and affine survive reading and writing."""

from __future__ import annotations

import h5py
import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from napari_sscce.io.geometry import volume_to_ras_xyz
from napari_sscce.io.readers import read_image_label, read_volume
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume

SHAPE_XYZ = (9, 7, 5)


@pytest.fixture
def data_xyz(rng) -> np.ndarray:
    return rng.normal(100, 20, SHAPE_XYZ).astype(np.float32)


def oblique_affine() -> np.ndarray:
    """A NIfTI (x, y, z) -> RAS affine with rotation, anisotropic spacing and an origin."""
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-30.0, 12.5, 7.0]
    return affine


def world_of(volume: Volume, zyx) -> np.ndarray:
    """RAS world point of an array index, from the Volume's affine (world listed S, A, R)."""
    return (volume.affine @ np.array([*zyx, 1.0]))[:3][::-1]


def test_nifti_axes_affine_and_world_points(tmp_path, data_xyz):
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(data_xyz, affine), tmp_path / "scan.nii.gz")
    vol = read_volume(tmp_path / "scan.nii.gz")
    assert vol.shape == SHAPE_XYZ[::-1]
    assert vol.array[4, 3, 2] == data_xyz[2, 3, 4]
    np.testing.assert_allclose(vol.spacing, (2.5, 0.9, 0.8))
    # voxel (x, y, z) = (2, 3, 4) sits where the NIfTI affine puts it
    np.testing.assert_allclose(world_of(vol, (4, 3, 2)), (affine @ [2, 3, 4, 1])[:3])
    assert not vol.is_label


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_write_read_round_trip_keeps_values_and_affine(tmp_path, data_xyz, suffix):
    nib.save(nib.Nifti1Image(data_xyz, oblique_affine()), tmp_path / "scan.nii.gz")
    source = read_volume(tmp_path / "scan.nii.gz")
    out = write_volume(source, tmp_path / f"copy{suffix}")
    again = read_volume(out)
    np.testing.assert_array_equal(again.array, source.array)
    np.testing.assert_allclose(again.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(again.spacing, source.spacing)


def test_nifti_writer_reproduces_source_header_affine(tmp_path, data_xyz):
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(data_xyz, affine), tmp_path / "scan.nii.gz")
    seg = read_volume(tmp_path / "scan.nii.gz").with_array(np.ones(SHAPE_XYZ[::-1], np.uint8), is_label=True)
    write_volume(seg, tmp_path / "seg.nii.gz")
    written = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    np.testing.assert_allclose(written.get_qform(), affine, atol=1e-5)
    assert written.get_data_dtype() == np.uint8
    assert written.shape == SHAPE_XYZ


def test_labels_written_as_uint8_or_uint16_and_images_as_float32(tmp_path):
    big = Volume(np.full((4, 5, 6), 300, dtype=np.int64), is_label=True)
    small = Volume(np.arange(120, dtype=np.float64).reshape(4, 5, 6) % 3, is_label=True)
    image = Volume(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    assert nib.load(write_volume(big, tmp_path / "big.nii.gz")).get_data_dtype() == np.uint16
    assert nib.load(write_volume(small, tmp_path / "small.nii.gz")).get_data_dtype() == np.uint8
    assert nib.load(write_volume(image, tmp_path / "img.nii.gz")).get_data_dtype() == np.float32
    data, _ = nrrd.read(str(write_volume(small, tmp_path / "small.nrrd")))
    assert data.dtype == np.uint8


def test_nrrd_lps_space_directions_and_origin(tmp_path, data_xyz):
    directions = np.array([[-0.7, 0.0, 0.0], [0.0, -0.7, 0.0], [0.0, 0.0, 3.0]])
    origin = np.array([10.0, -20.0, 5.0])
    header = {"space": "left-posterior-superior", "space directions": directions, "space origin": origin}
    nrrd.write(str(tmp_path / "scan.nrrd"), data_xyz, header)
    vol = read_volume(tmp_path / "scan.nrrd")
    assert vol.array[4, 3, 2] == data_xyz[2, 3, 4]
    np.testing.assert_allclose(vol.spacing, (3.0, 0.7, 0.7))
    lps = origin + np.array([2, 3, 4]) @ directions
    np.testing.assert_allclose(world_of(vol, (4, 3, 2)), lps * [-1, -1, 1])
    write_volume(vol, tmp_path / "copy.nrrd")
    _, again = nrrd.read(str(tmp_path / "copy.nrrd"))
    assert again["space"] == "left-posterior-superior"
    np.testing.assert_allclose(again["space directions"], directions)
    np.testing.assert_allclose(again["space origin"], origin)


def test_metaimage_lps_geometry_matches_itk(tmp_path, data_xyz):
    image = sitk.GetImageFromArray(data_xyz.transpose(2, 1, 0))  # sitk takes (z, y, x)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((3.0, -4.0, 8.0))
    angle = np.deg2rad(15)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / "scan.mha"))
    vol = read_volume(tmp_path / "scan.mha")
    assert vol.array[4, 3, 2] == data_xyz[2, 3, 4]
    np.testing.assert_allclose(vol.spacing, (2.0, 0.6, 0.5))
    lps = np.array(image.TransformIndexToPhysicalPoint((2, 3, 4)))
    np.testing.assert_allclose(world_of(vol, (4, 3, 2)), lps * [-1, -1, 1], atol=1e-9)
    # the same scan written as NIfTI lands at the same place for nibabel
    write_volume(vol, tmp_path / "scan.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "scan.nii.gz").affine, volume_to_ras_xyz(vol.affine))


def test_dicom_series_folder(tmp_path, rng):
    slices = rng.integers(0, 1000, (4, 6, 5)).astype(np.int16)  # (z, y, x)
    uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k, plane in enumerate(slices):
        img = sitk.GetImageFromArray(plane)
        img.SetSpacing((0.7, 0.8))
        for tag, value in {
            "0008|0060": "MR", "0020|000d": uid + ".0", "0020|000e": uid + ".1",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"-10\\-20\\{2.5 * k}",
            "0020|0013": str(k + 1), "0018|0050": "2.5", "0028|0030": "0.8\\0.7",
        }.items():
            img.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(tmp_path / f"slice{k:02d}.dcm"))
        writer.Execute(img)
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, slices)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), rtol=1e-5)
    np.testing.assert_allclose(world_of(vol, (0, 0, 0)), (10.0, 20.0, 0.0), atol=1e-5)  # LPS -> RAS
    assert vol.metadata["dicom_files"] == 4


def test_la_h5_image_label_and_default_spacing(tmp_path, data_xyz):
    label = (data_xyz > 100).astype(np.uint8)
    with h5py.File(tmp_path / "case.h5", "w") as f:
        f["image"] = data_xyz
        f["label"] = label
    image, lab = read_image_label(tmp_path / "case.h5")
    assert image.shape == lab.shape == SHAPE_XYZ[::-1]
    assert image.array[4, 3, 2] == data_xyz[2, 3, 4]
    np.testing.assert_array_equal(lab.array, label.transpose(2, 1, 0))
    assert lab.is_label and not image.is_label
    assert image.spacing == (0.625, 0.625, 0.625)
    assert read_volume(tmp_path / "case.h5").is_label is False


def test_h5_spacing_attribute_is_xyz(tmp_path, data_xyz):
    with h5py.File(tmp_path / "case.h5", "w") as f:
        f["image"] = data_xyz
        f["image"].attrs["spacing"] = [0.5, 0.6, 2.0]
    image, label = read_image_label(tmp_path / "case.h5")
    assert image.spacing == (2.0, 0.6, 0.5)
    assert label is None


def test_tiff_imagej_spacing(tmp_path, rng):
    stack = rng.integers(0, 255, (6, 8, 10)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, resolution=(1 / 0.4, 1 / 0.3),
                     metadata={"spacing": 2.0, "unit": "mm", "axes": "ZYX"})
    vol = read_volume(tmp_path / "stack.tif")
    np.testing.assert_array_equal(vol.array, stack)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.3, 0.4), rtol=1e-4)


def test_tiff_without_metadata_has_unit_spacing(tmp_path, rng):
    stack = rng.random((5, 6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "plain.tiff", stack)
    vol = read_volume(tmp_path / "plain.tiff")
    np.testing.assert_array_equal(vol.array, stack)
    assert vol.spacing == (1.0, 1.0, 1.0)


def test_label_detection_and_float_labels_are_cast(tmp_path):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    values = np.zeros(SHAPE_XYZ, np.float32)
    values[2:5, 2:4, 1:3] = 2.0
    nib.save(nib.Nifti1Image(values, np.eye(4)), labels_dir / "case.nii.gz")
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "case_seg.nii.gz")
    nib.save(nib.Nifti1Image(values + 0.5, np.eye(4)), tmp_path / "image.nii.gz")
    for path in (labels_dir / "case.nii.gz", tmp_path / "case_seg.nii.gz"):
        vol = read_volume(path)
        assert vol.is_label and vol.array.dtype == np.uint8 and vol.array.max() == 2
    assert not read_volume(tmp_path / "image.nii.gz").is_label
    assert read_volume(tmp_path / "image.nii.gz", is_label=False).array.dtype == np.float32


def test_channel_argument_picks_one_channel(tmp_path, rng):
    data = rng.random((*SHAPE_XYZ, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "multi.nii.gz")
    vol = read_volume(tmp_path / "multi.nii.gz", channel=1)
    np.testing.assert_array_equal(vol.array, data[..., 1].transpose(2, 1, 0))
