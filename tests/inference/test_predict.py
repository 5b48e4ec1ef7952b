"""predict_volume: outputs, resampling, normalisation, MC dropout, precision check, real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.postprocess import keep_largest_component
from napari_sscce.inference.predict import check_low_precision, predict_volume
from napari_sscce.io.volume import Volume
from napari_sscce.preprocessing import normalize_intensity

from ._stand_ins import ThresholdNet, TinyDual, TinyNet, tiny_dual

FP32 = {"patch_size": (12, 16, 16), "precision": "fp32", "device": "cpu"}


def _sphere(shape=(24, 40, 32), spacing=(1.0, 1.0, 1.0), radius=0.3) -> Volume:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    array = (np.sqrt((grid**2).sum(0)) < radius * 2).astype(np.float32) * 100.0 + 20.0
    array += np.random.default_rng(0).normal(0, 3, shape).astype(np.float32)
    return Volume(array=array, spacing=spacing)


def test_outputs_have_the_contract_shapes_and_ranges():
    volume = _sphere()
    pred = predict_volume(tiny_dual(num_classes=3), volume, InferenceConfig(return_per_network=True, **FP32))
    c, shape = 3, volume.shape
    assert pred.probabilities.shape == (c, *shape) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    assert pred.labels.shape == shape and pred.labels.dtype == np.uint8
    np.testing.assert_array_equal(pred.labels, pred.probabilities.argmax(0))
    for name in ("entropy", "kl"):
        arr = getattr(pred, name)
        assert arr.shape == shape and arr.dtype == np.float32
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert pred.kl.max() > 0.0  # two different networks disagree somewhere
    prob_a, prob_b = pred.per_network
    np.testing.assert_allclose((prob_a + prob_b) / 2, pred.probabilities, atol=1e-6)
    assert pred.volume is volume and pred.device == "cpu" and pred.precision == "fp32" and pred.seconds > 0
    # entropy is the normalised entropy of the mean probability
    p = pred.probabilities.clip(1e-8, 1)
    np.testing.assert_allclose(pred.entropy, -(p * np.log(p)).sum(0) / np.log(3), atol=1e-4)


def test_no_per_network_by_default_and_numpy_input():
    pred = predict_volume(tiny_dual(), np.random.default_rng(0).random((10, 12, 14)), InferenceConfig(**FP32))
    assert pred.per_network is None and pred.labels.shape == (10, 12, 14)  # smaller than the patch


def test_volume_smaller_than_the_patch_keeps_its_shape():
    volume = _sphere(shape=(7, 11, 30))
    pred = predict_volume(tiny_dual(), volume, InferenceConfig(**FP32))
    assert pred.probabilities.shape == (2, 7, 11, 30) and pred.info["windows"] == 3  # x: starts 0, 8, 14


def test_resampling_to_model_spacing_returns_labels_on_the_input_grid():
    volume = _sphere(shape=(24, 40, 32), spacing=(1.0, 0.5, 0.5))
    model = TinyDual(ThresholdNet(), ThresholdNet())
    meta = {"spacing": [2.0, 1.0, 1.0], "normalization": {"mode": "zscore"}}
    pred = predict_volume(model, volume, InferenceConfig(**FP32), metadata=meta)
    assert pred.info["work_shape"] == [12, 20, 16]
    assert pred.labels.shape == volume.shape and pred.probabilities.shape == (2, *volume.shape)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    truth = normalize_intensity(volume.array, "zscore") > 0
    assert (pred.labels.astype(bool) == truth).mean() > 0.97
    same = predict_volume(model, volume, InferenceConfig(**FP32), metadata={**meta, "spacing": [1, 0.5, 0.5]})
    assert same.info["work_shape"] == list(volume.shape)


def test_normalisation_comes_from_the_metadata():
    volume = _sphere()
    model = TinyDual(ThresholdNet(), ThresholdNet())
    # raw intensities are all > 0: without normalisation everything is foreground
    raw = predict_volume(model, volume, InferenceConfig(**FP32), metadata={"normalization": {"mode": "none"}})
    z = predict_volume(model, volume, InferenceConfig(**FP32), metadata={"normalization": {"mode": "zscore"}})
    assert raw.labels.mean() > 0.99 and z.labels.mean() < 0.5


def test_patch_size_from_metadata_unless_configured():
    volume = _sphere()
    meta = {"patch_size": [8, 16, 16]}
    cfg = {k: v for k, v in FP32.items() if k != "patch_size"}
    from_meta = predict_volume(tiny_dual(), volume, InferenceConfig(**cfg), metadata=meta)
    configured = predict_volume(tiny_dual(), volume, InferenceConfig(**FP32), metadata=meta)
    assert from_meta.info["patch"] == [8, 16, 16] and configured.info["patch"] == [12, 16, 16]


def test_largest_component_keeps_one_blob_per_class():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[6:8, 6:8, 6:8] = 1  # 8 voxels, separate
    labels[0, 9, 9] = 2
    labels[5:7, 0:2, 8:10] = 2
    out = keep_largest_component(labels, 3)
    assert (out == 1).sum() == 27 and (out == 2).sum() == 8 and out[6, 6, 6] == 0
    assert (labels == 1).sum() == 35  # input untouched


def test_mc_dropout_gives_a_single_network_a_disagreement_map():
    torch.manual_seed(0)
    net = TinyNet(dropout=0.5).eval()
    volume = _sphere(shape=(12, 16, 16))
    plain = predict_volume(net, volume, InferenceConfig(**FP32))
    mc = predict_volume(net, volume, InferenceConfig(mc_dropout=4, **FP32))
    assert plain.kl.max() == 0.0 and mc.kl.max() > 1e-3
    assert not net.training and not net.drop.training  # the caller's module is given back in eval mode


def test_callers_model_is_restored():
    model = tiny_dual().train()
    predict_volume(model, _sphere(shape=(12, 16, 16)), InferenceConfig(**FP32))
    assert model.training and all(m.training for m in model.modules())
    assert all(not p.is_inference() for p in model.parameters())


def test_low_precision_check_reports_agreement():
    torch.manual_seed(0)
    report = check_low_precision(tiny_dual(), _sphere(), InferenceConfig(**FP32))
    assert report["precision"] == "bf16"
    assert 0.0 <= report["changed_fraction"] < 0.05 and report["dice"] > 0.9
    assert 0.0 < report["max_abs_prob_diff"] < 0.2  # bf16 does change the numbers a little


@pytest.mark.parametrize("method, precision", [("cce", "fp32"), ("ugmcl", "fp32"), ("cce", "bf16")])
def test_real_dual_models(method, precision):
    from napari_sscce.models.dual import build_dual_model

    torch.manual_seed(0)
    model = build_dual_model(method, base_filters=2, has_dropout=False)
    volume = _sphere(shape=(16, 20, 16))
    config = InferenceConfig(patch_size=(16, 16, 16), precision=precision)
    pred = predict_volume(model, volume, config)
    assert pred.precision == precision and pred.info["windows"] == 2
    assert pred.probabilities.shape == (2, 16, 20, 16)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    if method == "ugmcl":  # the teacher starts as a copy of the student: no disagreement
        assert pred.kl.max() < 1e-6
    else:
        assert pred.kl.max() > 0
