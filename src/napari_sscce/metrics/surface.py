"""Binary overlap and surface-distance metrics with medpy's definitions (Dice, Jaccard, HD95, ASD).

Definitions follow ``medpy.metric.binary`` exactly, as the semi-supervised papers use it (UA-MT's
``test_util.calculate_metric_percase`` calls ``dc``, ``jc``, ``hd95`` and ``asd`` with ``(pred, gt)``):

- inputs are binarised as ``!= 0``;
- the surface of a mask is ``mask XOR binary_erosion(mask, connectivity-1 structure)`` (voxels at the array
  edge count as surface, as scipy erodes with a background border);
- surface distances are ``distance_transform_edt(~surface_other, sampling=spacing)`` read at this mask's
  surface voxels;
- ``hd95`` is the 95th percentile (numpy's linear interpolation) of the union of both directed distance sets;
- ``asd`` is medpy's *directed* average surface distance, the mean distance from the prediction's surface to
  the ground truth's surface: this is what the paper code reports as "ASD". :func:`assd` gives the symmetric
  version (medpy >= 0.5: mean over both directed distance sets together) for those who prefer it.

``spacing=None`` gives distances in voxels (what the papers report, although they label them mm); pass the
voxel spacing (z, y, x) in millimetres to get millimetres.

Empty masks: medpy raises for distances and returns 1 for Dice/Jaccard when both are empty. The papers' test
code scores an empty prediction 0 on every metric (``single_metric = (0, 0, 0, 0)``); ``empty="zero"``
(default) does the same whenever the prediction *or* the ground truth is empty. ``empty="nan"`` returns NaN
for undefined values instead: distances when either mask is empty, Dice/Jaccard when both are (with exactly
one empty their true value 0 is returned).

Speed: distance transforms run only inside the bounding box of both masks plus a one-voxel margin, which
gives exactly the full-volume result (every surface voxel and its nearest partner lie in that box).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "SurfaceDistances",
    "asd",
    "assd",
    "binary_metrics",
    "dice",
    "hd95",
    "jaccard",
    "mean_dice",
    "surface_distances",
]

EmptyPolicy = Literal["zero", "nan"]
Spacing = tuple[float, ...] | list[float] | np.ndarray | None


def _binary(a: np.ndarray) -> np.ndarray:
    return np.atleast_1d(np.asarray(a) != 0)


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _binary(pred), _binary(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    return pred, gt


def _empty_value(policy: EmptyPolicy) -> float:
    if policy == "zero":
        return 0.0
    if policy == "nan":
        return float("nan")
    raise ValueError(f"empty must be 'zero' or 'nan', not {policy!r}")


def _overlap(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy, jaccard_: bool) -> float:
    pred, gt = _check(pred, gt)
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred == 0 or n_gt == 0:
        value = _empty_value(empty)  # validates the policy
        return value if n_pred + n_gt == 0 else 0.0
    inter = int(np.count_nonzero(pred & gt))
    if jaccard_:
        return inter / float(n_pred + n_gt - inter)
    return 2.0 * inter / float(n_pred + n_gt)


def dice(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "zero") -> float:
    """Dice coefficient ``2 |A & B| / (|A| + |B|)`` (medpy ``dc``).

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks (anything non-zero is foreground) of the same shape.
    empty : {"zero", "nan"}
        Value when both masks are empty (the papers' convention 0, or NaN). With one empty mask Dice is 0.

    Returns
    -------
    float
        In [0, 1].
    """
    return _overlap(pred, gt, empty, jaccard_=False)


def mean_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Iterable[int] | None = None,
    *,
    where: np.ndarray | None = None,
    absent: Literal["skip", "zero", "one"] = "skip",
    none: float = float("nan"),
) -> float:
    """Mean Dice over foreground classes of two label maps: the one rule every caller in the project uses.

    Parameters
    ----------
    pred, gt : ndarray
        Integer label maps of the same shape (0 is background).
    classes : iterable of int, optional
        The classes to average over, e.g. ``range(1, num_classes)``; default the foreground classes present
        in either map.
    where : ndarray of bool, optional
        Only these voxels count (held-aside slices, the voxels outside corrected slices).
    absent : {"skip", "zero", "one"}
        What a class absent from *both* maps counts as: left out of the mean (default; nnU-Net's
        convention, NaN ignored), 0 (medpy's ``dc`` and the papers' per-class tables) or 1 (two maps that
        agree that it is absent).
    none : float
        The result when no class is counted (default NaN).

    Returns
    -------
    float
        The mean, or ``none``.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    if where is not None:
        where = np.asarray(where, dtype=bool)
        pred, gt = pred[where], gt[where]
    if classes is None:
        classes = [int(c) for c in np.union1d(np.unique(pred), np.unique(gt)) if c != 0]
    scores = []
    for c in classes:
        a, g = pred == c, gt == c
        total = int(np.count_nonzero(a)) + int(np.count_nonzero(g))
        if total:
            scores.append(2.0 * int(np.count_nonzero(a & g)) / total)
        elif absent == "zero":
            scores.append(0.0)
        elif absent == "one":
            scores.append(1.0)
        elif absent != "skip":
            raise ValueError(f"absent must be 'skip', 'zero' or 'one', not {absent!r}")
    return float(np.mean(scores)) if scores else float(none)


def jaccard(pred: np.ndarray, gt: np.ndarray, empty: EmptyPolicy = "zero") -> float:
    """Jaccard index ``|A & B| / |A | B|`` (medpy ``jc``). Parameters as :func:`dice`."""
    return _overlap(pred, gt, empty, jaccard_=True)


@dataclass
class SurfaceDistances:
    """Directed surface distances between two non-empty masks.

    Attributes
    ----------
    pred_to_gt : ndarray
        Distance from every prediction surface voxel to the nearest ground-truth surface voxel.
    gt_to_pred : ndarray
        The reverse direction.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray

    def hd95(self) -> float:
        """95th percentile of both directed sets together (medpy ``hd95``)."""
        return float(np.percentile(np.hstack((self.pred_to_gt, self.gt_to_pred)), 95))

    def asd(self) -> float:
        """Mean prediction-to-ground-truth surface distance (medpy ``asd(pred, gt)``, the papers' ASD)."""
        return float(self.pred_to_gt.mean())

    def assd(self) -> float:
        """Mean over both directed sets together (medpy >= 0.5 ``assd``; 0.4 averaged the two means)."""
        return float(np.concatenate((self.pred_to_gt, self.gt_to_pred)).mean())


def _crop_box(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    coords = np.nonzero(pred | gt)
    return tuple(
        slice(max(int(c.min()) - margin, 0), min(int(c.max()) + margin + 1, n))
        for c, n in zip(coords, pred.shape, strict=True)
    )


def _spacing(spacing: Spacing, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    arr = np.asarray(spacing, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim or not np.all(arr > 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return np.ascontiguousarray(arr)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, connectivity: int = 1
) -> SurfaceDistances | None:
    """Directed surface distances of two masks, or None when either is empty.

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks of the same shape.
    spacing : sequence of float, optional
        Voxel size per axis (millimetres); None measures in voxels.
    connectivity : int
        Connectivity of the erosion structure that defines the surface (medpy default 1).

    Returns
    -------
    SurfaceDistances or None
    """
    pred, gt = _check(pred, gt)
    if not pred.any() or not gt.any():
        return None
    sampling = _spacing(spacing, pred.ndim)
    box = _crop_box(pred, gt)
    pred, gt = pred[box], gt[box]
    footprint = ndimage.generate_binary_structure(pred.ndim, connectivity)
    pred_border = pred ^ ndimage.binary_erosion(pred, structure=footprint, iterations=1)
    gt_border = gt ^ ndimage.binary_erosion(gt, structure=footprint, iterations=1)
    dt_gt = ndimage.distance_transform_edt(~gt_border, sampling=sampling)
    dt_pred = ndimage.distance_transform_edt(~pred_border, sampling=sampling)
    return SurfaceDistances(pred_to_gt=dt_gt[pred_border], gt_to_pred=dt_pred[gt_border])


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, empty: EmptyPolicy = "zero") -> float:
    """95 % Hausdorff distance (medpy ``hd95``), in voxels or, with ``spacing``, millimetres.

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks of the same shape.
    spacing : sequence of float, optional
        Voxel size (z, y, x) in millimetres; None gives voxels as the papers report.
    empty : {"zero", "nan"}
        Value when either mask is empty (see the module notes).

    Returns
    -------
    float
    """
    sd = surface_distances(pred, gt, spacing)
    return _empty_value(empty) if sd is None else sd.hd95()


def asd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, empty: EmptyPolicy = "zero") -> float:
    """Average surface distance from ``pred`` to ``gt`` (medpy ``asd(pred, gt)``, the papers' ASD).

    Directed, as in the paper code; see :func:`assd` for the symmetric mean. Parameters as :func:`hd95`.
    """
    sd = surface_distances(pred, gt, spacing)
    return _empty_value(empty) if sd is None else sd.asd()


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, empty: EmptyPolicy = "zero") -> float:
    """Average symmetric surface distance (medpy >= 0.5 ``assd``). Parameters as :func:`hd95`."""
    sd = surface_distances(pred, gt, spacing)
    return _empty_value(empty) if sd is None else sd.assd()


def binary_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, empty: EmptyPolicy = "zero"
) -> dict[str, float]:
    """All metrics of one binary pair, sharing the distance transforms.

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks of the same shape.
    spacing : sequence of float, optional
        Voxel size (z, y, x) in millimetres. Without it the ``*_mm`` values are NaN.
    empty : {"zero", "nan"}
        Empty-mask policy (module notes).

    Returns
    -------
    dict
        ``dice, jaccard, hd95_vox, asd_vox, assd_vox, hd95_mm, asd_mm, assd_mm, pred_voxels, gt_voxels``.
    """
    pred, gt = _check(pred, gt)
    out: dict[str, float] = {"dice": dice(pred, gt, empty), "jaccard": jaccard(pred, gt, empty)}
    sampling = _spacing(spacing, pred.ndim)
    sd_vox = surface_distances(pred, gt)
    if sampling is None:
        sd_mm, scale = None, float("nan")
    elif np.all(sampling == sampling[0]):  # isotropic: millimetres are voxels times the spacing
        sd_mm, scale = sd_vox, float(sampling[0])
    else:
        sd_mm, scale = surface_distances(pred, gt, sampling), 1.0
    for name in ("hd95", "asd", "assd"):
        out[f"{name}_vox"] = _empty_value(empty) if sd_vox is None else getattr(sd_vox, name)()
        if sampling is None:
            out[f"{name}_mm"] = float("nan")
        else:
            out[f"{name}_mm"] = _empty_value(empty) if sd_mm is None else getattr(sd_mm, name)() * scale
    out["pred_voxels"] = int(np.count_nonzero(pred))
    out["gt_voxels"] = int(np.count_nonzero(gt))
    return out
