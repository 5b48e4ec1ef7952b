"""End to end: UG-MCL trains on a tiny synthetic dataset through the training loop, then `sscce predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sscce.cli import main as sscce
from napari_sscce.io.readers import read_volume
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.training import loop
from napari_sscce.training.config import TrainConfig

SHAPE = (16, 32, 32)
ITERATIONS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ugmcl")
    data = make_synthetic_dataset(root / "data", 4, shape=SHAPE, n_labeled=1, n_val=1, seed=5)
    config = TrainConfig(
        data=str(data),
        method="ugmcl",
        # short run: the consistency ramp and the threshold ramp scale to it
        method_options={"teacher_passes": 4},
        patch_size=(16, 16, 16),
        labeled_bs=1,
        unlabeled_bs=1,
        iterations=ITERATIONS,
        val_every=0,
        precision="fp32",
        base_filters=4,
        seed=3,
        out=str(root / "run"),
    )
    torch.manual_seed(0)
    return root, data, loop.train(config)


def test_training_logs_every_ugmcl_term_and_moves_the_teacher(trained):
    root, _, result = trained
    records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "iteration" in r and "loss_ce" in r]
    assert len(steps) == ITERATIONS
    for record in steps:
        for key in ("loss_ce", "loss_dice", "loss_sdf", "loss_intra", "loss_cross", "uncertainty_threshold"):
            assert key in record and np.isfinite(record[key]), key
    ckpt = load_checkpoint(result.last_path)
    assert ckpt.metadata["method"] == "ugmcl" and ckpt.model.kind == "mean_teacher"
    assert ckpt.model.net_a.spec["name"] == "dualtask_vnet"
    student, teacher = ckpt.model.net_a.state_dict(), ckpt.model.net_b.state_dict()
    weights = [k for k in student if k.endswith("weight")]
    assert any(not torch.equal(student[k], teacher[k]) for k in weights)  # EMA, not a copy


def test_sscce_predict_on_a_ugmcl_checkpoint(trained, tmp_path):
    root, data, result = trained
    image_path = data / "images" / "case_003.nii.gz"
    rc = sscce(["predict", str(image_path), "--model", str(result.last_path), "--out", str(tmp_path),
                "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    seg = read_volume(tmp_path / "case_003_seg.nii.gz")
    kl = read_volume(tmp_path / "case_003_kl.nii.gz")
    entropy = read_volume(tmp_path / "case_003_entropy.nii.gz")
    assert seg.shape == kl.shape == entropy.shape == SHAPE
    assert set(np.unique(seg.array)) <= {0, 1}
    assert 0 <= entropy.array.min() and entropy.array.max() <= 1
    assert 0 <= kl.array.min() and kl.array.max() < 1 and kl.array.max() > 0  # student and teacher differ


def test_sscce_train_then_predict_commands(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sscce(["train", "--help"])
    usage = capsys.readouterr().out
    needed = ("--data", "--method", "--out", "--iterations", "--patch", "--option")
    missing = [o for o in needed if o not in usage]
    assert not missing, f"`sscce train --help` lacks {missing}"
    data = make_synthetic_dataset(tmp_path / "data", 3, shape=SHAPE, n_labeled=1, n_val=1, seed=2)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--method", "ugmcl", "--out", str(run), "--iterations", "2",
            "--patch", "16", "16", "16", "--batch", "1", "1", "--device", "cpu", "--precision", "fp32",
            "--val-every", "0", "--option", "teacher_passes=2", "--quiet"]
    assert sscce(args) == 0
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.metadata["method"] == "ugmcl" and ckpt.model.kind == "mean_teacher"
    assert ckpt.metadata["config"]["method_options"] == {"teacher_passes": 2}
    rc = sscce(["predict", str(data / "images" / "case_002.nii.gz"), "--model", str(run / "last.safetensors"),
                "--out", str(tmp_path / "pred"), "--device", "cpu", "--precision", "fp32"])
    assert rc == 0
    assert read_volume(tmp_path / "pred" / "case_002_seg.nii.gz").shape == SHAPE
