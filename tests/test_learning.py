"""Learning tests: they pass only when training really learns (seeded, tiny, about 30 s each on one core).

Fine-tuning: a model trained briefly on two generated scans meets a scan with inverted contrast (a shift
it has not seen) and segments it badly; the scan is corrected (its true labels put in a workspace) and
20 fine-tuning iterations on it, started from that model, must raise that scan's Dice by at least
``FINETUNE_GAIN``. Measured when written (4 seeds of the start model and scan): gains of +0.28 to +0.73 Dice.

Unlabeled data: a task built so that only the unlabeled scans can help. The one labeled scan comes from a
"source" scanner (organ at 0.9 of full intensity over tissue at 0.45); the unlabeled and validation scans
come from a "target" scanner whose organ is 30 % darker (about 0.63 over the same tissue), so a model that
learned the source contrast puts its organ boundary in the wrong place on them. CCE sees the target scans
without labels (pseudo-labels, entropy filter, KL weights) and must beat supervised training on the same
labeled scan, same seed and iterations, by ``SSL_GAIN`` validation Dice on target scans, and beat CCE whose
unlabeled scans come from the source scanner (the control: the gain must come from what the unlabeled
scans show, not from CCE's two networks alone). Measured when
written (seeds 0-3, 60 iterations, 4 unlabeled scans): supervised 0.669 / 0.562 / 0.598 / 0.478, CCE
0.818 / 0.617 / 0.839 / 0.719 (gains +0.15, +0.06, +0.24, +0.24); with a smaller shift (organ 20 %
darker) the gains were +0.09, +0.05, +0.10, +0.01. Control, seeds 0 / 2: CCE with source-scanner
unlabeled scans 0.621 / 0.656, i.e. +0.20 / +0.18 below CCE with target scans. The test plays seed 0.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.sample_data import make_synthetic, make_synthetic_dataset
from napari_sscce.io.writers import write_volume
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train
from napari_sscce.workspace import Workspace

SHAPE = (16, 24, 24)
PATCH = (16, 16, 16)
FINETUNE_GAIN = 0.2
SSL_GAIN = 0.05
TARGET_ORGAN_FACTOR = 0.7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dice(model_path, image, label) -> float:
    cfg = InferenceConfig(patch_size=PATCH, device="cpu", precision="fp32")
    pred = predict_volume(model_path, image, cfg).labels == 1
    gt = np.asarray(label.array) == 1
    return float(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


def test_fine_tuning_on_a_corrected_scan_raises_its_dice(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", 3, shape=SHAPE, n_labeled=2, n_val=0, seed=10)
    base = TrainConfig(
        data=str(data), method="supervised", patch_size=PATCH, labeled_bs=2, unlabeled_bs=0, iterations=30,
        val_every=0, precision="fp32", base_filters=4, seed=0, lr=0.05, schedule="constant",
        has_dropout=False, out=str(tmp_path / "start"),
    )
    start = train(base)

    image, label = make_synthetic(SHAPE, (1.5, 1.0, 1.0), seed=99)
    image = image.with_array((image.array.max() - image.array).astype(np.float32))  # inverted contrast
    before = _dice(start.last_path, image, label)

    ws = Workspace(tmp_path / "ws")
    ws.add_case(image, label, name="corrected")  # the person's correction: the true labels
    config = base.replace(data=str(ws.dataset_folder()), iterations=20, out=str(tmp_path / "finetuned"))
    tuned = train(config, init_checkpoint=str(start.last_path))
    after = _dice(tuned.last_path, image, label)
    assert after - before >= FINETUNE_GAIN, f"Dice on the corrected scan {before:.3f} -> {after:.3f}"


def _scan(seed: int, organ_factor: float = 1.0):
    """A generated scan; ``organ_factor`` < 1 darkens the organ (the "target scanner")."""
    image, label = make_synthetic(SHAPE, (1.5, 1.0, 1.0), seed=seed)
    array = np.asarray(image.array, dtype=np.float32)
    if organ_factor != 1.0:
        organ = ndimage.gaussian_filter((np.asarray(label.array) > 0).astype(np.float32), 0.8)
        array = array * (1.0 - (1.0 - organ_factor) * organ)
    return image.with_array(array.astype(np.float32)), label


def _train_and_score(tmp_path, name, method, unlabeled_factor):
    """Train ``method`` on source_0 (+ 4 unlabeled scans at ``unlabeled_factor``); mean Dice on target val."""
    splits = {"labeled": ["source_0"], "unlabeled": [f"unlabeled_{i}" for i in range(4)],
              "val": [f"val_{i}" for i in range(4)]}
    cases = {"source_0": _scan(0)}
    cases.update({n: _scan(100 + i, unlabeled_factor) for i, n in enumerate(splits["unlabeled"])})
    cases.update({n: _scan(200 + i, TARGET_ORGAN_FACTOR) for i, n in enumerate(splits["val"])})
    data = tmp_path / f"data_{name}"
    for case, (image, label) in cases.items():
        write_volume(image, data / "images" / f"{case}.nii.gz")
        write_volume(label, data / "labels" / f"{case}.nii.gz")
    (data / "splits.json").write_text(json.dumps(splits))
    config = TrainConfig(
        data=str(data), method=method, patch_size=PATCH, labeled_bs=2,
        unlabeled_bs=0 if method == "supervised" else 2, iterations=60, val_every=0, precision="fp32",
        base_filters=4, seed=0, lr=0.05, schedule="constant", has_dropout=False, rampup_length=15.0,
        out=str(tmp_path / name),
    )
    result = train(config)
    return float(np.mean([_dice(result.last_path, *cases[n]) for n in splits["val"]]))


def test_cce_with_unlabeled_target_scans_beats_supervised(tmp_path):
    supervised = _train_and_score(tmp_path, "supervised", "supervised", TARGET_ORGAN_FACTOR)
    cce_target = _train_and_score(tmp_path, "cce_target", "cce", TARGET_ORGAN_FACTOR)
    cce_source = _train_and_score(tmp_path, "cce_source", "cce", 1.0)
    summary = (f"validation Dice on target scans: supervised {supervised:.3f}, CCE with unlabeled target "
               f"scans {cce_target:.3f}, CCE with unlabeled source scans {cce_source:.3f}")
    assert cce_target - supervised >= SSL_GAIN, summary
    # the gain comes from what the unlabeled scans show, not from CCE's two networks alone
    assert cce_target - cce_source >= SSL_GAIN, summary
