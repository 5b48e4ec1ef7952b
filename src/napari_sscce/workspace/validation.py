"""What the workspace accepts as a case: labels and masks on the image's grid, integer classes in range."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.io.errors import VolumeError
from napari_sscce.io.validate import check_same_grid, reorient_like
from napari_sscce.io.volume import Volume
from napari_sscce.workspace.manifest import (
    MAX_STORED_LABEL,
    SPACING_RTOL,
    WorkspaceError,
)


def _checkpoint_classes(path: Path) -> int | None:
    """``num_classes`` from a checkpoint's safetensors header (no torch import), or ``None`` if unreadable."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 16 * 1024 * 1024:
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
        value = json.loads(header["__metadata__"]["metadata"]).get("num_classes")
        return int(value) if value and 2 <= int(value) <= MAX_STORED_LABEL + 1 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _reoriented(name: str, volume: Volume | None, image: Volume) -> Volume | None:
    """``volume`` on ``image``'s voxel grid when the two differ only by axis flips / permutations."""
    if volume is None or (volume.shape == image.shape and _same_spacing(volume.spacing, image.spacing)
                          and np.allclose(volume.affine, image.affine, atol=1e-6)):
        return volume
    try:
        return reorient_like(volume, image)
    except VolumeError as exc:
        raise WorkspaceError(f"case {name!r}: {exc}") from None


def _same_spacing(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return bool(np.allclose(a, b, rtol=SPACING_RTOL, atol=1e-6))


def _validated(
    name: str, image: Volume, labels: Volume | None, mask: Volume | None, classes: int | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check a case before anything is written; returns the uint8 label and mask arrays (or ``None``)."""
    def fail(problem: str) -> WorkspaceError:
        return WorkspaceError(f"case {name!r}: {problem}")

    arr = np.asarray(image.array)
    if arr.ndim != 3 and not (arr.ndim == 4 and image.channel_names):
        raise fail(f"the image must be 3D (z, y, x), or (C, z, y, x) with channel names, got {arr.shape}")
    if not np.all(np.isfinite(image.spacing)) or min(image.spacing) <= 0:
        raise fail(f"the image spacing {image.spacing} is not positive and finite")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        raise fail(f"the image has {int(bad.sum())} NaN / Inf voxels; replace them before adding the case")
    for what, vol in (("labels", labels), ("mask", mask)):
        if vol is None:
            continue
        if vol.shape != image.shape:
            raise fail(f"{what} shape {vol.shape} differs from image shape {image.shape}")
        if not _same_spacing(vol.spacing, image.spacing):
            raise fail(f"{what} spacing {tuple(round(s, 4) for s in vol.spacing)} mm differs from image "
                       f"spacing {tuple(round(s, 4) for s in image.spacing)} mm")
        try:  # same shape and spacing, but mirrored, permuted or shifted in the world: refused
            check_same_grid(image, vol, what)
        except VolumeError as exc:
            raise fail(f"{exc} (add_case(..., reorient=True) does that for a pure axis flip / permutation)"
                       ) from None
    if mask is not None and labels is None:
        raise fail("a mask needs labels")
    if labels is None:
        return None, None
    top = (classes - 1) if classes else MAX_STORED_LABEL
    label_arr = _integer_array(name, "labels", labels.array, top, classes)
    if mask is None:
        mask_arr = np.ones(image.shape, dtype=np.uint8)
    else:
        mask_arr = (_integer_array(name, "mask", mask.array, MAX_STORED_LABEL, None) > 0).astype(np.uint8)
    return label_arr, mask_arr


def _integer_array(name: str, what: str, array: Any, top: int, classes: int | None) -> np.ndarray:
    """``array`` as uint8 after checking finite, integer-valued, within 0..top (message names the case)."""
    arr = np.asarray(array)
    prefix = f"case {name!r}: {what}"
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise WorkspaceError(f"{prefix} hold {arr.dtype} values; integer classes are needed")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            raise WorkspaceError(f"{prefix} have {int((~finite).sum())} NaN / Inf voxels")
        frac = arr != np.round(arr)
        if frac.any():
            raise WorkspaceError(f"{prefix} have {int(frac.sum())} non-integer voxels "
                                 f"(e.g. {float(arr[frac].flat[0]):g})")
    if arr.size and arr.min() < 0:
        raise WorkspaceError(f"{prefix} have negative values (min {arr.min():g})")
    if arr.size and arr.max() > top:
        allowed = f"the {classes} classes (0..{top})" if classes else f"0..{top} (stored as uint8)"
        raise WorkspaceError(f"{prefix} have value {arr.max():g}, outside {allowed}")
    return arr.astype(np.uint8)


