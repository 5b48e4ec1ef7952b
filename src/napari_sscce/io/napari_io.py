"""npe2 reader and writers: files <-> napari layers on the scan's millimetre grid.

Layers get ``**volume.layer_kwargs()`` (scale = spacing, translate / affine from the file), and
keep the volume's geometry in ``metadata["sscce_volume"]`` so that saving a layer writes a file
that overlays its source scan in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.io.channels import read_multichannel
from napari_sscce.io.formats import h5_has_dataset
from napari_sscce.io.geometry import spacing_of
from napari_sscce.io.readers import detect_format, looks_like_label_file, read_image_label, read_volume
from napari_sscce.io.sample_data import layer_data
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume

LayerData = tuple[Any, dict, str]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return :func:`read_layers` when every path is a 3D file or DICOM folder we read, else None.

    The check is cheap (extension, HDF5 dataset names, TIFF page shapes) so that napari can offer
    the path to other readers: 2D TIFFs, HDF5 files without an ``image`` dataset, folders without
    DICOM files and unknown extensions are declined.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read_layers


def can_read(path: str | os.PathLike) -> bool:
    """True when :func:`read_layers` should handle ``path``."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt is None or not path.exists():
        return False
    if path.is_dir():
        return _is_dicom_folder(path)
    if fmt == "h5":
        return h5_has_dataset(path, "image")
    if fmt == "tiff":
        return _is_3d_tiff(path)
    return True


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read files into napari layers: scans -> Image, label maps -> Labels; an LA ``.h5`` gives both.

    A file is a label map when it sits in a ``labels``/``labelsTr``/``masks`` folder or is named
    ``*_seg*``/``*label*`` and holds non-negative integers (see :func:`read_volume`). A multi-channel scan
    (a 4D NIfTI, channels last; :func:`napari_sscce.io.channels.read_multichannel`) gives one Image layer per
    channel named ``"<scan> <channel name>"`` on one grid, which is how the Segment widget finds a
    multi-channel model's channels.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        if detect_format(p) == "h5":
            image, label = read_image_label(p)
            layers += layer_data(image, label)
        else:
            volume = read_multichannel(p) if not looks_like_label_file(p) else read_volume(p)
            if volume.is_label:
                layers.append((volume.array, volume.layer_kwargs(), "labels"))
            elif volume.channel_names:
                for i, name in enumerate(volume.channel_names):
                    one = volume.channel(i)
                    one.metadata["sample_name"] = f"{volume.name} {name}"  # the layer's name
                    layers += layer_data(one, None)
            else:
                layers += layer_data(volume, None)
    return layers


def volume_from_layer(data: Any, meta: dict, *, is_label: bool) -> Volume:
    """Rebuild a :class:`Volume` from a layer's data and attributes (``layer.as_layer_data_tuple()[1]``).

    The geometry stored by :meth:`Volume.layer_kwargs` in ``metadata["sscce_volume"]`` is used when
    it still matches the layer (same shape, scale and translate); otherwise the affine is rebuilt
    from the layer's ``scale``, ``translate``, ``rotate``, ``shear`` and ``affine``.
    """
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    array = np.asarray(data)
    metadata = dict(meta.get("metadata") or {})
    geometry = metadata.pop("sscce_volume", None)
    layer_matrix = _layer_affine(meta, array.ndim)
    affine = layer_matrix
    source = None
    if geometry and tuple(geometry.get("shape", ())) == array.shape:
        stored = Volume(array, affine=np.asarray(geometry["affine"], dtype=float))
        stored_matrix = _layer_affine(stored.layer_kwargs(), array.ndim)
        if np.allclose(stored_matrix, layer_matrix, atol=1e-6):
            affine = stored.affine  # exact file geometry, unaffected by napari's float round trips
            source = geometry.get("source")
    metadata.pop("name", None)
    return Volume(array, spacing=spacing_of(affine), affine=affine, source=source, metadata=metadata,
                  is_label=is_label)


def _layer_affine(meta: dict, ndim: int) -> np.ndarray:
    """napari's data-to-world matrix of a layer: ``affine @ (translate . rotate . shear . scale)``."""
    from napari.utils.transforms import Affine

    physical = Affine(
        scale=meta.get("scale", [1.0] * ndim),
        translate=meta.get("translate", [0.0] * ndim),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=ndim,
    ).affine_matrix
    extra = meta.get("affine")
    if extra is None:
        return physical
    extra = extra.affine_matrix if hasattr(extra, "affine_matrix") else np.asarray(extra, dtype=float)
    return extra @ physical


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: save a Labels layer as NIfTI / NRRD (uint8 / uint16) on its scan's geometry."""
    return [str(write_volume(volume_from_layer(data, meta, is_label=True), path))]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: save an Image layer as NIfTI / NRRD (float32) on its geometry."""
    return [str(write_volume(volume_from_layer(data, meta, is_label=False), path))]


def _is_dicom_folder(folder: Path, probe: int = 20) -> bool:
    for i, entry in enumerate(sorted(folder.iterdir())):
        if i >= probe:
            break
        if entry.is_file():
            if entry.suffix.lower() == ".dcm":
                return True
            try:
                with open(entry, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def _is_3d_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            spatial = [n for n, ax in zip(series.shape, series.axes.upper(), strict=True)
                       if ax not in "CS" and n > 1]
    except Exception:  # noqa: BLE001 - unreadable: let napari try other readers
        return False
    return len(spatial) >= 3
