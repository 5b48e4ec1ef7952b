"""Scans with several co-registered channels (multi-sequence MRI) read into one :class:`Volume`.

Two layouts: a 4D NIfTI with the channels on its last axis, and one file per channel in nnU-Net's
convention (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...; channel names from a ``dataset.json``
``"channel_names"`` (v2) or ``"modality"`` (v1) next to the files or one folder above). A 4D file whose
fourth axis is time (a NIfTI time unit, or more than :data:`MAX_CHANNELS` entries) is refused as such.
Single-channel files are read exactly as :func:`napari_sscce.io.readers.read_volume` reads them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from napari_sscce.io import formats
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.geometry import affine_problem, spacing_of
from napari_sscce.io.readers import detect_format, read_volume
from napari_sscce.io.validate import check_same_grid, ensure_3d
from napari_sscce.io.volume import Volume

#: a fourth axis longer than this holds time points, not channels
MAX_CHANNELS = 8
#: nnU-Net's per-channel file names: ``<case>_<4 digits>.<ext>``
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})(?P<ext>\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$",
                           re.IGNORECASE)


def channel_files(path: str | os.PathLike) -> list[Path] | None:
    """The nnU-Net per-channel files of the case ``path`` belongs to, in channel order, or None.

    ``path`` may be any channel's file (``case_0001.nii.gz``) or the case prefix (``folder/case``).
    None when ``path`` is not named in that convention or its case has a single channel file (which is
    then an ordinary single-channel scan).

    Raises
    ------
    VolumeError
        When the channel numbers have a gap (e.g. ``_0000`` and ``_0002`` but no ``_0001``).
    """
    path = Path(path)
    match = CHANNEL_FILE.match(path.name)
    if match is not None:
        folder, case, ext = path.parent, match["case"], match["ext"]
    elif not path.exists() and path.parent.is_dir():
        folder, case, ext = path.parent, path.name, None
    else:
        return None
    found: dict[int, Path] = {}
    for item in sorted(folder.iterdir()):
        m = CHANNEL_FILE.match(item.name)
        if m and m["case"] == case and (ext is None or m["ext"].lower() == ext.lower()):
            found[int(m["index"])] = item
    if len(found) < 2:
        return None
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise VolumeError(folder / case, f"has channel files {sorted(found)} but no channel "
                                         f"{missing[0]:04d} ({case}_{missing[0]:04d}{ext or '.nii.gz'})")
    return [found[i] for i in sorted(found)]


def dataset_channel_names(folder: Path, count: int) -> tuple[str, ...] | None:
    """Channel names from a ``dataset.json`` in ``folder`` or its parent (nnU-Net v2 ``channel_names`` or
    v1 ``modality``, keys ``"0"``, ``"1"``, ...), or None when there is none or it names other channels."""
    for place in (folder, folder.parent):
        candidate = place / "dataset.json"
        if not candidate.is_file():
            continue
        try:
            with open(candidate, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            return None
        table = info.get("channel_names", info.get("modality")) if isinstance(info, dict) else None
        if not isinstance(table, dict):
            return None
        names = [table.get(str(i)) for i in range(count)]
        if len(table) != count or any(not isinstance(n, str) for n in names):
            return None
        return tuple(names)  # type: ignore[arg-type]
    return None


def read_channel_files(paths: list[Path], names: tuple[str, ...] | None = None) -> Volume:
    """Read one file per channel into one (C, z, y, x) :class:`Volume`.

    Every file is read with :func:`read_volume` (bounded as it is) and must lie on the first file's grid
    (shape, spacing, affine); the message names the file that does not.
    """
    volumes = [read_volume(p, is_label=False) for p in paths]
    first = volumes[0]
    for path, vol in zip(paths[1:], volumes[1:], strict=True):
        try:
            check_same_grid(first, vol, what=f"channel file {path.name}")
        except VolumeError as exc:
            raise VolumeError(path, f"is not on the grid of {paths[0].name}, the case's first channel: "
                                    f"{exc.problem}") from None
    if names is None:
        names = dataset_channel_names(paths[0].parent, len(paths)) or tuple(str(i) for i in range(len(paths)))
    dtype = np.result_type(*[v.array.dtype for v in volumes])
    array = np.stack([v.array.astype(dtype, copy=False) for v in volumes])
    metadata = {**first.metadata, "channel_files": [str(p) for p in paths]}
    return Volume(array=array, spacing=first.spacing, affine=first.affine, source=paths[0],
                  metadata=metadata, channel_names=tuple(names))


def _time_problem(metadata: dict, n: int) -> str | None:
    units = metadata.get("nifti_xyzt_units") or [None, None]
    time_unit = units[1] if len(units) > 1 else None
    if time_unit not in (None, "unknown"):
        return f"its fourth axis ({n} entries) is time (NIfTI time unit {time_unit!r})"
    if n > MAX_CHANNELS:
        return f"its fourth axis has {n} entries, more than the {MAX_CHANNELS} channels a scan may have"
    return None


def _nifti_channels(path: Path) -> int:
    """Entries on a NIfTI file's fourth axis from its header alone (1 for 3D files and unreadable headers)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # read_volume reports unreadable files
        return 1
    return int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1


def read_multichannel(path: str | os.PathLike, *, is_label: bool | None = None) -> Volume:
    """Read a scan that may have several channels.

    A 4D NIfTI (channels on its last axis) gives a (C, z, y, x) volume; nnU-Net per-channel files
    (``path`` one of them or the case prefix) give one volume with the ``dataset.json`` names; anything
    else is read by :func:`read_volume` unchanged (so a 3D scan is a 3D volume).

    Raises
    ------
    VolumeError
        Files that do not share the grid, gaps in the channel numbers, and 4D files whose fourth axis
        holds time points rather than channels.
    """
    path = Path(path)
    if not is_label:
        files = channel_files(path)
        if files is not None:
            return read_channel_files(files)
    if is_label or detect_format(path) != "nifti" or not path.is_file() or _nifti_channels(path) <= 1:
        return read_volume(path, is_label=is_label)  # one channel: read exactly as before (and once)
    try:
        raw = formats.read_nifti(path)
    except VolumeError:
        raise
    except Exception:  # read_volume gives its message for files nibabel cannot read
        return read_volume(path, is_label=is_label)
    array = raw.array
    if array.ndim > 3:  # (z, y, x, 1) and the like stay single-channel
        keep = [i for i, n in enumerate(array.shape) if n != 1 or i < 3]
        array = array.reshape([array.shape[i] for i in keep])
    if array.ndim != 4 or array.shape[3] == 1:
        return read_volume(path, is_label=is_label)
    n = int(array.shape[3])
    problem = _time_problem(raw.metadata, n)
    if problem is not None:
        raise VolumeError(path, f"has time points, not channels: {problem}; napari-sscce segments one "
                                f"time point at a time (`--channel N` with N in 0..{n - 1})")
    ensure_3d(array[..., 0], path)
    problem = affine_problem(raw.affine)
    if problem is not None:
        raise VolumeError(path, f"{problem}; napari-sscce cannot place it in the world or resample it")
    channels = np.ascontiguousarray(np.moveaxis(array, 3, 0))
    names = dataset_channel_names(path.parent, n) or tuple(str(i) for i in range(n))
    return Volume(array=channels, affine=raw.affine, spacing=spacing_of(raw.affine), source=path,
                  metadata={"format": "nifti", **raw.metadata}, channel_names=names)
