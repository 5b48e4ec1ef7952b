"""Exact values of every loss term on tiny hand-built inputs, written from the formulas in science.md.

The expected numbers are computed here in plain Python from the published formulas (never from the
package's own output): soft Dice ``1 - (2 sum p y + e) / (sum p^2 + sum y^2 + e)``, cross-entropy
``-log p_target``, cross pseudo supervision masked by the *provider's* entropy mask and weighted by
``exp(-KL(provider || learner))``, the ramp ``exp(-5 (1 - t / L)^2)``, and UG-MCL's intra- and cross-task
consistencies.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from napari_sscce.methods.base import Batch
from napari_sscce.methods.cce import CCEMethod, kl_weights
from napari_sscce.methods.losses import (
    dice_loss,
    masked_cross_entropy,
    one_hot,
    sigmoid_rampup,
    supervised_loss,
)
from napari_sscce.methods.supervised import SupervisedMethod
from napari_sscce.training.config import TrainConfig

E = 1e-5  # the Dice smoothing term of the reference code


# ----------------------------------------------------------------------------- plain-Python references
def ref_dice(probs: list[list[float]], labels: list[int], classes: list[int], mask=None) -> float:
    """Mean over ``classes`` of ``1 - (2 sum p y + e) / (sum p^2 + sum y^2 + e)`` on the masked voxels."""
    mask = mask or [1] * len(labels)
    losses = []
    for c in classes:
        inter = sum(m * p[c] * (y == c) for p, y, m in zip(probs, labels, mask, strict=True))
        p2 = sum(m * p[c] ** 2 for p, m in zip(probs, mask, strict=True))
        y2 = sum(m * float(y == c) for y, m in zip(labels, mask, strict=True))
        losses.append(1.0 - (2.0 * inter + E) / (p2 + y2 + E))
    return sum(losses) / len(losses)


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def binary_kl(p: float, q: float) -> float:
    """KL((1-p, p) || (1-q, q))."""
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def ramp(t: float, length: float) -> float:
    t = min(max(t, 0.0), length)
    return math.exp(-5.0 * (1.0 - t / length) ** 2)


def as_volume(rows: list[list[float]]) -> torch.Tensor:
    """Per-voxel class vectors ``[[c0, c1, ...], ...]`` (N voxels) -> ``[1, C, 1, 1, N]``."""
    t = torch.tensor(rows, dtype=torch.float64).t().float()
    return t.reshape(1, t.shape[0], 1, 1, t.shape[1])


def as_labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).reshape(1, 1, 1, len(values))


# ----------------------------------------------------------------------------- Dice
P2 = [[0.2, 0.8], [0.6, 0.4]]
Y2 = [1, 0]


def test_dice_loss_two_voxels_by_hand():
    # foreground: sum p y = 0.8, sum p^2 = 0.64 + 0.16, sum y^2 = 1
    expected_fg = 1.0 - (1.6 + E) / (1.8 + E)
    # background: sum p y = 0.6, sum p^2 = 0.04 + 0.36, sum y^2 = 1
    expected_bg = 1.0 - (1.2 + E) / (1.4 + E)
    probs, onehot = as_volume(P2), one_hot(as_labels(Y2), 2)
    assert float(dice_loss(probs, onehot)) == pytest.approx(expected_fg, abs=1e-6)
    assert float(dice_loss(probs, onehot, include_background=True)) == pytest.approx(
        0.5 * (expected_fg + expected_bg), abs=1e-6
    )
    assert ref_dice(P2, Y2, [1]) == pytest.approx(expected_fg)  # the reference agrees with the hand value


def test_dice_loss_three_classes_background_and_mask():
    probs = [[0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.05, 0.05, 0.9]]
    labels = [1, 2, 0, 0]
    mask = [1, 1, 1, 0]  # the last voxel (confidently class 2, labeled 0) is not confirmed
    p, y, m = as_volume(probs), one_hot(as_labels(labels), 3), torch.tensor(mask).float().reshape(1, 1, 1, 4)
    fg, everything = [1, 2], [0, 1, 2]
    assert float(dice_loss(p, y)) == pytest.approx(ref_dice(probs, labels, fg), abs=1e-6)
    assert float(dice_loss(p, y, include_background=True)) == pytest.approx(
        ref_dice(probs, labels, everything), abs=1e-6
    )
    assert float(dice_loss(p, y, mask=m)) == pytest.approx(ref_dice(probs, labels, fg, mask), abs=1e-6)
    assert float(dice_loss(p, y, mask=m, include_background=True)) == pytest.approx(
        ref_dice(probs, labels, everything, mask), abs=1e-6
    )
    # the masked voxel matters when it is counted: the mask is not a no-op here
    assert ref_dice(probs, labels, fg, mask) != pytest.approx(ref_dice(probs, labels, fg), abs=1e-3)


def test_dice_loss_sums_over_the_whole_batch():
    """One Dice per class over all rows and voxels (the reference), not a mean of per-row Dice."""
    rows = [[[0.3, 0.7], [0.9, 0.1]], [[0.8, 0.2], [0.4, 0.6]]]
    labels = [[1, 0], [1, 1]]
    p = torch.cat([as_volume(r) for r in rows])
    y = one_hot(torch.cat([as_labels(v) for v in labels]), 2)
    flat_p = [v for r in rows for v in r]
    flat_y = [v for r in labels for v in r]
    assert float(dice_loss(p, y)) == pytest.approx(ref_dice(flat_p, flat_y, [1]), abs=1e-6)


# ----------------------------------------------------------------------------- cross-entropy
LN3 = math.log(3.0)


def test_masked_cross_entropy_by_hand():
    logits = as_volume([[0.0, LN3], [LN3, 0.0]])  # softmax (1/4, 3/4) and (3/4, 1/4)
    target = as_labels([1, 1])
    ce0, ce1 = -math.log(0.75), -math.log(0.25)
    assert float(masked_cross_entropy(logits, target)) == pytest.approx(0.5 * (ce0 + ce1), rel=1e-6)
    weight = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert float(masked_cross_entropy(logits, target, weight)) == pytest.approx(ce0, rel=1e-6)
    soft = torch.tensor([0.5, 0.25]).reshape(1, 1, 1, 2)
    assert float(masked_cross_entropy(logits, target, soft, denominator=2.0)) == pytest.approx(
        (0.5 * ce0 + 0.25 * ce1) / 2.0, rel=1e-6
    )
    assert float(masked_cross_entropy(logits, target, soft)) == pytest.approx(
        (0.5 * ce0 + 0.25 * ce1) / 0.75, rel=1e-6
    )


def test_supervised_loss_is_half_ce_plus_half_foreground_dice():
    logits = as_volume([[0.0, LN3], [LN3, 0.0], [0.0, 0.0]])
    target = as_labels([1, 1, 0])
    mask = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 3)
    ce = 0.5 * (-math.log(0.75) - math.log(0.25))
    dice = ref_dice([[0.25, 0.75], [0.75, 0.25]], [1, 1], [1])
    assert dice == pytest.approx(1 - (2 + E) / (0.625 + 2 + E))
    assert float(supervised_loss(logits, target, mask)) == pytest.approx(0.5 * ce + 0.5 * dice, abs=1e-6)
    assert float(supervised_loss(logits, target, mask, 1.0, 0.0)) == pytest.approx(ce, abs=1e-6)


# ----------------------------------------------------------------------------- ramp-up
@pytest.mark.parametrize("t", [-3, 0, 5, 10, 20, 33, 40, 41, 400])
def test_sigmoid_rampup_formula(t):
    assert sigmoid_rampup(t, 40) == pytest.approx(ramp(t, 40), rel=1e-12)


# ----------------------------------------------------------------------------- CCE with fixed networks
class FixedNet(nn.Module):
    """A 'network' whose logits are a parameter: returns ``(logits, features)`` for the first rows.

    The features (zeros) differ from the logits, so a loss computed on the wrong output is noticed.

    The input's values are ignored; only its number of rows is used (the first ``x.shape[0]`` rows).
    """

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.logits[: x.shape[0]]
        return out, torch.zeros_like(out)


def binary_logits(z: list[float]) -> torch.Tensor:
    """Logits ``(0, z_i)`` per voxel: foreground probability ``sigmoid(z_i)``."""
    return as_volume([[0.0, v] for v in z])


# net A is least sure at voxel 0, net B at voxel 1: their 20 % entropy masks drop different voxels
Z_A = [0.1, 3.0, -2.0, 2.5, -3.5]
Z_B = [2.0, -0.2, -3.0, 1.5, 4.0]


def fixed_dual(z_a=Z_A, z_b=Z_B) -> SimpleNamespace:
    return SimpleNamespace(net_a=FixedNet(binary_logits(z_a)), net_b=FixedNet(binary_logits(z_b)))


def unlabeled_batch(n: int = 5) -> Batch:
    return Batch(
        image=torch.zeros(1, 1, 1, 1, n),
        label=torch.zeros(1, 1, 1, n, dtype=torch.long),
        mask=torch.zeros(1, 1, 1, n),
        labeled_bs=0,
    )


def cce(iterations: int = 6000, **options) -> CCEMethod:
    return CCEMethod(TrainConfig(iterations=iterations, method_options=options))


def ce_binary(z: float, target: int) -> float:
    """``-log p_target`` for logits ``(0, z)``."""
    return softplus(-z) if target == 1 else softplus(z)


def keep_by_entropy(z: list[float], percent: float = 20.0) -> list[bool]:
    """Keep all but the round(n * percent / 100) voxels of highest entropy."""
    h = [binary_entropy(sigmoid(v)) for v in z]
    k = round(len(z) * percent / 100)
    dropped = sorted(range(len(z)), key=lambda i: -h[i])[:k]
    return [i not in dropped for i in range(len(z))]


def cps_reference(z_learner, z_provider, temperature=None) -> float:
    """CE of the learner on the provider's argmax, over the provider's kept voxels, optionally x exp(-KL)."""
    keep = keep_by_entropy(z_provider)
    total = 0.0
    for i, (zl, zp) in enumerate(zip(z_learner, z_provider, strict=True)):
        if not keep[i]:
            continue
        w = 1.0
        if temperature is not None:
            w = math.exp(-binary_kl(sigmoid(zp / temperature), sigmoid(zl / temperature)))
        total += w * ce_binary(zl, int(zp > 0))
    return total / sum(keep)


def test_pseudo_labels_default_to_foreground_first():
    from napari_sscce.methods.cce import pseudo_labels

    split = as_volume([[0.4, 0.35, 0.25]])  # foreground mass 0.6 split over two classes
    assert int(pseudo_labels(split)) == 1  # the function's default: foreground first
    assert int(pseudo_labels(split, foreground_first=False)) == 0


def test_the_two_networks_drop_different_voxels():
    assert keep_by_entropy(Z_A) == [False, True, True, True, True]
    assert keep_by_entropy(Z_B) == [True, False, True, True, True]


def test_cps_uses_the_providers_entropy_mask():
    method = cce(kl_weighting=False, kl=False)
    terms = method.terms(fixed_dual(), unlabeled_batch(), iteration=0)
    assert set(terms) == {"cps_a", "cps_b"}
    # A learns B's labels on the voxels B is sure of, and vice versa
    assert float(terms["cps_a"]) == pytest.approx(cps_reference(Z_A, Z_B), rel=1e-5)
    assert float(terms["cps_b"]) == pytest.approx(cps_reference(Z_B, Z_A), rel=1e-5)
    # with the learner's own mask the value would differ (so the test can tell them apart)
    own = sum(ce_binary(Z_A[i], int(Z_B[i] > 0)) for i in range(5) if keep_by_entropy(Z_A)[i]) / 4
    assert own != pytest.approx(cps_reference(Z_A, Z_B), rel=1e-2)


def test_cps_without_entropy_filter_counts_every_unlabeled_voxel():
    method = cce(kl_weighting=False, kl=False, entropy_filter=False)
    terms = method.terms(fixed_dual(), unlabeled_batch(), iteration=0)
    expected = sum(ce_binary(a, int(b > 0)) for a, b in zip(Z_A, Z_B, strict=True)) / 5
    assert float(terms["cps_a"]) == pytest.approx(expected, rel=1e-5)


def test_kl_weights_direction():
    p = as_volume([[0.5, 0.5], [0.2, 0.8]])
    q = as_volume([[0.9, 0.1], [0.2, 0.8]])
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_pq != pytest.approx(kl_qp, rel=1e-2)  # asymmetric inputs: direction matters
    w = kl_weights(p, q).flatten().tolist()
    assert w == pytest.approx([math.exp(-kl_pq), 1.0], rel=1e-5)
    assert kl_weights(q, p).flatten().tolist() == pytest.approx([math.exp(-kl_qp), 1.0], rel=1e-5)


def test_cps_weighted_by_exp_minus_kl_of_provider_and_learner():
    temperature = 0.5
    method = cce(kl=False, kl_temperature=temperature)
    terms = method.terms(fixed_dual(), unlabeled_batch(), iteration=0)
    assert float(terms["cps_a"]) == pytest.approx(cps_reference(Z_A, Z_B, temperature), rel=1e-5)
    assert float(terms["cps_b"]) == pytest.approx(cps_reference(Z_B, Z_A, temperature), rel=1e-5)
    # the weights are < 1 where the nets disagree, so the term is smaller than without them
    assert float(terms["cps_a"]) < cps_reference(Z_A, Z_B)


def test_kl_regulariser_is_the_mean_symmetric_kl_at_the_temperature():
    temperature = 0.5
    method = cce(cps=False, kl_temperature=temperature)
    terms = method.terms(fixed_dual(), unlabeled_batch(), iteration=0)
    expected = 0.0
    for a, b in zip(Z_A, Z_B, strict=True):
        pa, pb = sigmoid(a / temperature), sigmoid(b / temperature)
        expected += 0.5 * (binary_kl(pa, pb) + binary_kl(pb, pa))
    assert float(terms["kl"]) == pytest.approx(expected / 5, rel=1e-5)


def test_cosine_term_by_hand():
    method = cce(cps=False, kl=False, cosine=True)
    terms = method.terms(fixed_dual(), unlabeled_batch(), iteration=0)
    expected = 0.0
    for a, b in zip(Z_A, Z_B, strict=True):
        pa, pb = (1 - sigmoid(a), sigmoid(a)), (1 - sigmoid(b), sigmoid(b))
        dot = sum(x * y for x, y in zip(pa, pb, strict=True))
        expected += 1.0 - dot / (math.hypot(*pa) * math.hypot(*pb))
    assert float(terms["cosine"]) == pytest.approx(expected / 5, rel=1e-5)


@pytest.mark.parametrize("iteration", [0, 1500, 3000, 4500, 6000])
def test_cps_and_kl_weights_follow_the_ramp(iteration):
    """6000 iterations: t = iteration // 150, L = 40; CPS and KL weights are 0.1 x ramp."""
    method = cce(kl_weighting=False)
    expected_ramp = ramp(iteration // 150, 40)
    weights = method.term_weights(iteration)
    assert weights["cps"] == pytest.approx(0.1 * expected_ramp, rel=1e-9)
    assert weights["kl"] == pytest.approx(0.1 * expected_ramp, rel=1e-9)
    assert weights["sup"] == 1.0
    total, logged = method.losses(fixed_dual(), unlabeled_batch(), iteration)
    unsup = logged["cps_a"] + logged["cps_b"] + logged["kl"]
    assert logged["ramp"] == pytest.approx(expected_ramp, rel=1e-9)
    assert float(total) == pytest.approx(0.1 * expected_ramp * unsup, rel=1e-5)


def test_cce_supervised_terms_by_hand_with_a_partial_mask():
    # row 0 labeled (voxels 0, 1 confirmed), row 1 unlabeled; CPS off to isolate the supervised terms
    z_a, z_b = [1.0, -0.5, 2.0], [0.3, 0.7, -1.0]
    logits_a = torch.cat([binary_logits(z_a), binary_logits([0.0, 0.0, 0.0])])
    logits_b = torch.cat([binary_logits(z_b), binary_logits([0.0, 0.0, 0.0])])
    model = SimpleNamespace(net_a=FixedNet(logits_a), net_b=FixedNet(logits_b))
    label = torch.tensor([[1, 0, 0], [0, 0, 0]]).reshape(2, 1, 1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).reshape(2, 1, 1, 3)
    batch = Batch(image=torch.zeros(2, 1, 1, 1, 3), label=label, mask=mask, labeled_bs=1)
    terms = cce(cps=False, kl=False).terms(model, batch, 0)
    for key, z in (("sup_a", z_a), ("sup_b", z_b)):
        ce = (ce_binary(z[0], 1) + ce_binary(z[1], 0)) / 2
        probs = [[1 - sigmoid(v), sigmoid(v)] for v in z]
        dice = ref_dice(probs, [1, 0, 0], [1], [1, 1, 0])
        assert float(terms[key]) == pytest.approx(0.5 * ce + 0.5 * dice, rel=1e-5), key
    total, logged = SupervisedMethod(TrainConfig()).losses(model, batch, 0)
    assert float(total) == pytest.approx(float(terms["sup_a"] + terms["sup_b"]), rel=1e-6)


def test_confident_mse_only_where_exactly_one_net_is_confident_foreground():
    # voxel 0: A confident fg (0.9), B not; voxel 1: both confident; voxel 2: only B confident
    z_a, z_b = [math.log(9.0), 3.0, 0.0], [0.0, 3.0, 3.0]
    model = SimpleNamespace(net_a=FixedNet(binary_logits(z_a)), net_b=FixedNet(binary_logits(z_b)))
    label = torch.tensor([0, 1, 1]).reshape(1, 1, 1, 3)
    batch = Batch(torch.zeros(1, 1, 1, 1, 3), label, torch.ones(1, 1, 1, 3), labeled_bs=1)
    terms = cce(cps=False, kl=False, conf_mse=True, conf_threshold=0.6).terms(model, batch, 0)
    assert float(terms["conf_mse_a"]) == pytest.approx((0.9 - 0.0) ** 2, rel=1e-5)
    assert float(terms["conf_mse_b"]) == pytest.approx((sigmoid(3.0) - 1.0) ** 2, rel=1e-5)


def test_confident_mse_ignores_unconfirmed_voxels():
    # voxel 3 is voxel 0 again (only A confident fg) but labeled 1 and not confirmed (mask 0): left out
    z_a, z_b = [math.log(9.0), 3.0, 0.0, math.log(9.0)], [0.0, 3.0, 3.0, 0.0]
    model = SimpleNamespace(net_a=FixedNet(binary_logits(z_a)), net_b=FixedNet(binary_logits(z_b)))
    label = torch.tensor([0, 1, 1, 1]).reshape(1, 1, 1, 4)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    batch = Batch(torch.zeros(1, 1, 1, 1, 4), label, mask, labeled_bs=1)
    terms = cce(cps=False, kl=False, conf_mse=True, conf_threshold=0.6).terms(model, batch, 0)
    assert float(terms["conf_mse_a"]) == pytest.approx((0.9 - 0.0) ** 2, rel=1e-5)
    assert float(terms["conf_mse_b"]) == pytest.approx((sigmoid(3.0) - 1.0) ** 2, rel=1e-5)


def test_contrastive_term_at_the_papers_temperature_by_hand():
    """One reliable voxel per class (features (1, 0) and (0, 1)) and one uncertain voxel (1, 2) of class 1:
    InfoNCE over cosines / 0.1 (the paper's temperature, CCE's default) is
    ``log(1 + exp((c0 - c1) / 0.1))``."""
    from napari_sscce.methods.cce import prototype_contrastive_loss

    method = cce(contrast=True)
    features = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 2.0]]).reshape(1, 2, 1, 1, 3)
    proto_class = torch.tensor([0, 1, -1]).reshape(1, 1, 1, 3)
    anchor = torch.tensor([False, False, True]).reshape(1, 1, 1, 3)
    anchor_class = torch.tensor([0, 0, 1]).reshape(1, 1, 1, 3)
    loss = prototype_contrastive_loss(
        features, proto_class, anchor, anchor_class, 2, method.options["contrast_temperature"]
    )
    c0, c1 = 1.0 / math.sqrt(5.0), 2.0 / math.sqrt(5.0)
    assert float(loss) == pytest.approx(softplus((c0 - c1) / 0.1), rel=1e-5)


def test_every_term_off_gives_a_zero_loss_that_reaches_both_nets():
    model = nn.Module()
    model.net_a, model.net_b = FixedNet(binary_logits(Z_A)), FixedNet(binary_logits(Z_B))
    total, logged = cce(sup=False, cps=False, kl=False).losses(model, unlabeled_batch(), 0)
    assert float(total) == 0.0
    total.backward()
    for net in (model.net_a, model.net_b):
        assert net.logits.grad is not None and float(net.logits.grad.abs().sum()) == 0.0
    assert set(logged) == {"ramp"}
