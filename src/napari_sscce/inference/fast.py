"""Inference-only rewrites of a model that make CPU bf16 inference faster without changing its function.

- BatchNorm folding: in eval mode a BatchNorm after a convolution is an affine map per channel, so it can be
  merged into the convolution's weights and bias (one pass over the activations less per layer).
- Single-channel convolutions get a zero second input channel: oneDNN's bf16 kernels are far slower for one
  input channel (a 7x7x7 stem convolution was 4-5x faster with two) and a zero channel changes nothing.
- ReLUs (and the residual additions of ResNet blocks) are fused into the convolutions as oneDNN post-ops
  (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` emits on CPUs): one pass over the
  activations less per layer.
- Weights are stored in bf16 and in ``channels_last_3d`` so that no per-forward cast or reorder is needed.

:func:`optimize_for_inference` works on a copy, checks the rewritten model against the original on a small
random input and returns the original when they disagree, so an unusual architecture is never silently
broken.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from napari_sscce.precision import INFERENCE_PROB_ATOL

_CONVS = (nn.Conv3d, nn.ConvTranspose3d)


def _fold(conv: nn.Module, bn: nn.BatchNorm3d) -> bool:
    """Merge ``bn`` into ``conv`` in place; False when it cannot be done."""
    if not isinstance(conv, _CONVS) or not isinstance(bn, nn.BatchNorm3d):
        return False
    if bn.running_mean is None or bn.running_var is None or conv.groups != 1:
        return False
    if conv.out_channels != bn.num_features:
        return False
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        out_dim = 1 if isinstance(conv, nn.ConvTranspose3d) else 0
        shape = [1] * conv.weight.ndim
        shape[out_dim] = -1
        conv.weight.mul_(scale.reshape(shape))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        new_bias = bias * scale + shift
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    return True


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm3d that directly follows a convolution into it (in place).

    Two patterns are recognised: consecutive ``(Conv, BatchNorm)`` items of an ``nn.Sequential`` and
    ``convN`` / ``bnN`` attribute pairs (ResNet blocks). A folded BatchNorm becomes ``nn.Identity``.

    Returns
    -------
    int
        Number of folded layers.
    """
    count = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module)
            for i in range(len(items) - 1):
                if _fold(items[i], items[i + 1]):
                    module[i + 1] = nn.Identity()
                    count += 1
        children = dict(module.named_children())
        for name, child in children.items():
            if name.startswith("bn") and name[2:].isdigit() and f"conv{name[2:]}" in children:
                if _fold(children[f"conv{name[2:]}"], child):
                    setattr(module, name, nn.Identity())
                    count += 1
    return count


class _TwoChannelConv(nn.Module):
    """A one-input-channel convolution fed a zero second channel (same result, faster oneDNN kernel)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.conv = nn.Conv3d(
            2,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :1].copy_(conv.weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

        self.fuse_relu = False  # set by fuse_conv_relu when a ReLU follows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv.weight.dtype)  # the fused op is not under autocast
        x = torch.cat([x, torch.zeros_like(x)], dim=1).contiguous(memory_format=torch.channels_last_3d)
        if self.fuse_relu:
            c = self.conv
            return _pointwise_op()(x, _weight(c), c.bias, *_conv_args(c), "relu", [], "")
        return self.conv(x)


def widen_single_channel_convs(model: nn.Module) -> int:
    """Replace each ``Conv3d`` with one input channel by :class:`_TwoChannelConv` (in place)."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv3d) and child.in_channels == 1 and child.groups == 1:
                setattr(module, name, _TwoChannelConv(child))
                count += 1
    return count


def _pointwise_op():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._convolution_pointwise if ops is not None else None
    except (AttributeError, RuntimeError):
        return None


def _weight(conv: nn.Conv3d) -> torch.Tensor:
    """The oneDNN-packed weight when :func:`pack_weights` made one, else the plain weight."""
    packed = getattr(conv, "_packed_weight", None)
    return conv.weight if packed is None else packed


def _conv_args(conv: nn.Conv3d) -> tuple:
    return (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv3d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and _pointwise_op() is not None
    )


class _ConvReLU(nn.Module):
    """Convolution with the ReLU fused into it (oneDNN post-op, ``mkldnn._convolution_pointwise``);
    ``unary="none"`` is the plain convolution through the same op (so it can use a packed weight)."""

    def __init__(self, conv: nn.Conv3d, unary: str = "relu"):
        super().__init__()
        self.conv, self.unary = conv, unary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = x.to(c.weight.dtype).contiguous(memory_format=torch.channels_last_3d)
        return _pointwise_op()(x, _weight(c), c.bias, *_conv_args(c), self.unary, [], "")


class _FusedBasicBlock(nn.Module):
    """A ResNet basic block (conv1 -> ReLU -> conv2 -> + shortcut -> ReLU) with oneDNN post-op fusion."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.conv2, self.downsample = block.conv1, block.conv2, block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.conv1.weight.dtype
        x = x.to(dtype).contiguous(memory_format=torch.channels_last_3d)
        identity = x if self.downsample is None else self.downsample(x)
        identity = identity.to(dtype).contiguous(memory_format=torch.channels_last_3d)
        c1, c2, op = self.conv1, self.conv2, _pointwise_op()
        out = op(x, _weight(c1), c1.bias, *_conv_args(c1), "relu", [], "")
        return op.binary(out, identity, _weight(c2), c2.bias, *_conv_args(c2), "add", None, "relu", [], "")


def _is_plain_basic_block(module: nn.Module) -> bool:
    names = dict(module.named_children())
    return (
        type(module).__name__ == "BasicBlock3d"
        and _fusable(names.get("conv1"))
        and _fusable(names.get("conv2"))
        and isinstance(names.get("bn1"), nn.Identity)
        and isinstance(names.get("bn2"), nn.Identity)
        and isinstance(names.get("relu"), nn.ReLU)
    )


def fuse_conv_relu(model: nn.Module) -> int:
    """Fuse ReLUs (and residual additions) into the preceding convolutions, in place.

    Recognised after :func:`fold_batchnorm`: ``Conv3d, [Identity...], ReLU`` inside an ``nn.Sequential``
    (VNet blocks, ResNet stem) and the package's ``BasicBlock3d`` (conv1 / bn1 / conv2 / bn2 / relu /
    downsample, BatchNorms folded). Needs PyTorch's oneDNN pointwise convolution; returns the number of
    fusions (0 where unavailable).
    """
    if _pointwise_op() is None:
        return 0
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if _is_plain_basic_block(child):
                setattr(module, name, _FusedBasicBlock(child))
                count += 1
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        items = list(module)
        for i, item in enumerate(items):
            widened = isinstance(item, _TwoChannelConv) and _fusable(item.conv)
            if not (_fusable(item) or widened):
                continue
            j = i + 1
            while j < len(items) and isinstance(items[j], nn.Identity):
                j += 1
            if j < len(items) and isinstance(items[j], nn.ReLU):
                if widened:
                    item.fuse_relu = True
                else:
                    module[i] = _ConvReLU(item)
                module[j] = nn.Identity()
                count += 1
    for module in list(model.modules()):
        if isinstance(module, (_ConvReLU, _FusedBasicBlock, _TwoChannelConv)):
            continue
        for name, child in list(module.named_children()):
            if _fusable(child):  # the remaining convolutions (1x1 heads, shortcuts): same op, no post-op
                setattr(module, name, _ConvReLU(child, unary="none"))
    return count


def pack_weights(model: nn.Module) -> int:
    """Give every convolution run by the oneDNN pointwise op a pre-reordered (packed) weight.

    Without it oneDNN reorders the weight on every call, which dominates the small deep layers. Call after
    the final dtype / layout change; the parameters stay as they are (the packed copy is an attribute).
    """
    reorder = getattr(getattr(torch.ops, "mkldnn", None), "_reorder_convolution_weight", None)
    if reorder is None:
        return 0
    count = 0
    for module in model.modules():
        convs = []
        if isinstance(module, _ConvReLU) or (isinstance(module, _TwoChannelConv) and module.fuse_relu):
            convs = [module.conv]
        elif isinstance(module, _FusedBasicBlock):
            convs = [module.conv1, module.conv2]
        for conv in convs:
            conv._packed_weight = reorder(conv.weight.detach(), *_conv_args(conv))
            count += 1
    return count


def optimize_for_inference(
    model: nn.Module, dtype: torch.dtype = torch.bfloat16, check_shape: tuple[int, int, int] = (16, 16, 16)
) -> nn.Module:
    """A faster inference-only copy of ``model`` for the CPU (the original is untouched).

    Folds BatchNorm, widens single-channel convolutions, casts the weights to ``dtype`` and puts them in
    ``channels_last_3d``. Inputs must then be given in ``dtype`` (no autocast needed). The copy is checked
    against the original on a random ``check_shape`` input, twice: in fp32 (the rewrite; at most 1e-3 relative
    to the output scale) and in ``dtype`` (softmax probabilities within
    :data:`napari_sscce.precision.INFERENCE_PROB_ATOL`, all finite). When either fails the original model is
    returned with a warning.
    """
    original = model.eval()
    fast = copy.deepcopy(original)
    with torch.inference_mode(False), torch.no_grad(), _one_thread():
        fold_batchnorm(fast)
        widen_single_channel_convs(fast)
        fuse_conv_relu(fast)
        fast.eval()
        in_channels = int(getattr(original, "in_channels", 1))
        x = torch.randn(1, in_channels, *check_shape, generator=torch.Generator().manual_seed(0))
        ref, got = _first_tensors(original(x)), _first_tensors(fast(x))
        scale = max(float(r.abs().max()) for r in ref) or 1.0
        err = max(float((r - g).abs().max()) for r, g in zip(ref, got, strict=True))
        if err > 1e-3 * scale:
            warnings.warn(
                f"inference rewrite changed the model's output by {err:.3g}; not used", stacklevel=2
            )
            return original
        fast = fast.to(dtype=dtype, memory_format=torch.channels_last_3d)
        pack_weights(fast)
        low = _first_tensors(fast(x.to(dtype).contiguous(memory_format=torch.channels_last_3d)))
        diff = max(_prob_diff(r, g) for r, g in zip(ref, low, strict=True))
        if not diff <= INFERENCE_PROB_ATOL:  # NaN fails too
            warnings.warn(
                f"the {dtype} inference copy changed the model's probabilities by {diff:.3g} (tolerance "
                f"{INFERENCE_PROB_ATOL}); not used",
                stacklevel=2,
            )
            return original
    return fast


def _prob_diff(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Largest absolute difference of the softmax (over channels) of two outputs."""
    return float((torch.softmax(ref.float(), 1) - torch.softmax(got.float(), 1)).abs().max())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run many tiny operations on one thread: with several threads each op pays a synchronisation that
    dominates small tensors, and far more so on a busy machine (3-6 s vs 0.4-0.5 s for the CCE model on
    2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _first_tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [o for o in output if isinstance(o, torch.Tensor)]  # type: ignore[union-attr]
