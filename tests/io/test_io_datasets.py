"""Dataset layouts, splits, lazy loading, unpaired files; synthetic sample data."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from napari_sscce.io import datasets
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.sample_data import make_synthetic, make_synthetic_dataset
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume

SHAPE = (8, 10, 12)


def write_case(path, seed, label=False):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 3, SHAPE).astype(np.uint8) if label else rng.random(SHAPE).astype(np.float32)
    write_volume(Volume(array, spacing=(2.0, 1.0, 1.0), is_label=label), path)
    return array


@pytest.fixture
def count_reads(monkeypatch):
    """Count volume reads made by the dataset module."""
    calls = []
    real, real_multi = datasets.read_volume, datasets.read_multichannel

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    def counting_multi(*args, **kwargs):  # images (maybe several channels): one read per case
        calls.append(args[0])
        return real_multi(*args, **kwargs)

    monkeypatch.setattr(datasets, "read_volume", counting)
    monkeypatch.setattr(datasets, "read_multichannel", counting_multi)
    return calls


def test_images_labels_layout_with_masks_and_splits(tmp_path, count_reads):
    for i in range(4):
        write_case(tmp_path / "images" / f"c{i}.nii.gz", i)
    label = write_case(tmp_path / "labels" / "c0.nii.gz", 10, label=True)
    write_case(tmp_path / "labels" / "c1.nii.gz", 11, label=True)
    write_case(tmp_path / "masks" / "c0.nii.gz", 12, label=True)
    (tmp_path / "images" / ".DS_Store").write_text("junk")
    ds = open_dataset(tmp_path)
    assert count_reads == []  # lazy: nothing read yet
    assert ds.layout == "images_labels" and [c.name for c in ds.cases] == ["c0", "c1", "c2", "c3"]
    assert [c.name for c in ds.split("labeled")] == ["c0", "c1"]
    assert [c.name for c in ds.split("unlabeled")] == ["c2", "c3"]
    assert ds.split("val") == []
    image, lab, mask = ds.load_case("c0")
    np.testing.assert_array_equal(lab.array, label)
    assert image.spacing == (2.0, 1.0, 1.0) and mask is not None and lab.is_label
    assert ds.load_case(3)[1] is None
    (tmp_path / "splits.json").write_text(json.dumps({"labeled": ["c1"], "unlabeled": ["c0", "c2"],
                                                       "val": ["c3"]}))
    ds = open_dataset(tmp_path)
    assert [c.name for c in ds.split("val")] == ["c3"]
    assert [c.name for c in ds.split("unlabeled")] == ["c0", "c2"]
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("bogus")


def test_unpaired_label_files_are_named(tmp_path):
    write_case(tmp_path / "images" / "a.nii.gz", 0)
    write_case(tmp_path / "labels" / "a.nii.gz", 1, label=True)
    write_case(tmp_path / "labels" / "orphan.nii.gz", 2, label=True)
    with pytest.raises(VolumeError, match=r"labels: has 1 label files without a matching image: orphan\.nii"):
        open_dataset(tmp_path)


def test_splits_naming_unknown_cases(tmp_path):
    write_case(tmp_path / "images" / "a.nii.gz", 0)
    (tmp_path / "splits.json").write_text(json.dumps({"labeled": ["a", "ghost"]}))
    with pytest.raises(VolumeError, match="splits.json: lists 1 cases that are not in the dataset: ghost"):
        open_dataset(tmp_path)


def test_msd_layout_channel_suffix_and_test_images(tmp_path):
    write_case(tmp_path / "imagesTr" / "hip_001_0000.nii.gz", 0)
    write_case(tmp_path / "imagesTr" / "hip_001_0001.nii.gz", 1)  # second modality: not used
    write_case(tmp_path / "labelsTr" / "hip_001.nii.gz", 2, label=True)
    write_case(tmp_path / "imagesTs" / "hip_009.nii.gz", 3)
    ds = open_dataset(tmp_path)
    assert ds.layout == "msd"
    assert [(c.name, c.subset, c.is_labeled) for c in ds.cases] == [("hip_001", "train", True),
                                                                     ("hip_009", "test", False)]
    assert ds.cases[0].image_path.name == "hip_001_0000.nii.gz"
    assert [c.name for c in ds.split("labeled")] == ["hip_001"]
    assert ds.split("unlabeled") == []  # test images never leak into training
    assert [c.name for c in ds.split("test")] == ["hip_009"]
    write_case(tmp_path / "imagesTr" / "hip_002_0000.nii.gz", 4)
    with pytest.raises(VolumeError, match="without a label in labelsTr/: hip_002_0000"):
        open_dataset(tmp_path)


def test_la_layouts_flat_and_nested_with_train_list(tmp_path, rng):
    for path in (tmp_path / "A1.h5", tmp_path / "B2" / "mri_norm2.h5"):
        path.parent.mkdir(exist_ok=True)
        with h5py.File(path, "w") as f:
            f["image"] = rng.random((12, 10, 8)).astype(np.float32)
            f["label"] = (rng.random((12, 10, 8)) > 0.5).astype(np.uint8)
    ds = open_dataset(tmp_path)
    assert ds.layout == "la_h5" and [c.name for c in ds.cases] == ["A1", "B2"]
    assert [c.name for c in ds.split("labeled")] == ["A1", "B2"]
    image, label, mask = ds.load_case("B2")
    assert image.shape == label.shape == (8, 10, 12) and mask is None and image.spacing == (0.625,) * 3
    (tmp_path / "train.list").write_text("B2\nA1\n")
    assert [c.name for c in open_dataset(tmp_path).cases] == ["B2", "A1"]
    (tmp_path / "train.list").write_text("B2\nZZ9\n")
    with pytest.raises(VolumeError, match=r"train\.list: names 1 cases .*ZZ9"):
        open_dataset(tmp_path)


def test_large_dataset_is_lazy_and_bad_files_fail_on_load(tmp_path, count_reads):
    (tmp_path / "images").mkdir()
    for i in range(300):
        (tmp_path / "images" / f"case{i:03d}.nii.gz").write_bytes(b"not a nifti")
    ds = open_dataset(tmp_path)
    assert len(ds) == 300 and count_reads == []
    with pytest.raises(VolumeError, match=r"case007\.nii\.gz: cannot be read as NIfTI"):
        ds.load_case("case007")
    assert len(count_reads) == 1


def test_not_a_dataset_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(VolumeError, match="is not a dataset folder"):
        open_dataset(tmp_path)


def test_make_synthetic_is_deterministic_and_plausible():
    image, label = make_synthetic(shape=(16, 24, 24), seed=3)
    image2, label2 = make_synthetic(shape=(16, 24, 24), seed=3)
    other, _ = make_synthetic(shape=(16, 24, 24), seed=4)
    np.testing.assert_array_equal(image.array, image2.array)
    np.testing.assert_array_equal(label.array, label2.array)
    assert not np.array_equal(image.array, other.array)
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert image.spacing == label.spacing == (1.5, 1.0, 1.0)
    assert set(np.unique(label.array)) == {0, 1}
    organ = label.array == 1
    assert 0.01 < organ.mean() < 0.5
    assert image.array[organ].mean() > 1.3 * image.array[~organ].mean()  # organ is brighter
    assert image.array.min() >= 0  # Rician magnitude


def test_make_synthetic_three_classes_touch():
    _, label = make_synthetic(shape=(24, 32, 32), seed=0, num_classes=3)
    parts = label.array
    assert set(np.unique(parts)) == {0, 1, 2}
    one = parts == 1
    grown = np.zeros_like(one)
    grown[:, :, 1:] |= one[:, :, :-1]
    grown[:, :, :-1] |= one[:, :, 1:]
    assert np.any(grown & (parts == 2))  # the two parts share a boundary


def test_make_synthetic_dataset_opens_as_dataset(tmp_path):
    folder = make_synthetic_dataset(tmp_path / "ds", 5, shape=(8, 12, 12), num_classes=3)
    ds = open_dataset(folder)
    assert len(ds) == 5
    assert [len(ds.split(s)) for s in ("labeled", "unlabeled", "val")] == [1, 3, 1]
    image, label, _ = ds.load_case(0)
    assert image.shape == label.shape == (8, 12, 12)
    assert label.array.max() <= 2 and image.spacing == (1.5, 1.0, 1.0)
