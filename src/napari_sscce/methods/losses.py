"""Loss pieces shared by the training methods (computed in float32 even under autocast)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from napari_sscce.divergence import entropy, kl

EPS = 1e-5


def sigmoid_rampup(t: float, length: float) -> float:
    """``exp(-5 (1 - clip(t, 0, L) / L)^2)``: 0.0067 at ``t = 0``, 1 from ``t = L`` on (UA-MT ``ramps.py``).

    A non-positive ``length`` means no ramp (always 1).
    """
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(t), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * phase * phase))


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, Z, Y, X]`` integer labels -> ``[B, C, Z, Y, X]`` float one-hot."""
    return F.one_hot(label.long(), num_classes).movedim(-1, 1).float()


def dice_loss(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    mask: torch.Tensor | None = None,
    include_background: bool = False,
) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum p y + e) / (sum p^2 + sum y^2 + e)``, averaged over classes.

    Parameters
    ----------
    probs : torch.Tensor
        ``[B, C, Z, Y, X]`` softmax probabilities.
    onehot : torch.Tensor
        ``[B, C, Z, Y, X]`` one-hot target.
    mask : torch.Tensor, optional
        ``[B, Z, Y, X]`` voxel weights (1 = counted); voxels with 0 do not enter the sums.
    include_background : bool
        Average over all classes (SSL4MIS ``DiceLoss``) instead of the foreground classes only
        (default: for binary tasks this is exactly UA-MT's ``dice_loss(p[:, 1], y == 1)``).

    Notes
    -----
    Sums run over the whole batch and all voxels, as the reference (one Dice per class per batch);
    ``e = 1e-5``.
    """
    probs = probs.float()
    onehot = onehot.float()
    if mask is not None:
        m = mask.float().unsqueeze(1)
        probs = probs * m
        onehot = onehot * m
    start = 0 if include_background or probs.shape[1] == 1 else 1
    dims = (0, 2, 3, 4)
    p, y = probs[:, start:], onehot[:, start:]
    intersect = (p * y).sum(dims)
    denom = (p * p).sum(dims) + (y * y).sum(dims)
    return (1.0 - (2.0 * intersect + EPS) / (denom + EPS)).mean()


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Voxel-wise cross-entropy, weighted and averaged.

    Parameters
    ----------
    logits : torch.Tensor
        ``[B, C, Z, Y, X]``.
    target : torch.Tensor
        ``[B, Z, Y, X]`` class indices.
    weight : torch.Tensor, optional
        ``[B, Z, Y, X]`` voxel weights (a 0/1 mask, or a mask times ``exp(-KL)``). None = all ones.
    denominator : tensor or float, optional
        What the weighted sum is divided by; default ``weight.sum()`` (the weighted mean). Pass the
        number of masked voxels to keep soft weights absolute (e.g. the KL weighting of CCE).
        The result is 0 (with a graph) when the denominator is 0.
    """
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight is None:
        return ce.mean()
    weight = weight.float()
    den = weight.sum() if denominator is None else denominator
    if not torch.is_tensor(den):
        den = torch.tensor(float(den), device=ce.device)
    return (ce * weight).sum() / den.clamp_min(1e-6)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` (``[B, Z, Y, X]``, over channels) is 1."""
    diff = (a.float() - b.float()) ** 2
    if mask is None:
        return diff.mean()
    m = mask.float()
    while m.dim() < diff.dim():
        m = m.unsqueeze(1)
    m = m.expand_as(diff)
    return (diff * m).sum() / m.sum().clamp_min(1e-6)


#: voxel entropy of ``[B, C, ...]`` probabilities -> ``[B, ...]`` (:func:`napari_sscce.divergence.entropy`,
#: the function the inference maps use too)
entropy_map = entropy
#: voxel ``KL(p||q)`` of ``[B, C, ...]`` probabilities -> ``[B, ...]`` (:func:`napari_sscce.divergence.kl`)
kl_map = kl


def supervised_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor | None = None,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
) -> torch.Tensor:
    """``ce_weight * CE + dice_weight * Dice`` on the voxels where ``mask`` is 1.

    The 0.5 / 0.5 default is SSL4MIS's 3D cross pseudo supervision (``train_cross_pseudo_supervision_3D``).
    A fully masked-out batch gives 0 (with a graph).
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = one_hot(label, logits.shape[1])
    ce = masked_cross_entropy(logits, label, weight=mask)
    dice = dice_loss(probs, onehot, mask=mask)
    return ce_weight * ce + dice_weight * dice
