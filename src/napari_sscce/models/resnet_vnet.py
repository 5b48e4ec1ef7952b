"""Net B of the CCE dual network: a 3D ResNet-34 encoder under the VNet decoder.

Encoder (the paper's description; its released code is not public): a stem of one 7x7x7 convolution
(stride 1, ``base_filters`` = 16 channels, normalisation, ReLU) at full resolution, then four stages of
BasicBlocks ``[3, 4, 6, 3]`` with 32, 64, 128, 256 channels (``2, 4, 8, 16 x base_filters``), each stage
starting with a stride-2 block whose shortcut is a strided 1x1x1 convolution + normalisation, as
torchvision's ResNet. There is no max-pool, so the five encoder maps have the resolutions and channel
counts of the VNet encoder and feed the same decoder (``block_five_up`` ... ``out_conv``) with additive
skip connections. Dropout (``has_dropout``) acts as in VNet: bottleneck and last decoder features.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sscce.models.blocks import VNetDecoderBase, check_normalization, make_norm

#: BasicBlocks per stage of ResNet-34.
RESNET34_LAYERS = (3, 4, 6, 3)


def _norm_or_identity(normalization: str, channels: int) -> nn.Module:
    norm = make_norm(normalization, channels)
    return nn.Identity() if norm is None else norm


class BasicBlock3d(nn.Module):
    """ResNet basic block in 3D: two 3x3x3 convs with normalisation and an identity/projection shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, normalization: str = "batchnorm"
    ):
        super().__init__()
        bias = normalization == "none"
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm_or_identity(normalization, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = _norm_or_identity(normalization, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=bias),
                _norm_or_identity(normalization, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetVNet(VNetDecoderBase):
    """3D ResNet-34 encoder + VNet decoder returning ``(logits, features)``.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    num_classes : int
        Number of output classes, background included.
    base_filters : int
        Stem channels (16); stage ``k`` (1..4) has ``base_filters * 2**k`` channels.
    normalization : {"batchnorm", "groupnorm", "instancenorm", "none"}
        Normalisation in encoder and decoder.
    has_dropout : bool
        ``Dropout3d(p=0.5)`` on the bottleneck and the last decoder features, as VNet.
    layers : tuple of int
        BasicBlocks per stage (ResNet-34: ``(3, 4, 6, 3)``).
    projection_dim : int
        Channels of an optional projection head for contrastive losses (0: none; see
        :meth:`~napari_sscce.models.blocks.VNetDecoderBase.project`).
    """

    name = "resnet_vnet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = True,
        layers: tuple[int, ...] | list[int] = RESNET34_LAYERS,
        projection_dim: int = 0,
    ):
        super().__init__()
        check_normalization(normalization)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNetVNet needs 4 stages of at least one block each, got layers={layers!r}")
        self._record_spec(
            in_channels=in_channels,
            num_classes=num_classes,
            base_filters=base_filters,
            normalization=normalization,
            has_dropout=has_dropout,
            layers=[int(v) for v in layers],
            **({"projection_dim": int(projection_dim)} if projection_dim else {}),
        )
        n = base_filters
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, n, 7, padding=3, bias=normalization == "none"),
            _norm_or_identity(normalization, n),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = n
        for k, blocks in enumerate(layers, start=1):
            out = n * 2**k
            stage = [BasicBlock3d(channels, out, stride=2, normalization=normalization)]
            stage += [BasicBlock3d(out, out, normalization=normalization) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self._init_decoder(n, num_classes, normalization, has_dropout)
        self._init_projection(n, int(projection_dim), normalization)

    def encoder(self, x: torch.Tensor, dropout: bool) -> list[torch.Tensor]:
        """Return the five encoder maps (stem output, then each stage's output)."""
        x1 = self.stem(x)
        x2 = self.layer1(x1)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        if dropout:
            x5 = self.dropout(x5)
        return [x1, x2, x3, x4, x5]
