"""Packaged models: registry, fp16 storage with a card, domain warnings, `sscce models`, predict by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sscce.cli import main as cli_main
from napari_sscce.io.sample_data import load_hippocampus_sample
from napari_sscce.io.volume import Volume
from napari_sscce.models import (
    build_dual_model,
    load_checkpoint,
    pretrained,
    read_checkpoint_metadata,
    save_checkpoint,
)
from napari_sscce.models.pretrained import (
    MODELS_DIR_ENV,
    domain_warnings,
    evaluate_on_cases,
    format_card,
    get_model,
    list_models,
    resolve_model,
    training_statistics,
    write_packaged_model,
)

CARD = {"title": "Tiny test model", "data": "generated", "license": "none", "recipe": "sscce train ...",
        "validation": {"cases": 2, "dice_mean": 0.5, "dice_per_class": {"organ": 0.5}, "hd95_mm": 3.0}}


def _trained_model_file(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_dual_model("cce", in_channels=1, num_classes=2, base_filters=2, has_dropout=False)
    with torch.no_grad():
        model.train()(torch.randn(2, 1, 16, 16, 16) * 3 + 1)  # non-trivial batch-norm statistics
    meta = {"method": "cce", "class_names": ["background", "organ"], "patch_size": [16, 16, 16],
            "spacing": [1.0, 1.0, 1.0], "normalization": {"mode": "percentile_zscore"}}
    return save_checkpoint(path, model.eval(), meta)


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv(MODELS_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def packaged(models_dir, tmp_path) -> Path:
    source = _trained_model_file(tmp_path / "run.safetensors")
    return write_packaged_model(source, models_dir / "hippocampus-cce.safetensors", CARD)


def test_default_folder_is_inside_the_package(monkeypatch):
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    folder = pretrained.models_dir()
    assert folder.parts[-3:] == ("napari_sscce", "data", "models")


def test_registry_lists_only_present_files(models_dir, packaged):
    (models_dir / "notes.txt").write_text("not a model")
    assert [m.name for m in list_models()] == ["hippocampus-cce"]
    model = get_model("hippocampus-cce")
    assert model.path == packaged and model.title == "Hippocampus MRI — CCE"
    with pytest.raises(KeyError, match="left-atrium-cce.*hippocampus-cce"):
        get_model("left-atrium-cce")
    packaged.unlink()
    assert list_models() == []


def test_fp16_storage_loads_as_fp32_with_the_card(packaged, tmp_path):
    from safetensors import safe_open

    with safe_open(str(packaged), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes  # integer BN counters stay integers
    ckpt = load_checkpoint(packaged)
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert ckpt.metadata["model_card"]["title"] == "Tiny test model"
    assert ckpt.metadata["storage_dtype"] == "float16"
    original = load_checkpoint(tmp_path / "run.safetensors")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = original.model(x)[0], ckpt.model(x)[0]
    assert not torch.equal(a, b)  # really rounded ...
    torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)  # ... but the same model


def test_resolve_model_by_name_or_path(packaged, tmp_path):
    assert resolve_model("hippocampus-cce") == packaged
    other = _trained_model_file(tmp_path / "hippocampus-cce")  # an existing file wins over a name
    assert resolve_model(str(other)) == other
    with pytest.raises(FileNotFoundError, match="no-such-model.*packaged models: hippocampus-cce"):
        resolve_model("no-such-model")


def test_sscce_models_lists_name_path_data_and_figures(packaged, capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "hippocampus-cce" in out and str(packaged) in out
    assert "data: generated" in out and "mean Dice 0.500" in out and "HD95 3.00 mm" in out
    assert cli_main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert cards["hippocampus-cce"]["path"] == str(packaged)


def test_sscce_models_with_none(models_dir, capsys):
    assert cli_main(["models"]) == 0
    assert "no packaged models" in capsys.readouterr().out


def test_predict_accepts_a_packaged_name(packaged, tmp_path, capsys):
    from napari_sscce.io.writers import write_volume

    image, _ = load_hippocampus_sample()
    scan = write_volume(image, tmp_path / "scan.nii.gz")
    assert cli_main(["predict", "--model", "hippocampus-cce", str(scan), "--out", str(tmp_path / "out"),
                     "--precision", "fp32"]) == 0
    assert (tmp_path / "out" / "scan_seg.nii.gz").is_file()
    assert cli_main(["predict", "--model", "nope", str(scan), "--out", str(tmp_path / "o2")]) == 2
    assert "no packaged model called 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- domain warnings
def _stats(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict:
    return training_statistics([Volume(array, spacing), Volume(array * 2, spacing)])


def test_training_statistics():
    rng = np.random.default_rng(0)
    stats = _stats(rng.uniform(0, 100, (10, 20, 30)).astype(np.float32), spacing=(2.0, 1.0, 1.0))
    assert stats["cases"] == 2
    assert stats["spacing"]["median"] == [2.0, 1.0, 1.0]
    assert stats["extent_mm"]["max"] == [20.0, 20.0, 30.0]
    assert 99 < stats["p99_5"]["min"] < 100 and 198 < stats["p99_5"]["max"] < 200
    assert stats["negative_fraction"]["max"] == 0.0
    with pytest.raises(ValueError):
        training_statistics([])


def test_domain_warnings_rules():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 100, (20, 20, 20)).astype(np.float32)
    meta = {"spacing": [1.0, 1.0, 1.0], "model_card": {"training_data": _stats(train)}}
    assert domain_warnings(Volume(train, (1.0, 1.0, 1.0)), meta) == []
    assert domain_warnings(Volume(train, (1.4, 1.0, 0.7)), meta) == []  # within 1.5x on every axis
    (spacing,) = domain_warnings(Volume(train[:, :, :12], (1.0, 1.0, 1.6)), meta)
    assert "spacing" in spacing and "1.5x" in spacing
    # finer: inference resamples; the model's own kind of scan at full resolution is not warned (issue 25)
    assert domain_warnings(Volume(train, (1.0, 0.33, 1.0)), meta) == []
    (fine,) = domain_warnings(Volume(train, (1.0, 0.2, 1.0)), meta)  # 5x finer than any training scan
    assert "finer" in fine and "4x" in fine
    (scale,) = domain_warnings(Volume(train * 1000, (1.0, 1.0, 1.0)), meta)
    assert "99.5th percentile" in scale
    assert domain_warnings(Volume(train * 7, (1.0, 1.0, 1.0)), meta) == []  # 7x < 2 x 4 above the max
    (negative,) = domain_warnings(Volume(train - 50, (1.0, 1.0, 1.0)), meta)
    assert "negative" in negative
    (fov,) = domain_warnings(Volume(np.tile(train, (3, 1, 1)), (1.0, 1.0, 1.0)), meta)
    assert "field of view" in fov
    # a model without a card: only the spacing rule
    assert len(domain_warnings(Volume(train * 1000, (2.0, 1.0, 1.0)), {"spacing": [1.0, 1.0, 1.0]})) == 1


def test_format_card_without_validation(packaged):
    text = format_card(get_model("hippocampus-cce"))
    assert text.splitlines()[0].startswith("hippocampus-cce")


def test_evaluate_on_cases_on_the_packaged_sample(packaged):
    image, label = load_hippocampus_sample()
    binary = Volume((np.asarray(label.array) > 0).astype(np.uint8), label.spacing, is_label=True)
    out = evaluate_on_cases(packaged, [("s", image, binary)])
    assert out["cases"] == 1 and set(out["dice_per_class"]) == {"organ"}
    assert 0.0 <= out["dice_mean"] <= 1.0 and out["case_names"] == ["s"]
    assert read_checkpoint_metadata(packaged)["model_card"]["title"] == "Tiny test model"
