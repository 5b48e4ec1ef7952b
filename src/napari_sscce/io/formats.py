"""One low-level reader per file format, each returning a :class:`RawVolume` in (z, y, x) order.

Used by :func:`napari_sscce.io.readers.read_volume`, which adds channel selection, label
casting and uniform error messages. Library exceptions propagate from here on purpose.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.io import bounded, geometry
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.validate import ensure_3d

#: voxel size of the LA 2018 h5 files (not stored in them), in mm
LA_SPACING = 0.625
#: ImageJ / TIFF length units -> millimetres
_UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "m": 1000.0, "micron": 1e-3, "um": 1e-3,
               "\u00b5m": 1e-3, "\\u00b5m": 1e-3, "nm": 1e-6}


@dataclass
class RawVolume:
    """What a format reader returns: array with spatial axes (z, y, x) (maybe plus a channel axis),
    the :class:`Volume` affine, writer metadata, and which axis holds channels (None: guess)."""

    array: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    channel_axis: int | None = None


#: deflate (gzip, zlib) cannot compress better than about 1032:1; a header declaring more data than that
#: is wrong (or hostile): refused before anything is allocated
DEFLATE_MAX_RATIO = 1100
#: a volume and one reordered copy are in memory while it is read
READ_COPIES = 2


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (:func:`napari_sscce.io.bounded.available_memory`)."""
    return bounded.available_memory()


def _gib(n: float) -> str:
    return bounded.human_bytes(n)


def check_declared_size(
    path: Path,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    data_offset: int | None = None,
    compression: str | None = None,
    memory_itemsize: int | None = None,
) -> None:
    """Refuse a file whose header declares more data than it can hold or than memory can take.

    Called by the format readers after reading the header and before allocating the array.

    Parameters
    ----------
    path : pathlib.Path
        The file (named in the message).
    shape, dtype
        What the header declares.
    data_offset : int, optional
        For uncompressed data stored in ``path`` itself: where it starts; the file must then hold
        ``data_offset + declared bytes``.
    compression : str, optional
        ``"deflate"`` (gzip / zlib): the file must be at least declared bytes / :data:`DEFLATE_MAX_RATIO`.
    memory_itemsize : int, optional
        Bytes per voxel in memory when they differ from ``dtype`` (e.g. scaled NIfTI data become float).

    Raises
    ------
    VolumeError
        Naming the file, the declared shape and size, and the file size or available memory.
    """
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise VolumeError(path, f"declares a negative size {tuple(dims)}")
    voxels = int(np.prod(dims, dtype=object)) if dims else 0
    declared = voxels * np.dtype(dtype).itemsize
    grid = " x ".join(map(str, dims))
    what = f"its header declares {grid} {np.dtype(dtype).name} voxels ({_gib(declared)})"
    size = path.stat().st_size if path.is_file() else None
    if size is not None and data_offset is not None and compression is None and size < data_offset + declared:
        raise VolumeError(path, f"is truncated or its header is wrong: {what} but the file holds only "
                                f"{_gib(size)}")
    if size is not None and compression == "deflate" and declared > DEFLATE_MAX_RATIO * size + 2**20:
        raise VolumeError(path, f"is truncated or its header is wrong: {what}, more than a {_gib(size)} "
                                f"compressed file can hold")
    needed = voxels * (memory_itemsize or np.dtype(dtype).itemsize) * READ_COPIES
    free = bounded.max_read_bytes(copies=1)
    if free is not None and needed > free:
        cap = bounded.memory_cap()
        limit = "available" if cap is None or cap > (available_memory() or 0) else \
            f"allowed by {bounded.MAX_VOLUME_ENV}"
        raise VolumeError(path, f"is too large to read: {what}; reading it needs about {_gib(needed)} of "
                                f"memory and {_gib(free)} are {limit}")


def read_nifti(path: Path) -> RawVolume:
    """NIfTI: data (x, y, z[, c]) on RAS+ -> (z, y, x[, c]); keeps the file's affine and codes."""
    import nibabel as nib

    img = nib.load(str(path))
    header = img.header
    scaled = any(np.isfinite(v) and v not in (0.0, 1.0) for v in (header["scl_slope"],)) or (
        np.isfinite(header["scl_inter"]) and header["scl_inter"] != 0
    )
    check_declared_size(
        path, img.shape, header.get_data_dtype(),
        data_offset=int(header.get("vox_offset", 0)) if not str(path).lower().endswith(".gz") else None,
        compression="deflate" if str(path).lower().endswith(".gz") else None,
        memory_itemsize=8 if scaled else None,
    )
    data = np.asarray(img.dataobj)  # applies scl_slope / scl_inter
    if data.ndim < 3:
        ensure_3d(data.T, path)
    order = (2, 1, 0, *range(3, data.ndim))
    array = np.ascontiguousarray(data.transpose(order))
    affine_ras = np.asarray(img.affine, dtype=float)
    metadata = {
        "nifti_affine": affine_ras.tolist(),
        "nifti_qform_code": int(header["qform_code"]),
        "nifti_sform_code": int(header["sform_code"]),
        "nifti_xyzt_units": list(header.get_xyzt_units()),
        "source_dtype": str(data.dtype),
    }
    return RawVolume(array, geometry.ras_xyz_to_volume(affine_ras), metadata, channel_axis=3)


def read_nrrd(path: Path) -> RawVolume:
    """NRRD: space directions -> affine (converted from the file's named space to RAS), space origin."""
    data, header = _read_nrrd_data(path)  # array axes reversed from header order
    ndim = data.ndim
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=float)
        spatial = [i for i in range(ndim) if np.all(np.isfinite(directions[i]))]
    else:
        spatial = list(range(ndim))
    if ndim < 3 or len(spatial) < 3:
        ensure_3d(data, path)
    nonspatial = [i for i in range(ndim) if i not in spatial]
    channel_axis = (ndim - 1 - nonspatial[0]) if nonspatial else None
    spatial = spatial[:3]
    affine_space = np.eye(4)
    if directions is not None:
        affine_space[: directions.shape[1], :3] = directions[spatial].T
    else:
        spacings = np.asarray(header.get("spacings", [1.0] * ndim), dtype=float)
        spacings = np.where(np.isfinite(spacings), spacings, 1.0)
        affine_space[:3, :3] = np.diag(spacings[spatial])
    origin = header.get("space origin")
    if origin is not None:
        affine_space[: len(origin), 3] = np.asarray(origin, dtype=float)
    space = geometry.canonical_space(header.get("space"))
    affine_ras = geometry.space_to_ras(space) @ affine_space
    metadata = {"nrrd_space": space, "source_dtype": str(data.dtype)}
    affine = geometry.ras_xyz_to_volume(affine_ras)
    return RawVolume(np.ascontiguousarray(data), affine, metadata, channel_axis)


_NRRD_COMPRESSED = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _read_nrrd_data(path: Path) -> tuple[np.ndarray, dict]:
    """Read a NRRD file's header and data within bounds; returns ``(data in C order, header)``.

    The declared size is checked against the file (raw data) and memory before anything is read; a
    detached ``data file`` must be a regular file in the header's folder; gzip / bzip2 data are inflated
    chunk by chunk and refused as soon as they exceed the declared size (bombs) or when they do not inflate.
    """
    import io

    import nrrd

    with open(path, "rb") as fh:
        header = nrrd.read_header(fh)
        header_end = fh.tell()
    sizes = tuple(int(n) for n in header.get("sizes", ()))
    dtype = nrrd.reader._determine_datatype(header)
    encoding = str(header.get("encoding", "raw")).lower()
    data_name = header.get("data file", header.get("datafile"))
    data_path = path if data_name is None else bounded.contained_data_file(path, str(data_name), "data file")
    detached = data_name is not None
    compression = _NRRD_COMPRESSED.get(encoding)
    offset = (0 if detached else header_end) if encoding == "raw" else None
    line_skip = int(header.get("lineskip", header.get("line skip", 0)) or 0)
    byte_skip = int(header.get("byteskip", header.get("byte skip", 0)) or 0)
    if encoding == "raw" and byte_skip > 0 and offset is not None:
        offset += byte_skip
    exact = line_skip == 0 and byte_skip >= 0
    check_declared_size(data_path, sizes, dtype, data_offset=offset if exact else None,
                        compression="deflate" if compression == "gzip" else None)
    if compression is None:
        if detached:
            return nrrd.read_data(header, None, str(path), index_order="C"), header
        with open(path, "rb") as fh:
            fh.seek(header_end)
            return nrrd.read_data(header, fh, str(path), index_order="C"), header
    declared = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize
    if byte_skip < -1 or line_skip < 0:
        raise VolumeError(path, f"has an invalid byte skip {byte_skip} or line skip {line_skip}")
    expected = declared + max(byte_skip, 0)
    with open(data_path, "rb") as fh:
        if not detached:
            fh.seek(header_end)
        for _ in range(line_skip):
            fh.readline()
        if byte_skip == -1:  # the data are the last bytes of an inflated stream of unknown length
            raise VolumeError(path, "uses 'byte skip: -1' with compressed data, which napari-sscce does not "
                                    "read (no bound on what it inflates to)")
        payload = bounded.inflate_bounded(path, fh, compression, expected)
    plain = dict(header)
    plain.pop("data file", None)
    plain.pop("datafile", None)
    plain.pop("line skip", None)
    plain.pop("lineskip", None)
    plain["encoding"] = "raw"
    data = nrrd.read_data(plain, io.BytesIO(payload), str(path), index_order="C")
    return data, header


def describe_h5(path: Path) -> str:
    """A one-line listing of an HDF5 file's datasets with their shapes and dtypes."""
    import h5py

    items: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: items.append(f"'{name}' {obj.shape} {obj.dtype}")
                     if isinstance(obj, h5py.Dataset) else None)
    return ", ".join(items) if items else "no datasets"


def h5_has_dataset(path: Path, key: str) -> bool:
    """True when the HDF5 file has a dataset ``key`` (False for unreadable files)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if isinstance(f.get(key, getlink=True), h5py.ExternalLink):
                return True  # not followed here: read_h5 checks where it points before opening it
            return isinstance(f.get(key), h5py.Dataset)
    except OSError:
        return False


def read_h5(path: Path, key: str = "image") -> RawVolume:
    """LA layout: dataset ``key`` stored (x, y, z); spacing from a ``spacing`` attribute of the dataset
    or the file (in the stored (x, y, z) order), else 0.625 mm isotropic as in the LA 2018 set."""
    import h5py

    with h5py.File(path, "r") as f:
        _check_h5_links(path, f, key)
        dataset = f.get(key)
        if not isinstance(dataset, h5py.Dataset):
            listing = describe_h5(path)
            raise VolumeError(
                path,
                f"has no '{key}' dataset (it holds: {listing}); napari-sscce reads HDF5 files in the "
                f"LA layout with an 'image' dataset (and a 'label' dataset) stored (x, y, z)",
            )
        _check_h5_storage(path, f, key, dataset)
        check_declared_size(path, dataset.shape, dataset.dtype)
        data = dataset[()]
        spacing_attr = dataset.attrs.get("spacing", f.attrs.get("spacing"))
    if data.ndim < 3:
        ensure_3d(data, path)
    channel_axis = None
    if data.ndim == 4:  # stored (x, y, z) plus a channel axis: pick it before reordering
        channel_axis = int(np.argmin(data.shape))
    spacing_xyz = np.full(3, LA_SPACING) if spacing_attr is None else np.asarray(spacing_attr, float).ravel()
    if spacing_xyz.size == 1:
        spacing_xyz = np.repeat(spacing_xyz, 3)
    if data.ndim == 3:
        data = data.transpose(2, 1, 0)
    elif data.ndim == 4:
        spatial = [i for i in range(4) if i != channel_axis]
        data = data.transpose(spatial[2], spatial[1], spatial[0], channel_axis)
        channel_axis = 3
    affine_ras = np.diag([*spacing_xyz[:3], 1.0])
    metadata = {"h5_dataset": key, "source_dtype": str(data.dtype)}
    if spacing_attr is None:  # said to the person once (widgets), not silently taken
        metadata["spacing_assumed"] = f"{LA_SPACING:g} mm, the voxel size of the LA 2018 .h5 files"
    affine = geometry.ras_xyz_to_volume(affine_ras)
    return RawVolume(np.ascontiguousarray(data), affine, metadata, channel_axis)


def _check_h5_links(path: Path, f, key: str) -> None:
    """Refuse an external link on the way to dataset ``key`` unless its file lies in ``path``'s folder
    (checked before the link is followed)."""
    import h5py

    parts = [p for p in key.split("/") if p]
    node = "/"
    for part in parts:  # every link on the way to the dataset
        node = node.rstrip("/") + "/" + part
        link = f.get(node, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            bounded.contained_data_file(path, link.filename, f"external link '{node}' ->")
        if link is None:
            return


def _check_h5_storage(path: Path, f, key: str, dataset) -> None:
    """Refuse an HDF5 dataset whose data live in another file outside ``path``'s folder.

    Virtual datasets are refused unless every source file resolves inside the folder; external raw
    storage the same (and each must be a regular file). Nothing is read from a refused file.
    """
    if dataset.is_virtual:
        for source in dataset.virtual_sources():
            name = source.file_name
            if name in (".", ""):
                continue
            bounded.contained_data_file(path, name, f"virtual dataset '{key}' source")
    for entry in dataset.external or ():
        name = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
        inside = bounded.contained_data_file(path, name, f"external storage of '{key}'")
        if Path(name).resolve() != inside:  # HDF5 opens relative external files from the working folder
            raise VolumeError(path, f"its external storage of '{key}' names {name!r}, which HDF5 would open "
                                    f"from the working folder {Path.cwd()}, not next to the file; refused")


def read_itk(path: Path, dicom: bool = False) -> RawVolume:
    """MetaImage or DICOM via SimpleITK; ITK's (x, y, z) on LPS+ -> (z, y, x) on RAS (reversed)."""
    import SimpleITK as sitk

    metadata: dict[str, Any] = {}
    if dicom:
        files, series_id, n_series = _dicom_series_files(path)
        check_slice_positions(path, files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
        metadata.update(dicom_series_id=series_id, dicom_series_count=n_series, dicom_files=len(files))
    else:
        _check_itk_size(path)
        image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, components]) or (t, z, y, x)
    dim = image.GetDimension()
    if dim < 3:
        ensure_3d(array, path, channel_axis=-1 if image.GetNumberOfComponentsPerPixel() > 1 else None)
    channel_axis = -1 if image.GetNumberOfComponentsPerPixel() > 1 else (0 if dim == 4 else None)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    affine_lps = geometry.itk_affine(image.GetSpacing()[:3], image.GetOrigin()[:3], direction)
    metadata["source_dtype"] = str(array.dtype)
    return RawVolume(array, geometry.lps_xyz_to_volume(affine_lps), metadata, channel_axis)


def _check_itk_size(path: Path) -> None:
    """Declared size of a MetaImage file against memory; its data file and compressed payload checked.

    A detached ``ElementDataFile`` must be a regular file in the header's folder (never ``/dev/zero`` or a
    file elsewhere); uncompressed data must be as long as declared; compressed data must inflate (bounded)
    to exactly the declared size, else the file is refused rather than read as zeros or stale memory.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    shape = (*reader.GetSize(), reader.GetNumberOfComponents())
    try:
        itemsize = sitk.Image([1] * len(reader.GetSize()), reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        itemsize = 8
    dtype = np.dtype(f"u{itemsize}") if itemsize in (1, 2, 4, 8) else np.float64
    check_declared_size(path, shape, dtype)
    fields, data_start = _metaimage_header(path)
    name = fields.get("elementdatafile", "LOCAL")
    local = name.upper() == "LOCAL"
    data_path = path if local else bounded.contained_data_file(path, name, "ElementDataFile")
    start = data_start if local else 0
    header_size = fields.get("headersize")
    if header_size is not None and header_size.lstrip("-").isdigit() and int(header_size) > 0:
        start += int(header_size)
    declared = int(np.prod(shape, dtype=object)) * itemsize
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if not compressed:
        if header_size is None or int(header_size) >= 0:
            check_declared_size(data_path, shape, dtype, data_offset=start)
        return
    with open(data_path, "rb") as fh:
        fh.seek(start)
        bounded.inflate_bounded(path, fh, "zlib", declared)


def _metaimage_header(path: Path, limit: int = 1 << 16) -> tuple[dict[str, str], int]:
    """The ``Key = Value`` fields of a MetaImage header (keys lower-case) and where its data start."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        while fh.tell() < limit:
            line = fh.readline()
            if not line:
                break
            key, _, value = line.decode("latin-1").partition("=")
            key = key.strip().lower()
            fields[key] = value.strip()
            if key == "elementdatafile":
                break
        return fields, fh.tell()


def _dicom_series_files(path: Path) -> tuple[list[str], str, int]:
    """File names of the DICOM series in a folder (the largest one), or of the series holding a file.

    A folder with several series: the largest is read and a :class:`DicomSeriesWarning` says which one
    (UID, description, number of files) and how to read another (open one of its files, listed).
    """
    import SimpleITK as sitk

    folder = path if path.is_dir() else path.parent
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise VolumeError(path, "holds no DICOM series (and is not a file napari-sscce reads)")
    series = {sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in ids}
    if path.is_dir():
        chosen = max(series, key=lambda sid: len(series[sid]))
        if len(series) > 1:
            warnings.warn(_series_message(path, series, chosen), DicomSeriesWarning, stacklevel=4)
    else:
        chosen = next((sid for sid, names in series.items() if any(Path(n).name == path.name for n in names)),
                      ids[0])
    return series[chosen], chosen, len(ids)


#: slice gaps may differ from their median by this fraction (dcm2niix's tolerance is similar)
SLICE_GAP_RTOL = 0.05


def check_slice_positions(path: Path, files: list[str]) -> None:
    """Refuse a DICOM series whose slice positions are duplicated or not uniformly spaced.

    Positions are Image Position (Patient) projected on the slice normal (from Image Orientation
    (Patient)), as dcm2niix checks them: stacking duplicated positions would invent a spacing, and
    unequal gaps (missing slices, a variable slice spacing) would put the slices in the wrong places.
    Series without positions (one file, secondary captures) are left to SimpleITK.

    Raises
    ------
    VolumeError
        Naming the folder, the duplicated position and its files, or the gaps.
    """
    import SimpleITK as sitk

    if len(files) < 2:
        return
    positions: list[tuple[float, str]] = []
    normal = None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            pos = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                orient = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(orient[:3], orient[3:6])
        except (RuntimeError, ValueError):
            return  # no usable position tags: nothing to check
        positions.append((float(np.dot(normal, pos[:3])), name))
    positions.sort()
    where = np.array([p for p, _ in positions])
    gaps = np.diff(where)
    dup = np.flatnonzero(gaps <= 1e-4)
    if dup.size:
        k = int(dup[0])
        names = f"{Path(positions[k][1]).name} and {Path(positions[k + 1][1]).name}"
        raise VolumeError(path, f"{dup.size + 1} of its {len(files)} DICOM slices share a position "
                                f"(e.g. {names} at {where[k]:.4g} mm along the slice normal): duplicated or "
                                "mixed acquisitions; stacking them would invent a slice spacing. Put each "
                                "acquisition in its own folder")
    median = float(np.median(gaps))
    off = np.abs(gaps - median) > SLICE_GAP_RTOL * median
    if off.any():
        k = int(np.flatnonzero(off)[0])
        raise VolumeError(path, f"its DICOM slices are not uniformly spaced: gaps from {gaps.min():.4g} to "
                                f"{gaps.max():.4g} mm (median {median:.4g}), e.g. {gaps[k]:.4g} mm after "
                                f"{Path(positions[k][1]).name}; slices are missing or the spacing varies")


class DicomSeriesWarning(UserWarning):
    """A DICOM folder held several series; the message names the one read and how to read another."""


def _series_description(first_file: str) -> str:
    """The Series Description (0008|103e) of a DICOM file, or ``""``."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(first_file)
        reader.ReadImageInformation()
        key = "0008|103e"
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    except RuntimeError:
        return ""


def _series_message(folder: Path, series: dict[str, list[str]], chosen: str) -> str:
    def describe(sid: str) -> str:
        text = _series_description(series[sid][0])
        return f"{sid}{f' ({text!r})' if text else ''}, {len(series[sid])} files"

    others = "; ".join(f"{describe(sid)}: open {series[sid][0]}" for sid in series if sid != chosen)
    return (f"{folder}: holds {len(series)} DICOM series; reading the largest, {describe(chosen)}. "
            f"To read another, open one of its files instead of the folder: {others}")


def read_tiff(path: Path) -> RawVolume:
    """3D TIFF: (z, y, x) stack; z spacing from ImageJ ``spacing``, y/x from the resolution tags."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        check_declared_size(path, series.shape, series.dtype)
        data = series.asarray()
        imagej = tif.imagej_metadata or {}
        page = tif.pages[0]
        res = [_resolution(page.tags.get(name)) for name in ("YResolution", "XResolution")]
        unit_tag = page.tags.get("ResolutionUnit")
        res_unit = int(unit_tag.value) if unit_tag is not None else 1
    channel_axis = next((axes.index(c) for c in "CS" if c in axes), None)
    if data.ndim - (channel_axis is not None) < 3:
        ensure_3d(data if channel_axis is None else np.take(data, 0, axis=channel_axis), path)
    unit = str(imagej.get("unit", "")).strip().lower()
    if unit:
        to_mm = _UNIT_TO_MM.get(unit, 1.0)
    else:
        to_mm = {2: 25.4, 3: 10.0}.get(res_unit, 1.0)  # inch, centimetre; none: treat as mm
    yx = [to_mm / r if r and r > 0 else 1.0 for r in res]
    if not imagej and res_unit == 1 and all(r in (None, 1.0) for r in res):
        yx = [1.0, 1.0]
    z = float(imagej.get("spacing", 1.0)) * (to_mm if unit else 1.0)
    affine = np.diag([z, yx[0], yx[1], 1.0])
    metadata = {"tiff_axes": axes, "tiff_unit": unit or None, "source_dtype": str(data.dtype)}
    return RawVolume(np.ascontiguousarray(data), affine, metadata, channel_axis)


def _resolution(tag) -> float | None:
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else None
    return float(value)
