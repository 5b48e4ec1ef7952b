"""Slices ranked by the errors they are expected to hold: the next ones to check or correct."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_sscce.uncertainty.maps import combined_uncertainty, dilated_foreground, error_probability

#: Gumbel noise scale on the log of a slice's expected errors in :func:`rank_slices_by_class` (ClaSP PE's
#: perturbation; the only value measured, benchmarks/results/loop_honest_*.md)
STRATIFIED_NOISE = 0.25


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


def rank_slices_by_class(
    entropy: np.ndarray,
    kl: np.ndarray | None,
    labels: np.ndarray,
    axis: int = 0,
    top: int | None = None,
    noise: float = STRATIFIED_NOISE,
    rng: np.random.Generator | None = None,
) -> list[SliceScore]:
    """Slices to check next, class by class: class-stratified expected errors with noise.

    After ClaSP PE (TMLR 2026), the first active-learning rule reported to beat foreground-aware random
    selection consistently: for every foreground class, the slices are ranked by the expected errors near
    that class (sum of :func:`error_probability` over the class's predicted voxels dilated by
    :data:`~napari_sscce.uncertainty.maps.FOREGROUND_MARGIN`), perturbed by Gumbel noise of scale ``noise`` on
    the log score (so that neighbouring near-duplicates do not all come first); the classes take turns.
    Classes never predicted fall back to the whole-volume ranking. A small class thus gets its share of the
    slices even when a large one holds most of the expected errors.

    Parameters
    ----------
    entropy, kl : ndarray
        The maps (``kl`` optional), combined by :func:`combined_uncertainty`.
    labels : ndarray
        Predicted labels.
    axis : int
        The slices are orthogonal to this axis.
    top : int, optional
        How many slices (default: all).
    noise : float
        Gumbel scale (0: none, a deterministic stratified ranking).
    rng : numpy.random.Generator, optional
        Source of the noise (default: seeded with 0, so the same maps give the same list).

    Returns
    -------
    list of SliceScore
        In the order the turns pick them; ``score`` is the slice's expected errors (as :func:`rank_slices`).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    u = combined_uncertainty(entropy, kl)
    e = error_probability(u)
    ax = int(axis) % e.ndim
    other = tuple(a for a in range(e.ndim) if a != ax)
    n = e.shape[ax]
    labels = np.asarray(labels)
    classes = [int(c) for c in np.unique(labels) if c != 0] or [0]
    orders = []
    for c in classes:
        near = dilated_foreground(labels == c) if c else np.ones(e.shape, bool)
        score = np.where(near, e, 0.0).sum(axis=other) + 1e-9
        noisy = np.log(score) + (rng.gumbel(0.0, noise, size=n) if noise > 0 else 0.0)
        orders.append([int(i) for i in np.argsort(-noisy, kind="stable")])
    k = n if top is None else min(max(int(top), 0), n)
    picked: list[int] = []
    while len(picked) < k:
        for order in orders:
            nxt = next((i for i in order if i not in picked), None)
            if nxt is not None and len(picked) < k:
                picked.append(nxt)
    by_index = {s.index: s for s in rank_slices(entropy, kl, labels, axis=ax)}
    return [by_index[i] for i in picked]
