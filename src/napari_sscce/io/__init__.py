"""Readers, writers, datasets and sample data. Everything returns or takes a :class:`Volume`."""

from napari_sscce.io.datasets import Case, VolumeDataset, open_dataset
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import read_image_label, read_volume
from napari_sscce.io.volume import Volume, affine_from_spacing
from napari_sscce.io.writers import write_volume

__all__ = [
    "Case",
    "Volume",
    "VolumeDataset",
    "VolumeError",
    "affine_from_spacing",
    "open_dataset",
    "read_image_label",
    "read_volume",
    "write_volume",
]
