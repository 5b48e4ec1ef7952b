"""Voxel uncertainty maps of a two-network prediction, and the expected error they imply.

- :func:`entropy` of the (mean) class distribution: high where the prediction is ambiguous;
- :func:`kl_divergence` between the two networks' distributions: high where they disagree.

Both are mapped to [0, 1] so that one colour map and one threshold fit every volume. Numpy versions work on
arrays of any layout (``axis`` is the class axis); for tensors, :data:`entropy_torch` and
:data:`kl_divergence_torch` are the training losses' functions (:mod:`napari_sscce.divergence`) with these
maps' defaults (class dimension 0, normalised, symmetric KL). :func:`error_probability` reads a map value as
the chance that the voxel is wrong; every ranking sums it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import ndimage

from napari_sscce import divergence

EPS = divergence.EPS
#: dilation (voxels) of the predicted foreground that bounds "near the object"
FOREGROUND_MARGIN = 3


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
        Probabilities are clamped to at least ``eps`` (``0 log 0`` counts as 0).

    Returns
    -------
    ndarray
        float32 map with ``axis`` removed.
    """
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))
    with torch.inference_mode():
        return divergence.entropy(p, dim=axis, normalize=normalize, eps=eps).numpy()


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
    p_t = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
    q_t = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    if p_t.shape != q_t.shape:
        raise ValueError(f"kl_divergence: p and q differ in shape: {tuple(p_t.shape)} vs {tuple(q_t.shape)}")
    with torch.inference_mode():
        return divergence.kl(p_t, q_t, dim=axis, symmetric=symmetric, normalize=normalize, eps=eps).numpy()


# ----------------------------------------------------------------------------------------------- torch
#: :func:`napari_sscce.divergence.entropy` (the one used by the losses) with the map defaults:
#: class dimension 0, normalised to [0, 1]
entropy_torch = functools.partial(divergence.entropy, dim=0, normalize=True)
#: :func:`napari_sscce.divergence.kl` (the one used by the losses) with the map defaults:
#: class dimension 0, symmetric, normalised to [0, 1)
kl_divergence_torch = functools.partial(divergence.kl, dim=0, symmetric=True, normalize=True)



def combined_uncertainty(entropy: np.ndarray, kl: np.ndarray | None = None) -> np.ndarray:
    """Voxel uncertainty ``u = max(entropy, kl)`` of two [0, 1] maps (just the entropy when kl is None).

    The maximum keeps both kinds of doubt: an ambiguous mean prediction (entropy) and a confident
    disagreement between the two networks (KL), which the mean alone can hide.
    """
    h = np.asarray(entropy, dtype=np.float32)
    if kl is None:
        return h
    k = np.asarray(kl, dtype=np.float32)
    if k.shape != h.shape:
        raise ValueError(f"entropy map shape {h.shape} differs from KL map shape {k.shape}")
    return np.maximum(h, k)


_P_GRID = np.linspace(0.0, 0.5, 2049)
_H_GRID = np.concatenate(
    [[0.0], -(_P_GRID[1:] * np.log(_P_GRID[1:]) + (1 - _P_GRID[1:]) * np.log(1 - _P_GRID[1:])) / math.log(2)]
)


def binary_reading(entropy: np.ndarray, num_classes: int | None) -> np.ndarray:
    """A ``C``-class normalised entropy (``H / ln C``) re-read as a binary one (``H / ln 2``, clipped to 1).

    :func:`error_probability` reads its input as a normalised binary entropy: exact where two classes
    compete, which is where the errors are. The entropy map of a model with ``C > 2`` classes is divided by
    ``ln C``, so a boundary voxel at p = 0.7 / 0.3 between two classes shows 0.56 instead of 0.88 and would
    be read as 13 % likely wrong instead of 30 %. Measured on the hippocampus model's 30 unseen scans
    (benchmarks/results/ranking_hippocampus.md): without this reading voxels put at 10-20 % were wrong 32 % of
    the time, with it 12 %. ``num_classes`` None or <= 2 returns ``entropy`` unchanged.
    """
    h = np.asarray(entropy, dtype=np.float32)
    if num_classes is None or int(num_classes) <= 2:
        return h
    return np.minimum(h * np.float32(math.log(int(num_classes)) / math.log(2)), np.float32(1.0))


def error_probability(u: np.ndarray) -> np.ndarray:
    """The probability of being wrong that an uncertainty value in [0, 1] implies, in [0, 0.5].

    ``u`` is read as a normalised binary entropy ``H(e) / ln 2`` and inverted: ``e`` with ``e <= 0.5``. A
    boundary voxel at p = 0.7 has entropy 0.88 but is wrong 30 % of the time (calibrated), one at p = 0.55
    has entropy 0.99 and is wrong 45 % of the time: summing entropies would count the first almost as much
    as the second, summing ``e`` counts the expected wrong voxels. Monotone, so it never reorders voxels;
    near a boundary between two labels (where the errors are) the binary reading is exact for the mean
    prediction's two leading classes.

    Parameters
    ----------
    u : ndarray
        Values in [0, 1] (clipped).

    Returns
    -------
    ndarray
        float32, same shape.
    """
    v = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return np.interp(v, _H_GRID, _P_GRID).astype(np.float32)


def dilated_foreground(labels: np.ndarray, margin: int = FOREGROUND_MARGIN) -> np.ndarray:
    """Boolean mask of ``labels > 0`` grown by ``margin`` voxels (26-connectivity), within its bounding box.

    Parameters
    ----------
    labels : ndarray
        Label map (0 = background).
    margin : int
        Number of dilation steps.

    Returns
    -------
    ndarray
        bool, same shape; all False when there is no foreground.
    """
    fg = np.asarray(labels) > 0
    out = np.zeros(fg.shape, dtype=bool)
    if not fg.any() or margin <= 0:
        return fg
    coords = np.nonzero(fg)
    box = tuple(
        slice(max(int(c.min()) - margin, 0), min(int(c.max()) + margin + 1, n))
        for c, n in zip(coords, fg.shape, strict=True)
    )
    structure = np.ones((3,) * fg.ndim, dtype=bool)
    out[box] = ndimage.binary_dilation(fg[box], structure=structure, iterations=margin)
    return out


