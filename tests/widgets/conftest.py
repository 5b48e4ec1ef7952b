"""Fixtures of the widget tests: a tiny model file, a tiny synthetic scan, a private settings folder."""

from __future__ import annotations

import pytest
import torch

from napari_sscce.io.sample_data import make_synthetic
from napari_sscce.models.checkpoint import save_checkpoint
from napari_sscce.models.dual import build_dual_model

SHAPE = (16, 32, 32)
SPACING = (2.0, 1.0, 0.5)


@pytest.fixture(autouse=True)
def private_settings(tmp_path, monkeypatch):
    """Keep the widgets' remembered settings (recent models, workspace) out of the user's config."""
    monkeypatch.setenv("NAPARI_SSCCE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr(
        "napari_sscce.widgets._state.BUNDLED_MODEL", tmp_path / "none" / "bundled.safetensors"
    )
    monkeypatch.setattr("napari_sscce.widgets._state.DEMO_MODEL", tmp_path / "none" / "demo.safetensors")
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(tmp_path / "no-packaged-models"))


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory):
    """``make(seed, bias_shift=0.0)``: a 2-class CCE DualModel (VNet + ResNet-VNet, 4 base filters) with the
    weights of ``seed`` saved as a model file on the scan's grid; ``bias_shift`` is added to the foreground
    output bias of the first network (a model whose prediction surely differs)."""

    def make(seed: int, bias_shift: float = 0.0):
        torch.manual_seed(seed)
        model = build_dual_model("cce", in_channels=1, num_classes=2, base_filters=4)
        if bias_shift:
            with torch.no_grad():
                model.net_a.out_conv.bias.add_(torch.tensor([0.0, bias_shift]))
        path = tmp_path_factory.mktemp("model") / "tiny.safetensors"  # a folder per model
        metadata = {
            "method": "cce",
            "patch_size": list(SHAPE),
            "spacing": list(SPACING),
            "normalization": {"mode": "zscore"},
            "val_metrics": {"dice": 0.5},
        }
        save_checkpoint(path, model, metadata)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model_path(make_tiny_model):
    """The widget tests' model file (seed 0)."""
    return make_tiny_model(0)


@pytest.fixture
def scan():
    """A tiny synthetic scan and its ground truth."""
    return make_synthetic(SHAPE, SPACING, seed=1, num_classes=2)


@pytest.fixture
def viewer_with_scan(make_napari_viewer, scan):
    """A viewer showing the tiny scan as layer "scan" with its spacing as scale."""
    viewer = make_napari_viewer()
    image, _ = scan
    viewer.add_image(image.array, name="scan", scale=image.spacing, translate=(10.0, 0.0, -5.0))
    return viewer
