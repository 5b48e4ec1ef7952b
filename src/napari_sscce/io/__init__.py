"""Readers, writers, datasets and sample data. Everything returns or takes a :class:`Volume`."""

from napari_sscce.io.volume import Volume, affine_from_spacing

__all__ = ["Volume", "affine_from_spacing"]
