"""``sscce train`` -> ``sscce predict`` -> ``sscce evaluate`` on a tiny synthetic dataset."""

import json

from napari_sscce.cli import main
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.training.config import TrainConfig


def test_train_predict_evaluate(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", 4, shape=(16, 24, 24), n_labeled=1, n_val=1, seed=2)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--method", "cce", "--iterations", "3", "--patch", "16", "16", "16",
            "--out", str(run), "--device", "cpu", "--precision", "fp32", "--batch", "1", "1",
            "--val-every", "0", "--seed", "1", "--option", "entropy_percentile=30",
            "--flip-axes", "zx", "--base-filters", "4", "--no-dropout", "--quiet"]
    assert main(argv) == 0
    cfg = TrainConfig.load(run / "config.json")
    assert cfg.patch_size == (16, 16, 16) and cfg.method_options == {"entropy_percentile": 30}
    assert cfg.base_filters == 4 and not cfg.has_dropout
    meta = load_checkpoint(run / "best.safetensors").metadata
    assert meta["method"] == "cce" and meta["train_summary"]["iterations"] == 3
    assert meta["augmentation"]["flip_axes"] == "zx" and not meta["augmentation"]["rot90"]

    # --resume with a larger budget continues from iteration 3
    assert main(["train", "--out", str(run), "--resume", "--iterations", "4", "--quiet"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [1, 2, 3, 4]

    val = json.loads((data / "splits.json").read_text())["val"][0]
    pred = tmp_path / "pred"
    image = data / "images" / f"{val}.nii.gz"
    assert main(["predict", str(image), "--model", str(run / "best.safetensors"), "--out", str(pred),
                 "--device", "cpu"]) == 0
    assert (pred / f"{val}_seg.nii.gz").exists()
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / f"{val}.nii.gz").write_bytes((data / "labels" / f"{val}.nii.gz").read_bytes())
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_train_cli_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err
