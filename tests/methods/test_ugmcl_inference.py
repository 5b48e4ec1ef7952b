"""A UG-MCL checkpoint (student + EMA teacher, dual-task nets) predicts like any dual model."""

from __future__ import annotations

import numpy as np
import torch

from napari_sscce.inference import config as inference_config
from napari_sscce.inference import predict
from napari_sscce.methods.ugmcl import UGMCLMethod
from napari_sscce.models import checkpoint
from napari_sscce.training.config import TrainConfig

SIZE = 16


def test_ugmcl_checkpoint_gives_labels_entropy_and_student_teacher_kl(tmp_path):
    from napari_sscce.io.volume import Volume
    from napari_sscce.preprocessing import normalize_intensity
    from napari_sscce.uncertainty import entropy, kl_divergence

    torch.manual_seed(0)
    method = UGMCLMethod(TrainConfig(method="ugmcl", base_filters=4, patch_size=(SIZE,) * 3))
    model = method.build_model(1, 3)
    with torch.no_grad():  # a teacher that differs from its student, as after training
        for p in model.net_b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = checkpoint.save_checkpoint(
        tmp_path / "ugmcl.safetensors",
        model,
        {"method": "ugmcl", "patch_size": [SIZE] * 3, "normalization": {"mode": "zscore"}},
    )
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.metadata["method"] == "ugmcl" and loaded.model.kind == "mean_teacher"
    assert loaded.model.net_a.spec["name"] == "dualtask_vnet"

    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 20.0, (SIZE,) * 3).astype(np.float32)
    config = inference_config.InferenceConfig(
        patch_size=(SIZE,) * 3, device="cpu", precision="fp32", return_per_network=True
    )
    result = predict.predict_volume(path, Volume(array=array), config)

    # expected: one window covering the whole volume, student and teacher in eval mode
    x = torch.from_numpy(normalize_intensity(array, "zscore").astype(np.float32))[None, None]
    loaded.model.eval()
    with torch.no_grad():
        p_student = torch.softmax(loaded.model.net_a(x)[0], 1)[0].numpy()
        p_teacher = torch.softmax(loaded.model.net_b(x)[0], 1)[0].numpy()
    assert result.probabilities.shape == (3, SIZE, SIZE, SIZE)
    np.testing.assert_allclose(result.per_network[0], p_student, atol=1e-4)
    np.testing.assert_allclose(result.per_network[1], p_teacher, atol=1e-4)
    mean = 0.5 * (p_student + p_teacher)
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-4)
    np.testing.assert_array_equal(result.labels, mean.argmax(0).astype(np.uint8))
    np.testing.assert_allclose(result.entropy, entropy(mean), atol=1e-4)
    np.testing.assert_allclose(result.kl, kl_divergence(p_student, p_teacher), atol=1e-4)
    assert result.kl.max() > 0  # the two networks disagree somewhere
