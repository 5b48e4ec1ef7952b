"""Write a :class:`Volume` to NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``), atomically.

The file gets the volume's affine converted back to the format's convention (exactly the source
file's matrix for a volume read from NIfTI or NRRD), so a saved segmentation overlays the scan it
was computed from in ITK-SNAP or 3D Slicer. Label maps are written as uint8 (or uint16 when labels
exceed 255), scans as float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_sscce.atomic import atomic_path
from napari_sscce.io import geometry
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.validate import as_label_array, ensure_3d
from napari_sscce.io.volume import Volume

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
#: NRRD space used when the volume did not come from an NRRD file (3D Slicer's own choice)
DEFAULT_NRRD_SPACE = "left-posterior-superior"


def output_suffix(path: str | os.PathLike) -> str:
    """Return the supported suffix of ``path`` (``".nii.gz"``, ``".nii"``, ``".nrrd"``).

    Raises
    ------
    VolumeError
        For any other extension.
    """
    name = Path(path).name.lower()
    for suffix in WRITE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise VolumeError(path, f"cannot write this file type; use one of {', '.join(WRITE_SUFFIXES)}")


def _file_array(volume: Volume, path: Path) -> np.ndarray:
    if not volume.is_label and np.ndim(volume.array) == 4 and volume.channel_names:
        return np.asarray(volume.array, dtype=np.float32)  # (C, z, y, x): a 4D NIfTI, channels last
    array = ensure_3d(volume.array, path)
    if volume.is_label:
        array = as_label_array(array, path)
        if array.dtype.itemsize > 2:
            raise VolumeError(path, f"labels up to {int(array.max())} do not fit uint16")
        return array
    return array.astype(np.float32, copy=False)


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path`` (format from the extension) atomically.

    Parameters
    ----------
    volume : Volume
        Scan or label map; ``volume.is_label`` picks the dtype (uint8/uint16 vs float32).
    path : path-like
        Destination ending in ``.nii.gz``, ``.nii`` or ``.nrrd``; parent folders are created.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    suffix = output_suffix(path)
    array = _file_array(volume, path)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".nrrd":
            if array.ndim == 4:
                raise VolumeError(path, "a multi-channel scan is written as NIfTI (.nii.gz), not NRRD")
            _write_nrrd(volume, array, tmp)
        else:
            _write_nifti(volume, array, tmp)
    return path


def _write_nifti(volume: Volume, array: np.ndarray, tmp: Path) -> None:
    import nibabel as nib

    affine = geometry.volume_to_ras_xyz(volume.affine)
    channels = array.ndim == 4
    order = (3, 2, 1, 0) if channels else (2, 1, 0)  # (C, z, y, x) -> (x, y, z, C); (z, y, x) -> (x, y, z)
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(order)), affine)
    meta = volume.metadata
    qcode = int(meta.get("nifti_qform_code", 1) or 0)
    scode = int(meta.get("nifti_sform_code", 1) or 0)
    if qcode == 0 and scode == 0:
        qcode = scode = 1  # keep the geometry visible to viewers
    img.set_sform(affine, code=scode)
    img.set_qform(affine, code=qcode)
    units = meta.get("nifti_xyzt_units") or ("mm", "sec")
    if channels:
        units = (units[0], "unknown")  # the fourth axis holds channels, not time points
    img.header.set_xyzt_units(*units)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(tmp))


def _write_nrrd(volume: Volume, array: np.ndarray, tmp: Path) -> None:
    import nrrd

    space = volume.metadata.get("nrrd_space") or DEFAULT_NRRD_SPACE
    to_space = np.linalg.inv(geometry.space_to_ras(space))
    affine = to_space @ geometry.volume_to_ras_xyz(volume.affine)
    header = {
        "space": space,
        "space directions": affine[:3, :3].T,  # one row per file axis (x, y, z)
        "space origin": affine[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(tmp), np.ascontiguousarray(array), header, index_order="C")
