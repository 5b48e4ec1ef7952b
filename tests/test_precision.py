"""The one precision module: resolution per device, the training self-check, its cache, the doctor report."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sscce import precision
from napari_sscce.methods.base import Batch
from napari_sscce.precision import (
    CACHE_ENV,
    CACHE_FILE,
    LOSS_RTOL,
    SelfCheck,
    choose_training_precision,
    default_check_loss,
    resolve_precision,
    training_self_check,
)

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 16, 16, 16, generator=gen)
    return Batch(image, (image[:, 0] > 0).long(), torch.ones(2, 16, 16, 16), 2)


def _model(num_classes: int = 2):
    from napari_sscce.models.dual import DualModel
    from napari_sscce.models.registry import build_network

    torch.manual_seed(1)
    net = build_network("vnet", in_channels=1, num_classes=num_classes, base_filters=2, has_dropout=False)
    return DualModel(net, kind="single")


def test_same_answer_for_training_and_inference_on_every_device(monkeypatch):
    from napari_sscce.inference import device as inference_device

    assert inference_device.resolve_precision is resolve_precision  # one implementation
    assert resolve_precision(CPU, "fp16") == "bf16" and resolve_precision(CPU, "bf16") == "bf16"
    mps = torch.device("mps")
    assert resolve_precision(mps, "auto") == "fp32" and resolve_precision(mps, "fp16") == "fp16"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert resolve_precision(CPU, "auto") == "fp32"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert resolve_precision(CPU, "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(torch.device("cuda"), "auto") == "fp16"
    with pytest.raises(ValueError, match="int8"):
        resolve_precision(CPU, "int8")


def test_self_check_measures_loss_and_gradient_errors(batch):
    same = training_self_check(_model(), batch, CPU, "bf16", _fp32_loss)
    assert same.passed and same.loss_rel_err == 0.0 and same.grad_rel_err == 0.0

    def doubled_in_low_precision(model, b):
        return _fp32_loss(model, b) * (2.0 if torch.is_autocast_enabled("cpu") else 1.0)

    doubled = training_self_check(_model(), batch, CPU, "bf16", doubled_in_low_precision)
    assert not doubled.passed and doubled.loss_rel_err == pytest.approx(1.0) and LOSS_RTOL < 1.0
    assert "changed the loss" in doubled.reason

    def nan_in_low_precision(model, b):
        loss = _fp32_loss(model, b)
        return loss * float("nan") if torch.is_autocast_enabled("cpu") else loss

    broken = training_self_check(_model(), batch, CPU, "bf16", nan_in_low_precision)
    assert not broken.passed and "non-finite" in broken.reason


def _fp32_loss(model, b):
    with torch.autocast("cpu", enabled=False):
        return default_check_loss(model, b)


def test_self_check_leaves_the_model_alone(batch):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training_self_check(model, batch, CPU, "bf16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def _fake_check(passed: bool, calls: list):
    def check(model, batch, device, prec, loss_fn=None):
        calls.append(prec)
        reason = "agrees" if passed else "gradients differ from fp32 by 0.83 (tolerance 0.2)"
        return SelfCheck(prec, passed, 1.0, 1.0, 0.0, 0.0 if passed else 0.83, 0, 0.1, reason)

    return check


def test_failed_self_check_falls_back_to_fp32_and_says_why(monkeypatch, cache, batch):
    calls: list = []
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "training_self_check", _fake_check(False, calls))
    choice = choose_training_precision(_model(), batch, CPU, "auto")
    assert choice.precision == "fp32" and choice.dtype is None and calls == ["bf16"]
    assert "bf16 self-check failed" in choice.reason and "0.83" in choice.reason
    # an explicit request is honoured without a check
    assert choose_training_precision(_model(), batch, CPU, "bf16").precision == "bf16" and calls == ["bf16"]


def test_verdict_is_cached_per_machine_device_torch_and_architecture(monkeypatch, cache, batch):
    calls: list = []
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "training_self_check", _fake_check(True, calls))
    drawn = []

    def lazy_batch():
        drawn.append(1)
        return batch

    first = choose_training_precision(_model(), lazy_batch, CPU, "auto")
    assert first.precision == "bf16" and first.check["cached"] is False and calls == ["bf16"]
    second = choose_training_precision(_model(), lazy_batch, CPU, "auto")
    assert second.precision == "bf16" and second.check["cached"] is True
    assert calls == ["bf16"] and drawn == [1]  # no second check, no second batch
    entry = json.loads(next(iter(json.loads(cache.read_text()))))
    assert entry["machine"] == precision.cpu_model() and entry["torch"] == torch.__version__
    other = _model(num_classes=3)  # another architecture: checked again
    assert choose_training_precision(other, batch, CPU, "auto").check["cached"] is False
    assert len(calls) == 2


def test_doctor_reports_devices_flags_verdicts_and_speed(monkeypatch):
    quick = precision.doctor_report(measure=False)
    assert "torch: " + torch.__version__ in quick and "avx512_bf16" in quick and "CPU:" in quick
    lines = precision.measured_report(base_filters=2, shape=(16, 16, 16), repeats=1)
    text = "\n".join(lines)
    assert "training self-check on cpu" in text and "gradient rel. error" in text
    assert "max probability difference" in text and " ms" in text and "x)" in text


def test_sscce_doctor_command(capsys):
    from napari_sscce.cli import main

    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "precision auto on cpu" in out and "CUDA" in out
