"""The demo loop tells the truth: failures give a non-zero exit status; Qt stays out of the core modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sscce.widgets import demo_loop
from napari_sscce.widgets.demo_loop import mean_dice, outside_slices, ranked_slices

ROOT = Path(__file__).resolve().parents[2]


def test_helpers():
    class R:
        def __init__(self, c, bbox=None):
            self.centroid, self.bbox = c, bbox

    regions = [R((3.2, 1, 1)), R((2.9, 5, 5)), R((7.0, 0, 0)), R((1.0, 0, 0))]
    assert ranked_slices(regions, 0, 2) == [3, 7]  # rank order, repeats skipped
    assert ranked_slices(regions, 1, 10) == [1, 5, 0]
    # fewer regions than slices: the top region's other slices, nearest its centroid first
    boxed = [R((5.2, 1, 1), (3, 0, 0, 8, 2, 2)), R((0.0, 1, 1), (0, 0, 0, 1, 2, 2))]
    assert ranked_slices(boxed, 0, 4) == [5, 0, 6, 4]  # 6 is 0.8 from 5.2, 4 is 1.2
    mask = outside_slices((4, 2, 3), 0, [1, 3])
    assert mask.shape == (4, 2, 3) and mask[0].all() and not mask[1].any() and not mask[3].any()
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2], gt[2:, 2:] = 1, 2
    pred = gt.copy()
    pred[3, 3] = 0
    assert mean_dice(gt, gt) == 1.0
    assert mean_dice(pred, gt) == pytest.approx((1.0 + 6 / 7) / 2)
    assert mean_dice(pred, gt, where=np.arange(16).reshape(4, 4) < 8) == 1.0


def test_no_qt_in_core_modules_and_no_import_cycle():
    code = (
        "import sys\n"
        "import napari_sscce.demo, napari_sscce.widgets.demo_loop, napari_sscce.cli, napari_sscce.loop\n"
        "import napari_sscce.models.pretrained\n"
        "import napari_sscce.io.sample_data\n"
        "qt = ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in qt)\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    source = (ROOT / "src" / "napari_sscce" / "widgets" / "demo_loop.py").read_text(encoding="utf-8")
    assert "from napari_sscce.demo import" not in source and "import napari_sscce.demo\n" not in source


def test_missing_packaged_model_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(tmp_path))
    with pytest.raises(demo_loop.DemoError, match="hippocampus-cce.*make models"):
        demo_loop.demo_model_path()


@pytest.fixture
def tiny_packaged_model(tmp_path, monkeypatch):
    """A 3-class CCE model (2 base filters) packaged as hippocampus-cce in a private models folder."""
    from napari_sscce.models import build_dual_model, save_checkpoint
    from napari_sscce.models.pretrained import write_packaged_model

    torch.manual_seed(0)
    model = build_dual_model("cce", in_channels=1, num_classes=3, base_filters=2, has_dropout=False)
    meta = {"method": "cce", "patch_size": [16, 32, 32], "spacing": [1.0, 1.0, 1.0],
            "normalization": {"mode": "percentile_zscore"}}
    source = save_checkpoint(tmp_path / "run.safetensors", model.eval(), meta)
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(folder))
    monkeypatch.setenv("NAPARI_SSCCE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr("napari_sscce.widgets._state.CACHE_DIR", tmp_path / "cache")
    return write_packaged_model(source, folder / "hippocampus-cce.safetensors", {"data": "none"})


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run -a")
@pytest.mark.parametrize("failure", ["raises", "does_nothing"])
def test_demo_exits_non_zero_when_the_finetune_fails(tiny_packaged_model, qapp, monkeypatch, capsys, failure):
    from napari_sscce.widgets.finetune import FinetuneWidget

    def boom(self):
        raise RuntimeError("injected fine-tune failure")

    monkeypatch.setattr(FinetuneWidget, "finetune", boom if failure == "raises" else lambda self: None)
    monkeypatch.setattr(demo_loop, "ranked_slices", lambda regions, axis, n: [5])  # regions of a random model
    monkeypatch.setattr(demo_loop, "_shot", lambda *args: None)
    status = demo_loop.run_loop(None, finetune_iterations=1, n_slices=1, headless=True)
    out, err = capsys.readouterr()
    assert status == 1
    assert "the fine-tune" in err if failure == "does_nothing" else "injected fine-tune failure" in err
    assert "fine-tuned model's own segmentation" not in out  # no success figure after a failure
    assert "segmented hippocampus_252" in out  # it got as far as the fine-tune
