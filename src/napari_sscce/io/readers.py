"""Read any supported 3D file (or DICOM folder) into a :class:`Volume`.

Formats: NIfTI (``.nii``, ``.nii.gz``; nibabel), NRRD (``.nrrd``, ``.nhdr``; pynrrd), the LA HDF5
layout (``.h5``/``.hdf5`` with ``image`` and ``label`` datasets stored (x, y, z)), MetaImage
(``.mha``, ``.mhd``) and DICOM series (a folder or one of its ``.dcm`` files) via SimpleITK, and
3D TIFF (tifffile). Every reader returns arrays in (z, y, x) order and converts the file's
geometry as described in :mod:`napari_sscce.io.geometry`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from napari_sscce.io import formats
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.geometry import affine_problem, spacing_of
from napari_sscce.io.validate import as_label_array, ensure_3d
from napari_sscce.io.volume import Volume

SUFFIX_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".h5": "h5",
    ".hdf5": "h5",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
    ".tif": "tiff",
    ".tiff": "tiff",
}
FORMAT_NAMES = {
    "nifti": "NIfTI",
    "nrrd": "NRRD",
    "h5": "HDF5 (LA layout)",
    "metaimage": "MetaImage",
    "dicom": "DICOM",
    "tiff": "TIFF",
}
#: folders whose files are label maps (compared lower-case)
LABEL_FOLDERS = {"labels", "labelstr", "labelsts", "label", "segmentations", "segmentation", "masks", "gt"}
_LABEL_NAME = re.compile(r"label|(^|[_\-.])(seg|segmentation|mask|gt)([_\-.]|$)", re.IGNORECASE)


def detect_format(path: str | os.PathLike) -> str | None:
    """Return the format key of ``path`` (``"nifti"``, ``"nrrd"``, ``"h5"``, ``"metaimage"``, ``"dicom"``,
    ``"tiff"``) from its extension, ``"dicom"`` for a folder, or None when it is not ours."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def looks_like_label_file(path: str | os.PathLike) -> bool:
    """True when the file's folder (``labels``, ``labelsTr``, ``masks``...) or name (``*_seg*``,
    ``*label*``) says it holds a label map."""
    path = Path(path)
    stem = path.name.split(".")[0]
    return path.parent.name.lower() in LABEL_FOLDERS or bool(_LABEL_NAME.search(stem))


def _integer_valued(array: np.ndarray) -> bool:
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array.size > 0 and array.min() >= 0
    if np.issubdtype(array.dtype, np.floating):
        return bool(np.isfinite(array).all() and (array == np.round(array)).all() and array.min() >= 0)
    return False


def read_volume(
    path: str | os.PathLike, *, is_label: bool | None = None, channel: int | None = None
) -> Volume:
    """Read a 3D scan or label map.

    Parameters
    ----------
    path : path-like
        A supported file, or a folder holding one DICOM series.
    is_label : bool, optional
        True reads a label map (cast to an unsigned integer dtype; for LA ``.h5`` files, the
        ``label`` dataset). False reads a scan. None (default) decides from the file: a file in
        a ``labels``/``labelsTr``/``masks`` folder or named ``*_seg*``/``*label*`` whose values are
        non-negative integers is a label map; an ``.h5`` file gives its ``image``.
    channel : int, optional
        Channel (or time point) to keep from a 4D file.

    Returns
    -------
    Volume
        Array in (z, y, x), spacing in mm, affine to world (see :mod:`napari_sscce.io.geometry`).
        NaN / Inf voxels are not checked here: use :func:`napari_sscce.io.validate.check_image`.

    Raises
    ------
    VolumeError
        Missing, truncated or non-image files, unsupported extensions, 2D images, 4D volumes
        without ``channel``, label maps with non-integer or negative values.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "no such file or folder")
    fmt = detect_format(path)
    if fmt is None:
        supported = ", ".join(SUFFIX_FORMATS)
        raise VolumeError(path, f"unsupported file type; napari-sscce reads {supported} and DICOM folders")
    key = "label" if (fmt == "h5" and is_label) else "image"
    array, affine, metadata = _read_raw(path, fmt, channel, h5_key=key)
    problem = affine_problem(affine)
    if problem is not None:
        raise VolumeError(path, f"{problem}; napari-sscce cannot place it in the world or resample it")
    if is_label is None:
        is_label = looks_like_label_file(path) and fmt != "h5" and _integer_valued(array)
    if is_label:
        array = as_label_array(array, path)
    metadata = {"format": fmt, **metadata}
    return Volume(array=array, affine=affine, spacing=spacing_of(affine), source=path,
                  metadata=metadata, is_label=bool(is_label))


def read_image_label(path: str | os.PathLike, *, channel: int | None = None) -> tuple[Volume, Volume | None]:
    """Read a scan and, where the file holds one, its label map.

    An LA ``.h5`` file gives its ``image`` and ``label`` datasets (label None when the file has no
    ``label`` dataset); any other file gives ``(read_volume(path, is_label=False), None)``.
    """
    path = Path(path)
    image = read_volume(path, is_label=False, channel=channel)
    if detect_format(path) != "h5" or not formats.h5_has_dataset(path, "label"):
        return image, None
    label = read_volume(path, is_label=True, channel=channel)
    return image, label


def _read_raw(path: Path, fmt: str, channel: int | None, h5_key: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Dispatch to the format's reader; turn library exceptions into :class:`VolumeError`."""
    try:
        if fmt == "nifti":
            raw = formats.read_nifti(path)
        elif fmt == "nrrd":
            raw = formats.read_nrrd(path)
        elif fmt == "h5":
            raw = formats.read_h5(path, h5_key)
        elif fmt == "tiff":
            raw = formats.read_tiff(path)
        else:
            raw = formats.read_itk(path, dicom=fmt == "dicom")
    except VolumeError:
        raise
    except Exception as exc:  # library errors differ per format: report them all the same way
        raise VolumeError(
            path,
            f"cannot be read as {FORMAT_NAMES[fmt]} ({type(exc).__name__}: {exc}); "
            f"the file may be truncated, corrupt or not an image",
        ) from exc
    array = ensure_3d(raw.array, path, channel=channel, channel_axis=raw.channel_axis)
    return array, raw.affine, raw.metadata
