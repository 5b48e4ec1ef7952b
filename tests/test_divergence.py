"""One entropy and one KL: the training losses and the inference maps call the same functions."""

from __future__ import annotations

import functools

import numpy as np
import torch

from napari_sscce import divergence, uncertainty
from napari_sscce.inference import predict
from napari_sscce.methods import cce, losses, ugmcl


def _probs(seed: int, shape=(2, 3, 4, 5, 6)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(shape, generator=gen), dim=1)


def test_losses_and_inference_share_the_functions():
    assert losses.entropy_map is divergence.entropy is ugmcl.entropy_map is cce.entropy
    assert losses.kl_map is divergence.kl is cce.kl
    for twin, func in ((uncertainty.entropy_torch, divergence.entropy),
                       (uncertainty.kl_divergence_torch, divergence.kl)):
        assert isinstance(twin, functools.partial) and twin.func is func
    assert predict.entropy_torch is uncertainty.entropy_torch
    assert predict.kl_divergence_torch is uncertainty.kl_divergence_torch


def test_inference_maps_equal_the_loss_maps_on_random_input():
    p, q = _probs(0), _probs(1)
    # the loss layout [B, C, ...] vs the inference layout [C, Z, Y, X] of each case
    for b in range(p.shape[0]):
        h_loss = losses.entropy_map(p, normalize=True)[b]
        assert torch.equal(uncertainty.entropy_torch(p[b]), h_loss)
        sym_loss = 0.5 * (losses.kl_map(p, q) + losses.kl_map(q, p))[b]
        expected = 1 - torch.exp(-sym_loss.clamp_min(0))
        assert torch.allclose(uncertainty.kl_divergence_torch(p[b], q[b]), expected, atol=1e-6)


def test_gradient_and_no_gradient_paths_give_identical_values():
    p, q = _probs(2), _probs(3)
    pg, qg = p.clone().requires_grad_(), q.clone().requires_grad_()
    for kw in ({}, {"normalize": True}):
        with_grad = divergence.entropy(pg, **kw)
        assert with_grad.requires_grad
        assert torch.equal(with_grad.detach(), divergence.entropy(p, **kw))
    for kw in ({}, {"symmetric": True}, {"symmetric": True, "normalize": True}):
        with_grad = divergence.kl(pg, qg, **kw)
        assert with_grad.requires_grad
        with torch.inference_mode():
            assert torch.equal(with_grad.detach(), divergence.kl(p, q, **kw))
    divergence.kl(pg, qg, symmetric=True).sum().backward()  # differentiable
    assert torch.isfinite(pg.grad).all() and pg.grad.abs().sum() > 0


def test_symmetric_kl_by_hand_and_inputs_untouched():
    p, q = _probs(4), _probs(5)
    before = p.clone(), q.clone()
    pn, qn = p.double().numpy(), q.double().numpy()
    by_hand = 0.5 * ((pn * np.log(pn / qn)).sum(1) + (qn * np.log(qn / pn)).sum(1))
    got = divergence.kl(p, q, symmetric=True).double().numpy()
    assert np.allclose(got, by_hand, rtol=1e-4, atol=1e-6)
    assert torch.equal(p, before[0]) and torch.equal(q, before[1])
