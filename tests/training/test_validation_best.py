"""Validation is the mean *foreground* Dice, and ``best.safetensors`` is the model of the best one.

Checked through the loop's outputs (``metrics.jsonl``, ``best.safetensors``, ``last.safetensors``) and
through ``validate`` on a model whose prediction is known voxel by voxel.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.io.volume import Volume
from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train, validate


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |A n B| / (|A| + |B|); 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


class KnownPrediction(nn.Module):
    """A dual model whose two networks predict ``labels`` (one-hot logits x 10) whatever the input."""

    def __init__(self, labels: np.ndarray, num_classes: int):
        super().__init__()
        onehot = np.eye(num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
        self.register_buffer("logits", torch.from_numpy(onehot * 10.0)[None])
        self.dummy = nn.Parameter(torch.zeros(1))
        self.net_a, self.net_b, self.kind = self, self, "dual"
        self.in_channels, self.num_classes = 1, num_classes

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1, -1), self.logits.expand(x.shape[0], -1, -1, -1, -1)

    def named_children(self):  # net_a / net_b are self: do not recurse forever
        return iter(())


def test_validate_is_the_mean_foreground_dice_over_classes():
    shape = (8, 8, 8)
    gt = np.zeros(shape, np.uint8)
    gt[1:5, 1:5, 1:5] = 1  # 64 voxels
    gt[5:7, 2:6, 2:6] = 2  # 32 voxels
    pred = np.zeros(shape, np.uint8)
    pred[1:5, 1:5, 1:3] = 1  # 32 voxels, all inside class 1
    pred[5:7, 2:6, 2:6] = 2
    pred[0, 0, :4] = 2  # 4 false class-2 voxels
    model = KnownPrediction(pred, 3)
    config = TrainConfig(patch_size=shape, precision="fp32", normalization="none", val_overlap=0.5)
    image = Volume(np.random.default_rng(0).random(shape).astype(np.float32))
    label = Volume(gt, is_label=True)
    metrics = validate(model, [("c", image, label)], config, torch.device("cpu"), 3)
    d1 = 2 * 32 / (64 + 32)
    d2 = 2 * 32 / (32 + 36)
    assert metrics["dice_per_class"] == pytest.approx([d1, d2])
    assert metrics["dice"] == pytest.approx((d1 + d2) / 2)
    background = dice(pred == 0, gt == 0)
    assert (d1 + d2 + background) / 3 != pytest.approx(metrics["dice"], abs=1e-3)  # background would matter
    assert metrics["cases"] == 1


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    """Supervised tiny run, validated after every step; the model of every step kept aside."""
    root = tmp_path_factory.mktemp("best")
    data = make_synthetic_dataset(root / "data", 4, shape=(16, 24, 24), n_labeled=2, n_val=1, seed=3,
                                  num_classes=3)
    out = root / "run"
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep_last(event):
        last = out / "last.safetensors"
        if event.stage == "train" and last.exists():
            copy = root / f"copy_{event.step}.safetensors"  # its own file: load_file may map it lazily
            shutil.copyfile(last, copy)
            it = read_checkpoint_metadata(copy)["train_summary"]["iterations"]
            snapshots.setdefault(it, {k: v.clone() for k, v in load_file(str(copy)).items()})

    # lr 0.3: the validation Dice rises, then falls again (the best model is not the last one)
    config = TrainConfig(
        data=str(data), method="supervised", patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0,
        iterations=6, val_every=1, precision="fp32", base_filters=4, seed=7, lr=0.3, has_dropout=False,
        out=str(out),
    )
    result = train(config, progress=keep_last)
    snapshots[result.iterations] = load_file(str(out / "last.safetensors"))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_dice" in r]
    return data, out, result, snapshots, vals


def test_best_checkpoint_is_the_model_of_the_best_validation(run):
    _, out, result, snapshots, vals = run
    scores = [r["val_dice"] for r in vals]
    assert [r["iteration"] for r in vals] == [1, 2, 3, 4, 5, 6]
    assert len(set(scores)) > 1, "validation Dice never changed: the test would prove nothing"
    best_it = vals[int(np.argmax(scores))]["iteration"]
    assert result.best_metric == pytest.approx(max(scores))
    assert vals[-1]["best_val_dice"] == pytest.approx(max(scores))
    best = load_file(str(out / "best.safetensors"))
    assert best.keys() == snapshots[best_it].keys()
    for key, value in best.items():
        assert torch.equal(value, snapshots[best_it][key]), key
    meta = read_checkpoint_metadata(out / "best.safetensors")
    assert meta["train_summary"]["best_iteration"] == best_it
    assert meta["val_metrics"]["dice"] == pytest.approx(max(scores))
    if best_it != result.iterations:  # then best and last really are different models
        last = load_file(str(out / "last.safetensors"))
        assert any(not torch.equal(last[k], best[k]) for k in best)


def test_logged_validation_dice_is_the_foreground_dice_of_the_best_model(run):
    data, out, _, _, vals = run
    dataset = open_dataset(data)
    name = json.loads((data / "splits.json").read_text())["val"][0]
    image, label, _ = dataset.load_case(name)
    cfg = InferenceConfig(patch_size=(16, 16, 16), overlap=TrainConfig().val_overlap, device="cpu",
                          precision="fp32", batch_size=2)
    pred = predict_volume(out / "best.safetensors", image, cfg).labels
    gt = np.asarray(label.array)
    per_class = [dice(pred == c, gt == c) for c in (1, 2)]
    best = max(vals, key=lambda r: r["val_dice"])
    assert best["val_dice_per_class"] == pytest.approx(per_class, abs=1e-9)
    assert best["val_dice"] == pytest.approx(np.mean(per_class), abs=1e-9)
    with_background = np.mean([dice(pred == c, gt == c) for c in (0, 1, 2)])
    assert best["val_dice"] != pytest.approx(with_background, abs=1e-3)
