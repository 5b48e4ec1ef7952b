"""Down-sample the LA 2018 training set for the CPU row of the semi-supervised benchmark.

The 80 cases of ``../shared/data/la2018`` (about 190 x 142 x 88 voxels of 0.625 mm) are resampled by
``--factor`` (default 2: about 95 x 71 x 44 voxels of 1.25 mm; image trilinear, label by trilinear
interpolation of the 0/1 map thresholded at 0.5) and written as ``images/`` + ``labels/`` NIfTI files
with a ``splits.json``:

- ``labeled``: the first 8 IDs of ``train.list`` (10 %, as the literature and ``la2018/splits.json``);
- ``unlabeled``: the next 52 IDs;
- ``val``: the last 20 IDs, held out of training entirely.

The standard 20 LA test cases are not in ``../shared`` (science.md), so 20 of the 80 training cases are
held out instead of being used as unlabeled data (the issue's 8 + 72 becomes 8 + 52 + 20 held out):
evaluating on volumes the method saw unlabeled would flatter the semi-supervised rows. The CPU row of
the README (factor 3: about 29 x 48 x 69 voxels of 1.875 mm, patch 48 x 48 x 24)::

    python benchmarks/prepare_la.py --factor 3 --out /tmp/sscce_la_ds3
    python benchmarks/semi_supervised.py --data /tmp/sscce_la_ds3 --patch 48 48 24 --iterations 1000 \\
        --base-filters 8 --no-dropout --device cpu --out benchmarks/results/ssl_la_cpu

The full-resolution recipe of the papers (112 x 112 x 80, 6000 iterations, base 16) is one command on a GPU
(README, "Semi-supervised benchmark").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_sscce.atomic import atomic_write_json
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.sample_data import find_shared_data
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.preprocessing import resample_to_shape

N_LABELED, N_VAL = 8, 20


def downsample_case(image: Volume, label: Volume, factor: float) -> tuple[Volume, Volume]:
    """Resample an image / binary label pair by ``factor`` (spacing grows by the actual shape ratio)."""
    shape = tuple(max(1, int(round(n / factor))) for n in image.shape)
    spacing = tuple(s * n / m for s, n, m in zip(image.spacing, image.shape, shape, strict=True))
    img = resample_to_shape(np.asarray(image.array, np.float32), shape, order=1)
    lab = resample_to_shape(np.asarray(label.array, np.float32), shape, order=1) >= 0.5
    return Volume(img.astype(np.float32), spacing), Volume(lab.astype(np.uint8), spacing, is_label=True)


def prepare(data: Path, out: Path, factor: float) -> dict[str, list[str]]:
    """Write the down-sampled copy and its ``splits.json``; returns the splits."""
    names = [n.strip() for n in (data / "train.list").read_text().splitlines() if n.strip()]
    dataset = open_dataset(data)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        target = out / "labels" / f"{name}.nii.gz"
        if target.exists() and (out / "images" / f"{name}.nii.gz").exists():
            continue
        image, label, _ = dataset.load_case(name)
        img, lab = downsample_case(image, label, factor)
        write_volume(img, out / "images" / f"{name}.nii.gz")
        write_volume(lab, target)
        print(f"{i + 1}/{len(names)} {name} {image.shape} -> {img.shape}", flush=True)
    splits = {
        "labeled": names[:N_LABELED],
        "unlabeled": names[N_LABELED:-N_VAL],
        "val": names[-N_VAL:],
    }
    atomic_write_json(out / "splits.json", splits)
    return splits


def main(argv=None) -> int:
    shared = find_shared_data() or Path("../shared/data")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=shared / "la2018")
    p.add_argument("--out", type=Path, default=Path("/tmp/sscce_la_ds2"))
    p.add_argument("--factor", type=float, default=2.0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    splits = prepare(args.data, args.out, args.factor)
    print(json.dumps({k: len(v) for k, v in splits.items()}), f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
