"""One headless fine-tune: the step the Correct & fine-tune widget, ``sscce finetune`` and benchmarks call.

:func:`run_finetune` checks the method can continue the model (:func:`napari_sscce.methods.check_compatible`),
builds the configuration (:mod:`~napari_sscce.loop.config`), finds the labeled set to replay
(:mod:`~napari_sscce.loop.replay`) or distils the starting model, writes the data view
(:mod:`~napari_sscce.loop.data_view`) with held-aside slices (:mod:`~napari_sscce.loop.held_aside`), trains
(:func:`napari_sscce.training.loop.train`), scores both models and records the verdict
(:mod:`~napari_sscce.loop.adoption`). With ``cold_start`` it trains a first model from scratch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sscce.loop.adoption import FinetuneResult, cancelled_result, record_version, trained_enough
from napari_sscce.loop.config import (
    FINETUNE_OVERRIDES,
    build_finetune_config,
    cold_start_config,
    describe_cold_start,
)
from napari_sscce.loop.data_view import (
    DISTILL_WEIGHT,
    FILL_WEIGHT,
    DataView,
    Distillation,
    build_view,
    teacher_labels,
)
from napari_sscce.loop.held_aside import HOLDOUT_FRACTION, score_model
from napari_sscce.loop.replay import REPLAY_SHARE, find_replay_source
from napari_sscce.methods.registry import check_compatible, compatible_methods, default_method
from napari_sscce.models.matching import check_classes_match, workspace_labels_classes
from napari_sscce.progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, report
from napari_sscce.training.config import TrainConfig
from napari_sscce.workspace import Workspace, ensure_version

#: learning rate of a fine-tune that cannot replay the model's labeled set: a tenth of TrainConfig's, which
#: forgot less than the full rate and than L2-SP in the same measurement (and in issue 17 on hippocampus)
NO_REPLAY_LR = 0.001
#: L2-SP weight toward the starting weights when no labeled set can be replayed (0: off; see NO_REPLAY_LR)
DEFAULT_L2SP = 0.0


#: the method a fine-tune uses when none is asked for (and it can continue the model): measured on hippocampus
#: (benchmarks/results/loop.md, 2 seeds x 4 budgets of 8-32 corrected slices) supervised fine-tuning beat CCE
#: in 8 of 8 pairs by 0.6 to 1.0 Dice points in half the time: the workspace's unlabeled scans did not pay
FINETUNE_METHOD = "supervised"


def finetune_method(metadata: dict[str, Any]) -> str:
    """:data:`FINETUNE_METHOD` when it can continue the model in ``metadata``, else the model's own method."""
    if FINETUNE_METHOD in compatible_methods(metadata.get("arch")):
        return FINETUNE_METHOD
    return default_method(metadata)


def _resolve_start(ws: Workspace, model: str | os.PathLike | None) -> Path | None:
    if model is not None:
        return Path(model)
    return ws.current_model_path


def run_finetune(
    workspace: str | os.PathLike | Workspace,
    model: str | os.PathLike | None = None,
    method: str | None = None,
    iterations: int | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    cold_start: bool = False,
    holdout: float = HOLDOUT_FRACTION,
    replay: bool = True,
    replay_share: float = REPLAY_SHARE,
    l2sp: float | None = None,
    distill: float | None = None,
    inference: Any = None,
    out: str | os.PathLike | None = None,
    **changes: Any,
) -> FinetuneResult:
    """Fine-tune a model on a workspace (or, with ``cold_start``, train a first one) and version the result.

    Parameters
    ----------
    workspace : path-like or Workspace
        Needs at least one labeled case.
    model : path-like, optional
        The starting model; default the workspace's current model. Ignored with ``cold_start``.
    method : str, optional
        Training method; default :func:`finetune_method` (supervised where it can continue the model, as
        measured; else the model's own). Must be compatible (:func:`check_compatible`).
    iterations : int, optional
        Default :data:`FINETUNE_OVERRIDES` (100) or :data:`COLD_START` (400).
    progress, cancel
        Progress events (``"train"`` steps, ``"score"``) and the cancel flag.
    cold_start : bool
        Train from scratch with :data:`COLD_START` (also when there is no model at all).
    holdout : float
        Share of each corrected case's confirmed slices held aside to score the models.
    replay : bool
        Replay the starting model's labeled set when it can be found.
    replay_share : float
        Share of labeled draws from the replayed set.
    l2sp : float, optional
        L2-SP weight toward the starting weights; default :data:`DEFAULT_L2SP` without replay, 0 with it.
    distill : float, optional
        Weight of the starting model's own labels outside the confirmed voxels (distillation, see
        :func:`build_view`); default :data:`DISTILL_WEIGHT` without replay, 0 (off) with it.
    inference : InferenceConfig, optional
        Settings for scoring the models (default ``InferenceConfig()``; always fp32).
    out : path-like, optional
        Run folder; default ``<workspace>/runs/<date-time>``.
    **changes
        Further ``TrainConfig`` fields (``seed``, ``device``, ``precision``, ...).

    Raises
    ------
    ValueError
        No labeled case, no model without ``cold_start``, or an incompatible method (the message says which).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.reload()
    if not ws.labeled_cases:
        raise ValueError(
            f"workspace {ws.folder} has no labeled case: correct a segmentation and add it first"
        )
    start = None if cold_start else _resolve_start(ws, model)
    if start is None and not cold_start:
        raise ValueError(f"workspace {ws.folder} has no model yet: choose one, or train a new model")
    run = Path(out) if out else ws.new_run_folder()
    request = _Request(
        method=method, iterations=iterations, progress=progress, cancel=cancel, holdout=holdout,
        replay=replay, replay_share=replay_share, l2sp=l2sp, distill=distill, inference=inference,
        changes=changes,
    )
    result = _cold_start(ws, run, request) if start is None else _finetune(ws, start, run, request)
    ws.finish_run(run, result.version)  # frees the run's checkpoints and data view (only a folder of ours)
    return result


@dataclass
class _Request:
    """What :func:`run_finetune` was asked for, passed on to :func:`_cold_start` or :func:`_finetune`."""

    method: str | None
    iterations: int | None
    progress: ProgressCallback | None
    cancel: CancelToken | None
    holdout: float
    replay: bool
    replay_share: float
    l2sp: float | None
    distill: float | None
    inference: Any
    changes: dict[str, Any]


def _cold_start(ws: Workspace, run: Path, request: _Request) -> FinetuneResult:
    from napari_sscce.training.loop import train

    progress, cancel = request.progress, request.cancel
    asked = (("method", request.method), ("iterations", request.iterations))
    extra = {k: v for k, v in asked if v is not None}
    config = cold_start_config(ws, run / "model", **extra, **request.changes)
    view = build_view(ws, run / "view", None, holdout=0.0, fill=FILL_WEIGHT)
    config = config.replace(data=str(view.folder))
    report(progress, ProgressEvent("train", 0, config.iterations, describe_cold_start(config)))
    result = train(config, progress=progress, cancel=cancel)
    if result.cancelled:
        message = f"cancelled after {result.iterations} iterations; no model was added"
        return cancelled_result(ws, None, config.method, result.iterations, message, result)
    info = {
        "method": config.method,
        "iterations": result.iterations,
        "run": str(run),
        "labeled_cases": [c.name for c in ws.labeled_cases],
        "note": describe_cold_start(config),
        "filled_voxels": int(sum(view.filled_voxels.values())),
    }
    trained, why = trained_enough(result)
    info["effective_steps"] = result.effective_steps
    version = ws.add_model_version(result.best_path or result.last_path, info, {}, make_current=trained)
    message = (
        f"{describe_cold_start(config)}: new model {version} is now in use" if trained else
        f"{describe_cold_start(config)}: new model {version} is kept as a version but not used: {why}; your "
        "corrections are untouched, train again to try once more"
    )
    return FinetuneResult(
        version,
        trained,
        None,
        None,
        None,
        config.method,
        result.iterations,
        message,
        model_path=ws.version_path(version),
        current_path=ws.current_model_path,
        train=result,
    )


def _finetune(ws: Workspace, start: Path, run: Path, request: _Request) -> FinetuneResult:
    from napari_sscce.training.loop import train

    method, progress, cancel, inference = request.method, request.progress, request.cancel, request.inference
    changes = dict(request.changes)
    meta = check_compatible(method, start) if method else None
    if meta is None:
        from napari_sscce.models.checkpoint import read_checkpoint_metadata

        meta = read_checkpoint_metadata(start)
        method = finetune_method(meta)
    check_classes_match(workspace_labels_classes(ws), meta, ws.folder)
    source = find_replay_source(start, meta, ws) if request.replay else None
    start, start_version = ensure_version(ws, start, meta)
    l2sp, distill = request.l2sp, request.distill
    distill_weight = (0.0 if source else DISTILL_WEIGHT) if distill is None else float(distill)
    teacher = None
    if distill_weight > 0:
        report(progress, ProgressEvent("score", 0, 2, f"segmenting the workspace with {start_version}"))
        try:
            teacher = Distillation(teacher_labels(start, ws, inference, cancel), distill_weight)
        except Cancelled:  # before any training: nothing changed, say so like a cancelled training
            message = f"cancelled before training; {start_version} stays in use"
            return cancelled_result(ws, start_version, method, 0, message)
    view = build_view(ws, run / "view", source, request.holdout, request.replay_share, teacher)
    weight = (0.0 if source else DEFAULT_L2SP) if l2sp is None else float(l2sp)
    if source is None:
        changes.setdefault("lr", NO_REPLAY_LR)
    options = {**changes.pop("method_options", {}), **({"l2sp_weight": weight} if weight > 0 else {})}
    config = build_finetune_config(
        ws,
        meta,
        method,
        request.iterations or FINETUNE_OVERRIDES["iterations"],
        run / "model",
        method_options=options,
        **changes,
    )
    config = config.replace(data=str(view.folder))
    report(
        progress,
        ProgressEvent("train", 0, config.iterations, _plan_text(start_version, config, view, weight)),
    )
    result = train(config, progress=progress, cancel=cancel, init_checkpoint=str(start))
    if result.cancelled:
        message = f"cancelled after {result.iterations} iterations; {start_version} stays in use"
        return cancelled_result(ws, start_version, method, result.iterations, message, result)
    new_path = result.best_path or result.last_path
    num_classes = int(meta.get("num_classes") or 2)
    report(progress, ProgressEvent("score", 0, 2, "scoring both models on the held-aside slices"))
    before = score_model(start, view.held, num_classes, inference, cancel)
    after = score_model(new_path, view.held, num_classes, inference, cancel)
    return record_version(ws, start_version, method, result, run, view, source, (before, after), weight)


def _plan_text(start_version: str, config: TrainConfig, view: DataView, l2sp: float) -> str:
    keep = (
        f"replaying {len(view.replayed)} case(s) of the model's labeled set"
        if view.replayed
        else f"distilling the starting model's labels (weight {view.distill_weight:g})"
        if view.distill_weight > 0
        else f"L2-SP {l2sp:g} toward the starting weights"
        if l2sp > 0
        else "no replay"
    )
    held = sum(h.voxels for h in view.held)
    return (
        f"fine-tuning {start_version} with {config.method} for {config.iterations} iterations; {keep}; "
        f"{held} confirmed voxels held aside to score it"
    )
