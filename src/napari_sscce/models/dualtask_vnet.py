"""Dual-task VNet: segmentation and signed-distance heads on the last VNet decoder feature map.

As ``HiLab-git/DTC`` ``code/networks/vnet_sdf.py``: both heads are 1x1x1 convolutions on the same
(dropout-applied) features, the distance head is followed by ``tanh`` so it lies in [-1, 1]. Our
segmentation head keeps the VNet name ``out_conv`` (so VNet weights load into it) and gives ``num_classes``
softmax logits; the distance head is ``out_conv_sdf`` with one channel per foreground class
(``num_classes - 1``), as UG-MCL. (DTC names its distance head ``out_conv`` and its segmentation head
``out_conv2``, both with the same channel count.)
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sscce.models.vnet import VNet


class DualTaskVNet(VNet):
    """VNet returning ``(logits, features, sdf)``; ``sdf`` has ``num_classes - 1`` channels in [-1, 1].

    Parameters are those of :class:`~napari_sscce.models.vnet.VNet`; ``num_classes`` must be at least 2.
    """

    name = "dualtask_vnet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = True,
    ):
        if num_classes < 2:
            raise ValueError(f"DualTaskVNet needs num_classes >= 2 (background + objects), got {num_classes}")
        super().__init__(in_channels, num_classes, base_filters, normalization, has_dropout)
        self.out_conv_sdf = nn.Conv3d(base_filters, num_classes - 1, 1, padding=0)
        self.tanh = nn.Tanh()

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(logits, features, sdf)``."""
        return self.out_conv(features), features, self.tanh(self.out_conv_sdf(features))
