"""A training plan from the data, fitted to a time budget (nnU-Net's self-configuration, for CPUs).

:func:`fingerprint` summarises a labeled set (spacings, shapes, intensities per channel, classes, object
extents, how much is annotated); :func:`make_plan` turns it into a target spacing, a patch, a network width, a
batch and a number of iterations that fit ``budget_seconds`` on this machine, measured by a short timing
probe of the real training step (:func:`probe_step_seconds`). The plan is shown before training
(:meth:`Plan.describe`: "about 8 min on this CPU"), stored in the model's metadata and turned into a
``TrainConfig`` by :meth:`Plan.config_values`.

The rules, and where they come from:

- **Patch holds the object with context**: the median foreground extent (mm) times :data:`CONTEXT`, in voxels
  of the target spacing, rounded up to a multiple of 16 (four VNet down-samplings), at most the median image
  (nnU-Net sizes the patch from the median image shape; for a first model on a CPU the object is what
  matters).
- **Target spacing**: the median spacing, coarsened isotropically (never finer than an axis' own spacing, so
  thick-slice scans keep their slices) until the patch fits :data:`MAX_PATCH_VOXELS` and the budget gives at
  least :data:`MIN_ITERATIONS` steps, but no coarser than leaving :data:`MIN_OBJECT_VOXELS` voxels across the
  object. The packaged LA model's recipe (1.875 mm, patch 48 x 48 x 24) is what this rule gives on LA.
- **Width**: 8 filters on a CPU, 16 on a GPU (the papers' VNet).
- **Iterations**: the budget (less :data:`OVERHEAD_SHARE` for loading and validation) over the measured step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: the patch is the object's median extent times this (context on every side)
CONTEXT = 1.3
#: most voxels in a CPU training patch (about 64 x 64 x 48)
MAX_PATCH_VOXELS = 64 * 64 * 48
#: fewest training steps a plan accepts before coarsening the spacing further
MIN_ITERATIONS = 800
#: most training steps a plan asks for (more rarely pays for a first model)
MAX_ITERATIONS = 4000
#: fewest voxels across the object's smallest extent a coarser spacing may leave
MIN_OBJECT_VOXELS = 16
#: share of the budget kept for loading, the timing probe and the final validation
OVERHEAD_SHARE = 0.15
#: the steps may take this much longer than planned before the run shortens its schedule
BUDGET_SLACK = 1.1
#: isotropic coarsening steps tried, as multiples of the median spacing
COARSENING = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


@dataclass
class Fingerprint:
    """What a labeled set looks like.

    Attributes
    ----------
    cases : int
    median_spacing : list of float
        (z, y, x) mm.
    median_shape : list of int
    intensity : list of dict
        Per channel: ``mean``, ``std``, ``p00_5``, ``p99_5`` over annotated foreground voxels.
    classes : list of int
        Label values present (background included).
    object_extent_mm : list of float
        Median extent of the foreground bounding box per axis (mm), over cases with foreground.
    annotated_fraction : float
        Mean share of voxels a person confirmed (1 for fully labeled cases).
    """

    cases: int
    median_spacing: list[float]
    median_shape: list[int]
    intensity: list[dict[str, float]]
    classes: list[int]
    object_extent_mm: list[float]
    annotated_fraction: float


def fingerprint(cases: Iterable[tuple[Any, Any, Any]]) -> Fingerprint:
    """The :class:`Fingerprint` of ``(image Volume, label Volume, mask Volume or None)`` cases."""
    spacings, shapes, extents, fractions, classes = [], [], [], [], set()
    values: list[list[np.ndarray]] = []
    for image, label, mask in cases:
        arr = np.asarray(image.array)
        arr = arr[None] if arr.ndim == 3 else arr
        lab = np.asarray(label.array)
        spacings.append([float(s) for s in image.spacing])
        shapes.append(list(lab.shape))
        confirmed = np.ones(lab.shape, bool) if mask is None else np.asarray(mask.array) > 0
        fractions.append(float(confirmed.mean()))
        classes.update(int(v) for v in np.unique(lab))
        fg = (lab > 0) & confirmed
        if fg.any():
            idx = np.argwhere(lab > 0)  # the object's extent: every labeled voxel, confirmed or not
            extents.append([(float(hi - lo) + 1) * s for lo, hi, s in
                            zip(idx.min(0), idx.max(0), image.spacing, strict=True)])
        while len(values) < arr.shape[0]:
            values.append([])
        for c in range(arr.shape[0]):
            sample = arr[c][fg] if fg.any() else arr[c].ravel()
            values[c].append(sample[:: max(1, sample.size // 20000)].astype(np.float64))
    if not spacings:
        raise ValueError("no labeled case to plan from: add at least one labeled scan")
    intensity = []
    for chunks in values:
        v = np.concatenate(chunks)
        intensity.append({"mean": float(v.mean()), "std": float(v.std()),
                          "p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5))})
    median_spacing = [float(v) for v in np.median(spacings, axis=0)]
    median_shape = [int(v) for v in np.median(shapes, axis=0)]
    extent = ([float(v) for v in np.median(extents, axis=0)] if extents
              else [n * s for n, s in zip(median_shape, median_spacing, strict=True)])
    return Fingerprint(len(spacings), median_spacing, median_shape, intensity, sorted(classes), extent,
                       float(np.mean(fractions)))


@dataclass
class Plan:
    """How a first model is trained, and how long it should take on this machine.

    Attributes
    ----------
    target_spacing : list of float
    patch_size : list of int
        (z, y, x) voxels at ``target_spacing``.
    base_filters : int
    labeled_bs, unlabeled_bs : int
    iterations : int
    step_seconds : float
        Measured seconds per training step (:func:`probe_step_seconds`).
    budget_seconds, estimated_seconds : float
    method : str
    device : str
    machine : str
        The CPU model or GPU name the step was measured on.
    reasons : list of str
        Why each choice was made, in words.
    """

    target_spacing: list[float]
    patch_size: list[int]
    base_filters: int
    labeled_bs: int
    unlabeled_bs: int
    iterations: int
    step_seconds: float
    budget_seconds: float
    estimated_seconds: float
    method: str
    device: str
    machine: str
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One paragraph for the person: what is trained and about how long it takes here."""
        z, y, x = self.patch_size
        sz, sy, sx = self.target_spacing
        return (
            f"about {_minutes(self.estimated_seconds)} on this {self.machine}: {self.method}, "
            f"{self.base_filters} filters, patch {z}x{y}x{x} at {sz:.3g}x{sy:.3g}x{sx:.3g} mm, "
            f"{self.iterations} iterations of {self.step_seconds:.2f} s"
        )

    def config_values(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields this plan sets."""
        return {"target_spacing": list(self.target_spacing), "patch_size": tuple(self.patch_size),
                "base_filters": self.base_filters, "labeled_bs": self.labeled_bs,
                "unlabeled_bs": self.unlabeled_bs, "iterations": self.iterations, "method": self.method,
                "time_budget_seconds": round(self.iterations * self.step_seconds * BUDGET_SLACK, 1)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the model's metadata)."""
        return asdict(self)


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def patch_for(extent_mm: list[float], spacing: list[float], shape_vox: list[int]) -> list[int]:
    """The patch (multiples of 16) holding the object with :data:`CONTEXT` at ``spacing``, at most the image
    (``shape_vox`` at that spacing, rounded up to 16) and at least 16."""
    out = []
    for e, s, n in zip(extent_mm, spacing, shape_vox, strict=True):
        want = math.ceil(e * CONTEXT / s / 16) * 16
        cap = max(16, math.ceil(n / 16) * 16)
        out.append(int(min(max(16, want), cap)))
    return out


def make_plan(
    fp: Fingerprint,
    budget_seconds: float,
    step_seconds: Callable[[list[int], int, int, int], float],
    device: str = "cpu",
    method: str = "supervised",
    unlabeled: bool = False,
    machine: str = "CPU",
) -> Plan:
    """The finest plan whose steps fit ``budget_seconds`` (see the module docstring for the rules).

    Parameters
    ----------
    fp : Fingerprint
    budget_seconds : float
        Wall time the person gives the training.
    step_seconds : callable
        ``step_seconds(patch_zyx, base_filters, labeled_bs, unlabeled_bs) -> seconds`` (e.g. a
        :func:`probe_step_seconds` partial; tests pass a formula).
    device, method : str
    unlabeled : bool
        Whether the workspace has unlabeled scans for a semi-supervised method's second stream.
    """
    filters = 8 if device == "cpu" else 16
    labeled_bs, unlabeled_bs = 2, (2 if unlabeled and method != "supervised" else 0)
    usable = budget_seconds * (1 - OVERHEAD_SHARE)
    reasons = [f"object {' x '.join(f'{e:.0f}' for e in fp.object_extent_mm)} mm (median foreground box)"]
    chosen = None
    for factor in COARSENING:
        spacing = [max(s, min(fp.median_spacing) * factor) for s in fp.median_spacing]
        shape = [n * s0 / s for n, s0, s in zip(fp.median_shape, fp.median_spacing, spacing, strict=True)]
        across = min(e / s for e, s in zip(fp.object_extent_mm, spacing, strict=True))
        if chosen is not None and across < MIN_OBJECT_VOXELS:
            reasons.append(f"stopped coarsening: {across:.0f} voxels across the object at {factor}x")
            break
        patch = patch_for(fp.object_extent_mm, spacing, [math.ceil(v) for v in shape])
        if int(np.prod(patch)) > MAX_PATCH_VOXELS and factor != COARSENING[-1]:
            continue
        seconds = float(step_seconds(patch, filters, labeled_bs, unlabeled_bs))
        iterations = int(min(MAX_ITERATIONS, usable / max(seconds, 1e-6)))
        chosen = (spacing, patch, seconds, iterations)
        if iterations >= MIN_ITERATIONS:
            break
    assert chosen is not None
    spacing, patch, seconds, iterations = chosen
    iterations = max(50, iterations)
    reasons.append(f"spacing {', '.join(f'{s:.3g}' for s in spacing)} mm: the finest at which the patch "
                   f"holds the object with context and {iterations} steps fit the budget")
    estimated = iterations * seconds / (1 - OVERHEAD_SHARE)
    return Plan([round(s, 4) for s in spacing], patch, filters, labeled_bs, unlabeled_bs, iterations, seconds,
                float(budget_seconds), estimated, method, device, machine, reasons)


def probe_step_seconds(
    patch: list[int], base_filters: int, labeled_bs: int, unlabeled_bs: int, method: str = "supervised",
    device: str = "cpu", steps: int = 2,
) -> float:
    """Seconds of one real training step (the method's losses, backward, the optimiser) at ``patch`` on
    ``device``, median of ``steps`` after one warm-up; inside the training allocator settings."""
    import torch

    from napari_sscce.allocator import keep_freed_memory
    from napari_sscce.methods import get_method
    from napari_sscce.methods.base import Batch
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import optimizer_step

    cfg = TrainConfig(method=method, patch_size=tuple(patch), base_filters=base_filters, has_dropout=False,
                      labeled_bs=labeled_bs, unlabeled_bs=unlabeled_bs, device=device)
    impl = get_method(method)(cfg)
    dev = torch.device(device)
    with torch.random.fork_rng(), keep_freed_memory():
        torch.manual_seed(0)
        model = impl.build_model(1, 2).to(dev)
        if dev.type == "cpu":
            model = model.to(memory_format=torch.channels_last_3d)
        optimizers = impl.optimizers(model)
        rows = labeled_bs + unlabeled_bs
        image = torch.randn(rows, 1, *patch, device=dev)
        if dev.type == "cpu":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        label = (image[:, 0] > 0.5).long()
        mask = torch.zeros(rows, *patch, device=dev)
        mask[:labeled_bs] = 1
        batch = Batch(image, label, mask, labeled_bs)
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            loss, _ = impl.losses(model, batch, i)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            optimizer_step(loss, optimizers, None)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:
                times.append(time.perf_counter() - start)
    return float(np.median(times))
