"""InferenceConfig validation / round trip and device / precision choice."""

from __future__ import annotations

import pytest
import torch

from napari_sscce.inference.config import LITERATURE_STRIDE, InferenceConfig
from napari_sscce.inference.device import (
    DeviceError,
    autocast_context,
    resolve_device,
    resolve_precision,
)


def test_config_round_trip_and_defaults():
    cfg = InferenceConfig(patch_size=[80, 112, 112], tta=True, tta_axes=(2, 0))
    again = InferenceConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.patch_size == (80, 112, 112) and again.tta_axes == (0, 2)
    d = InferenceConfig()
    assert (d.overlap, d.mode, d.stride, d.batch_size, d.device, d.precision) == (
        0.5, "gaussian", None, 4, "auto", "auto")
    lit = InferenceConfig.literature()
    assert InferenceConfig(device="cuda:1").device == "cuda:1"  # validated, resolved only at run time
    assert lit.mode == "uniform" and lit.stride == LITERATURE_STRIDE == (4, 18, 18)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"overlap": 1.0}, "overlap"), ({"mode": "median"}, "mode"), ({"batch_size": 0}, "batch_size"),
     ({"device": "tpu"}, "device"), ({"precision": "int8"}, "precision"),
     ({"patch_size": (8, 8)}, "patch_size"),
     ({"stride": (0, 1, 1)}, "stride"), ({"tta_axes": (3,)}, "tta_axes"), ({"mc_dropout": -1}, "mc_dropout")],
)
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        InferenceConfig(**kwargs)


def test_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="stride_xy"):
        InferenceConfig.from_dict({"stride_xy": 18})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_precision_choice_and_autocast():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert resolve_precision(cpu, "auto") in ("fp32", "bf16")
    assert resolve_precision(cpu, "fp16") == "bf16"  # no fast fp16 convolutions on CPUs
    conv = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5, 5)
    with autocast_context(cpu, "fp32"):
        assert conv(x).dtype == torch.float32
    with autocast_context(cpu, "bf16"):
        assert conv(x).dtype == torch.bfloat16
