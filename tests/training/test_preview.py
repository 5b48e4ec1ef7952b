"""``preview_update``: a seconds-long adaptation to one corrected scan, nothing saved."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.io.volume import Volume
from napari_sscce.loop.preview import preview_update
from napari_sscce.models.checkpoint import load_checkpoint
from sscce_factory import tiny_model_file


def _scan():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :32, :32]
    ball = ((z - 8) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) < 36
    image = (ball * 2.0 + rng.normal(0, 0.3, ball.shape)).astype(np.float32)
    return Volume(image, spacing=(1.0, 1.0, 1.0)), ball.astype(np.uint8)


def test_preview_learns_from_the_corrections_and_saves_nothing(tmp_path, one_torch_thread):
    path = tiny_model_file(tmp_path / "m.safetensors", base_filters=4, patch_size=[16, 32, 32],
                           normalization={"mode": "zscore"})
    before = path.read_bytes()
    image, truth = _scan()
    mask = np.zeros(truth.shape, bool)
    mask[6:10] = True  # four corrected slices through the ball
    labels = np.where(mask, truth, 0).astype(np.uint8)
    result = preview_update(path, image, labels, mask, seconds=60, max_steps=12,
                            inference=InferenceConfig(device="cpu", precision="fp32"))
    assert result.steps == 12
    assert result.loss_last < result.loss_first  # it learned from the corrected slices
    assert path.read_bytes() == before  # the model file is untouched
    np.testing.assert_array_equal(result.prediction.labels[mask], labels[mask])  # corrections kept
    assert result.prediction.entropy[mask].max() == 0.0
    assert "nothing saved" in result.message
    assert result.before is not None and result.after is not None  # one of the four slices was held aside
    assert result.adapted == (result.after >= result.before)


def test_a_preview_that_gets_worse_is_not_shown(tmp_path, monkeypatch, one_torch_thread):
    import napari_sscce.loop.preview as pv
    from napari_sscce.inference.predict import predict_volume

    path = tiny_model_file(tmp_path / "m.safetensors", base_filters=4, patch_size=[16, 32, 32],
                           normalization={"mode": "zscore"})
    image, truth = _scan()
    mask = np.zeros(truth.shape, bool)
    mask[4:12] = True
    icfg = InferenceConfig(device="cpu", precision="fp32")
    ckpt = load_checkpoint(path)
    current = predict_volume(ckpt.model, image, icfg, metadata=ckpt.metadata)
    monkeypatch.setattr(pv, "LR", 50.0)  # a step that wrecks the copy
    result = preview_update(ckpt, image, truth, mask, seconds=60, max_steps=3, inference=icfg,
                            current=current)
    assert result.after < result.before and not result.adapted
    np.testing.assert_array_equal(result.prediction.labels[~mask], current.labels[~mask])  # the current one
    assert "worse" in result.message


def test_preview_refuses_without_corrections(tmp_path):
    path = tiny_model_file(tmp_path / "m.safetensors", patch_size=[16, 32, 32])
    image, truth = _scan()
    with pytest.raises(ValueError, match="no confirmed voxel"):
        preview_update(load_checkpoint(path), image, truth, np.zeros(truth.shape, bool))
    with pytest.raises(ValueError, match="must match"):
        preview_update(path, image, truth[:4], np.ones(truth[:4].shape, bool))


def test_preview_of_a_multichannel_scan(tmp_path, one_torch_thread):
    from napari_sscce.models.checkpoint import save_checkpoint
    from sscce_factory import tiny_dual_model

    model = tiny_dual_model(base_filters=2, in_channels=2)
    path = save_checkpoint(tmp_path / "m2.safetensors", model,
                           {"method": "cce", "patch_size": [16, 32, 32], "normalization": {"mode": "zscore"},
                            "channel_names": ["T1", "T2"]})
    image, truth = _scan()
    two = Volume(np.stack([image.array, -image.array]), spacing=image.spacing, channel_names=("T1", "T2"))
    mask = np.zeros(truth.shape, bool)
    mask[6:10] = True
    result = preview_update(path, two, truth, mask, seconds=60, max_steps=3,
                            inference=InferenceConfig(device="cpu", precision="fp32"))
    assert result.steps == 3 and result.prediction.labels.shape == truth.shape
    np.testing.assert_array_equal(result.prediction.labels[mask], truth[mask])
