"""The ranking as files, for headless users and batch active learning (``sscce predict --regions``).

Beside a scan's maps: ``<name>_regions.nii.gz`` (voxel value k = the region ranked k, 0 elsewhere, on the
scan's grid) and ``<name>_regions.json``::

    {"source": ..., "shape": [z, y, x], "spacing": [...], "expected_errors": 1234.5, "scan_score": 0.31,
     "threshold": 0.87,
     "regions": [{"rank": 1, "expected_errors": ..., "centroid": [z, y, x], "bbox": [...], ...}, ...],
     "slices": [{"axis": 0, "index": z, "expected_errors": ..., ...}, ...]}

Axes are the array's (z, y, x); ``"expected_errors"`` is always the sum of
:func:`~napari_sscce.uncertainty.maps.error_probability` over the region, slice or scan. For a folder of
scans, :func:`rank_scans` orders their reports by expected errors ("which scan next").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_json
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.uncertainty.maps import binary_reading, combined_uncertainty, error_probability
from napari_sscce.uncertainty.regions import label_regions, resolve_threshold
from napari_sscce.uncertainty.scans import volume_score
from napari_sscce.uncertainty.slices import rank_slices

REGIONS_SUFFIX = "_regions.nii.gz"
REGIONS_JSON_SUFFIX = "_regions.json"
#: ranked regions and slices written per scan (the rest score lower than these)
MAX_REGIONS = 50
MAX_SLICES = 50


def ranking_report(
    labels: np.ndarray,
    entropy: np.ndarray,
    kl: np.ndarray | None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    axis: int = 0,
    max_regions: int = MAX_REGIONS,
    max_slices: int = MAX_SLICES,
    source: str | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ranked regions (label image) and the report of one segmented scan, with the product's defaults.

    Parameters
    ----------
    labels, entropy, kl : ndarray
        The prediction's label map and uncertainty maps (z, y, x); ``kl`` may be None.
    spacing : sequence of float
        Voxel size in mm (z, y, x).
    axis : int
        Axis the ranked slices are orthogonal to (0 = z, napari's default view).
    max_regions, max_slices : int
        How many regions and slices to keep.
    source : str, optional
        Where the scan came from (recorded in the report).
    num_classes : int, optional
        Classes of the model (background included); with more than two the entropy is re-read as a binary
        one (:func:`~napari_sscce.uncertainty.maps.binary_reading`) so that expected errors are counted
        right. None: two.

    Returns
    -------
    label_image : ndarray
        int32, ``k`` inside the region ranked ``k``.
    report : dict
        JSON-ready; see the module docstring.
    """
    entropy = binary_reading(entropy, num_classes)
    u = combined_uncertainty(entropy, kl)
    threshold = resolve_threshold(None, u, labels)  # the default, as a number the report records
    image, regions = label_regions(entropy, kl, labels, tuple(float(s) for s in spacing), threshold,
                                   max_regions=max_regions)
    slices = rank_slices(entropy, kl, labels, axis=axis, top=max_slices)
    report = {
        "source": source,
        "shape": [int(n) for n in u.shape],
        "spacing": [float(s) for s in spacing],
        "expected_errors": float(error_probability(u).sum(dtype=np.float64)),
        "scan_score": volume_score(entropy, kl, labels),
        "threshold": float(threshold),
        "regions": [{"rank": r.id, "expected_errors": r.score, **r.to_dict()} for r in regions],
        "slices": [{"axis": s.axis, "index": s.index, "expected_errors": s.score,
                    "mean_uncertainty": s.mean_uncertainty, "foreground_voxels": s.foreground_voxels}
                   for s in slices],
    }
    return image, report


def regions_paths(name: str, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(<out>/<name>_regions.nii.gz, <out>/<name>_regions.json)``."""
    out = Path(out_dir)
    return out / f"{name}{REGIONS_SUFFIX}", out / f"{name}{REGIONS_JSON_SUFFIX}"


def write_regions(
    volume: Volume, label_image: np.ndarray, report: dict[str, Any], out_dir: str | os.PathLike, name: str
) -> list[Path]:
    """Write the region label image on ``volume``'s grid and the report, atomically; returns both paths."""
    image_path, json_path = regions_paths(name, out_dir)
    if np.asarray(label_image).shape != tuple(volume.shape):
        raise ValueError(f"region image shape {np.shape(label_image)} differs from the scan's {volume.shape}")
    dtype = np.uint8 if int(np.max(label_image, initial=0)) < 256 else np.uint16
    write_volume(volume.with_array(np.asarray(label_image).astype(dtype), is_label=True), image_path)
    atomic_write_json(json_path, report)
    return [image_path, json_path]


def rank_scans(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scans ordered by the errors they are expected to hold, most first: which scan to correct next.

    Returns ``[{"rank", "source", "expected_errors", "scan_score", "top_region_errors"}]``.
    """
    rows = [
        {
            "source": r.get("source"),
            "expected_errors": float(r["expected_errors"]),
            "scan_score": float(r["scan_score"]),
            "top_region_errors": float(r["regions"][0]["expected_errors"]) if r.get("regions") else 0.0,
        }
        for r in reports
    ]
    rows.sort(key=lambda row: (-row["expected_errors"], str(row["source"])))
    return [{"rank": i, **row} for i, row in enumerate(rows, start=1)]
