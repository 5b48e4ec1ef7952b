"""``predict_files`` and ``sscce predict``: three NIfTI files per input on the input's grid; clear errors."""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.cli import main
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.files import predict_files
from napari_sscce.progress import Cancelled, CancelToken
from sscce_factory import tiny_model_file

AFFINE = np.array(
    [[0.0, 0.0, -1.5, 30.0], [0.9, 0.1, 0.0, -12.0], [0.0, 1.2, 0.0, 7.5], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return tiny_model_file(path, patch_size=[16, 16, 16], normalization={"mode": "zscore"})


@pytest.fixture
def nifti_input(tmp_path):
    data = np.random.default_rng(0).normal(100, 20, (18, 14, 16)).astype(np.float32)  # (i, j, k) = x, y, z
    path = tmp_path / "inputs" / "case01.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def test_cli_writes_three_files_with_the_input_affine(checkpoint, nifti_input, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), str(nifti_input), "--out", str(out),
                 "--device", "cpu", "--batch-size", "1", "--largest-component"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case01_entropy.nii.gz", "case01_kl.nii.gz", "case01_seg.nii.gz"]
    for name in names:
        img = nib.load(str(out / name))
        assert img.shape == (18, 14, 16)
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    seg = np.asarray(nib.load(str(out / "case01_seg.nii.gz")).dataobj)
    entropy = nib.load(str(out / "case01_entropy.nii.gz")).get_fdata()
    assert set(np.unique(seg)) <= {0, 1} and 0 <= entropy.min() and entropy.max() <= 1
    assert "case01_seg.nii.gz" in capsys.readouterr().out


def test_nrrd_input_keeps_its_world_geometry(checkpoint, tmp_path):
    import nrrd

    data = np.random.default_rng(1).normal(0, 1, (17, 16, 12)).astype(np.float32)
    directions = np.array([[0.8, 0.0, 0.0], [0.0, 0.0, 1.1], [0.0, -0.7, 0.0]])
    origin = np.array([5.0, -3.0, 12.0])
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": directions,
                                  "space origin": origin})
    config = InferenceConfig(device="cpu", return_per_network=True)
    written = predict_files(checkpoint, [path], tmp_path / "out", config)
    assert [p.name for p in written] == ["scan_seg.nii.gz", "scan_entropy.nii.gz", "scan_kl.nii.gz",
                                         "scan_prob_a.nii.gz", "scan_prob_b.nii.gz"]
    expected = np.eye(4)
    expected[:3, :3] = directions.T
    expected[:3, 3] = origin
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ expected  # LPS -> RAS
    for p in written:
        img = nib.load(str(p))
        assert img.shape == data.shape
        np.testing.assert_allclose(img.affine, expected, atol=1e-5)


def test_bad_checkpoint_is_a_clear_cli_error(tmp_path, nifti_input, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a model file at all")
    code = main(["predict", "--model", str(bad), str(nifti_input), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err
    missing = tmp_path / "nope.safetensors"
    assert main(["predict", "--model", str(missing), str(nifti_input), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_missing_input_is_reported_before_any_work(checkpoint, tmp_path, capsys):
    missing = tmp_path / "absent.nii.gz"
    assert main(["predict", "--model", str(checkpoint), str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_defaults_come_from_the_config():
    from napari_sscce.cli import build_parser
    from napari_sscce.cli.predict import inference_config

    args = build_parser().parse_args(["predict", "x.nii.gz", "--model", "m", "--out", "o"])
    d, c = InferenceConfig(), inference_config(args)
    assert (c.overlap, c.mode, c.batch_size, c.device, c.precision, c.tta) == (
        d.overlap, d.mode, d.batch_size, d.device, d.precision, d.tta)


def test_predict_files_can_be_cancelled(checkpoint, nifti_input, tmp_path):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        predict_files(checkpoint, [nifti_input], tmp_path / "out", InferenceConfig(), cancel=token)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.fixture
def cli_config(monkeypatch):
    """``sscce predict`` with ``predict_files`` replaced: ``seen["config"]`` is the InferenceConfig it got."""
    import napari_sscce.inference.files as files

    seen = {}

    def fake_predict_files(model, inputs, out, config, progress=None, cancel=None):
        seen["config"] = config
        return []

    monkeypatch.setattr(files, "predict_files", fake_predict_files)
    return seen


def test_cli_patch_is_x_y_z_like_sscce_train(checkpoint, nifti_input, tmp_path, cli_config):
    code = main(["predict", "--model", str(checkpoint), str(nifti_input), "--out", str(tmp_path / "o"),
                 "--patch", "32", "24", "16"])
    assert code == 0
    assert tuple(cli_config["config"].patch_size) == (16, 24, 32)  # (z, y, x) inside


def test_cli_mc_dropout_reaches_the_inference_config(checkpoint, nifti_input, tmp_path, cli_config):
    base = ["predict", "--model", str(checkpoint), str(nifti_input), "--out", str(tmp_path / "o")]
    assert main([*base, "--mc-dropout", "3"]) == 0
    assert cli_config["config"].mc_dropout == 3
    assert main(base) == 0
    assert cli_config["config"].mc_dropout == InferenceConfig().mc_dropout == 0


def _scan_with_bad_voxels(tmp_path, n_nan=3, n_inf=1):
    data = np.random.default_rng(2).normal(100, 20, (18, 14, 16)).astype(np.float32)
    data.flat[[5, 700, 2000][:n_nan]] = np.nan
    data.flat[[9, 1500][:n_inf]] = np.inf
    path = tmp_path / "bad_scan.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def test_nan_voxels_are_an_error_naming_file_and_count(checkpoint, tmp_path, capsys):
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.io.errors import VolumeError
    from napari_sscce.io.readers import read_volume

    path = _scan_with_bad_voxels(tmp_path)
    with pytest.raises(VolumeError, match="3 NaN and 1 Inf voxels") as info:
        predict_volume(checkpoint, read_volume(path), InferenceConfig(device="cpu", precision="fp32"))
    assert str(path) in str(info.value) and "--nan-policy" in str(info.value)
    with pytest.raises(VolumeError, match="3 NaN and 1 Inf"):
        predict_files(checkpoint, [path], tmp_path / "api", InferenceConfig(device="cpu"))
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), str(path), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "3 NaN and 1 Inf voxels" in err and "Traceback" not in err
    assert not list(out.glob("*_seg.nii.gz"))  # never a silent all-background segmentation


@pytest.mark.parametrize("policy", ["zero", "mean"])
def test_nan_policy_replaces_the_voxels_and_says_how_many(checkpoint, tmp_path, policy, capsys):
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.io.readers import read_volume

    path = _scan_with_bad_voxels(tmp_path)
    config = InferenceConfig(device="cpu", precision="fp32", nan_policy=policy)
    pred = predict_volume(checkpoint, read_volume(path), config)
    assert pred.info["nonfinite_voxels"] == 4 and pred.info["nan_policy"] == policy
    assert np.isfinite(pred.probabilities).all()
    clean = np.asarray(nib.load(str(path)).dataobj)
    fill = 0.0 if policy == "zero" else float(clean[np.isfinite(clean)].mean())
    filled = tmp_path / "filled" / "bad_scan.nii.gz"
    filled.parent.mkdir()
    nib.save(nib.Nifti1Image(np.where(np.isfinite(clean), clean, np.float32(fill)), AFFINE), str(filled))
    same = predict_volume(checkpoint, read_volume(filled), InferenceConfig(device="cpu", precision="fp32"))
    np.testing.assert_allclose(pred.probabilities, same.probabilities, atol=1e-5)
    out = tmp_path / "out"
    code = main(["predict", "--model", str(checkpoint), str(path), "--out", str(out), "--device", "cpu",
                 "--precision", "fp32", "--nan-policy", policy])
    assert code == 0 and (out / "bad_scan_seg.nii.gz").exists()


@pytest.mark.parametrize("command", ["predict", "train", "finetune"])
def test_device_and_precision_options_are_the_same_in_every_subcommand(command):
    from napari_sscce.cli import build_parser
    from napari_sscce.precision import PRECISIONS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    options = {a.dest: a for a in sub._actions}
    assert tuple(options["precision"].choices) == PRECISIONS
    assert "cuda:N" in options["device"].help
    with pytest.raises(SystemExit):
        sub.parse_args(["--precision", "bf17"])
