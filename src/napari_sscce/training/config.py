"""``TrainConfig``: every setting of a training run, saved as ``out/config.json`` and inside each checkpoint.

Defaults follow the semi-supervised literature on LA (UA-MT, Yu et al., arXiv:1907.07034, and the
methods compared with it): SGD lr 0.01, momentum 0.9, weight decay 1e-4, 6000 iterations, x0.1 at 2500
and 5000, batch 2 labeled + 2 unlabeled, patch 112x112x80 (x, y, z), i.e. ``patch_size = (80, 112, 112)``
in our (z, y, x) order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sscce.atomic import atomic_write_json
from napari_sscce.precision import PRECISIONS


def parse_method_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--option cps=false``) as a method-options dict.

    Values are read as JSON (``false``, ``30``, ``0.5``); anything that is not JSON stays a string.
    Raises ``ValueError`` for an item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options

SCHEDULES = ("step", "poly", "constant")
REFERENCE_ITERATIONS = 6000
REFERENCE_MILESTONES = (2500, 5000)
REFERENCE_RAMPUP_STEP = 150


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes
    ----------
    data : str
        Dataset folder (anything ``io.datasets.open_dataset`` reads).
    split : str or None
        A ``splits.json`` with ``"labeled"``, ``"unlabeled"`` and ``"val"`` lists of case names.
        None: the dataset's own split (its ``splits.json``), or ``labeled`` below.
    labeled : int or None
        Use only the first N labeled cases as labeled; the remaining labeled cases (not in val)
        become unlabeled (their labels are ignored). Applied after ``split``.
    method : str
        a registered method (``napari_sscce.methods.METHODS``): ``"cce"``, ``"supervised"``, ``"ugmcl"``.
    method_options : dict
        Per-method switches and weights of every loss term (see each method's ``default_options``
        and, for ablation variants, ``experimental_options``).
    networks : list of str or None
        Registry names of (net_a, net_b); None = the method's default.
    base_filters, network_normalization : int, str
        Width (16 as the papers) and normalisation of the networks.
    has_dropout : bool
        ``Dropout3d(0.5)`` on the bottleneck and the last decoder features (UA-MT layout). It drops whole
        channels: below 16 base filters switch it off (with 8 filters a run can fail to separate the
        classes; README, "Semi-supervised learning").
    patch_size : tuple of int
        Training patch (z, y, x). The command line takes X Y Z like the papers.
    target_spacing : list of float or None
        Train at this spacing (z, y, x, mm): cases are resampled when loaded (labels and annotation masks
        area-weighted, so slice annotations survive) and the model records it, so inference resamples to it.
        None: the cases' own grids (the model records their median spacing).
    plan : dict or None
        The :class:`napari_sscce.training.plan.Plan` this config was made from (a first model fitted to a
        time budget), kept with the run and the model.
    time_budget_seconds : float or None
        Wall time the training steps should fit (a plan sets it). When the steps run slower than planned
        (another program shares the cores), the run shortens its schedule to stay within it
        (:class:`napari_sscce.training.loop.BudgetKeeper`), never below a quarter of ``iterations``.
    labeled_bs, unlabeled_bs : int
        Rows of each kind per batch (two-stream batches). ``unlabeled_bs = 0`` trains on labeled only.
    iterations : int
        Optimiser steps.
    schedule : {"step", "poly", "constant"}
        ``"step"``: lr x ``gamma`` at each milestone (default 2500 and 5000 scaled to ``iterations``);
        ``"poly"``: lr x (1 - t / T) ^ ``poly_power``.
    foreground_fraction : float
        Fraction of labeled patches centred on a voxel of a random present foreground class.
    augment_* : switches of the augmentations in ``training.augment`` (``augment_spatial``: in-plane rotation
        by up to ``rotation_degrees`` and zoom by up to ``scale_range``, nnU-Net's spatial transform, about
        all three axes with ``rotation_3d``;
        ``augment_gamma`` / ``augment_blur`` / ``augment_lowres``: nnU-Net's gamma, Gaussian blur and
        simulated low-resolution transforms with its probabilities).
    flip_axes : str
        Axes ``augment_flip`` may mirror: ``"auto"`` (default) = every axis except those along which two
        foreground classes keep the same order in the labeled cases (e.g. the hippocampus head and body;
        :func:`napari_sscce.training.augment.orientation_axes`), or letters of ``"zyx"``, or ``"none"``.
        In-plane 90-degree rotations need both y and x among them.
    rampup_length, rampup_step : ramp-up ``sigmoid_rampup(t // rampup_step, rampup_length)``;
        ``rampup_step = None`` scales 150 to the iteration budget (150 at 6000 iterations).
    seed : int
        Seeds Python, NumPy and torch, and the sampler.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"``: the candidate of :func:`napari_sscce.precision.resolve_precision` (bf16 on CUDA where
        supported, else fp16 with a GradScaler; bf16 on CPUs with native bf16; else fp32; on the CPU the
        model runs in channels_last_3d),
        kept only when the cached self-check (:func:`napari_sscce.precision.choose_training_precision`)
        finds it agrees with fp32 on this model; fp16 on the CPU runs as bf16.
    out : str
        Run folder (config.json, metrics.jsonl, best/last checkpoints, training state).
    val_every : int
        Validate (and write ``last``/``best``) every N iterations; 0 = only at the end.
    val_max_cases : int or None
        Validate on the first N val cases only (None = all).
    num_workers : int
        > 0: batches are prepared in a background thread (a queue of ``num_workers * 2`` batches).
    normalization : str
        ``preprocessing.normalize_intensity`` mode, recorded in the checkpoint for inference.
    cache_mb : float
        Bound of the in-memory cache of loaded (normalised) cases.
    init_checkpoint : str or None
        Start from this model file (fine-tuning); its architecture replaces the method's default.
    resume : bool
        Continue the run in ``out`` from its ``train_state.pt`` (exactly: weights, optimisers,
        sampler and random states).
    overwrite : bool
        Delete the run already in ``out`` and start afresh (without it, and without ``resume``, a folder
        holding a run is refused; see ``training.run_folder``).
    """

    data: str = ""
    split: str | None = None
    labeled: int | None = None
    method: str = "cce"
    method_options: dict[str, Any] = field(default_factory=dict)
    networks: list[str] | None = None
    base_filters: int = 16
    network_normalization: str = "batchnorm"
    has_dropout: bool = True
    patch_size: tuple[int, int, int] = (80, 112, 112)
    target_spacing: list[float] | None = None
    plan: dict[str, Any] | None = None
    time_budget_seconds: float | None = None
    labeled_bs: int = 2
    unlabeled_bs: int = 2
    iterations: int = REFERENCE_ITERATIONS
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: list[int] | None = None
    gamma: float = 0.1
    poly_power: float = 0.9
    foreground_fraction: float = 1.0 / 3.0
    augment_flip: bool = True
    flip_axes: str = "auto"
    augment_rot90: bool = True
    augment_intensity: bool = False
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    augment_noise: bool = False
    noise_std: float = 0.05
    augment_spatial: bool = False
    rotation_degrees: float = 15.0
    scale_range: float = 0.15
    rotation_3d: bool = False
    augment_gamma: bool = False
    augment_blur: bool = False
    augment_lowres: bool = False
    rampup_length: float = 40.0
    rampup_step: int | None = None
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    precision: str = "auto"
    out: str = "runs/train"
    val_every: int = 200
    val_max_cases: int | None = None
    val_overlap: float = 0.5
    num_workers: int = 0
    normalization: str = "percentile_zscore"
    cache_mb: float = 2048.0
    num_classes: int | None = None
    class_names: list[str] | None = None
    init_checkpoint: str | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers (z, y, x), got {self.patch_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.labeled_bs < 1 or self.unlabeled_bs < 0:
            raise ValueError(
                f"need labeled_bs >= 1 and unlabeled_bs >= 0, got {self.labeled_bs}, {self.unlabeled_bs}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.networks is not None:
            self.networks = list(self.networks)
            if len(self.networks) != 2:
                raise ValueError(f"networks must name two networks, got {self.networks}")
        if self.milestones is not None:
            self.milestones = [int(m) for m in self.milestones]
        self.flip_axes = self.flip_axes.strip().lower()
        if self.flip_axes != "auto":
            from napari_sscce.io.geometry import parse_axes

            parse_axes(self.flip_axes)  # raises on letters outside zyx

    # ------------------------------------------------------------------ derived values
    def resolved_milestones(self) -> list[int]:
        """Step-schedule milestones: given ones, or 2500 and 5000 scaled from 6000 to ``iterations``."""
        if self.milestones is not None:
            return list(self.milestones)
        return [max(1, round(m * self.iterations / REFERENCE_ITERATIONS)) for m in REFERENCE_MILESTONES]

    def resolved_rampup_step(self) -> int:
        """Iterations per ramp-up unit: given, or 150 scaled from 6000 to ``iterations`` (at least 1)."""
        if self.rampup_step is not None:
            return max(1, int(self.rampup_step))
        return max(1, round(REFERENCE_RAMPUP_STEP * self.iterations / REFERENCE_ITERATIONS))

    @property
    def batch_size(self) -> int:
        """Rows per batch (labeled + unlabeled)."""
        return self.labeled_bs + self.unlabeled_bs

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise a ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON (atomically); returns the path."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: training config not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of TrainConfig fields")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None
