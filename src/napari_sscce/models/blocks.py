"""Building blocks shared by the 3D networks (layout of the UA-MT / DTC VNet).

The module and attribute names mirror ``yulequan/UA-MT`` ``code/networks/vnet.py`` so that a state_dict
trained with the reference loads into our networks with ``strict=True``: every block keeps its layers in a
``conv`` ``nn.Sequential`` whose indices are the same as the reference's (conv, norm, ReLU, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMALIZATIONS = ("batchnorm", "groupnorm", "instancenorm", "none")

#: Spatial sizes must be multiples of this for the 4 stride-2 stages; other sizes are padded in ``forward``.
SIZE_MULTIPLE = 16


def check_normalization(normalization: str) -> str:
    """Return ``normalization`` if it is known, else raise a ``ValueError`` listing the choices."""
    if normalization not in NORMALIZATIONS:
        choices = ", ".join(NORMALIZATIONS)
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {choices}")
    return normalization


def make_norm(normalization: str, channels: int) -> nn.Module | None:
    """Normalisation layer for ``channels`` feature maps, or ``None`` for ``"none"``.

    Group norm uses 16 groups as the reference (fewer when ``channels`` is not a multiple of 16);
    instance norm keeps PyTorch's default (no affine parameters, no running statistics) as the reference.
    """
    check_normalization(normalization)
    if normalization == "batchnorm":
        return nn.BatchNorm3d(channels)
    if normalization == "groupnorm":
        return nn.GroupNorm(num_groups=math.gcd(16, channels), num_channels=channels)
    if normalization == "instancenorm":
        return nn.InstanceNorm3d(channels)
    return None


class ConvBlock(nn.Module):
    """``n_stages`` x (3x3x3 conv, normalisation, ReLU), as the reference ``ConvBlock``."""

    def __init__(self, n_stages: int, n_filters_in: int, n_filters_out: int, normalization: str = "none"):
        super().__init__()
        ops: list[nn.Module] = []
        for i in range(n_stages):
            ops.append(nn.Conv3d(n_filters_in if i == 0 else n_filters_out, n_filters_out, 3, padding=1))
            norm = make_norm(normalization, n_filters_out)
            if norm is not None:
                ops.append(norm)
            ops.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownsamplingConvBlock(nn.Module):
    """Strided convolution (kernel = stride = 2), normalisation, ReLU: halves each spatial size."""

    def __init__(self, n_filters_in: int, n_filters_out: int, stride: int = 2, normalization: str = "none"):
        super().__init__()
        ops: list[nn.Module] = [nn.Conv3d(n_filters_in, n_filters_out, stride, padding=0, stride=stride)]
        norm = make_norm(normalization, n_filters_out)
        if norm is not None:
            ops.append(norm)
        ops.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsamplingDeconvBlock(nn.Module):
    """Transposed convolution (kernel = stride = 2), normalisation, ReLU: doubles each spatial size."""

    def __init__(self, n_filters_in: int, n_filters_out: int, stride: int = 2, normalization: str = "none"):
        super().__init__()
        ops: list[nn.Module] = [
            nn.ConvTranspose3d(n_filters_in, n_filters_out, stride, padding=0, stride=stride)
        ]
        norm = make_norm(normalization, n_filters_out)
        if norm is not None:
            ops.append(norm)
        ops.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class VNetDecoderBase(nn.Module):
    """The VNet decoder (blocks five-up to nine, ``out_conv``) shared by every network of the package.

    Subclasses build an encoder returning five feature maps with ``n, 2n, 4n, 8n, 16n`` channels at
    full, 1/2, 1/4, 1/8 and 1/16 resolution, call :meth:`_init_decoder`, and implement :meth:`encoder`.
    ``forward`` pads inputs whose spatial sizes are not multiples of 16 (zeros at the high end of each
    axis) and crops the outputs back, so any size works; sizes that are multiples of 16 are not padded.
    """

    name: str = ""

    def _init_decoder(self, n_filters: int, num_classes: int, normalization: str, has_dropout: bool) -> None:
        n = n_filters
        self.has_dropout = has_dropout
        self.block_five_up = UpsamplingDeconvBlock(n * 16, n * 8, normalization=normalization)
        self.block_six = ConvBlock(3, n * 8, n * 8, normalization=normalization)
        self.block_six_up = UpsamplingDeconvBlock(n * 8, n * 4, normalization=normalization)
        self.block_seven = ConvBlock(3, n * 4, n * 4, normalization=normalization)
        self.block_seven_up = UpsamplingDeconvBlock(n * 4, n * 2, normalization=normalization)
        self.block_eight = ConvBlock(2, n * 2, n * 2, normalization=normalization)
        self.block_eight_up = UpsamplingDeconvBlock(n * 2, n, normalization=normalization)
        self.block_nine = ConvBlock(1, n, n, normalization=normalization)
        self.out_conv = nn.Conv3d(n, num_classes, 1, padding=0)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False)

    def _init_projection(self, n_filters: int, projection_dim: int, normalization: str) -> None:
        """Optional projection head for contrastive losses (``projection_dim = 0``: none).

        1x1x1 conv, normalisation, ReLU, 1x1x1 conv to ``projection_dim`` channels, applied by
        :meth:`project` to the last decoder features; ``forward`` never uses it, so predictions do not
        depend on it.
        """
        self.projection = None
        if projection_dim > 0:
            ops: list[nn.Module] = [nn.Conv3d(n_filters, n_filters, 1)]
            norm = make_norm(normalization, n_filters)
            if norm is not None:
                ops.append(norm)
            ops += [nn.ReLU(inplace=True), nn.Conv3d(n_filters, projection_dim, 1)]
            self.projection = nn.Sequential(*ops)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The projection head's embedding of ``features`` (the features themselves without a head)."""
        return features if self.projection is None else self.projection(features)

    def _record_spec(self, **kwargs) -> None:
        """Remember the constructor arguments (``.spec``) so the network can be rebuilt from a checkpoint."""
        self.spec = {"name": self.name, "kwargs": dict(kwargs)}
        self.in_channels = int(kwargs["in_channels"])
        self.num_classes = int(kwargs["num_classes"])

    def encoder(self, x: torch.Tensor, dropout: bool) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder(self, features: list[torch.Tensor], dropout: bool) -> torch.Tensor:
        """Decode the five encoder maps into the last decoder feature map (``n`` channels, full size)."""
        x1, x2, x3, x4, x5 = features
        x = self.block_five_up(x5) + x4
        x = self.block_six_up(self.block_six(x)) + x3
        x = self.block_seven_up(self.block_seven(x)) + x2
        x = self.block_eight_up(self.block_eight(x)) + x1
        x = self.block_nine(x)
        if dropout:
            x = self.dropout(x)
        return x

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Output heads applied to the last decoder feature map; returns ``(logits, features)``."""
        return self.out_conv(features), features

    def forward(self, x: torch.Tensor, turnoff_drop: bool = False) -> tuple[torch.Tensor, ...]:
        """Run the network.

        Parameters
        ----------
        x : Tensor
            Input of shape ``(B, in_channels, Z, Y, X)``.
        turnoff_drop : bool
            Skip the dropout layers for this call even if ``has_dropout`` (as the reference's argument).

        Returns
        -------
        tuple of Tensor
            ``(logits [B, num_classes, Z, Y, X], features [B, base_filters, Z, Y, X])`` and, for
            networks with more heads, their outputs after these two.
        """
        if x.ndim != 5:
            raise ValueError(
                f"{type(self).__name__} expects a 5-D input (B, C, Z, Y, X), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        size = x.shape[2:]
        pad = [(-s) % SIZE_MULTIPLE for s in size]
        if any(pad):
            # F.pad takes (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi): pad only the high end of each axis.
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        dropout = self.has_dropout and not turnoff_drop
        outputs = self.heads(self.decoder(self.encoder(x, dropout), dropout))
        if any(pad):
            outputs = tuple(o[:, :, : size[0], : size[1], : size[2]] for o in outputs)
        return outputs


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
