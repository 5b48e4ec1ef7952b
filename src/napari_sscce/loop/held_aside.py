"""Never adopt a worse model silently: hold aside some confirmed slices and score both models on them.

A fraction :data:`HOLDOUT_FRACTION` of the confirmed planes of every corrected case is not trained on; the
starting and the fine-tuned model are scored there (:func:`held_aside_dice`, pooled over cases).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_sscce.io.volume import Volume
from napari_sscce.metrics.surface import mean_dice
from napari_sscce.progress import CancelToken, check

#: share of the confirmed slices of each corrected case held aside to score the models (not trained on)
HOLDOUT_FRACTION = 0.25


def annotation_planes(mask: np.ndarray) -> tuple[int, list[int]]:
    """The axis a person annotated along and the planes holding confirmed voxels along it.

    The axis is the one with the most fully confirmed planes (slice-wise annotation); when no plane is full
    (voxel-wise edits) the axis with the fewest planes touched.
    """
    best: tuple[tuple[int, int], int, list[int]] | None = None
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        counts = mask.sum(axis=other)
        planes = [int(i) for i in np.flatnonzero(counts)]
        full = int(np.sum(counts == mask.size // mask.shape[axis]))
        key = (full, -len(planes))
        if best is None or key > best[0]:
            best = (key, axis, planes)
    assert best is not None
    return best[1], best[2]


def split_held_aside(mask: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split an annotation mask into ``(training mask, held-aside mask)`` by whole annotated planes.

    Every ``round(1 / fraction)``-th confirmed plane (starting in the middle of the first period) is held
    aside; a case with fewer than two confirmed planes keeps everything for training.
    """
    mask = np.asarray(mask) > 0
    held = np.zeros_like(mask)
    axis, planes = annotation_planes(mask) if mask.any() else (0, [])
    if fraction <= 0 or len(planes) < 2:
        return mask, held
    step = max(2, int(round(1.0 / fraction)))
    chosen = planes[step // 2 :: step] or [planes[len(planes) // 2]]
    index = [slice(None)] * mask.ndim
    for plane in chosen:
        index[axis] = plane
        held[tuple(index)] = mask[tuple(index)]
    return mask & ~held, held


@dataclass
class HeldAside:
    """Held-aside confirmed voxels of one case: what the models are scored on."""

    name: str
    image: Volume
    labels: np.ndarray
    mask: np.ndarray

    @property
    def voxels(self) -> int:
        """Number of held-aside voxels."""
        return int(self.mask.sum())


def held_aside_dice(predictions: list[np.ndarray], held: list[HeldAside], num_classes: int) -> float | None:
    """Mean foreground Dice on the held-aside voxels, pooled over cases (classes absent there are skipped)."""
    if len(predictions) != len(held):
        raise ValueError(f"{len(predictions)} predictions for {len(held)} held-aside cases")
    if not held:
        return None
    # pooled over cases: the Dice of all held-aside voxels together
    pred = np.concatenate([np.asarray(p)[h.mask] for p, h in zip(predictions, held, strict=True)])
    gt = np.concatenate([np.asarray(h.labels)[h.mask] for h in held])
    score = mean_dice(pred, gt, range(1, num_classes))
    return None if np.isnan(score) else score


def score_model(
    model: str | os.PathLike,
    held: list[HeldAside],
    num_classes: int,
    inference: Any = None,
    cancel: CancelToken | None = None,
) -> float | None:
    """:func:`held_aside_dice` of the model file ``model`` (segmented with ``inference`` settings, fp32)."""
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.models.checkpoint import load_checkpoint

    if not held:
        return None
    icfg = replace(inference or InferenceConfig(), precision="fp32", return_per_network=False)
    ckpt = load_checkpoint(model)
    preds = []
    for h in held:
        check(cancel)
        preds.append(predict_volume(ckpt.model, h.image, icfg, metadata=ckpt.metadata).labels)
    return held_aside_dice(preds, held, num_classes)
