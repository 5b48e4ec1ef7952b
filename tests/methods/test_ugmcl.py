"""UG-MCL training method: thresholds, teacher EMA, every loss term's gradient, uncertainty masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_sscce.methods import METHODS, get_method
from napari_sscce.methods.base import Batch
from napari_sscce.methods.losses import sigmoid_rampup
from napari_sscce.methods.sdf import compute_sdf
from napari_sscce.methods.ugmcl import (
    UGMCLMethod,
    cross_task_loss,
    ema_update,
    intra_task_loss,
    teacher_passes,
    uncertainty_threshold,
)
from napari_sscce.training.config import TrainConfig

TERMS = ("supervised_seg", "supervised_sdf", "intra", "cross")
SIZE = 16
ITERATIONS = 100


def make_method(num_classes: int = 3, **options) -> UGMCLMethod:
    config = TrainConfig(
        method="ugmcl",
        method_options=options,
        base_filters=4,
        iterations=ITERATIONS,
        patch_size=(SIZE, SIZE, SIZE),
        labeled_bs=1,
        unlabeled_bs=1,
    )
    return UGMCLMethod(config)


def make_batch(method: UGMCLMethod, num_classes: int = 3, with_sdf: bool = True) -> Batch:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, SIZE, SIZE, SIZE, generator=gen)
    label = torch.zeros(2, SIZE, SIZE, SIZE, dtype=torch.long)
    label[0, 3:9, 3:9, 3:9] = 1
    if num_classes > 2:
        label[0, 9:14, 9:14, 9:14] = 2
    mask = torch.zeros(2, SIZE, SIZE, SIZE)
    mask[0] = 1
    extras = {}
    if with_sdf:
        sdf = compute_sdf(label[0].numpy(), num_classes, mask[0].numpy())
        extras["sdf"] = torch.from_numpy(np.stack([sdf, np.zeros_like(sdf)]))
    return Batch(image=image, label=label, mask=mask, labeled_bs=1, extras=extras)


def only(term: str) -> dict[str, bool]:
    return {t: t == term for t in TERMS}


def test_registered_and_model_layout():
    assert get_method("ugmcl") is UGMCLMethod and METHODS["ugmcl"] is UGMCLMethod
    method = make_method()
    model = method.build_model(1, 3)
    assert model.kind == "mean_teacher"
    assert model.net_a.spec["name"] == model.net_b.spec["name"] == "dualtask_vnet"
    assert all(not p.requires_grad for p in model.net_b.parameters())
    for a, b in zip(model.net_a.state_dict().values(), model.net_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (opt,) = method.optimizers(model)
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.net_a.parameters()}
    assert isinstance(opt, torch.optim.SGD)


def test_bad_options_and_networks_raise():
    with pytest.raises(ValueError, match="unknown option"):
        make_method(not_an_option=1)
    with pytest.raises(ValueError, match="beta"):
        make_method(beta=1.5)
    with pytest.raises(ValueError, match="dualtask_vnet"):
        UGMCLMethod(TrainConfig(method="ugmcl", networks=["vnet", "vnet"]))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_uncertainty_threshold_ramps_from_075_to_1_ln_c(num_classes):
    ln_c = math.log(num_classes)
    start = uncertainty_threshold(0, 1000, num_classes)
    assert start == pytest.approx((0.75 + 0.25 * math.exp(-5)) * ln_c)
    assert 0.75 * ln_c < start < 0.76 * ln_c
    values = [uncertainty_threshold(t, 1000, num_classes) for t in range(0, 1001, 50)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert uncertainty_threshold(1000, 1000, num_classes) == pytest.approx(ln_c)
    assert uncertainty_threshold(5000, 1000, num_classes) == pytest.approx(ln_c)
    assert uncertainty_threshold(500, 1000, num_classes) == pytest.approx(
        (0.75 + 0.25 * sigmoid_rampup(500, 1000)) * ln_c
    )
    # the method ramps over the run (config.iterations) unless told otherwise
    method = make_method()
    assert method.threshold(ITERATIONS, num_classes) == pytest.approx(ln_c)
    assert make_method(threshold_rampup=10).threshold(10, num_classes) == pytest.approx(ln_c)
    assert method.threshold(0, num_classes) == pytest.approx(start)


def test_extra_targets_are_the_signed_distance_maps():
    method = make_method()
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[7:11, 7:11, 7:11] = 2
    mask = np.ones_like(label)
    extras = method.extra_targets(label, mask, 3)
    np.testing.assert_array_equal(extras["sdf"], compute_sdf(label, 3, mask))
    assert extras["sdf"].shape == (2, 12, 12, 12)
    assert make_method(supervised_sdf=False).extra_targets(label, mask, 3) == {}


@pytest.mark.parametrize("term", TERMS)
def test_each_term_alone_sends_gradient_to_the_student_only(term):
    torch.manual_seed(0)
    method = make_method(**only(term))
    model = method.build_model(1, 3)
    model.train()
    batch = make_batch(method)
    # at the end of the ramp: weights at their full value, threshold ln C (every non-uniform voxel counts)
    loss, logs = method.losses(model, batch, ITERATIONS)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    seg_head = model.net_a.out_conv.weight.grad
    sdf_head = model.net_a.out_conv_sdf.weight.grad
    first_conv = next(model.net_a.parameters()).grad
    assert first_conv is not None and first_conv.abs().sum() > 0  # reaches the encoder
    if term in ("supervised_seg", "intra", "cross"):
        assert seg_head is not None and seg_head.abs().sum() > 0
    if term in ("supervised_sdf", "intra", "cross"):
        assert sdf_head is not None and sdf_head.abs().sum() > 0
    if term == "supervised_seg":
        assert sdf_head is None or sdf_head.abs().sum() == 0
    if term == "supervised_sdf":
        assert seg_head is None or seg_head.abs().sum() == 0
    assert all(p.grad is None for p in model.net_b.parameters())
    expected = {
        "supervised_seg": "loss_ce",
        "supervised_sdf": "loss_sdf",
        "intra": "loss_intra",
        "cross": "loss_cross",
    }
    assert expected[term] in logs and set(logs) & set(expected.values()) == {expected[term]}
    if term == "intra":
        assert logs["certain_fraction"] > 0.5


def test_all_terms_train_and_total_matches_the_weights():
    torch.manual_seed(0)
    method = make_method()
    model = method.build_model(1, 3)
    model.train()
    batch = make_batch(method)
    loss, logs = method.losses(model, batch, ITERATIONS)
    ramp = method.rampup_weight(ITERATIONS)
    assert ramp == pytest.approx(1.0)
    expected = (
        0.5 * logs["loss_ce"]
        + 0.5 * logs["loss_dice"]
        + 0.3 * logs["loss_sdf"]
        + 0.1 * ramp * logs["loss_intra"]
        + 0.1 * ramp * logs["loss_cross"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    intra = 0.75 * logs["loss_intra_seg"] + 0.25 * logs["loss_intra_dis"]
    assert logs["loss_intra"] == pytest.approx(intra, rel=1e-5)


def test_sdf_target_falls_back_to_the_patch_and_respects_the_mask():
    torch.manual_seed(0)
    method = make_method(**only("supervised_sdf"))
    model = method.build_model(1, 3)
    model.eval()  # deterministic forward
    with_extras = make_batch(method)
    without = make_batch(method, with_sdf=False)
    a, _ = method.losses(model, with_extras, 0)
    b, _ = method.losses(model, without, 0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)  # case == patch here
    # voxels outside the annotation mask are not supervised
    partial = make_batch(method)
    partial.mask[0, :, :, SIZE // 2 :] = 0
    base, _ = method.losses(model, partial, 0)
    partial.extras["sdf"][0, :, :, :, SIZE // 2 :] = 5.0
    changed, _ = method.losses(model, partial, 0)
    assert changed.item() == pytest.approx(base.item(), rel=1e-6)
    partial.extras["sdf"][0, :, :, :, 0] = 5.0
    inside_changed, _ = method.losses(model, partial, 0)
    assert inside_changed.item() > base.item()


def test_intra_task_mask_drops_uncertain_voxels():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4), 1).requires_grad_(True)
    sdf = torch.randn(2, 2, 4, 4, 4).requires_grad_(True)
    t_probs = torch.softmax(torch.randn(2, 3, 4, 4, 4), 1)
    t_sdf = torch.randn(2, 2, 4, 4, 4)
    certain = torch.zeros(2, 4, 4, 4)
    certain[:, :2] = 1
    total, seg, dis = intra_task_loss(probs, sdf, t_probs, t_sdf, certain, beta=0.75)
    keep = certain.bool()
    assert seg.item() == pytest.approx(((probs - t_probs) ** 2).permute(1, 0, 2, 3, 4)[:, keep].mean().item())
    assert dis.item() == pytest.approx(((sdf - t_sdf) ** 2).permute(1, 0, 2, 3, 4)[:, keep].mean().item())
    total.backward()
    for grad in (probs.grad, sdf.grad):
        assert torch.all(grad.permute(1, 0, 2, 3, 4)[:, ~keep] == 0)
        assert torch.all(grad.permute(1, 0, 2, 3, 4)[:, keep] != 0)
    # no certain voxel: no loss, no gradient
    none, _, _ = intra_task_loss(probs, sdf, t_probs, t_sdf, torch.zeros_like(certain))
    assert none.item() == 0.0


def test_method_drops_voxels_above_the_threshold():
    torch.manual_seed(0)
    # threshold ~ 0.0067 * 0 ... near zero: a freshly initialised teacher is uncertain everywhere
    method = make_method(**only("intra"), threshold_start=0.0, threshold_rampup=10**9)
    model = method.build_model(1, 2)
    model.train()
    batch = make_batch(method, num_classes=2)
    loss, logs = method.losses(model, batch, 0)
    assert logs["uncertainty_threshold"] < 0.01
    assert logs["certain_fraction"] == 0.0 and logs["loss_intra"] == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.net_a.parameters())


def test_teacher_passes_mean_and_first_pass():
    torch.manual_seed(0)
    method = make_method()
    model = method.build_model(1, 3)
    teacher = model.net_b.eval()  # deterministic: without noise every pass is the same
    image = torch.randn(2, 1, SIZE, SIZE, SIZE)
    first, first_sdf, mean = teacher_passes(teacher, image, passes=5, noise_std=0.0, chunk=2)
    logits, _, sdf = teacher(image)
    torch.testing.assert_close(first, torch.softmax(logits, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first_sdf, sdf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, first, atol=1e-5, rtol=1e-5)
    _, _, noisy_mean = teacher_passes(teacher, image, passes=8, noise_std=0.1)
    noisy_first, _, _ = teacher_passes(teacher, image, passes=1, noise_std=0.1)
    assert not torch.allclose(noisy_mean, noisy_first)
    assert torch.allclose(noisy_mean.sum(1), torch.ones(()), atol=1e-5)


def test_cross_task_loss_is_zero_when_heads_agree_and_trains_both():
    sdf = (torch.rand(1, 1, 4, 4, 4) - 0.5).requires_grad_(True)
    fg = torch.sigmoid(-1500 * sdf.detach())
    probs = torch.cat([1 - fg, fg], 1)
    assert cross_task_loss(probs, sdf).item() == pytest.approx(0.0, abs=1e-12)
    probs = torch.full((1, 2, 4, 4, 4), 0.5, requires_grad=True)
    sdf = torch.full((1, 1, 4, 4, 4), 1e-3, requires_grad=True)
    loss = cross_task_loss(probs, sdf, k=1500)
    assert loss.item() == pytest.approx((0.5 - torch.sigmoid(torch.tensor(-1.5)).item()) ** 2)
    loss.backward()
    assert probs.grad[:, 1].abs().sum() > 0 and sdf.grad.abs().sum() > 0


def test_teacher_follows_the_ema_formula_after_step():
    torch.manual_seed(0)
    method = make_method()
    model = method.build_model(1, 3)
    model.train()
    (opt,) = method.optimizers(model)
    batch = make_batch(method)
    for iteration, expected_alpha in ((0, 0.0), (4, 0.8), (500, 0.99)):
        loss, _ = method.losses(model, batch, iteration)
        loss.backward()
        opt.step()
        opt.zero_grad()
        teacher_before = [p.detach().clone() for p in model.net_b.parameters()]
        buffers_before = [b.clone() for b in model.net_b.buffers()]
        student = [p.detach().clone() for p in model.net_a.parameters()]
        assert not all(torch.equal(t, s) for t, s in zip(teacher_before, student, strict=True))
        method.after_step(model, iteration)
        for new, old, s in zip(model.net_b.parameters(), teacher_before, student, strict=True):
            ema = expected_alpha * old + (1 - expected_alpha) * s
            torch.testing.assert_close(new, ema, rtol=1e-6, atol=1e-7)
            assert new.grad is None and not new.requires_grad
        # the teacher ran: its BatchNorm statistics are its own (reference), untouched by the EMA
        for new, old in zip(model.net_b.buffers(), buffers_before, strict=True):
            assert torch.equal(new, old)


def test_ema_covers_batchnorm_statistics_when_the_teacher_does_not_run():
    torch.manual_seed(0)
    method = make_method(intra=False)
    model = method.build_model(1, 3)
    model.train()
    batch = make_batch(method)
    loss, _ = method.losses(model, batch, 3)  # student forward updates the student's running stats
    teacher_before = [b.clone() for b in model.net_b.buffers()]
    method.after_step(model, 3)
    alpha = 0.75
    moved = 0
    for new, old, s in zip(model.net_b.buffers(), teacher_before, model.net_a.buffers(), strict=True):
        if new.is_floating_point():
            torch.testing.assert_close(new, alpha * old + (1 - alpha) * s)
            moved += int(not torch.equal(new, old))
        else:
            assert torch.equal(new, s)
    assert moved > 0
    assert ema_update(model.net_b, model.net_a, 0.99, 10**6) == 0.99


def test_training_steps_reduce_the_supervised_loss():
    torch.manual_seed(0)
    method = make_method()
    model = method.build_model(1, 3)
    model.train()
    (opt,) = method.optimizers(model)
    for group in opt.param_groups:
        group["lr"] = 0.05
    batch = make_batch(method)
    history = []
    for iteration in range(10):
        loss, logs = method.losses(model, batch, iteration)
        loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_step(model, iteration)
        history.append(logs["loss_ce"] + logs["loss_sdf"])
    assert all(math.isfinite(v) for v in history)
    assert np.mean(history[-3:]) < np.mean(history[:3])
