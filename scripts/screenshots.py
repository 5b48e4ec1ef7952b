"""Screenshots of the three widgets docked at 1366x768 and 1920x1080 (``docs/screenshot_<w>x<h>.png``).

Run under a display: ``bash scripts/with_display.sh python scripts/screenshots.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_sscce.widgets.demo_loop import add_dock_widgets, open_samples


def shoot(width: int, height: int, out: Path) -> None:
    """Open the sample, segment it with the proposed model, show uncertainty, save a window screenshot."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(width, height)
    widgets = add_dock_widgets(viewer)
    open_samples(viewer, hippocampus=True, synthetic=False)
    segment = widgets["Segment"]
    segment.run()
    deadline = time.monotonic() + 120
    while segment.runner.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(out), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    docs = Path(__file__).resolve().parents[1] / "docs"
    sizes = [(1366, 768), (1920, 1080)] if len(sys.argv) < 2 else [tuple(map(int, sys.argv[1].split("x")))]
    for w, h in sizes:
        shoot(w, h, docs / f"screenshot_{w}x{h}.png")
