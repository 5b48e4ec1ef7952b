"""What the loop does at each checkpoint besides writing files: the numerics guard's good state is refreshed
(docs/contracts.md: "refreshed every SNAPSHOT_EVERY good steps and at each checkpoint"), and validation is
announced with a "validating" progress event before it runs."""

from __future__ import annotations

import pytest
import torch

from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.methods.supervised import SupervisedMethod
from napari_sscce.models import checkpoint
from napari_sscce.training import loop
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return {n: make_synthetic_dataset(folder / str(n), 3, shape=(16, 20, 20), n_labeled=2, n_val=n, seed=5)
            for n in (0, 1)}


def _config(dataset, out, **kw) -> TrainConfig:
    base = dict(
        data=str(dataset), patch_size=(16, 16, 16), labeled_bs=2, iterations=4, method="supervised",
        out=str(out), val_every=2, precision="fp32", base_filters=2, seed=3, has_dropout=False, lr=0.1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_a_poisoned_state_is_restored_to_the_last_checkpoint_not_to_the_start(datasets, tmp_path,
                                                                              monkeypatch):
    saved: list[dict[str, torch.Tensor]] = []
    original_save = checkpoint.save_checkpoint

    def save_checkpoint(path, model, *args, **kwargs):
        if path.name == "last.safetensors":
            saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original_save(path, model, *args, **kwargs)

    start: dict[str, torch.Tensor] = {}
    original_after = SupervisedMethod.after_step

    def after_step(self, model, iteration):
        if not start:
            start.update({k: v.detach().clone() for k, v in model.state_dict().items()})  # after step 1
        original_after(self, model, iteration)
        if iteration == 3:  # the last step (0-based): poison every weight after the checkpoint at 2
            for p in model.parameters():
                p.data.fill_(float("nan"))

    monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)  # the name the loop calls
    monkeypatch.setattr(SupervisedMethod, "after_step", after_step)
    assert loop.SNAPSHOT_EVERY > 4  # only the checkpoint at iteration 2 can have refreshed the good state
    result = train(_config(datasets[0], tmp_path / "run"))
    assert result.iterations == 4 and len(saved) == 2  # checkpoints at 2 and 4
    final = result.model.state_dict()
    at_two = saved[0]
    weights = [k for k, v in at_two.items() if v.is_floating_point()]
    assert all(torch.equal(final[k], at_two[k]) for k in weights)
    assert any(not torch.equal(at_two[k], start[k]) for k in weights)  # iteration 2 is not an earlier state


def test_validation_is_announced_before_it_runs(datasets, tmp_path):
    events = []
    train(_config(datasets[1], tmp_path / "run", iterations=2, val_every=1, base_filters=1),
          progress=events.append)
    stages = [(e.stage, e.step, e.message) for e in events]
    validating = [s for s in stages if s[0] == "validate" and s[2] == "validating"]
    assert [s[1] for s in validating] == [1, 2]
    for step in (1, 2):
        i = stages.index(("validate", step, "validating"))
        after = [s for s in stages[i + 1:] if s[0] == "validate" and s[1] == step]
        assert after, "no validation result after the announcement"
