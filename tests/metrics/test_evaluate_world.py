"""Issue 24: evaluate compares in world space and refuses stray ground-truth values."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.metrics.evaluate import evaluate_folders


def _label():
    label = np.zeros((10, 12, 14), np.uint8)
    label[1:6, 2:9, 3:7] = 1  # asymmetric, so a mirror changes the overlap
    label[6:9, 8:11, 9:13] = 2
    return label


def _save(folder, name, array, affine):
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(folder / name))


def test_the_same_anatomy_stored_mirrored_scores_perfectly(tmp_path):
    label = _label()
    _save(tmp_path / "gt", "case.nii.gz", label, np.eye(4))
    mirror = np.diag([-1.0, 1, 1, 1])
    mirror[0, 3] = label.shape[0] - 1
    _save(tmp_path / "pred", "case.nii.gz", label[::-1].copy(), mirror)
    with pytest.warns(UserWarning, match="compared in world space"):
        rows = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    mean = next(r for r in rows if r["case"] == "case" and r["class"] == "mean")
    assert mean["dice"] == pytest.approx(1.0)


def test_a_shifted_prediction_is_refused(tmp_path):
    _save(tmp_path / "gt", "case.nii.gz", _label(), np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = (3.0, 0, 0)
    _save(tmp_path / "pred", "case.nii.gz", _label(), shifted)
    with pytest.raises(ValueError, match="lies elsewhere in the world than ground truth"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_a_stray_255_is_named_not_scored_as_256_classes(tmp_path):
    gt = _label()
    gt[0, 0, 0] = 255
    _save(tmp_path / "gt", "case.nii.gz", gt, np.eye(4))
    _save(tmp_path / "pred", "case.nii.gz", _label(), np.eye(4))
    with pytest.raises(ValueError, match=r"case.nii.gz: ground truth holds unexpected label value\(s\) 255"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(ValueError, match="outside the 3 classes"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", num_classes=3)
    with pytest.warns(UserWarning, match="left out of every metric"):
        rows = evaluate_folders(tmp_path / "pred", tmp_path / "gt", num_classes=3, unexpected="ignore")
    mean = next(r for r in rows if r["case"] == "case" and r["class"] == "mean")
    assert mean["dice"] == pytest.approx(1.0)


def test_sscce_evaluate_refuses_a_stray_value_and_ignores_it_when_asked(tmp_path, capsys):
    from napari_sscce.cli import main

    gt = _label()
    gt[0, 0, 0] = 255
    _save(tmp_path / "gt", "case.nii.gz", gt, np.eye(4))
    _save(tmp_path / "pred", "case.nii.gz", _label(), np.eye(4))
    base = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3"]
    assert main(base) != 0
    assert "--unexpected ignore" in capsys.readouterr().err
    assert main(base + ["--unexpected", "ignore"]) == 0
    captured = capsys.readouterr()
    assert "left out of every metric" in captured.err and "100.00" in captured.out
