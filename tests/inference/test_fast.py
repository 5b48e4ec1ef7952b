"""Inference rewrites (BatchNorm folding, widened single-channel convs) keep the model's function."""

from __future__ import annotations

import copy

import torch
from torch import nn

from napari_sscce.inference.fast import (
    fold_batchnorm,
    fuse_conv_relu,
    optimize_for_inference,
    widen_single_channel_convs,
)


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def test_folding_widening_and_fusion_keep_the_outputs():
    from napari_sscce.models.registry import build_network

    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    for name in ("vnet", "resnet_vnet"):
        net = _randomise_bn(build_network(name, base_filters=4, has_dropout=False))
        ref = net(x)[0]
        fast = copy.deepcopy(net)
        folded = fold_batchnorm(fast)
        widened = widen_single_channel_convs(fast)
        fused = fuse_conv_relu(fast)
        assert folded > 5 and widened == 1 and fused > 5
        assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
        relus = sum(isinstance(m, nn.ReLU) for m in fast.modules())
        assert relus <= sum(isinstance(m, nn.ConvTranspose3d) for m in fast.modules())  # only after up-convs
        torch.testing.assert_close(fast(x)[0], ref, rtol=1e-4, atol=1e-4)


def test_optimized_copy_is_bf16_and_leaves_the_original_alone():
    from napari_sscce.models.dual import build_dual_model

    torch.manual_seed(0)
    model = _randomise_bn(build_dual_model("cce", base_filters=4, has_dropout=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert fast is not model and next(fast.parameters()).dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        ref_a, _ = model(x)
        got_a, _ = fast(x.bfloat16().contiguous(memory_format=torch.channels_last_3d))
    assert float((got_a.float() - ref_a).abs().max()) < 0.05 * float(ref_a.abs().max())


def test_a_rewrite_that_changes_the_output_is_refused(monkeypatch):
    import napari_sscce.inference.fast as fast_module

    def breaking(model):
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data.mul_(2)
        return 1

    monkeypatch.setattr(fast_module, "widen_single_channel_convs", breaking)
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1))
    with __import__("pytest").warns(UserWarning, match="not used"):
        assert fast_module.optimize_for_inference(net) is net


def test_a_bf16_copy_that_disagrees_with_fp32_is_not_used(monkeypatch):
    import pytest

    import napari_sscce.inference.fast as fast
    from napari_sscce.models.registry import build_network

    torch.manual_seed(0)
    net = build_network("vnet", in_channels=1, num_classes=2, base_filters=2, has_dropout=False)
    net = _randomise_bn(net)
    assert optimize_for_inference(net) is not net  # bf16 probabilities agree within the tolerance
    monkeypatch.setattr(fast, "INFERENCE_PROB_ATOL", 0.0)  # no bf16 copy can be exact
    with pytest.warns(UserWarning, match="changed the model's probabilities"):
        assert optimize_for_inference(net) is net
