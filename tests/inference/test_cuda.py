"""CUDA checks (skipped without a GPU): same numbers as the CPU, bf16 autocast, out-of-memory fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import dual_probabilities, predict_volume
from napari_sscce.inference.sliding_window import plan_windows, sliding_window_dual

from ._stand_ins import tiny_dual

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (20, 37, 30)).astype(np.float32)


def test_cuda_fp32_matches_cpu(volume, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = tiny_dual(3)
    cfg = {"patch_size": (12, 16, 16), "precision": "fp32", "return_per_network": True}
    gpu = predict_volume(model, volume, InferenceConfig(device="cuda", **cfg))
    cpu = predict_volume(model, volume, InferenceConfig(device="cpu", **cfg))
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-5)
    np.testing.assert_allclose(gpu.kl, cpu.kl, atol=1e-5)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is given back where it was


def test_cuda_auto_precision_is_low_precision_and_agrees(volume):
    model = tiny_dual()
    auto = predict_volume(model, volume, InferenceConfig(device="cuda", patch_size=(12, 16, 16)))
    ref = predict_volume(
        model, volume, InferenceConfig(device="cuda", patch_size=(12, 16, 16), precision="fp32")
    )
    assert auto.precision in ("bf16", "fp16")
    assert (auto.labels == ref.labels).mean() > 0.98
    assert np.abs(auto.probabilities - ref.probabilities).max() < 0.05


def test_cuda_out_of_memory_falls_back_to_the_cpu(volume):
    model = tiny_dual().cuda().eval()
    image = torch.from_numpy(volume)[None]
    plan = plan_windows(volume.shape, (12, 16, 16))
    sizes = []

    def forward(m, x):
        sizes.append((x.shape[0], x.device.type))
        if x.is_cuda:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return dual_probabilities(m, x)

    messages = []
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="continuing on the CPU"):
        prob_a, _, device = sliding_window_dual(
            model,
            forward,
            image,
            plan,
            batch_size=4,
            device=torch.device("cuda"),
            precision="fp32",
            progress=lambda e: messages.append(e.message),
        )
    assert device.type == "cpu" and sizes[:3] == [(4, "cuda"), (2, "cuda"), (1, "cuda")]
    assert sizes[3] == (1, "cpu") and any("CPU" in m for m in messages)
    with torch.inference_mode():
        ref_a, _, _ = sliding_window_dual(
            tiny_dual().eval(), dual_probabilities, image, plan, precision="fp32"
        )
    torch.testing.assert_close(prob_a, ref_a, rtol=0, atol=1e-5)
