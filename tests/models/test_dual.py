"""DualModel: architecture round trip, kinds, and the models each method builds."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sscce.models import DualModel, DualTaskVNet, ResNetVNet, VNet, build_dual_model, build_network


def test_from_arch_round_trip():
    model = build_dual_model("cce", in_channels=2, num_classes=3, normalization="groupnorm")
    arch = json.loads(json.dumps(model.arch))  # must survive JSON
    rebuilt = DualModel.from_arch(arch)
    assert rebuilt.arch == model.arch
    assert isinstance(rebuilt.net_a, VNet) and isinstance(rebuilt.net_b, ResNetVNet)
    assert (rebuilt.in_channels, rebuilt.num_classes, rebuilt.kind) == (2, 3, "dual")
    assert rebuilt.net_b.spec["kwargs"]["normalization"] == "groupnorm"
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_forward_returns_two_logits():
    torch.manual_seed(0)
    model = build_dual_model("supervised", in_channels=1, num_classes=2, base_filters=4).eval()
    with torch.no_grad():
        a, b = model(torch.randn(1, 1, 16, 16, 16))
    assert a.shape == b.shape == (1, 2, 16, 16, 16)
    assert not torch.allclose(a, b)  # independently initialised networks


def test_ugmcl_teacher_has_no_grad_params_and_copies_student():
    model = build_dual_model("ugmcl", in_channels=1, num_classes=2)
    assert model.kind == "mean_teacher"
    assert isinstance(model.net_a, DualTaskVNet) and isinstance(model.net_b, DualTaskVNet)
    assert all(p.requires_grad for p in model.net_a.parameters())
    assert not any(p.requires_grad for p in model.net_b.parameters())
    for (k, v), w in zip(model.net_a.state_dict().items(), model.net_b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    rebuilt = DualModel.from_arch(model.arch)
    assert not any(p.requires_grad for p in rebuilt.net_b.parameters())


def test_single_kind_runs_once_and_arch_round_trips():
    torch.manual_seed(0)
    net = build_network("vnet", in_channels=1, num_classes=2, base_filters=4)
    model = DualModel(net, kind="single").eval()
    assert model.net_b is model.net_a
    with torch.no_grad():
        a, b = model(torch.randn(1, 1, 16, 16, 16))
    assert a is b
    assert DualModel.from_arch(model.arch).kind == "single"


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="kind"):
        DualModel(VNet(), VNet(), kind="triple")
    with pytest.raises(ValueError, match="disagree"):
        DualModel(VNet(1, 2), VNet(1, 3))
    with pytest.raises(ValueError, match="known methods"):
        build_dual_model("fixmatch")
    with pytest.raises(ValueError, match="malformed"):
        DualModel.from_arch({"kind": "dual"})
