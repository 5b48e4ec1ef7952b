"""Does CCE with unlabeled scans beat supervised training on a generated domain shift? (issue 16)

One or more labeled "source scanner" scans (the generated organ at 0.9 over tissue at 0.45); unlabeled and
validation scans from a "target scanner" whose organ is darker (``--organ-factor``, 0.7 = 30 % darker). Both
methods train on the same labeled scans, seed and iterations (4 base filters, patch 16^3, lr 0.05 constant);
CCE also sees the unlabeled scans, which come from the target scanner or, as a control (``--control``), from
the source scanner. Mean foreground Dice on the target validation scans is printed and appended, with the
settings, to ``benchmarks/results/ssl_generated.json``.

Usage::

    python benchmarks/ssl_generated.py --seeds 0 1 2 3 --iterations 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 24, 24)
PATCH = (16, 16, 16)


def scan(seed: int, organ_factor: float = 1.0):
    """A generated scan and its labels; ``organ_factor`` < 1 darkens the organ (the target scanner)."""
    from napari_sscce.io.sample_data import make_synthetic

    image, label = make_synthetic(SHAPE, (1.5, 1.0, 1.0), seed=seed)
    array = np.asarray(image.array, dtype=np.float32)
    if organ_factor != 1.0:
        organ = ndimage.gaussian_filter((np.asarray(label.array) > 0).astype(np.float32), 0.8)
        array = array * (1.0 - (1.0 - organ_factor) * organ)
    return image.with_array(array.astype(np.float32)), label


def run(seed: int, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Supervised and CCE on one generated dataset; mean target validation Dice of each."""
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.io.writers import write_volume
    from napari_sscce.metrics import dice
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import train

    splits = {"labeled": [f"l{i}" for i in range(args.labeled)],
              "unlabeled": [f"u{i}" for i in range(args.unlabeled)], "val": [f"v{i}" for i in range(4)]}
    unlabeled_factor = 1.0 if args.control else args.organ_factor
    cases = {n: scan(1000 * seed + i) for i, n in enumerate(splits["labeled"])}
    for i, name in enumerate(splits["unlabeled"]):
        cases[name] = scan(1000 * seed + 100 + i, unlabeled_factor)
    cases.update({n: scan(1000 * seed + 200 + i, args.organ_factor) for i, n in enumerate(splits["val"])})
    data = folder / f"seed{seed}" / "data"
    for name, (image, label) in cases.items():
        write_volume(image, data / "images" / f"{name}.nii.gz")
        write_volume(label, data / "labels" / f"{name}.nii.gz")
    (data / "splits.json").write_text(json.dumps(splits))
    scores = {}
    for method in ("supervised", "cce"):
        config = TrainConfig(
            data=str(data), method=method, patch_size=PATCH, labeled_bs=2,
            unlabeled_bs=0 if method == "supervised" else 2, iterations=args.iterations, val_every=0,
            precision="fp32", base_filters=4, seed=seed, lr=0.05, schedule="constant", has_dropout=False,
            rampup_length=args.iterations * args.rampup, out=str(folder / f"seed{seed}" / method),
        )
        result = train(config)
        values = []
        for name in splits["val"]:
            image, label = cases[name]
            pred = predict_volume(result.last_path, image, InferenceConfig(patch_size=PATCH, device="cpu",
                                                                             precision="fp32")).labels == 1
            values.append(dice(pred, np.asarray(label.array) == 1))
        scores[method] = round(float(np.mean(values)), 4)
    return scores


def main(argv: list[str] | None = None) -> int:
    """Play every seed; print and append the results."""
    import torch

    from napari_sscce.atomic import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--organ-factor", type=float, default=0.7)
    parser.add_argument("--labeled", type=int, default=1)
    parser.add_argument("--unlabeled", type=int, default=4)
    parser.add_argument("--rampup", type=float, default=0.25, help="ramp-up length, share of the iterations")
    parser.add_argument("--control", action="store_true", help="unlabeled scans from the source scanner")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssl_generated.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="sscce_ssl_generated_"))
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        scores = run(seed, args, folder)
        row = {"seed": seed, **scores, "gain": round(scores["cce"] - scores["supervised"], 4),
               "iterations": args.iterations, "organ_factor": args.organ_factor, "labeled": args.labeled,
               "unlabeled": args.unlabeled, "control": args.control, "rampup": args.rampup,
               "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else []
    atomic_write_json(args.out, [*previous, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
