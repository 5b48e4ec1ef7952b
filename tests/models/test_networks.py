"""Shapes, parameter counts, reference key layout and options of the 3D networks."""

from __future__ import annotations

import pytest
import torch

from napari_sscce.models import NETWORKS, DualTaskVNet, ResNetVNet, VNet, build_network
from napari_sscce.models.blocks import count_parameters

# The layout of yulequan/UA-MT code/networks/vnet.py, VNet(n_channels=1, n_classes=2, n_filters=16,
# normalization="batchnorm"), written from reading the reference: (block, kind, n_stages, c_in, c_out).
# "conv" blocks are ConvBlocks (3x3x3 conv + BN + ReLU per stage, Sequential indices 0, 1, 2, 3, 4, 5, ...),
# "down" / "up" are (Conv3d / ConvTranspose3d kernel 2 stride 2, BN, ReLU).
REFERENCE_LAYOUT = [
    ("block_one", "conv", 1, 1, 16),
    ("block_one_dw", "down", 1, 16, 32),
    ("block_two", "conv", 2, 32, 32),
    ("block_two_dw", "down", 1, 32, 64),
    ("block_three", "conv", 3, 64, 64),
    ("block_three_dw", "down", 1, 64, 128),
    ("block_four", "conv", 3, 128, 128),
    ("block_four_dw", "down", 1, 128, 256),
    ("block_five", "conv", 3, 256, 256),
    ("block_five_up", "up", 1, 256, 128),
    ("block_six", "conv", 3, 128, 128),
    ("block_six_up", "up", 1, 128, 64),
    ("block_seven", "conv", 3, 64, 64),
    ("block_seven_up", "up", 1, 64, 32),
    ("block_eight", "conv", 2, 32, 32),
    ("block_eight_up", "up", 1, 32, 16),
    ("block_nine", "conv", 1, 16, 16),
]


@pytest.fixture
def reference_vnet_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the reference VNet(1, 2) batch-norm state_dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for block, kind, n_stages, c_in, c_out in REFERENCE_LAYOUT:
        for stage in range(n_stages):
            conv, bn = f"{block}.conv.{3 * stage}", f"{block}.conv.{3 * stage + 1}"
            cin = c_in if stage == 0 else c_out
            if kind == "conv":
                shapes[f"{conv}.weight"] = (c_out, cin, 3, 3, 3)
            elif kind == "down":
                shapes[f"{conv}.weight"] = (c_out, cin, 2, 2, 2)
            else:  # ConvTranspose3d weights are (in, out, k, k, k)
                shapes[f"{conv}.weight"] = (cin, c_out, 2, 2, 2)
            shapes[f"{conv}.bias"] = (c_out,)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{bn}.{name}"] = (c_out,)
            shapes[f"{bn}.num_batches_tracked"] = ()
    shapes["out_conv.weight"] = (2, 16, 1, 1, 1)
    shapes["out_conv.bias"] = (2,)
    return shapes


def test_vnet_parameter_count():
    n = count_parameters(VNet(1, 2))
    print(f"VNet(1, 2) parameters: {n}")
    assert abs(n - 9.45e6) <= 0.01e6


def test_vnet_loads_reference_state_dict_strict(reference_vnet_shapes):
    torch.manual_seed(0)
    state = {k: torch.randn(s) if s else torch.tensor(7) for k, s in reference_vnet_shapes.items()}
    net = VNet(1, 2)
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.state_dict()["block_five.conv.6.weight"], state["block_five.conv.6.weight"])


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize(("shape", "width"), [((32, 32, 32), 16), ((20, 33, 17), 4)])
def test_output_shapes(name, shape, width):
    torch.manual_seed(0)
    net = build_network(name, in_channels=2, num_classes=3, base_filters=width).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *shape))
    assert out[0].shape == (1, 3, *shape)
    assert out[1].shape == (1, width, *shape)
    if name == "dualtask_vnet":
        assert len(out) == 3
        assert out[2].shape == (1, 2, *shape)
        assert out[2].abs().max() <= 1
    else:
        assert len(out) == 2


def test_padding_matches_unpadded_output_inside():
    """An odd-sized input gives the same values as the zero-padded multiple-of-16 input, cropped."""
    torch.manual_seed(0)
    net = VNet(1, 2, base_filters=4, normalization="instancenorm").eval()
    x = torch.randn(1, 1, 30, 32, 31)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 0, 0, 2))
    with torch.no_grad():
        a = net(x)[0]
        b = net(padded)[0][:, :, :30, :32, :31]
    torch.testing.assert_close(a, b)


def test_resnet_vnet_layout_and_params_at_patch_size():
    net = ResNetVNet(1, 2)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert net.stem[0].kernel_size == (7, 7, 7) and net.stem[0].out_channels == 16
    assert [getattr(net, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)] == [32, 64, 128, 256]
    # 4 stride-2 stages: a patch that is a multiple of 16 (as LA's 112x112x80) comes back at full size,
    # with the 16-channel last decoder feature map the contrastive term uses
    net.eval()
    with torch.no_grad():
        logits, features = net(torch.zeros(1, 1, 16, 32, 48))[:2]
    assert logits.shape == (1, 2, 16, 32, 48) and features.shape == (1, 16, 16, 32, 48)
    n = count_parameters(net)
    print(f"ResNetVNet(1, 2) parameters: {n}")
    assert n > count_parameters(VNet(1, 2))


def test_dropout_changes_train_outputs_and_turnoff():
    torch.manual_seed(0)
    net = VNet(1, 2, normalization="none").train()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = net(x)[0], net(x)[0]
        c, d = net(x, turnoff_drop=True)[0], net(x, turnoff_drop=True)[0]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)
    no_drop = VNet(1, 2, normalization="none", has_dropout=False).train()
    no_drop.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(no_drop(x)[0], c)


@pytest.mark.parametrize("normalization", ["batchnorm", "groupnorm", "instancenorm", "none"])
def test_normalizations_run(normalization):
    torch.manual_seed(0)
    for cls in (VNet, ResNetVNet, DualTaskVNet):
        net = cls(1, 2, base_filters=4, normalization=normalization, has_dropout=False).eval()
        with torch.no_grad():
            # instance norm needs more than one voxel at the 1/16 bottleneck: 32 voxels a side
            out = net(torch.randn(1, 1, 32, 32, 32))
        assert torch.isfinite(out[0]).all()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_channels_last_3d(name):
    torch.manual_seed(0)
    net = build_network(name, in_channels=1, num_classes=2, base_filters=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)[0]
        net = net.to(memory_format=torch.channels_last_3d)
        out = net(x.to(memory_format=torch.channels_last_3d))[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError, match="resnet_vnet") as info:
        build_network("unet", in_channels=1, num_classes=2)
    assert "unet" in str(info.value)
    with pytest.raises(ValueError, match="bad arguments"):
        build_network("vnet", in_channels=1, num_classes=2, depth=5)
    with pytest.raises(ValueError, match="normalization"):
        build_network("vnet", normalization="layernorm")


def test_wrong_input_channels_is_clear():
    with pytest.raises(ValueError, match="2 input channel"):
        VNet(2, 2)(torch.randn(1, 1, 16, 16, 16))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for cls in (VNet, ResNetVNet, DualTaskVNet):
        net = cls(1, 2, base_filters=4, has_dropout=False).train()
        out = net(torch.randn(2, 1, 16, 16, 16))
        sum(o.float().mean() for o in out).backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"{cls.__name__}: no gradient for {missing}"


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("shape", [(80, 112, 112), (81, 100, 113)])
def test_full_patch_shapes_on_meta_device(name, shape):
    """The LA patch (112x112x80) and odd sizes, checked for shapes only (meta tensors: no computation)."""
    with torch.device("meta"):
        net = build_network(name, in_channels=1, num_classes=2).eval()
        out = net(torch.empty(2, 1, *shape))
    assert out[0].shape == (2, 2, *shape)
    assert out[1].shape == (2, 16, *shape)
    assert count_parameters(net) == count_parameters(build_network(name, in_channels=1, num_classes=2))
