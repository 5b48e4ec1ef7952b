"""UG-MCL's terms by hand (science.md, Method 2), from the formulas, not from the code's output.

intra = beta * masked MSE(p, p') + (1 - beta) * masked MSE(d, d') on voxels with u < u_th,
u = entropy of the teacher's mean prediction, u_th = (0.75 + 0.25 ramp(t)) ln C;
cross = mean (p_fg - sigmoid(-k d))^2 over all voxels; total = sup + lambda_i intra + lambda_c cross,
lambda = 0.1 ramp(t // step, L).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from napari_sscce.methods.base import Batch
from napari_sscce.methods.sdf import compute_sdf
from napari_sscce.methods.ugmcl import (
    UGMCLMethod,
    cross_task_loss,
    ema_update,
    intra_task_loss,
    uncertainty_threshold,
)
from napari_sscce.training.config import TrainConfig


def vol(rows: list[list[float]]) -> torch.Tensor:
    """Per-voxel channel vectors (N voxels) -> ``[1, C, 1, 1, N]``."""
    t = torch.tensor(rows, dtype=torch.float64).t().float()
    return t.reshape(1, t.shape[0], 1, 1, t.shape[1])


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def ramp(t: float, length: float) -> float:
    t = min(max(t, 0.0), length)
    return math.exp(-5.0 * (1.0 - t / length) ** 2)


P_STUDENT = [[0.2, 0.8], [0.6, 0.4]]
P_TEACHER = [[0.5, 0.5], [0.1, 0.9]]
D_STUDENT = [0.3, -0.2]
D_TEACHER = [0.1, 0.4]


def test_intra_task_loss_by_hand():
    certain = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    total, seg, dis = intra_task_loss(
        vol(P_STUDENT), vol([[v] for v in D_STUDENT]), vol(P_TEACHER), vol([[v] for v in D_TEACHER]), certain
    )
    # voxel 0 only: seg = ((0.2-0.5)^2 + (0.8-0.5)^2) / 2 channels, dis = (0.3-0.1)^2
    assert float(seg) == pytest.approx(0.09, abs=1e-6)
    assert float(dis) == pytest.approx(0.04, abs=1e-6)
    assert float(total) == pytest.approx(0.75 * 0.09 + 0.25 * 0.04, abs=1e-6)
    total_b, _, _ = intra_task_loss(
        vol(P_STUDENT), vol([[v] for v in D_STUDENT]), vol(P_TEACHER), vol([[v] for v in D_TEACHER]),
        certain, beta=0.4,
    )
    assert float(total_b) == pytest.approx(0.4 * 0.09 + 0.6 * 0.04, abs=1e-6)


def test_intra_task_loss_sends_no_gradient_to_the_teacher():
    p, pt = vol(P_STUDENT).requires_grad_(True), vol(P_TEACHER).requires_grad_(True)
    d, dt = vol([[v] for v in D_STUDENT]), vol([[v] for v in D_TEACHER]).requires_grad_(True)
    total, _, _ = intra_task_loss(p, d, pt, dt, torch.ones(1, 1, 1, 2))
    total.backward()
    assert pt.grad is None and dt.grad is None and float(p.grad.abs().sum()) > 0


def test_cross_task_loss_by_hand():
    probs = vol(P_STUDENT)
    sdf = vol([[v] for v in D_STUDENT])
    k = 2.0
    expected = ((0.8 - sigmoid(-k * 0.3)) ** 2 + (0.4 - sigmoid(-k * -0.2)) ** 2) / 2
    assert float(cross_task_loss(probs, sdf, k)) == pytest.approx(expected, rel=1e-6)
    # k = 1500: the distance head is a hard inside/outside switch (inside = negative distance)
    expected_hard = ((0.8 - 0.0) ** 2 + (0.4 - 1.0) ** 2) / 2
    assert float(cross_task_loss(probs, sdf)) == pytest.approx(expected_hard, rel=1e-5)


def test_cross_task_loss_pairs_distance_channel_c_with_class_c_plus_1():
    probs = vol([[0.1, 0.2, 0.7]])
    sdf = vol([[-1.0, 1.0]])  # inside class 1, outside class 2
    expected = ((0.2 - 1.0) ** 2 + (0.7 - 0.0) ** 2) / 2
    assert float(cross_task_loss(probs, sdf)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("iteration", [0, 10, 50, 100, 150])
def test_uncertainty_threshold_formula(iteration):
    for c in (2, 3):
        expected = (0.75 + 0.25 * ramp(iteration, 100)) * math.log(c)
        assert uncertainty_threshold(iteration, 100, c) == pytest.approx(expected, rel=1e-9)


def test_ema_update_by_hand():
    teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    assert ema_update(teacher, student, 0.99, iteration=1) == pytest.approx(0.5)  # 1 - 1/(t+1)
    assert float(teacher.weight) == pytest.approx(2.0)
    assert ema_update(teacher, student, 0.99, iteration=1000) == pytest.approx(0.99)
    assert float(teacher.weight) == pytest.approx(0.99 * 2.0 + 0.01 * 3.0)


class FixedDualTask(nn.Module):
    """(logits, features, sdf) fixed; repeated along the batch when the input has more rows."""

    def __init__(self, probs: list[list[float]], sdf: list[float]):
        super().__init__()
        self.logits = nn.Parameter(vol(probs).log())
        self.sdf = nn.Parameter(vol([[v] for v in sdf]))

    def forward(self, x: torch.Tensor):
        reps = x.shape[0] // self.logits.shape[0]
        logits = self.logits.repeat(reps, 1, 1, 1, 1)
        return logits, logits, self.sdf.repeat(reps, 1, 1, 1, 1)


def test_whole_ugmcl_loss_by_hand():
    """Unlabeled batch, supervised terms off: total = 0.1 ramp (intra + cross), intra masked by entropy."""
    step, length, iteration = 1, 4.0, 2
    config = TrainConfig(
        method="ugmcl", iterations=4, rampup_step=step, rampup_length=length,
        method_options={
            "supervised_seg": False, "supervised_sdf": False, "teacher_passes": 2, "teacher_chunk": 1,
            "threshold_rampup": 4,
        },
    )
    method = UGMCLMethod(config)
    model = SimpleNamespace(
        net_a=FixedDualTask(P_STUDENT, D_STUDENT), net_b=FixedDualTask(P_TEACHER, D_TEACHER)
    )
    batch = Batch(torch.zeros(1, 1, 1, 1, 2), torch.zeros(1, 1, 1, 2, dtype=torch.long),
                  torch.zeros(1, 1, 1, 2), labeled_bs=0)
    total, logs = method.losses(model, batch, iteration)

    threshold = (0.75 + 0.25 * ramp(iteration, 4)) * math.log(2)
    entropy = [-sum(p * math.log(p) for p in v) for v in P_TEACHER]  # 0.693 (uncertain), 0.325 (certain)
    certain = [h < threshold for h in entropy]
    assert certain == [False, True]
    seg = sum((a - b) ** 2 for a, b in zip(P_STUDENT[1], P_TEACHER[1], strict=True)) / 2
    dis = (D_STUDENT[1] - D_TEACHER[1]) ** 2
    intra = 0.75 * seg + 0.25 * dis
    cross = sum((p[1] - sigmoid(-1500 * d)) ** 2 for p, d in zip(P_STUDENT, D_STUDENT, strict=True)) / 2
    lam = 0.1 * ramp(iteration // step, length)
    assert logs["uncertainty_threshold"] == pytest.approx(threshold, rel=1e-9)
    assert logs["loss_intra"] == pytest.approx(intra, rel=1e-5)
    assert logs["loss_cross"] == pytest.approx(cross, rel=1e-5)
    assert logs["certain_fraction"] == pytest.approx(0.5)
    assert float(total) == pytest.approx(lam * intra + lam * cross, rel=1e-5)


class RecordingTeacher(FixedDualTask):
    """Keeps the inputs it is given (the noisy copies of the image)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor):
        self.inputs.append(x.detach().clone())
        return super().forward(x)


def test_teacher_input_noise_defaults_to_clamped_normal_01():
    """Default options: 8 passes, input + clamp(N(0, 0.1^2), -0.2, 0.2)."""
    config = TrainConfig(method="ugmcl", iterations=4, method_options={"supervised_seg": False,
                                                                       "supervised_sdf": False})
    teacher = RecordingTeacher(P_TEACHER, D_TEACHER)
    model = SimpleNamespace(net_a=FixedDualTask(P_STUDENT, D_STUDENT), net_b=teacher)
    image = torch.zeros(1, 1, 10, 10, 20)  # the stubs ignore the image: 2000 noise samples per pass
    batch = Batch(image, torch.zeros(1, 1, 1, 2, dtype=torch.long), torch.zeros(1, 1, 1, 2), labeled_bs=0)
    torch.manual_seed(0)
    UGMCLMethod(config).losses(model, batch, 0)
    noise = torch.cat([x.flatten() for x in teacher.inputs])
    assert noise.numel() == 8 * 2000
    assert float(noise.abs().max()) <= 0.2 + 1e-7
    clipped = float((noise.abs() >= 0.2 - 1e-7).float().mean())
    assert 0.03 < clipped < 0.065  # P(|Z| > 2) = 4.55 % for std 0.1
    # std of clamp(N(0, 1), -2, 2) is 0.9594 (numerical integral): 0.096 for std 0.1
    assert float(noise.std()) == pytest.approx(0.096, abs=0.004)


def test_supervised_ugmcl_terms_by_hand():
    """Labeled voxels: 0.5 CE + 0.5 Dice + 0.3 MSE(d, T(y)) with T the normalised signed distance."""
    n = 6
    label = np.array([0, 1, 1, 1, 0, 0]).reshape(1, 1, n)
    target = compute_sdf(label, 2)[0].reshape(-1)  # [C-1=1, 1, 1, n]
    probs = [[0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]]
    sdf = [0.5, -0.5, -0.2, 0.0, 0.1, 0.9]
    config = TrainConfig(method="ugmcl", iterations=4, method_options={"intra": False, "cross": False})
    model = SimpleNamespace(net_a=FixedDualTask(probs, sdf), net_b=FixedDualTask(probs, sdf))
    batch = Batch(torch.zeros(1, 1, 1, 1, n), torch.from_numpy(label).long()[None], torch.ones(1, 1, 1, n), 1)
    total, logs = UGMCLMethod(config).losses(model, batch, 0)
    y = label.reshape(-1).tolist()
    ce = -sum(math.log(p[c]) for p, c in zip(probs, y, strict=True)) / n
    inter = sum(p[1] for p, c in zip(probs, y, strict=True) if c == 1)
    dice = 1 - (2 * inter + 1e-5) / (sum(p[1] ** 2 for p in probs) + 3 + 1e-5)
    mse = sum((a - b) ** 2 for a, b in zip(sdf, target.tolist(), strict=True)) / n
    assert logs["loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert logs["loss_dice"] == pytest.approx(dice, rel=1e-5)
    assert logs["loss_sdf"] == pytest.approx(mse, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * ce + 0.5 * dice + 0.3 * mse, rel=1e-5)


def test_signed_distance_map_sign_and_normalisation_by_hand():
    """T(y): negative inside (to -1 at the deepest voxel), 0 on the boundary, positive outside (to +1)."""
    label = np.array([0, 0, 1, 1, 1, 0, 0, 0]).reshape(1, 1, 8)
    t = compute_sdf(label, 2)[0].reshape(-1)
    inside, outside = t[label.reshape(-1) == 1], t[label.reshape(-1) == 0]
    assert (inside <= 0).all() and (outside > 0).all()
    assert inside.min() == pytest.approx(-1.0) and outside.max() == pytest.approx(1.0)
    assert t[2] == pytest.approx(0.0) and t[4] == pytest.approx(0.0)  # boundary voxels
