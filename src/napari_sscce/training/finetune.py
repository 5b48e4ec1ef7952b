"""One headless fine-tune: the rules of fine-tuning a model on a workspace (widget, CLI, benchmarks).

:func:`run_finetune` is the whole step the Correct & fine-tune widget, ``sscce finetune`` and
``benchmarks/finetune_gain.py`` call:

1. **Compatibility**: only a method that can continue the model's architecture may fine-tune it
   (:func:`check_compatible`, the rule of :mod:`napari_sscce.methods.registry`; ``sscce train --init`` uses it
   too).
2. **Inheritance**: patch size, intensity normalisation, classes and (in the loop) the flip restrictions come
   from the model (:func:`build_finetune_config`).
3. **Keep what the model knew**: when the starting model records where its labeled set is (a model trained by
   this project stores its data folder and split in its metadata; a workspace version stores the set it
   replayed) that set is replayed beside the workspace's cases (:func:`find_replay_source`); a share
   :data:`REPLAY_SHARE` of the labeled draws come from it. Otherwise the fine-tune runs at a tenth of the
   learning rate (:data:`NO_REPLAY_LR`) and *distils* the starting model: it segments every workspace image
   once (:func:`teacher_labels`), and trains on its labels outside the confirmed voxels with weight
   :data:`DISTILL_WEIGHT` (a weighted training mask; confirmed voxels weigh 1) and on the unlabeled images
   labeled by it (:data:`DISTILL_SHARE` of the labeled draws), see :func:`build_view`. A pull toward the
   starting weights (L2-SP, method option ``l2sp_weight``) is available (``l2sp``) but off by default
   (:data:`DEFAULT_L2SP`: it measured worse).
4. **Never adopt a worse model silently**: a fraction :data:`HOLDOUT_FRACTION` of the confirmed slices of
   every corrected case is held aside (not trained on); the starting and the fine-tuned model are scored on
   them (Dice on the held-aside voxels, :func:`held_aside_dice`); a fine-tune that scores worse is kept as a
   workspace version but not made current, and the result's message gives both figures.
5. **Versioning**: the starting model becomes a workspace version when it is not one yet; the new model is
   the next version, with its method, iterations, run folder, scores and replayed set in its record.

With ``model=None`` it trains a first model from scratch on the workspace (cold start, :data:`COLD_START`).
Training reads a *view* of the data: a folder in the run folder whose ``images/``, ``labels/`` and ``masks/``
link to the workspace's files and to the replayed cases' files (nothing is copied; only the training masks
of cases with held-aside slices are written), with its own ``splits.json``.

:func:`merge_corrections` keeps every confirmed voxel of a person's corrections in a new segmentation.
Nothing here imports Qt.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_json
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.models.matching import check_classes_match, workspace_labels_classes
from napari_sscce.progress import Cancelled, CancelToken, ProgressCallback, ProgressEvent, check, report
from napari_sscce.training.config import TrainConfig
from napari_sscce.workspace import Workspace

#: TrainConfig fields a short interactive fine-tune sets differently from a full training run: a hundred
#: steps instead of 6000 (minutes on a CPU), no periodic validation (the held-aside slices judge the model),
#: and a poly schedule (the step schedule scaled to 100 iterations would cut the rate tenfold at step 42).
FINETUNE_OVERRIDES: dict[str, Any] = {"iterations": 100, "val_every": 0, "schedule": "poly"}
#: share of the confirmed slices of each corrected case held aside to score the models (not trained on)
HOLDOUT_FRACTION = 0.25
#: share of labeled draws that come from the starting model's replayed labeled set (the corrected cases keep a
#: quarter of the draws, and all their unconfirmed voxels feed the unsupervised terms); chosen by measurement,
#: benchmarks/results/finetune_gain_synthetic.md
REPLAY_SHARE = 0.6
#: learning rate of a fine-tune that cannot replay the model's labeled set: a tenth of TrainConfig's, which
#: forgot less than the full rate and than L2-SP in the same measurement (and in issue 17 on hippocampus)
NO_REPLAY_LR = 0.001
#: L2-SP weight toward the starting weights when no labeled set can be replayed (0: off; see NO_REPLAY_LR)
DEFAULT_L2SP = 0.0
#: supervised weight of a distilled voxel (the starting model's own label, outside the confirmed voxels) in a
#: fine-tune that cannot replay the model's labeled set; a confirmed voxel weighs 1 (0: no distillation).
#: Issue 17's hippocampus experiment (benchmarks/results/finetune_gain.md): held-out Dice 0.7793 -> 0.7900 /
#: 0.7869 (+1.07 / +0.76, seeds 0 / 1) with it, against -1.52 / -1.89 without it (lr 0.001 in both); the
#: only weight measured
DISTILL_WEIGHT = 0.5
#: share of labeled draws that come from the unlabeled images labeled by the starting model (distillation)
DISTILL_SHARE = 0.5
#: share of the asked steps a run must have learned from (not skipped for non-finite numbers) for its model to
#: be made current; below it the model is kept as a version only, whatever its held-aside score (BatchNorm
#: statistics alone can move that score while the weights stand still)
MIN_EFFECTIVE_SHARE = 0.95
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
}
#: cold-start patch bounds (voxels per axis; multiples of 16 for the four VNet downsamplings)
PATCH_MIN, PATCH_MAX = 16, 64


class IncompatibleModelError(ValueError):
    """A method cannot continue a model; the message names both methods and the ones that can."""


# --------------------------------------------------------------------------------------------- compatibility
def check_compatible(method: str, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Raise :class:`IncompatibleModelError` unless ``method`` can continue the model in ``checkpoint``.

    Returns
    -------
    dict
        The checkpoint's metadata (read once, for the caller's use).
    """
    from napari_sscce.methods import incompatibility
    from napari_sscce.models.checkpoint import read_checkpoint_metadata

    meta = read_checkpoint_metadata(checkpoint)
    message = incompatibility(method, meta["arch"], meta.get("method"), f"the model {checkpoint}")
    if message:
        raise IncompatibleModelError(message)
    return meta


def default_method(metadata: dict[str, Any]) -> str:
    """The method to continue a model with: the one that trained it, else the first compatible one."""
    from napari_sscce.methods import compatible_methods

    ok = compatible_methods(metadata.get("arch"))
    if metadata.get("method") in ok:
        return str(metadata["method"])
    if not ok:
        raise IncompatibleModelError(
            f"no registered training method can continue this model ({metadata.get('arch')})"
        )
    return ok[0]


# ------------------------------------------------------------------------------------------------- config
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


# ------------------------------------------------------------------------------------------------- replay
@dataclass
class ReplaySource:
    """The starting model's labeled set: a dataset folder and the case names it trained on."""

    data: Path
    cases: list[str]
    split: str | None = None
    labeled: int | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready description stored with a workspace version (so later fine-tunes replay it too)."""
        return {
            "data": str(self.data),
            "split": self.split,
            "labeled": self.labeled,
            "cases": list(self.cases),
        }


def _candidate_folders(data: str, checkpoint: Path, run_out: str | None) -> list[Path]:
    raw = Path(data).expanduser()
    if raw.is_absolute():
        return [raw]
    bases = [Path.cwd(), checkpoint.parent, checkpoint.parent.parent]
    if run_out:
        bases += [Path(run_out).parent, Path(run_out).parent.parent]
    return [base / raw for base in bases]


def _replayable(folder: Path, split: str | None, labeled: int | None) -> tuple[Path, list[str]] | None:
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.training.data import resolve_splits

    try:
        dataset = open_dataset(folder)
    except (OSError, ValueError):
        return None
    if dataset.layout not in ("images_labels", "msd"):
        return None  # one file per image and label is needed to link cases into a view
    if split and not Path(split).is_file():
        return None
    try:
        return folder.resolve(), resolve_splits(dataset, split, labeled).labeled
    except (OSError, ValueError):
        return None


def find_replay_source(
    checkpoint: str | os.PathLike, metadata: dict[str, Any], workspace: Workspace
) -> ReplaySource | None:
    """Where the starting model's labeled set is, when it can be found on this machine.

    Looks at the workspace version record of ``checkpoint`` (``info["replay"]``) first, then at the training
    config in its metadata (``data``, ``split``, ``labeled``); a relative data folder is tried from the
    current folder, the checkpoint's folder and the run folder. The workspace itself (and folders inside it)
    is not a replay source: its cases are trained on anyway. ``None`` when nothing usable is found.
    """
    checkpoint = Path(checkpoint)
    version = workspace_version_of(checkpoint, workspace)
    recorded = version.info.get("replay") if version is not None else None
    config = metadata.get("config") or {}
    for source in (recorded, config):
        if not isinstance(source, dict) or not source.get("data"):
            continue
        for folder in _candidate_folders(str(source["data"]), checkpoint, config.get("out")):
            if not folder.is_dir() or _inside(folder, workspace.folder):
                continue
            found = _replayable(folder, source.get("split"), source.get("labeled"))
            if found:
                return ReplaySource(found[0], found[1], source.get("split"), source.get("labeled"))
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- hold-aside
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
    scores = []
    for c in range(1, num_classes):
        inter = total = 0
        for pred, h in zip(predictions, held, strict=True):
            p, g = (pred == c) & h.mask, (h.labels == c) & h.mask
            inter += int(np.sum(p & g))
            total += int(p.sum() + g.sum())
        if total:
            scores.append(2.0 * inter / total)
    return float(np.mean(scores)) if scores else None


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


# ----------------------------------------------------------------------------------------------- data view
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symlinks
        shutil.copyfile(src, dst)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


@dataclass
class DataView:
    """The training data of a fine-tune (see the module docstring)."""

    folder: Path
    labeled: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    held: list[HeldAside] = field(default_factory=list)
    distilled: list[str] = field(default_factory=list)
    distill_weight: float = 0.0


@dataclass
class Distillation:
    """The starting model's segmentation of every workspace case, and the weight its labels train with."""

    labels: dict[str, np.ndarray]
    weight: float = DISTILL_WEIGHT
    share: float = DISTILL_SHARE

    @property
    def code(self) -> int:
        """Value of a distilled voxel in a weighted training mask (``WEIGHTED_MASK_SCALE`` = weight 1)."""
        from napari_sscce.training.sampling import WEIGHTED_MASK_SCALE

        return int(np.clip(round(self.weight * WEIGHTED_MASK_SCALE), 2, WEIGHTED_MASK_SCALE - 1))


def teacher_labels(
    model: str | os.PathLike, ws: Workspace, inference: Any = None, cancel: CancelToken | None = None
) -> dict[str, np.ndarray]:
    """The segmentation (argmax) of every workspace case by the model file ``model`` (fp32)."""
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.models.checkpoint import load_checkpoint

    icfg = replace(inference or InferenceConfig(), precision="fp32", return_per_network=False)
    ckpt = load_checkpoint(model)
    out = {}
    for case in ws.cases:
        check(cancel)
        image = ws.load_case(case.name)[0]
        out[case.name] = predict_volume(ckpt.model, image, icfg, metadata=ckpt.metadata).labels
    return out


def _write_labeled(view: DataView, name: str, image: Volume, labels: np.ndarray, weights: np.ndarray) -> None:
    for sub, array in (("labels", labels), ("masks", weights)):
        volume = image.with_array(array.astype(np.uint8), is_label=True)
        write_volume(volume, view.folder / sub / f"{name}.nii.gz")


def _add_workspace_cases(
    view: DataView, ws: Workspace, holdout: float, distill: Distillation | None = None
) -> None:
    from napari_sscce.training.sampling import WEIGHTED_MASK_SCALE

    for case in ws.cases:
        _link(ws.folder / case.image, view.folder / "images" / f"{case.name}.nii.gz")
        if not case.labeled:
            view.unlabeled.append(case.name)
            if distill is not None:
                image = ws.load_case(case.name)[0]
                alias = f"distill_{case.name}"
                _link(ws.folder / case.image, view.folder / "images" / f"{alias}.nii.gz")
                teacher = distill.labels[case.name]
                _write_labeled(view, alias, image, teacher, np.full(teacher.shape, distill.code, np.uint8))
                view.distilled.append(alias)
            continue
        image, labels, mask = ws.load_case(case.name)
        confirmed = np.ones(image.shape, bool) if mask is None else np.asarray(mask.array) > 0
        train_mask, held = split_held_aside(confirmed, holdout)
        person = np.asarray(labels.array)
        if held.any():
            view.held.append(HeldAside(case.name, image, person, held))
        if distill is None:
            _link(ws.folder / case.label, view.folder / "labels" / f"{case.name}.nii.gz")
            write_volume(
                image.with_array(train_mask.astype(np.uint8), is_label=True),
                view.folder / "masks" / f"{case.name}.nii.gz",
            )
        else:  # the person's labels on confirmed voxels (weight 1), the starting model's elsewhere
            merged = np.where(confirmed, person, distill.labels[case.name])
            weights = np.where(train_mask, WEIGHTED_MASK_SCALE, np.where(held, 0, distill.code))
            _write_labeled(view, case.name, image, merged, weights)
        view.labeled.append(case.name)


def replay_copies(n_own: int, n_replay: int, share: float, most: int = 8) -> tuple[int, int]:
    """How often to list each own and each replayed case so that replayed ones make ``share`` of the draws.

    The labeled sampler draws cases uniformly; repeating a case in the labeled list weights it. Returns the
    pair ``(own copies, replay copies)`` in ``1..most`` whose share is closest to ``share``.
    """
    pairs = [(o, r) for o in range(1, most + 1) for r in range(1, most + 1)]
    return min(pairs, key=lambda p: (abs(p[1] * n_replay / (p[1] * n_replay + p[0] * n_own) - share), sum(p)))


def _add_replay(view: DataView, replay: ReplaySource, share: float) -> None:
    from napari_sscce.io.datasets import open_dataset

    dataset = open_dataset(replay.data)
    own = list(view.labeled)
    for name in replay.cases:
        case = dataset.case(name)
        alias = f"replay_{name}"
        _link(case.image_path, view.folder / "images" / f"{alias}{_suffix(case.image_path)}")
        _link(case.label_path, view.folder / "labels" / f"{alias}{_suffix(case.label_path)}")
        view.replayed.append(alias)
    own_copies, replay_copies_ = replay_copies(len(own), len(view.replayed), share)
    view.labeled = _repeat(view.folder, own, own_copies) + _repeat(view.folder, view.replayed, replay_copies_)


def _add_distilled(view: DataView, share: float) -> None:
    own_copies, distill_copies = replay_copies(len(view.labeled), len(view.distilled), share)
    view.labeled = _repeat(view.folder, view.labeled, own_copies) + _repeat(
        view.folder, view.distilled, distill_copies
    )


def _repeat(folder: Path, names: list[str], copies: int) -> list[str]:
    """``names`` plus ``copies - 1`` linked aliases of each (``<name>__2`` ...)."""
    out = list(names)
    for k in range(2, copies + 1):
        for name in names:
            alias = f"{name}__{k}"
            for sub in ("images", "labels", "masks"):
                found = sorted((folder / sub).glob(f"{name}.*"))
                if found:
                    _link(found[0], folder / sub / f"{alias}{_suffix(found[0])}")
            out.append(alias)
    return out


def build_view(
    ws: Workspace,
    folder: Path,
    replay: ReplaySource | None = None,
    holdout: float = HOLDOUT_FRACTION,
    replay_share: float = REPLAY_SHARE,
    distill: Distillation | None = None,
) -> DataView:
    """Write the data view of a fine-tune to ``folder`` (links, training masks, ``splits.json``).

    With ``distill`` each corrected case trains on the person's labels on its confirmed voxels (weight 1)
    and the starting model's labels elsewhere (weight ``distill.weight``, a weighted mask,
    :func:`napari_sscce.training.sampling.mask_weights`; held-aside voxels weight 0), and each unlabeled image
    is also a labeled case ``distill_<name>`` labeled by the starting model with that weight everywhere,
    drawn for a share ``distill.share`` of the labeled rows (it stays in the unlabeled list too).
    """
    if folder.exists():
        shutil.rmtree(folder)
    view = DataView(folder, distill_weight=distill.weight if distill is not None else 0.0)
    _add_workspace_cases(view, ws, holdout, distill)
    if replay is not None and replay.cases:
        _add_replay(view, replay, replay_share)
    if distill is not None and view.distilled:
        _add_distilled(view, distill.share)
    atomic_write_json(
        folder / "splits.json", {"labeled": view.labeled, "unlabeled": view.unlabeled, "val": []}
    )
    return view


# ------------------------------------------------------------------------------------------------ versions
def workspace_version_of(path: str | os.PathLike, workspace: Workspace | None = None) -> Any | None:
    """The workspace :class:`~napari_sscce.workspace.ModelVersion` whose file is ``path``, or ``None``.

    Without ``workspace``, the workspace holding ``path`` is looked for in its parent folders (the one place
    that knows where a workspace keeps its model files is the workspace manifest).
    """
    path = Path(path)
    if workspace is None:
        workspace = _workspace_above(path)
        if workspace is None:
            return None
    try:
        target = path.resolve()
    except OSError:
        return None
    for version in workspace.versions:
        if (workspace.folder / version.path).resolve() == target:
            return version
    return None


def _workspace_above(path: Path) -> Workspace | None:
    from napari_sscce.workspace import MANIFEST, WorkspaceError

    for parent in list(path.resolve().parents)[:4]:
        if (parent / MANIFEST).is_file():
            try:
                return Workspace(parent)
            except (WorkspaceError, OSError):
                return None
    return None


def version_label(path: str | os.PathLike) -> str | None:
    """``"<workspace folder name> v0003"`` for a workspace model version, else ``None``."""
    path = Path(path)
    ws = _workspace_above(path)
    version = workspace_version_of(path, ws) if ws is not None else None
    return f"{ws.folder.name} {version.version}" if version is not None and ws is not None else None


def ensure_version(ws: Workspace, model: Path, metadata: dict[str, Any]) -> tuple[Path, str]:
    """The starting model as a workspace version: ``(its path in the workspace, version)``.

    A model from outside becomes a new, current version ("model before fine-tuning").
    """
    version = workspace_version_of(model, ws)
    if version is not None:
        return ws.folder / version.path, version.version
    name = ws.add_model_version(
        model,
        {"note": "model before fine-tuning", "method": metadata.get("method")},
        metadata.get("val_metrics") or {},
    )
    return ws.version_path(name), name


# ----------------------------------------------------------------------------------------------- the step
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


def _verdict(version: str, start: str | None, before: float | None, after: float | None) -> tuple[bool, str]:
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
        Training method; default the model's own (must be compatible, :func:`check_compatible`).
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
    run = Path(out) if out else ws.folder / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    request = _Request(
        method=method, iterations=iterations, progress=progress, cancel=cancel, holdout=holdout,
        replay=replay, replay_share=replay_share, l2sp=l2sp, distill=distill, inference=inference,
        changes=changes,
    )
    if start is None:
        return _cold_start(ws, run, request)
    return _finetune(ws, start, run, request)


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


def _cancelled(ws, start_version, method, iterations, message, train_result=None) -> FinetuneResult:
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


def _cold_start(ws: Workspace, run: Path, request: _Request) -> FinetuneResult:
    from napari_sscce.training.loop import train

    progress, cancel = request.progress, request.cancel
    asked = (("method", request.method), ("iterations", request.iterations))
    extra = {k: v for k, v in asked if v is not None}
    config = cold_start_config(ws, run / "model", **extra, **request.changes)
    view = build_view(ws, run / "view", None, holdout=0.0)
    config = config.replace(data=str(view.folder))
    report(progress, ProgressEvent("train", 0, config.iterations, describe_cold_start(config)))
    result = train(config, progress=progress, cancel=cancel)
    if result.cancelled:
        message = f"cancelled after {result.iterations} iterations; no model was added"
        return _cancelled(ws, None, config.method, result.iterations, message, result)
    info = {
        "method": config.method,
        "iterations": result.iterations,
        "run": str(run),
        "labeled_cases": [c.name for c in ws.labeled_cases],
        "note": describe_cold_start(config),
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
        method = default_method(meta)
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
            return _cancelled(ws, start_version, method, 0, message)
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
        return _cancelled(ws, start_version, method, result.iterations, message, result)
    new_path = result.best_path or result.last_path
    num_classes = int(meta.get("num_classes") or 2)
    report(progress, ProgressEvent("score", 0, 2, "scoring both models on the held-aside slices"))
    before = score_model(start, view.held, num_classes, inference, cancel)
    after = score_model(new_path, view.held, num_classes, inference, cancel)
    return _record(ws, start_version, method, result, run, view, source, (before, after), weight)


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


def _record(ws, start_version, method, result, run, view, source, scores, l2sp) -> FinetuneResult:
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
    adopted, _ = _verdict("new", start_version, before, after)
    adopted = adopted and trained
    version = ws.add_model_version(result.best_path or result.last_path, info, metrics, make_current=adopted)
    _, message = _verdict(version, start_version, before, after)
    if not trained:
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


# -------------------------------------------------------------------------------------------- corrections
def merge_corrections(new_labels: np.ndarray, old_labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A new segmentation that keeps the person's labels wherever ``mask`` (confirmed voxels) is set.

    Parameters
    ----------
    new_labels : numpy.ndarray
        The model's new segmentation.
    old_labels : numpy.ndarray
        The corrected segmentation (same shape).
    mask : numpy.ndarray
        Nonzero where a person edited or confirmed the label.

    Returns
    -------
    numpy.ndarray
        ``old_labels`` on confirmed voxels, ``new_labels`` elsewhere (dtype of ``new_labels``).
    """
    new_labels, old_labels, mask = np.asarray(new_labels), np.asarray(old_labels), np.asarray(mask) > 0
    if not new_labels.shape == old_labels.shape == mask.shape:
        raise ValueError(
            f"shapes differ: new {new_labels.shape}, corrected {old_labels.shape}, mask {mask.shape}"
        )
    return np.where(mask, old_labels, new_labels).astype(new_labels.dtype, copy=False)


def merge_prediction(prediction: Any, old_labels: np.ndarray, mask: np.ndarray) -> Any:
    """A copy of ``prediction`` keeping the corrections, its uncertainty 0 on confirmed voxels."""
    confirmed = np.asarray(mask) > 0
    return replace(
        prediction,
        labels=merge_corrections(prediction.labels, old_labels, confirmed),
        entropy=np.where(confirmed, 0.0, prediction.entropy).astype(np.float32),
        kl=np.where(confirmed, 0.0, prediction.kl).astype(np.float32),
    )
