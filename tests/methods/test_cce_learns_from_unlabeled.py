"""CCE must beat supervised training on a generated task where the unlabeled voxels carry the answer.

The task (issue 16): a bright ball (1.0) in dark tissue (0.0) under strong voxel noise (sd 0.35, so the two
intensity clusters overlap a little). The two labeled volumes are *clicked*, not painted: one organ and one
tissue voxel each (``mask == 1`` there), as a person marks a scan in a hurry. From 4 labeled voxels the
supervised boundary lands anywhere between the clicked intensities; the other voxels of those volumes and two
more unlabeled volumes show where the low-density gap between the two clusters lies, and only the unlabeled
terms can use it. Validation: four more volumes of the same kind, fully labeled.

Everything else is the same for both methods: the same two small 3x3x3 convolution networks (same
initialisation: same seed), ``CCEMethod`` / ``SupervisedMethod`` with their own optimisers, 200 full-batch
steps at lr 0.01. CCE runs its default terms (entropy-filtered cross pseudo supervision, KL weighting, KL
term) with ``cps_weight = 1.0``: the paper's 0.1 is sized for 6000 iterations and moves nothing in 200
steps (measured on a two-click variant: gains of -0.007 to +0.003). The ramp-up is the loop's
``sigmoid_rampup(t // 5, 50)``.

Measured by ``benchmarks/ssl_clicks.py`` (``benchmarks/results/ssl_clicks.md``) on seeds 0-5 (Intel Xeon @
2.00GHz, torch 2.13.0+cpu, one thread; two threads give the same gains): supervised 0.78-0.92, CCE
0.82-0.96, CCE ahead on every seed by 0.019 to 0.043 (mean 0.033). The test plays seeds 0-2 (gains 0.038,
0.041, 0.025) and asks for CCE ahead on each by more than 0.01 and by more than 0.02 on average. Bugs planted
there fail it: pseudo-labels of the wrong class (gains -0.56 to -0.60), a pseudo-label term without
gradient or switched off (+0.023, -0.011, +0.001: only the KL term acts), no ramp-up (+0.024, -0.001,
+0.034). It does not tell cross from self pseudo-labels or a reversed entropy ranking (both still gain
here); ``test_loss_values.py`` pins those.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_sscce.methods.base import Batch
from napari_sscce.methods.registry import METHODS
from napari_sscce.metrics import dice
from napari_sscce.models.dual import DualModel
from napari_sscce.training.config import TrainConfig

SIZE = 16
NOISE = 0.35
CLICKS = 1
STEPS = 200
SEEDS = (0, 1, 2)


class SmallConvNet(nn.Module):
    """Two 3x3x3 convolutions and a 1x1x1 head; returns ``(logits, features)`` like the package's networks."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.in_channels, self.num_classes = 1, 2
        self.spec = {"name": "small_conv_net", "kwargs": {"width": width}}
        self.body = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1), nn.ReLU(), nn.Conv3d(width, width, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv3d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def _ball(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy ``[1, Z, Y, X]`` image of a ball (radius 0.35 of the side) and its ``[Z, Y, X]`` label."""
    c = (np.arange(SIZE) + 0.5) / SIZE - 0.5
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    centre = rng.uniform(-0.1, 0.1, 3)
    label = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < 0.35**2
    image = label.astype(np.float64) + NOISE * rng.standard_normal(label.shape)
    return torch.tensor(image, dtype=torch.float32)[None], torch.tensor(label.astype(np.int64))


def _clicks(label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A mask with ``CLICKS`` random voxels of each class set to 1."""
    mask = torch.zeros(label.shape)
    flat = label.reshape(-1).numpy()
    for cls in (0, 1):
        picked = rng.choice(np.flatnonzero(flat == cls), CLICKS, replace=False)
        mask.view(-1)[torch.as_tensor(picked)] = 1.0
    return mask


def _task(seed: int):
    """Two clicked labeled volumes, two unlabeled volumes, four validation volumes."""
    rng = np.random.default_rng(seed)
    labeled = [_ball(rng) for _ in range(2)]
    unlabeled = [_ball(rng)[0] for _ in range(2)]
    val = [_ball(rng) for _ in range(4)]
    masks = [_clicks(label, rng) for _, label in labeled]
    return labeled, masks, unlabeled, val


def _val_dice(seed: int, method_name: str, options: dict | None = None) -> float:
    """Train ``method_name`` on the task of ``seed``; mean foreground Dice of the mean prediction on val."""
    labeled, masks, unlabeled, val = _task(seed)
    config = TrainConfig(
        method=method_name,
        iterations=STEPS,
        lr=0.01,
        rampup_step=5,
        rampup_length=50,
        method_options=dict(options or {}),
    )
    method = METHODS[method_name](config)
    torch.manual_seed(seed)
    model = DualModel(SmallConvNet(), SmallConvNet())
    optimizers = method.optimizers(model)
    rows = [image for image, _ in labeled]
    labels = [label for _, label in labeled]
    mask = list(masks)
    if method.uses_unlabeled:
        rows += unlabeled
        labels += [torch.zeros(SIZE, SIZE, SIZE, dtype=torch.long)] * len(unlabeled)
        mask += [torch.zeros(SIZE, SIZE, SIZE)] * len(unlabeled)
    batch = Batch(image=torch.stack(rows), label=torch.stack(labels), mask=torch.stack(mask), labeled_bs=2)
    for step in range(STEPS):
        loss, _ = method.losses(model, batch, step)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    scores = []
    with torch.no_grad():
        for image, label in val:
            prob = 0.5 * (
                torch.softmax(model.net_a(image[None])[0], 1) + torch.softmax(model.net_b(image[None])[0], 1)
            )
            scores.append(dice((prob[0, 1] > 0.5).numpy(), (label == 1).numpy()))
    return float(np.mean(scores))


def test_cce_with_unlabeled_voxels_beats_supervised():
    supervised = {seed: _val_dice(seed, "supervised") for seed in SEEDS}
    cce = {seed: _val_dice(seed, "cce", {"cps_weight": 1.0}) for seed in SEEDS}
    gains = [cce[s] - supervised[s] for s in SEEDS]
    assert min(gains) > 0.01, (supervised, cce)
    assert float(np.mean(gains)) > 0.02, (supervised, cce)
