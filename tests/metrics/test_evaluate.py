"""evaluate_case, folder pairing, evaluate_folders end to end on NIfTI files, and `sscce evaluate`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.cli import main
from napari_sscce.metrics.evaluate import case_key, evaluate_case, evaluate_folders, format_table, pair_files
from napari_sscce.metrics.surface import binary_metrics

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _labels(rng: np.random.Generator, shape=(12, 16, 14), shift=0) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3 + shift : 9, 4:12, 3 : 9 + shift] = 1
    lab[2:7, 6 : 10 + shift, 9:13] = 2
    lab[rng.random(shape) < 0.02] = 1
    return lab


def _save_nifti(array: np.ndarray, path: Path, spacing_zyx=(1.0, 1.0, 1.0)) -> None:
    """Write a (z, y, x) array as NIfTI (x, y, z on disk) with the given voxel size."""
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    nib.save(nib.Nifti1Image(np.transpose(array, (2, 1, 0)).astype(np.uint8), affine), str(path))


def test_evaluate_case_per_class_and_mean(rng: np.random.Generator) -> None:
    gt, pred = _labels(rng), _labels(rng, shift=1)
    spacing = (2.0, 0.8, 0.8)
    result = evaluate_case(pred, gt, num_classes=3, spacing=spacing)
    assert sorted(result["classes"]) == [1, 2]
    for c in (1, 2):
        m = result["classes"][c]
        assert m["dice"] == pytest.approx(medpy_binary.dc(pred == c, gt == c))
        assert m["hd95_vox"] == pytest.approx(medpy_binary.hd95(pred == c, gt == c))
        assert m["asd_mm"] == pytest.approx(medpy_binary.asd(pred == c, gt == c, spacing))
    for key in ("dice", "hd95_mm"):
        assert result["mean"][key] == pytest.approx(np.mean([result["classes"][c][key] for c in (1, 2)]))
    no_mm = evaluate_case(pred, gt, num_classes=3)
    assert math.isnan(no_mm["mean"]["hd95_mm"]) and no_mm["mean"]["dice"] == result["mean"]["dice"]
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(pred[:-1], gt, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_case(pred, gt, num_classes=1)


def test_case_keys_and_pairing(tmp_path: Path) -> None:
    assert case_key("a/hippocampus_001_seg.nii.gz", "pred") == "hippocampus_001"
    assert case_key("hippocampus_001.nii.gz", "gt") == "hippocampus_001"
    assert case_key("x_gt.nii.gz", "gt") == "x" and case_key("x_gt.nii.gz", "pred") is None
    assert case_key("x_pred.nii.gz", "pred") == "x" and case_key("x_pred.nii.gz", "gt") is None
    assert case_key("x_entropy.nii.gz", "pred") is None and case_key("x_kl.nrrd", "pred") is None
    assert case_key("x_prob_a.nii.gz", "pred") is None  # `sscce predict --per-network` output
    assert case_key("notes.txt", "gt") is None
    assert case_key("LA01.h5", "gt") == "LA01"
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    for name in ("a_seg.nii.gz", "a_entropy.nii.gz", "b_seg.nii.gz", "c_seg.nii.gz"):
        (tmp_path / "p" / name).touch()
    for name in ("a.nii.gz", "b.nii.gz", "d.nii.gz"):
        (tmp_path / "g" / name).touch()
    pairs, missing, extra = pair_files(tmp_path / "p", tmp_path / "g")
    assert [(c, p.name, g.name) for c, p, g in pairs] == [("a", "a_seg.nii.gz", "a.nii.gz"),
                                                          ("b", "b_seg.nii.gz", "b.nii.gz")]
    assert missing == ["d"] and extra == ["c"]
    (tmp_path / "p" / "a.nii.gz").touch()
    with pytest.raises(ValueError, match="same case name"):
        pair_files(tmp_path / "p", tmp_path / "g")


def test_evaluate_folders_end_to_end(tmp_path: Path, rng: np.random.Generator) -> None:
    pred_dir, gt_dir, out_dir = tmp_path / "pred", tmp_path / "gt", tmp_path / "out"
    pred_dir.mkdir()
    gt_dir.mkdir()
    spacing = (2.0, 1.0, 0.5)
    truth = {}
    for i, case in enumerate(("case_01", "case_02")):
        gt, pred = _labels(rng), _labels(rng, shift=i)
        _save_nifti(gt, gt_dir / f"{case}.nii.gz", spacing)
        _save_nifti(pred, pred_dir / f"{case}_seg.nii.gz", spacing)
        _save_nifti(np.zeros_like(gt), pred_dir / f"{case}_entropy.nii.gz", spacing)  # must be ignored
        truth[case] = (pred, gt)
    rows = evaluate_folders(pred_dir, gt_dir, out_dir)
    per_class = [r for r in rows if r["case"] == "case_02" and r["class"] == 2]
    assert len(per_class) == 1
    pred, gt = truth["case_02"]
    expected = binary_metrics(pred == 2, gt == 2, spacing)
    assert per_class[0]["dice"] == pytest.approx(medpy_binary.dc(pred == 2, gt == 2))
    assert per_class[0]["asd_mm"] == pytest.approx(medpy_binary.asd(pred == 2, gt == 2, spacing))
    assert per_class[0]["hd95_mm"] == pytest.approx(expected["hd95_mm"])
    case_means = [r["dice"] for r in rows if r["class"] == "mean" and r["case"].startswith("case_")]
    overall = [r for r in rows if r["case"] == "mean" and r["class"] == "mean"][0]
    assert overall["dice"] == pytest.approx(np.mean(case_means))
    assert {r["case"] for r in rows} == {"case_01", "case_02", "mean", "std"}

    with open(out_dir / "metrics.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows)
    row = next(r for r in csv_rows if r["case"] == "case_02" and r["class"] == "2")
    assert float(row["dice"]) == pytest.approx(per_class[0]["dice"], rel=1e-5)
    assert int(row["gt_voxels"]) == int((gt == 2).sum())
    info = json.loads((out_dir / "metrics.json").read_text())
    assert info["num_classes"] == 3 and info["cases"] == ["case_01", "case_02"]
    assert info["missing_predictions"] == [] and len(info["rows"]) == len(rows)
    assert not list(out_dir.glob(".*"))  # no temporary files left behind

    table = format_table(rows)
    assert "case_02" in table and "Dice %" in table
    assert f"{overall['dice'] * 100:.2f}" in table
    assert "case_01" not in format_table(rows[-2:], per_class=False)


def test_evaluate_folders_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "g")
    _save_nifti(_labels(rng), tmp_path / "g" / "x.nii.gz")
    with pytest.raises(ValueError, match="no prediction matches"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")
    _save_nifti(_labels(rng, shape=(10, 16, 14)), tmp_path / "p" / "x_seg.nii.gz")
    with pytest.raises(ValueError, match="x_seg.nii.gz.*differs"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")


def test_cli_evaluate(tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    gt = _labels(rng)
    _save_nifti(gt, tmp_path / "g" / "x.nii.gz")
    _save_nifti(gt, tmp_path / "p" / "x_seg.nii.gz")
    empty = np.zeros_like(gt)
    _save_nifti(gt, tmp_path / "g" / "y.nii.gz")
    _save_nifti(empty, tmp_path / "p" / "y_seg.nii.gz")
    _save_nifti(gt, tmp_path / "g" / "z.nii.gz")  # no prediction: a warning, left out of the means
    code = main(["evaluate", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g"),
                 "--out", str(tmp_path / "o"), "--num-classes", "3"])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "no prediction for 1 case(s): z" in captured.err
    assert "z " not in out
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.strip()}
    assert lines[("x", "mean")][:4] == ["100.00", "100.00", "0.00", "0.00"]  # perfect case
    assert lines[("y", "mean")][:4] == ["0.00", "0.00", "0.00", "0.00"]  # empty prediction: papers' zeros
    assert lines[("mean", "mean")][0] == "50.00"
    assert (tmp_path / "o" / "metrics.csv").is_file()
    # bad input: a message naming the folder, exit code 2
    code = main(["evaluate", "--pred", str(tmp_path / "missing"), "--gt", str(tmp_path / "g")])
    assert code == 2 and "missing" in capsys.readouterr().err
    folders = ["--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g")]
    assert main(["evaluate", *folders, "--num-classes", "1"]) == 2


def test_evaluate_folders_progress_and_cancel(tmp_path: Path, rng: np.random.Generator) -> None:
    from napari_sscce.progress import Cancelled, CancelToken

    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    for case in ("a", "b"):
        gt = _labels(rng)
        _save_nifti(gt, tmp_path / "g" / f"{case}.nii.gz")
        _save_nifti(gt, tmp_path / "p" / f"{case}_seg.nii.gz")
    events = []
    evaluate_folders(tmp_path / "p", tmp_path / "g", progress=events.append)
    assert [e.stage for e in events] == ["evaluate"] * 4
    assert events[-1].step == events[-1].total == 4 and events[-1].values["dice"] == 1.0
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        evaluate_folders(tmp_path / "p", tmp_path / "g", tmp_path / "o", cancel=token)
    assert not (tmp_path / "o").exists()
