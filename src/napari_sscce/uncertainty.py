"""Voxel uncertainty maps of a two-network prediction and what to correct next.

Two maps describe how much to trust a segmentation:

- :func:`entropy` of the (mean) class distribution: high where the prediction is ambiguous;
- :func:`kl_divergence` between the two networks' distributions: high where they disagree.

Both are mapped to [0, 1] so that one colour map and one threshold fit every volume. Numpy versions work on
arrays of any layout (``axis`` is the class axis); for tensors, :data:`entropy_torch` and
:data:`kl_divergence_torch` are the training losses' functions (:mod:`napari_sscce.divergence`) with these
maps' defaults (class dimension 0, normalised, symmetric KL).
:func:`rank_regions` turns the maps into a ranked list of uncertain regions and :func:`rank_slices` into a
ranked list of slices, both ordered by the error they are expected to hold (the sum of the map over them);
:func:`volume_score` gives one active-learning score per volume.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_sscce import divergence

__all__ = [
    "entropy",
    "entropy_torch",
    "error_probability",
    "kl_divergence",
    "kl_divergence_torch",
    "Region",
    "adaptive_threshold",
    "combined_uncertainty",
    "dilated_foreground",
    "label_regions",
    "SliceScore",
    "rank_regions",
    "rank_slices",
    "split_large_components",
    "volume_score",
]

EPS = divergence.EPS


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


# ----------------------------------------------------------------------------------------------- regions
DEFAULT_MIN_THRESHOLD = 0.5
DEFAULT_PERCENTILE = 95.0
FOREGROUND_MARGIN = 3
#: longest side (voxels) of a ranked region; longer uncertain components are cut on a cube grid
DEFAULT_MAX_EXTENT = 24
#: default region threshold on u (benchmarks/results/uncertainty.md: on 30 held-out hippocampus cases
#: the top-3 regions at 0.5 with 24-voxel pieces hold 68 % of the wrong voxels while covering 16 % of the
#: band around the structure; the adaptive 95th-percentile threshold gave 20-23 %)
DEFAULT_THRESHOLD = 0.5


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


def adaptive_threshold(u: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Default region threshold: ``max(0.5, 95th percentile of u inside the dilated foreground)``.

    The percentile adapts to how confident the model is on this volume, so only its ~5 % most uncertain
    voxels near the structure form regions; the floor 0.5 keeps a confident volume from producing regions
    out of noise. Without labels or foreground the percentile is taken over the whole volume.
    """
    region = dilated_foreground(labels) if labels is not None else None
    values = u[region] if region is not None and region.any() else u.ravel()
    if values.size == 0:
        return DEFAULT_MIN_THRESHOLD
    return float(max(DEFAULT_MIN_THRESHOLD, np.percentile(values, DEFAULT_PERCENTILE)))


def split_large_components(components: np.ndarray, n: int, max_extent: int) -> tuple[np.ndarray, int]:
    """Cut every component whose bounding box is longer than ``max_extent`` along an axis on a cube grid.

    The grid (cubes of ``max_extent`` voxels, anchored at the component's bounding-box corner) turns a
    long shell of uncertainty into pieces one can view and rank separately; smaller components are kept
    whole. Labels are renumbered 1..n' in order of (component, cube).

    Parameters
    ----------
    components : ndarray
        Integer label image (0 = none), e.g. from ``scipy.ndimage.label``.
    n : int
        Number of components.
    max_extent : int
        Cube side in voxels (>= 1).

    Returns
    -------
    components : ndarray
        int32 label image of the pieces.
    n : int
        Number of pieces.
    """
    if n == 0 or max_extent < 1:
        return components, n
    objects = ndimage.find_objects(components)
    big = [i + 1 for i, sl in enumerate(objects) if sl and max(s.stop - s.start for s in sl) > max_extent]
    if not big:
        return components, n
    mask = components > 0
    comp = components[mask].astype(np.int64)
    coords = np.nonzero(mask)
    key = comp * 0
    is_big = np.zeros(n + 1, dtype=bool)
    is_big[big] = True
    sel = is_big[comp]
    starts = np.zeros((n + 1, components.ndim), dtype=np.int64)
    for cid in big:
        starts[cid] = [s.start for s in objects[cid - 1]]
    # cube index inside the component's bounding box, mixed radix with a generous base
    base = int(max(components.shape) // max_extent + 2)
    for axis, c in enumerate(coords):
        cube = (c[sel] - starts[comp[sel], axis]) // max_extent
        key[sel] = key[sel] * base + cube
    combined = comp * base ** components.ndim + key
    _, new_ids = np.unique(combined, return_inverse=True)
    out = np.zeros(components.shape, dtype=np.int32)
    out[mask] = new_ids.reshape(-1).astype(np.int32) + 1
    return out, int(new_ids.max()) + 1


@dataclass
class Region:
    """One connected region of high uncertainty.

    Attributes
    ----------
    id : int
        Rank (1 = look here first); also the region's value in :func:`label_regions`' label image.
    centroid : tuple of float
        Centre (z, y, x) in voxels.
    bbox : tuple of int
        ``(z0, y0, x0, z1, y1, x1)``, stops exclusive.
    size_voxels : int
        Number of voxels.
    volume_mm3 : float
        ``size_voxels * prod(spacing)``.
    mean_entropy, mean_kl, mean_uncertainty : float
        Mean of each map over the region (``mean_kl`` is 0 without a KL map).
    classes : tuple of int
        Label values inside the region or touching it (26-neighbourhood), background 0 included.
    score : float
        Expected error held by the region: the number of wrong voxels it is expected to hold, the sum
        over its voxels of :func:`error_probability` of ``u``. The region where a correction fixes most
        comes first (neither the largest faint region nor the smallest very uncertain one by
        construction).
    """

    id: int
    centroid: tuple[float, float, float]
    bbox: tuple[int, ...]
    size_voxels: int
    volume_mm3: float
    mean_entropy: float
    mean_kl: float
    mean_uncertainty: float
    classes: tuple[int, ...] = field(default_factory=tuple)
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return asdict(self)


def label_regions(
    entropy: np.ndarray,
    kl: np.ndarray | None,
    labels: np.ndarray | None = None,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    threshold: float | str | None = None,
    min_size: int = 10,
    max_regions: int | None = None,
    max_extent: int | None = DEFAULT_MAX_EXTENT,
) -> tuple[np.ndarray, list[Region]]:
    """Like :func:`rank_regions`, also returning a label image of the kept regions (value = rank id).

    Returns
    -------
    label_image : ndarray
        int32, 0 outside the regions, ``region.id`` inside.
    regions : list of Region
        Sorted by score, descending.
    """
    u = combined_uncertainty(entropy, kl)
    h = np.asarray(entropy, dtype=np.float32)
    k = None if kl is None else np.asarray(kl, dtype=np.float32)
    lab_map = None if labels is None else np.asarray(labels)
    if lab_map is not None and lab_map.shape != u.shape:
        raise ValueError(f"label map shape {lab_map.shape} differs from uncertainty map shape {u.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (u.ndim,):
        raise ValueError(f"spacing must have {u.ndim} values, got {spacing!r}")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    elif threshold == "adaptive":
        threshold = adaptive_threshold(u, lab_map)
    mask = u >= threshold
    components, n = ndimage.label(mask, structure=np.ones((3,) * u.ndim, dtype=bool))
    if n == 0:
        return np.zeros(u.shape, np.int32), []
    if max_extent:
        components, n = split_large_components(components, n, int(max_extent))
        mask = components > 0

    comp = components[mask]  # component id of every uncertain voxel (only these are visited)
    size = np.bincount(comp, minlength=n + 1).astype(np.int64)
    sum_h = np.bincount(comp, weights=h[mask], minlength=n + 1)
    sum_k = np.bincount(comp, weights=k[mask], minlength=n + 1) if k is not None else np.zeros(n + 1)
    sum_u = np.bincount(comp, weights=u[mask], minlength=n + 1)
    sum_e = np.bincount(comp, weights=error_probability(u[mask]), minlength=n + 1)
    coords = np.nonzero(mask)
    sum_c = [np.bincount(comp, weights=c, minlength=n + 1) for c in coords]
    slices = ndimage.find_objects(components)

    kept: list[tuple[float, int]] = []
    for cid in range(1, n + 1):
        if size[cid] >= max(int(min_size), 1):
            kept.append((float(sum_e[cid]), cid))
    kept.sort(key=lambda t: (-t[0], t[1]))
    if max_regions is not None:
        kept = kept[: max(int(max_regions), 0)]

    voxel_mm3 = float(np.prod(spacing_arr))
    structure = np.ones((3,) * u.ndim, dtype=bool)
    label_image = np.zeros(u.shape, np.int32)
    regions: list[Region] = []
    for rank, (score, cid) in enumerate(kept, start=1):
        sl = slices[cid - 1]
        label_image[sl][components[sl] == cid] = rank
        classes: tuple[int, ...] = ()
        if lab_map is not None:
            grown = tuple(
                slice(max(s.start - 1, 0), min(s.stop + 1, dim)) for s, dim in zip(sl, u.shape, strict=True)
            )
            touch = ndimage.binary_dilation(components[grown] == cid, structure=structure)
            classes = tuple(int(v) for v in np.unique(lab_map[grown][touch]))
        n_vox = int(size[cid])
        regions.append(
            Region(
                id=rank,
                centroid=tuple(float(s[cid] / n_vox) for s in sum_c),  # type: ignore[arg-type]
                bbox=tuple(int(s.start) for s in sl) + tuple(int(s.stop) for s in sl),
                size_voxels=n_vox,
                volume_mm3=n_vox * voxel_mm3,
                mean_entropy=float(sum_h[cid] / n_vox),
                mean_kl=float(sum_k[cid] / n_vox),
                mean_uncertainty=float(sum_u[cid] / n_vox),
                classes=classes,
                score=score,
            )
        )
    return label_image, regions


def rank_regions(
    entropy: np.ndarray,
    kl: np.ndarray | None,
    labels: np.ndarray | None = None,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    threshold: float | str | None = None,
    min_size: int = 10,
    max_regions: int | None = None,
    max_extent: int | None = DEFAULT_MAX_EXTENT,
) -> list[Region]:
    """Connected regions of high uncertainty, most worth correcting first.

    Voxels with ``u = max(entropy, kl) >= threshold`` are grouped into 26-connected components
    (``scipy.ndimage.label``). Uncertainty lines the whole boundary of a structure, so one component is
    often a shell around all of it; a component longer than ``max_extent`` voxels along any axis is cut
    by a grid of ``max_extent``-voxel cubes (:func:`split_large_components`) so that every region is a
    place one can look at. Regions smaller than ``min_size`` voxels are dropped; the rest are sorted by the
    number of wrong voxels they are expected to hold, ``score`` = sum of :func:`error_probability` of ``u``
    over the region (see :class:`Region`).

    Parameters
    ----------
    entropy : ndarray
        Normalised entropy in [0, 1], (z, y, x).
    kl : ndarray or None
        Normalised KL in [0, 1], same shape (None: entropy only).
    labels : ndarray, optional
        Predicted label map; used for the adaptive threshold and :attr:`Region.classes`.
    spacing : tuple of float
        Voxel size (z, y, x) in millimetres, for :attr:`Region.volume_mm3`.
    threshold : float or "adaptive", optional
        Uncertainty threshold. Default :data:`DEFAULT_THRESHOLD` (0.5: a voxel whose normalised uncertainty
        implies at least an 11 % chance of being wrong). ``"adaptive"``: :func:`adaptive_threshold`,
        ``max(0.5, 95th percentile of u inside the foreground dilated by 3 voxels)``, which keeps only the
        most uncertain 5 % and measured too narrow (benchmarks/results/uncertainty.md).
    min_size : int
        Smallest region kept, in voxels.
    max_regions : int, optional
        Keep only the best ones.
    max_extent : int, optional
        Longest side, in voxels, of a region (default 24); larger components are split on a cube grid.
        None or 0: no splitting.

    Returns
    -------
    list of Region
        Sorted by score, descending; ``id`` is the rank starting at 1.
    """
    return label_regions(entropy, kl, labels, spacing, threshold, min_size, max_regions, max_extent)[1]


def volume_score(
    entropy: np.ndarray,
    kl: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    margin: int = FOREGROUND_MARGIN,
) -> float:
    """Active-learning score of a whole volume: higher = more informative to correct next.

    The score is the mean of ``u = max(entropy, kl)`` over the predicted foreground dilated by ``margin``
    voxels, i.e. the structure and its boundary band, where the errors are. Averaging there, not over the
    whole volume, keeps large confident background from diluting the score (a small organ in a big scan
    would otherwise always look certain). Without labels, or when nothing is predicted, the mean over the
    whole volume is used.

    Parameters
    ----------
    entropy : ndarray
        Normalised entropy in [0, 1].
    kl : ndarray, optional
        Normalised KL in [0, 1].
    labels : ndarray, optional
        Predicted label map.
    margin : int
        Dilation of the foreground, in voxels.

    Returns
    -------
    float
        In [0, 1].
    """
    u = combined_uncertainty(entropy, kl)
    if u.size == 0:
        return 0.0
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != u.shape:
            raise ValueError(f"label map shape {lab.shape} differs from uncertainty map shape {u.shape}")
        region = dilated_foreground(lab, margin)
        if region.any():
            return float(u[region].mean(dtype=np.float64))
    return float(u.mean(dtype=np.float64))


@dataclass
class SliceScore:
    """The expected error in one slice.

    Attributes
    ----------
    index : int
        Slice index along ``axis``.
    axis : int
        Array axis the slice is orthogonal to (0 = z: the slices napari shows by default).
    score : float
        Expected number of wrong voxels: the sum of :func:`error_probability` of ``u`` over the slice.
    mean_uncertainty : float
        Mean of ``u`` over the slice's uncertain part (``u >= 0.1``; 0 if none).
    foreground_voxels : int
        Predicted foreground voxels in the slice (0 without labels).
    """

    index: int
    axis: int
    score: float
    mean_uncertainty: float
    foreground_voxels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return asdict(self)


def rank_slices(
    entropy: np.ndarray,
    kl: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    axis: int = 0,
    top: int | None = None,
) -> list[SliceScore]:
    """Slices ranked by the error they are expected to hold: the next ones to check or correct.

    A slice's score is the number of wrong voxels it is expected to hold: the sum over it of
    :func:`error_probability` of ``u = max(entropy, kl)``. Summing (not averaging) puts the slice where a
    correction fixes most first; slices without uncertainty score 0.

    Parameters
    ----------
    entropy : ndarray
        Uncertainty map in [0, 1], (z, y, x).
    kl : ndarray, optional
        Second map, combined by the maximum.
    labels : ndarray, optional
        Predicted labels, for :attr:`SliceScore.foreground_voxels`.
    axis : int
        The slices are orthogonal to this axis.
    top : int, optional
        Return only the best ``top`` slices.

    Returns
    -------
    list of SliceScore
        Descending score; ties by index.
    """
    u = combined_uncertainty(entropy, kl)
    ax = int(axis) % u.ndim
    other = tuple(a for a in range(u.ndim) if a != ax)
    sums = error_probability(u).sum(axis=other, dtype=np.float64)
    busy = u >= 0.1
    n_busy = busy.sum(axis=other)
    busy_sum = np.where(busy, u, 0).sum(axis=other, dtype=np.float64)
    fg = (np.asarray(labels) > 0).sum(axis=other) if labels is not None else np.zeros(u.shape[ax], int)
    order = sorted(range(u.shape[ax]), key=lambda i: (-sums[i], i))
    if top is not None:
        order = order[: max(int(top), 0)]
    return [
        SliceScore(
            index=int(i),
            axis=ax,
            score=float(sums[i]),
            mean_uncertainty=float(busy_sum[i] / n_busy[i]) if n_busy[i] else 0.0,
            foreground_voxels=int(fg[i]),
        )
        for i in order
    ]
