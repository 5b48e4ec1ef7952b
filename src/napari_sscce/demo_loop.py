"""The whole interactive loop of ``make demo``, played through the dock widgets on the synthetic sample.

1. a small demo model: trained by :func:`napari_sscce.training.loop.train` (CCE, 4 base filters) on synthetic
   scans other than the sample on the first run, then cached (:func:`demo_model_path`);
2. Segment: labels, entropy and KL layers;
3. Uncertainty: ranked regions, the view moves to the first;
4. a scripted correction: the ground truth is painted into the slices with the most wrong voxels, as a person
   would with the brush (each slice as one edit, so the Fine-tune widget counts it as a checked slice);
5. Fine-tune for a few iterations on the corrected case, which segments the image again;
6. the Dice of the segmentation against the ground truth before and after is printed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.progress import ProgressEvent

#: the demo model's training run (a few minutes on a laptop CPU)
DEMO_TRAIN = {
    "method": "cce",
    "base_filters": 4,
    "patch_size": (32, 48, 48),
    "iterations": 120,
    # poly decay: the step schedule scaled to 120 iterations would drop the rate tenfold at iteration 50
    "schedule": "poly",
    "labeled_bs": 2,
    "unlabeled_bs": 1,
    "val_every": 0,  # no validation split: the last model is kept (and the first run stays short)
    "seed": 0,
}
DEMO_CASES = {"n_cases": 8, "n_labeled": 4, "n_val": 0, "shape": (48, 64, 64), "num_classes": 3, "seed": 100}


def _print_progress(prefix: str):
    last = [0.0]

    def show(event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - last[0] > 5 or event.step == event.total:
            last[0] = now
            print(f"{prefix}: {event.message or event.stage} ({event.step}/{event.total})", flush=True)

    return show


def train_demo_model(destination: Path) -> Path:
    """Train the demo model on synthetic scans (seeds 100+, not the sample's 0), save as ``destination``."""
    from napari_sscce.io.sample_data import make_synthetic_dataset
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import train

    with tempfile.TemporaryDirectory(prefix="napari-sscce-demo-") as tmp:
        data = make_synthetic_dataset(Path(tmp) / "data", **DEMO_CASES)
        config = TrainConfig(data=str(data), out=str(Path(tmp) / "run"), **DEMO_TRAIN)
        result = train(config, progress=_print_progress("training the demo model"))
        best = result.best_path or result.last_path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, destination)
    return destination


def demo_model_path() -> Path:
    """The cached demo model, trained first when absent."""
    from napari_sscce.widgets._state import DEMO_MODEL

    if not DEMO_MODEL.is_file():
        print(f"demo: no cached model at {DEMO_MODEL}; training one on synthetic scans (a few minutes) …")
        train_demo_model(DEMO_MODEL)
    return DEMO_MODEL


def mean_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in ``gt``."""
    from napari_sscce.metrics.surface import dice

    classes = [c for c in np.unique(gt) if c != 0]
    return float(np.mean([dice(pred == c, gt == c) for c in classes])) if classes else 0.0


def wait_for(runner: Any, timeout_s: float = 1800.0) -> None:
    """Process Qt events until ``runner`` (a WorkRunner) is idle."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while runner.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"the demo step did not end within {timeout_s:.0f} s")
    QApplication.processEvents()


def correct_worst_slices(seg_layer: Any, gt: np.ndarray, n_slices: int) -> list[int]:
    """Paint the ground truth into the ``n_slices`` z-slices with most wrong voxels (one edit per slice)."""
    wrong = (np.asarray(seg_layer.data) != gt).sum(axis=(1, 2))
    slices = [int(z) for z in np.argsort(wrong)[::-1][:n_slices] if wrong[z] > 0]
    for z in slices:
        y, x = np.nonzero(np.asarray(seg_layer.data[z]) != gt[z])
        with seg_layer.block_history():  # one undoable edit, one paint event
            seg_layer.data_setitem((np.full_like(y, z), y, x), gt[z, y, x])
    return sorted(slices)


def _shot(viewer: Any, folder: Path | None, name: str) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"demo: saved {path}")


def run_loop(
    shots: Path | None, finetune_iterations: int = 40, n_slices: int = 4, headless: bool = True
) -> int:
    """Play the loop; saves screenshots in ``shots`` when ``headless``; returns the exit code."""
    import napari

    from napari_sscce.demo import add_dock_widgets, open_samples

    model = demo_model_path()
    viewer = napari.Viewer(title="napari-sscce demo", show=True)
    widgets = add_dock_widgets(viewer)
    missing = {"Segment", "Uncertainty", "Correct & fine-tune"} - set(widgets)
    if missing:
        print(
            f"demo: cannot play the loop without the {', '.join(sorted(missing))} widget(s)", file=sys.stderr
        )
        return 1
    segment, uncertainty, finetune = (widgets[k] for k in ("Segment", "Uncertainty", "Correct & fine-tune"))
    viewer.window.resize(1600, 1000)
    open_samples(viewer, hippocampus=False)
    image_layer, gt_layer = viewer.layers[-2], viewer.layers[-1]
    gt = np.asarray(gt_layer.data)
    gt_layer.visible = False
    folder = shots if headless else None
    from napari_sscce.widgets._state import CACHE_DIR

    workspace = CACHE_DIR / "demo-workspace"  # a fresh labeled set and model history each run
    shutil.rmtree(workspace, ignore_errors=True)
    finetune.set_workspace(workspace)

    segment.set_model(model)
    segment.run(image_layer)
    wait_for(segment.runner)
    viewer.reset_view()
    seg_layer = viewer.layers[f"{image_layer.name} segmentation"]
    before = mean_dice(np.asarray(seg_layer.data), gt)
    print(f"demo: segmented {image_layer.name}: mean Dice {before:.3f} ({segment.status.text()})")
    _shot(viewer, folder, "demo_segment.png")

    uncertainty.refresh()
    if uncertainty.regions:
        uncertainty.select_region(0)
        print(f"demo: {len(uncertainty.regions)} uncertain regions; {uncertainty.status.text()}")
    _shot(viewer, folder, "demo_uncertainty.png")

    slices = correct_worst_slices(seg_layer, gt, n_slices)
    corrected = mean_dice(np.asarray(seg_layer.data), gt)
    print(
        f"demo: corrected slices {slices} (Dice with the corrections {corrected:.3f}); "
        f"{finetune.counts.text()}"
    )
    finetune.iterations_spin.setValue(finetune_iterations)
    finetune.finetune()
    while finetune.runner.running or finetune._stage:
        wait_for(finetune.runner)
    after = mean_dice(np.asarray(viewer.layers[f"{image_layer.name} segmentation"].data), gt)
    print(f"demo: {finetune.status.text()}")
    print(
        f"demo: mean Dice before fine-tuning {before:.3f}, after {after:.3f} "
        f"({finetune_iterations} iterations on {len(slices)} corrected slices)"
    )
    _shot(viewer, folder, "demo_finetune.png")
    if headless:
        viewer.close()
    else:
        napari.run()
    return 0
