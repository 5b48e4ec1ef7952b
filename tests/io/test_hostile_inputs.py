"""Hostile or broken inputs (issue 12, items 8 and 10): refused before allocating, named, honest advice."""

from __future__ import annotations

import gzip
import json
import time
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_sscce.cli import build_parser
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.formats import DicomSeriesWarning
from napari_sscce.io.readers import read_volume
from napari_sscce.models.checkpoint import CheckpointError, load_checkpoint
from sscce_factory import tiny_model_file

HUGE_XYZ = (2000, 1000, 1000)  # 7.5 GiB of float32


def _nifti_header_bytes(shape_xyz=HUGE_XYZ) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape_xyz)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def _refused_fast(path, match):
    start = time.monotonic()
    with pytest.raises(VolumeError, match=match) as info:
        read_volume(path)
    assert str(path) in str(info.value)
    assert time.monotonic() - start < 5  # refused from the header, nothing allocated


def test_tiny_nifti_declaring_gigabytes_is_refused(tmp_path):
    path = tmp_path / "liar.nii"
    path.write_bytes(_nifti_header_bytes() + b"\0" * 256)  # 608 bytes as in the issue
    assert path.stat().st_size == 608
    _refused_fast(path, r"2000 x 1000 x 1000 float32.*7\.45 GiB.*608 bytes")


def test_compressed_nifti_declaring_more_than_deflate_can_hold_is_refused(tmp_path):
    path = tmp_path / "liar.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header_bytes() + b"\0" * 4096))
    _refused_fast(path, "more than a .* compressed file can hold")


def test_nrrd_declaring_more_than_its_data_is_refused(tmp_path):
    path = tmp_path / "liar.nrrd"
    header = ("NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 2000\nencoding: raw\n"
              "endian: little\n\n")
    path.write_bytes(header.encode() + b"\0" * 64)
    _refused_fast(path, "truncated or its header is wrong")


def test_h5_declaring_more_than_memory_is_refused(tmp_path):
    path = tmp_path / "liar.h5"
    with h5py.File(path, "w") as f:  # chunked and never written: a few KB on disk
        f.create_dataset("image", shape=(100_000, 100_000, 1000), dtype="f4", chunks=(8, 8, 8))
    _refused_fast(path, "too large to read.*available")


def test_honest_files_still_read(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in ("ok.nii", "ok.nii.gz"):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / name))
        assert read_volume(tmp_path / name).shape == (4, 3, 2)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    return tiny_model_file(path, seed=None)


def _with_arch_arg(src, dst, key, value, keep_tensors=False):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        header = dict(f.metadata())
    meta = json.loads(header["metadata"])
    for net in ("a", "b"):
        meta["arch"][net]["kwargs"][key] = value
    header["metadata"] = json.dumps(meta)
    tensors = load_file(str(src)) if keep_tensors else {"a.x": torch.zeros(1)}
    save_file(tensors, str(dst), metadata=header)
    return dst


@pytest.mark.parametrize(("value", "match"), [(64, "weights but the file holds"), (100000, "outside 1..128")])
def test_checkpoint_claiming_a_huge_network_is_refused_unbuilt(small_model, tmp_path, value, match):
    bad = _with_arch_arg(small_model, tmp_path / "liar.safetensors", "base_filters", value)
    assert bad.stat().st_size < 10_000
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(("key", "value"), [("num_classes", 10**6), ("in_channels", 0), ("in_channels", "1")])
def test_checkpoint_arch_arguments_are_bounded(small_model, tmp_path, key, value):
    bad = _with_arch_arg(small_model, tmp_path / "odd.safetensors", key, value, keep_tensors=True)
    with pytest.raises(CheckpointError, match=f"{key}="):
        load_checkpoint(bad)


def test_the_4d_advice_names_an_option_that_exists(tmp_path):
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.float32), np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="--channel N") as info:
        read_volume(path)
    assert "0..2" in str(info.value)
    args = build_parser().parse_args(["predict", str(path), "--model", "m", "--out", "o", "--channel", "2"])
    assert args.channel == 2
    assert read_volume(path, channel=2).shape == (7, 6, 5)


def test_predict_segments_the_chosen_channel(small_model, tmp_path):
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.files import predict_files

    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 2), np.float32), np.eye(4)), str(path))
    written = predict_files(small_model, [path], tmp_path / "out", InferenceConfig(patch_size=(8, 8, 8),
                            device="cpu"), channel=1)
    assert nib.load(str(written[0])).shape == (8, 8, 8)


def _write_series(folder, uid, n, description):
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(n):
        img = sitk.GetImageFromArray(np.full((1, 6, 7), i, np.int16))[:, :, 0]
        for tag, value in {"0020|000e": uid, "0008|103e": description, "0020|0013": str(i + 1),
                           "0020|0032": f"0\\0\\{i}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0008|0060": "MR", "0020|000d": "1.2.3.4"}.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-1]}_{i:03d}.dcm"))
        writer.Execute(img)


def test_a_two_series_dicom_folder_says_which_it_read_and_how_to_pick_the_other(tmp_path):
    pytest.importorskip("SimpleITK")
    folder = tmp_path / "dicom"
    _write_series(folder, "1.2.826.0.1.1", 4, "T1 axial")
    _write_series(folder, "1.2.826.0.1.2", 3, "T2 axial")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_volume(folder)
    assert volume.shape == (4, 6, 7)
    messages = [str(w.message) for w in caught if issubclass(w.category, DicomSeriesWarning)]
    assert len(messages) == 1
    text = messages[0]
    assert "1.2.826.0.1.1" in text and "'T1 axial'" in text and "4 files" in text
    assert "1.2.826.0.1.2" in text and "3 files" in text and "2_000.dcm" in text
    other = read_volume(folder / "2_000.dcm")  # the advice works
    assert other.shape == (3, 6, 7)
