"""The training configuration of a fine-tune and of a first model trained from scratch (cold start).

A fine-tune inherits from its starting model what the model fixes (patch size, intensity normalisation,
classes) and runs a short poly-schedule training (:data:`FINETUNE_OVERRIDES`); a cold start uses
:data:`COLD_START`, fitted to a time budget by :mod:`napari_sscce.training.plan` when one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.training.config import TrainConfig
from napari_sscce.workspace import Workspace

#: TrainConfig fields a short interactive fine-tune sets differently from a full training run: a hundred
#: steps instead of 6000 (minutes on a CPU), no periodic validation (the held-aside slices judge the model),
#: and a poly schedule (the step schedule scaled to 100 iterations would cut the rate tenfold at step 42).
FINETUNE_OVERRIDES: dict[str, Any] = {"iterations": 100, "val_every": 0, "schedule": "poly"}

#: a first model trained from scratch on a CPU: a narrow CCE dual network, no dropout, a few hundred steps
COLD_START: dict[str, Any] = {
    "method": "cce",
    "base_filters": 8,
    "has_dropout": False,
    "iterations": 400,
    "val_every": 0,
    "schedule": "poly",
    "precision": "fp32",
    # intensity scaling/shift and noise: LA cold start (2 scans x 6 painted slices, 12-min plan, seed 0,
    # 8 unseen scans) 0.670 -> 0.716 mean Dice (benchmarks/results/cold_start.md; one seed)
    "augment_intensity": True,
    "augment_noise": True,
    # in-plane rotation and zoom (nnU-Net's spatial transform): the same scenario 0.716 -> 0.731 in 11.3 min
    # (one seed; with largest component and mirroring TTA at inference 0.755)
    "augment_spatial": True,
}
#: cold-start patch bounds (voxels per axis; multiples of 16 for the four VNet downsamplings)
PATCH_MIN, PATCH_MAX = 16, 64


def build_finetune_config(
    workspace: Workspace,
    model_metadata: dict[str, Any],
    method: str,
    iterations: int,
    out: str | Path,
    **changes: Any,
) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tune on a workspace, starting from a model with ``model_metadata``.

    TrainConfig defaults, then :data:`FINETUNE_OVERRIDES`, then what the model fixes (patch size, intensity
    normalisation, classes), then ``method`` / ``iterations`` / ``out`` and ``changes``. Without unlabeled
    cases the batches hold labeled rows only.
    """
    values: dict[str, Any] = {
        **FINETUNE_OVERRIDES,
        "data": str(workspace.dataset_folder()),
        "method": method,
        "iterations": int(iterations),
        "out": str(out),
    }
    if model_metadata.get("patch_size"):
        values["patch_size"] = tuple(int(v) for v in model_metadata["patch_size"])
    norm = model_metadata.get("normalization")
    if isinstance(norm, dict) and norm.get("mode"):
        values["normalization"] = norm["mode"]
    if model_metadata.get("num_classes"):
        values["num_classes"] = int(model_metadata["num_classes"])
    if model_metadata.get("class_names"):
        values["class_names"] = list(model_metadata["class_names"])
    if not any(not c.labeled for c in workspace.cases):
        values["unlabeled_bs"] = 0
    values.update(changes)
    return TrainConfig(**values)


def cold_start_patch(shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
    """A training patch from the labeled cases' shapes: the median, down to a multiple of 16, in [16, 64]."""
    median = np.median(np.array(shapes, dtype=float), axis=0)
    return tuple(int(np.clip(m // 16 * 16, PATCH_MIN, PATCH_MAX)) for m in median)  # type: ignore[return-value]


def cold_start_config(
    workspace: Workspace, out: str | Path, budget_seconds: float | None = None, **changes: Any
) -> TrainConfig:
    """The :class:`TrainConfig` of a first model trained from scratch on ``workspace`` (``COLD_START``).

    With ``budget_seconds`` the target spacing, patch, width, batch and iterations come from a plan fitted
    to that wall time on this machine (:func:`napari_sscce.training.plan.make_plan`, measured by a timing
    probe; ``config.plan`` records it); without, the patch is the median case shape (:func:`cold_start_patch`)
    at the cases' own spacing.
    """
    unlabeled = any(not c.labeled for c in workspace.cases)
    values: dict[str, Any] = {**COLD_START, "data": str(workspace.dataset_folder()), "out": str(out)}
    if budget_seconds:
        from functools import partial

        from napari_sscce.precision import cpu_model
        from napari_sscce.training.plan import fingerprint, make_plan, probe_step_seconds

        method = changes.get("method", COLD_START["method"])
        device = str(changes.get("device", "cpu"))
        device = "cpu" if device == "auto" else device
        fp = fingerprint(workspace.load_case(c.name) for c in workspace.labeled_cases)
        probe = partial(probe_step_seconds, method=method, device=device)
        plan = make_plan(fp, float(budget_seconds), lambda p, f, lb, ub: probe(p, f, lb, ub), device,
                         method, unlabeled, cpu_model() if device == "cpu" else device)
        values.update(plan.config_values())
        values["plan"] = plan.to_dict()
    else:
        shapes = [workspace.load_case(c.name)[0].shape for c in workspace.labeled_cases]
        values["patch_size"] = cold_start_patch(shapes)
    if not unlabeled:
        values["unlabeled_bs"] = 0
    values.update(changes)  # explicit settings win over the plan
    return TrainConfig(**values)


def describe_cold_start(config: TrainConfig) -> str:
    """One sentence stating what a cold start trains."""
    z, y, x = config.patch_size
    if config.plan:
        from napari_sscce.training.plan import Plan

        return f"training a new model from scratch, {Plan(**config.plan).describe()}"
    return (
        f"training a new {config.method} model from scratch: {config.base_filters} filters wide, "
        f"patch z, y, x = {z}, {y}, {x} (from the data), {config.iterations} iterations, {config.precision}"
    )
