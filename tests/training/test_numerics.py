"""Nothing non-finite reaches the weights: bad steps are skipped and counted, poisoned states restored,
runs that cannot continue fail loudly (API and ``sscce train``), and ``auto`` precision is measured."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sscce import precision
from napari_sscce.cli import main
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.methods.supervised import SupervisedMethod
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.training import loop
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import TrainingError, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(folder, 3, shape=(16, 20, 20), n_labeled=2, n_val=0, seed=5)


def _config(dataset, out, **kw):
    base = dict(
        data=str(dataset), patch_size=(16, 16, 16), labeled_bs=2, iterations=5, method="supervised",
        out=str(out), val_every=0, precision="fp32", base_filters=2, seed=3, has_dropout=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _all_finite(model):
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def _poison_gradients_at(monkeypatch, iterations: set[int], value: float = float("nan")):
    """A gradient hook on the first weight of each network that poisons the steps in ``iterations``."""
    original = SupervisedMethod.losses
    now: dict = {}

    def poison(grad):
        return torch.full_like(grad, value) if now["iteration"] in iterations else grad

    def losses(self, model, batch, iteration):
        if not now:  # first call: hook the first weight of each network once
            net = model.module if hasattr(model, "module") else model
            for p in (next(net.net_a.parameters()), next(net.net_b.parameters())):
                p.register_hook(poison)
            now["start"] = {k: v.clone() for k, v in net.state_dict().items()}
        now["iteration"] = iteration
        return original(self, model, batch, iteration)

    monkeypatch.setattr(SupervisedMethod, "losses", losses)
    return now


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_gradients_are_skipped_and_counted(dataset, tmp_path, monkeypatch, value):
    _poison_gradients_at(monkeypatch, {1, 2}, value)
    result = train(_config(dataset, tmp_path / "run"))
    assert result.iterations == 5 and _all_finite(result.model)
    records = _records(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [0, 1, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)  # the loss itself was fine
    summary = load_checkpoint(result.last_path).metadata["train_summary"]
    assert summary["skipped_steps"] == 2 and summary["restored_states"] == 0
    # 2 of 5 steps lost: the run is done, but it says so
    assert result.warning and "2 of 5 steps were skipped" in result.warning
    assert summary["warning"] == result.warning


def test_a_healthy_run_carries_no_warning_and_the_threshold_is_the_share():
    assert loop.numerics_warning({"skipped_steps": 0, "restored_states": 0}, 100) is None
    assert loop.numerics_warning({"skipped_steps": 5, "restored_states": 0}, 100) is None  # 5 % is tolerated
    assert "6 of 100" in loop.numerics_warning({"skipped_steps": 6, "restored_states": 0}, 100)
    assert "restored 1 time" in loop.numerics_warning({"skipped_steps": 0, "restored_states": 1}, 100)


def test_sscce_train_prints_the_warning(dataset, tmp_path, monkeypatch, capsys):
    _poison_gradients_at(monkeypatch, {1, 2})
    code = main([
        "train", "--data", str(dataset), "--labeled", "2", "--method", "supervised", "--iterations", "5",
        "--patch", "16", "16", "16", "--base-filters", "2", "--no-dropout", "--val-every", "0",
        "--precision", "fp32", "--out", str(tmp_path / "run"), "--quiet",
    ])
    captured = capsys.readouterr()
    assert code == 0 and "done at iteration 5" in captured.out
    assert "sscce train: warning: 2 of 5 steps were skipped" in captured.err


def test_skipped_steps_leave_the_weights_untouched(dataset, tmp_path, monkeypatch):
    seen = _poison_gradients_at(monkeypatch, {0, 1, 2, 3, 4})
    monkeypatch.setattr(loop, "MAX_NONFINITE", 10)
    after = train(_config(dataset, tmp_path / "run")).model.state_dict()
    start = seen["start"]
    weights = [k for k in start if k.endswith("weight") and start[k].dim() > 1]
    assert weights and all(torch.equal(start[k], after[k]) for k in weights)


def test_non_finite_weights_and_batchnorm_statistics_are_restored(dataset, tmp_path, monkeypatch):
    original = SupervisedMethod.after_step

    def after_step(self, model, iteration):
        original(self, model, iteration)
        if iteration == 2:
            bn = next(m for m in model.net_a.modules() if isinstance(m, torch.nn.BatchNorm3d))
            bn.running_mean.fill_(float("nan"))
            next(model.net_b.parameters()).data.fill_(float("inf"))

    monkeypatch.setattr(SupervisedMethod, "after_step", after_step)
    result = train(_config(dataset, tmp_path / "run"))
    assert result.iterations == 5 and _all_finite(result.model)
    records = _records(tmp_path / "run")
    assert [r["restored_states"] for r in records] == [0, 0, 1, 1, 1]
    assert load_checkpoint(result.last_path).metadata["train_summary"]["restored_states"] == 1


def _nan_loss(monkeypatch):
    original = SupervisedMethod.losses

    def losses(self, model, batch, iteration):
        loss, terms = original(self, model, batch, iteration)
        return loss * float("nan"), terms

    monkeypatch.setattr(SupervisedMethod, "losses", losses)
    monkeypatch.setattr(loop, "MAX_NONFINITE", 3)


def test_a_run_that_cannot_continue_raises_and_never_says_done(dataset, tmp_path, monkeypatch):
    _nan_loss(monkeypatch)
    events = []
    with pytest.raises(TrainingError, match="3 steps in a row") as info:
        train(_config(dataset, tmp_path / "run"), progress=events.append)
    assert isinstance(info.value, FloatingPointError) and "--precision fp32" in str(info.value)
    assert not any(e.message == "done" for e in events)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_sscce_train_exits_non_zero_with_the_reason(dataset, tmp_path, monkeypatch, capsys):
    _nan_loss(monkeypatch)
    code = main([
        "train", "--data", str(dataset), "--labeled", "2", "--method", "supervised", "--iterations", "5",
        "--patch", "16", "16", "16", "--base-filters", "2", "--no-dropout", "--val-every", "0",
        "--precision", "fp32", "--out", str(tmp_path / "run"), "--quiet",
    ])
    captured = capsys.readouterr()
    assert code == 1
    assert "sscce train: failed" in captured.err and "non-finite" in captured.err
    assert "done" not in captured.out and "precision fp32 on cpu (requested)" in captured.out


def test_auto_precision_falls_back_to_fp32_when_the_self_check_fails(dataset, tmp_path, monkeypatch):
    calls = []

    def failing(model, batch, device, prec, loss_fn=None):
        calls.append([tuple(b.image.shape) for b in batch])
        return precision.SelfCheck(prec, False, 1.0, 1.0, 0.0, 0.83, 0, 0.1,
                                   f"{prec} gradients differ from fp32 by 0.83 (tolerance 0.2)")

    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(precision, "_mkldnn_bf16_probe", lambda: None)
    monkeypatch.setattr(precision, "training_self_check", failing)
    events = []
    cfg = _config(dataset, tmp_path / "auto", precision="auto", iterations=2)
    result = train(cfg, progress=events.append)
    # one check on real training batches (several, as training draws them)
    assert calls == [[(2, 1, 16, 16, 16)] * precision.CHECK_BATCHES]
    summary = load_checkpoint(result.last_path).metadata["train_summary"]
    assert summary["precision"] == "fp32" and "self-check failed" in summary["precision_reason"]
    assert summary["precision_check"]["grad_rel_err"] == 0.83
    assert any("self-check failed" in e.message for e in events)
    # the check batch does not shift the run's batches: same losses as an fp32 run
    plain = train(_config(dataset, tmp_path / "fp32", iterations=2))
    assert [r["loss"] for r in result.history] == [r["loss"] for r in plain.history]
