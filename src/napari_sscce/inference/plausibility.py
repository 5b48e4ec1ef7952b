"""Is a scan's geometry plausible for a model? Spacing units, resampling factor, patch, memory.

:func:`predict_volume` calls :func:`check_geometry` before it resamples or allocates anything:

- the model's spacing and patch (metadata or config) must be positive finite numbers (a model file with
  spacing ``0``, ``-1`` or ``"abc"`` is refused naming the file);
- the resampling factor from the scan's spacing to the model's must lie within
  :data:`REFUSE_FACTOR` (a scan whose spacing is in metres or centimetres, 100 mm voxels, a model
  spacing of 0.01 mm) and a warning is given beyond :data:`WARN_FACTOR`;
- a resampled grid smaller than the patch after a large resampling is refused (it would be an empty
  segmentation, not a result);
- the resampled and padded grid, with the probability maps of both networks, must fit the memory bound
  of :func:`napari_sscce.io.bounded.max_read_bytes`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sscce.io.bounded import check_allocation
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.volume import Volume

#: resampling factor (scan spacing / model spacing, per axis) beyond which prediction is refused
REFUSE_FACTOR = 16.0
#: ... and beyond which a warning says the result may be poor
WARN_FACTOR = 4.0
#: model spacings outside this range (mm) are not medical voxel sizes
MODEL_SPACING_RANGE = (1e-3, 1e3)
#: float32 arrays of the work grid held at once: the image, two networks' probabilities per class and
#: their accumulators (a generous estimate of what the sliding window keeps)
ARRAYS_PER_CLASS = 4


class SpacingWarning(UserWarning):
    """A scan's spacing is far from the model's: the result may be poor (the message says why)."""


def model_spacing(meta: dict[str, Any], model_name: str) -> tuple[float, float, float] | None:
    """The model's spacing (z, y, x) in mm from its metadata, or None when it has none.

    Raises
    ------
    ValueError
        Naming the model and the bad value: not three numbers, not finite, zero, negative or absurd.
    """
    value = meta.get("spacing")
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    out = _numbers(value, model_name, "spacing", 3)
    lo, hi = MODEL_SPACING_RANGE
    if any(not lo <= s <= hi for s in out):
        raise ValueError(f"{model_name}: its spacing {value!r} is not a voxel size in mm (expected 3 numbers "
                         f"between {lo:g} and {hi:g}); the model file's metadata is wrong")
    return out  # type: ignore[return-value]


def model_patch(value: Any, model_name: str) -> tuple[int, int, int]:
    """A patch size (z, y, x): three positive integers.

    Raises
    ------
    ValueError
        Naming the model (or the config) and the bad value.
    """
    numbers = _numbers(value, model_name, "patch size", 3)
    if any(n != int(n) or n < 1 or n > 4096 for n in numbers):
        raise ValueError(f"{model_name}: its patch size {value!r} must be three whole numbers between 1 and "
                         "4096")
    return tuple(int(n) for n in numbers)  # type: ignore[return-value]


def _numbers(value: Any, model_name: str, what: str, n: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(f"{model_name}: its {what} {value!r} must be {n} numbers (z, y, x)")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{model_name}: its {what} {value!r} must be {n} numbers (z, y, x)") from None
    if any(isinstance(v, bool) for v in value) or not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"{model_name}: its {what} {value!r} must be {n} positive finite numbers")
    return out


def _where(volume: Volume) -> str:
    return str(volume.source) if volume.source is not None else f"image {volume.name!r}"


def check_geometry(
    volume: Volume,
    target_spacing: Sequence[float] | None,
    work_shape: Sequence[int],
    patch: Sequence[int],
    num_classes: int,
    model_name: str,
) -> None:
    """Refuse (or warn about) a scan whose geometry does not fit the model; bound the memory needed.

    Parameters
    ----------
    volume : Volume
        The scan as read.
    target_spacing : sequence of float or None
        The model's spacing (None: the scan is used at its own spacing).
    work_shape : sequence of int
        The resampled grid.
    patch : sequence of int
        The sliding-window patch.
    num_classes : int
        Output classes of the model.
    model_name : str
        The model file (for messages).

    Raises
    ------
    VolumeError
        Naming the scan: implausible spacing, resampled grid smaller than the patch after a large
        resampling, or more memory than available.
    """
    where = _where(volume)
    spacing = tuple(float(s) for s in volume.spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(where, f"its spacing {spacing} is not positive and finite")
    factors = (1.0, 1.0, 1.0) if target_spacing is None else tuple(
        s / float(t) for s, t in zip(spacing, target_spacing, strict=True))
    worst = max(max(f, 1 / f) for f in factors)
    shown = tuple(round(s, 6) for s in spacing)
    model = "" if target_spacing is None else f"{model_name} was trained at " \
        f"{tuple(round(float(t), 4) for t in target_spacing)} mm"
    if worst > REFUSE_FACTOR:
        hint = _unit_hint(spacing)
        raise VolumeError(
            where,
            f"its spacing {shown} mm is {worst:.0f}x away from the model's ({model}); resampling would give "
            f"a grid of {tuple(int(n) for n in work_shape)} voxels.{hint} Fix the file's voxel size (or its "
            "units) or use a model trained at this resolution",
        )
    if worst > WARN_FACTOR:
        warnings.warn(f"{where}: spacing {shown} mm is {worst:.1f}x away from the model's ({model}); the "
                      "segmentation may be poor", SpacingWarning, stacklevel=3)
    small = [int(w) < int(p) for w, p in zip(work_shape, patch, strict=True)]
    if any(small) and target_spacing is not None and worst > WARN_FACTOR:
        raise VolumeError(
            where,
            f"resampled to the model's spacing it is {tuple(int(n) for n in work_shape)} voxels, smaller "
            f"than the model's patch {tuple(int(p) for p in patch)}: the spacing {shown} mm is probably in "
            f"the wrong units{_unit_hint(spacing)}",
        )
    padded = [max(int(w), int(p)) for w, p in zip(work_shape, patch, strict=True)]
    voxels = int(np.prod(padded, dtype=object))
    needed = voxels * 4 * (2 + ARRAYS_PER_CLASS * max(2, int(num_classes)))
    check_allocation(where, needed, f"segmenting it on the model's grid {tuple(padded)}")


def _unit_hint(spacing: Sequence[float]) -> str:
    smallest, largest = min(spacing), max(spacing)
    if largest < 0.01:
        return " The spacing looks like metres, not millimetres."
    if largest < 0.1:
        return " The spacing looks like centimetres, not millimetres."
    if smallest > 20:
        return " Voxels this large are not a medical scan's; the spacing may be in micrometres or wrong."
    return ""
