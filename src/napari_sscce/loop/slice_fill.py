"""Fill the gaps between painted slices: shape interpolation of a person's sparse slice annotations.

A person starting from nothing paints a few slices of a scan. Between two painted slices the organ changes
smoothly, so its outline there is well predicted by interpolating the two painted outlines: the signed
distance of each class in the two slices (in millimetres, in-plane spacing) is blended linearly by the
distance to each slice, and a voxel takes the class whose interpolated distance is most negative (inside),
background where every class is outside (the classic shape-based interpolation of Raya & Udupa, 1990,
that ITK-SNAP's and 3D Slicer's "fill between slices" use).

Only voxels far from an interpolated boundary are trusted (``|distance| >= margin``): the inside of the organ
and the background away from it. They train with a lower weight than the painted voxels; the uncertain band
around the interpolated surface and everything outside the first and last painted slice stay unlabeled.
Nothing a person painted is changed: filled voxels are only ever voxels the annotation mask left out.

Measured on the left atrium (benchmarks/slice_fill.py) before it was used in the cold start.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: minimum distance (mm) of a filled voxel from the interpolated boundary
FILL_MARGIN_MM = 2.0
#: a slice counts as painted when this share of its voxels is confirmed
PAINTED_SHARE = 0.95


def painted_slices(confirmed: np.ndarray, axis: int = 0) -> list[int]:
    """Indices along ``axis`` of the slices whose voxels are (almost) all confirmed."""
    other = tuple(a for a in range(confirmed.ndim) if a != axis)
    share = np.asarray(confirmed, bool).mean(axis=other)
    return [int(i) for i in np.flatnonzero(share >= PAINTED_SHARE)]


def _signed_distance(inside: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """2D signed distance (mm) to the boundary of ``inside``: negative inside, positive outside."""
    if not inside.any():
        return np.full(inside.shape, np.inf, np.float32)
    if inside.all():
        return np.full(inside.shape, -np.inf, np.float32)
    outside = ndimage.distance_transform_edt(~inside, sampling=spacing)
    within = ndimage.distance_transform_edt(inside, sampling=spacing)
    return (outside - within).astype(np.float32)


def fill_between_slices(
    labels: np.ndarray,
    confirmed: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    axis: int = 0,
    margin_mm: float = FILL_MARGIN_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate the classes between consecutive painted slices.

    Parameters
    ----------
    labels : ndarray
        Integer labels (z, y, x); only the painted slices are read.
    confirmed : ndarray
        The annotation mask (non-zero = confirmed by the person).
    spacing : tuple of float
        Voxel spacing (mm) in the array's axis order.
    axis : int
        The axis the painted slices are orthogonal to.
    margin_mm : float
        Filled voxels are at least this far (in-plane, mm) from every interpolated boundary.

    Returns
    -------
    filled_labels, filled : ndarray
        ``labels`` with the interpolated classes written into the filled voxels, and the boolean map of those
        voxels (never a confirmed voxel). Fewer than two painted slices: nothing is filled.
    """
    labels = np.asarray(labels)
    confirmed = np.asarray(confirmed) > 0
    if labels.shape != confirmed.shape:
        raise ValueError(f"labels {labels.shape} and mask {confirmed.shape} differ in shape")
    lab = np.moveaxis(labels, axis, 0)
    conf = np.moveaxis(confirmed, axis, 0)
    plane = tuple(float(s) for i, s in enumerate(spacing) if i != axis % labels.ndim)
    out = lab.copy()
    filled = np.zeros(lab.shape, bool)
    painted = painted_slices(conf, 0)
    classes = [int(c) for c in np.unique(lab[painted]) if c != 0] if painted else []
    for lo, hi in zip(painted[:-1], painted[1:], strict=True):
        if hi - lo < 2:
            continue
        d_lo = [_signed_distance(lab[lo] == c, plane) for c in classes]
        d_hi = [_signed_distance(lab[hi] == c, plane) for c in classes]
        for z in range(lo + 1, hi):
            t = (z - lo) / (hi - lo)
            if classes:
                with np.errstate(invalid="ignore"):  # inf - inf where a class is absent from both slices
                    d = np.stack([np.nan_to_num((1 - t) * a + t * b, nan=np.inf, posinf=1e6, neginf=-1e6)
                                  for a, b in zip(d_lo, d_hi, strict=True)])
                best = d.argmin(axis=0)
                nearest = np.take_along_axis(d, best[None], 0)[0]
                cls = np.where(nearest < 0, np.asarray(classes)[best], 0)
                # far from every boundary: inside one class by the margin, or outside all by the margin
                sure = np.where(nearest < 0, -nearest >= margin_mm, nearest >= margin_mm)
                if len(classes) > 1:  # inside one class: also far from the second-nearest class's inside
                    second = np.sort(d, axis=0)[1]
                    sure &= (nearest >= 0) | (second - nearest >= 2 * margin_mm)
            else:
                cls = np.zeros(lab.shape[1:], lab.dtype)
                sure = np.ones(lab.shape[1:], bool)
            sure &= ~conf[z]
            out[z][sure] = cls[sure]
            filled[z] = sure
    return np.moveaxis(out, 0, axis), np.moveaxis(filled, 0, axis)
