"""napari integration: reader per format, writers from layers, sample data, npe2 manifest; real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from napari_sscce.io.napari_io import get_reader, volume_from_layer, write_image, write_labels
from napari_sscce.io.readers import read_image_label, read_volume
from napari_sscce.io.sample_data import hippocampus_sample, synthetic_sample
from napari_sscce.io.volume import Volume

needs_display = pytest.mark.skipif(
    not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run -a"
)
SHAPE_XYZ = (12, 10, 8)


def make_files(folder: Path) -> dict[str, tuple[Path, str, tuple[float, float, float]]]:
    """One small file per format: name -> (path, expected layer type, expected scale (z, y, x))."""
    rng = np.random.default_rng(0)
    data = rng.random(SHAPE_XYZ).astype(np.float32)
    labels = (data > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])), folder / "scan.nii.gz")
    (folder / "labels").mkdir()
    nib.save(nib.Nifti1Image(labels, np.diag([0.5, 0.6, 2.0, 1.0])), folder / "labels" / "scan.nii.gz")
    nrrd.write(str(folder / "scan.nrrd"), data, {"space": "left-posterior-superior",
                                                 "space directions": np.diag([0.5, 0.6, 2.0])})
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    image.SetSpacing((0.5, 0.6, 2.0))
    sitk.WriteImage(image, str(folder / "scan.mha"))
    tifffile.imwrite(folder / "scan.tif", data.transpose(2, 1, 0), imagej=True,
                     resolution=(1 / 0.5, 1 / 0.6), metadata={"spacing": 2.0, "unit": "mm", "axes": "ZYX"})
    with h5py.File(folder / "la.h5", "w") as f:
        f["image"] = data
        f["label"] = labels
    return {
        "nifti": (folder / "scan.nii.gz", "image", (2.0, 0.6, 0.5)),
        "nifti_labels": (folder / "labels" / "scan.nii.gz", "labels", (2.0, 0.6, 0.5)),
        "nrrd": (folder / "scan.nrrd", "image", (2.0, 0.6, 0.5)),
        "mha": (folder / "scan.mha", "image", (2.0, 0.6, 0.5)),
        "tiff": (folder / "scan.tif", "image", (2.0, 0.6, 0.5)),
        "h5": (folder / "la.h5", "image+labels", (0.625, 0.625, 0.625)),
    }


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((20, 30), np.uint8))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    for path in ("notes.txt", "flat.tif", "other.h5", "missing.nii.gz", "."):
        assert get_reader(str(tmp_path / path)) is None, path
    (tmp_path / "ok").mkdir()
    files = make_files(tmp_path / "ok")
    assert all(get_reader(str(p)) is not None for p, _, _ in files.values())


def test_reader_layer_types_without_a_viewer(tmp_path):
    files = make_files(tmp_path)
    for name, (path, kind, scale) in files.items():
        layers = get_reader(str(path))(str(path))
        kinds = "+".join(layer[2] for layer in layers)
        assert kinds == kind, name
        for _, kwargs, _ in layers:
            np.testing.assert_allclose(kwargs["scale"], scale, rtol=1e-5, err_msg=name)


def test_writers_rebuild_geometry_from_layer_metadata(tmp_path):
    affine = np.array([[0.0, -0.6, 0.0, 5.0], [0.5, 0.0, 0.0, -3.0], [0.0, 0.0, 2.0, 9.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.ones(SHAPE_XYZ, np.float32), affine), tmp_path / "rot.nii.gz")
    source = read_volume(tmp_path / "rot.nii.gz")
    seg = source.with_array((source.array > 0).astype(np.uint8), is_label=True)
    meta = seg.layer_kwargs()
    assert write_labels(str(tmp_path / "seg.nii.gz"), seg.array, meta) == [str(tmp_path / "seg.nii.gz")]
    written = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    # without sscce metadata: scale + translate only
    plain = {"scale": [2.0, 1.0, 0.5], "translate": [1.0, 2.0, 3.0], "metadata": {}}
    write_image(str(tmp_path / "img.nrrd"), np.zeros((3, 4, 5), np.float64), plain)
    vol = read_volume(tmp_path / "img.nrrd")
    assert vol.array.dtype == np.float32 and vol.spacing == (2.0, 1.0, 0.5)
    np.testing.assert_allclose(vol.translate, (1.0, 2.0, 3.0))


def test_volume_from_layer_ignores_stale_geometry():
    vol = Volume(np.zeros((3, 4, 5)), spacing=(1.0, 1.0, 1.0))
    meta = {**vol.layer_kwargs(), "scale": [3.0, 1.0, 1.0]}  # the user changed the scale in napari
    assert volume_from_layer(vol.array, meta, is_label=False).spacing == (3.0, 1.0, 1.0)


def test_synthetic_sample_layer_data():
    layers = synthetic_sample()
    assert [kind for *_, kind in layers] == ["image", "labels"]
    (image, image_kwargs, _), (labels, label_kwargs, _) = layers
    assert image.shape == labels.shape == (48, 64, 64)
    assert tuple(image_kwargs["scale"]) == tuple(label_kwargs["scale"]) == (1.5, 1.0, 1.0)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_hippocampus_sample_is_packaged_and_credited(monkeypatch):
    import napari_sscce.io.sample_data as sample_data

    monkeypatch.setattr(sample_data, "find_shared_data", lambda: None)  # works without ../shared
    (image, image_kwargs, _), (labels, label_kwargs, kind) = hippocampus_sample()
    assert kind == "labels" and image.shape == labels.shape and image.ndim == 3
    assert set(np.unique(labels)) == {0, 1, 2}
    assert "CC-BY-SA 4.0" in image_kwargs["metadata"]["license"]
    assert "Decathlon" in label_kwargs["metadata"]["credit"]
    info = sample_data.sample_info()
    second = sample_data.hippocampus_sample_2()
    assert second[0][1]["name"] == info["cases"][1] != image_kwargs["name"]
    with pytest.raises(FileNotFoundError, match="hippocampus_252"):
        sample_data.load_hippocampus_sample("hippocampus_999")


def test_packaged_files_are_package_data():
    """Subfolders of data/ ship: pyproject's package-data globs match the sample and model files."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "src" / "napari_sscce"
    shipped = {p for g in globs["napari_sscce"] for p in package.glob(g) if p.is_file()}
    data = {p for p in (package / "data").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert data and data <= shipped


def test_npe2_validate():
    npe2 = Path(sys.executable).parent / "npe2"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([str(npe2), "validate", "napari_sscce"], capture_output=True, env=env,
                            timeout=120, text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fmt", ["nifti", "nifti_labels", "nrrd", "mha", "tiff", "h5"])
@pytest.mark.usefixtures("qtbot")
@pytest.mark.gui
@needs_display
def test_viewer_opens_each_format(make_napari_viewer, tmp_path, fmt):
    path, kind, scale = make_files(tmp_path)[fmt]
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-sscce")
    types = "+".join(type(layer).__name__.lower() for layer in viewer.layers)
    assert types == kind
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, scale, rtol=1e-5)


@pytest.mark.gui
@needs_display
def test_viewer_save_labels_round_trip(make_napari_viewer, tmp_path):
    path, _, _ = make_files(tmp_path)["nifti"]
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin="napari-sscce")
    labels = viewer.add_labels((image.data > 0.5).astype(np.uint8), **{k: v for k, v in
                               read_volume(path).layer_kwargs().items() if k != "name"}, name="seg")
    labels.save(str(tmp_path / "seg.nii.gz"), plugin="napari-sscce")
    np.testing.assert_allclose(nib.load(tmp_path / "seg.nii.gz").affine, nib.load(path).affine)


def test_real_hippocampus_case(shared_data):
    folder = shared_data / "hippocampus"
    if not folder.is_dir():
        pytest.skip("hippocampus data absent")
    image_path = sorted((folder / "images").glob("*.nii.gz"))[0]
    image = read_volume(image_path)
    label = read_volume(folder / "labels" / image_path.name)
    assert not image.is_label and label.is_label
    assert image.shape == label.shape and image.spacing == label.spacing
    assert set(np.unique(label.array)) <= {0, 1, 2}
    assert (label.array > 0).any()
    layers = hippocampus_sample()
    assert [kind for *_, kind in layers] == ["image", "labels"]


def test_real_la_case(shared_data):
    files = sorted((shared_data / "la2018").glob("*.h5"))
    if not files:
        pytest.skip("LA data absent")
    image, label = read_image_label(files[0])
    assert image.shape == label.shape and image.shape[0] == 88  # 88 slices, z first
    assert image.spacing == (0.625, 0.625, 0.625)
    assert set(np.unique(label.array)) == {0, 1}


def test_the_reader_claims_exactly_the_formats_it_reads():
    import yaml

    from napari_sscce.io.readers import SUFFIX_FORMATS

    manifest = Path(__file__).resolve().parents[2] / "src" / "napari_sscce" / "napari.yaml"
    (reader,) = yaml.safe_load(manifest.read_text(encoding="utf-8"))["contributions"]["readers"]
    patterns = set(reader["filename_patterns"])
    assert "*" not in patterns  # napari offers other readers every file we do not read
    expected = {f"*{s}" for s in SUFFIX_FORMATS} | {f"*{s.upper()}" for s in SUFFIX_FORMATS}
    assert patterns == expected
    assert reader["accepts_directories"] is True  # DICOM series folders
