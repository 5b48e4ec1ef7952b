"""The one in-memory type every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


def file_stem(path: str | Path) -> str:
    """A file's name without its volume extension(s): ``a/scan.nii.gz`` -> ``scan``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".h5", ".hdf5", ".mha", ".mhd", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def affine_from_spacing(spacing: tuple[float, float, float]) -> np.ndarray:
    """Return a 4x4 voxel-to-world affine for an axis-aligned grid.

    Parameters
    ----------
    spacing : tuple of float
        Voxel size in millimetres, in array order (z, y, x).

    Returns
    -------
    numpy.ndarray
        4x4 affine mapping (z, y, x, 1) voxel indices to world millimetres.
    """
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = (float(s) for s in spacing)
    return affine


@dataclass
class Volume:
    """A 3D scan or label map with its geometry, optionally with several co-registered channels.

    Attributes
    ----------
    array : numpy.ndarray
        Voxel values, shape (z, y, x); a scan with C > 1 channels is (C, z, y, x). Label maps are
        integer arrays and always 3D.
    spacing : tuple of float
        Voxel size in millimetres, same axis order as ``array``.
    affine : numpy.ndarray
        4x4 matrix mapping array indices (z, y, x, 1) to world coordinates in millimetres.
        Readers convert the file's own convention (NIfTI's RAS on (i, j, k) = (x, y, z) order,
        NRRD's space directions, ITK's LPS) to this array order; writers convert back, so a
        written file overlays its source in ITK-SNAP or 3D Slicer.
    source : pathlib.Path or None
        File the volume was read from.
    metadata : dict
        Anything a writer needs to reproduce the file (e.g. ``"nifti_affine"``, ``"nrrd_header"``),
        plus free-form information.
    is_label : bool
        True for label maps (integer, non-negative).
    channel_names : tuple of str
        One name per channel for a (C, z, y, x) array (default ``"0"``, ``"1"``, ...); empty for a
        single-channel (z, y, x) volume.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    is_label: bool = False
    channel_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if np.ndim(self.array) == 4:
            n = int(np.shape(self.array)[0])
            names = tuple(str(c) for c in self.channel_names) or tuple(str(i) for i in range(n))
            if len(names) != n:
                raise ValueError(f"{len(names)} channel names {names} for {n} channels")
            self.channel_names = names
        elif self.channel_names:
            if len(self.channel_names) != 1:
                raise ValueError(f"{len(self.channel_names)} channel names for a single-channel volume")
            self.channel_names = ()
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if self.affine is None:
            self.affine = affine_from_spacing(self.spacing)
        self.affine = np.asarray(self.affine, dtype=float)
        if self.source is not None:
            self.source = Path(self.source)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the voxel array (z, y, x) (the channel axis left out)."""
        return tuple(self.array.shape[-3:]) if self.array.ndim == 4 else tuple(self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape (z, y, x), for single- and multi-channel volumes alike."""
        return tuple(self.array.shape[-3:])

    @property
    def num_channels(self) -> int:
        """Number of channels: ``C`` for a (C, z, y, x) array, else 1."""
        return int(self.array.shape[0]) if self.array.ndim == 4 else 1

    def channel(self, index: int) -> Volume:
        """Channel ``index`` as a single-channel volume on the same grid (the volume itself when C = 1)."""
        if self.num_channels == 1:
            if index not in (0, -1):
                raise IndexError(f"channel {index} of a single-channel volume")
            return self
        name = self.channel_names[index]
        return replace(self, array=self.array[index], channel_names=(), affine=self.affine.copy(),
                       metadata={**self.metadata, "channel_name": name})

    @property
    def name(self) -> str:
        """A short name: the source file name without its extension(s), or ``"volume"``."""
        if self.source is None:
            return str(self.metadata.get("name", "volume"))
        return file_stem(self.source)

    @property
    def translate(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0), for napari's ``translate``."""
        return tuple(float(t) for t in self.affine[:3, 3])  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, *, is_label: bool | None = None, **metadata: Any) -> Volume:
        """Return a volume on the same grid holding another array (e.g. a segmentation of this scan)."""
        if tuple(array.shape[-3:]) != self.shape[-3:]:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        meta = {**self.metadata, **metadata}
        names = self.channel_names if (array.ndim == 4 and array.shape[0] == self.num_channels) else ()
        return replace(
            self,
            array=array,
            metadata=meta,
            is_label=self.is_label if is_label is None else is_label,
            affine=self.affine.copy(),
            channel_names=names,
        )

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari layer on this volume's grid (scale, affine, metadata)."""
        rotation = self.affine[:3, :3] / np.asarray(self.spacing)[None, :]
        kwargs: dict[str, Any] = {
            "name": self.name,
            "scale": self.spacing,
            "translate": self.translate,
            "metadata": {"sscce_volume": self.geometry(), **{k: v for k, v in self.metadata.items()}},
        }
        if not np.allclose(rotation, np.eye(3), atol=1e-6):
            # non axis-aligned grids: napari applies `affine` after scale and translate
            # (world = affine @ (scale * index + translate)), so the rotation and the
            # translation both go into it
            rot = np.eye(4)
            rot[:3, :3] = rotation
            rot[:3, 3] = self.translate
            kwargs["affine"] = rot
            kwargs["translate"] = (0.0, 0.0, 0.0)
        return kwargs

    def geometry(self) -> dict[str, Any]:
        """Geometry as plain Python values (JSON-able): shape, spacing, affine, source."""
        geometry: dict[str, Any] = {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "affine": self.affine.tolist(),
            "source": str(self.source) if self.source else None,
        }
        if self.num_channels > 1:
            geometry["channel_names"] = list(self.channel_names)
        return geometry
