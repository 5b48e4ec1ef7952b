"""Sliding-window inference of a two-network model over a whole volume.

Windows tile the (normalised) volume; each batch of windows goes once through each network (and through
each mirrored copy with TTA); the two softmax maps are weighted and added in place into preallocated
float32 accumulators, so memory stays at a few volume-sized arrays whatever the number of windows.

Window placement follows MONAI's ``dense_patch_slices``, which is also the LA literature's loop (UA-MT
``test_util.py``): along each axis the starts are ``0, s, 2s, ...`` until a window reaches the end, the last
one shifted back to end exactly at the border; a volume smaller than the patch is first padded with zeros,
symmetrically (``pad // 2`` before), as both references do.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from napari_sscce.inference.device import autocast_context, prepare_model, uses_channels_last
from napari_sscce.progress import CancelToken, ProgressCallback, ProgressEvent, check, report

#: ``forward(model, windows) -> (probabilities of net A, probabilities of net B)``, each ``[B, C, Z, Y, X]``.
DualForward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

Slices = tuple[slice, slice, slice]


def step_from_overlap(shape: Sequence[int], patch: Sequence[int], overlap: float) -> tuple[int, ...]:
    """Window step per axis: ``int(patch * (1 - overlap))`` (at least 1); the patch if it spans the axis.

    This is MONAI's ``_get_scan_interval``.
    """
    steps = []
    for size, p in zip(shape, patch, strict=True):
        steps.append(int(p) if int(p) == int(size) else max(1, int(p * (1.0 - overlap))))
    return tuple(steps)


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Starts on one axis: ``min(i * step, size - patch)`` for ``i = 0 .. ceil((size - patch) / step)``.

    Requires ``size >= patch``. The count equals UA-MT's ``ceil((size - patch) / stride) + 1`` and MONAI's
    "first ``i`` with ``i * step + patch >= size``, plus one".
    """
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad first")
    count = math.ceil((size - patch) / step) + 1
    return [min(i * step, size - patch) for i in range(count)]


def window_slices(shape: Sequence[int], patch: Sequence[int], step: Sequence[int]) -> list[Slices]:
    """All windows (z, y, x slices) covering a volume of ``shape`` (C order: x varies fastest)."""
    starts = [window_starts(int(n), int(p), int(s)) for n, p, s in zip(shape, patch, step, strict=True)]
    return [
        tuple(slice(s, s + int(p)) for s, p in zip(combo, patch, strict=True))  # type: ignore[misc]
        for combo in itertools.product(*starts)
    ]


def gaussian_importance_map(
    patch: Sequence[int], sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Gaussian window weights of shape ``patch`` (float32, peak 1).

    ``sigma = sigma_scale * patch`` per axis (1/8 as nnU-Net and MONAI), centred at ``(p - 1) / 2``,
    separable. Weights below ``max(min, 1e-3)`` are raised to that floor before the map is divided by its
    maximum: nnU-Net clips zeros to the smallest nonzero weight, MONAI additionally floors at 1e-3; we follow
    MONAI exactly (the map is ``compute_importance_map(patch, "gaussian", 0.125)`` up to the constant factor,
    which cancels in the blend), which keeps the corners of a lone window from getting vanishing weight.
    """
    weights: torch.Tensor | None = None
    for axis, p in enumerate(patch):
        x = torch.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2.0 * (p * sigma_scale) ** 2))
        weights = g if axis == 0 else weights.unsqueeze(-1) * g[(None,) * axis]
    assert weights is not None
    floor = max(float(weights.min()), 1e-3)
    weights = weights.clamp_(min=floor)
    return (weights / weights.max()).contiguous()


def symmetric_padding(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """``(before, after)`` zero padding per axis to bring ``shape`` up to ``patch`` (before: ``pad // 2``)."""
    out = []
    for n, p in zip(shape, patch, strict=True):
        pad = max(int(p) - int(n), 0)
        out.append((pad // 2, pad - pad // 2))
    return out


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (the empty one, i.e. no flip, first): 2 ** len(axes) of them."""
    axes = tuple(sorted(set(axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


@dataclass
class WindowPlan:
    """Where the windows go on the padded volume."""

    padded_shape: tuple[int, int, int]
    padding: list[tuple[int, int]]
    patch: tuple[int, int, int]
    step: tuple[int, int, int]
    windows: list[Slices]


def plan_windows(
    shape: Sequence[int], patch: Sequence[int], overlap: float = 0.5, stride: Sequence[int] | None = None
) -> WindowPlan:
    """Pad (if needed) and place the windows for a volume of ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Volume shape (z, y, x).
    patch : sequence of int
        Window size (z, y, x).
    overlap : float
        Used when ``stride`` is None (see :func:`step_from_overlap`).
    stride : sequence of int, optional
        Explicit step (z, y, x), e.g. the literature's (4, 18, 18).
    """
    patch = tuple(int(p) for p in patch)
    padding = symmetric_padding(shape, patch)
    padded = tuple(int(n) + a + b for n, (a, b) in zip(shape, padding, strict=True))
    step = tuple(int(s) for s in stride) if stride is not None else step_from_overlap(padded, patch, overlap)
    return WindowPlan(padded, padding, patch, step, window_slices(padded, patch, step))  # type: ignore[arg-type]


def sliding_window_dual(
    model: nn.Module,
    forward: DualForward,
    image: torch.Tensor,
    plan: WindowPlan,
    *,
    mode: str = "gaussian",
    batch_size: int = 2,
    device: torch.device | None = None,
    precision: str = "fp32",
    flips: Sequence[tuple[int, ...]] = ((),),
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Blend both networks' softmax maps over all windows of ``plan``.

    Parameters
    ----------
    model : nn.Module
        Already on ``device`` in eval mode (see :func:`~napari_sscce.inference.device.prepare_model`).
    forward : callable
        ``forward(model, windows[B, Cin, *patch]) -> (prob_a, prob_b)``, float32 probabilities
        ``[B, C, *patch]``.
    image : Tensor
        ``[Cin, Z, Y, X]`` float32 (normalised, unpadded), on the CPU.
    plan : WindowPlan
        From :func:`plan_windows` for ``image``'s spatial shape.
    mode : {"gaussian", "uniform"}
        Gaussian importance weights (:func:`gaussian_importance_map`) or equal weights.
    batch_size : int
        Windows per forward pass.
    device : torch.device, optional
        Where to compute (default: the CPU).
    precision : str
        Passed to :func:`~napari_sscce.inference.device.autocast_context`.
    flips : sequence of tuple of int
        Mirroring TTA: spatial axes (0 = z) to flip for each pass; ``((),)`` is no TTA. Outputs are
        flipped back and averaged.
    progress, cancel
        A ``ProgressEvent("inference", windows_done, n_windows)`` follows every batch; ``cancel`` is checked
        before every batch (raises :class:`~napari_sscce.progress.Cancelled`).

    Returns
    -------
    prob_a, prob_b : Tensor
        ``[C, Z, Y, X]`` float32 blended probabilities of each network on the unpadded grid (CPU).
    device : torch.device
        The device that finished the work (the CPU after an out-of-memory fallback).

    Notes
    -----
    On an out-of-memory error the batch is retried with half the windows; at one window per batch a GPU's
    work moves to the CPU (``warnings.warn`` and a progress message) and carries on where it was.
    """
    device = torch.device(device or "cpu")
    if mode not in ("gaussian", "uniform"):
        raise ValueError(f"unknown blending mode {mode!r}; choose gaussian or uniform")
    padded = image
    if any(a or b for a, b in plan.padding):
        pad = [v for a_b in reversed(plan.padding) for v in a_b]  # F.pad wants the last axis first
        padded = torch.nn.functional.pad(image, pad, mode="constant", value=0.0)
    windows = plan.windows
    total = len(windows)
    flips = [tuple(f) for f in flips] or [()]
    blend = _Blend.start(plan, mode, device)  # sums live where the compute is (the GPU), until a fallback
    done = 0
    current_batch = max(1, int(batch_size))
    while done < total:
        check(cancel)
        batch = windows[done : done + current_batch]
        try:
            prob_a, prob_b = _forward_batch(model, forward, padded, batch, device, precision, flips)
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc):
                raise
            _free_cache(device)
            if current_batch > 1:
                current_batch = max(1, current_batch // 2)
                report(progress, ProgressEvent(
                    "inference", done, total, f"out of memory: {current_batch} window(s) per batch"
                ))
            elif device.type == "cpu":
                raise
            else:
                device, precision, model = _fall_back_to_cpu(device, precision, model, done, total, progress)
                blend.move_to(device)
            continue
        blend.add(batch, prob_a, prob_b)
        del prob_a, prob_b
        done += len(batch)
        report(progress, ProgressEvent("inference", done, total, f"window {done}/{total} on {device}"))
    prob_a, prob_b = blend.result(plan, image.shape[1:])
    return prob_a, prob_b, device


def _fall_back_to_cpu(
    device: torch.device, precision: str, model: nn.Module, done: int, total: int,
    progress: ProgressCallback | None,
) -> tuple[torch.device, str, nn.Module]:
    """One window did not fit on ``device``: say so (a warning and a progress message), go on on the CPU.

    Returns the CPU, the precision there (``"auto"`` instead of fp16/bf16) and the model moved there.
    """
    message = f"out of memory on {device}: continuing on the CPU (slower)"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    report(progress, ProgressEvent("inference", done, total, message))
    cpu = torch.device("cpu")
    precision = "auto" if precision in ("fp16", "bf16") else precision
    return cpu, precision, prepare_model(model, cpu)


@dataclass
class _Blend:
    """Weighted sums of both networks' window probabilities, and of the window weights, on the padded grid."""

    weight: torch.Tensor
    norm: torch.Tensor
    gaussian: bool
    acc_a: torch.Tensor | None = None
    acc_b: torch.Tensor | None = None

    @classmethod
    def start(cls, plan: WindowPlan, mode: str, device: torch.device) -> _Blend:
        """Empty sums on ``device``; the weight sum depends only on the windows, so it is added up front."""
        weight = _window_weight(plan.patch, mode, device)
        norm = torch.zeros(plan.padded_shape, dtype=torch.float32, device=device)
        for sl in plan.windows:
            norm[sl] += weight
        return cls(weight, norm, mode == "gaussian")

    def add(self, batch: Sequence[tuple[slice, ...]], prob_a: torch.Tensor, prob_b: torch.Tensor) -> None:
        """Add a batch's probabilities ``[B, C, *patch]`` at its windows."""
        store = self.norm.device
        if self.acc_a is None or self.acc_b is None:
            shape = (prob_a.shape[1], *self.norm.shape)
            self.acc_a = torch.zeros(shape, dtype=torch.float32, device=store)
            self.acc_b = torch.zeros(shape, dtype=torch.float32, device=store)
        prob_a, prob_b = prob_a.to(store), prob_b.to(store)
        for i, sl in enumerate(batch):
            region = (slice(None), *sl)
            if self.gaussian:
                self.acc_a[region].addcmul_(prob_a[i], self.weight)
                self.acc_b[region].addcmul_(prob_b[i], self.weight)
            else:
                self.acc_a[region].add_(prob_a[i])
                self.acc_b[region].add_(prob_b[i])

    def move_to(self, device: torch.device) -> None:
        """Move the sums (after an out-of-memory fallback)."""
        self.weight, self.norm = self.weight.to(device), self.norm.to(device)
        self.acc_a = self.acc_a.to(device) if self.acc_a is not None else None
        self.acc_b = self.acc_b.to(device) if self.acc_b is not None else None

    def result(self, plan: WindowPlan, spatial_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both blended maps ``[C, Z, Y, X]`` on the unpadded grid, on the CPU."""
        assert self.acc_a is not None and self.acc_b is not None
        self.acc_a.div_(self.norm)
        self.acc_b.div_(self.norm)
        crop = (slice(None),) + tuple(
            slice(a, a + n) for (a, _), n in zip(plan.padding, spatial_shape, strict=True)
        )
        return self.acc_a[crop].cpu(), self.acc_b[crop].cpu()


def _window_weight(patch: Sequence[int], mode: str, device: torch.device) -> torch.Tensor:
    if mode == "gaussian":
        return gaussian_importance_map(patch, device=device)
    return torch.ones(tuple(patch), dtype=torch.float32, device=device)


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _forward_batch(
    model: nn.Module,
    forward: DualForward,
    padded: torch.Tensor,
    batch: Sequence[Slices],
    device: torch.device,
    precision: str,
    flips: Sequence[tuple[int, ...]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both networks' probabilities for a batch of windows, averaged over the TTA flips."""
    x = torch.stack([padded[(slice(None), *sl)] for sl in batch]).to(device, non_blocking=True)
    channels_last = uses_channels_last(device)
    sum_a: torch.Tensor | None = None
    sum_b: torch.Tensor | None = None
    for axes in flips:
        dims = [a + 2 for a in axes]
        xi = torch.flip(x, dims) if dims else x
        if channels_last:
            xi = xi.contiguous(memory_format=torch.channels_last_3d)
        with autocast_context(device, precision):
            pa, pb = forward(model, xi)
        pa, pb = pa.float(), pb.float()
        if dims:
            pa, pb = torch.flip(pa, dims), torch.flip(pb, dims)
        if sum_a is None:
            sum_a, sum_b = pa.contiguous(), pb.contiguous()
        else:
            sum_a.add_(pa)
            sum_b.add_(pb)  # type: ignore[union-attr]
    assert sum_a is not None and sum_b is not None
    if len(flips) > 1:
        sum_a.div_(len(flips))
        sum_b.div_(len(flips))
    return sum_a, sum_b
