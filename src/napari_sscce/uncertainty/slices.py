"""Slices ranked by the errors they are expected to hold: the next ones to check or correct."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_sscce.uncertainty.maps import combined_uncertainty, error_probability


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
