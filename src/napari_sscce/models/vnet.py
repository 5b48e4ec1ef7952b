"""VNet in the layout of UA-MT (``yulequan/UA-MT``, ``code/networks/vnet.py``).

16 base filters, 4 down-sampling stages (strided 2x2x2 convs), transposed-conv up-sampling with additive
skip connections, BatchNorm by default. Parameter names equal the reference's (``block_one.conv.0.weight``,
``block_one_dw.conv.1.running_mean``, ..., ``out_conv.weight``), so reference weights load unchanged.
With ``has_dropout`` a ``Dropout3d(p=0.5)`` is applied to the bottleneck (``block_five`` output) and to the
last decoder feature map, exactly where the reference applies it. VNet(1, 2) has 9,448,866 parameters
(9.45 M) with batch norm.
"""

from __future__ import annotations

import torch

from napari_sscce.models.blocks import (
    ConvBlock,
    DownsamplingConvBlock,
    VNetDecoderBase,
    check_normalization,
)


class VNet(VNetDecoderBase):
    """3D VNet returning ``(logits, features)``.

    Parameters
    ----------
    in_channels : int
        Number of input channels (image modalities).
    num_classes : int
        Number of output classes, background included.
    base_filters : int
        Channels of the first stage (16 in the reference); stage ``k`` has ``base_filters * 2**k``.
    normalization : {"batchnorm", "groupnorm", "instancenorm", "none"}
        Normalisation after each convolution (the reference trains with batch norm).
    has_dropout : bool
        Apply ``Dropout3d(p=0.5)`` to the bottleneck and to the last decoder features (active in train mode).
    projection_dim : int
        Channels of an optional projection head for contrastive losses (0: none; see
        :meth:`~napari_sscce.models.blocks.VNetDecoderBase.project`). Not used by ``forward``.
    """

    name = "vnet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = True,
        projection_dim: int = 0,
    ):
        super().__init__()
        check_normalization(normalization)
        self._record_spec(
            in_channels=in_channels,
            num_classes=num_classes,
            base_filters=base_filters,
            normalization=normalization,
            has_dropout=has_dropout,
            **({"projection_dim": int(projection_dim)} if projection_dim else {}),
        )
        n, norm = base_filters, normalization
        self.block_one = ConvBlock(1, in_channels, n, normalization=norm)
        self.block_one_dw = DownsamplingConvBlock(n, 2 * n, normalization=norm)
        self.block_two = ConvBlock(2, n * 2, n * 2, normalization=norm)
        self.block_two_dw = DownsamplingConvBlock(n * 2, n * 4, normalization=norm)
        self.block_three = ConvBlock(3, n * 4, n * 4, normalization=norm)
        self.block_three_dw = DownsamplingConvBlock(n * 4, n * 8, normalization=norm)
        self.block_four = ConvBlock(3, n * 8, n * 8, normalization=norm)
        self.block_four_dw = DownsamplingConvBlock(n * 8, n * 16, normalization=norm)
        self.block_five = ConvBlock(3, n * 16, n * 16, normalization=norm)
        self._init_decoder(n, num_classes, norm, has_dropout)
        self._init_projection(n, int(projection_dim), norm)

    def encoder(self, x: torch.Tensor, dropout: bool) -> list[torch.Tensor]:
        """Return the five encoder maps ``[x1, x2, x3, x4, x5]`` (full to 1/16 resolution)."""
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.block_five(self.block_four_dw(x4))
        if dropout:
            x5 = self.dropout(x5)
        return [x1, x2, x3, x4, x5]
