"""Intensity normalisation and resampling shared by training and inference.

A checkpoint records the normalisation its model was trained with (``{"mode": ...}``) and the
training spacing; inference applies the same function so predictions see what training saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

NORMALIZATION_MODES = ("zscore", "percentile_zscore", "none")


def normalize_intensity(array: np.ndarray, mode: str = "percentile_zscore") -> np.ndarray:
    """Normalise a scan's intensities.

    Parameters
    ----------
    array : numpy.ndarray
        The scan, any numeric dtype: (z, y, x), or (C, z, y, x) for several channels, each then
        normalised on its own.
    mode : {"percentile_zscore", "zscore", "none"}
        ``"zscore"``: subtract the mean, divide by the standard deviation (what the LA literature
        does; the LA h5 files are already z-scored). ``"percentile_zscore"``: first clip to the
        0.5 and 99.5 percentiles (nnU-Net's MRI practice, robust to the hippocampus set's mixed
        uint8 / 1e6 intensities), then z-score. ``"none"``: cast only.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    if np.ndim(array) == 4:
        return np.stack([normalize_intensity(channel, mode) for channel in np.asarray(array)])
    out = np.asarray(array, dtype=np.float32)
    if mode == "none":
        return out.copy()
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORMALIZATION_MODES}")
    if mode == "percentile_zscore":
        lo, hi = np.percentile(out, [0.5, 99.5])
        out = np.clip(out, lo, hi)
    mean = float(out.mean(dtype=np.float64))
    std = float(out.std(dtype=np.float64))
    return ((out - mean) / max(std, 1e-8)).astype(np.float32, copy=False)


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Shape of a grid of ``shape`` voxels at ``spacing`` resampled to ``target_spacing``."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def resample_to_shape(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample the last three axes of ``array`` to ``shape``.

    ``order=1`` (trilinear) for scans and probabilities, ``order=0`` (nearest) for label maps.
    Leading axes (channels) are kept. Corners are aligned (``grid_mode=False``) so that a round
    trip returns the original grid.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape[-3:]) == shape:
        return array
    zoom = [1.0] * (array.ndim - 3) + [t / s for t, s in zip(shape, array.shape[-3:], strict=True)]
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=False)
    # ndimage.zoom may be off by one voxel from rounding: crop or pad to the exact shape
    slices = tuple(slice(0, n) for n in out.shape[:-3]) + tuple(slice(0, s) for s in shape)
    out = out[slices]
    pad = [(0, 0)] * (out.ndim - 3) + [(0, s - o) for s, o in zip(shape, out.shape[-3:], strict=True)]
    if any(p[1] for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def resample_annotation(
    label: np.ndarray,
    mask: np.ndarray | None,
    num_classes: int,
    shape: Sequence[int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample a label map and its annotation weights to ``shape`` without losing sparse annotations.

    Nearest-neighbour resampling of a slice-annotated label keeps an annotated slice only when it falls on
    the coarse grid (down-sampling by 3 in z loses two annotated slices in three). Here every class is
    resampled as an *area-weighted* fraction of annotated voxels (a box filter of the down-sampling footprint,
    then trilinear sampling): a coarse voxel is annotated when any annotated fine voxel falls in its
    footprint, its class is the majority among them, and its weight the mean weight of those voxels.

    Parameters
    ----------
    label : numpy.ndarray
        Integer classes ``0..num_classes-1``, (z, y, x).
    mask : numpy.ndarray or None
        Float annotation weights in [0, 1] of the same shape (None: every voxel annotated with weight 1).
    num_classes : int
    shape : sequence of int
        The target grid.

    Returns
    -------
    label : numpy.ndarray
        uint8 on ``shape``.
    mask : numpy.ndarray or None
        float32 weights on ``shape`` (None when ``mask`` was None).
    """
    shape = tuple(int(s) for s in shape)
    if tuple(label.shape) == shape:
        return label.astype(np.uint8, copy=False), mask
    footprint = [max(1, int(round(n / t))) for n, t in zip(label.shape, shape, strict=True)]
    weights = np.ones(label.shape, np.float32) if mask is None else np.asarray(mask, np.float32)
    annotated = (weights > 0).astype(np.float32)

    def area(values: np.ndarray) -> np.ndarray:
        return resample_to_shape(ndimage.uniform_filter(values, footprint, mode="nearest"), shape, order=1)

    best = np.zeros(shape, np.float32)
    out = np.zeros(shape, np.uint8)
    for c in range(int(num_classes)):
        share = area(((label == c) & (weights > 0)).astype(np.float32))
        better = share > best
        out[better], best[better] = c, share[better]
    if mask is None:
        return out, None
    coverage = area(annotated)
    mean_weight = np.where(coverage > 1e-6, area(weights) / np.maximum(coverage, 1e-6), 0.0)
    new_mask = np.where(coverage > 1e-3, np.clip(mean_weight, 0.0, 1.0), 0.0).astype(np.float32)
    out[new_mask == 0] = 0
    return out, new_mask
