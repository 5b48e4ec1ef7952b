"""Voxel uncertainty maps of a two-network prediction and what to correct next.

Two maps describe how much to trust a segmentation:

- :func:`entropy` of the (mean) class distribution: high where the prediction is ambiguous;
- :func:`kl_divergence` between the two networks' distributions: high where they disagree.

Both are mapped to [0, 1] so that one colour map and one threshold fit every volume. Numpy versions work on
arrays of any layout (``axis`` is the class axis); for tensors, :data:`entropy_torch` and
:data:`kl_divergence_torch` are the training losses' functions (:mod:`napari_sscce.divergence`) with these
maps' defaults (class dimension 0, normalised, symmetric KL).
:func:`rank_regions` turns the maps into a ranked list of uncertain regions and :func:`rank_slices` into a
ranked list of slices, both ordered by the error they are expected to hold (the sum of the map over them);
:func:`volume_score` gives one active-learning score per volume.
"""

from __future__ import annotations

from napari_sscce.uncertainty.maps import (
    EPS,
    FOREGROUND_MARGIN,
    binary_reading,
    combined_uncertainty,
    dilated_foreground,
    entropy,
    entropy_torch,
    error_probability,
    kl_divergence,
    kl_divergence_torch,
)
from napari_sscce.uncertainty.regions import (
    DEFAULT_MAX_EXTENT,
    DEFAULT_MIN_THRESHOLD,
    DEFAULT_PERCENTILE,
    DEFAULT_THRESHOLD,
    Region,
    adaptive_threshold,
    expected_threshold,
    label_regions,
    rank_regions,
    resolve_threshold,
    split_large_components,
)
from napari_sscce.uncertainty.scans import volume_score
from napari_sscce.uncertainty.slices import STRATIFIED_NOISE, SliceScore, rank_slices, rank_slices_by_class

__all__ = [
    "DEFAULT_MAX_EXTENT",
    "DEFAULT_MIN_THRESHOLD",
    "DEFAULT_PERCENTILE",
    "DEFAULT_THRESHOLD",
    "EPS",
    "FOREGROUND_MARGIN",
    "Region",
    "SliceScore",
    "adaptive_threshold",
    "combined_uncertainty",
    "dilated_foreground",
    "entropy",
    "entropy_torch",
    "binary_reading",
    "error_probability",
    "expected_threshold",
    "kl_divergence",
    "kl_divergence_torch",
    "label_regions",
    "rank_regions",
    "rank_slices",
    "rank_slices_by_class",
    "STRATIFIED_NOISE",
    "resolve_threshold",
    "split_large_components",
    "volume_score",
]
