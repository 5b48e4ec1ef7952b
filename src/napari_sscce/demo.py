"""Open napari with the plugin's dock widgets and sample data: ``python -m napari_sscce.demo``.

With no arguments (``make demo``), or with ``--loop``, it plays the whole interactive loop on a real
hippocampus MRI with the packaged hippocampus model, through the dock widgets themselves
(:mod:`napari_sscce.widgets.demo_loop`): segment, show the uncertainty layers and the ranked regions,
correct the slices the Uncertainty widget ranks first (the ground truth is painted into them as a person
would), fine-tune, and print the Dice of the first segmentation, of the corrected layer and of the
fine-tuned model's own segmentation. It exits with a non-zero status when any stage fails. Headless (no
``DISPLAY``, or only the virtual screen of ``xvfb-run``), so that ``make demo`` works on a server, it saves
a screenshot of each step in ``docs/`` (``demo_segment.png``, ``demo_uncertainty.png``,
``demo_finetune.png``).

``--screenshot PATH`` opens the viewer with the widgets and the samples, saves a canvas screenshot and
exits (``docs/demo.png``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_sscce.widgets.demo_loop import add_dock_widgets, open_samples

DEFAULT_SCREENSHOT = Path("docs") / "demo.png"


def has_real_display() -> bool:
    """True when a person can see a window: a desktop session, not an ``xvfb-run`` virtual screen."""
    if sys.platform != "linux":
        return True
    if os.environ.get("WAYLAND_DISPLAY"):
        return True
    if not os.environ.get("DISPLAY"):
        return False
    return "xvfb-run" not in os.environ.get("XAUTHORITY", "")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the demo."""
    parser = argparse.ArgumentParser(prog="python -m napari_sscce.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, default=None, help="save a canvas screenshot and exit")
    parser.add_argument("--no-hippocampus", action="store_true", help="show the synthetic sample only")
    parser.add_argument("--loop", action="store_true",
                        help="play the whole loop: segment, uncertainty, correct, fine-tune, segment again")
    parser.add_argument("--shots", type=Path, default=Path("docs"), help="folder of the --loop screenshots")
    parser.add_argument("--finetune-iterations", type=int, default=40, help="fine-tune steps in --loop")
    parser.add_argument("--slices", type=int, default=4, help="slices corrected in --loop")
    parser.add_argument("--model", default=None,
                        help="model file for --loop (default: the packaged hippocampus-cce model)")
    return parser


def focus_on(viewer, image_layer, label_layer=None) -> None:
    """Show one sample: hide the other layers, zoom on its extent, go to its most labelled slice.

    (napari's grid mode would show the samples side by side but renders blank under Xvfb.)
    """
    viewer.reset_view()
    for layer in viewer.layers:
        layer.visible = layer is image_layer or layer is label_layer
    lo, hi = (np.asarray(v, dtype=float) for v in image_layer.extent.world)
    all_lo, all_hi = (np.asarray(v, dtype=float) for v in viewer.layers.extent.world)
    shown = list(viewer.dims.displayed)
    ratio = np.min((all_hi - all_lo)[shown] / np.maximum((hi - lo)[shown], 1e-6))
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    camera.center = tuple(((lo + hi) / 2)[shown])
    camera.zoom = camera.zoom * float(ratio) * 0.95
    axis = viewer.dims.not_displayed[0] if viewer.dims.not_displayed else None
    if axis is None:
        return
    if label_layer is not None and np.any(label_layer.data):
        other = tuple(i for i in range(label_layer.data.ndim) if i != axis)
        index = int(np.argmax(np.asarray(label_layer.data).sum(axis=other)))
        point = label_layer.translate[axis] + index * label_layer.scale[axis]
    else:
        point = (lo[axis] + hi[axis]) / 2
    viewer.dims.set_point(axis, float(point))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(given)
    screenshot = args.screenshot
    import napari

    if args.loop or not given:
        from napari_sscce.widgets.demo_loop import run_loop

        return run_loop(args.shots, args.finetune_iterations, args.slices, headless=not has_real_display(),
                        model=args.model)
    viewer = napari.Viewer(title="napari-sscce demo", show=True)
    add_dock_widgets(viewer)
    keys = open_samples(viewer, hippocampus=not args.no_hippocampus)
    # the last sample (the real scan when present) is shown; the others stay in the layer list
    focus_on(viewer, viewer.layers[-2], viewer.layers[-1])
    if screenshot is None:
        napari.run()
        return 0
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(screenshot), canvas_only=True, flash=False)
    viewer.close()
    print(f"demo: saved {screenshot} ({', '.join(keys)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
