"""Voxel uncertainty maps of a two-network prediction and what to correct next.

Two maps describe how much to trust a segmentation:

- :func:`entropy` of the (mean) class distribution: high where the prediction is ambiguous;
- :func:`kl_divergence` between the two networks' distributions: high where they disagree.

Both are mapped to [0, 1] so that one colour map and one threshold fit every volume. Numpy versions work on
arrays of any layout (``axis`` is the class axis); the torch twins (:func:`entropy_torch`,
:func:`kl_divergence_torch`) are for the inference engine and keep memory low (float32, in-place steps).
:func:`rank_regions` turns the maps into a ranked list of connected uncertain regions, :func:`volume_score`
gives one active-learning score per volume.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "entropy",
    "entropy_torch",
    "kl_divergence",
    "kl_divergence_torch",
]

EPS = 1e-8


# ----------------------------------------------------------------------------------------------- numpy maps
def entropy(prob: np.ndarray, axis: int = 0, normalize: bool = True, eps: float = EPS) -> np.ndarray:
    """Voxel entropy ``-sum_c p_c log p_c`` of a probability map.

    Parameters
    ----------
    prob : ndarray
        Class probabilities (summing to 1 along ``axis``), e.g. ``[C, Z, Y, X]``. Never logits.
    axis : int
        Class axis.
    normalize : bool
        Divide by ``ln C`` so the result lies in [0, 1] (0 = one-hot, 1 = uniform). Otherwise nats.
    eps : float
        Probabilities are clamped to at least ``eps`` inside the logarithm (``0 log 0`` counts as 0).

    Returns
    -------
    ndarray
        float32 map with ``axis`` removed.
    """
    p = np.asarray(prob, dtype=np.float32)
    num_classes = p.shape[axis]
    log_p = np.log(np.maximum(p, np.float32(eps)))
    log_p *= p
    h = -log_p.sum(axis=axis, dtype=np.float32)
    if normalize:
        h /= np.float32(math.log(num_classes)) if num_classes > 1 else np.float32(1.0)
        np.clip(h, 0.0, 1.0, out=h)
    else:
        np.maximum(h, 0.0, out=h)
    return h


def kl_divergence(
    p: np.ndarray,
    q: np.ndarray,
    axis: int = 0,
    symmetric: bool = True,
    normalize: bool = True,
    eps: float = EPS,
) -> np.ndarray:
    """Voxel Kullback-Leibler divergence between two networks' class distributions.

    ``KL(p||q) = sum_c p_c (log p_c - log q_c)`` in nats. With ``symmetric`` the result is
    ``0.5 (KL(p||q) + KL(q||p)) = 0.5 sum_c (p_c - q_c)(log p_c - log q_c)`` so that neither network is the
    reference.

    With ``normalize`` the nats value is mapped to ``1 - exp(-kl)``, which lies in [0, 1): it is bounded (KL
    itself is unbounded, so a raw map has no fixed colour range or threshold), monotone (ranks voxels exactly
    as the raw KL does) and 0 where the networks agree. It is also ``1 -`` the weight ``exp(-KL)`` the CCE
    method gives a pseudo-label at that voxel, so a normalised KL of 0.3 means the voxel counted 70 % in
    training. Use ``normalize=False`` for nats.

    Parameters
    ----------
    p, q : ndarray
        Probability maps of the same shape (e.g. ``[C, Z, Y, X]``).
    axis : int
        Class axis.
    symmetric : bool
        Average of both directions (default) or only ``KL(p||q)``.
    normalize : bool
        Map to [0, 1) with ``1 - exp(-kl)``.
    eps : float
        Clamp inside the logarithms.

    Returns
    -------
    ndarray
        float32 map with ``axis`` removed, >= 0.
    """
    p = np.asarray(p, dtype=np.float32)
    q = np.asarray(q, dtype=np.float32)
    if p.shape != q.shape:
        raise ValueError(f"kl_divergence: p and q differ in shape: {p.shape} vs {q.shape}")
    log_ratio = np.log(np.maximum(p, np.float32(eps)))
    log_ratio -= np.log(np.maximum(q, np.float32(eps)))
    if symmetric:
        log_ratio *= p - q
        kl = log_ratio.sum(axis=axis, dtype=np.float32)
        kl *= np.float32(0.5)
    else:
        log_ratio *= p
        kl = log_ratio.sum(axis=axis, dtype=np.float32)
    np.maximum(kl, 0.0, out=kl)  # rounding (and eps) can give tiny negatives
    if normalize:
        np.negative(kl, out=kl)
        np.exp(kl, out=kl)
        np.subtract(np.float32(1.0), kl, out=kl)
    return kl


# ----------------------------------------------------------------------------------------------- torch twins
def entropy_torch(prob: torch.Tensor, dim: int = 0, normalize: bool = True, eps: float = EPS) -> torch.Tensor:
    """Torch twin of :func:`entropy` (same definition and scaling), computed in float32.

    Parameters
    ----------
    prob : Tensor
        Class probabilities with class dimension ``dim`` (``[C, Z, Y, X]``, or ``[B, C, Z, Y, X]`` and dim=1).
    dim : int
        Class dimension.
    normalize : bool
        Divide by ``ln C`` and clamp to [0, 1].
    eps : float
        Clamp inside the logarithm.

    Returns
    -------
    Tensor
        float32 tensor with ``dim`` removed, on the input's device.
    """
    p = prob.float()
    num_classes = p.shape[dim]
    h = p.clamp_min(eps).log_().mul_(p).sum(dim=dim).neg_()
    if normalize:
        if num_classes > 1:
            h.div_(math.log(num_classes))
        return h.clamp_(0.0, 1.0)
    return h.clamp_min_(0.0)


def kl_divergence_torch(
    p: torch.Tensor,
    q: torch.Tensor,
    dim: int = 0,
    symmetric: bool = True,
    normalize: bool = True,
    eps: float = EPS,
) -> torch.Tensor:
    """Torch twin of :func:`kl_divergence` (same definition and scaling), computed in float32.

    Parameters
    ----------
    p, q : Tensor
        Probability tensors of the same shape; class dimension ``dim``.
    dim : int
        Class dimension.
    symmetric : bool
        ``0.5 (KL(p||q) + KL(q||p))`` (default) or ``KL(p||q)``.
    normalize : bool
        Map nats to [0, 1) with ``1 - exp(-kl)``.
    eps : float
        Clamp inside the logarithms.

    Returns
    -------
    Tensor
        float32 tensor with ``dim`` removed, >= 0.
    """
    if p.shape != q.shape:
        raise ValueError(
            f"kl_divergence_torch: p and q differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}"
        )
    p = p.float()
    q = q.float()
    log_ratio = p.clamp_min(eps).log_().sub_(q.clamp_min(eps).log_())
    if symmetric:
        kl = log_ratio.mul_(p - q).sum(dim=dim).mul_(0.5)
    else:
        kl = log_ratio.mul_(p).sum(dim=dim)
    kl.clamp_min_(0.0)
    if normalize:
        kl = kl.neg_().exp_().neg_().add_(1.0)
    return kl
