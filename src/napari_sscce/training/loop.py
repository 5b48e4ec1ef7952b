"""The training loop: one function for the API, the command line and the napari widget.

``train(config)`` reads the dataset, builds the method's two networks, and runs ``config.iterations``
optimiser steps on two-stream patch batches, with mixed precision, a learning-rate schedule, periodic
validation (mean foreground Dice on the val split, sliding-window inference), checkpoints, exact resume
and a cancel flag. Files in ``config.out``:

``config.json``        the run's ``TrainConfig``
``splits.json``        the case names of each role actually used
``metrics.jsonl``      one JSON line per iteration (loss terms, lr) and per validation
``last.safetensors``   the latest model (written at each validation, at the end and on cancel)
``best.safetensors``   the model of best validation Dice (= last when there is no val split)
``train_state.pt``     optimisers, schedule position, sampler and random states, for ``resume``
                       (plain tensors and JSON strings, read with ``torch.load(weights_only=True)``)
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sscce.allocator import keep_freed_memory
from napari_sscce.atomic import atomic_path, atomic_write_json
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.device import resolve_device
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.geometry import axes_text, parse_axes
from napari_sscce.methods import get_method
from napari_sscce.methods.base import TrainingMethod
from napari_sscce.metrics.surface import dice
from napari_sscce.models.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from napari_sscce.precision import (
    CHECK_BATCHES,
    FALLBACK_SHARE,
    FALLBACK_WINDOW,
    PrecisionChoice,
    choose_training_precision,
    precision_label,
    remember_runtime_fallback,
    uses_channels_last,
)
from napari_sscce.progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, check, report
from napari_sscce.training import distributed
from napari_sscce.training.augment import AugmentConfig, resolve_flip_axes
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.data import Splits, infer_num_classes, resolve_splits
from napari_sscce.training.run_folder import claim_run_folder, truncate_metrics
from napari_sscce.training.sampling import BatchStream, CaseStore, PatchSampler

STATE_FILE = "train_state.pt"
#: give up after this many consecutive bad steps (non-finite loss or gradients, or a restored state)
MAX_NONFINITE = 20
#: refresh the in-memory copy of the last good state every this many good steps (and at each checkpoint)
SNAPSHOT_EVERY = 50
#: share of skipped steps above which a finished run carries a warning (``TrainResult.warning``, the
#: ``train_summary``, a progress event, ``sscce train``'s output and the fine-tune's message)
SKIPPED_WARNING_SHARE = 0.05


class TrainingError(FloatingPointError):
    """Training cannot continue (e.g. the loss or the gradients stayed non-finite); the message says why."""


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    best_path, last_path : pathlib.Path or None
        Checkpoints (None only on a non-main rank of a distributed run).
    history : list of dict
        The metric lines of this call (as in ``metrics.jsonl``).
    iterations : int
        Optimiser steps completed in all (resumed ones included).
    cancelled : bool
        True when the cancel flag stopped the run; its state was saved and ``resume`` continues it.
    best_metric : float or None
        Best validation mean foreground Dice.
    warning : str or None
        Set when the run finished but learned from noticeably fewer steps than asked
        (:func:`numerics_warning`).
    model : torch.nn.Module or None
        The trained ``DualModel`` (on its training device).
    numerics : dict
        ``skipped_steps``, ``restored_states``, ``reduced_precision_retries`` (steps redone in fp32), the
        final ``precision`` and ``precision_fallback`` (None, or where and why the run switched to fp32).
    """

    best_path: Path | None
    last_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    iterations: int = 0
    cancelled: bool = False
    best_metric: float | None = None
    model: Any = None
    warning: str | None = None
    numerics: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_steps(self) -> int:
        """Optimiser steps that changed the weights: ``iterations`` less the skipped ones."""
        return max(0, self.iterations - int(self.numerics.get("skipped_steps", 0)))


# ---------------------------------------------------------------------------- small pieces
def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask cuDNN for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the legacy global generator
    torch.manual_seed(seed)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = bool(deterministic)
        torch.backends.cudnn.benchmark = not deterministic


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Learning-rate multiplier at ``iteration`` (0-based) for the config's schedule."""
    if config.schedule == "step":
        return config.gamma ** sum(iteration >= m for m in config.resolved_milestones())
    if config.schedule == "poly":
        return (1.0 - iteration / config.iterations) ** config.poly_power
    return 1.0


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main rank only); on resume drops lines past the restart."""

    def __init__(self, path: Path | None, resume_from: int | None):
        self.path = path
        if path is None:
            return
        truncate_metrics(path, resume_from)  # tolerates a half-written last line

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, default=float) + "\n")


# ---------------------------------------------------------------------------- validation
def validate(
    model: torch.nn.Module,
    cases: list[tuple[str, Any, Any]],
    config: TrainConfig,
    device: torch.device,
    num_classes: int,
    cancel: CancelToken | None = None,
    spacing: list[float] | None = None,
) -> dict[str, Any]:
    """Mean foreground Dice of the model on ``(name, image Volume, label Volume)`` cases.

    Sliding-window inference (``inference.predict.predict_volume``) with the training patch, the
    config's ``val_overlap`` and normalisation, mean of both networks' softmax, argmax. With ``spacing``
    (a model trained at a target spacing) inference resamples to it and back, so the Dice is on the
    labels' own grid.
    """
    icfg = InferenceConfig(
        patch_size=tuple(config.patch_size),
        overlap=config.val_overlap,
        device=str(device),
        precision="fp32" if config.precision == "fp32" else "auto",
        batch_size=2,
    )
    meta = {"normalization": {"mode": config.normalization}, "patch_size": list(config.patch_size)}
    if spacing:
        meta["spacing"] = list(spacing)
    per_case: dict[str, list[float]] = {}
    was_training = model.training
    for name, image, label in cases:
        check(cancel)
        pred = predict_volume(model, image, icfg, metadata=meta)
        gt = np.asarray(label.array)
        per_case[name] = [float(dice(pred.labels == c, gt == c)) for c in range(1, num_classes)]
    model.train(was_training)
    scores = np.array(list(per_case.values()), dtype=float)
    per_class = scores.mean(0).tolist() if len(scores) else []
    return {
        "dice": float(np.mean(per_class)) if per_class else float("nan"),
        "dice_per_class": per_class,
        "cases": len(per_case),
    }


# ---------------------------------------------------------------------------- state
def _save_state(path: Path, iteration: int, model, optimizers, scaler, rank_states, extra: dict) -> None:
    state = {
        "iteration": torch.tensor(iteration),
        "model": model.state_dict(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rank_torch_rng": [s["torch_rng"] for s in rank_states],
        "rank_cuda_rng": [s["cuda_rng"] for s in rank_states],
        "rank_sampler": [s["sampler"] for s in rank_states],
        "extra": json.dumps(extra),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no training state to resume from") from None
    except Exception as exc:  # corrupt or foreign file
        raise ValueError(f"{path}: not a readable training state ({exc})") from exc


def _rank_state(sampler_state: dict, device: torch.device) -> dict[str, Any]:
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0),
        "sampler": json.dumps(sampler_state),
    }


# ---------------------------------------------------------------------------- numeric guards
def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One fused check that every tensor is finite (a norm that overflows float32 counts as not finite)."""
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return True
    by_dtype: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.device, t.dtype), []).append(t)
    norms = [torch.stack(torch._foreach_norm(group)).float() for group in by_dtype.values()]
    return all(bool(torch.isfinite(n).all()) for n in norms)


def grads_finite(optimizers: list[torch.optim.Optimizer]) -> bool:
    """Whether the gradients of every parameter of every optimiser are finite."""
    return _all_finite(
        [p.grad for opt in optimizers for group in opt.param_groups for p in group["params"]
         if p.grad is not None]
    )


def state_finite(model: torch.nn.Module) -> bool:
    """Whether the weights and buffers (BatchNorm running statistics) of ``model`` are finite."""
    return _all_finite(list(model.state_dict().values()))


class GoodState:
    """An in-memory copy of the model's and optimisers' last known good state (finite weights)."""

    def __init__(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]):
        self.model, self.optimizers = model, optimizers
        self.take()

    def take(self) -> None:
        """Remember the current state (call only when :func:`state_finite`)."""
        self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optim = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]

    def restore(self) -> None:
        """Put the remembered state back (the copy stays intact for further restores)."""
        self.model.load_state_dict(self.weights)
        for opt, state in zip(self.optimizers, self.optim, strict=True):
            opt.load_state_dict(copy.deepcopy(state))


class StepGuard:
    """Keeps non-finite numbers out of the weights: counts skipped steps, restores the last good state.

    After every step :meth:`after_step` checks the weights and buffers (BatchNorm running statistics, which
    a forward pass with non-finite activations poisons even when the step is skipped); when they are not
    finite the last good state (:class:`GoodState`, refreshed every :data:`SNAPSHOT_EVERY` good steps and
    at each checkpoint) is put back. :data:`MAX_NONFINITE` bad steps in a row raise :class:`TrainingError`.
    """

    def __init__(self, model, optimizers, precision: str, counts: dict | None = None):
        self.good = GoodState(model, optimizers)
        self.precision = precision
        self.skipped = int((counts or {}).get("skipped_steps", 0))
        self.restored = int((counts or {}).get("restored_states", 0))
        self.in_a_row = 0
        self.good_steps = 0

    def after_step(self, stepped: bool, loss: torch.Tensor, terms: dict) -> None:
        """Account for one step (taken or skipped by :func:`optimizer_step`)."""
        healthy = state_finite(self.good.model)
        if not healthy:
            self.good.restore()
            self.restored += 1
        if stepped and healthy:
            self.in_a_row, self.good_steps = 0, self.good_steps + 1
            if self.good_steps % SNAPSHOT_EVERY == 0:
                self.good.take()
            return
        self.skipped += int(not stepped)
        self.in_a_row += 1
        if self.in_a_row >= MAX_NONFINITE:
            raise TrainingError(
                f"training stopped: {MAX_NONFINITE} steps in a row had a non-finite loss or gradients or "
                f"left non-finite weights (last loss {float(loss.detach()):.4g}, terms {terms}; precision "
                f"{self.precision}); lower the learning rate or use --precision fp32"
            )

    def checkpoint(self) -> None:
        """Refresh the good state (at each checkpoint)."""
        if state_finite(self.good.model):
            self.good.take()

    def counts(self) -> dict[str, int]:
        """``skipped_steps`` and ``restored_states`` so far (resumed runs included)."""
        return {"skipped_steps": self.skipped, "restored_states": self.restored}


def numerics_warning(counts: dict[str, int], iterations: int) -> str | None:
    """A sentence when more than :data:`SKIPPED_WARNING_SHARE` of ``iterations`` steps were skipped or any
    state was restored (non-finite numbers); ``None`` for a healthy run."""
    skipped, restored = int(counts.get("skipped_steps", 0)), int(counts.get("restored_states", 0))
    if iterations <= 0 or (skipped <= SKIPPED_WARNING_SHARE * iterations and not restored):
        return None
    return (f"{skipped} of {iterations} steps were skipped (non-finite loss or gradients) and the weights "
            f"were restored {restored} time(s): the model learned from fewer steps than asked; consider "
            "--precision fp32 or a lower learning rate")


def optimizer_step(loss: torch.Tensor, optimizers: list, scaler: Any, agree=None) -> bool:
    """Backward and step every optimiser unless the loss or any gradient is not finite.

    With a GradScaler (fp16) the gradients are unscaled before the check and the scaler's scale is updated
    either way (an overflow lowers it). ``agree`` (``bool -> bool``, e.g. :func:`distributed.all_true` bound
    to the run's context) makes the loss check a decision of every rank, so that no rank skips a backward
    the others run. Returns whether the step was taken.
    """
    agree = agree or bool
    if scaler is None:
        if not agree(bool(torch.isfinite(loss.detach()))):
            return False
        loss.backward()
        if not grads_finite(optimizers):  # gradients are all-reduced: every rank sees the same answer
            return False
        for opt in optimizers:
            opt.step()
        return True
    scaler.scale(loss).backward()
    for opt in optimizers:
        scaler.unscale_(opt)
    ok = grads_finite(optimizers)
    if ok:
        for opt in optimizers:
            scaler.step(opt)
    scaler.update()
    return ok


#: fp16 steps at the start of a run whose overflows are the GradScaler finding its scale, not broken
#: numerics: they are redone in fp32 but do not count toward the fallback
FP16_GRACE_STEPS = 20


class BudgetKeeper:
    """Keeps the training steps within ``config.time_budget_seconds`` when they run slower than planned.

    Every :data:`BUDGET_CHECK_EVERY` steps (after the first ones) it projects the finish from the measured
    pace; when that overruns the budget, the run's total becomes what still fits (the poly / step schedule
    and the ramp-up follow the new total), at least :data:`BUDGET_MIN_SHARE` of the planned steps, and the
    change is said once and recorded (``train_summary["budget"]``). Single-process runs only.
    """

    def __init__(self, budget: float | None, planned: int, start_iteration: int):
        self.budget, self.planned, self.start = budget, planned, start_iteration
        self.began = time.perf_counter()
        self.record: dict[str, Any] | None = None

    def new_total(self, iteration: int, total: int) -> int | None:
        """A shorter total when the pace overruns the budget at ``iteration``, else None."""
        done = iteration - self.start
        if not self.budget or done < BUDGET_CHECK_EVERY or done % BUDGET_CHECK_EVERY:
            return None
        elapsed = time.perf_counter() - self.began
        pace = elapsed / done
        if elapsed + pace * (total - iteration) <= self.budget:
            return None
        fits = iteration + max(0, int((self.budget - elapsed) / pace))
        new = max(fits, int(math.ceil(BUDGET_MIN_SHARE * self.planned)), iteration)
        if new >= total:
            return None
        self.record = {"planned_iterations": self.planned, "iterations": new, "at": iteration,
                       "seconds_per_step": round(pace, 3), "budget_seconds": self.budget}
        return new


#: how often (steps) :class:`BudgetKeeper` looks at the pace
BUDGET_CHECK_EVERY = 25
#: fewest steps, as a share of the planned ones, a run shortened to its budget keeps
BUDGET_MIN_SHARE = 0.25


class PrecisionWatch:
    """Watches reduced-precision steps while they run and decides when the run falls back to fp32.

    A reduced-precision step whose loss or gradients are not finite is redone in fp32 on the same batch
    (the weights were not touched: :func:`optimizer_step` skipped it), so no step is lost. When such steps
    exceed :data:`napari_sscce.precision.FALLBACK_SHARE` of the last
    :data:`napari_sscce.precision.FALLBACK_WINDOW` reduced-precision steps (two in fifty), the rest of the
    run is fp32 (:meth:`Trainer.fall_back`). fp32 steps are not watched here: :class:`StepGuard` keeps its
    skip / restore / stop rules for them.
    """

    def __init__(self, precision: str, state: dict | None = None):
        state = state or {}
        self.precision = precision
        self.recent: list[bool] = []  # True = failed, newest last
        self.retries = int(state.get("reduced_precision_retries", 0))
        self.fallback: dict[str, Any] | None = state.get("precision_fallback")
        self.steps = 0

    @property
    def active(self) -> bool:
        """Whether the run still uses reduced precision."""
        return self.precision != "fp32" and self.fallback is None

    def record(self, failed: bool) -> bool:
        """Account for one reduced-precision step; True when the run must fall back to fp32 now."""
        self.steps += 1
        self.retries += int(failed)
        if self.precision == "fp16" and self.steps <= FP16_GRACE_STEPS:
            return False
        self.recent = (self.recent + [failed])[-FALLBACK_WINDOW:]
        return sum(self.recent) > FALLBACK_SHARE * FALLBACK_WINDOW

    def reason(self) -> str:
        """Why the run fell back, in words."""
        return (f"{sum(self.recent)} of the last {len(self.recent)} {self.precision} steps had a non-finite "
                f"loss or gradients (more than {FALLBACK_SHARE:.0%} of {FALLBACK_WINDOW})")

    def counts(self) -> dict[str, Any]:
        """``reduced_precision_retries`` (steps redone in fp32) for the metrics lines."""
        return {"reduced_precision_retries": self.retries}

    def state(self) -> dict[str, Any]:
        """What ``resume`` needs: the retries so far and the fallback record (None without one)."""
        return {"reduced_precision_retries": self.retries, "precision_fallback": self.fallback}


def _choose_precision(config: TrainConfig, model, sampler, device, progress):
    """The training precision (:func:`napari_sscce.precision.choose_training_precision`), announced.

    The self-check batch is drawn from ``sampler`` and the sampler put back where it was, so the run's
    batches (and exact resume) do not depend on whether a check ran.
    """
    def check_batch():
        state = copy.deepcopy(sampler.state_dict())
        batches = [sampler.next_batch().to(device) for _ in range(CHECK_BATCHES)]
        sampler.load_state_dict(state)
        return batches

    choice = choose_training_precision(model, check_batch, device, config.precision)
    report(progress, ProgressEvent("train", 0, config.iterations, f"precision {choice.reason}"))
    return choice


# ---------------------------------------------------------------------------- the loop
def _build_model(method: TrainingMethod, num_classes: int, init_checkpoint: str | None, in_channels: int = 1):
    if init_checkpoint:
        ckpt = load_checkpoint(init_checkpoint)
        model = ckpt.model
        if model.num_classes != num_classes:
            raise ValueError(
                f"{init_checkpoint}: the model has {model.num_classes} classes, the data {num_classes}"
            )
        if model.in_channels != in_channels:
            raise ValueError(f"{init_checkpoint}: the model takes {model.in_channels} input channel(s), the "
                             f"data have {in_channels}")
        return model
    return method.build_model(in_channels, num_classes)


def _inherit_flip_axes(
    init_checkpoint: str, axes: tuple[int, ...], info: dict
) -> tuple[tuple[int, ...], dict]:
    """Fine-tuning keeps the starting model's flip restrictions.

    A fine-tune from a few corrected volumes has too few cases to see that, say, the hippocampus head
    always lies before its body (``orientation_axes`` needs three); the model it starts from knows it
    (its ``augmentation`` metadata), so ``"auto"`` flips only axes both allow.
    """
    record = (read_checkpoint_metadata(init_checkpoint).get("augmentation") or {}).get("flip_axes")
    if record is None:
        return axes, info
    allowed = parse_axes(record)
    kept = tuple(a for a in axes if a in allowed)
    return kept, {**info, "flip_axes": axes_text(kept), "inherited_from": str(init_checkpoint)}


def train(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    init_checkpoint: str | None = None,
) -> TrainResult:
    """Train a model as ``config`` says; see the module docstring for the files written.

    Parameters
    ----------
    config : TrainConfig
    progress : callable, optional
        Receives ``ProgressEvent("train", iteration, iterations, values={loss terms, "loss", "lr"})``
        after every step and ``ProgressEvent("validate", ...)`` with ``values={"val_dice", ...}``.
    cancel : CancelToken, optional
        Checked before every step and between validation cases. A cancelled run saves its state and
        ``last.safetensors`` and returns with ``cancelled=True`` (``resume`` continues it).
    init_checkpoint : str, optional
        Start from this model (fine-tuning); overrides ``config.init_checkpoint``.

    Returns
    -------
    TrainResult
    """
    start_time = time.perf_counter()
    ctx = distributed.setup(resolve_device(config.device))
    try:
        init = init_checkpoint or config.init_checkpoint
        with claim_run_folder(config.out, resume=config.resume, overwrite=config.overwrite, main=ctx.is_main):
            return Trainer(config, progress, cancel, init, ctx, start_time).run()
    finally:
        distributed.cleanup(ctx)


class Trainer:
    """One training run, in named steps: set up (:meth:`__init__`), :meth:`step`, :meth:`validate`,
    :meth:`save`; :meth:`run` strings them together. Used by :func:`train`, which owns the distributed
    context and the run folder.
    """

    def __init__(self, config: TrainConfig, progress, cancel, init_checkpoint, ctx, start_time: float):
        self.progress, self.cancel, self.ctx, self.start_time = progress, cancel, ctx, start_time
        self.device, self.main = ctx.device, ctx.is_main
        self.out = Path(config.out)
        self.state_path = self.out / STATE_FILE
        self.last_path, self.best_path = self.out / "last.safetensors", self.out / "best.safetensors"
        method_cls = get_method(config.method)
        if not method_cls.uses_unlabeled and config.unlabeled_bs:
            config = config.replace(unlabeled_bs=0)
        self.config = config
        self.method = method_cls(config)
        self.dataset = open_dataset(config.data)
        self.splits: Splits = resolve_splits(self.dataset, config.split, config.labeled)
        self._read_labeled(init_checkpoint)
        self._build(init_checkpoint)
        self.start_it, self.best_metric, self.best_iteration, resumed_counts = 0, None, None, None
        if config.resume:
            resumed_counts = self._resume()
        self._open_outputs()
        self.watch = PrecisionWatch(self.choice.precision, resumed_counts)
        if self.watch.fallback is not None:  # resumed after a fallback: the rest stays fp32
            self._use_fp32(self.watch.fallback["reason"], self.watch.fallback["iteration"])
        self.guard = StepGuard(self.model, self.optimizers, self.choice.precision, resumed_counts)

    # ------------------------------------------------------------------ setup
    def _event(self, message: str, iteration: int = 0, **kw) -> None:
        report(self.progress, ProgressEvent("train", iteration, self.config.iterations, message, **kw))

    def _read_labeled(self, init_checkpoint: str | None) -> None:
        """Labels of the labeled cases: number of classes, training spacing, flip axes and augmentation."""
        config = self.config
        self._event("reading labeled cases")
        labels, spacings, channels = [], [], []
        for name in self.splits.labeled:
            image, label, _ = self.dataset.load_case(name)
            labels.append(np.asarray(label.array) if label is not None else np.zeros(1))
            spacings.append(image.spacing)
            channels.append(tuple(image.channel_names))
        for name, have in zip(self.splits.labeled, channels, strict=True):
            if have != channels[0]:
                raise ValueError(f"labeled cases differ in their channels: {self.splits.labeled[0]!r} has "
                                 f"{list(channels[0]) or ['one']}, {name!r} has {list(have) or ['one']}")
        #: channel names of the scans (empty for single-channel scans), recorded in the model file
        self.channel_names: tuple[str, ...] = channels[0] if channels else ()
        self.num_classes = config.num_classes or infer_num_classes(labels)
        self.spacing = [float(v) for v in np.median(np.array(spacings), axis=0)]
        if config.target_spacing:
            self.spacing = [float(v) for v in config.target_spacing]
        flip_axes, augmentation = resolve_flip_axes(config.flip_axes, labels, self.num_classes)
        if init_checkpoint and config.flip_axes == "auto":
            flip_axes, augmentation = _inherit_flip_axes(init_checkpoint, flip_axes, augmentation)
        self.augment_config = AugmentConfig.from_train_config(config, flip_axes)
        augmentation["rot90"] = self.augment_config.rot90
        self.augmentation = augmentation
        if augmentation["orientation_axes"]:
            self._event(
                f"classes ordered along {', '.join(augmentation['orientation_axes'])}: flipping only "
                f"{augmentation['flip_axes']}, in-plane rotations "
                f"{'on' if self.augment_config.rot90 else 'off'}"
            )

    def _build(self, init_checkpoint: str | None) -> None:
        """Model, sampler, precision, optimisers and scaler (in this order: it fixes the random streams)."""
        config, ctx, device = self.config, self.ctx, self.device
        seed_everything(config.seed, config.deterministic)
        store = CaseStore(
            self.dataset.load_case, self.num_classes, config.normalization, self.method.extra_targets,
            config.cache_mb, config.target_spacing,
        )
        model = _build_model(self.method, self.num_classes, init_checkpoint,
                             max(1, len(self.channel_names))).to(device)
        torch.manual_seed(config.seed * 1000 + 1 + ctx.rank)  # dropout etc. differ per rank
        self.sampler = PatchSampler(
            store, self.splits.labeled, self.splits.unlabeled, config.patch_size, config.labeled_bs,
            config.unlabeled_bs, config.foreground_fraction, self.augment_config,
            seed=config.seed, rank=ctx.rank, world_size=ctx.world_size,
        )
        self.choice = _choose_precision(config, model, self.sampler, device, self.progress)
        self.channels_last = uses_channels_last(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        self.train_model = distributed.wrap_model(model, ctx)
        self.optimizers = self.method.optimizers(model)
        use_scaler = self.choice.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    def _resume(self) -> dict | None:
        """Restore ``train_state.pt``; returns the saved numeric-guard counts."""
        state, ctx = _load_state(self.state_path), self.ctx
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if len(state["rank_sampler"]) != ctx.world_size:
            raise ValueError(
                f"{self.state_path}: saved by {len(state['rank_sampler'])} process(es), "
                f"resumed with {ctx.world_size}"
            )
        self.sampler.load_state_dict(json.loads(state["rank_sampler"][ctx.rank]))
        torch.set_rng_state(state["rank_torch_rng"][ctx.rank])
        if self.device.type == "cuda" and state["rank_cuda_rng"][ctx.rank].numel():
            torch.cuda.set_rng_state(state["rank_cuda_rng"][ctx.rank], self.device)
        self.start_it = int(state["iteration"])
        extra = json.loads(state["extra"])
        self.best_metric, self.best_iteration = extra.get("best_metric"), extra.get("best_iteration")
        if extra.get("method_state") is not None:
            self.method.load_state_dict(extra["method_state"])
        return extra.get("numerics")

    def _open_outputs(self) -> None:
        """``config.json``, ``splits.json`` and the metrics log (main rank), and the run's bookkeeping."""
        config = self.config
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            config.save(self.out / "config.json")
            atomic_write_json(self.out / "splits.json", self.splits.to_dict())
        self.log = MetricsLog(
            self.out / "metrics.jsonl" if self.main else None, self.start_it if config.resume else None
        )
        self.history: list[dict[str, Any]] = []
        self.val_cases: list[tuple[str, Any, Any]] | None = None
        self.sampler_state = self.sampler.state_dict()
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ step
    def step(self, iteration: int, batch) -> dict[str, Any]:
        """One optimiser step at ``iteration`` (0-based); returns its metrics line."""
        config, device = self.config, self.device
        batch = batch.to(device, non_blocking=True)
        if self.channels_last:
            batch.image = batch.image.contiguous(memory_format=torch.channels_last_3d)
        lr = config.lr * lr_factor(config, iteration)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        dtype = self.choice.dtype
        loss, terms, stepped = self._forward_backward(batch, iteration, dtype)
        if dtype is not None and self.watch.active:
            if not stepped:  # redo the step in fp32 from the untouched weights: no step is lost
                if not state_finite(self.model):  # BatchNorm statistics poisoned by the failed forward
                    self.guard.good.restore()
                loss, terms, stepped = self._forward_backward(batch, iteration, None, scaler=False)
            if self.watch.record(failed=not self._low_ok):
                self.fall_back(iteration)
        if stepped:
            self.method.after_step(self.model, iteration)
        self.guard.after_step(stepped, loss, terms)
        record = {"iteration": iteration + 1, "loss": float(loss.detach()), "lr": lr, **terms}
        record.update(self.guard.counts())
        record.update(self.watch.counts())
        return record

    def _forward_backward(self, batch, iteration: int, dtype, scaler: bool = True):
        """Losses at ``dtype`` (None: fp32), backward and optimiser step; returns (loss, terms, stepped)."""
        device = self.device
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, terms = self.method.losses(self.train_model, batch, iteration)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        stepped = optimizer_step(loss, self.optimizers, self.scaler if scaler else None,
                                 agree=lambda flag: distributed.all_true(flag, self.ctx))
        if dtype is not None:
            self._low_ok = stepped
        return loss, terms, stepped

    def _use_fp32(self, reason: str, iteration: int) -> None:
        """Run the rest of training in fp32 (no scaler); the choice's reason says since when and why."""
        old = self.choice
        self.choice = PrecisionChoice(
            "fp32", f"fp32 from iteration {iteration} (fell back from {old.precision}: {reason})",
            old.check, old.key,
        )
        self.scaler = None
        if hasattr(self, "guard"):
            self.guard.precision = "fp32"

    def fall_back(self, iteration: int) -> None:
        """Switch the rest of the run to fp32, record it (metrics.jsonl, ``train_summary``, the verdict
        cache for ``auto``) and say it once."""
        reduced, reason = self.choice.precision, self.watch.reason()
        self.watch.fallback = {"iteration": iteration + 1, "from": reduced, "to": "fp32", "reason": reason}
        if self.config.precision == "auto":
            remember_runtime_fallback(self.choice, reason)
        self._use_fp32(reason, iteration + 1)
        if state_finite(self.model):
            self.guard.good.take()
        else:
            self.guard.good.restore()
        self._log({"iteration": iteration + 1, "event": "precision_fallback", **self.watch.fallback})
        self._event(f"precision: {reduced} steps turned non-finite ({reason}): training continues in fp32 "
                    "from the last good state", iteration + 1)

    def _log(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        self.history.append(record)

    # ------------------------------------------------------------------ validate
    def validate(self, iteration: int) -> dict | None:
        """Validation Dice on the val split (main rank; None without one); tracks the best."""
        config = self.config
        if not self.main or not self.splits.val:
            return None
        if self.val_cases is None:
            chosen = self.splits.val[: config.val_max_cases] if config.val_max_cases else self.splits.val
            self.val_cases = [(n, *self.dataset.load_case(n)[:2]) for n in chosen]
        report(self.progress, ProgressEvent("validate", iteration, config.iterations, "validating"))
        metrics = validate(self.model, self.val_cases, config, self.device, self.num_classes, self.cancel,
                           spacing=self.spacing if config.target_spacing else None)
        if self.best_metric is None or metrics["dice"] > self.best_metric:
            self.best_metric, self.best_iteration = metrics["dice"], iteration
        self._log({
            "iteration": iteration,
            "val_dice": metrics["dice"],
            "val_dice_per_class": metrics["dice_per_class"],
            "best_val_dice": self.best_metric,
        })
        report(self.progress, ProgressEvent(
            "validate", iteration, config.iterations,
            f"val Dice {metrics['dice']:.4f} (best {self.best_metric:.4f})",
            values={"val_dice": metrics["dice"], "best_val_dice": self.best_metric},
        ))
        return metrics

    # ------------------------------------------------------------------ save
    def _metadata(self, val_metrics: dict | None) -> dict[str, Any]:
        config = self.config
        return {
            "method": config.method,
            "patch_size": list(config.patch_size),
            "spacing": self.spacing,
            "normalization": {"mode": config.normalization},
            "class_names": config.class_names,
            **({"channel_names": list(self.channel_names)} if self.channel_names else {}),
            "config": config.to_dict(),
            "train_summary": self.summary,
            "val_metrics": val_metrics,
            "augmentation": self.augmentation,
        }

    def save(self, iteration: int, val_metrics: dict | None) -> None:
        """Checkpoints and training state (state gathered from every rank, written by rank 0)."""
        ctx = self.ctx
        distributed.sync_state(self.model, ctx)
        rank_states = distributed.all_gather(_rank_state(self.sampler_state, self.device), ctx)
        if not self.main:
            return
        self.summary.update(
            iterations=iteration,
            seconds=round(time.perf_counter() - self.start_time, 2),
            device=str(self.device),
            precision=precision_label(self.choice.precision),
            precision_reason=self.choice.reason,
            precision_check=self.choice.check,
            precision_fallback=self.watch.fallback,
            **self.guard.counts(),
            **self.watch.counts(),
            world_size=ctx.world_size,
            cases={k: len(v) for k, v in self.splits.to_dict().items()},
            best_iteration=self.best_iteration,
            warning=numerics_warning(self.guard.counts(), iteration),
        )
        save_checkpoint(self.last_path, self.model, self._metadata(val_metrics))
        if not self.splits.val or self.best_iteration == iteration or not self.best_path.exists():
            save_checkpoint(self.best_path, self.model, self._metadata(val_metrics))
        self.guard.checkpoint()
        extra = {
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "numerics": {**self.guard.counts(), **self.watch.state()},
            "method_state": self.method.state_dict(),
        }
        _save_state(self.state_path, iteration, self.model, self.optimizers, self.scaler, rank_states, extra)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """Steps from the start (or resumed) iteration to ``config.iterations``, validating and saving.

        The steps run inside :func:`napari_sscce.allocator.keep_freed_memory` (freed activations reused
        instead of faulted in again: 1.45-1.8x per step on a 2-core CPU at the LA patch), whose memory is
        released when the run ends.
        """
        with keep_freed_memory() as allocator_note:
            self.summary["allocator"] = allocator_note
            return self._run()

    def _shorten(self, total: int, record: dict[str, Any]) -> TrainConfig:
        """Make ``total`` the run's number of steps (the schedule follows it); say so once."""
        self.config = self.config.replace(iterations=total)
        self.method.config = self.config
        self.summary["budget"] = record
        self._log({"iteration": record["at"], "event": "budget", **record})
        self._event(
            f"the steps take {record['seconds_per_step']:.2f} s here (slower than planned, e.g. another "
            f"program shares the cores): {total} iterations instead of {record['planned_iterations']} to "
            f"stay within about {_minutes(record['budget_seconds'])}", record["at"])
        return self.config

    def _run(self) -> TrainResult:
        config = self.config
        stream = BatchStream(self.sampler, config.num_workers)
        batches = iter(stream)
        iteration, last_val, cancelled = self.start_it, None, False
        keeper = BudgetKeeper(None if self.ctx.enabled else config.time_budget_seconds, config.iterations,
                              self.start_it)
        self.model.train()
        try:
            while iteration < config.iterations:
                check(self.cancel)
                batch, next_state = next(batches)
                record = self.step(iteration, batch)
                self.sampler_state = next_state
                iteration += 1
                self._log(record)
                self._event(f"loss {record['loss']:.4f}", iteration, values=dict(record))
                shorter = keeper.new_total(iteration, config.iterations)
                if shorter is not None:
                    config = self._shorten(shorter, keeper.record)
                if config.val_every and iteration % config.val_every == 0 and iteration < config.iterations:
                    last_val = self.validate(iteration) or last_val
                    self.save(iteration, last_val)
            last_val = self.validate(iteration) or last_val
        except Cancelled:
            cancelled = True
        finally:
            stream.close()
        self.save(iteration, last_val)
        warning = numerics_warning(self.guard.counts(), iteration)
        if self.main:
            if warning:
                self._event(f"warning: {warning}", iteration)
            self._event("cancelled" if cancelled else "done", iteration)
        best = self.best_metric if math.isfinite(self.best_metric or 0.0) else None
        main = self.main
        return TrainResult(
            self.best_path if main else None,
            self.last_path if main else None,
            self.history,
            iteration,
            cancelled,
            best,
            self.model,
            warning,
            {**self.guard.counts(), **self.watch.counts(), "precision": self.choice.precision,
             "precision_fallback": self.watch.fallback},
        )
