"""Voxel entropy and Kullback-Leibler divergence of class probabilities: the one torch implementation.

The training losses (``methods/losses.py``: CCE's entropy filter, pseudo-label weights and KL
regulariser, UG-MCL's uncertainty) and the inference engine (``inference/predict.py``: the entropy and
KL maps shown to the user, via :func:`napari_sscce.uncertainty.entropy_torch` and
:func:`~napari_sscce.uncertainty.kl_divergence_torch`) call these two functions. They are differentiable;
when no gradient is needed (inference under ``torch.inference_mode``, detached training targets) the same
formula runs with in-place steps, which saves two volume-sized temporaries and gives bit-identical values.

The NumPy versions for arrays (:func:`napari_sscce.uncertainty.entropy`,
:func:`~napari_sscce.uncertainty.kl_divergence`) call these on a tensor view of the array.

References
----------
Shannon entropy of the softmax as voxel uncertainty: Yu et al., "Uncertainty-aware self-ensembling model
for semi-supervised 3D left atrium segmentation", MICCAI 2019, arXiv:1907.07034. KL between two networks'
predictions as a disagreement measure: Zheng & Yang, "Rectifying pseudo label learning via uncertainty
estimation for domain adaptive semantic segmentation", IJCV 2021, arXiv:2003.03773.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EPS", "entropy", "kl"]

#: probabilities are clamped to at least this inside the logarithms (and in the products)
EPS = 1e-8


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def entropy(prob: torch.Tensor, dim: int = 1, normalize: bool = False, eps: float = EPS) -> torch.Tensor:
    """Voxel entropy ``-sum_c p_c log p_c`` (nats), computed in float32 on ``p = max(prob, eps)``.

    Parameters
    ----------
    prob : Tensor
        Class probabilities (never logits) with class dimension ``dim``: ``[B, C, ...]`` (training,
        ``dim=1``) or ``[C, Z, Y, X]`` (inference, ``dim=0``). Not modified.
    dim : int
        Class dimension.
    normalize : bool
        Divide by ``ln C`` and clamp to [0, 1] (0 = one-hot, 1 = uniform).
    eps : float
        Lower clamp of the probabilities.

    Returns
    -------
    Tensor
        float32, ``dim`` removed; differentiable when ``prob`` requires a gradient.
    """
    num_classes = prob.shape[dim]
    p = prob.float().clamp_min(eps)
    if _needs_grad(p):
        h = -(p * p.log()).sum(dim)
    else:
        h = p.log().mul_(p).sum(dim).neg_()
    if normalize:
        h = (h / math.log(num_classes) if num_classes > 1 else h).clamp(0.0, 1.0)
    return h


def kl(
    p: torch.Tensor,
    q: torch.Tensor,
    dim: int = 1,
    symmetric: bool = False,
    normalize: bool = False,
    eps: float = EPS,
) -> torch.Tensor:
    """Voxel KL divergence ``KL(p||q) = sum_c p_c (log p_c - log q_c)`` (nats), float32, on clamped p, q.

    Parameters
    ----------
    p, q : Tensor
        Probability tensors of the same shape, class dimension ``dim``. Not modified.
    dim : int
        Class dimension.
    symmetric : bool
        ``0.5 (KL(p||q) + KL(q||p))`` (neither distribution is the reference) instead of ``KL(p||q)``.
    normalize : bool
        Clamp rounding negatives to 0 and map to [0, 1) with ``1 - exp(-kl)`` (bounded, monotone, 0 where
        the two agree; ``1 -`` the CCE pseudo-label weight ``exp(-KL)``).
    eps : float
        Lower clamp of the probabilities.

    Returns
    -------
    Tensor
        float32, ``dim`` removed; differentiable when ``p`` or ``q`` requires a gradient.
    """
    if p.shape != q.shape:
        raise ValueError(f"kl: p and q differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    p = p.float().clamp_min(eps)
    q = q.float().clamp_min(eps)
    if _needs_grad(p, q):
        k = (p * (p.log() - q.log())).sum(dim)
        if symmetric:
            k = 0.5 * (k + (q * (q.log() - p.log())).sum(dim))
    else:  # same values, fewer temporaries: q (log q - log p) = -(q (log p - log q)) exactly
        d = p.log().sub_(q.log())
        k = (p * d).sum(dim)
        if symmetric:
            k = k.sub_(d.mul_(q).sum(dim)).mul_(0.5)
    if normalize:
        k = 1.0 - torch.exp(-k.clamp_min(0.0))
    return k
