"""Generated and real sample volumes: for tests, the demo and napari's *File > Open Sample*.

:func:`make_synthetic` draws a smooth irregular "organ" in a body-like background with what makes
MRI segmentation non-trivial: Rician noise, a smooth multiplicative bias field and partial-volume
blur at the organ's edge. :func:`hippocampus_sample` opens a real hippocampus MRI with its labels that
ships with the package (``napari_sscce/data/samples``: two small validation cases of MSD Task04,
CC-BY-SA 4.0, credited in ``samples.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_sscce.atomic import atomic_write_json
from napari_sscce.io.volume import Volume

#: environment variable pointing at the shared data folder (the one holding ``hippocampus/``)
SHARED_DATA_ENV = "SSCCE_SHARED_DATA"
#: the packaged hippocampus case shown by :func:`hippocampus_sample` (a validation case of ``splits.json``,
#: so the packaged hippocampus model never trained on it)
HIPPOCAMPUS_CASE = "hippocampus_252"


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1]: cubic upsampling of a coarse Gaussian grid."""
    grid = rng.standard_normal((coarse, coarse, coarse))
    field = ndimage.zoom(grid, [n / coarse for n in shape], order=3, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    return field / max(float(np.abs(field).max()), 1e-8)


def make_synthetic(
    shape: Sequence[int] = (48, 64, 64),
    spacing: Sequence[float] = (1.5, 1.0, 1.0),
    seed: int = 0,
    num_classes: int = 2,
) -> tuple[Volume, Volume]:
    """Make an MRI-like scan of one irregular organ and its label map.

    Parameters
    ----------
    shape : sequence of int
        Grid (z, y, x).
    spacing : sequence of float
        Voxel size in mm (z, y, x); the organ is round in millimetres, not in voxels.
    seed : int
        Same seed, same volumes.
    num_classes : int
        2: background + organ. 3: the organ is cut by a curved surface into two touching parts
        (labels 1 and 2, like the hippocampus' anterior and posterior parts) with different
        intensities.

    Returns
    -------
    (Volume, Volume)
        Scan (float32, about 0..1000) and label map (uint8), both with ``spacing``.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, not {num_classes}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    spacing_arr = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape) * spacing_arr
    center = extent / 2 + rng.uniform(-0.08, 0.08, 3) * extent
    radii = extent * rng.uniform(0.22, 0.3, 3)
    coords = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing_arr, strict=True)],
                         indexing="ij", sparse=True)
    rel = [(c - m) / r for c, m, r in zip(coords, center, radii, strict=True)]
    distance = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
    organ = distance + 0.25 * _smooth_field(rng, shape) < 1.0
    labels, n = ndimage.label(organ)
    if n > 1:  # keep the largest piece: one organ
        sizes = ndimage.sum_labels(organ, labels, index=range(1, n + 1))
        organ = labels == (1 + int(np.argmax(sizes)))
    label = organ.astype(np.uint8)
    if num_classes == 3:
        bend = 0.3 * rel[1] ** 2 + 0.15 * _smooth_field(rng, shape, coarse=3)
        label[organ & (rel[2] + bend > 0.1)] = 2

    body = np.sqrt(sum(((c - e / 2) / (0.48 * e)) ** 2 for c, e in zip(coords, extent, strict=True))) < 1.0
    tissue = np.where(body, 0.45, 0.05) + 0.08 * _smooth_field(rng, shape, coarse=6)
    intensity = np.select([label == 1, label == 2], [0.9, 0.7], default=tissue)
    pv_sigma = 0.8 * spacing_arr.min() / spacing_arr  # partial-volume blur, in voxels per axis
    blurred = ndimage.gaussian_filter(intensity, sigma=pv_sigma)
    bias = 1.0 + 0.2 * _smooth_field(rng, shape, coarse=3)
    clean = blurred * bias
    sigma = 0.06
    noisy = np.hypot(clean + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    image = (1000.0 * noisy).astype(np.float32)
    meta = {"name": "synthetic", "seed": seed}
    image_volume = Volume(image, spacing=tuple(spacing_arr), metadata=meta)
    label_volume = Volume(label, spacing=tuple(spacing_arr), metadata={**meta, "name": "synthetic_labels"},
                          is_label=True)
    return image_volume, label_volume


def make_synthetic_dataset(
    folder: str | os.PathLike,
    n_cases: int,
    *,
    shape: Sequence[int] = (32, 48, 48),
    spacing: Sequence[float] = (1.5, 1.0, 1.0),
    num_classes: int = 2,
    n_labeled: int | None = None,
    n_val: int | None = None,
    seed: int = 0,
) -> Path:
    """Write an ``images/ + labels/ + splits.json`` dataset of synthetic cases.

    Cases are ``case_000`` ... with seeds ``seed``, ``seed + 1``...; every case gets a label file.
    ``splits.json`` lists the first ``n_labeled`` cases (default 20 %, at least 1) as ``labeled``,
    the last ``n_val`` (default 20 % when there are 3 or more cases) as ``val``, the rest as
    ``unlabeled``.

    Returns
    -------
    pathlib.Path
        ``folder``, ready for :func:`napari_sscce.io.datasets.open_dataset`.
    """
    from napari_sscce.io.writers import write_volume

    folder = Path(folder)
    names = [f"case_{i:03d}" for i in range(n_cases)]
    for i, name in enumerate(names):
        image, label = make_synthetic(shape, spacing, seed=seed + i, num_classes=num_classes)
        write_volume(image, folder / "images" / f"{name}.nii.gz")
        write_volume(label, folder / "labels" / f"{name}.nii.gz")
    n_labeled = max(1, round(0.2 * n_cases)) if n_labeled is None else n_labeled
    n_val = (max(1, round(0.2 * n_cases)) if n_cases >= 3 else 0) if n_val is None else n_val
    if n_labeled + n_val > n_cases:
        raise ValueError(f"{n_labeled} labeled + {n_val} val cases exceed the {n_cases} cases")
    splits = {
        "labeled": names[:n_labeled],
        "unlabeled": names[n_labeled : n_cases - n_val],
        "val": names[n_cases - n_val :],
    }
    atomic_write_json(folder / "splits.json", splits)
    return folder


def find_shared_data() -> Path | None:
    """The shared data folder: ``$SSCCE_SHARED_DATA``, else ``../shared/data`` beside the source checkout."""
    env = os.environ.get(SHARED_DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


def layer_data(image: Volume, label: Volume | None) -> list[tuple[Any, dict, str]]:
    """napari LayerData tuples for a scan and its labels, on the volume's grid (scale = spacing)."""
    name = str(image.metadata.get("sample_name") or image.name)
    image_kwargs = {**image.layer_kwargs(), "colormap": "gray", "name": name}
    layers: list[tuple[Any, dict, str]] = [(image.array, image_kwargs, "image")]
    if label is not None:
        label_kwargs = {**label.layer_kwargs(), "name": f"{name} labels", "opacity": 0.5}
        layers.append((label.array, label_kwargs, "labels"))
    return layers


def synthetic_sample() -> list[tuple[Any, dict, str]]:
    """npe2 sample: a synthetic 3-class organ scan and its labels (1.5 x 1 x 1 mm voxels)."""
    image, label = make_synthetic(num_classes=3)
    return layer_data(image, label)


def sample_folder() -> Path:
    """The folder of the real sample cases shipped with the package (``napari_sscce/data/samples``)."""
    return Path(str(resources.files("napari_sscce") / "data" / "samples"))


def sample_info() -> dict[str, Any]:
    """The samples' description: source, licence, credit and case names (``samples.json``)."""
    return json.loads((sample_folder() / "samples.json").read_text(encoding="utf-8"))


def load_hippocampus_sample(case: str = HIPPOCAMPUS_CASE) -> tuple[Volume, Volume]:
    """A real hippocampus MRI and its labels, shipped with the package (works without ``../shared``).

    Parameters
    ----------
    case : str
        One of ``sample_info()["cases"]`` (default :data:`HIPPOCAMPUS_CASE`).

    Returns
    -------
    (Volume, Volume)
        The scan and its label map (0 background, 1 anterior, 2 posterior); both carry the licence and
        credit in ``metadata`` (``"license"``, ``"credit"``, ``"source_dataset"``).

    Raises
    ------
    FileNotFoundError
        When ``case`` is not one of the packaged samples.
    """
    from napari_sscce.io.readers import read_volume

    info = sample_info()
    if case not in info["cases"]:
        raise FileNotFoundError(f"no packaged sample {case!r}; the samples are {', '.join(info['cases'])}")
    folder = sample_folder()
    image = read_volume(folder / f"{case}_image.nii.gz", is_label=False)
    label = read_volume(folder / f"{case}_label.nii.gz", is_label=True)
    credit = {k: info[k] for k in ("source_dataset", "license", "credit")}
    image.metadata.update(credit, sample_name=case)
    label.metadata.update(credit)
    return image, label


def hippocampus_sample() -> list[tuple[Any, dict, str]]:
    """npe2 sample: a real hippocampus MRI (MSD Task04, CC-BY-SA 4.0) and its labels (in the package)."""
    image, label = load_hippocampus_sample()
    return layer_data(image, label)


def hippocampus_sample_2() -> list[tuple[Any, dict, str]]:
    """npe2 sample: the second packaged hippocampus MRI and its labels."""
    image, label = load_hippocampus_sample(sample_info()["cases"][1])
    return layer_data(image, label)
