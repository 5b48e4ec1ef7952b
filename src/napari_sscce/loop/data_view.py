"""The data a fine-tune trains on: a *view* folder that links to the workspace's and the replayed files.

The view's ``images/``, ``labels/`` and ``masks/`` link to the workspace's files and to the replayed cases'
files (nothing is copied; only the training masks of cases with held-aside slices, and the distilled labels,
are written), with its own ``splits.json``. Without a replayable labeled set the starting model is
*distilled*: its labels train outside the confirmed voxels with weight :data:`DISTILL_WEIGHT`, and the
unlabeled images labeled by it make a share :data:`DISTILL_SHARE` of the labeled draws.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_json
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.loop.held_aside import HOLDOUT_FRACTION, HeldAside, split_held_aside
from napari_sscce.loop.replay import REPLAY_SHARE, ReplaySource, replay_copies
from napari_sscce.progress import CancelToken, check
from napari_sscce.workspace import Workspace

#: supervised weight of a distilled voxel (the starting model's own label, outside the confirmed voxels) in a
#: fine-tune that cannot replay the model's labeled set; a confirmed voxel weighs 1 (0: no distillation).
#: Issue 17's hippocampus experiment (benchmarks/results/finetune_gain.md): held-out Dice 0.7793 -> 0.7900 /
#: 0.7869 (+1.07 / +0.76, seeds 0 / 1) with it, against -1.52 / -1.89 without it (lr 0.001 in both); the
#: only weight measured
DISTILL_WEIGHT = 0.5
#: share of labeled draws that come from the unlabeled images labeled by the starting model (distillation)
DISTILL_SHARE = 0.5
#: supervised weight of a voxel filled between painted slices (:mod:`napari_sscce.loop.slice_fill`) in a
#: first model's training (cold start); a painted voxel weighs 1. The fill is right on 98.6 % of the voxels
#: it labels on the left atrium (benchmarks/results/slice_fill.md); the weight keeps the painted slices first
FILL_WEIGHT = 0.5


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
    #: case -> voxels filled between its painted slices (``build_view(fill=...)``)
    filled_voxels: dict[str, int] = field(default_factory=dict)


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


def _filled(person: np.ndarray, confirmed: np.ndarray, train_mask: np.ndarray, spacing, weight: float):
    """The person's labels with the gaps between painted slices filled, and the weighted training mask."""
    from napari_sscce.loop.slice_fill import fill_between_slices
    from napari_sscce.training.sampling import WEIGHTED_MASK_SCALE

    merged, filled = fill_between_slices(person, confirmed, tuple(spacing))
    code = int(np.clip(round(weight * WEIGHTED_MASK_SCALE), 2, WEIGHTED_MASK_SCALE - 1))
    weights = np.where(train_mask, WEIGHTED_MASK_SCALE, np.where(filled, code, 0))
    return merged, weights, int(filled.sum())


def _add_workspace_cases(
    view: DataView, ws: Workspace, holdout: float, distill: Distillation | None = None, fill: float = 0.0
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
        if distill is None and fill > 0 and not confirmed.all():
            merged, weights, count = _filled(person, confirmed, train_mask, image.spacing, fill)
            _write_labeled(view, case.name, image, merged, weights)
            view.filled_voxels[case.name] = count
        elif distill is None:
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
    fill: float = 0.0,
) -> DataView:
    """Write the data view of a fine-tune to ``folder`` (links, training masks, ``splits.json``).

    With ``distill`` each corrected case trains on the person's labels on its confirmed voxels (weight 1)
    and the starting model's labels elsewhere (weight ``distill.weight``, a weighted mask,
    :func:`napari_sscce.training.sampling.mask_weights`; held-aside voxels weight 0), and each unlabeled image
    is also a labeled case ``distill_<name>`` labeled by the starting model with that weight everywhere,
    drawn for a share ``distill.share`` of the labeled rows (it stays in the unlabeled list too).

    With ``fill`` > 0 (and no ``distill``) a partially labeled case also trains on the voxels filled between
    its painted slices (:func:`napari_sscce.loop.slice_fill.fill_between_slices`) with weight ``fill``.
    """
    if folder.exists():
        shutil.rmtree(folder)
    view = DataView(folder, distill_weight=distill.weight if distill is not None else 0.0)
    _add_workspace_cases(view, ws, holdout, distill, fill)
    if replay is not None and replay.cases:
        _add_replay(view, replay, replay_share)
    if distill is not None and view.distilled:
        _add_distilled(view, distill.share)
    atomic_write_json(
        folder / "splits.json", {"labeled": view.labeled, "unlabeled": view.unlabeled, "val": []}
    )
    names = next((c.channels for c in ws.cases if c.channels), None)
    if names:  # multi-channel scans: their names, for the images the view links (nnU-Net's dataset.json)
        table = {str(i): n for i, n in enumerate(names)}
        atomic_write_json(folder / "dataset.json", {"channel_names": table})
    return view
