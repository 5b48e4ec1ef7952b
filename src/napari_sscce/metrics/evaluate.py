"""Evaluate label maps against ground truth: per case, per class, and folders of files.

Per foreground class the metrics of :mod:`napari_sscce.metrics.surface` (medpy definitions, the papers'
convention for empty masks) are computed; the case's ``mean`` row averages its classes, and the folder
summary rows (``case`` = ``"mean"`` / ``"std"``) average the cases. Dice and Jaccard are fractions in
[0, 1]; distances come in voxels (``*_vox``, what the papers report) and millimetres (``*_mm``).
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
from napari_sscce.metrics.surface import EmptyPolicy, binary_metrics
from napari_sscce.progress import CancelToken, ProgressCallback, ProgressEvent, check, report

__all__ = [
    "METRIC_KEYS",
    "evaluate_case",
    "evaluate_folders",
    "format_table",
    "pair_files",
    "case_key",
]

#: metric columns, in output order
METRIC_KEYS = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm", "assd_vox", "assd_mm")
COUNT_KEYS = ("pred_voxels", "gt_voxels")
#: name endings (before the extension) that a prediction / ground-truth file may carry after the case name
PRED_SUFFIXES = ("_seg", "_pred", "_prediction", "_segmentation", "_labels", "_label", "_mask")
GT_SUFFIXES = ("_gt", "_seg", "_segmentation", "_labels", "_label", "_mask")
#: files that are not label maps (uncertainty maps, probabilities, images written beside the predictions)
NON_LABEL_SUFFIXES = (
    "_entropy", "_kl", "_uncertainty", "_prob", "_probs", "_probabilities", "_prob_a", "_prob_b",
    "_img", "_image",
)
CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"


# ----------------------------------------------------------------------------------------------- one case
def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    empty: EmptyPolicy = "zero",
) -> dict[str, Any]:
    """Metrics of one predicted label map against its ground truth.

    Parameters
    ----------
    pred, gt : ndarray
        Integer label maps (z, y, x) of the same shape (0 = background).
    num_classes : int
        Number of classes including background; classes ``1 .. num_classes - 1`` are evaluated.
    spacing : sequence of float, optional
        Voxel size (z, y, x) in millimetres; without it the ``*_mm`` values are NaN.
    empty : {"zero", "nan"}
        Value of metrics with an empty prediction or ground truth for a class (papers: 0).

    Returns
    -------
    dict
        ``{"classes": {c: {metric: value, "pred_voxels": n, "gt_voxels": n}}, "mean": {metric: value}}``;
        the mean ignores NaN values.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
    classes = {c: binary_metrics(pred == c, gt == c, spacing, empty) for c in range(1, int(num_classes))}
    mean = {k: _nanmean([m[k] for m in classes.values()]) for k in METRIC_KEYS}
    return {"classes": classes, "mean": mean}


# ----------------------------------------------------------------------------------------------- pairing
def _strip_extension(name: str) -> str | None:
    from napari_sscce.io.readers import SUFFIX_FORMATS

    lower = name.lower()
    for ext in SUFFIX_FORMATS:
        if lower.endswith(ext) and ext != ".dcm":
            return name[: -len(ext)]
    return None


def _strip_suffix(stem: str, suffixes: Sequence[str]) -> str:
    lower = stem.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def case_key(path: str | os.PathLike, role: str) -> str | None:
    """Case name of a prediction (``role="pred"``) or ground-truth (``role="gt"``) file, or None to skip it.

    ``<case>_seg.nii.gz`` (also ``_pred``, ``_label``...) -> ``<case>`` for predictions; ``<case>.nii.gz``,
    ``<case>_gt.nii.gz`` -> ``<case>`` for ground truth. Unsupported files, uncertainty / probability / image
    files (``*_entropy``, ``*_kl``, ``*_img``...), and the other role's files when both live in one folder
    (UA-MT writes ``<id>_pred`` and ``<id>_gt`` together) are skipped.
    """
    stem = _strip_extension(Path(path).name)
    if stem is None or stem.startswith("."):
        return None
    lower = stem.lower()
    if lower.endswith(NON_LABEL_SUFFIXES):
        return None
    if role == "pred":
        if lower.endswith("_gt"):
            return None
        return _strip_suffix(stem, PRED_SUFFIXES)
    if role == "gt":
        if lower.endswith(("_pred", "_prediction")):
            return None
        return _strip_suffix(stem, GT_SUFFIXES)
    raise ValueError(f"role must be 'pred' or 'gt', not {role!r}")


def _index_folder(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        key = case_key(path, role)
        if key is None:
            continue
        if key in found:
            raise ValueError(f"{path}: same case name {key!r} as {found[key].name}; keep one file per case")
        found[key] = path
    return found


def pair_files(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike
) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Match prediction and ground-truth files by case name.

    Returns
    -------
    pairs : list of (case, pred_path, gt_path)
        Sorted by case name.
    missing : list of str
        Ground-truth cases without a prediction.
    extra : list of str
        Predictions without ground truth.
    """
    preds = _index_folder(Path(pred_dir), "pred")
    gts = _index_folder(Path(gt_dir), "gt")
    pairs = [(k, preds[k], gts[k]) for k in sorted(gts) if k in preds]
    missing = sorted(k for k in gts if k not in preds)
    extra = sorted(k for k in preds if k not in gts)
    return pairs, missing, extra


# ----------------------------------------------------------------------------------------------- folders
def _rows_of_case(case: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c, m in result["classes"].items():
        rows.append({"case": case, "class": c, **{k: m[k] for k in METRIC_KEYS + COUNT_KEYS}})
    rows.append({"case": case, "class": "mean", **result["mean"]})
    return rows


def _summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    classes = list(dict.fromkeys(r["class"] for r in rows))
    for name, fn in (("mean", _nanmean), ("std", _nanstd)):
        for c in classes:
            sel = [r for r in rows if r["class"] == c]
            summary.append({"case": name, "class": c, **{k: fn([r[k] for r in sel]) for k in METRIC_KEYS}})
    return summary


def _nanstd(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")


def _spacing_differs(a: Sequence[float], b: Sequence[float]) -> bool:
    return not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-3, atol=1e-4)


def _on_gt_grid(pred, gt, pred_path: Path, gt_path: Path, spacing_given: bool) -> np.ndarray:
    """The prediction's array on the ground truth's grid, compared in world space.

    Same grid: as is. Grids that differ only by axis flips / permutations (the same anatomy stored
    mirrored or transposed): reoriented exactly, with a warning. Otherwise refused.
    """
    from napari_sscce.io import geometry

    if _spacing_differs(pred.spacing, gt.spacing) and pred.shape == gt.shape:
        if not spacing_given:
            warnings.warn(
                f"{pred_path}: spacing {pred.spacing} differs from ground truth {gt_path} "
                f"spacing {gt.spacing}; using the ground truth's",
                stacklevel=3,
            )
        return pred.array
    if pred.shape == gt.shape and geometry.same_grid(pred.affine, gt.affine, gt.spacing):
        return pred.array
    mapping = geometry.grid_mapping(pred.affine, pred.shape, gt.affine, gt.shape)
    if mapping is not None:
        warnings.warn(
            f"{pred_path}: stored with other axis order / directions than ground truth {gt_path}; "
            f"compared in world space (prediction reoriented, axes {mapping[0]}, flips "
            f"{geometry.axes_text([j for j, f in enumerate(mapping[1]) if f])})",
            stacklevel=3,
        )
        return geometry.reorient(pred.array, *mapping)
    if pred.shape != gt.shape:
        raise ValueError(
            f"{pred_path}: shape {pred.shape} differs from ground truth {gt_path} shape {gt.shape}"
        )
    shift = np.asarray(pred.affine)[:3, 3] - np.asarray(gt.affine)[:3, 3]
    raise ValueError(
        f"{pred_path}: lies elsewhere in the world than ground truth {gt_path} (same shape, but the affines "
        f"differ beyond axis flips; origin shift {tuple(round(float(v), 3) for v in shift)} mm): "
        "resample one onto the other before evaluating"
    )


def _checked_classes(num_classes: int | None, loaded: list, pairs: list, unexpected: str) -> int:
    """The number of classes, refusing stray ground-truth values (see :func:`evaluate_folders`)."""
    if unexpected not in ("error", "ignore"):
        raise ValueError(f"unexpected={unexpected!r}: choose 'error' or 'ignore'")
    values = {case: np.unique(gt) for case, _, gt, _ in loaded}
    found = sorted(set().union(*(v.tolist() for v in values.values()))) if values else [0]
    paths = {case: gt_path for case, _, gt_path in pairs}
    if num_classes is None:
        top = max(found)
        missing = sorted(set(range(top + 1)) - set(found))
        if missing and top >= 2:
            contiguous = [v for v in found if v < min(missing)]
            stray = [v for v in found if v > min(missing)]
            where = [str(paths[c]) for c, v in values.items() if np.isin(v, stray).any()]
            raise ValueError(
                f"{', '.join(where[:5])}: ground truth holds unexpected label value(s) "
                f"{', '.join(map(str, stray[:10]))} (labels found: {', '.join(map(str, found[:20]))}; "
                f"{', '.join(map(str, missing[:10]))} never occur): scoring would count {top + 1} classes. "
                f"Give the number of classes (e.g. --num-classes {max(2, len(contiguous))}) and choose how "
                "to treat the stray values (--unexpected ignore; unexpected='ignore' in Python)"
            )
        return max(2, top + 1)
    num_classes = int(num_classes)
    stray = [v for v in found if v >= num_classes]
    if stray:
        where = [str(paths[c]) for c, v in values.items() if (v >= num_classes).any()]
        if unexpected == "error":
            raise ValueError(
                f"{', '.join(where[:5])}: ground truth holds label value(s) "
                f"{', '.join(map(str, stray[:10]))} outside the {num_classes} classes 0..{num_classes - 1}; "
                "fix the files or leave those voxels out explicitly "
                "(sscce evaluate --unexpected ignore; unexpected='ignore' in Python)"
            )
        warnings.warn(
            f"{', '.join(where[:5])}: ground-truth voxels with value(s) {', '.join(map(str, stray[:10]))} "
            f"(outside 0..{num_classes - 1}) are left out of every metric",
            stacklevel=3,
        )
    return num_classes


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    spacing: Sequence[float] | None = None,
    empty: EmptyPolicy = "zero",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    unexpected: str = "error",
) -> list[dict[str, Any]]:
    """Evaluate every prediction in ``pred_dir`` against the same case in ``gt_dir``.

    Files pair by case name (:func:`case_key`): ``<case>_seg.nii.gz`` (as ``sscce predict`` writes it) or
    ``<case>.nii.gz`` against ``<case>.nii.gz`` / ``<case>_gt.nii.gz`` / an LA ``<case>.h5`` (its ``label``).
    Any format :func:`napari_sscce.io.readers.read_volume` reads works.

    Parameters
    ----------
    pred_dir, gt_dir : path-like
        Folders of predicted and reference label maps.
    out_dir : path-like, optional
        Where to write ``metrics.csv`` (one row per case and class, then the ``mean`` / ``std`` rows) and
        ``metrics.json`` (rows plus run information); both atomically.
    num_classes : int, optional
        Classes including background. Default: 1 + the largest label in any ground truth (at least 2),
        refused when the labels found are not contiguous (e.g. 0, 1, 2 and a stray 255 would score 256
        classes): the message names the unexpected values.
    unexpected : {"error", "ignore"}
        Ground-truth voxels with a value ``>= num_classes``: ``"error"`` (default) refuses naming the
        values and files; ``"ignore"`` leaves those voxels out of every metric (a warning counts them).
    spacing : sequence of float, optional
        Voxel size (z, y, x) in mm for the ``*_mm`` metrics. Default: each ground truth's own spacing (a
        warning names the files when the prediction's spacing differs).
    empty : {"zero", "nan"}
        Empty-mask policy (:mod:`napari_sscce.metrics.surface`).
    progress, cancel
        Progress callback (stage ``"evaluate"``, one step per case) and cancel token.

    Returns
    -------
    list of dict
        Rows with keys ``case, class`` and :data:`METRIC_KEYS` (per class also ``pred_voxels, gt_voxels``);
        per case one row per foreground class and a ``"mean"`` row, then the summary rows.

    Raises
    ------
    FileNotFoundError
        A folder does not exist.
    ValueError
        No case pairs up, shapes differ or the grids lie differently in the world beyond axis flips /
        permutations (message names both files), unexpected label values, unreadable files (VolumeError).
    """
    pairs, missing, extra = _paired(pred_dir, gt_dir)
    loaded = _read_pairs(pairs, spacing, progress, cancel)
    num_classes = _checked_classes(num_classes, loaded, pairs, unexpected)
    if unexpected == "ignore":
        loaded = [_without_stray(item, num_classes) for item in loaded]
    rows: list[dict[str, Any]] = []
    for i, (case, pred, gt, sp) in enumerate(loaded):
        check(cancel)
        result = evaluate_case(pred, gt, num_classes, sp, empty)
        rows.extend(_rows_of_case(case, result))
        report(
            progress,
            ProgressEvent("evaluate", len(pairs) + i + 1, 2 * len(pairs), f"evaluated {case}",
                          {"dice": result["mean"]["dice"]}),
        )
    rows.extend(_summary_rows(rows))
    if out_dir is not None:
        _write_results(Path(out_dir), rows, {
            "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "num_classes": num_classes, "empty": empty,
            "cases": [case for case, _, _ in pairs], "missing_predictions": missing,
            "unmatched_predictions": extra,
        })
    return rows


def _paired(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> tuple[list, list[str], list[str]]:
    """:func:`pair_files`, refused when nothing pairs up; a warning names the cases without a prediction."""
    pairs, missing, extra = pair_files(pred_dir, gt_dir)
    if not pairs:
        gt_names = ", ".join(missing[:5]) or "none"
        pred_names = ", ".join(extra[:5]) or "none"
        raise ValueError(
            f"{pred_dir}: no prediction matches a ground-truth file in {gt_dir} "
            f"(ground-truth cases: {gt_names}; predictions: {pred_names})"
        )
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        warnings.warn(
            f"{gt_dir}: no prediction for {len(missing)} case(s): {', '.join(missing[:10])}{more}; "
            "they are left out of the means",
            stacklevel=3,
        )
    return pairs, missing, extra


def _read_pairs(
    pairs: list, spacing: Sequence[float] | None, progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """``(case, prediction on the ground truth's grid, ground truth, spacing)`` of each pair."""
    from napari_sscce.io.readers import read_volume

    loaded = []
    for i, (case, pred_path, gt_path) in enumerate(pairs):
        check(cancel)
        report(progress, ProgressEvent("evaluate", i, 2 * len(pairs), f"reading {case}"))
        pred, gt = read_volume(pred_path, is_label=True), read_volume(gt_path, is_label=True)
        pred_array = _on_gt_grid(pred, gt, pred_path, gt_path, spacing is not None)
        loaded.append((case, pred_array, gt.array, tuple(spacing) if spacing is not None else gt.spacing))
    return loaded


def _without_stray(item: tuple, num_classes: int) -> tuple:
    """A loaded pair whose ground-truth voxels ``>= num_classes`` are background in both maps (copies)."""
    case, pred, gt, sp = item
    stray = gt >= num_classes
    if not stray.any():
        return item
    pred, gt = pred.copy(), gt.copy()
    pred[stray] = 0
    gt[stray] = 0
    return case, pred, gt, sp


def _write_results(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """``metrics.csv`` and ``metrics.json`` (``info`` and the rows) in ``out``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CSV_NAME, _csv_bytes(rows))
    json_rows = [{k: _json_value(v) for k, v in r.items()} for r in rows]
    atomic_write_json(out / JSON_NAME, {**info, "rows": json_rows})


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None  # JSON has no NaN
    return v


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    columns = ["case", "class", *METRIC_KEYS, *COUNT_KEYS]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


# ----------------------------------------------------------------------------------------------- table
TABLE_COLUMNS = (
    ("dice", "Dice %", 100.0),
    ("jaccard", "Jacc %", 100.0),
    ("hd95_vox", "HD95 vox", 1.0),
    ("asd_vox", "ASD vox", 1.0),
    ("hd95_mm", "HD95 mm", 1.0),
    ("asd_mm", "ASD mm", 1.0),
)


def format_table(rows: list[dict[str, Any]], per_class: bool = True) -> str:
    """A plain-text table of :func:`evaluate_folders` rows (Dice / Jaccard in %, distances to 2 decimals).

    Parameters
    ----------
    rows : list of dict
        Rows with ``case``, ``class`` and metric keys.
    per_class : bool
        Also show the per-class rows (otherwise only each case's ``mean`` row and the summary).

    Returns
    -------
    str
    """
    shown = [r for r in rows if per_class or r["class"] == "mean" or r["case"] in ("mean", "std")]
    header = ["case", "class", *(title for _, title, _ in TABLE_COLUMNS)]
    body = [
        [str(r["case"]), str(r["class"]), *(_cell(r[k], scale) for k, _, scale in TABLE_COLUMNS)]
        for r in shown
    ]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    return "\n".join(
        [_line(header, widths), "  ".join("-" * w for w in widths), *(_line(line, widths) for line in body)]
    )


def _cell(value: Any, scale: float) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else f"{value * scale:.2f}"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Text columns (case, class) left-aligned, numbers right-aligned."""
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
