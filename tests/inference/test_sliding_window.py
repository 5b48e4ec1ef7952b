"""The sliding-window engine: window placement, blending, MONAI equality, TTA, cancel, out-of-memory retry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_sscce.inference.predict import dual_probabilities
from napari_sscce.inference.sliding_window import (
    flip_combinations,
    gaussian_importance_map,
    plan_windows,
    sliding_window_dual,
    window_starts,
)
from napari_sscce.progress import Cancelled, CancelToken

from ._stand_ins import tiny_dual


def _run(model, image, patch, **kwargs):
    plan = plan_windows(image.shape[1:], patch, kwargs.pop("overlap", 0.5), kwargs.pop("stride", None))
    with torch.inference_mode():
        return sliding_window_dual(model.eval(), dual_probabilities, image, plan, **kwargs)


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 20, 37, 30)


def test_window_starts_match_the_literature_loop():
    # UA-MT test_util.py: ceil((size - patch) / stride) + 1 windows, the last one clamped to the border
    for size, patch, stride in [(96, 80, 4), (160, 112, 18), (142, 112, 18), (88, 80, 4), (112, 112, 18)]:
        expected = [min(stride * i, size - patch) for i in range(math.ceil((size - patch) / stride) + 1)]
        assert window_starts(size, patch, stride) == expected
    plan = plan_windows((96, 160, 160), (80, 112, 112), stride=(4, 18, 18))
    assert len(plan.windows) == 5 * 4 * 4
    assert all(sl[0].stop <= 96 and sl[1].stop <= 160 and sl[2].stop <= 160 for sl in plan.windows)


def test_gaussian_map_equals_monai():
    from monai.data.utils import compute_importance_map

    for patch in [(12, 16, 16), (80, 112, 112), (7, 9, 4)]:
        ours = gaussian_importance_map(patch)
        ref = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
        ref = ref / ref.max()
        torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(20, 37, 30), (8, 10, 30)], ids=["overlapping", "smaller-than-patch"])
@pytest.mark.parametrize("mode", ["gaussian", "uniform"])
def test_probabilities_equal_monai(shape, mode):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    image = torch.randn(1, *shape)
    model = tiny_dual(num_classes=3).eval()
    patch = (12, 16, 16)
    prob_a, prob_b, _ = _run(model, image, patch, mode=mode, batch_size=3, precision="fp32")
    with torch.inference_mode():
        ref_a, ref_b = sliding_window_inference(
            image[None], patch, 3, lambda x: dual_probabilities(model, x), overlap=0.5,
            mode="gaussian" if mode == "gaussian" else "constant", sigma_scale=0.125,
        )
    assert prob_a.shape == (3, *shape)
    assert float((prob_a - ref_a[0]).abs().max()) < 1e-4
    assert float((prob_b - ref_b[0]).abs().max()) < 1e-4


def test_gaussian_and_uniform_blend_differently(image):
    model = tiny_dual()
    gauss, _, _ = _run(model, image, (12, 16, 16), mode="gaussian")
    uniform, _, _ = _run(model, image, (12, 16, 16), mode="uniform")
    for prob in (gauss, uniform):
        torch.testing.assert_close(prob.sum(0), torch.ones(prob.shape[1:]), rtol=0, atol=1e-5)
    # the tiny net sees zero padding at window borders, so overlapping windows disagree near them
    assert float((gauss - uniform).abs().max()) > 1e-3
    # without overlap (one window per voxel) both modes give the same numbers
    one = torch.randn(1, 12, 32, 16)
    g1, _, _ = _run(model, one, (12, 16, 16), mode="gaussian", overlap=0.0)
    u1, _, _ = _run(model, one, (12, 16, 16), mode="uniform", overlap=0.0)
    torch.testing.assert_close(g1, u1, rtol=0, atol=1e-6)


def test_tta_on_a_flip_symmetric_model_equals_no_tta(image):
    model = tiny_dual(symmetric=True)
    plain_a, plain_b, _ = _run(model, image, (12, 16, 16))
    tta_a, tta_b, _ = _run(model, image, (12, 16, 16), flips=flip_combinations((0, 1, 2)))
    torch.testing.assert_close(tta_a, plain_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(tta_b, plain_b, rtol=0, atol=1e-5)
    # ... and a model without the symmetry does change under TTA (the test can fail)
    asym = tiny_dual()
    a1, _, _ = _run(asym, image, (12, 16, 16))
    a8, _, _ = _run(asym, image, (12, 16, 16), flips=flip_combinations((0, 1, 2)))
    assert float((a1 - a8).abs().max()) > 1e-3
    assert len(flip_combinations((0, 1, 2))) == 8 and flip_combinations((2,)) == [(), (2,)]


def test_cancel_from_the_progress_callback_stops_early(image):
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        token.cancel()

    with pytest.raises(Cancelled):
        _run(tiny_dual(), image, (12, 16, 16), batch_size=1, progress=progress, cancel=token)
    assert len(events) == 1 and events[0].step == 1 and events[0].total > 1


def test_progress_reports_every_batch(image):
    events = []
    plan = plan_windows(image.shape[1:], (12, 16, 16))
    _run(tiny_dual(), image, (12, 16, 16), batch_size=4, progress=events.append)
    assert [e.step for e in events] == list(range(4, len(plan.windows), 4)) + [len(plan.windows)]


def test_out_of_memory_retries_with_smaller_batches(image):
    model = tiny_dual().eval()
    calls = []

    def greedy_forward(m, x):
        calls.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return dual_probabilities(m, x)

    events = []
    plan = plan_windows(image.shape[1:], (12, 16, 16))
    with torch.inference_mode():
        prob_a, _, device = sliding_window_dual(model, greedy_forward, image, plan, batch_size=4,
                                                progress=events.append)
    ref_a, _, _ = _run(model, image, (12, 16, 16), batch_size=1)
    assert calls[:3] == [4, 2, 1] and device.type == "cpu"
    assert any("out of memory" in e.message for e in events)
    torch.testing.assert_close(prob_a, ref_a, rtol=0, atol=1e-6)


def test_accumulators_do_not_keep_window_outputs(image):
    # results are the same whatever the batch size: each batch is folded into the sums and dropped
    model = tiny_dual()
    a1, b1, _ = _run(model, image, (12, 16, 16), batch_size=1)
    a5, b5, _ = _run(model, image, (12, 16, 16), batch_size=5)
    torch.testing.assert_close(a1, a5, rtol=0, atol=1e-6)
    assert np.isfinite(b5.numpy()).all()
