"""Issue 24: spacing units, model spacing and patch, memory of the resampled grid, duplicate input names."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.files import unique_output_names
from napari_sscce.inference.plausibility import SpacingWarning
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.volume import Volume
from sscce_factory import tiny_model_file

from ._stand_ins import tiny_dual

FP32 = {"patch_size": (8, 8, 8), "precision": "fp32", "device": "cpu"}


def _volume(spacing, shape=(16, 16, 16), source="/data/scan.nii.gz"):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return Volume(array=array, spacing=spacing, source=source)


@pytest.mark.parametrize(("spacing", "hint"), [((0.001, 0.001, 0.001), "metres"),
                                                ((100.0, 100.0, 100.0), "not a medical scan")])
def test_scan_spacing_in_wrong_units_is_refused_before_resampling(spacing, hint):
    with pytest.raises(VolumeError, match=f"scan.nii.gz: its spacing .*away from the model's.*{hint}"):
        predict_volume(tiny_dual(), _volume(spacing), InferenceConfig(**FP32),
                       metadata={"spacing": [1, 1, 1]})


@pytest.mark.parametrize("value", [[0, 1, 1], [-1.0, 1, 1], ["abc", 1, 1], "abc", [1, 1], [0.0001, 1, 1]])
def test_bad_model_spacing_is_refused_naming_the_model(value):
    with pytest.raises(ValueError, match="spacing"):
        predict_volume(tiny_dual(), _volume((1, 1, 1)), InferenceConfig(**FP32), metadata={"spacing": value})


@pytest.mark.parametrize("value", [[0, 8, 8], ["a", 8, 8], [8, 8], [8.5, 8, 8]])
def test_bad_model_patch_is_refused(value):
    cfg = {k: v for k, v in FP32.items() if k != "patch_size"}
    with pytest.raises(ValueError, match="patch size"):
        predict_volume(tiny_dual(), _volume((1, 1, 1)), InferenceConfig(**cfg),
                       metadata={"patch_size": value})


def test_a_moderate_spacing_mismatch_warns_and_a_grid_smaller_than_the_patch_is_refused():
    with pytest.warns(SpacingWarning, match="5.0x away"):
        predict_volume(tiny_dual(), _volume((5.0, 5.0, 5.0), shape=(4, 4, 4)), InferenceConfig(**FP32),
                       metadata={"spacing": [1, 1, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingWarning)
        with pytest.raises(VolumeError, match="smaller than the model's patch"):
            predict_volume(tiny_dual(), _volume((0.2, 0.2, 0.2), shape=(16, 16, 16)), InferenceConfig(**FP32),
                           metadata={"spacing": [1, 1, 1]})


def test_the_resampled_grid_is_bounded_by_memory_before_allocating(monkeypatch):
    monkeypatch.setenv("SSCCE_MAX_VOLUME_GB", "0.001")
    with pytest.raises(VolumeError, match="would need about .* of memory"):
        predict_volume(tiny_dual(), _volume((1, 1, 1), shape=(64, 64, 64)), InferenceConfig(**FP32),
                       metadata={"spacing": [0.5, 0.5, 0.5]})


def test_same_file_names_in_different_folders_get_unique_outputs(tmp_path):
    from napari_sscce.inference.files import output_paths, predict_files

    with pytest.warns(UserWarning, match="scan-2"):
        assert unique_output_names(["scan", "scan", "Scan", "other"]) == ["scan", "scan-2", "Scan-3", "other"]
    ckpt = tiny_model_file(tmp_path / "m.safetensors", seed=None)
    inputs = []
    for k, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        data = np.full((8, 8, 8), float(k), np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "scan.nii.gz"))
        inputs.append(tmp_path / folder / "scan.nii.gz")
    with pytest.warns(UserWarning, match="share a file name"):
        written = predict_files(ckpt, inputs, tmp_path / "out", InferenceConfig(**FP32))
    assert output_paths("scan", tmp_path / "out")["seg"] in written
    assert output_paths("scan-2", tmp_path / "out")["seg"] in written
    assert len(set(written)) == len(written) == 6
