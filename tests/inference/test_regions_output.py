"""``predict_files(..., regions=True)``: the ranking as files beside the maps, and the scans ranked."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.files import SCANS_RANKED, predict_files
from napari_sscce.io.readers import read_volume
from napari_sscce.uncertainty.export import rank_scans, ranking_report
from sscce_factory import tiny_model_file


def _scan(path, seed, contrast):
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, (20, 16, 12)).astype(np.float32)
    data[6:14, 5:11, 4:9] += contrast  # (i, j, k) = x, y, z on disk
    affine = np.diag([0.8, 0.9, 1.5, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_regions_files_match_the_ranking(tmp_path):
    model = tiny_model_file(tmp_path / "m.safetensors", patch_size=[16, 16, 16],
                            normalization={"mode": "zscore"})
    scans = [_scan(tmp_path / f"s{k}.nii.gz", k, 2.0 + k) for k in range(2)]
    out = tmp_path / "out"
    written = predict_files(model, scans, out, InferenceConfig(device="cpu", precision="fp32"), regions=True)
    for k in range(2):
        regions_image, report_path = out / f"s{k}_regions.nii.gz", out / f"s{k}_regions.json"
        assert regions_image in written and report_path in written
        report = json.loads(report_path.read_text())
        volume = read_volume(regions_image, is_label=True)
        source = read_volume(scans[k])
        assert volume.shape == source.shape  # on the scan's grid (array z, y, x)
        np.testing.assert_allclose(volume.affine, source.affine, atol=1e-5)
        ids = sorted(int(v) for v in np.unique(volume.array) if v)
        assert ids == [r["rank"] for r in report["regions"]]
        scores = [r["expected_errors"] for r in report["regions"]]
        assert scores == sorted(scores, reverse=True)
        for r in report["regions"]:  # each region's voxels are where the report says
            assert int((volume.array == r["rank"]).sum()) == r["size_voxels"]
        slices = report["slices"]
        assert {s["axis"] for s in slices} == {0} and len(slices) == min(50, source.shape[0])
        errors = [s["expected_errors"] for s in slices]
        assert errors == sorted(errors, reverse=True)
        assert report["expected_errors"] >= sum(scores) - 1e-6
    ranked = json.loads((out / SCANS_RANKED).read_text())["scans"]
    assert [r["rank"] for r in ranked] == [1, 2] and {r["source"] for r in ranked} == {str(s) for s in scans}
    assert ranked[0]["expected_errors"] >= ranked[1]["expected_errors"]


def test_ranking_report_on_a_known_map():
    labels = np.zeros((10, 12, 12), np.uint8)
    labels[3:7, 3:9, 3:9] = 1
    entropy = np.zeros(labels.shape, np.float32)
    entropy[5, 2:10, 2:10] = 1.0  # slice 5 is the doubtful one
    entropy[2, 4:6, 4:6] = 0.9
    image, report = ranking_report(labels, entropy, None, (2.0, 1.0, 1.0))
    assert report["slices"][0]["index"] == 5 and report["slices"][1]["index"] == 2
    assert report["regions"][0]["rank"] == 1 and (image == 1).sum() == report["regions"][0]["size_voxels"]
    assert image[5, 5, 5] == 1
    scans = rank_scans([{**report, "source": "a"}, {**report, "source": "b", "expected_errors": 1e9}])
    assert [s["source"] for s in scans] == ["b", "a"]


def test_sscce_predict_regions_writes_the_ranking(tmp_path):
    from napari_sscce.cli import main

    model = tiny_model_file(tmp_path / "m.safetensors", patch_size=[16, 16, 16],
                            normalization={"mode": "zscore"})
    scan = _scan(tmp_path / "scan.nii.gz", 0, 2.0)
    out = tmp_path / "out"
    assert main(["predict", str(scan), "--model", str(model), "--out", str(out), "--regions",
                 "--device", "cpu"]) == 0
    report = json.loads((out / "scan_regions.json").read_text())
    assert report["source"] == str(scan) and report["slices"][0]["axis"] == 0
    assert (out / "scan_regions.nii.gz").is_file() and not (out / SCANS_RANKED).exists()  # one input
    assert main(["predict", str(scan), "--model", str(model), "--out", str(tmp_path / "plain"),
                 "--device", "cpu"]) == 0
    assert not (tmp_path / "plain" / "scan_regions.json").exists()
    from napari_sscce.cli import build_parser
    from napari_sscce.cli.predict import inference_config

    parse = build_parser().parse_args
    assert inference_config(parse(["predict", "x", "--model", "m", "--out", "o", "--regions"])).tta
    assert not inference_config(parse(["predict", "x", "--model", "m", "--out", "o", "--regions",
                                       "--no-tta"])).tta
    assert not inference_config(parse(["predict", "x", "--model", "m", "--out", "o"])).tta
