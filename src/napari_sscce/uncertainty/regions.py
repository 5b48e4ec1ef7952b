"""Connected regions of high uncertainty, ranked by the errors they are expected to hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from napari_sscce.uncertainty.maps import combined_uncertainty, dilated_foreground, error_probability

#: lowest region threshold on u: a voxel at 0.5 has an 11 % chance of being wrong (:func:`error_probability`)
DEFAULT_MIN_THRESHOLD = 0.5
DEFAULT_PERCENTILE = 95.0
#: longest side (voxels) of a ranked region; longer uncertain components are cut on a cube grid.
#: benchmarks/results/ranking_*.md: on the LA validation scans 32-voxel pieces hold more of the errors in the
#: top 5 (21.6 % against 13.6 % with 24) at the same precision; on the hippocampus the two are the same
DEFAULT_MAX_EXTENT = 32
#: default region threshold: ``"expected"`` (:func:`expected_threshold`): the regions together are about
#: as large as the number of voxels the model expects to be wrong. On unseen scans
#: (benchmarks/results/ranking_*.md) the top-5 regions' precision rose from 30.1 % to 36.9 % on the LA and
#: from 31.3 % to 41.2 % on the hippocampus (the fixed 0.5 drew one thick shell); a calibrated model cannot
#: go far beyond: its voxels at error probability 0.45-0.5 are wrong 48 % of the time
DEFAULT_THRESHOLD = "expected"


#: voxels at least this uncertain always belong to a region (a one-in-four chance of being wrong): the
#: expected-errors threshold never rises above it, so a second, smaller doubtful place is not dropped because
#: a large one already holds the expected number of errors
DEFAULT_CEILING = 0.8


def expected_threshold(
    u: np.ndarray, floor: float = DEFAULT_MIN_THRESHOLD, ceiling: float = DEFAULT_CEILING
) -> float:
    """The threshold that keeps as many voxels as the model expects to be wrong: ``round(sum e)`` voxels of
    highest ``u`` (``e`` = :func:`error_probability` of ``u``), within ``[floor, ceiling]``.

    Adaptive: a confident scan gets few, tight regions, a doubtful one more; the regions' voxels are the
    model's best guess of where its errors are.
    """
    u = np.asarray(u, dtype=np.float32)
    if u.size == 0:
        return float(floor)
    n = int(round(float(error_probability(u).sum(dtype=np.float64))))
    if n <= 0:
        return float(min(ceiling, max(floor, float(u.max()) + 1e-6)))
    n = min(n, u.size)
    kth = np.partition(u.ravel(), u.size - n)[u.size - n]
    return float(min(ceiling, max(floor, kth)))


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


def resolve_threshold(
    threshold: float | str | None, u: np.ndarray, labels: np.ndarray | None = None
) -> float:
    """The number a region threshold stands for: ``None`` is :data:`DEFAULT_THRESHOLD`, ``"expected"``
    :func:`expected_threshold`, ``"adaptive"`` :func:`adaptive_threshold`, a number itself."""
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if threshold == "expected":
        return expected_threshold(u)
    if threshold == "adaptive":
        return adaptive_threshold(u, labels)
    return float(threshold)


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
    threshold = resolve_threshold(threshold, u, lab_map)
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
    threshold : float or "expected" or "adaptive", optional
        Uncertainty threshold. Default :data:`DEFAULT_THRESHOLD`, ``"expected"``: :func:`expected_threshold`
        (as many voxels as the model expects to be wrong, at least 0.5: a voxel whose normalised uncertainty
        implies an 11 % chance of being wrong). A number: that threshold. ``"adaptive"``:
        :func:`adaptive_threshold`,
        ``max(0.5, 95th percentile of u inside the foreground dilated by 3 voxels)``, which keeps only the
        most uncertain 5 % and measured too narrow (benchmarks/results/uncertainty.md).
    min_size : int
        Smallest region kept, in voxels.
    max_regions : int, optional
        Keep only the best ones.
    max_extent : int, optional
        Longest side, in voxels, of a region (default 32); larger components are split on a cube grid.
        None or 0: no splitting.

    Returns
    -------
    list of Region
        Sorted by score, descending; ``id`` is the rank starting at 1.
    """
    return label_regions(entropy, kl, labels, spacing, threshold, min_size, max_regions, max_extent)[1]


