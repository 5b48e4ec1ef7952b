"""Checks on volumes and label maps, with messages that name the file and say what to do.

Readers call :func:`ensure_3d` and :func:`as_label_array` on everything they read; training,
inference and :meth:`VolumeDataset.load_case` call :func:`check_image`, :func:`check_labels`
and :func:`check_pair` before using a volume.
"""

from __future__ import annotations

import os

import numpy as np

from napari_sscce.io import geometry
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.volume import Volume

#: relative tolerance when comparing the spacing of an image and its label map
SPACING_RTOL = 1e-3


def ensure_3d(
    array: np.ndarray,
    path: str | os.PathLike | None,
    *,
    channel: int | None = None,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Return a 3D view of ``array``, picking one channel of a 4D volume.

    Parameters
    ----------
    array : numpy.ndarray
        Array as read, spatial axes (z, y, x) already in that order.
    path : path-like or None
        File it came from (for messages).
    channel : int, optional
        Channel (or time point) to keep when the volume is 4D.
    channel_axis : int, optional
        Which axis holds the channels; defaults to the shortest axis.

    Raises
    ------
    VolumeError
        2D images, 4D volumes without ``channel``, out-of-range channels, 5D and more.
    """
    arr = np.asarray(array)
    if arr.ndim > 3:  # drop singleton axes such as NIfTI's (x, y, z, 1)
        keep = [i for i, n in enumerate(arr.shape) if n != 1]
        if len(keep) >= 3:
            arr = arr.reshape([arr.shape[i] for i in keep])
    if arr.ndim == 4:
        axis = int(np.argmin(arr.shape)) if channel_axis is None else channel_axis % 4
        n = arr.shape[axis]
        if channel is None:
            raise VolumeError(
                path,
                f"is a 4D volume (shape {arr.shape}) with {n} channels or time points on axis {axis}; "
                f"pick one channel, e.g. `sscce predict ... --channel N` or "
                f"`read_volume(path, channel=N)` with N in 0..{n - 1}",
            )
        if not -n <= channel < n:
            raise VolumeError(path, f"has {n} channels (axis {axis}); channel {channel} does not exist")
        arr = np.take(arr, channel, axis=axis)
    elif channel not in (None, 0):
        raise VolumeError(path, f"has a single channel (shape {arr.shape}); channel {channel} does not exist")
    if arr.ndim < 3 or min(arr.shape) == 1:
        raise VolumeError(
            path, f"is 2D (shape {arr.shape}); napari-sscce segments 3D volumes (z, y, x) only"
        )
    if arr.ndim > 3:
        raise VolumeError(path, f"has {arr.ndim} dimensions (shape {arr.shape}); expected a 3D volume")
    return arr


def smallest_label_dtype(max_value: int) -> np.dtype:
    """uint8 when labels fit, else uint16, else uint32."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def as_label_array(array: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Return ``array`` as an unsigned integer label map.

    Float files whose values are all integers (some hippocampus label files are float32) are cast.

    Raises
    ------
    VolumeError
        Non-integer, NaN / Inf or negative values.
    """
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise VolumeError(path, f"holds {arr.dtype} values; a label map needs integer class indices")
        finite = np.isfinite(arr)
        if not finite.all():
            raise VolumeError(path, f"is a label map with {int((~finite).sum())} NaN/Inf voxels")
        frac = arr != np.round(arr)
        if frac.any():
            example = float(arr[frac].flat[0])
            raise VolumeError(
                path,
                f"is not an integer label map: {int(frac.sum())} voxels have fractional values "
                f"(e.g. {example:g}); is this an image rather than labels?",
            )
    if arr.size == 0:
        raise VolumeError(path, "is empty")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise VolumeError(path, f"has negative labels (min {lo:g}); class indices must be 0, 1, 2, ...")
    return arr.astype(smallest_label_dtype(int(hi)), copy=False)


def check_image(volume: Volume) -> Volume:
    """Check that a scan is 3D, not empty and free of NaN / Inf voxels; return it unchanged.

    Raises
    ------
    VolumeError
        With the volume's source file in the message.
    """
    arr = volume.array
    ensure_3d(arr[0] if volume.num_channels > 1 else arr, volume.source)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise VolumeError(volume.source, f"holds {arr.dtype} values; expected numbers")
    if np.issubdtype(arr.dtype, np.floating):
        n_nan, n_inf = count_nonfinite(arr)
        if n_nan or n_inf:
            raise VolumeError(_where(volume), _nonfinite_problem(n_nan, n_inf))
    return volume


def _where(volume: Volume) -> str:
    """The volume's file, or its name for an in-memory volume (a napari layer)."""
    return str(volume.source) if volume.source is not None else f"image {volume.name!r}"


def _nonfinite_problem(n_nan: int, n_inf: int) -> str:
    return (
        f"has {n_nan} NaN and {n_inf} Inf voxels; replace them (e.g. numpy.nan_to_num) or choose how to "
        "fill them (`sscce predict --nan-policy zero|mean`, InferenceConfig(nan_policy=...))"
    )


def count_nonfinite(array: np.ndarray) -> tuple[int, int]:
    """``(number of NaN voxels, number of +-Inf voxels)`` of an array (0, 0 for integer arrays)."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0, 0
    finite = np.isfinite(array)
    if finite.all():
        return 0, 0
    n_nan = int(np.isnan(array).sum())
    return n_nan, int((~finite).sum()) - n_nan


#: What :func:`apply_nan_policy` may do with NaN / Inf voxels.
NAN_POLICIES = ("error", "zero", "mean")


def apply_nan_policy(volume: Volume, policy: str = "error") -> tuple[np.ndarray, int]:
    """The volume's array with its NaN / Inf voxels handled as ``policy`` says, and their number.

    Parameters
    ----------
    volume : Volume
        The scan (raw intensities).
    policy : {"error", "zero", "mean"}
        ``"error"`` (default): raise; ``"zero"``: replace them by 0 (raw intensity units, before
        normalisation); ``"mean"``: by the mean of the finite voxels. A volume without finite voxels is an
        error under every policy.

    Returns
    -------
    (numpy.ndarray, int)
        The array (the original one when nothing was replaced, else a float32 copy) and the number of
        replaced voxels.

    Raises
    ------
    VolumeError
        Naming the file (or the layer) and the counts.
    """
    if policy not in NAN_POLICIES:
        raise ValueError(f"unknown NaN policy {policy!r}; choose one of {', '.join(NAN_POLICIES)}")
    arr = volume.array
    n_nan, n_inf = count_nonfinite(arr)
    if not (n_nan or n_inf):
        return arr, 0
    if policy == "error":
        raise VolumeError(_where(volume), _nonfinite_problem(n_nan, n_inf))
    finite = np.isfinite(arr)
    if not finite.any():
        raise VolumeError(_where(volume), f"has no finite voxel ({n_nan} NaN, {n_inf} Inf)")
    fill = 0.0 if policy == "zero" else float(arr[finite].mean(dtype=np.float64))
    return np.where(finite, arr, np.float32(fill)).astype(np.float32, copy=False), n_nan + n_inf


def check_labels(volume: Volume, num_classes: int | None = None) -> Volume:
    """Check that a label map is 3D, integer and non-negative, with labels below ``num_classes``.

    Returns
    -------
    Volume
        The same volume (its array cast to an unsigned dtype when it held integer-valued floats).
    """
    ensure_3d(volume.array, volume.source)
    volume.array = as_label_array(volume.array, volume.source)
    if num_classes is not None:
        top = int(volume.array.max())
        if top >= num_classes:
            found = np.unique(volume.array)
            raise VolumeError(
                volume.source,
                f"has label {top} but the model has {num_classes} classes (0..{num_classes - 1}); "
                f"labels found: {found[:20].tolist()}",
            )
    return volume


def check_pair(image: Volume, label: Volume) -> None:
    """Check that a label map lies on its image's grid: same shape, spacing and affine.

    See :func:`check_same_grid`.

    Raises
    ------
    VolumeError
        Naming the label file, the image file and both shapes, spacings or affines.
    """
    check_same_grid(image, label)


def check_same_grid(image: Volume, other: Volume, what: str = "label") -> None:
    """Check that ``other`` (a label map or mask) lies on ``image``'s grid.

    Shapes must be equal, spacings equal within :data:`SPACING_RTOL`, and the affines (direction and
    origin) equal within :data:`napari_sscce.io.geometry.GRID_TOLERANCE` x the voxel size: a label with the
    image's shape and spacing but mirrored, permuted or shifted in the world is refused rather than stored
    on the image's grid. When the grids differ only by axis flips / permutations the message says so and
    how to reorient the label explicitly (:func:`reorient_like`).

    Raises
    ------
    VolumeError
        Naming both files and what differs.
    """
    where = other.source or image.source
    against = f" ({image.source})" if image.source else ""
    if image.shape != other.shape:
        mapping = geometry.grid_mapping(other.affine, other.shape, image.affine, image.shape)
        hint = ("; it is the image's grid with axes permuted/flipped: reorient it explicitly "
                "(napari_sscce.io.validate.reorient_like)" if mapping else "")
        raise VolumeError(where, f"{what} shape {other.shape} does not match image shape {image.shape}"
                                 f"{against}{hint}")
    if not np.allclose(image.spacing, other.spacing, rtol=SPACING_RTOL, atol=1e-6):
        raise VolumeError(
            where,
            f"{what} spacing {tuple(round(s, 4) for s in other.spacing)} mm does not match image spacing "
            f"{tuple(round(s, 4) for s in image.spacing)} mm{against}",
        )
    if not geometry.same_grid(image.affine, other.affine, image.spacing):
        mapping = geometry.grid_mapping(other.affine, other.shape, image.affine, image.shape)
        if mapping is not None:
            axes, flips = mapping
            flipped = geometry.axes_text([j for j, f in enumerate(flips) if f])
            how = (f"it is the image's grid mirrored along {flipped}"
                   + (f" with axes permuted {axes}" if axes != (0, 1, 2) else "")
                   + ": reorient it explicitly (napari_sscce.io.validate.reorient_like) if that is intended")
        else:
            shift = np.asarray(other.affine)[:3, 3] - np.asarray(image.affine)[:3, 3]
            how = (f"origins differ by {tuple(round(float(s), 3) for s in shift)} mm (z, y, x) or the axes "
                   "point elsewhere: resample it onto the image explicitly if that is intended")
        raise VolumeError(
            where,
            f"{what} lies elsewhere in the world than its image{against} although shape and spacing match "
            f"({how}); affines: {what} {np.round(other.affine, 4).tolist()}, "
            f"image {np.round(image.affine, 4).tolist()}",
        )


def reorient_like(volume: Volume, reference: Volume) -> Volume:
    """``volume`` put voxel for voxel on ``reference``'s grid, when the two differ only by axis flips or
    permutations (an exact reordering, no interpolation).

    Raises
    ------
    VolumeError
        When the grids differ otherwise (a shift, rotation, another spacing): resample instead.
    """
    mapping = geometry.grid_mapping(volume.affine, volume.shape, reference.affine, reference.shape)
    if mapping is None:
        raise VolumeError(volume.source, f"cannot be reoriented onto {reference.source or 'the reference'}: "
                                         "the grids differ by more than axis flips / permutations")
    array = geometry.reorient(np.asarray(volume.array), *mapping)
    out = reference.with_array(array, is_label=volume.is_label)
    out.source = volume.source
    return out
