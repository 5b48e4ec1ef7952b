"""Uncertainty options of predict_volume: the calibration temperature (config or checkpoint metadata)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume, resolve_temperature
from napari_sscce.io.volume import Volume
from napari_sscce.metrics.calibration import temperature_scale
from napari_sscce.uncertainty import entropy

from ._stand_ins import tiny_dual

FP32 = {"patch_size": (12, 16, 16), "precision": "fp32", "device": "cpu"}


def _volume() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(array=rng.normal(50, 20, (16, 20, 20)).astype(np.float32))


def test_temperature_softens_the_mean_but_keeps_labels_and_kl():
    model, volume = tiny_dual(num_classes=3), _volume()
    plain = predict_volume(model, volume, InferenceConfig(**FP32))
    warm = predict_volume(model, volume, InferenceConfig(temperature=2.0, **FP32))
    np.testing.assert_array_equal(warm.labels, plain.labels)
    np.testing.assert_allclose(warm.kl, plain.kl, atol=1e-6)
    np.testing.assert_allclose(warm.probabilities, temperature_scale(plain.probabilities, 2.0), atol=1e-5)
    np.testing.assert_allclose(warm.entropy, entropy(warm.probabilities), atol=1e-5)
    assert warm.entropy.mean() > plain.entropy.mean()
    assert warm.info["temperature"] == 2.0 and plain.info["temperature"] == 1.0
    # from the checkpoint's metadata when the config leaves it open; the config wins
    calibrated = {"calibration": {"temperature": 2.0}}
    meta = predict_volume(model, volume, InferenceConfig(**FP32), metadata=calibrated)
    np.testing.assert_allclose(meta.entropy, warm.entropy, atol=1e-6)
    over = predict_volume(model, volume, InferenceConfig(temperature=1.0, **FP32), metadata=calibrated)
    np.testing.assert_allclose(over.entropy, plain.entropy, atol=1e-6)


def test_resolve_temperature_and_validation():
    assert resolve_temperature(None, {}) == 1.0
    assert resolve_temperature(None, {"calibration": {"temperature": 1.5}}) == 1.5
    assert resolve_temperature(0.7, {"calibration": {"temperature": 1.5}}) == 0.7
    for bad in ("x", -1.0, 0.0, float("nan"), None):
        assert resolve_temperature(None, {"calibration": {"temperature": bad}}) == 1.0
    with pytest.raises(ValueError, match="temperature"):
        InferenceConfig(temperature=0.0)
    assert InferenceConfig.from_dict(InferenceConfig(temperature=1.3).to_dict()).temperature == 1.3
