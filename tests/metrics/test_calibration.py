"""Tests of napari_sscce.metrics.calibration: AUROC, ECE, temperature scaling, the error band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_sscce.metrics.calibration import (
    auroc,
    average_ranks,
    error_band,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    temperature_scale,
    uncertainty_report,
)


def test_average_ranks_share_ties() -> None:
    assert np.array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert np.array_equal(average_ranks(np.array([5, 5, 5])), [2.0, 2.0, 2.0])


def test_auroc_perfect_inverted_noise_and_ties(rng: np.random.Generator) -> None:
    wrong = rng.random((10, 12, 14)) < 0.1
    perfect = wrong.astype(np.float32) * 0.5 + rng.random(wrong.shape).astype(np.float32) * 0.1
    assert auroc(perfect, wrong) == 1.0
    assert auroc(-perfect, wrong) == 0.0
    noise = rng.random(wrong.shape)
    assert auroc(noise, wrong) == pytest.approx(0.5, abs=0.03)
    # a constant map: every pair tied, exactly one half
    assert auroc(np.zeros(wrong.shape), wrong) == 0.5
    assert math.isnan(auroc(noise, np.zeros(wrong.shape, bool)))


def test_auroc_small_example_by_hand() -> None:
    # positives score 0.8, 0.4; negatives 0.1, 0.4, 0.6
    # pairs (pos > neg): 0.8 beats all 3; 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.6 -> (3 + 1.5) / 6
    scores = np.array([0.8, 0.4, 0.1, 0.4, 0.6])
    target = np.array([True, True, False, False, False])
    assert auroc(scores, target) == pytest.approx(4.5 / 6)
    # the mask drops the negative at 0.6: (2 + 1.5) / 4
    mask = np.array([True, True, True, True, False])
    assert auroc(scores, target, mask) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="shape"):
        auroc(scores, target[:-1])


def test_ece_zero_for_calibrated_and_positive_for_overconfident(rng: np.random.Generator) -> None:
    # each bin's accuracy equals its confidence exactly: 1000 voxels per confidence level
    levels = (np.arange(15) + 0.5) / 15
    conf = np.repeat(levels, 1000)
    correct = np.concatenate([np.arange(1000) < round(c * 1000) for c in levels])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-3)
    # sampled from a calibrated model: small
    c = rng.uniform(0.5, 1.0, 200_000)
    assert expected_calibration_error(c, rng.random(c.size) < c) < 0.01
    # always 0.99 sure but right only 70 %: ECE = 0.29
    sure = np.full(10_000, 0.99)
    assert expected_calibration_error(sure, np.arange(10_000) < 7000) == pytest.approx(0.29)
    counts, mean_conf, acc = reliability_bins(sure, np.arange(10_000) < 7000)
    assert counts[-1] == 10_000 and counts[:-1].sum() == 0
    assert mean_conf[-1] == pytest.approx(0.99) and acc[-1] == pytest.approx(0.7)
    assert math.isnan(expected_calibration_error(sure, sure > 0, mask=np.zeros(sure.shape, bool)))


def test_temperature_scaling_keeps_argmax_and_recovers_a_known_temperature(rng: np.random.Generator) -> None:
    logits = rng.normal(size=(3, 8, 20, 20)) * 1.5
    true_prob = np.exp(logits) / np.exp(logits).sum(0)
    labels = (rng.random((8, 20, 20))[None] > np.cumsum(true_prob, 0)).sum(0)  # samples from true_prob
    # an overconfident model: logits twice too large, i.e. T = 2 undoes it
    sharp = np.exp(2 * logits) / np.exp(2 * logits).sum(0)
    t = fit_temperature([sharp], [labels])
    assert t == pytest.approx(2.0, rel=0.15)
    fixed = temperature_scale(sharp, t)
    assert np.array_equal(fixed.argmax(0), sharp.argmax(0))
    assert np.allclose(fixed.sum(0), 1.0, atol=1e-5)
    assert negative_log_likelihood(fixed, labels) < negative_log_likelihood(sharp, labels)
    assert np.allclose(temperature_scale(sharp, 2.0), true_prob, atol=1e-4)
    assert np.array_equal(temperature_scale(sharp, 1.0), sharp.astype(np.float32))
    with pytest.raises(ValueError, match="positive"):
        temperature_scale(sharp, 0.0)


def test_error_band_and_report() -> None:
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[4:8, 4:8, 4:8] = 1
    pred = gt.copy()
    pred[4:8, 4:8, 7] = 0  # one wrong face of the cube
    band = error_band(pred, gt, margin=1)
    assert band[3:9, 3:9, 3:9].all() and band.sum() == 6**3
    assert error_band(pred, gt, margin=0).sum() == 4**3
    prob = np.stack([pred == 0, pred == 1]).astype(np.float32) * 0.8 + 0.1
    wrong = pred != gt
    maps = {"oracle": wrong.astype(float), "flat": np.zeros(gt.shape)}
    report = uncertainty_report(maps, prob, gt, margin=1)
    assert report["auroc"]["oracle"] == {"band": 1.0, "volume": 1.0}
    assert report["auroc"]["flat"]["band"] == 0.5
    assert report["wrong_voxels"] == 16 and report["wrong_in_band"] == 16 and report["band_voxels"] == 216
    # confidence 0.9 everywhere; accuracy 200/216 in the band
    assert report["ece"]["band"] == pytest.approx(abs(0.9 - 200 / 216), abs=1e-6)
