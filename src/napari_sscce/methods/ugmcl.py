"""UG-MCL: uncertainty-guided mutual consistency learning (Zhang et al., arXiv 2112.02508).

A mean teacher of two dual-task VNets (segmentation head + signed-distance head): ``net_a`` is the student,
``net_b`` the teacher, an exponential moving average (EMA) of the student. Per iteration, with ``t`` the
iteration (from 0), ``p`` / ``d`` the student's softmax and distance outputs, ``p'`` / ``d'`` the teacher's:

* supervised (labeled rows, annotated voxels): ``0.5 CE(p, y) + 0.5 Dice(p, y) + w_sdf * MSE(d, T(y))``
  with ``T`` the normalised signed distance map (:func:`napari_sscce.methods.sdf.compute_sdf`);
* uncertainty: ``T = 8`` stochastic teacher passes (dropout on, input noise
  ``clamp(N(0, 0.1^2), -0.2, 0.2)``), ``u`` = entropy (natural log) of their mean softmax, threshold
  ``u_th = (0.75 + 0.25 * sigmoid_rampup(t, ramp)) * ln C`` with ``ramp`` the run's iterations;
* intra-task consistency on voxels with ``u < u_th``: ``beta * MSE(p, p') + (1 - beta) * MSE(d, d')``,
  ``beta = 0.75``;
* cross-task consistency over all voxels: ``MSE(p_fg, sigmoid(-k * d))``, ``k = 1500`` (student's own heads);
* total = supervised ``+ lambda_i * intra + lambda_c * cross``, ``lambda = 0.1 * sigmoid_rampup(t // s, L)``
  (``s`` = ``config.resolved_rampup_step()``, 150 at 6000 iterations; ``L`` = ``config.rampup_length``, 40);
* after each step: ``teacher = a * teacher + (1 - a) * student`` with ``a = min(1 - 1 / (t + 1), 0.99)``.

Choices where the paper is silent, following the released code (YichiZhang98/UG-MCL ``train_UGMCL_3D.py``,
HiLab-git/DTC ``train_la_dtc.py``) unless stated:

* the teacher runs in train mode (dropout on, BatchNorm on batch statistics; its running statistics come from
  its own passes), as the reference; the EMA covers parameters only. When the intra-task term is off the
  teacher never runs, so its BatchNorm running statistics then follow the student's by the same EMA (so
  ``net_b`` still predicts sensibly at inference);
* the passes are run ``teacher_chunk`` at a time (2, as the reference, which repeats the batch twice); the
  teacher target ``p'``, ``d'`` of the intra-task term is the first pass (the reference draws one more noisy
  pass for it: the same distribution, one forward pass less);
* intra- and cross-task terms cover every row of the batch (labeled and unlabeled), as the reference;
* masked MSE = sum over certain voxels and channels / (channels x certain voxels) (the reference divides the
  seg term by ``4 * sum(mask)`` for two classes); the distance MSE of the intra-task term uses the same mask;
* CE and Dice weigh 0.5 each, as the UG-MCL code (``0.5 * (CE + Dice + ...)``); ``w_sdf = 0.3`` (DTC's
  ``beta``: the UG-MCL code supervises the distance head only through a Dice on ``sigmoid(-1500 d)``, not
  with the MSE of the method description);
* the intra-task distance term follows the method description (``beta`` weighting); the released code has
  it commented out and keeps only the segmentation consistency (``beta = 1`` here reproduces that);
* the distance target is computed once per case and cropped with the patch; when the batch has no ``"sdf"``
  extra it is computed on the patch (DTC's way). Its MSE is masked by the annotation mask (partial labels).

Every term has a switch and a weight in ``config.method_options`` (see ``UGMCLMethod.default_options``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sscce.methods.base import Batch, TrainingMethod
from napari_sscce.methods.losses import (
    dice_loss,
    entropy_map,
    masked_cross_entropy,
    masked_mse,
    one_hot,
    sigmoid_rampup,
)
from napari_sscce.methods.registry import register_method
from napari_sscce.methods.sdf import compute_sdf

if TYPE_CHECKING:  # pragma: no cover
    from napari_sscce.models.dual import DualModel

UGMCL_NETWORK = "dualtask_vnet"


def uncertainty_threshold(iteration: int, ramp_length: float, num_classes: int, start: float = 0.75) -> float:
    """Entropy threshold ``(start + (1 - start) * sigmoid_rampup(iteration, ramp_length)) * ln C``.

    ``0.75 ln C`` (up to the ramp's 0.0067 at ``t = 0``) rising to ``ln C`` at ``iteration >= ramp_length``.
    """
    return (start + (1.0 - start) * sigmoid_rampup(iteration, ramp_length)) * math.log(num_classes)


@torch.no_grad()
def teacher_passes(
    teacher: nn.Module,
    image: torch.Tensor,
    passes: int = 8,
    noise_std: float = 0.1,
    noise_clip: float = 0.2,
    chunk: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stochastic teacher predictions on noisy copies of ``image``.

    Parameters
    ----------
    teacher : nn.Module
        Dual-task network returning ``(logits, features, sdf)``; used in whatever mode it is in (call
        ``.train()`` first for dropout).
    image : torch.Tensor
        ``[B, Cin, Z, Y, X]``.
    passes : int
        Number of stochastic passes ``T``.
    noise_std, noise_clip : float
        Input noise ``clamp(N(0, noise_std^2), -noise_clip, noise_clip)``, drawn anew for every pass.
    chunk : int
        Passes per forward call (the batch is repeated ``chunk`` times).

    Returns
    -------
    probs_first, sdf_first, mean_probs : torch.Tensor
        Softmax ``[B, C, ...]`` and distance ``[B, C-1, ...]`` of the first pass (the consistency target), and
        the mean softmax over all passes (float32).
    """
    if passes < 1 or chunk < 1:
        raise ValueError(f"teacher passes and chunk must be >= 1, got {passes} and {chunk}")
    b = image.shape[0]
    total: torch.Tensor | None = None
    first: tuple[torch.Tensor, torch.Tensor] | None = None
    done = 0
    while done < passes:
        n = min(chunk, passes - done)
        x = image.repeat(n, 1, 1, 1, 1)
        x = x + torch.clamp(torch.randn_like(x) * noise_std, -noise_clip, noise_clip)
        logits, _, sdf = teacher(x)[:3]
        probs = F.softmax(logits.float(), dim=1)
        if first is None:
            first = (probs[:b], sdf[:b].float())
        summed = probs.reshape(n, b, *probs.shape[1:]).sum(0)
        total = summed if total is None else total + summed
        done += n
    assert total is not None and first is not None
    return first[0], first[1], total / passes


def intra_task_loss(
    probs: torch.Tensor,
    sdf: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_sdf: torch.Tensor,
    certain: torch.Tensor,
    beta: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uncertainty-masked student/teacher consistency of both tasks.

    Parameters
    ----------
    probs, sdf : torch.Tensor
        Student softmax ``[B, C, ...]`` and distance ``[B, C-1, ...]``.
    teacher_probs, teacher_sdf : torch.Tensor
        The teacher's (no gradient is sent to them).
    certain : torch.Tensor
        ``[B, ...]`` 1 on voxels whose teacher uncertainty is below the threshold, else 0.
    beta : float
        Weight of the segmentation term; the distance term gets ``1 - beta``.

    Returns
    -------
    total, seg, dis : torch.Tensor
        ``beta * seg + (1 - beta) * dis`` and the two masked MSEs (0 when no voxel is certain).
    """
    seg = masked_mse(probs, teacher_probs.detach(), certain)
    dis = masked_mse(sdf, teacher_sdf.detach(), certain)
    return beta * seg + (1.0 - beta) * dis, seg, dis


def cross_task_loss(probs: torch.Tensor, sdf: torch.Tensor, k: float = 1500.0) -> torch.Tensor:
    """``MSE(p_fg, sigmoid(-k * d))`` over all voxels: foreground probabilities vs the distance head.

    ``probs`` ``[B, C, ...]`` softmax, ``sdf`` ``[B, C-1, ...]``; channel ``c`` of ``sdf`` pairs with class
    ``c + 1``. Gradient flows into both heads.
    """
    return torch.mean((probs[:, 1:].float() - torch.sigmoid(-k * sdf.float())) ** 2)


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, decay: float, iteration: int, buffers: bool = False
) -> float:
    """``teacher = a * teacher + (1 - a) * student`` with ``a = min(1 - 1 / (iteration + 1), decay)``.

    Parameters are averaged; with ``buffers`` the floating-point buffers (BatchNorm running statistics) are
    averaged too and the others (``num_batches_tracked``) copied. Returns ``a``.
    """
    alpha = min(1.0 - 1.0 / (iteration + 1), decay)
    student = getattr(student, "module", student)  # DDP wrapper
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    if buffers:
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            if t.is_floating_point():
                t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
            else:
                t.copy_(s)
    return alpha


def _patch_sdf(label: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Distance target computed on the patches themselves (DTC's way), ``[B, C-1, Z, Y, X]``."""
    maps = [
        compute_sdf(lab, num_classes, m)
        for lab, m in zip(label.cpu().numpy(), mask.cpu().numpy(), strict=True)
    ]
    return torch.from_numpy(np.stack(maps)).to(label.device)


@register_method
class UGMCLMethod(TrainingMethod):
    """UG-MCL mean teacher with a dual-task (segmentation + signed distance) VNet; see the module docstring.

    ``config.method_options`` keys (defaults in ``default_options``):

    * ``supervised_seg`` / ``ce_weight`` / ``dice_weight``: CE + Dice on labeled voxels;
    * ``supervised_sdf`` / ``sdf_weight``: MSE of the distance head against the signed distance map;
    * ``intra`` / ``intra_weight`` / ``beta``: uncertainty-masked student/teacher consistency, weight
      ``intra_weight * sigmoid_rampup`` (0.1);
    * ``cross`` / ``cross_weight`` / ``cross_k``: cross-task consistency (0.1, k = 1500);
    * ``teacher_passes``, ``teacher_chunk``, ``noise_std``, ``noise_clip``: the uncertainty estimate;
    * ``threshold_start``: the threshold starts at ``threshold_start * ln C``;
      ``threshold_rampup``: its ramp length in iterations (None = ``config.iterations``);
    * ``ema_decay``: teacher EMA decay (0.99).
    """

    name: ClassVar[str] = "ugmcl"
    label: ClassVar[str] = "UG-MCL (mean teacher, dual task)"
    default_networks: ClassVar[tuple[str, str]] = (UGMCL_NETWORK, UGMCL_NETWORK)
    model_kind: ClassVar[str] = "mean_teacher"
    default_options: ClassVar[dict[str, Any]] = {
        "supervised_seg": True,
        "ce_weight": 0.5,
        "dice_weight": 0.5,
        "supervised_sdf": True,
        "sdf_weight": 0.3,
        "intra": True,
        "intra_weight": 0.1,
        "beta": 0.75,
        "cross": True,
        "cross_weight": 0.1,
        "cross_k": 1500.0,
        "teacher_passes": 8,
        "teacher_chunk": 2,
        "noise_std": 0.1,
        "noise_clip": 0.2,
        "threshold_start": 0.75,
        "threshold_rampup": None,
        "ema_decay": 0.99,
    }

    def __init__(self, config):
        super().__init__(config)
        nets = getattr(config, "networks", None)
        if nets and any(n != UGMCL_NETWORK for n in nets):
            raise ValueError(
                f"UG-MCL needs two {UGMCL_NETWORK!r} networks (segmentation + distance heads), "
                f"got networks={list(nets)}"
            )
        if not 0.0 <= float(self.options["beta"]) <= 1.0:
            raise ValueError(f"UG-MCL option beta must lie in [0, 1], got {self.options['beta']}")
        self._teacher_ran = False

    # ------------------------------------------------------------------ model
    @classmethod
    def accepts_networks(cls, names: tuple[str, ...]) -> bool:
        """Only dual-task VNets (segmentation + distance heads): student net_a, EMA teacher net_b."""
        return all(n == UGMCL_NETWORK for n in names)

    # ------------------------------------------------------------------ targets
    def extra_targets(
        self, label: np.ndarray, mask: np.ndarray | None, num_classes: int
    ) -> dict[str, np.ndarray]:
        """``{"sdf": compute_sdf(label, num_classes, mask)}``, ``[C-1, Z, Y, X]`` float32 (voxel units)."""
        if not self.options["supervised_sdf"]:
            return {}
        return {"sdf": compute_sdf(label, num_classes, mask)}

    def threshold(self, iteration: int, num_classes: int) -> float:
        """The uncertainty threshold at ``iteration`` (see :func:`uncertainty_threshold`)."""
        ramp = self.options["threshold_rampup"]
        if ramp is None:
            ramp = getattr(self.config, "iterations", 6000)
        start = float(self.options["threshold_start"])
        return uncertainty_threshold(iteration, float(ramp), num_classes, start)

    # ------------------------------------------------------------------ losses
    def losses(self, model: DualModel, batch: Batch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total UG-MCL loss and its logged terms (see the module docstring)."""
        opt = self.options
        lb = batch.labeled_bs
        logits, _, sdf = model.net_a(batch.image)[:3]
        num_classes = logits.shape[1]
        probs = F.softmax(logits.float(), dim=1)
        sdf = sdf.float()
        total = logits.sum() * 0.0
        terms: dict[str, torch.Tensor] = {}  # logged values, read back with one device sync at the end
        logs: dict[str, float] = {}

        if opt["supervised_seg"]:
            label, mask = batch.label[:lb], batch.mask[:lb]
            ce = masked_cross_entropy(logits[:lb], label, mask)
            dice = dice_loss(probs[:lb], one_hot(label, num_classes), mask)
            total = total + opt["ce_weight"] * ce + opt["dice_weight"] * dice
            terms.update(loss_ce=ce, loss_dice=dice)

        if opt["supervised_sdf"]:
            target = batch.extras.get("sdf")
            if target is None:
                target = _patch_sdf(batch.label[:lb], batch.mask[:lb], num_classes)
            loss_sdf = masked_mse(sdf[:lb], target[:lb].to(sdf.device), batch.mask[:lb])
            total = total + opt["sdf_weight"] * loss_sdf
            terms["loss_sdf"] = loss_sdf

        weight = self.rampup_weight(iteration, 1.0)
        logs["consistency_ramp"] = weight

        self._teacher_ran = False
        if opt["intra"]:
            teacher = model.net_b
            teacher.train()
            t_probs, t_sdf, mean_probs = teacher_passes(
                teacher,
                batch.image,
                int(opt["teacher_passes"]),
                float(opt["noise_std"]),
                float(opt["noise_clip"]),
                int(opt["teacher_chunk"]),
            )
            self._teacher_ran = True
            uncertainty = entropy_map(mean_probs)
            threshold = self.threshold(iteration, num_classes)
            certain = (uncertainty < threshold).float()
            intra, intra_seg, intra_dis = intra_task_loss(
                probs, sdf, t_probs, t_sdf, certain, float(opt["beta"])
            )
            total = total + opt["intra_weight"] * weight * intra
            terms.update(
                loss_intra=intra,
                loss_intra_seg=intra_seg,
                loss_intra_dis=intra_dis,
                certain_fraction=certain.mean(),
            )
            logs["uncertainty_threshold"] = threshold

        if opt["cross"]:
            cross = cross_task_loss(probs, sdf, float(opt["cross_k"]))
            total = total + opt["cross_weight"] * weight * cross
            terms["loss_cross"] = cross

        terms["loss"] = total
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()]).tolist()
        logs.update(zip(terms, values, strict=True))
        return total, logs

    def after_step(self, model: DualModel, iteration: int) -> None:
        """EMA of the student into the teacher (BatchNorm statistics too when the teacher did not run)."""
        decay = float(self.options["ema_decay"])
        ema_update(model.net_b, model.net_a, decay, iteration, buffers=not self._teacher_ran)
        super().after_step(model, iteration)
