"""An update in seconds: adapt the current model to one corrected scan and show the re-segmentation.

A full fine-tune (:func:`napari_sscce.loop.run_finetune`) makes a new model version in minutes. Between two of
them a person wants to see what the corrections teach the model *now*: :func:`preview_update` copies the
model, trains the copy for a few seconds on patches of this scan centred on the confirmed voxels (the
supervised CE + Dice of both networks, the method's own supervised loss: weight 1 on the confirmed voxels,
:data:`DISTILL_WEIGHT` on the others, whose label is the current model's own), with an L2-SP pull toward the
starting weights (the starting model as a regulariser, Li et al. 2018) and BatchNorm statistics frozen
(batches of two patches from one scan would overwrite them), then segments the scan with the copy. Nothing is
saved: the workspace, its versions and the model file are untouched; the result is a preview whose confirmed
voxels keep the person's labels (:func:`~napari_sscce.loop.corrections.merge_prediction`).

Never worse silently, as the full fine-tune: a quarter of the corrected slices is held aside
(:func:`~napari_sscce.loop.held_aside.split_held_aside`) and the adapted copy is shown only when it scores at
least as well there as the current model; otherwise the current segmentation is shown (with the
corrections) and the message gives both figures.

Choices where no paper speaks (one scan, seconds on a CPU): SGD with the training recipe's momentum, the
learning rate :data:`LR` (measured, see there), L2-SP weight :data:`L2SP_WEIGHT`, a wall-time budget
(:data:`DEFAULT_SECONDS`) and a step cap (:data:`MAX_STEPS`), whichever comes first.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_sscce.io.volume import Volume
from napari_sscce.loop.corrections import merge_prediction
from napari_sscce.loop.held_aside import HOLDOUT_FRACTION, split_held_aside
from napari_sscce.methods.losses import supervised_loss
from napari_sscce.metrics.surface import mean_dice
from napari_sscce.preprocessing import (
    normalize_intensity,
    resample_annotation,
    resample_to_shape,
    resampled_shape,
)
from napari_sscce.progress import CancelToken, ProgressCallback, ProgressEvent, check, report

#: wall-time budget of the adaptation, seconds (the re-segmentation comes on top)
DEFAULT_SECONDS = 12.0
#: at most this many steps
MAX_STEPS = 40
#: learning rate of the adaptation (SGD, momentum 0.9). Chosen on one hippocampus case (hippocampus_007,
#: left out of benchmarks/results/preview_*.md): 40 steps at 0.01 diverged (Dice outside the corrections
#: 0.87 -> 0.31), at 0.001 +1.9 points, at 0.003 +2.9
LR = 0.003
#: L2-SP weight toward the starting weights
L2SP_WEIGHT = 0.01
#: patches per step
BATCH = 2
#: training weight of the voxels nobody confirmed: their label is the current model's own (the segmentation
#: being corrected), so the copy is anchored there while it learns the corrections (distillation, as the
#: fine-tune does without a replayable labeled set); held-aside voxels weigh 0. Measured on 6 LA validation
#: scans (4 ranked slices corrected): without it the Dice outside the corrections moved -4.2 to +2.8 points
#: (mean -0.2), with 0.5 -0.5 to +3.0 (mean +0.45); hippocampus +0.9 (7 of 8 scans); results/preview_*
DISTILL_WEIGHT = 0.5


@dataclass
class PreviewResult:
    """What :func:`preview_update` did.

    Attributes
    ----------
    prediction : Prediction
        The adapted copy's segmentation of the scan (confirmed voxels keep the person's labels).
    steps : int
        Adaptation steps taken.
    seconds : float
        Wall time of the adaptation and of the re-segmentation together.
    loss_first, loss_last : float
        Supervised loss on the confirmed voxels at the first and the last step.
    message : str
    adapted : bool
        Whether the adapted copy's segmentation is shown (False: it scored worse on the held-aside slices).
    before, after : float or None
        Dice of the current and of the adapted model on the held-aside slices (None without any).
    """

    prediction: Any
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    message: str
    adapted: bool = True
    before: float | None = None
    after: float | None = None


def _model_image(image: Volume, meta: dict[str, Any]) -> np.ndarray:
    """The scan on the model's grid, normalised as the model was trained (as inference prepares it)."""
    from napari_sscce.inference.predict import normalization_mode

    array = normalize_intensity(np.asarray(image.array, dtype=np.float32), normalization_mode(meta))
    spacing = meta.get("spacing")
    if spacing and not np.allclose(image.spacing, spacing, rtol=1e-3):
        shape = resampled_shape(image.shape, image.spacing, [float(s) for s in spacing])
        array = resample_to_shape(array, shape, order=1)
    return array.astype(np.float32, copy=False)


def _model_annotation(labels: np.ndarray, weights: np.ndarray, num_classes: int,
                      shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and weights on the model's grid, sparse annotations kept (``resample_annotation``)."""
    weights = np.clip(np.asarray(weights, dtype=np.float32), 0.0, 1.0)
    return resample_annotation(np.asarray(labels).astype(np.int64), weights, num_classes, shape)


def _patch_starts(weights: np.ndarray, patch: tuple[int, ...], n: int, rng: np.random.Generator) -> list:
    """``n`` patch corners, each centred on a random confirmed voxel (clipped to the volume)."""
    coords = np.argwhere(weights > 0)
    picks = coords[rng.integers(0, len(coords), n)]
    return [
        tuple(int(np.clip(c - p // 2, 0, max(s - p, 0)))
              for c, p, s in zip(pick, patch, weights.shape, strict=True))
        for pick in picks
    ]


def _crop(array: np.ndarray, start: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """A patch of ``array`` (z, y, x, or channels first) at ``start``, zero-padded where the volume is
    smaller than the patch."""
    lead = array.ndim - 3
    sl = (slice(None),) * lead + tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    out = array[sl]
    pad = [(0, 0)] * lead + [(0, p - n) for p, n in zip(patch, out.shape[lead:], strict=True)]
    return np.pad(out, pad) if any(b for _, b in pad) else out


def _frozen_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _training_data(image: Volume, labels: np.ndarray, train_mask: np.ndarray, held: np.ndarray,
                   meta: dict[str, Any], classes: int) -> tuple[np.ndarray, ...]:
    """``(image, labels, weights, centres)`` on the model's grid: the corrections (weight 1) and, elsewhere
    but the held-aside voxels, the current labels (weight :data:`DISTILL_WEIGHT`); ``centres`` marks the
    corrections the patches centre on. The two parts are resampled apart, so that a thin corrected slice is
    not outvoted by its uncorrected neighbours when the model's grid is coarser."""
    array = _model_image(image, meta)
    shape = tuple(array.shape[-3:])
    corrected_lab, centres = _model_annotation(labels, train_mask, classes, shape)
    own_lab, own_w = _model_annotation(labels, ~held, classes, shape)
    lab = np.where(centres > 0, corrected_lab, own_lab)
    weights = np.where(centres > 0, centres, DISTILL_WEIGHT * own_w).astype(np.float32)
    return array, lab, weights, centres


def _adapt(net: nn.Module, data: tuple[np.ndarray, ...], patch: tuple[int, ...], go_on: Any,
           rng: np.random.Generator, max_steps: int, progress: ProgressCallback | None,
           cancel: CancelToken | None) -> list[float]:
    """Train ``net`` in place while ``go_on(steps)``; returns the supervised loss of every step."""
    array, lab, weights, centres = data
    _frozen_batchnorm(net)
    for p in net.parameters():
        p.requires_grad_(True)
    anchor = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    losses: list[float] = []
    while go_on(len(losses)):
        check(cancel)
        starts = _patch_starts(centres, patch, BATCH, rng)
        x = torch.from_numpy(np.stack([_crop(array, s, patch) for s in starts]))
        if x.dim() == 4:  # one channel: (B, z, y, x) -> (B, 1, z, y, x)
            x = x[:, None]
        y = torch.from_numpy(np.stack([_crop(lab, s, patch) for s in starts]).astype(np.int64))
        w = torch.from_numpy(np.stack([_crop(weights, s, patch) for s in starts]))
        logits_a, logits_b = net(x)
        loss = supervised_loss(logits_a, y, w) + supervised_loss(logits_b, y, w)
        pull = sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchor, strict=True))
        optimizer.zero_grad(set_to_none=True)
        (loss + L2SP_WEIGHT * pull).backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        report(progress, ProgressEvent("preview", len(losses), max_steps,
                                       f"adapting: step {len(losses)}, loss {losses[-1]:.3f}"))
    return losses


def preview_update(
    model: str | os.PathLike | Any,
    image: Volume,
    labels: np.ndarray,
    mask: np.ndarray,
    *,
    seconds: float = DEFAULT_SECONDS,
    max_steps: int = MAX_STEPS,
    seed: int = 0,
    inference: Any = None,
    current: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PreviewResult:
    """Adapt a copy of ``model`` to the corrections of one scan and segment the scan with it.

    Parameters
    ----------
    model : path-like or Checkpoint
        The current model (left unchanged).
    image : Volume
        The scan.
    labels : ndarray
        The corrected segmentation (z, y, x), on the scan's grid.
    mask : ndarray
        Nonzero on the voxels a person confirmed (painted or accepted).
    seconds, max_steps : float, int
        Budget of the adaptation: whichever ends first.
    seed : int
        Patch sampling.
    inference : InferenceConfig, optional
        Settings of the re-segmentation.
    current : Prediction, optional
        The current model's segmentation of the scan (computed when not given), to judge the copy by.
    progress, cancel
        Events of stage ``"preview"`` per step; the cancel flag is checked every step.

    Raises
    ------
    ValueError
        When no voxel is confirmed, or the shapes differ.
    """
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.models.checkpoint import load_checkpoint

    if np.shape(labels) != tuple(image.shape) or np.shape(mask) != tuple(image.shape):
        raise ValueError(f"labels {np.shape(labels)} and mask {np.shape(mask)} must match the scan "
                         f"{image.shape}")
    if not np.any(mask):
        raise ValueError("no confirmed voxel: correct or confirm some voxels first")
    start = time.perf_counter()
    ckpt = load_checkpoint(model) if isinstance(model, str | os.PathLike) else model
    meta = dict(ckpt.metadata)
    net = copy.deepcopy(ckpt.model).float().cpu().train()
    classes = int(net.num_classes)
    confirmed = np.asarray(mask) > 0
    train_mask, held = split_held_aside(confirmed, HOLDOUT_FRACTION)
    data = _training_data(image, labels, train_mask, held, meta, classes)
    patch = tuple(int(p) for p in (meta.get("patch_size") or (32, 32, 32)))  # the model's, zero-padded
    losses = _adapt(net, data, patch, lambda n: n < max_steps and (time.perf_counter() - start) < seconds,
                    np.random.default_rng(seed), max_steps, progress, cancel)
    steps = len(losses)
    net.eval()
    from napari_sscce.inference.config import InferenceConfig

    icfg = inference or InferenceConfig()
    prediction = predict_volume(net, image, icfg, metadata=meta)
    adapted, before, after = True, None, None
    if held.any():
        check(cancel)
        current = current if current is not None else predict_volume(ckpt.model, image, icfg, metadata=meta)
        person = np.asarray(labels)
        before = mean_dice(current.labels, person, range(1, classes), where=held)
        after = mean_dice(prediction.labels, person, range(1, classes), where=held)
        before, after = (None if np.isnan(v) else v for v in (before, after))
        adapted = before is None or after is None or after >= before
    shown = prediction if adapted else current
    preview = merge_prediction(shown, np.asarray(labels), confirmed)
    took = time.perf_counter() - start
    judged = before is not None and after is not None
    figures = f" (held-aside slices: Dice {before:.3f} -> {after:.3f})" if judged else ""
    if adapted:
        message = (f"preview: the model adapted to your corrections in {steps} steps{figures}; {took:.0f} s; "
                   "nothing saved (fine-tune to make a new version)")
    else:
        message = (f"preview: adapting to these corrections made the held-aside slices worse{figures}; "
                   "showing the current model with your corrections; nothing saved")
    return PreviewResult(preview, steps, took, losses[0] if losses else float("nan"),
                         losses[-1] if losses else float("nan"), message, adapted, before, after)
