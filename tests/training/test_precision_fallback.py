"""Reduced precision is watched while it runs: non-finite reduced-precision steps are redone in fp32, and past
2 % of a window the run switches itself to fp32 for good (recorded, said once, remembered for ``auto``); a
fine-tune or cold start that did not train is never made current."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_sscce import loop as ft
from napari_sscce import precision
from napari_sscce.io.sample_data import make_synthetic, make_synthetic_dataset
from napari_sscce.methods.supervised import SupervisedMethod
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.precision import CACHE_ENV
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import PrecisionWatch, train
from napari_sscce.workspace import Workspace
from sscce_factory import tiny_model_file


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(folder, 3, shape=(16, 20, 20), n_labeled=2, n_val=0, seed=5)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / precision.CACHE_FILE


def _config(dataset, out, **kw):
    base = dict(
        data=str(dataset), patch_size=(16, 16, 16), labeled_bs=2, iterations=12, method="supervised",
        out=str(out), val_every=0, precision="bf16", base_filters=2, seed=3, has_dropout=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _poison_reduced_precision_steps(monkeypatch, every: bool = True, value: float = float("nan")):
    """Gradient hooks that turn the gradients non-finite on reduced-precision steps only (as the broken
    bf16 kernels of an AVX512-BF16 CPU without AMX do); fp32 steps stay healthy. The losses themselves are
    computed in fp32 even under autocast, so that this machine's own bf16 kernels (broken on some CPUs)
    cannot add failures the test did not plant."""
    original = SupervisedMethod.losses
    seen = {"low": 0, "fp32": 0, "hooked": False}

    def poison(grad):
        return torch.full_like(grad, value) if seen["now_low"] else grad

    def losses(self, model, batch, iteration):
        net = model.module if hasattr(model, "module") else model
        if not seen["hooked"]:
            for p in (next(net.net_a.parameters()), next(net.net_b.parameters())):
                p.register_hook(poison)
            seen["hooked"] = True
            seen["start"] = {k: v.clone() for k, v in net.state_dict().items()}
        seen["now_low"] = torch.is_autocast_enabled("cpu") and every
        seen["low" if torch.is_autocast_enabled("cpu") else "fp32"] += 1
        with torch.autocast("cpu", enabled=False):
            return original(self, model, batch, iteration)

    monkeypatch.setattr(SupervisedMethod, "losses", losses)
    return seen


def _events(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]


def test_the_watch_switches_past_two_percent_of_fifty():
    watch = PrecisionWatch("bf16")
    assert not watch.record(failed=True)  # one failure in the window: redone, not yet a switch
    assert not any(watch.record(failed=False) for _ in range(48))
    assert watch.record(failed=True)  # two in fifty is more than 2 %
    watch = PrecisionWatch("bf16")
    watch.record(failed=True)
    for _ in range(precision.FALLBACK_WINDOW):  # the first failure has left the window
        assert not watch.record(failed=False)
    assert not watch.record(failed=True) and watch.retries == 2
    fp16 = PrecisionWatch("fp16")  # the GradScaler finding its scale is not a broken kernel
    assert not any(fp16.record(failed=True) for _ in range(5))


def test_non_finite_reduced_precision_steps_switch_the_run_to_fp32(dataset, tmp_path, monkeypatch):
    seen = _poison_reduced_precision_steps(monkeypatch)
    events = []
    out = tmp_path / "run"
    result = train(_config(dataset, out), progress=events.append)
    # every step was taken: the two failed bf16 steps were redone in fp32, then the run stayed fp32
    assert result.iterations == 12 and result.effective_steps == 12
    assert result.numerics["skipped_steps"] == 0 and result.numerics["reduced_precision_retries"] == 2
    assert seen["low"] == 2 and seen["fp32"] == 12
    fallback = result.numerics["precision_fallback"]
    assert fallback["iteration"] == 2 and fallback["from"] == "bf16" and fallback["to"] == "fp32"
    assert result.numerics["precision"] == "fp32"
    # the model trained: finite and moved away from its start
    state = result.model.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(seen["start"][k], v) for k, v in state.items() if v.is_floating_point())
    # recorded in metrics.jsonl, in the checkpoint's train_summary, and said once
    assert [e["event"] for e in _events(out)] == ["precision_fallback"]
    summary = load_checkpoint(result.last_path).metadata["train_summary"]
    assert summary["precision"] == "fp32" and summary["precision_fallback"]["iteration"] == 2
    assert "fell back from bf16" in summary["precision_reason"] and summary["reduced_precision_retries"] == 2
    assert summary["allocator"]  # what the run did with the C allocator, in words
    said = [e.message for e in events if "continues in fp32" in (e.message or "")]
    assert len(said) == 1 and "bf16" in said[0]
    assert result.warning is None  # nothing for the person to act on


def test_a_healthy_reduced_precision_run_is_not_switched(dataset, tmp_path, monkeypatch):
    seen = _poison_reduced_precision_steps(monkeypatch, every=False)
    result = train(_config(dataset, tmp_path / "run", iterations=4))
    assert result.numerics["precision_fallback"] is None and result.numerics["precision"] == "bf16"
    assert seen["low"] == 4 and seen["fp32"] == 0 and not _events(tmp_path / "run")


def test_auto_remembers_a_runtime_fallback(dataset, tmp_path, monkeypatch, cache):
    """On a (faked) AMX CPU whose self-check passed, a run that had to fall back stores a failed verdict:
    the next ``auto`` run of the same model starts in fp32 without failing again."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: None)
    checks = []

    def passing(model, batch, device, prec, loss_fn=None):
        checks.append(prec)
        return precision.SelfCheck(prec, True, 1.0, 1.0, 0.0, 0.01, 0, 0.1, "bf16 agrees with fp32")

    monkeypatch.setattr(precision, "training_self_check", passing)
    seen = _poison_reduced_precision_steps(monkeypatch)
    first = train(_config(dataset, tmp_path / "a", precision="auto", iterations=4))
    assert checks == ["bf16"] and first.numerics["precision_fallback"] is not None
    verdicts = json.loads(cache.read_text())
    assert [v["passed"] for v in verdicts.values()] == [False]
    assert "fell back to fp32 during training" in next(iter(verdicts.values()))["reason"]
    low_before = seen["low"]
    second = train(_config(dataset, tmp_path / "b", precision="auto", iterations=4))
    assert second.numerics["precision"] == "fp32" and second.numerics["precision_fallback"] is None
    assert seen["low"] == low_before and checks == ["bf16"]  # no bf16 step, no new check


def test_resume_after_a_fallback_stays_fp32(dataset, tmp_path, monkeypatch):
    from napari_sscce.progress import CancelToken

    seen = _poison_reduced_precision_steps(monkeypatch)
    token = CancelToken()

    def cancel_at_six(event):
        if event.stage == "train" and event.step >= 6:
            token.cancel()

    out = tmp_path / "run"
    first = train(_config(dataset, out), progress=cancel_at_six, cancel=token)
    assert first.cancelled and first.numerics["precision_fallback"] is not None
    low_before = seen["low"]
    resumed = train(_config(dataset, out, resume=True))
    assert resumed.iterations == 12 and seen["low"] == low_before  # no bf16 step after the resume
    assert resumed.numerics["precision_fallback"]["iteration"] == 2
    assert resumed.numerics["reduced_precision_retries"] == 2


# --------------------------------------------------------------------------------------- adoption
SHAPE = (16, 32, 32)


def _workspace_with_a_corrected_case(folder):
    ws = Workspace(folder)
    image, gt = make_synthetic(SHAPE, (2.0, 1.0, 1.0), seed=1, num_classes=2)
    mask = np.zeros(SHAPE, np.uint8)
    mask[[3, 6, 9, 12]] = 1
    ws.add_case(image, gt, image.with_array(mask, is_label=True), name="c1")
    return ws, gt


def _poison_every_step(monkeypatch, method_cls):
    original = method_cls.losses
    hooked = {}

    def losses(self, model, batch, iteration):
        net = model.module if hasattr(model, "module") else model
        if not hooked:
            for p in net.parameters():
                p.register_hook(lambda g: torch.full_like(g, float("nan")))
            hooked["yes"] = True
        return original(self, model, batch, iteration)

    monkeypatch.setattr(method_cls, "losses", losses)


def test_a_finetune_whose_steps_were_all_skipped_is_not_adopted(tmp_path, monkeypatch, one_torch_thread):
    from napari_sscce.methods.cce import CCEMethod

    start = tiny_model_file(tmp_path / "start.safetensors", patch_size=list(SHAPE),
                            normalization={"mode": "zscore"})
    ws, gt = _workspace_with_a_corrected_case(tmp_path / "ws")
    labels_before = (ws.folder / ws.labeled_cases[0].label).read_bytes()
    _poison_every_step(monkeypatch, CCEMethod)
    result = ft.run_finetune(ws, start, "cce", iterations=4, device="cpu", precision="fp32", seed=0)
    ws.reload()
    assert result.train.numerics["skipped_steps"] == 4 and result.train.effective_steps == 0
    assert not result.adopted and ws.current_version == result.start_version == "v0001"
    assert result.version == "v0002" and [v.version for v in ws.versions] == ["v0001", "v0002"]
    assert "learned from only 0 of its 4 steps" in result.message and "stays in use" in result.message
    assert ws.versions[-1].info["effective_steps"] == 0
    assert (ws.folder / ws.labeled_cases[0].label).read_bytes() == labels_before  # corrections kept


def test_a_cold_start_that_did_not_train_is_not_made_current(tmp_path, monkeypatch, one_torch_thread):
    from napari_sscce.methods.cce import CCEMethod

    ws, _ = _workspace_with_a_corrected_case(tmp_path / "ws")
    _poison_every_step(monkeypatch, CCEMethod)
    result = ft.run_finetune(ws, cold_start=True, iterations=3, base_filters=2, device="cpu",
                             precision="fp32", seed=0)
    ws.reload()
    assert not result.adopted and ws.current_version is None and result.version == "v0001"
    assert "not used" in result.message and "learned from only 0 of its 3 steps" in result.message


def test_trained_enough_is_the_stated_share():
    class Run:
        def __init__(self, iterations, skipped):
            self.iterations, self.effective_steps = iterations, iterations - skipped

    assert ft.trained_enough(Run(100, 5))[0] and not ft.trained_enough(Run(100, 6))[0]
    assert not ft.trained_enough(Run(0, 0))[0]
    assert ft.MIN_EFFECTIVE_SHARE == 0.95
