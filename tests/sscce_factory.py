"""The one place tests make tiny models and model files (``from sscce_factory import ...``; ``tests/`` is on
the test import path, see ``[tool.pytest.ini_options] pythonpath`` in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from napari_sscce.models.checkpoint import save_checkpoint
from napari_sscce.models.dual import DualModel, build_dual_model


def tiny_dual_model(
    method: str = "cce",
    num_classes: int = 2,
    base_filters: int = 2,
    seed: int | None = 0,
    has_dropout: bool | None = False,
    in_channels: int = 1,
) -> DualModel:
    """A real dual model of ``method`` (random weights of ``seed``), a few filters wide; ``has_dropout=None``
    keeps the method's own default."""
    if seed is not None:
        torch.manual_seed(seed)
    extra = {} if has_dropout is None else {"has_dropout": has_dropout}
    return build_dual_model(method, in_channels=in_channels, num_classes=num_classes,
                            base_filters=base_filters, **extra)


def tiny_model_file(
    path: str | Path,
    method: str = "cce",
    num_classes: int = 2,
    base_filters: int = 2,
    seed: int | None = 0,
    has_dropout: bool | None = False,
    model: DualModel | None = None,
    **metadata: Any,
) -> Path:
    """Save a tiny model (or ``model``) as a model file with ``{"method": method, **metadata}``."""
    if model is None:
        model = tiny_dual_model(method, num_classes, base_filters, seed, has_dropout)
    return save_checkpoint(Path(path), model, {"method": method, **metadata})
