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


# ------------------------------------------------------------------------------ the policy, by CPU features
AMX = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
AVX512_BF16 = {"avx512f", "avx512_bf16"}  # AMD EPYC (Zen 4) and many laptops: bf16 arithmetic, no AMX


@pytest.mark.parametrize(
    ("flags", "inference", "training"),
    [(AMX, "bf16", "bf16"), (AVX512_BF16, "bf16", "fp32"), ({"avx2", "fma"}, "fp32", "fp32")],
    ids=["amx", "avx512_bf16-no-amx", "no-bf16"],
)
def test_cpu_policy_by_feature_flags(monkeypatch, flags, inference, training):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: None)
    assert resolve_precision(CPU, "auto") == inference
    assert resolve_precision(CPU, "auto", "inference") == inference
    assert resolve_precision(CPU, "auto", "training") == training
    # explicit requests are honoured for both purposes
    assert resolve_precision(CPU, "bf16", "training") == "bf16"
    assert resolve_precision(CPU, "fp32", "training") == "fp32"
    policy = precision.training_policy(CPU)
    assert policy.startswith(training)
    if flags == AVX512_BF16:
        assert "no AMX" in policy and "70-100 %" in policy
    # the library's own probe can veto native bf16 (e.g. a oneDNN build without it)
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: False)
    assert resolve_precision(CPU, "auto", "training") == "fp32"
    assert resolve_precision(CPU, "auto", "inference") == "fp32"


def test_auto_training_on_avx512_bf16_without_amx_runs_no_check_and_says_why(monkeypatch, cache, batch):
    calls: list = []
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(AVX512_BF16))
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: None)
    monkeypatch.setattr(precision, "training_self_check", _fake_check(True, calls))
    choice = choose_training_precision(_model(), batch, CPU, "auto")
    assert choice.precision == "fp32" and calls == [] and "no AMX" in choice.reason
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(AMX))
    choice = choose_training_precision(_model(), batch, CPU, "auto")
    assert choice.precision == "bf16" and calls == ["bf16"]


def _gradient_error_in_low_precision(rel_err: float):
    """A loss whose gradients in autocast differ from fp32 by exactly ``rel_err`` (relative, global norm):
    every parameter's gradient gets ``rel_err * ||g||`` along a fixed unit direction."""
    directions: dict[str, torch.Tensor] = {}

    def loss_fn(model, b):
        loss = _fp32_loss(model, b)
        if torch.is_autocast_enabled("cpu"):
            for name, p in model.named_parameters():
                if name not in directions:
                    gen = torch.Generator().manual_seed(len(directions))
                    d = torch.randn(p.shape, generator=gen)
                    directions[name] = d / d.norm()
                d = directions[name]
                p.register_hook(lambda g, d=d: g + rel_err * g.norm() * d)
        return loss

    return loss_fn


def test_self_check_separates_rounding_from_broken_kernels(batch):
    broken = training_self_check(_model(), batch, CPU, "bf16", _gradient_error_in_low_precision(0.19))
    assert not broken.passed and broken.grad_rel_err == pytest.approx(0.19, rel=1e-3)
    assert "gradients differ from fp32 by 0.19" in broken.reason and broken.loss_rel_err == 0.0
    rounding = training_self_check(_model(), batch, CPU, "bf16", _gradient_error_in_low_precision(0.01))
    assert rounding.passed and rounding.grad_rel_err == pytest.approx(0.01, rel=1e-3)
    assert precision.GRAD_RTOL < 0.19 and precision.GRAD_RTOL > 0.01


def test_self_check_looks_like_training_not_initialisation(batch):
    """Kernels that fail only once the weights have moved: a one-batch check at initialisation passes,
    the check after fp32 warm-up steps counts the non-finite gradient entries and fails."""
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_once_trained(net, b):
        loss = _fp32_loss(net, b)
        moved = any(not torch.equal(start[k], v) for k, v in net.state_dict().items() if k in start
                    and v.is_floating_point() and "running" not in k and "num_batches" not in k)
        if torch.is_autocast_enabled("cpu") and moved:
            p = next(net.parameters())
            p.register_hook(lambda g: torch.where(torch.rand_like(g) < 0.5, float("nan"), g))
        return loss

    at_init = training_self_check(model, batch, CPU, "bf16", nan_once_trained, warmup_steps=0, batches=1)
    assert at_init.passed
    check = training_self_check(model, [batch, batch], CPU, "bf16", nan_once_trained)
    assert not check.passed and check.nonfinite_grads > 0 and "non-finite" in check.reason
    assert check.warmup_steps == precision.CHECK_WARMUP_STEPS and check.batches == precision.CHECK_BATCHES
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # model untouched


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


def _fake_amx(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(AMX))
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: None)


def test_failed_self_check_falls_back_to_fp32_and_says_why(monkeypatch, cache, batch):
    calls: list = []
    _fake_amx(monkeypatch)
    monkeypatch.setattr(precision, "training_self_check", _fake_check(False, calls))
    choice = choose_training_precision(_model(), batch, CPU, "auto")
    assert choice.precision == "fp32" and choice.dtype is None and calls == ["bf16"]
    assert "bf16 self-check failed" in choice.reason and "0.83" in choice.reason
    # an explicit request is honoured without a check
    assert choose_training_precision(_model(), batch, CPU, "bf16").precision == "bf16" and calls == ["bf16"]


def test_verdict_is_cached_per_machine_device_torch_and_architecture(monkeypatch, cache, batch):
    calls: list = []
    _fake_amx(monkeypatch)
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
    assert entry["check"] == str(precision.CHECK_VERSION)  # old one-batch verdicts not re-used
    other = _model(num_classes=3)  # another architecture: checked again
    assert choose_training_precision(other, batch, CPU, "auto").check["cached"] is False
    assert len(calls) == 2


def test_doctor_reports_devices_flags_verdicts_and_speed(monkeypatch):
    quick = precision.doctor_report(measure=False)
    assert "torch: " + torch.__version__ in quick and "avx512_bf16" in quick and "CPU:" in quick
    lines = precision.measured_report(base_filters=2, shape=(16, 16, 16), repeats=1)
    text = "\n".join(lines)
    assert "training self-check on cpu" in text and "gradient rel. error" in text
    assert "after 4 fp32 steps" in text and "training verdict on cpu" in text
    assert "max probability difference" in text and " ms" in text and "x)" in text


def test_sscce_doctor_command(capsys):
    from napari_sscce.cli import main

    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "precision auto on cpu" in out and "CUDA" in out
    assert "training precision auto on cpu: " + precision.training_policy(CPU) in out
