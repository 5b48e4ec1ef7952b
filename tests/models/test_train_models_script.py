"""scripts/train_models.py: packaging a run folder into a carded fp16 model, and failing loudly."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models import build_dual_model, save_checkpoint
from napari_sscce.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_models", ROOT / "scripts" / "train_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_models"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["train_models"]


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A finished run as `sscce train` leaves it: config.json, splits.json, last.safetensors (tiny model)."""
    data = make_synthetic_dataset(tmp_path / "data", 4, shape=(16, 24, 24), n_labeled=2, n_val=2, seed=3,
                                  num_classes=3)
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(data=str(data), split=str(data / "splits.json"), method="cce", iterations=7,
                         patch_size=(16, 24, 24), base_filters=2, has_dropout=False, precision="fp32",
                         out=str(run))
    config.save(run / "config.json")
    (run / "splits.json").write_text(json.dumps(json.loads((data / "splits.json").read_text())))
    torch.manual_seed(0)
    model = build_dual_model("cce", in_channels=1, num_classes=3, base_filters=2, has_dropout=False).eval()
    meta = {"method": "cce", "patch_size": [16, 24, 24], "spacing": [1.5, 1.0, 1.0],
            "normalization": {"mode": "percentile_zscore"}, "class_names": ["background", "head", "body"]}
    save_checkpoint(run / "last.safetensors", model, meta)
    os.utime(run / "config.json", (1000.0, 1000.0))
    os.utime(run / "last.safetensors", (1000.0 + 125 * 60, 1000.0 + 125 * 60))
    return run


def test_recipe_from_run_is_the_command_that_ran(script, run_folder):
    args, seconds = script.recipe_from_run(run_folder)
    assert seconds == pytest.approx(125 * 60)
    line = " ".join(args)
    assert "--method cce --iterations 7 --patch 24 24 16" in line  # X Y Z on the command line
    assert "--base-filters 2" in line and "--no-dropout" in line and "--precision fp32" in line
    assert args[-2:] == ["--out", str(run_folder)]


def test_from_run_packages_evaluates_and_prints(script, run_folder, tmp_path, capsys):
    out = tmp_path / "models"
    status = script.main(["--models", "hippocampus-cce", "--shared", str(tmp_path), "--out", str(out),
                          "--from-run", f"hippocampus-cce={run_folder}"])
    assert status == 1  # the shared data has no hippocampus/ folder: the data stage fails ...
    assert "data:" in capsys.readouterr().err and not out.exists()  # ... and nothing is written
    (tmp_path / "hippocampus").mkdir()
    assert script.main(["--models", "hippocampus-cce", "--shared", str(tmp_path), "--out", str(out),
                        "--from-run", f"hippocampus-cce={run_folder}"]) == 0
    printed = capsys.readouterr().out
    assert "hippocampus-cce: mean Dice" in printed and "on 2 validation cases" in printed
    from napari_sscce.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "hippocampus-cce.safetensors")
    card = ckpt.metadata["model_card"]
    # the recipe names the classes
    assert card["validation"]["cases"] == 2
    assert set(card["validation"]["dice_per_class"]) == {"anterior", "posterior"}
    assert card["recipe"].startswith("sscce train --data ") and card["training_time"] == "125 min"
    assert card["training_data"]["cases"] == 2 and "CC-BY-SA 4.0" in card["license"]
    assert card["machine"] and card["date"] and card["val_cases"] == ["case_002", "case_003"]
    assert ckpt.metadata["storage_dtype"] == "float16"
    os.environ["NAPARI_SSCCE_MODELS_DIR"] = str(out)
    try:
        assert "| `hippocampus-cce` (Hippocampus MRI — CCE) |" in script.markdown_table()
    finally:
        del os.environ["NAPARI_SSCCE_MODELS_DIR"]


def test_missing_checkpoint_fails(script, run_folder, tmp_path, capsys):
    (run_folder / "last.safetensors").unlink()
    (tmp_path / "hippocampus").mkdir()
    with pytest.raises(FileNotFoundError):
        script.recipe_from_run(run_folder)  # no training time without the run's model
    status = script.main(["--models", "hippocampus-cce", "--shared", str(tmp_path), "--out",
                          str(tmp_path / "m"), "--from-run", f"hippocampus-cce={run_folder}", "--checkpoint",
                          "best"])
    assert status == 1 and "failed" in capsys.readouterr().err


def test_a_downsampled_recipe_is_also_scored_at_full_resolution(script, run_folder, tmp_path):
    config = json.loads((run_folder / "config.json").read_text())
    data = Path(config["data"])
    recipe = dataclasses.replace(script.RECIPES["hippocampus-cce"], downsample=2.0)
    card = script.package("hippocampus-cce", recipe, run_folder, data, ["--data", str(data)], 60.0,
                          tmp_path / "models", "last", full_resolution=data)
    full = card["validation_full_resolution"]
    assert full["cases"] == 2 and set(full["per_case"]) == {"case_002", "case_003"}
    assert "at full resolution" in script.report("hippocampus-cce", card)
    plain = script.package("hippocampus-cce", script.RECIPES["hippocampus-cce"], run_folder, data,
                           ["--data", str(data)], 60.0, tmp_path / "m2", "last", full_resolution=data)
    assert "validation_full_resolution" not in plain  # trained at the scans' own resolution: one figure


def test_recipe_from_run_records_the_augmentations(script, run_folder):
    config = TrainConfig.load(run_folder / "config.json").replace(augment_spatial=True, augment_noise=True)
    config.save(run_folder / "config.json")
    args, _ = script.recipe_from_run(run_folder)
    assert " --augment spatial noise " in f" {' '.join(args)} "
