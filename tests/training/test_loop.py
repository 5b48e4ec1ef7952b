import json

import pytest
import torch

from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.progress import CancelToken
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import STATE_FILE, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(folder, 5, shape=(16, 24, 24), n_labeled=2, n_val=1, seed=3)


def tiny_config(dataset, out, **kw):
    base = dict(
        data=str(dataset), patch_size=(16, 16, 16), labeled_bs=1, unlabeled_bs=1, iterations=4,
        out=str(out), val_every=0, precision="fp32", base_filters=4, seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly_after_cancel(dataset, tmp_path):
    straight = train(tiny_config(dataset, tmp_path / "a"))
    assert not straight.cancelled and straight.iterations == 4

    token = CancelToken()

    def stop_after_two(event):
        if event.stage == "train" and event.step == 2:
            token.cancel()

    cfg = tiny_config(dataset, tmp_path / "b")
    part = train(cfg, progress=stop_after_two, cancel=token)
    assert part.cancelled and part.iterations == 2
    assert (tmp_path / "b" / "last.safetensors").exists() and (tmp_path / "b" / STATE_FILE).exists()
    assert load_checkpoint(tmp_path / "b" / "last.safetensors").metadata["train_summary"]["iterations"] == 2

    resumed = train(cfg.replace(resume=True))
    assert resumed.iterations == 4 and not resumed.cancelled
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    losses_a = [r["loss"] for r in _lines(tmp_path / "a") if "loss" in r]
    losses_b = [r["loss"] for r in _lines(tmp_path / "b") if "loss" in r]
    assert losses_a == losses_b and len(losses_a) == 4


def test_checkpoint_metadata_config_and_validation(dataset, tmp_path):
    events = []
    cfg = tiny_config(dataset, tmp_path / "run", method="supervised", iterations=2, val_every=1, labeled_bs=2)
    result = train(cfg, progress=events.append)
    ckpt = load_checkpoint(result.best_path)
    meta = ckpt.metadata
    assert meta["method"] == "supervised" and meta["patch_size"] == [16, 16, 16]
    assert meta["normalization"] == {"mode": "percentile_zscore"}
    assert meta["config"]["unlabeled_bs"] == 0  # supervised draws no unlabeled rows
    assert meta["augmentation"]["setting"] == "auto" and meta["augmentation"]["flip_axes"]
    assert 0.0 <= meta["val_metrics"]["dice"] <= 1.0
    assert TrainConfig.load(tmp_path / "run" / "config.json").method == "supervised"
    vals = [e for e in events if e.stage == "validate" and "val_dice" in e.values]
    assert len(vals) == 2  # after iteration 1 and at the end
    train_events = [e for e in events if e.stage == "train" and "loss" in e.values]
    assert {"sup_a", "sup_b", "lr"} <= set(train_events[0].values)


def test_init_checkpoint_starts_from_given_weights(dataset, tmp_path):
    first = train(tiny_config(dataset, tmp_path / "first", iterations=1))
    cfg = tiny_config(dataset, tmp_path / "second", iterations=1, lr=0.0, base_filters=8)
    second = train(cfg, init_checkpoint=str(first.last_path))
    # lr 0: the weights stay those of the checkpoint (batch-norm statistics aside), base_filters ignored
    start = load_checkpoint(first.last_path).model.state_dict()
    end = second.model.state_dict()
    weights = [k for k in start if k.endswith("weight") and start[k].dim() > 1]
    assert weights and all(torch.equal(start[k], end[k]) for k in weights)


def test_fine_tune_keeps_the_flip_restrictions_of_its_starting_model(dataset, tmp_path):
    first = train(tiny_config(dataset, tmp_path / "first", iterations=1, flip_axes="x"))
    assert load_checkpoint(first.last_path).metadata["augmentation"]["flip_axes"] == "x"
    # auto on this binary data would flip zyx; starting from the x-only model it flips x only
    second = train(
        tiny_config(dataset, tmp_path / "second", iterations=1), init_checkpoint=str(first.last_path)
    )
    aug = load_checkpoint(second.last_path).metadata["augmentation"]
    assert aug["flip_axes"] == "x" and aug["inherited_from"] == str(first.last_path) and not aug["rot90"]
    explicit = train(tiny_config(dataset, tmp_path / "third", iterations=1, flip_axes="zyx"),
                     init_checkpoint=str(first.last_path))
    assert load_checkpoint(explicit.last_path).metadata["augmentation"]["flip_axes"] == "zyx"


def test_bad_split_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(ValueError, match="labeled"):
        train(tiny_config(dataset, tmp_path / "x", labeled=10))


def test_background_batches_match_and_bf16_runs(dataset, tmp_path):
    plain = train(tiny_config(dataset, tmp_path / "w0", iterations=2, val_every=0))
    threaded = train(tiny_config(dataset, tmp_path / "w1", iterations=2, val_every=0, num_workers=1))
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, threaded.model.state_dict()[key]), key
    bf16 = train(tiny_config(dataset, tmp_path / "bf16", iterations=1, precision="bf16"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in bf16.history if "loss" in r)
    assert load_checkpoint(bf16.last_path).metadata["train_summary"]["precision"] == "bfloat16"
