"""Which model fits a scan, and whether a model's classes fit a labeled set (headless; no Qt, no workspace).

:func:`propose_model` ranks model files by how far a scan lies outside the data each model was trained on
(the ``model_card["training_data"]`` statistics of :func:`napari_sscce.models.pretrained.training_statistics`,
else the model's ``spacing``): field of view first (a hippocampus crop and a chest MRI differ by a factor of
five or more), then voxel size, then the intensity scale, plus a modality hint when the scan's metadata or
file name shares a word with the model card's title or data. The lowest mismatch wins.

:func:`check_classes_match` refuses a fine-tune whose model predicts other classes than the labels hold.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: weights of the mismatch terms (natural-log distance outside the training range, summed over axes)
EXTENT_WEIGHT = 1.5
SPACING_WEIGHT = 1.0
#: a finer scan than the training data is resampled down and loses nothing: half the weight
FINER_WEIGHT = 0.5
INTENSITY_WEIGHT = 0.25
#: subtracted when the scan's modality hint names the model's kind of data
HINT_BONUS = 2.0
#: words too common to be a hint
_STOP = {"mri", "ct", "cce", "the", "and", "of", "scan", "scans", "image", "model", "data", "msd", "task"}


class ChannelMismatchError(ValueError):
    """A scan's channels are not those a model takes; the message names what the model expects."""


def model_channel_names(metadata: Mapping[str, Any]) -> list[str]:
    """The channel names a model file records (``channel_names``), else ``"0"``, ``"1"``, ... for its
    ``in_channels`` (1 when it records neither)."""
    count = int(metadata.get("in_channels") or 1)
    names = [str(n) for n in metadata.get("channel_names") or []]
    return names if len(names) == count else [str(i) for i in range(count)]


def match_channels(volume: Any, metadata: Mapping[str, Any], model_name: str = "the model") -> Any:
    """``volume`` with its channels in the order the model takes them.

    Parameters
    ----------
    volume : Volume
        The scan: (z, y, x) with one channel or (C, z, y, x) with ``channel_names``.
    metadata : mapping
        The model file's metadata (``in_channels``, optional ``channel_names``).
    model_name : str
        For the message.

    Returns
    -------
    Volume
        ``volume`` itself when the counts match and the names agree (or either side has only default
        names); else a volume whose channels are reordered by name.

    Raises
    ------
    ChannelMismatchError
        When the channel counts differ, or the names differ as sets; the message names the model's channels.
    """
    expected = model_channel_names(metadata)
    count = int(getattr(volume, "num_channels", 1))
    have = [str(n) for n in getattr(volume, "channel_names", ())] or [str(i) for i in range(count)]
    where = getattr(volume, "source", None) or f"image {getattr(volume, 'name', 'volume')!r}"
    wanted = f"{len(expected)} channel(s) ({', '.join(expected)})"
    if count != len(expected):
        raise ChannelMismatchError(
            f"{where}: has {count} channel(s) ({', '.join(have)}) but {model_name} expects {wanted}; give it "
            "a scan with those channels (a 4D NIfTI or one file per channel, case_0000, case_0001, ...)"
            + ("; or segment one of its channels (`sscce predict ... --channel N`, "
               "`read_volume(path, channel=N)`)"
               if len(expected) == 1 else ""))
    defaults = [str(i) for i in range(count)]
    if have == expected or have == defaults or expected == defaults:
        return volume
    lower = [n.lower() for n in have]
    if sorted(lower) != sorted(n.lower() for n in expected):
        raise ChannelMismatchError(
            f"{where}: its channels ({', '.join(have)}) are not those {model_name} expects: {wanted}")
    order = [lower.index(n.lower()) for n in expected]
    return dataclasses.replace(volume, array=np.asarray(volume.array)[order], channel_names=tuple(expected),
                               affine=np.array(volume.affine, dtype=float))


class ClassMismatchError(ValueError):
    """A model's classes do not match the labels it would be trained on; the message names both."""


def _distance(value: float, low: float, high: float) -> float:
    """How far (natural log) ``value`` lies outside ``[low, high]``; 0 inside."""
    if value <= 0 or low <= 0 or high <= 0:
        return 0.0
    return max(0.0, math.log(low / value), math.log(value / high))


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _STOP}


def scan_hint(volume: Any) -> set[str]:
    """Words that say what a scan shows: its metadata's modality/description fields and its file name."""
    meta = getattr(volume, "metadata", None) or {}
    parts = [str(meta.get(k, "")) for k in ("modality", "description", "series_description", "body_part")]
    source = getattr(volume, "source", None)
    if source:
        parts.append(Path(str(source)).name.replace("_", " ").replace("-", " "))
    return _words(" ".join(parts))


def mismatch(volume: Any, metadata: Mapping[str, Any]) -> float:
    """How far ``volume`` lies from the training data of the model with ``metadata`` (0 = inside it).

    Parameters
    ----------
    volume : Volume
        The scan (``array``, ``spacing``, ``shape``, optional ``metadata`` and ``source``).
    metadata : mapping
        The model file's metadata.

    Returns
    -------
    float
        The weighted sum described in the module docstring; lower is a better fit.
    """
    card = metadata.get("model_card") if isinstance(metadata.get("model_card"), Mapping) else {}
    stats = card.get("training_data") if isinstance(card.get("training_data"), Mapping) else {}
    spacing = np.asarray(volume.spacing, dtype=float)
    extent = spacing * np.asarray(volume.shape[-3:], dtype=float)
    score = 0.0
    sp = stats.get("spacing") or {}
    low = sp.get("min") or metadata.get("spacing")
    high = sp.get("max") or metadata.get("spacing")
    if low and high and len(low) == 3:
        for s, lo, hi in zip(spacing, low, high, strict=False):
            d = _distance(float(s), float(lo), float(hi))
            score += (FINER_WEIGHT if s < lo else SPACING_WEIGHT) * d
    ext = stats.get("extent_mm") or {}
    if ext.get("min") and ext.get("max"):
        for e, lo, hi in zip(extent, ext["min"], ext["max"], strict=False):
            score += EXTENT_WEIGHT * _distance(float(e), float(lo), float(hi))
    p99 = stats.get("p99_5") or {}
    if p99:
        hi_value = float(np.percentile(np.asarray(volume.array)[::2, ::2, ::2], 99.5))
        score += INTENSITY_WEIGHT * _distance(abs(hi_value) or 1e-6, float(p99["min"]), float(p99["max"]))
    hint = scan_hint(volume)
    if hint and hint & _words(f"{card.get('title', '')} {card.get('data', '')} {card.get('name', '')}"):
        score -= HINT_BONUS
    in_channels = int(metadata.get("in_channels") or 1)
    if int(getattr(volume, "num_channels", 1)) != in_channels:
        score += 100.0  # cannot run at all
    return score


def propose_model(
    volume: Any, candidates: Sequence[tuple[Any, Mapping[str, Any]]]
) -> tuple[Any, float] | None:
    """The candidate whose training data fits ``volume`` best.

    Parameters
    ----------
    volume : Volume
        The scan to segment.
    candidates : sequence of (key, metadata)
        The models to choose from (``key`` is returned as given, e.g. a path).

    Returns
    -------
    (key, mismatch) or None
        The best fit (the first one on ties); None when there is no candidate.
    """
    best: tuple[Any, float] | None = None
    for key, meta in candidates:
        score = mismatch(volume, meta)
        if best is None or score < best[1]:
            best = (key, score)
    return best


def labels_classes(labels: Iterable[Any]) -> int:
    """The number of classes a set of label maps uses: its largest label + 1 (at least 2)."""
    top = 0
    for array in labels:
        if array is not None and np.size(array):
            top = max(top, int(np.max(np.asarray(array))))
    return max(top + 1, 2)


def workspace_labels_classes(workspace: Any) -> int | list[str]:
    """The classes of a workspace: the names a person confirmed, else the count its labels use.

    A workspace's classes are fixed by what a person confirmed (``workspace.class_names``, recorded by
    :meth:`napari_sscce.workspace.Workspace.confirm_classes` when the fine-tune widget adds the first case or
    trains a new model), never by a model that trained on it nor by which values happen to be painted.
    A workspace built without that confirmation (a script) falls back to :func:`labels_classes` of its
    labeled cases' label maps. ``workspace`` is duck-typed: ``class_names``, ``labeled_cases``,
    ``load_case``.
    """
    confirmed = getattr(workspace, "class_names", None)
    if confirmed:
        return list(confirmed)
    return labels_classes(workspace.load_case(c.name)[1].array for c in workspace.labeled_cases)


def check_classes_match(
    workspace_labels_classes: int | Sequence[str],
    model_meta: Mapping[str, Any],
    where: Any = "the labeled set",
) -> None:
    """Refuse to train a model on labels whose classes it does not have.

    Parameters
    ----------
    workspace_labels_classes : int or sequence of str
        The labels' classes: their count (e.g. :func:`labels_classes`), or their names (background first).
    model_meta : mapping
        The model file's metadata (``num_classes``, optional ``class_names``, ``model_card["title"]``).
    where : str or path
        What the labels are, for the message (e.g. the workspace folder).

    Raises
    ------
    ClassMismatchError
        When the counts differ, or both sides name their classes (not the generic ``"class 1"`` ...) and
        the names differ.
    """
    if isinstance(workspace_labels_classes, int):
        count, names = workspace_labels_classes, None
    else:
        names = [str(n) for n in workspace_labels_classes]
        count = len(names)
    model_count = int(model_meta.get("num_classes") or 2)
    model_names = [str(n) for n in model_meta.get("class_names") or []]
    card = model_meta.get("model_card") if isinstance(model_meta.get("model_card"), Mapping) else {}
    model = card.get("title") or card.get("name") or "the model"
    shown = ", ".join(model_names) if model_names else f"{model_count} classes"
    if count != model_count:
        raise ClassMismatchError(
            f"{model} predicts {model_count} classes ({shown}) but {where} has {count} "
            f"({', '.join(names) if names else f'labels 0 to {count - 1}'}): fine-tuning it would train it "
            "on the wrong classes. Choose a model made for these labels, or train a new model on them."
        )
    generic = ["background"] + [f"class {i}" for i in range(1, count)]  # checkpoint.default_class_names
    named = names and [n.lower() for n in names] != generic
    model_named = model_names and [n.lower() for n in model_names] != generic
    if named and model_named and [n.lower() for n in names] != [n.lower() for n in model_names]:
        raise ClassMismatchError(
            f"{model}'s classes ({shown}) are not those of {where} ({', '.join(names)}): choose a model made "
            "for these labels, or train a new model on them."
        )
