"""Issue 24: readers bound memory before allocating; compressed payloads that do not inflate are errors;
detached data files and HDF5 external data only inside the input's own folder."""

from __future__ import annotations

import bz2
import gzip
import os
import time
import zlib

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import read_volume


def _refused(path, match, seconds=5.0):
    start = time.monotonic()
    with pytest.raises(VolumeError, match=match) as info:
        read_volume(path)
    assert str(path) in str(info.value)
    assert time.monotonic() - start < seconds
    return info.value


def _nrrd_header(sizes, encoding, extra=""):
    return (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: {encoding}\n{extra}\n").encode()


def test_bzip2_nrrd_inflating_past_its_declared_size_is_refused_after_the_declared_bytes(tmp_path):
    bomb = bz2.compress(b"\0" * (256 << 20))  # 256 MiB of zeros in a few hundred bytes
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(_nrrd_header("8 8 8", "bzip2") + bomb)
    assert path.stat().st_size < 2048
    _refused(path, "inflate to more than the 512 bytes its header declares")


def test_gzip_nrrd_inflating_past_its_declared_size_is_refused(tmp_path):
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(_nrrd_header("8 8 8", "gzip") + gzip.compress(b"\0" * (64 << 20)))
    _refused(path, "inflate to more than")


def test_bzip2_nrrd_declaring_more_than_the_configured_cap_is_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setenv("SSCCE_MAX_VOLUME_GB", "0.5")
    path = tmp_path / "big.nrrd"
    path.write_bytes(_nrrd_header("2000 1000 1000", "bzip2") + bz2.compress(b"\0" * 4096))
    _refused(path, "too large to read.*allowed by SSCCE_MAX_VOLUME_GB", seconds=2)


def test_corrupt_and_short_compressed_nrrd_are_errors_not_zeros(tmp_path):
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(_nrrd_header("8 8 8", "gzip") + b"\x1f\x8b\x08\x00garbage-not-deflate" * 4)
    _refused(corrupt, "gzip data are corrupt")
    short = tmp_path / "short.nrrd"
    short.write_bytes(_nrrd_header("8 8 8", "bzip2") + bz2.compress(b"\1" * 100))
    _refused(short, "inflate to only 100 bytes")


def test_honest_compressed_nrrd_reads_the_same_values(tmp_path):
    import nrrd

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # (x, y, z) as pynrrd writes
    for encoding in ("gzip", "bzip2", "raw"):
        path = tmp_path / f"ok_{encoding}.nrrd"
        nrrd.write(str(path), data, {"encoding": encoding})
        assert np.array_equal(read_volume(path).array, data.transpose(2, 1, 0))
    nrrd.write(str(tmp_path / "detached.nhdr"), data, {"encoding": "gzip"}, detached_header=True)
    assert np.array_equal(read_volume(tmp_path / "detached.nhdr").array, data.transpose(2, 1, 0))


@pytest.mark.parametrize("name", ["../outside.raw", "/etc/hostname", "link.raw", "/dev/zero"])
def test_detached_nrrd_data_file_outside_its_folder_is_refused(tmp_path, name):
    folder = tmp_path / "case"
    folder.mkdir()
    (tmp_path / "outside.raw").write_bytes(b"\7" * 512)
    (folder / "link.raw").symlink_to(tmp_path / "outside.raw")
    path = folder / "scan.nhdr"
    path.write_bytes(_nrrd_header("8 8 8", "raw", f"data file: {name}\n"))
    _refused(path, "outside the header's folder|not a regular file")


def _mhd(folder, data_file, compressed, size=12, dims="6 5 4"):
    text = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = {compressed}\nCompressedDataSize = {size}\nElementSpacing = 1 1 1\n"
            f"DimSize = {dims}\nElementType = MET_SHORT\nElementDataFile = {data_file}\n")
    path = folder / "scan.mhd"
    path.write_text(text)
    return path


def test_compressed_metaimage_pointing_at_dev_zero_is_refused(tmp_path):
    _refused(_mhd(tmp_path, "/dev/zero", True), "outside the header's folder|not a regular file")


def test_corrupt_compressed_metaimage_is_an_error_not_zeros(tmp_path):
    (tmp_path / "scan.zraw").write_bytes(b"this is not zlib data at all" * 4)
    _refused(_mhd(tmp_path, "scan.zraw", True), "zlib data are corrupt")
    (tmp_path / "scan.zraw").write_bytes(zlib.compress(b"\1" * 20))
    _refused(_mhd(tmp_path, "scan.zraw", True), "inflate to only 20 bytes")


def test_metaimage_data_file_outside_its_folder_is_refused(tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    (tmp_path / "secret.raw").write_bytes(b"\0" * 240)
    _refused(_mhd(folder, "../secret.raw", False), "outside the header's folder")


def test_honest_metaimages_still_read(tmp_path):
    data = np.arange(120, dtype=np.int16).reshape(4, 5, 6)
    for name, compress in (("a.mhd", True), ("b.mha", True), ("c.mhd", False)):
        sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / name), compress)
        assert np.array_equal(read_volume(tmp_path / name).array, data)


def test_h5_external_link_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "other.h5"
    with h5py.File(outside, "w") as f:
        f["image"] = np.ones((4, 5, 6), np.float32)
    folder = tmp_path / "case"
    folder.mkdir()
    path = folder / "scan.h5"
    with h5py.File(path, "w") as f:
        f["image"] = h5py.ExternalLink(str(outside), "image")
    _refused(path, "external link.*outside the header's folder")


def test_h5_virtual_dataset_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "other.h5"
    with h5py.File(outside, "w") as f:
        f["data"] = np.ones((4, 5, 6), np.float32)
    folder = tmp_path / "case"
    folder.mkdir()
    path = folder / "scan.h5"
    layout = h5py.VirtualLayout(shape=(4, 5, 6), dtype="f4")
    layout[:] = h5py.VirtualSource(str(outside), "data", shape=(4, 5, 6))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("image", layout)
    _refused(path, "virtual dataset.*outside the header's folder")


def test_h5_external_storage_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "raw.bin"
    outside.write_bytes(np.ones(120, np.float32).tobytes())
    folder = tmp_path / "case"
    folder.mkdir()
    path = folder / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", shape=(4, 5, 6), dtype="f4", external=[(str(outside), 0, 480)])
    _refused(path, "external storage.*outside the header's folder")
    with h5py.File(path, "w") as f:
        f.create_dataset("image", shape=(4, 5, 6), dtype="f4", external=[("/dev/zero", 0, 480)])
    _refused(path, "outside the header's folder|not a regular file")


def test_memory_cap_must_be_a_positive_number(tmp_path, monkeypatch):
    from napari_sscce.io.bounded import max_read_bytes

    monkeypatch.setenv("SSCCE_MAX_VOLUME_GB", "abc")
    with pytest.raises(ValueError, match="SSCCE_MAX_VOLUME_GB='abc'"):
        max_read_bytes()
    monkeypatch.setenv("SSCCE_MAX_VOLUME_GB", "2")
    assert max_read_bytes() <= 2e9
    assert os.environ["SSCCE_MAX_VOLUME_GB"] == "2"


def test_an_external_label_link_is_refused_when_the_pair_is_read(tmp_path):
    from napari_sscce.io.readers import read_image_label

    outside = tmp_path / "other.h5"
    with h5py.File(outside, "w") as f:
        f["label"] = np.ones((4, 5, 6), np.uint8)
    folder = tmp_path / "case"
    folder.mkdir()
    path = folder / "scan.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.ones((4, 5, 6), np.float32)
        f["label"] = h5py.ExternalLink(str(outside), "label")
    with pytest.raises(VolumeError, match="external link '/label'.*outside"):
        read_image_label(path)
