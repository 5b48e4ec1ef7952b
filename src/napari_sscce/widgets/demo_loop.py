"""The whole interactive loop of ``make demo``, played with the dock widgets on a real hippocampus MRI.

1. the packaged hippocampus model (``hippocampus-cce``, :mod:`napari_sscce.models.pretrained`) and the
   packaged sample scan (``hippocampus_252``, a validation case the model never trained on); no
   ``../shared`` needed;
2. Segment: labels, entropy and KL layers;
3. Uncertainty: ranked regions; the view moves to the first;
4. corrections, as a person would make them: the slices through the regions the Uncertainty widget ranks
   first are visited in rank order and the ground truth is painted into each (one edit per slice, so the
   Fine-tune widget counts it as a checked slice; a slice with nothing wrong is marked as checked);
5. Fine-tune on the corrected case, which adds a model version and segments again;
6. the fine-tuned model segments the scan once more here
   (:func:`napari_sscce.inference.predict.predict_volume` with the Segment widget's settings), so that "after"
   is what the *model* produced, not the layer holding the painted corrections.

It prints the mean Dice of the first segmentation, of the corrected layer and of the fine-tuned model's
segmentation (whole scan and outside the corrected slices), and returns a non-zero exit status when any stage
fails (a widget missing, no segmentation, no uncertain region, a fine-tune that failed, was cancelled or made
no new model): a failed stage never prints a success figure.

Qt is imported inside functions only (no module outside ``widgets/`` imports it at import time), and this
module does not import :mod:`napari_sscce.demo` (which imports this one).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PLUGIN = "napari-sscce"
#: dock widgets declared in napari.yaml
DOCK_WIDGETS = ("Segment", "Uncertainty", "Correct & fine-tune")
#: the packaged model and sample the loop uses
DEMO_MODEL_NAME = "hippocampus-cce"
DEMO_SAMPLE = "hippocampus"


class DemoError(RuntimeError):
    """A stage of the demo failed; the message says which and why."""


@dataclass
class LoopResult:
    """Figures of one played loop (Dice = mean over the ground truth's foreground classes)."""

    dice_first: float = float("nan")
    dice_first_outside: float = float("nan")
    dice_corrected: float = float("nan")
    dice_after: float = float("nan")
    dice_after_outside: float = float("nan")
    dice_layer_after: float = float("nan")
    corrections_kept: bool = False
    slices: list[int] = field(default_factory=list)
    axis: int = 0
    model_after: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def add_dock_widgets(viewer: Any) -> dict[str, Any]:
    """Dock every widget of the plugin; return name -> widget."""
    added = {}
    for name in DOCK_WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        added[name] = widget
    return added


def open_samples(viewer: Any, hippocampus: bool = True, synthetic: bool = True) -> list[str]:
    """Open the plugin's samples (the hippocampus MRI ships with the package); returns the keys opened."""
    keys = (["synthetic"] if synthetic else []) + ([DEMO_SAMPLE] if hippocampus else [])
    for key in keys:
        viewer.open_sample(PLUGIN, key)
    return keys


def demo_model_path() -> Path:
    """The packaged hippocampus model.

    Raises
    ------
    DemoError
        When it is not in the package (``make models`` makes it).
    """
    from napari_sscce.models.pretrained import get_model

    try:
        return get_model(DEMO_MODEL_NAME).path
    except KeyError as exc:
        raise DemoError(f"{exc.args[0]}; `make models` makes it") from None


def mean_dice(pred: np.ndarray, gt: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean Dice over the foreground classes present in ``gt`` (within ``where`` when given)."""
    from napari_sscce.metrics.surface import mean_dice as _mean_dice

    gt_in = np.asarray(gt) if where is None else np.asarray(gt)[np.asarray(where, dtype=bool)]
    classes = [int(c) for c in np.unique(gt_in) if c != 0]
    return _mean_dice(pred, gt, classes, where=where)


def outside_slices(shape: Sequence[int], axis: int, slices: Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels that are not in ``slices`` along ``axis``."""
    keep = np.ones(shape[axis], dtype=bool)
    keep[list(slices)] = False
    index = [np.newaxis] * len(shape)
    index[axis] = slice(None)
    return np.broadcast_to(keep[tuple(index)], tuple(shape))


def ranked_slices(regions: Sequence[Any], axis: int, n_slices: int) -> list[int]:
    """Up to ``n_slices`` slices along ``axis`` through the ranked regions, as a person would visit them.

    First the slice through each region's centroid, in rank order; when there are fewer regions than
    ``n_slices``, then the other slices of each region's bounding box, in rank order, nearest the
    centroid first.
    No slice is repeated.
    """
    out: list[int] = []

    def add(index: int) -> None:
        if index not in out and len(out) < n_slices:
            out.append(index)

    for region in regions:
        add(int(round(float(region.centroid[axis]))))
    for region in regions:
        bbox = getattr(region, "bbox", None)
        if bbox is None:
            continue
        centre = float(region.centroid[axis])
        for index in sorted(range(int(bbox[axis]), int(bbox[axis + 3])), key=lambda i: (abs(i - centre), i)):
            add(index)
    return out


def process_events_until(done: Any, timeout_s: float, what: str) -> None:
    """Process Qt events until ``done()`` holds for 0.3 s in a row.

    Raises
    ------
    DemoError
        After ``timeout_s`` seconds.
    """
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    since: float | None = None
    while True:
        QApplication.processEvents()
        now = time.monotonic()
        if not done():
            since = None
        elif since is None:
            since = now
        elif now - since > 0.3:
            return
        if now - start > timeout_s:
            raise DemoError(f"{what} did not end within {timeout_s:.0f} s")
        time.sleep(0.02)


def _idle(widget: Any) -> bool:
    return not widget.runner.running and not getattr(widget, "_stage", "")


def _go_to_slice(viewer: Any, layer: Any, axis: int, index: int) -> None:
    viewer.dims.set_point(axis, float(layer.translate[axis] + index * layer.scale[axis]))


def correct_slices(viewer: Any, seg_layer: Any, finetune: Any, gt: np.ndarray, axis: int,
                   slices: Sequence[int]) -> None:
    """Visit each slice and paint the ground truth where the segmentation is wrong (one edit per slice)."""
    for index in slices:
        _go_to_slice(viewer, seg_layer, axis, index)
        plane = [slice(None)] * gt.ndim
        plane[axis] = index
        wrong = np.asarray(seg_layer.data[tuple(plane)]) != gt[tuple(plane)]
        if not wrong.any():
            finetune.mark_current_slice()  # nothing to fix: the person confirms the slice
            continue
        coords = list(np.nonzero(wrong))
        coords.insert(axis, np.full_like(coords[0], index))
        with seg_layer.block_history():  # one undoable edit, one paint event
            seg_layer.data_setitem(tuple(coords), gt[tuple(coords)])


def _shot(viewer: Any, folder: Path | None, name: str) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"demo: saved {path}")


def _segment(segment: Any, image_layer: Any, model: Path, result: LoopResult) -> Any:
    start = time.monotonic()
    segment.set_model(model)
    segment.run(image_layer)
    process_events_until(lambda: _idle(segment), 600, "the segmentation")
    prediction = segment.last_prediction
    if prediction is None:
        raise DemoError(f"the segmentation failed: {segment.status.text()}")
    result.seconds["segment"] = time.monotonic() - start
    return prediction


def _finetune(finetune: Any, session: Any, iterations: int, result: LoopResult) -> Path:
    """Run the Fine-tune widget; the new model's path, or DemoError when no new model came out."""
    start = time.monotonic()
    problems: list[str] = []
    finetune.runner.failed.connect(lambda exc: problems.append(f"failed: {exc}"))
    finetune.runner.cancelled.connect(lambda: problems.append("cancelled"))
    before = session.model_path
    finetune.iterations_spin.setValue(iterations)
    finetune.finetune()
    process_events_until(lambda: _idle(finetune), 1800, "the fine-tune")
    after = session.model_path
    if problems or after is None or after == before or not Path(after).is_file():
        why = "; ".join(problems) or "no new model version"
        raise DemoError(f"the fine-tune did not produce a model ({why}): {finetune.status.text()}")
    result.seconds["finetune"] = time.monotonic() - start
    return Path(after)


def play(viewer: Any, widgets: dict[str, Any], model: Path, shots: Path | None, finetune_iterations: int,
         n_slices: int) -> LoopResult:
    """Play the loop in ``viewer`` (widgets docked); returns its figures or raises DemoError."""
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.widgets._layers import volume_from_layer
    from napari_sscce.widgets._state import CACHE_DIR

    result = LoopResult()
    segment, uncertainty, finetune = (widgets[k] for k in DOCK_WIDGETS)
    open_samples(viewer, synthetic=False)
    image_layer, gt_layer = viewer.layers[-2], viewer.layers[-1]
    gt = np.asarray(gt_layer.data)
    gt_layer.visible = False
    workspace = CACHE_DIR / "demo-workspace"  # a fresh labeled set and model history each run
    shutil.rmtree(workspace, ignore_errors=True)
    finetune.set_workspace(workspace)

    first = _segment(segment, image_layer, model, result)
    viewer.reset_view()
    seg_layer = viewer.layers[f"{image_layer.name} segmentation"]
    result.dice_first = mean_dice(first.labels, gt)
    print(f"demo: segmented {image_layer.name} with {model.name}: mean Dice {result.dice_first:.3f} "
          f"({segment.status.text()})", flush=True)
    _shot(viewer, shots, "demo_segment.png")

    uncertainty.refresh()
    if not uncertainty.regions:
        raise DemoError(f"the Uncertainty widget found no region: {uncertainty.status.text()}")
    uncertainty.select_region(0)
    print(f"demo: {len(uncertainty.regions)} uncertain regions; {uncertainty.status.text()}", flush=True)
    _shot(viewer, shots, "demo_uncertainty.png")

    result.axis = int(viewer.dims.not_displayed[0])
    result.slices = ranked_slices(uncertainty.regions, result.axis, n_slices)
    correct_slices(viewer, seg_layer, finetune, gt, result.axis, result.slices)
    corrected = np.asarray(seg_layer.data).copy()
    result.dice_corrected = mean_dice(corrected, gt)
    outside = outside_slices(gt.shape, result.axis, result.slices)
    result.dice_first_outside = mean_dice(first.labels, gt, outside)
    print(f"demo: corrected slices {result.slices} (axis {result.axis}) through the top-ranked regions; "
          f"Dice of the corrected layer {result.dice_corrected:.3f}; {finetune.counts.text()}", flush=True)

    new_model = _finetune(finetune, segment.session, finetune_iterations, result)
    result.model_after = str(new_model)
    after = predict_volume(str(new_model), volume_from_layer(image_layer), segment.config()).labels
    result.dice_after = mean_dice(after, gt)
    result.dice_after_outside = mean_dice(after, gt, outside)
    layer_after = np.asarray(viewer.layers[f"{image_layer.name} segmentation"].data)
    result.dice_layer_after = mean_dice(layer_after, gt)
    result.corrections_kept = bool(np.array_equal(layer_after[~outside], corrected[~outside]))
    print(f"demo: {finetune.status.text()}", flush=True)
    train = getattr(finetune.last_result, "train", None)
    if train is not None:  # how much of the fine-tune trained (issue 22: no thrown-away steps)
        numerics = train.numerics
        print(f"demo: fine-tune steps: {train.effective_steps} of {train.iterations} learned from "
              f"({numerics.get('skipped_steps', 0)} skipped, {numerics.get('reduced_precision_retries', 0)} "
              f"redone in fp32), precision {numerics.get('precision')}", flush=True)
    _shot(viewer, shots, "demo_finetune.png")
    return result


def report(result: LoopResult, finetune_iterations: int) -> str:
    """The figures a reader compares, one per line."""
    n = len(result.slices)
    return "\n".join([
        f"demo: mean Dice of the first segmentation      {result.dice_first:.3f} "
        f"(outside the {n} corrected slices {result.dice_first_outside:.3f})",
        f"demo: mean Dice of the corrected layer         {result.dice_corrected:.3f} "
        "(painted from the ground truth)",
        f"demo: mean Dice of the fine-tuned model's own segmentation {result.dice_after:.3f} "
        f"(outside the corrected slices {result.dice_after_outside:.3f}; {finetune_iterations} iterations)",
        f"demo: the segmentation layer after the fine-tune: Dice {result.dice_layer_after:.3f}, corrected "
        f"slices kept: {'yes' if result.corrections_kept else 'no'}",
        "demo: seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()),
    ])


def run_loop(shots: Path | None, finetune_iterations: int = 40, n_slices: int = 4, headless: bool = True,
             model: str | Path | None = None) -> int:
    """Play the loop; screenshots go to ``shots`` when ``headless``; returns the exit status (0 = success)."""
    import napari

    start = time.monotonic()
    viewer = None
    try:
        path = Path(model) if model else demo_model_path()
        viewer = napari.Viewer(title="napari-sscce demo", show=True)
        widgets = add_dock_widgets(viewer)
        missing = [k for k in DOCK_WIDGETS if k not in widgets]
        if missing:
            raise DemoError(f"cannot play the loop without the {', '.join(missing)} widget(s)")
        viewer.window.resize(1600, 1000)
        result = play(viewer, widgets, path, shots if headless else None, finetune_iterations, n_slices)
    except Exception as exc:  # noqa: BLE001 - every failure must end the demo with a non-zero status
        print(f"demo: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if viewer is not None:
            viewer.close()
        return 1
    result.seconds["total"] = time.monotonic() - start
    print(report(result, finetune_iterations), flush=True)
    if headless:
        viewer.close()
    else:
        napari.run()
    return 0
