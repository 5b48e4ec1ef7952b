"""Predict one volume with a two-network model: mean probabilities, labels and the two uncertainty maps."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_sscce.inference import plausibility
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.device import prepare_model, resolve_device
from napari_sscce.inference.fast import optimize_for_inference
from napari_sscce.inference.postprocess import keep_largest_component
from napari_sscce.inference.sliding_window import flip_combinations, plan_windows, sliding_window_dual
from napari_sscce.io.geometry import parse_axes
from napari_sscce.io.validate import apply_nan_policy
from napari_sscce.io.volume import Volume
from napari_sscce.metrics.surface import mean_dice
from napari_sscce.models.matching import match_channels
from napari_sscce.precision import resolve_precision
from napari_sscce.preprocessing import normalize_intensity, resample_to_shape, resampled_shape
from napari_sscce.progress import CancelToken, ProgressCallback, ProgressEvent, report
from napari_sscce.tensor_ops import class_argmax
from napari_sscce.uncertainty import entropy_torch, kl_divergence_torch

#: Window size (z, y, x) when neither the config nor the checkpoint gives one: the LA training patch.
DEFAULT_PATCH = (80, 112, 112)
#: Normalisation when the model carries no metadata (the LA literature z-scores each volume).
DEFAULT_NORMALIZATION = "zscore"


@dataclass
class Prediction:
    """The result of :func:`predict_volume`.

    Attributes
    ----------
    probabilities : numpy.ndarray
        ``[C, Z, Y, X]`` float32, mean of the two networks' softmax maps.
    labels : numpy.ndarray
        ``[Z, Y, X]`` uint8, argmax of ``probabilities`` (after the optional largest-component filter).
    entropy : numpy.ndarray
        ``[Z, Y, X]`` float32 in [0, 1]: entropy of ``probabilities`` divided by ``ln C``.
    kl : numpy.ndarray
        ``[Z, Y, X]`` float32 in [0, 1): symmetric KL divergence between the two networks,
        ``0.5 (KL(pA||pB) + KL(pB||pA))`` in nats, mapped by ``1 - exp(-kl)``
        (:func:`napari_sscce.uncertainty.kl_divergence`).
    per_network : tuple of numpy.ndarray or None
        Each network's ``[C, Z, Y, X]`` probabilities when requested (``return_per_network``).
    volume : Volume
        The input volume (its geometry places the outputs).
    device : str
        Device that did the work (``"cpu"`` after an out-of-memory fallback).
    seconds : float
        Wall time of the whole prediction.
    precision : str
        Precision actually used (``"fp32"``, ``"bf16"``, ``"fp16"``).
    info : dict
        Details: number of windows, patch, step, resampled shape, TTA flips.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    entropy: np.ndarray
    kl: np.ndarray
    per_network: tuple[np.ndarray, np.ndarray] | None
    volume: Volume
    device: str
    seconds: float
    precision: str = "fp32"
    info: dict[str, Any] = field(default_factory=dict)


def load_model(checkpoint_or_model: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(model, metadata)`` for a checkpoint path, a loaded ``Checkpoint`` or a module.

    A module may carry a ``metadata`` attribute; otherwise its metadata is empty.

    Raises
    ------
    napari_sscce.models.checkpoint.CheckpointError
        For a path that is not a usable checkpoint (the message names the file).
    """
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from napari_sscce.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(Path(checkpoint_or_model), map_location="cpu")
        return ckpt.model, {**dict(ckpt.metadata), "model_file": str(checkpoint_or_model)}
    if isinstance(checkpoint_or_model, nn.Module):
        return checkpoint_or_model, dict(getattr(checkpoint_or_model, "metadata", None) or {})
    if hasattr(checkpoint_or_model, "model") and hasattr(checkpoint_or_model, "metadata"):
        return checkpoint_or_model.model, dict(checkpoint_or_model.metadata or {})
    raise TypeError(f"expected a checkpoint path or a torch module, got {type(checkpoint_or_model).__name__}")


def _is_dual(model: nn.Module) -> bool:
    return hasattr(model, "net_a") and hasattr(model, "net_b") and getattr(model, "kind", "dual") != "single"


def _logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def dual_probabilities(
    model: nn.Module, x: torch.Tensor, mc_dropout: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax maps ``(p_a, p_b)`` of the two networks for a batch of windows (float32).

    - :class:`~napari_sscce.models.dual.DualModel` of kind ``"dual"`` (CCE, supervised): net A and net B.
    - kind ``"mean_teacher"`` (UG-MCL): net A is the student, net B the EMA teacher.
    - a single network (kind ``"single"`` or any module returning ``(logits, ...)`` or logits): the same
      map twice, so the KL map is zero, unless ``mc_dropout`` passes are asked for.

    With ``mc_dropout = n > 0`` (dropout layers must be in train mode, see :func:`mc_dropout_mode`) each
    network's map is the mean of ``n`` stochastic passes. For a single network the passes are split in
    two halves (even / odd passes) whose means play the two networks, so KL measures the dropout
    disagreement and the mean is the mean of all passes.
    """
    if mc_dropout <= 0:
        if _is_dual(model):
            la, lb = model(x)
            return torch.softmax(la.float(), dim=1), torch.softmax(lb.float(), dim=1)
        p = torch.softmax(_logits(model(x)).float(), dim=1)
        return p, p
    sums = [None, None]
    counts = [0, 0]
    for i in range(mc_dropout):
        if _is_dual(model):
            la, lb = model(x)
            outs = [(0, la), (1, lb)]
        else:
            outs = [(i % 2, _logits(model(x)))]
        for slot, logits in outs:
            p = torch.softmax(logits.float(), dim=1)
            sums[slot] = p if sums[slot] is None else sums[slot].add_(p)
            counts[slot] += 1
    if sums[1] is None:  # one pass of a single network
        sums[1], counts[1] = sums[0], counts[0]
    return sums[0] / counts[0], sums[1] / counts[1]  # type: ignore[operator]


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Put only the dropout layers of ``model`` in train mode (BatchNorm keeps its running statistics)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)] if enabled else []
    states = [m.training for m in layers]
    for m in layers:
        m.train()
    try:
        yield
    finally:
        for m, state in zip(layers, states, strict=True):
            m.train(state)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Give the caller's module back in its original mode, device and memory layout."""
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        yield
    finally:
        model.to(device=device, memory_format=torch.contiguous_format)
        model.train(was_training)


def _inference_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """The module that runs the windows: on a bf16 CPU a BatchNorm-folded bf16 copy (see
    :func:`~napari_sscce.inference.fast.optimize_for_inference`), else ``model`` itself, prepared."""
    if device.type == "cpu" and precision == "bf16":
        return optimize_for_inference(prepare_model(model, device))
    return prepare_model(model, device)


def _as_volume(volume: Volume | np.ndarray) -> Volume:
    if isinstance(volume, Volume):
        return volume
    array = np.asarray(volume)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a 3-D (z, y, x) or (C, z, y, x) volume, got an array of shape "
                         f"{array.shape}")
    return Volume(array=array)


def normalization_mode(metadata: dict[str, Any]) -> str:
    """The intensity normalisation a model was trained with (its metadata ``normalization``)."""
    norm = metadata.get("normalization")
    if isinstance(norm, dict):
        return str(norm.get("mode", DEFAULT_NORMALIZATION))
    return str(norm) if norm else DEFAULT_NORMALIZATION


def _target_shape(volume: Volume, metadata: dict[str, Any], model_name: str = "the model") -> tuple[int, ...]:
    spacing = plausibility.model_spacing(metadata, model_name)
    if not spacing or np.allclose(volume.spacing, spacing, rtol=1e-3, atol=1e-6):
        return volume.shape
    return resampled_shape(volume.shape, volume.spacing, [float(s) for s in spacing])


def tta_axes(requested: tuple[int, ...], meta: dict[str, Any]) -> tuple[int, ...]:
    """The mirroring axes of test-time augmentation: the requested ones the model was trained to flip.

    A model trained without flips along an axis (``TrainConfig.flip_axes``, recorded in the checkpoint's
    ``augmentation`` metadata; e.g. the y axis that orders the hippocampus head and body) has not learned
    to be invariant to it, and averaging in its mirrored prediction would swap classes. Models without
    that record (imported or older checkpoints) mirror every requested axis, like nnU-Net.
    """
    record = (meta.get("augmentation") or {}).get("flip_axes")
    if record is None:
        return tuple(requested)
    trained = parse_axes(record)
    return tuple(a for a in requested if a in trained)


def resolve_temperature(requested: float | None, meta: dict[str, Any]) -> float:
    """The calibration temperature to use: the requested one, else the checkpoint's, else 1.

    The checkpoint records it as ``metadata["calibration"]["temperature"]`` (a value that is not a
    positive number is ignored).
    """
    if requested is not None:
        return float(requested)
    value = (meta.get("calibration") or {}).get("temperature")
    try:
        t = float(value)
    except (TypeError, ValueError):
        return 1.0
    return t if t > 0 and np.isfinite(t) else 1.0


def _checked_geometry(
    model: Any, meta: dict[str, Any], volume: Volume, config: InferenceConfig
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The grid the model works on and its window, after :func:`plausibility.check_geometry` accepted both."""
    model_name = str(meta.get("model_file") or meta.get("name") or "the model")
    work_shape = _target_shape(volume, meta, model_name)
    patch = config.patch_size or plausibility.model_patch(meta.get("patch_size") or DEFAULT_PATCH, model_name)
    classes = getattr(model, "num_classes", None) or meta.get("num_classes") or 2
    plausibility.check_geometry(volume, plausibility.model_spacing(meta, model_name), work_shape, patch,
                                int(classes) if str(classes).isdigit() else 2, model_name)
    return work_shape, patch


def _model_input(
    volume: Volume, work_shape: tuple[int, ...], config: InferenceConfig, meta: dict[str, Any],
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, int]:
    """The volume as the model saw its training data: NaN policy, normalisation, resampled to ``work_shape``.

    Returns the image and the number of non-finite voxels replaced.
    """
    raw, replaced = apply_nan_policy(volume, config.nan_policy)
    if replaced:
        report(progress, ProgressEvent(
            "inference", 0, 0, f"{replaced} NaN/Inf voxels set by nan_policy {config.nan_policy!r}"
        ))
    report(progress, ProgressEvent("inference", 0, 0, "normalising"))
    image = normalize_intensity(raw, normalization_mode(meta))
    del raw
    if tuple(work_shape) != tuple(volume.shape):
        report(progress, ProgressEvent("inference", 0, 0, f"resampling {volume.shape} -> {work_shape}"))
        image = resample_to_shape(image, work_shape, order=1)
    return image, replaced


def _window_probabilities(
    checkpoint_or_model: Any, model: Any, image: np.ndarray, plan: Any, flips: list, config: InferenceConfig,
    device: torch.device, precision: str, progress: ProgressCallback | None, cancel: CancelToken | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Both networks' probabilities on the work grid (:func:`sliding_window_dual`) and the device used.

    A module passed in by the caller is restored to its own mode, device and layout afterwards.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor if tensor.ndim == 4 else tensor[None]  # (C, z, y, x) scans carry their channel axis
    guard = _restored(model) if isinstance(checkpoint_or_model, nn.Module) else contextlib.nullcontext()
    mc = int(config.mc_dropout)
    with guard:
        net = _inference_model(model, device, precision)
        with mc_dropout_mode(net, mc > 0), torch.inference_mode():
            return sliding_window_dual(
                net,
                lambda m, x: dual_probabilities(m, x, mc),
                tensor,
                plan,
                mode=config.mode,
                batch_size=config.batch_size,
                device=device,
                precision=precision,
                flips=flips,
                progress=progress,
                cancel=cancel,
            )


def _combine_networks(
    pair: list[torch.Tensor], input_shape: tuple[int, ...] | None, config: InferenceConfig,
    meta: dict[str, Any],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, tuple | None, float]:
    """Mean probability (calibrated), labels, entropy and KL maps of the two networks' probabilities.

    ``pair`` holds network A's and B's probabilities; it is emptied, so that the work-grid arrays are freed
    once resampled back to ``input_shape`` (None when the work grid is the input's). Returns ``(mean,
    labels, entropy, kl, per_network, temperature)``; A's probabilities are reused for the mean.
    """
    prob_a, prob_b = pair
    pair.clear()
    with torch.inference_mode():
        if input_shape is not None:
            prob_a = torch.from_numpy(resample_to_shape(prob_a.numpy(), input_shape, order=1))
            prob_b = torch.from_numpy(resample_to_shape(prob_b.numpy(), input_shape, order=1))
        kl = kl_divergence_torch(prob_a, prob_b, dim=0).numpy()
        per_network = (prob_a.numpy().copy(), prob_b.numpy().copy()) if config.return_per_network else None
        mean = prob_a.add_(prob_b).mul_(0.5)
        del prob_b
        temperature = resolve_temperature(config.temperature, meta)
        if temperature != 1.0:
            mean = mean.clamp_min_(1e-8).log_().div_(temperature).softmax(dim=0)
        entropy = entropy_torch(mean, dim=0).numpy()
        labels = class_argmax(mean, 0).to(torch.uint8).numpy()
    return mean, labels, entropy, kl, per_network, temperature


def predict_volume(
    checkpoint_or_model: Any,
    volume: Volume | np.ndarray,
    config: InferenceConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    metadata: dict[str, Any] | None = None,
) -> Prediction:
    """Segment ``volume`` with a two-network model and compute its uncertainty maps.

    Steps: normalise intensities as the model was trained (metadata ``normalization``, default z-score);
    resample to the model's spacing (metadata ``spacing``; trilinear) when it differs from the volume's;
    sliding-window inference with both networks (:func:`sliding_window_dual`; patch from the config, else
    metadata ``patch_size``, else :data:`DEFAULT_PATCH`); probabilities back to the input grid (trilinear,
    order 1, a convex combination so they still sum to 1), then argmax; optional largest component per
    foreground class.

    Uncertainty: ``entropy`` is the entropy of the mean probability divided by ``ln C`` (0 = certain,
    1 = uniform); ``kl`` is the symmetric KL divergence ``0.5 (KL(pA||pB) + KL(pB||pA))`` between the two
    networks' probabilities, mapped to [0, 1) by ``1 - exp(-kl)`` (see :mod:`napari_sscce.uncertainty`).
    For a mean-teacher model the two networks are the student (A) and the teacher (B); for a single network
    see ``config.mc_dropout`` and :func:`dual_probabilities`.

    Parameters
    ----------
    checkpoint_or_model : path-like, Checkpoint or nn.Module
        A model file (:func:`napari_sscce.models.checkpoint.load_checkpoint`), a loaded checkpoint, a
        ``DualModel`` or a single network. A module passed in is returned in its original mode, device and
        memory layout.
    volume : Volume or numpy.ndarray
        The scan (z, y, x), raw intensities.
    config : InferenceConfig, optional
        Settings (defaults: :class:`InferenceConfig`).
    progress, cancel
        Progress events per batch of windows (stage ``"inference"``) and a cancel check per batch.
    metadata : dict, optional
        Checkpoint-style metadata (``normalization``, ``spacing``, ``patch_size``) for a module passed
        directly; overrides what the module carries.

    Returns
    -------
    Prediction

    Raises
    ------
    napari_sscce.io.errors.VolumeError
        When the volume has NaN / Inf voxels and ``config.nan_policy`` is ``"error"`` (the message names
        the file, or the layer, and the counts).
    """
    start = time.perf_counter()
    config = config or InferenceConfig()
    model, meta = load_model(checkpoint_or_model)
    meta.update(metadata or {})
    volume = _as_volume(volume)
    model_name = str(meta.get("model_file") or meta.get("name") or "the model")
    volume = match_channels(volume, {**meta, "in_channels": getattr(model, "in_channels", 1)}, model_name)
    device = resolve_device(config.device)
    precision = resolve_precision(device, config.precision)

    work_shape, patch = _checked_geometry(model, meta, volume, config)
    image, replaced = _model_input(volume, work_shape, config, meta, progress)
    resampled = tuple(work_shape) != tuple(volume.shape)
    plan = plan_windows(work_shape, patch, config.overlap, config.stride)
    flips = flip_combinations(tta_axes(config.tta_axes, meta)) if config.tta else [()]
    *pair, used = _window_probabilities(
        checkpoint_or_model, model, image, plan, flips, config, device, precision, progress, cancel
    )
    del image
    mean, labels, entropy, kl, per_network, temperature = _combine_networks(
        pair, volume.shape if resampled else None, config, meta
    )
    num_classes = mean.shape[0]
    if config.largest_component:
        labels = keep_largest_component(labels, num_classes)
    seconds = time.perf_counter() - start
    if used != device:
        precision = resolve_precision(used, config.precision)
    info = {
        "windows": len(plan.windows), "patch": list(plan.patch), "step": list(plan.step),
        "work_shape": list(work_shape), "flips": [list(f) for f in flips],
        "normalization": normalization_mode(meta), "nonfinite_voxels": replaced,
        "nan_policy": config.nan_policy, "temperature": temperature,
    }
    windows = len(plan.windows)
    report(progress, ProgressEvent("inference", windows, windows, f"done in {seconds:.1f} s on {used}",
                                   {"seconds": seconds}))
    return Prediction(
        probabilities=mean.numpy(),
        labels=labels,
        entropy=entropy,
        kl=kl,
        per_network=per_network,
        volume=volume,
        device=str(used),
        seconds=seconds,
        precision=precision,
        info=info,
    )


def check_low_precision(
    model: Any, volume: Volume | np.ndarray, config: InferenceConfig | None = None, precision: str = "bf16"
) -> dict[str, float]:
    """Compare a low-precision prediction with the fp32 one on the same volume.

    Parameters
    ----------
    model : path-like, Checkpoint or nn.Module
        As for :func:`predict_volume`.
    volume : Volume or numpy.ndarray
        The test volume.
    config : InferenceConfig, optional
        Settings for both runs (their ``precision`` is overridden).
    precision : {"bf16", "fp16"}
        The precision to check.

    Returns
    -------
    dict
        ``changed_fraction`` (voxels whose label differs), ``dice`` (mean over foreground classes present
        in either map of the Dice between the two label maps; 1.0 when neither has foreground),
        ``max_abs_prob_diff`` and ``mean_abs_prob_diff`` of the mean probabilities, ``seconds_fp32``,
        ``seconds_low``.
    """
    from dataclasses import replace

    config = config or InferenceConfig()
    ref = predict_volume(model, volume, replace(config, precision="fp32"))
    low = predict_volume(model, volume, replace(config, precision=precision))
    result = compare_predictions(ref.probabilities, low.probabilities, ref.labels, low.labels)
    return {"precision": low.precision, **result, "seconds_fp32": ref.seconds, "seconds_low": low.seconds}


def compare_predictions(
    ref_prob: np.ndarray,
    other_prob: np.ndarray,
    ref_labels: np.ndarray | None = None,
    other_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Agreement of two predictions of one volume (e.g. fp32 vs bf16, ours vs a reference engine).

    Labels default to the argmax of the probabilities. Returns ``changed_fraction`` (voxels whose label
    differs), ``dice`` (mean over the foreground classes present in either map; 1.0 when neither has
    foreground), ``max_abs_prob_diff`` and ``mean_abs_prob_diff``.
    """
    ref_labels = ref_prob.argmax(0) if ref_labels is None else ref_labels
    other_labels = other_prob.argmax(0) if other_labels is None else other_labels
    dice = mean_dice(ref_labels, other_labels, range(1, ref_prob.shape[0]), none=1.0)
    diff = np.abs(ref_prob - other_prob)
    return {
        "changed_fraction": float((ref_labels != other_labels).mean()),
        "dice": dice,
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
    }
