"""The verdict of a fine-tune: register the new model as a workspace version, and make it current only when
it learned from enough of its steps and does not score worse on the held-aside slices than its start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: share of the asked steps a run must have learned from (not skipped for non-finite numbers) for its model to
#: be made current; below it the model is kept as a version only, whatever its held-aside score (BatchNorm
#: statistics alone can move that score while the weights stand still)
MIN_EFFECTIVE_SHARE = 0.95


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did.

    Attributes
    ----------
    version : str or None
        The new workspace version (None when cancelled).
    adopted : bool
        Whether it became the current model.
    before, after : float or None
        Dice on the held-aside voxels of the starting and of the new model (None without held-aside data).
    start_version : str or None
        The version the fine-tune started from (None for a cold start).
    method : str
    iterations : int
    message : str
        What happened, in words (both scores when there are some).
    replayed : list of str
        Cases of the starting model's labeled set that were replayed.
    held_aside_voxels : int
    cancelled : bool
    model_path : pathlib.Path or None
        The new version's file.
    current_path : pathlib.Path or None
        The workspace's current model after the step.
    train : TrainResult or None
    """

    version: str | None
    adopted: bool
    before: float | None
    after: float | None
    start_version: str | None
    method: str
    iterations: int
    message: str
    replayed: list[str] = field(default_factory=list)
    held_aside_voxels: int = 0
    cancelled: bool = False
    model_path: Path | None = None
    current_path: Path | None = None
    train: Any = None


def verdict(version: str, start: str | None, before: float | None, after: float | None) -> tuple[bool, str]:
    if start is None:
        figure = f" (Dice {after:.3f} on the held-aside slices)" if after is not None else ""
        return True, f"new model {version}{figure} is now in use"
    if before is None or after is None:
        return True, f"new model {version} is now in use (no held-aside slices to compare it with {start})"
    if after < before:
        return False, (
            f"new model {version} scores {after:.3f} on the held-aside slices, worse than {start} "
            f"({before:.3f}): kept as a version but {start} stays in use (choose {version} under model "
            "version to use it anyway)"
        )
    return True, f"new model {version}: held-aside Dice {before:.3f} ({start}) -> {after:.3f}; now in use"


def trained_enough(result: Any) -> tuple[bool, str]:
    """Whether a training run learned from at least :data:`MIN_EFFECTIVE_SHARE` of its steps, and a sentence
    saying how many it learned from when it did not."""
    asked = int(getattr(result, "iterations", 0) or 0)
    effective = int(getattr(result, "effective_steps", asked))
    if asked > 0 and effective >= MIN_EFFECTIVE_SHARE * asked:
        return True, ""
    return False, (
        f"it learned from only {effective} of its {asked} steps (the others had non-finite numbers and were "
        f"skipped; at least {MIN_EFFECTIVE_SHARE:.0%} are needed)"
    )


def cancelled_result(ws, start_version, method, iterations, message, train_result=None) -> FinetuneResult:
    """The result of a run cancelled before a model was added: the model in use is unchanged."""
    return FinetuneResult(
        None,
        False,
        None,
        None,
        start_version,
        method,
        iterations,
        message,
        cancelled=True,
        current_path=ws.current_model_path,
        train=train_result,
    )


def record_version(ws, start_version, method, result, run, view, source, scores, l2sp) -> FinetuneResult:
    before, after = scores
    ws.reload()
    info = {
        "method": method,
        "iterations": result.iterations,
        "run": str(run),
        "labeled_cases": [c.name for c in ws.labeled_cases],
        "started_from": start_version,
        "held_aside_dice_before": before,
        "held_aside_dice_after": after,
        "held_aside_voxels": sum(h.voxels for h in view.held),
        "l2sp_weight": l2sp,
        "distill_weight": view.distill_weight,
    }
    if source is not None:
        info["replay"] = source.record()
    metrics = {"held_aside_dice": after} if after is not None else {}
    trained, why = trained_enough(result)
    info["effective_steps"] = result.effective_steps
    info["precision"] = result.numerics.get("precision")
    info["precision_fallback"] = result.numerics.get("precision_fallback")
    # the version name is allocated by the workspace; the verdict needs it, so decide first with a placeholder
    adopted, _ = verdict("new", start_version, before, after)
    adopted = adopted and trained
    adoption = ws.adopt_version(result.best_path or result.last_path, info, metrics,
                                started_from=start_version, adopt=adopted)  # under the lock: true parent
    version, adopted = adoption.version, adoption.current
    _, message = verdict(version, start_version, before, after)
    if adoption.reason:
        message = adoption.reason
    elif not trained:
        message = (f"new model {version} is kept as a version but {start_version} stays in use: {why}; your "
                   "corrections are untouched")
    elif result.warning:
        message = f"{message} (warning: {result.warning})"
    return FinetuneResult(
        version,
        adopted,
        before,
        after,
        start_version,
        method,
        result.iterations,
        message,
        view.replayed,
        sum(h.voxels for h in view.held),
        False,
        ws.version_path(version),
        ws.current_model_path,
        result,
    )
