"""Multi-channel scans: 4D NIfTI, nnU-Net per-channel files, time series refused, grids checked."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.io import Volume, VolumeError, read_volume
from napari_sscce.io.channels import channel_files, read_multichannel
from napari_sscce.io.validate import check_image


def _save(path, data_xyz, affine=None, time_unit=None):
    img = nib.Nifti1Image(np.asarray(data_xyz, dtype=np.float32), np.diag([1.0, 1.5, 2.0, 1.0])
                          if affine is None else affine)
    if time_unit is not None:
        img.header.set_xyzt_units("mm", time_unit)
    nib.save(img, str(path))
    return path


def test_volume_channels_and_single_unchanged():
    single = Volume(np.zeros((4, 5, 6), np.float32))
    assert single.num_channels == 1 and single.channel_names == () and single.shape == (4, 5, 6)
    assert "channel_names" not in single.geometry()
    multi = Volume(np.zeros((3, 4, 5, 6), np.float32), spacing=(2.0, 1.0, 1.0))
    assert multi.num_channels == 3 and multi.channel_names == ("0", "1", "2")
    assert multi.shape == multi.spatial_shape == (4, 5, 6)
    assert multi.channel(1).array.shape == (4, 5, 6) and multi.channel(1).channel_names == ()
    assert multi.with_array(np.zeros((4, 5, 6), np.uint8), is_label=True).num_channels == 1
    check_image(multi)
    with pytest.raises(ValueError, match="2 channel names"):
        Volume(np.zeros((3, 4, 5, 6)), channel_names=("a", "b"))


def test_4d_nifti_channels_on_last_axis(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((6, 5, 4, 3))  # (x, y, z, c)
    vol = read_multichannel(_save(tmp_path / "scan.nii.gz", data))
    assert vol.array.shape == (3, 4, 5, 6) and vol.channel_names == ("0", "1", "2")
    np.testing.assert_allclose(vol.array[2], data[..., 2].T, rtol=1e-6)
    assert vol.spacing == (2.0, 1.5, 1.0)
    # the single-channel reader is unchanged: it still asks for one channel
    with pytest.raises(VolumeError, match="pick one channel"):
        read_volume(tmp_path / "scan.nii.gz")


def test_3d_nifti_stays_3d(tmp_path):
    data = np.arange(120, dtype=float).reshape(6, 5, 4)
    path = _save(tmp_path / "scan.nii.gz", data)
    vol = read_multichannel(path)
    assert vol.array.shape == (4, 5, 6) and vol.num_channels == 1
    np.testing.assert_array_equal(vol.array, read_volume(path).array)


def test_time_series_refused(tmp_path):
    with pytest.raises(VolumeError, match="time points, not channels.*time unit 'sec'"):
        read_multichannel(_save(tmp_path / "fmri.nii.gz", np.zeros((6, 5, 4, 3)), time_unit="sec"))
    with pytest.raises(VolumeError, match="time points, not channels.*12 entries"):
        read_multichannel(_save(tmp_path / "long.nii.gz", np.zeros((6, 5, 4, 12))))


def test_nnunet_per_channel_files(tmp_path):
    folder = tmp_path / "imagesTr"
    folder.mkdir()
    rng = np.random.default_rng(1)
    chans = [rng.random((6, 5, 4)) for _ in range(2)]
    for i, c in enumerate(chans):
        _save(folder / f"case_{i:04d}.nii.gz", c)
    _save(folder / "other_0000.nii.gz", chans[0])
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"}}),
                                           encoding="utf-8")
    assert [p.name for p in channel_files(folder / "case_0001.nii.gz")] == ["case_0000.nii.gz",
                                                                            "case_0001.nii.gz"]
    assert channel_files(folder / "other_0000.nii.gz") is None  # one channel: an ordinary scan
    for how in (folder / "case_0000.nii.gz", folder / "case"):
        vol = read_multichannel(how)
        assert vol.channel_names == ("T2", "ADC") and vol.array.shape == (2, 4, 5, 6)
        np.testing.assert_allclose(vol.array[1], chans[1].T, rtol=1e-6)
    assert read_multichannel(folder / "other_0000.nii.gz").num_channels == 1


def test_nnunet_v1_modality_and_grid_mismatch(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "T1", "1": "FLAIR"}}),
                                           encoding="utf-8")
    _save(tmp_path / "a_0000.nii.gz", np.zeros((6, 5, 4)))
    _save(tmp_path / "a_0001.nii.gz", np.zeros((6, 5, 4)))
    assert read_multichannel(tmp_path / "a_0000.nii.gz").channel_names == ("T1", "FLAIR")
    _save(tmp_path / "b_0000.nii.gz", np.zeros((6, 5, 4)))
    _save(tmp_path / "b_0001.nii.gz", np.zeros((6, 5, 4)), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(VolumeError, match=r"b_0001\.nii\.gz: is not on the grid of b_0000.*spacing"):
        read_multichannel(tmp_path / "b_0000.nii.gz")
    _save(tmp_path / "c_0000.nii.gz", np.zeros((6, 5, 4)))
    _save(tmp_path / "c_0001.nii.gz", np.zeros((6, 5, 3)))
    with pytest.raises(VolumeError, match=r"c_0001\.nii\.gz.*shape"):
        read_multichannel(tmp_path / "c_0000.nii.gz")
    _save(tmp_path / "d_0000.nii.gz", np.zeros((6, 5, 4)))
    _save(tmp_path / "d_0002.nii.gz", np.zeros((6, 5, 4)))
    with pytest.raises(VolumeError, match="no channel 0001"):
        read_multichannel(tmp_path / "d_0000.nii.gz")


def test_channel_mismatch_messages():
    from napari_sscce.models.matching import ChannelMismatchError, match_channels

    five = Volume(np.zeros((5, 4, 5, 6), np.float32), source="scan.nii.gz")
    with pytest.raises(ChannelMismatchError, match=r"scan\.nii\.gz: has 5 channel.*expects 1.*--channel N"):
        match_channels(five, {"in_channels": 1}, "m.safetensors")
    named = Volume(np.stack([np.zeros((4, 5, 6)), np.ones((4, 5, 6))]), channel_names=("ADC", "T2"))
    matched = match_channels(named, {"in_channels": 2, "channel_names": ["T2", "ADC"]})
    assert matched.channel_names == ("T2", "ADC") and matched.array[0].min() == 1.0
    assert match_channels(named, {"in_channels": 2}) is named  # a model without names takes them as given


def test_napari_reader_opens_a_multichannel_scan_as_one_layer_per_channel(tmp_path):
    import json

    from napari_sscce.io.napari_io import read_layers
    from napari_sscce.io.volume import Volume
    from napari_sscce.io.writers import write_volume

    arr = np.random.default_rng(0).random((2, 8, 10, 12)).astype(np.float32)
    volume = Volume(arr, spacing=(2.0, 1.0, 0.5), channel_names=("T1", "FLAIR"))
    write_volume(volume, tmp_path / "case.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "FLAIR"}}))
    layers = read_layers(str(tmp_path / "case.nii.gz"))
    assert [(kind, kw["name"]) for _, kw, kind in layers] == [("image", "case T1"), ("image", "case FLAIR")]
    for (data, kw, _), channel in zip(layers, arr, strict=True):
        np.testing.assert_allclose(data, channel)
        assert tuple(kw["scale"]) == (2.0, 1.0, 0.5)
