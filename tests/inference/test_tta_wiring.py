"""TTA through ``predict_volume`` mirrors only the axes the checkpoint says the model was trained to flip."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.io.volume import Volume
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train

SHAPE = (16, 16, 16)  # volume = patch: one window, so mirroring the window mirrors the volume


@pytest.fixture(scope="module")
def x_only_model(tmp_path_factory, one_torch_thread):
    """A tiny CCE model trained (2 steps) with ``flip_axes="x"``, and a scan on its grid."""
    root = tmp_path_factory.mktemp("tta")
    data = make_synthetic_dataset(root / "data", 3, shape=SHAPE, n_labeled=1, n_val=0, seed=4)
    config = TrainConfig(
        data=str(data), patch_size=SHAPE, labeled_bs=1, unlabeled_bs=1, iterations=2, val_every=0,
        precision="fp32", base_filters=4, seed=1, flip_axes="x", out=str(root / "run"),
    )
    result = train(config)
    image = open_dataset(data).load_case("case_002")[0]
    return result.best_path, image


def _probs(path, volume: Volume, **kw):
    cfg = InferenceConfig(patch_size=SHAPE, device="cpu", precision="fp32", return_per_network=True, **kw)
    pred = predict_volume(path, volume, cfg)
    return pred


def test_checkpoint_records_x_only(x_only_model):
    path, _ = x_only_model
    assert load_checkpoint(path).metadata["augmentation"]["flip_axes"] == "x"


def test_tta_averages_the_plain_and_the_x_mirrored_prediction_only(x_only_model):
    path, image = x_only_model
    plain = _probs(path, image)
    mirrored_input = image.with_array(np.ascontiguousarray(image.array[:, :, ::-1]))
    mirrored = _probs(path, mirrored_input)
    expected = 0.5 * (plain.probabilities + mirrored.probabilities[:, :, :, ::-1])

    tta = _probs(path, image, tta=True)  # asks for all three axes; the checkpoint allows x only
    assert tta.info["flips"] == [[], [2]]
    np.testing.assert_allclose(tta.probabilities, expected, atol=1e-5)
    for net in (0, 1):
        np.testing.assert_allclose(
            tta.per_network[net],
            0.5 * (plain.per_network[net] + mirrored.per_network[net][:, :, :, ::-1]),
            atol=1e-5,
        )
    # the model is not mirror-symmetric: mirroring every axis would give another answer
    all_axes = predict_volume(
        path, image, InferenceConfig(patch_size=SHAPE, device="cpu", precision="fp32", tta=True),
        metadata={"augmentation": {"flip_axes": "zyx"}},
    )
    assert len(all_axes.info["flips"]) == 8
    assert np.abs(all_axes.probabilities - expected).max() > 1e-3
