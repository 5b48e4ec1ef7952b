"""A person's corrections survive a new segmentation: confirmed voxels keep their labels."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np


def merge_corrections(new_labels: np.ndarray, old_labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A new segmentation that keeps the person's labels wherever ``mask`` (confirmed voxels) is set.

    Parameters
    ----------
    new_labels : numpy.ndarray
        The model's new segmentation.
    old_labels : numpy.ndarray
        The corrected segmentation (same shape).
    mask : numpy.ndarray
        Nonzero where a person edited or confirmed the label.

    Returns
    -------
    numpy.ndarray
        ``old_labels`` on confirmed voxels, ``new_labels`` elsewhere (dtype of ``new_labels``).
    """
    new_labels, old_labels, mask = np.asarray(new_labels), np.asarray(old_labels), np.asarray(mask) > 0
    if not new_labels.shape == old_labels.shape == mask.shape:
        raise ValueError(
            f"shapes differ: new {new_labels.shape}, corrected {old_labels.shape}, mask {mask.shape}"
        )
    return np.where(mask, old_labels, new_labels).astype(new_labels.dtype, copy=False)


def merge_prediction(prediction: Any, old_labels: np.ndarray, mask: np.ndarray) -> Any:
    """A copy of ``prediction`` keeping the corrections, its uncertainty 0 on confirmed voxels."""
    confirmed = np.asarray(mask) > 0
    return replace(
        prediction,
        labels=merge_corrections(prediction.labels, old_labels, confirmed),
        entropy=np.where(confirmed, 0.0, prediction.entropy).astype(np.float32),
        kl=np.where(confirmed, 0.0, prediction.kl).astype(np.float32),
    )
