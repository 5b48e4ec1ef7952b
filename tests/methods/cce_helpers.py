"""Tiny dual models and batches for the CCE / supervised method tests."""

from __future__ import annotations

import torch

from napari_sscce.methods.base import Batch
from napari_sscce.models.dual import DualModel
from napari_sscce.models.registry import build_network


def tiny_dual(num_classes: int = 3, seed: int = 0) -> DualModel:
    torch.manual_seed(seed)
    kw = {"in_channels": 1, "num_classes": num_classes, "base_filters": 4, "has_dropout": False}
    return DualModel(build_network("vnet", **kw), build_network("resnet_vnet", **kw), kind="dual")


def tiny_batch(num_classes: int = 3, labeled_bs: int = 1, unlabeled_bs: int = 1, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(1)
    b = labeled_bs + unlabeled_bs
    image = torch.randn(b, 1, size, size, size, generator=g)
    label = torch.zeros(b, size, size, size, dtype=torch.long)
    label[:labeled_bs, 4:10, 4:10, 4:10] = 1
    if num_classes > 2:
        label[:labeled_bs, 10:14, 8:14, 2:8] = 2
    image[:labeled_bs] += label[:labeled_bs, None].float()
    mask = torch.zeros(b, size, size, size)
    mask[:labeled_bs] = 1.0
    return Batch(image=image, label=label, mask=mask, labeled_bs=labeled_bs)
