"""The demo: headless detection and a non-blank screenshot."""

from __future__ import annotations

import os

import pytest

from napari_sscce import demo


def test_has_real_display(monkeypatch):
    monkeypatch.setattr(demo.sys, "platform", "linux")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    assert not demo.has_real_display()
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setenv("XAUTHORITY", "/tmp/xvfb-run.abc/Xauthority")
    assert not demo.has_real_display()
    monkeypatch.setenv("XAUTHORITY", "/home/me/.Xauthority")
    assert demo.has_real_display()


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run -a")
def test_demo_screenshot(tmp_path, qapp):
    from imageio.v3 import imread

    out = tmp_path / "shot.png"
    assert demo.main(["--screenshot", str(out), "--no-hippocampus"]) == 0
    pixels = imread(out)
    assert pixels.ndim == 3 and pixels[..., :3].std() > 10  # an image, not a blank canvas
