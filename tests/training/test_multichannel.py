"""Issue 28's must-show: an object that only two channels together reveal.

Every generated case holds three spheres of the same size on a noisy background: the object (bright in
channel 0, dark in channel 1), a decoy bright in both, and a decoy dark in both. Channel 0 alone cannot
tell the object from the first decoy, channel 1 alone not from the second; both together can.
"""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.channels import read_multichannel
from napari_sscce.io.volume import Volume
from napari_sscce.metrics.surface import mean_dice
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.models.matching import ChannelMismatchError
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import train

SHAPE = (20, 20, 20)
RADIUS = 3.5
#: (channel 0, channel 1) intensity of the object and of the two decoys
OBJECT, DECOYS = (1.0, -1.0), ((1.0, 1.0), (-1.0, -1.0))


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(2, z, y, x) image and (z, y, x) label of one generated case."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    centres: list[np.ndarray] = []
    while len(centres) < 3:
        c = rng.uniform(RADIUS + 1, np.array(SHAPE) - RADIUS - 1)
        if all(np.linalg.norm(c - o) > 2 * RADIUS + 2 for o in centres):
            centres.append(c)
    image = rng.normal(0.0, 0.25, (2, *SHAPE))
    image += rng.uniform(-0.3, 0.3, (2, 1, 1, 1))  # the background level varies between cases
    label = np.zeros(SHAPE, np.uint8)
    for centre, values in zip(centres, (OBJECT, *DECOYS), strict=True):
        inside = np.linalg.norm(grid - centre, axis=-1) <= RADIUS
        for ch in range(2):
            image[ch][inside] += values[ch]
        if values == OBJECT:
            label[inside] = 1
    return image.astype(np.float32), label


def _save(path, array_zyx) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array_zyx).T, np.eye(4)), str(path))


def _dataset(root, cases, channels: tuple[int, ...]):
    """An images/labels dataset with nnU-Net per-channel files (``<case>_0000``, ...) of ``channels``."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, (image, label) in cases.items():
        for k, ch in enumerate(channels):
            _save(root / "images" / f"{name}_{k:04d}.nii.gz", image[ch])
        _save(root / "labels" / f"{name}.nii.gz", label)
    names = {ch: n for ch, n in enumerate(("A", "B"))}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {str(k): names[ch] for k, ch in
                                                                     enumerate(channels)}}), encoding="utf-8")
    split = {"labeled": [n for n in cases if n.startswith("tr")], "unlabeled": [],
             "val": [n for n in cases if n.startswith("va")]}
    (root / "splits.json").write_text(json.dumps(split), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def generated():
    rng = np.random.default_rng(28)
    cases = {f"tr{i}": _case(rng) for i in range(4)}
    cases.update({f"va{i}": _case(rng) for i in range(3)})
    return cases


def _train_and_score(root, out, channels, cases):
    config = TrainConfig(data=str(root), split=str(root / "splits.json"), method="supervised",
                         patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0, iterations=150, lr=0.05,
                         out=str(out), val_every=0, precision="fp32", base_filters=4, seed=1, device="cpu",
                         has_dropout=False, augment_flip=False)
    result = train(config)
    path = result.best_path or result.last_path
    scores = []
    for name in (n for n in cases if n.startswith("va")):
        image, label = cases[name]
        array = image[list(channels)] if len(channels) > 1 else image[channels[0]]
        volume = Volume(array, channel_names=("A", "B") if len(channels) > 1 else ())
        pred = predict_volume(str(path), volume, InferenceConfig(device="cpu", tta=False))
        scores.append(mean_dice(pred.labels, label, classes=[1]))
    return path, float(np.mean(scores))


@pytest.mark.slow
def test_two_channels_find_what_one_cannot(tmp_path, generated):
    start = time.perf_counter()
    both, dice_both = _train_and_score(_dataset(tmp_path / "both", generated, (0, 1)), tmp_path / "r01",
                                       (0, 1), generated)
    _, dice_0 = _train_and_score(_dataset(tmp_path / "c0", generated, (0,)), tmp_path / "r0", (0,), generated)
    _, dice_1 = _train_and_score(_dataset(tmp_path / "c1", generated, (1,)), tmp_path / "r1", (1,), generated)
    print(f"dice both {dice_both:.3f}, channel 0 {dice_0:.3f}, channel 1 {dice_1:.3f}, "
          f"{time.perf_counter() - start:.1f} s")
    assert dice_both >= 0.9
    assert max(dice_0, dice_1) <= dice_both - 0.2

    meta = load_checkpoint(both).metadata
    assert meta["in_channels"] == 2 and meta["channel_names"] == ["A", "B"]
    image, label = generated["va0"]
    swapped = Volume(image[::-1].copy(), channel_names=("B", "A"))  # matched by name
    pred = predict_volume(str(both), swapped, InferenceConfig(device="cpu", tta=False))
    assert mean_dice(pred.labels, label, classes=[1]) >= 0.8
    with pytest.raises(ChannelMismatchError, match=r"has 1 channel.*expects 2 channel\(s\) \(A, B\)"):
        predict_volume(str(both), Volume(image[0]), InferenceConfig(device="cpu", tta=False))
    with pytest.raises(ChannelMismatchError, match=r"not those .* expects: 2 channel\(s\) \(A, B\)"):
        predict_volume(str(both), Volume(image, channel_names=("T1", "T2")), InferenceConfig(device="cpu"))
    # the files the model trained on read back as the same two channels
    read = read_multichannel(tmp_path / "both" / "images" / "va0_0000.nii.gz")
    assert read.channel_names == ("A", "B")
    np.testing.assert_allclose(read.array, image, atol=1e-6)


def test_cli_train_predict_on_4d_nifti_and_channel_files(tmp_path, generated, capsys):
    from napari_sscce.cli import main

    cases = {n: generated[n] for n in ("tr0", "tr1", "va0")}
    per_channel = _dataset(tmp_path / "files", cases, (0, 1))
    four_d = tmp_path / "4d"
    (four_d / "images").mkdir(parents=True)
    (four_d / "labels").mkdir()
    for name, (image, label) in cases.items():
        nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1).transpose(2, 1, 0, 3), np.eye(4)),
                 str(four_d / "images" / f"{name}.nii.gz"))
        _save(four_d / "labels" / f"{name}.nii.gz", label)
    (four_d / "splits.json").write_text((per_channel / "splits.json").read_text(encoding="utf-8"),
                                        encoding="utf-8")
    common = ["--method", "supervised", "--iterations", "2", "--patch", "16", "16", "16", "--device", "cpu",
              "--precision", "fp32", "--batch", "2", "0", "--val-every", "0", "--base-filters", "4",
              "--quiet"]
    for data in (per_channel, four_d):
        run = tmp_path / f"run_{data.name}"
        assert main(["train", "--data", str(data), "--split", str(data / "splits.json"), "--out", str(run),
                     *common]) == 0
        model = run / "last.safetensors"
        assert load_checkpoint(model).metadata["in_channels"] == 2
        pred = tmp_path / f"pred_{data.name}"
        inputs = ([str(data / "images" / "va0_0000.nii.gz"), str(data / "images" / "va0_0001.nii.gz")]
                  if data == per_channel else [str(data / "images" / "va0.nii.gz")])
        assert main(["predict", *inputs, "--model", str(model), "--out", str(pred), "--device", "cpu"]) == 0
        seg = nib.load(str(pred / "va0_seg.nii.gz"))
        assert seg.shape == SHAPE[::-1]
        assert sorted(p.name for p in pred.glob("*_seg.nii.gz")) == ["va0_seg.nii.gz"]  # one case, once
    # --channel still picks one channel of a 4D file: a 1-channel scan for a 2-channel model is refused
    capsys.readouterr()
    assert main(["predict", str(four_d / "images" / "va0.nii.gz"), "--channel", "0", "--model", str(model),
                 "--out", str(tmp_path / "one"), "--device", "cpu"]) == 2
    assert "expects 2 channel(s)" in capsys.readouterr().err
