"""Model files: round trip, metadata, atomic writes and every kind of bad file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_sscce.models import DualModel, build_dual_model, build_network
from napari_sscce.models import checkpoint as ckpt
from napari_sscce.models.checkpoint import (
    CheckpointError,
    import_reference_vnet,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)

SHAPE = (1, 1, 16, 16, 16)
SMALL = {"base_filters": 4}  # narrow networks keep the tests fast; the file format does not depend on width
METADATA = {
    "method": "cce",
    "class_names": ["background", "left atrium"],
    "patch_size": [80, 112, 112],
    "spacing": (0.625, 0.625, 0.625),
    "normalization": {"mode": "zscore"},
    "train_summary": {"iterations": 3, "seconds": 1.5},
    "val_metrics": {"dice": 0.5},
    "config": {"lr": 0.01, "out": Path("/tmp/x")},
}


def _trained_like(method: str = "cce", num_classes: int = 2) -> DualModel:
    """A model whose batch-norm statistics differ from a fresh one (one train-mode forward)."""
    torch.manual_seed(0)
    model = build_dual_model(method, in_channels=1, num_classes=num_classes, **SMALL)
    with torch.no_grad():
        model.train()(torch.randn(2, 1, 16, 16, 16) * 3 + 1)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, DualModel]:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    model = _trained_like()
    save_checkpoint(path, model, METADATA)
    return path, model


@pytest.mark.parametrize("method", ["cce", "ugmcl"])
def test_round_trip_same_outputs_and_metadata(tmp_path, method):
    model = _trained_like(method)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {**METADATA, "method": method})
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        for want, got in zip(model(x), loaded.model(x), strict=True):
            torch.testing.assert_close(got, want)
    meta = loaded.metadata
    assert meta["method"] == method
    assert meta["arch"] == model.arch
    assert (meta["num_classes"], meta["in_channels"]) == (2, 1)
    assert meta["class_names"] == ["background", "left atrium"]
    assert meta["spacing"] == [0.625, 0.625, 0.625]
    assert meta["config"] == {"lr": 0.01, "out": "/tmp/x"}
    assert meta["normalization"] == {"mode": "zscore"}
    assert set(meta["versions"]) >= {"napari_sscce", "torch"}
    assert meta["created"]
    assert loaded.class_names == ["background", "left atrium"]
    if method == "ugmcl":
        assert not any(p.requires_grad for p in loaded.model.net_b.parameters())


def test_read_metadata_only_header(saved):
    path, model = saved
    meta = read_checkpoint_metadata(path)
    assert meta["arch"] == model.arch and meta["val_metrics"] == {"dice": 0.5}


def test_default_class_names_and_wrong_count(tmp_path):
    model = build_dual_model("cce", in_channels=1, num_classes=3, **SMALL)
    save_checkpoint(tmp_path / "m.safetensors", model, {"method": "cce"})
    assert read_checkpoint_metadata(tmp_path / "m.safetensors")["class_names"] == [
        "background",
        "class 1",
        "class 2",
    ]
    with pytest.raises(ValueError, match="class names"):
        save_checkpoint(tmp_path / "n.safetensors", model, {"class_names": ["a", "b"]})


def _expect_error(path: Path, match: str, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", "does not exist")
    with pytest.raises(CheckpointError, match="nope"):
        read_checkpoint_metadata(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, saved):
    data = saved[0].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    _expect_error(bad, "truncated or corrupt")
    bad.write_bytes(data[:100])
    _expect_error(bad, "truncated")
    bad.write_bytes(b"")
    _expect_error(bad, "empty or truncated")


def test_foreign_files(tmp_path):
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(bytes(range(256)) * 8)
    _expect_error(random_bytes, "not a napari-sscce model file")
    pickle = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, pickle)
    _expect_error(pickle, "PyTorch pickle")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata={"format": "pt"})
    _expect_error(other, "no 'napari-sscce-checkpoint' marker")
    text = tmp_path / "model.safetensors"
    text.write_text("hello, this is not a model at all")
    _expect_error(text, "not a napari-sscce model file")


def _rewrite(src: Path, dst: Path, edit_tensors=None, edit_meta=None) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(src))
    header_len = struct.unpack("<Q", src.read_bytes()[:8])[0]
    header = json.loads(src.read_bytes()[8 : 8 + header_len])["__metadata__"]
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        meta = json.loads(header["metadata"])
        edit_meta(meta)
        header["metadata"] = json.dumps(meta)
    save_file(tensors, str(dst), metadata=header)


def test_mismatched_weights(tmp_path, saved):
    src = saved[0]
    bad = tmp_path / "bad.safetensors"
    _rewrite(src, bad, edit_tensors=lambda t: t.pop("a.out_conv.weight"))
    _expect_error(bad, "1 missing weight.*out_conv.weight")
    _rewrite(src, bad, edit_tensors=lambda t: t.update({"b.extra.weight": torch.zeros(2)}))
    _expect_error(bad, "unexpected weight.*extra.weight")
    _rewrite(src, bad, edit_tensors=lambda t: t.update({"c.x": torch.zeros(2)}))
    _expect_error(bad, "belong to no network")

    def three_classes(meta):  # metadata claims 3 classes, weights have 2
        meta["arch"]["a"]["kwargs"]["num_classes"] = 3
        meta["arch"]["b"]["kwargs"]["num_classes"] = 3

    _rewrite(src, bad, edit_meta=three_classes)
    _expect_error(bad, r"wrong shape.*out_conv.weight \(2, 4, 1, 1, 1\) instead of \(3, 4, 1, 1, 1\)")
    _rewrite(src, bad, edit_meta=lambda m: m["arch"]["a"].update(name="unet"))
    _expect_error(bad, "cannot rebuild.*unknown network 'unet'")


def test_expectations(saved):
    path = saved[0]
    _expect_error(path, "predicts 2 classes, 3 were expected", expect_num_classes=3)
    _expect_error(path, "1 input channel.*4 were expected", expect_in_channels=4)
    assert load_checkpoint(path, expect_num_classes=2, expect_in_channels=1).num_classes == 2


def test_atomic_write_keeps_old_file_on_crash(tmp_path, saved, monkeypatch):
    target = tmp_path / "m.safetensors"
    target.write_bytes(saved[0].read_bytes())
    before = target.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, build_dual_model("cce", **SMALL), METADATA)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    assert read_checkpoint_metadata(target)["method"] == "cce"


def test_channels_last_model_saves(tmp_path):
    model = build_dual_model("cce", **SMALL).to(memory_format=torch.channels_last_3d)
    path = save_checkpoint(tmp_path / "cl.safetensors", model, {})
    loaded = load_checkpoint(path)
    torch.testing.assert_close(
        loaded.model.net_a.state_dict()["block_one.conv.0.weight"],
        model.net_a.state_dict()["block_one.conv.0.weight"],
    )


@pytest.mark.parametrize("normalization", ["batchnorm", "groupnorm", "instancenorm", "none"])
def test_import_reference_vnet(tmp_path, normalization):
    torch.manual_seed(0)
    net = build_network("vnet", in_channels=1, num_classes=2, normalization=normalization, base_filters=8)
    pth = tmp_path / "vnet_iter_6000.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, pth)  # DataParallel-style keys
    model = import_reference_vnet(pth)
    assert model.kind == "single"
    assert (
        model.net_a.spec["kwargs"] == net.spec["kwargs"]
    )  # channels, classes, width, normalisation inferred
    x = torch.randn(1, 1, 32, 32, 32)  # instance norm needs more than one voxel at the bottleneck
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], net.eval()(x)[0])
    path = save_checkpoint(tmp_path / "imported.safetensors", model, {"method": "reference"})
    loaded = load_checkpoint(path)
    assert loaded.model.kind == "single"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[1], net(x)[0])


def test_import_reference_rejects_other_files(tmp_path):
    pth = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, pth)
    with pytest.raises(CheckpointError, match="not a UA-MT VNet"):
        import_reference_vnet(pth)
    rnd = tmp_path / "rnd.pth"
    rnd.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="rnd.pth"):
        import_reference_vnet(rnd)


def test_non_finite_weights_are_refused_on_write_and_on_load(tmp_path, saved):
    src, model = saved
    broken = _trained_like()
    broken.net_b.state_dict()["layer1.0.bn1.running_var"].fill_(float("inf"))
    with torch.no_grad():
        next(broken.net_a.parameters()).view(-1)[3] = float("nan")
    target = tmp_path / "diverged.safetensors"
    with pytest.raises(CheckpointError, match="2 tensor.*NaN or Inf") as info:
        save_checkpoint(target, broken, METADATA)
    message = str(info.value)
    assert str(target) in message and "a.block_one.conv.0.weight" in message
    assert "b.layer1.0.bn1.running_var" in message
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary left

    bad = tmp_path / "nan.safetensors"  # crafted with safetensors directly, as a foreign writer would
    _rewrite(src, bad, edit_tensors=lambda t: t["b.out_conv.bias"].fill_(float("nan")))
    error = _expect_error(bad, "cannot load.*1 tensor.*NaN or Inf.*b.out_conv.bias")
    assert "diverged" in str(error)
    assert load_checkpoint(src).num_classes == 2  # the intact file still loads
