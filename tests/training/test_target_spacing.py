"""Training at a target spacing: cases resampled when loaded (slice annotations kept), the model records the
spacing, inference and validation resample to it and back."""

from __future__ import annotations

import numpy as np

from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.preprocessing import resample_annotation
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train
from napari_sscce.training.sampling import CaseStore


def test_sparse_slice_annotations_survive_downsampling():
    label = np.zeros((88, 60, 60), np.uint8)
    label[20:70, 15:45, 15:45] = 1
    mask = np.zeros(label.shape, np.float32)
    planes = [10, 25, 40, 55, 70, 80]
    mask[planes] = 1
    coarse, coarse_mask = resample_annotation(label, mask, 2, (29, 20, 20))
    kept = sorted({int(z) for z in np.argwhere(coarse_mask > 0)[:, 0]})
    # every annotated slice still has a coarse plane (nearest sampling would keep about one in three)
    assert all(any(abs(k * 3 - p) <= 3 for k in kept) for p in planes)
    nearest_planes = {round(z * 87 / 28) for z in range(29)}
    assert len(set(planes) & nearest_planes) < len(planes)
    assert coarse_mask.max() == 1.0 and (coarse[coarse_mask == 0] == 0).all()
    # the object's annotated part keeps its class; unannotated voxels carry no label
    assert coarse[coarse_mask > 0].max() == 1
    full, none_mask = resample_annotation(label, None, 2, (29, 20, 20))
    assert none_mask is None and abs(int(full.sum()) - label.sum() / 27) < 0.1 * label.sum() / 27


def test_weights_are_kept_not_diluted_by_coverage():
    label = np.ones((12, 12, 12), np.uint8)
    mask = np.zeros(label.shape, np.float32)
    mask[::3] = 0.5  # distilled voxels weigh 0.5: one plane in three
    _, coarse_mask = resample_annotation(label, mask, 2, (4, 4, 4))
    assert np.allclose(coarse_mask[coarse_mask > 0], 0.5, atol=0.02)


def test_a_run_at_a_target_spacing_trains_records_and_validates(tmp_path):
    data = make_synthetic_dataset(tmp_path / "ds", 3, shape=(16, 32, 32), n_labeled=2, n_val=1, seed=2)
    store = CaseStore(lambda n: _load(data, n), 2, target_spacing=(2.0, 2.0, 2.0))
    case = store.get("case_000", labeled=True)
    assert case.image.shape[1:] == case.label.shape and case.spacing == (2.0, 2.0, 2.0)
    cfg = TrainConfig(
        data=str(data), patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0, iterations=4,
        method="supervised", out=str(tmp_path / "run"), val_every=0, precision="fp32", base_filters=2,
        has_dropout=False, target_spacing=[2.0, 2.0, 2.0],
    )
    result = train(cfg)
    meta = load_checkpoint(result.best_path).metadata
    assert meta["spacing"] == [2.0, 2.0, 2.0]
    val = [r for r in result.history if "val_dice" in r]
    assert val and np.isfinite(val[-1]["val_dice"])


def _load(folder, name):
    from napari_sscce.io.datasets import open_dataset

    return open_dataset(str(folder)).load_case(name)
