import math

import pytest
import torch

from napari_sscce.methods.losses import (
    dice_loss,
    entropy_map,
    kl_map,
    masked_cross_entropy,
    masked_mse,
    one_hot,
    sigmoid_rampup,
    supervised_loss,
)


def test_sigmoid_rampup_reference_values():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(40, 40) == 1.0
    assert sigmoid_rampup(400, 40) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0


def test_dice_loss_perfect_and_wrong():
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    oh = one_hot(label, 2)
    assert float(dice_loss(oh, oh)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(1 - oh, oh)) == pytest.approx(1.0, abs=1e-4)


def test_dice_loss_mask_ignores_voxels():
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    oh = one_hot(label, 2)
    probs = oh.clone()
    probs[0, :, 3] = torch.tensor([0.0, 1.0]).view(2, 1, 1)  # wrong on the slice z=3
    mask = torch.ones(1, 4, 4, 4)
    assert float(dice_loss(probs, oh)) > 0.1
    mask[0, 3] = 0
    assert float(dice_loss(probs, oh, mask)) == pytest.approx(0.0, abs=1e-6)


def test_masked_cross_entropy_weights_and_denominator():
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[0, 1, 0] = 5.0
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = torch.zeros(1, 2, 2, 2)
    w[0, 0] = 1
    assert float(masked_cross_entropy(logits, target, w)) == pytest.approx(float(ce[0, 0].mean()))
    half = float(masked_cross_entropy(logits, target, w * 0.5, denominator=w.sum()))
    assert half == pytest.approx(0.5 * float(ce[0, 0].mean()))
    assert float(masked_cross_entropy(logits, target, torch.zeros_like(w))) == 0.0


def test_masked_mse_and_supervised_loss_mask():
    a, b = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    m = torch.zeros(1, 2, 2, 2)
    m[0, 0, 0, 0] = 1
    assert float(masked_mse(a, b, m)) == pytest.approx(1.0)
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    label = torch.randint(0, 3, (1, 4, 4, 4))
    mask = torch.zeros(1, 4, 4, 4)
    mask[0, 0] = 1
    supervised_loss(logits, label, mask).backward()
    assert logits.grad[:, :, 1:].abs().max() == 0  # no gradient from unconfirmed voxels
    assert logits.grad[:, :, 0].abs().max() > 0


def test_entropy_and_kl_maps():
    p = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1, 1)
    q = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1, 1)
    assert float(entropy_map(p)) == pytest.approx(math.log(2))
    assert float(entropy_map(p, normalize=True)) == pytest.approx(1.0)
    assert float(kl_map(p, p)) == pytest.approx(0.0, abs=1e-7)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(kl_map(p, q)) == pytest.approx(expected, rel=1e-5)
