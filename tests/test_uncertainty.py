"""Tests of napari_sscce.uncertainty: entropy / KL maps (numpy and torch), region ranking, volume score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_sscce.uncertainty import entropy, entropy_torch, kl_divergence, kl_divergence_torch


def _random_prob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    logits = rng.normal(size=shape).astype(np.float32) * 2
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_entropy_zero_for_one_hot_and_one_for_uniform(num_classes: int) -> None:
    labels = np.arange(24).reshape(2, 3, 4) % num_classes
    one_hot = np.eye(num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    assert np.allclose(entropy(one_hot), 0.0, atol=1e-6)
    uniform = np.full((num_classes, 2, 3, 4), 1.0 / num_classes, dtype=np.float32)
    assert np.allclose(entropy(uniform), 1.0, atol=1e-5)
    assert np.allclose(entropy(uniform, normalize=False), math.log(num_classes), atol=1e-5)


def test_entropy_matches_definition_and_axis(rng: np.random.Generator) -> None:
    prob = _random_prob(rng, (3, 4, 5, 6))
    expected = -(prob * np.log(prob)).sum(axis=0) / math.log(3)
    h = entropy(prob)
    assert h.shape == (4, 5, 6) and h.dtype == np.float32
    assert np.allclose(h, expected, atol=1e-5)
    assert np.allclose(entropy(np.moveaxis(prob, 0, -1), axis=-1), h, atol=1e-6)
    assert h.min() >= 0 and h.max() <= 1


def test_kl_zero_when_equal_positive_otherwise(rng: np.random.Generator) -> None:
    p = _random_prob(rng, (3, 4, 5, 6))
    q = _random_prob(rng, (3, 4, 5, 6))
    assert np.allclose(kl_divergence(p, p), 0.0, atol=1e-6)
    assert np.allclose(kl_divergence(p, p, symmetric=False, normalize=False), 0.0, atol=1e-6)
    raw = kl_divergence(p, q, normalize=False)
    assert (raw > 0).all()
    forward = (p * np.log(p / q)).sum(axis=0)
    backward = (q * np.log(q / p)).sum(axis=0)
    assert np.allclose(raw, 0.5 * (forward + backward), rtol=1e-4, atol=1e-6)
    assert np.allclose(kl_divergence(p, q, symmetric=False, normalize=False), forward, rtol=1e-4, atol=1e-6)
    norm = kl_divergence(p, q)
    assert np.allclose(norm, 1 - np.exp(-raw), atol=1e-6)
    assert norm.min() > 0 and norm.max() < 1


def test_kl_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        kl_divergence(np.ones((2, 3)), np.ones((2, 4)))


def test_torch_twins_match_numpy(rng: np.random.Generator) -> None:
    p = _random_prob(rng, (4, 3, 5, 6))
    q = _random_prob(rng, (4, 3, 5, 6))
    tp, tq = torch.from_numpy(p), torch.from_numpy(q)
    for normalize in (True, False):
        assert np.allclose(entropy_torch(tp, normalize=normalize).numpy(), entropy(p, normalize=normalize),
                           atol=1e-5)
        for symmetric in (True, False):
            got = kl_divergence_torch(tp, tq, symmetric=symmetric, normalize=normalize).numpy()
            assert np.allclose(got, kl_divergence(p, q, symmetric=symmetric, normalize=normalize), atol=1e-5)
    # batched layout, class dim 1; inputs are not modified
    tp_b = tp.unsqueeze(0).clone()
    before = tp_b.clone()
    assert torch.allclose(entropy_torch(tp_b, dim=1)[0], entropy_torch(tp))
    assert torch.allclose(kl_divergence_torch(tp_b, tq.unsqueeze(0), dim=1)[0], kl_divergence_torch(tp, tq))
    assert torch.equal(tp_b, before)
    assert entropy_torch(tp.half()).dtype == torch.float32
