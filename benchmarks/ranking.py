"""Does the first look land on the errors? Slice and region ranking of the packaged models on unseen scans.

For every validation case of a packaged model (its model card's ``val_cases``: never trained on) the scan is
segmented once with the product's defaults (:func:`napari_sscce.inference.predict.predict_volume`;
``--tta``: with mirroring), and the product's own ranking
(:func:`napari_sscce.uncertainty.export.ranking_report`, the call behind ``sscce predict --regions``) is
compared with the truth (wrong voxels = predicted label != ground truth, on the scan's grid, full resolution):

- **slices**: the wrong voxels in the 10 top-ranked axial slices (axis 0 of the array, z) divided by the
  wrong voxels in the 10 truly worst slices (an oracle that knows the errors); also for k = 5 and 20;
- **regions**: the share of wrong voxels inside each of the 5 top-ranked regions (their precision), the mean
  over the five, and the share of all wrong voxels the 5 (and 10) regions hold (their recall).

Predictions are cached (``--cache``), so ranking changes are re-measured in seconds.

Usage::

    python benchmarks/ranking.py --model left-atrium-cce --data ../shared/data/la2018
    python benchmarks/ranking.py --model hippocampus-cce --data ../shared/data/hippocampus

Writes ``benchmarks/results/ranking_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
from napari_sscce.io.datasets import open_dataset
from napari_sscce.precision import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def predict_cached(model_name: str, data: Path, cache: Path, max_cases: int | None,
                   tta: bool = False) -> list[dict[str, Any]]:
    """``[{"name", "labels", "entropy", "kl", "gt", "spacing"}]`` of the model's validation cases (cached)."""
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.models.checkpoint import load_checkpoint, read_checkpoint_metadata
    from napari_sscce.models.pretrained import get_model

    path = get_model(model_name).path
    metadata = read_checkpoint_metadata(path)
    names = list(metadata["model_card"]["val_cases"])[:max_cases]
    num_classes = int(metadata.get("num_classes") or 2)
    dataset = open_dataset(data)
    cache.mkdir(parents=True, exist_ok=True)
    ckpt = None
    cases = []
    for name in names:
        file = cache / f"{model_name}{'_tta' if tta else ''}_{name}.npz"
        if not file.exists():
            ckpt = ckpt or load_checkpoint(path)
            image, label, _ = dataset.load_case(name)
            t = time.perf_counter()
            pred = predict_volume(ckpt.model, image, InferenceConfig(tta=tta), metadata=ckpt.metadata)
            print(f"  {name}: segmented in {time.perf_counter() - t:.1f} s", flush=True)
            tmp = file.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, labels=pred.labels.astype(np.uint8),
                                entropy=pred.entropy.astype(np.float16), kl=pred.kl.astype(np.float16),
                                gt=np.asarray(label.array).astype(np.uint8),
                                spacing=np.asarray(image.spacing))
            tmp.replace(file)
        with np.load(file) as z:
            cases.append({"name": name, "num_classes": num_classes, **{k: z[k] for k in z.files}})
    return cases


def ranking_of(case: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The product's ranking of a cached case (:func:`napari_sscce.uncertainty.export.ranking_report`)."""
    from napari_sscce.uncertainty.export import ranking_report

    return ranking_report(case["labels"], case["entropy"].astype(np.float32), case["kl"].astype(np.float32),
                          tuple(case["spacing"]), num_classes=case.get("num_classes"))


def slice_capture(case: dict[str, Any], report: dict[str, Any], k: int) -> float:
    """Wrong voxels in the top-k ranked axial slices / wrong voxels in the k truly worst ones."""
    wrong = (case["labels"] != case["gt"]).sum(axis=(1, 2))
    ranked = [s["index"] for s in report["slices"][:k]]
    best = np.sort(wrong)[::-1][:k].sum()
    return float(wrong[ranked].sum() / best) if best else 1.0


def region_figures(case: dict[str, Any], image: np.ndarray, report: dict[str, Any], top: int = 5) -> dict:
    """Precision of each of the ``top`` ranked regions and the share of all wrong voxels they hold."""
    wrong = case["labels"] != case["gt"]
    total = int(wrong.sum())
    regions = report["regions"]
    precisions = [float(wrong[image == r["rank"]].mean()) for r in regions[:top]]
    held = {n: int(wrong[(image > 0) & (image <= n)].sum()) for n in (top, 2 * top)}
    return {
        "regions": len(regions),
        "threshold": report["threshold"],
        "precision": precisions,
        "mean_precision": float(np.mean(precisions)) if precisions else 0.0,
        "recall_top": {str(n): (h / total if total else 1.0) for n, h in held.items()},
        "sizes": [r["size_voxels"] for r in regions[:top]],
    }


#: error-probability bins of the calibration table (what bounds a region's precision)
CALIBRATION_BINS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.48, 0.5001)


def calibration(cases: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Share of wrong voxels per bin of the error probability the product's map implies.

    ``u = max(entropy, kl)`` (:func:`~napari_sscce.uncertainty.maps.combined_uncertainty`) turned into an
    error probability (:func:`~napari_sscce.uncertainty.maps.error_probability`); a calibrated model has
    each bin's wrong share near its error probability, and then no set of voxels chosen from the map is wrong
    more than about half the time.
    """
    from napari_sscce.uncertainty.maps import binary_reading, combined_uncertainty, error_probability

    counts = np.zeros(len(CALIBRATION_BINS) - 1)
    wrongs = np.zeros(len(CALIBRATION_BINS) - 1)
    for case in cases:
        h = binary_reading(case["entropy"].astype(np.float32), case.get("num_classes"))
        e = error_probability(combined_uncertainty(h, case["kl"].astype(np.float32))).ravel()
        wrong = (case["labels"] != case["gt"]).ravel()
        idx = np.digitize(e, CALIBRATION_BINS) - 1
        ok = (idx >= 0) & (idx < len(counts))
        counts += np.bincount(idx[ok], minlength=len(counts))[: len(counts)]
        wrongs += np.bincount(idx[ok], weights=wrong[ok], minlength=len(counts))[: len(counts)]
    return [{"low": lo, "high": min(hi, 0.5), "voxels": int(n), "wrong_share": float(w / n) if n else 0.0}
            for lo, hi, n, w in zip(CALIBRATION_BINS[:-1], CALIBRATION_BINS[1:], counts, wrongs, strict=True)]


def evaluate(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-case and mean figures of the product's current ranking, and the calibration table."""
    rows = []
    for case in cases:
        t = time.perf_counter()
        image, report = ranking_of(case)
        row = {"name": case["name"]}
        row.update({f"slices_top{k}": slice_capture(case, report, k) for k in (5, 10, 20)})
        row.update(region_figures(case, image, report))
        row["dice"] = _dice(case)
        row["rank_seconds"] = time.perf_counter() - t
        rows.append(row)
    mean = {key: float(np.mean([r[key] for r in rows]))
            for key in ("slices_top5", "slices_top10", "slices_top20", "mean_precision", "dice",
                        "rank_seconds")}
    mean["recall_top5"] = float(np.mean([r["recall_top"]["5"] for r in rows]))
    mean["recall_top10"] = float(np.mean([r["recall_top"]["10"] for r in rows]))
    mean["regions"] = float(np.mean([r["regions"] for r in rows]))
    return {"mean": mean, "cases": rows, "calibration": calibration(cases)}


def _dice(case: dict[str, Any]) -> float:
    from napari_sscce.metrics.surface import mean_dice

    return mean_dice(case["labels"], case["gt"], range(1, int(case["gt"].max()) + 1))




def to_markdown(result: dict[str, Any]) -> str:
    m = result["mean"]
    lines = [
        f"# Ranking on unseen scans: {result['model']}",
        "",
        f"{len(result['cases'])} validation cases of the model card (never trained on), full-resolution "
        "labels; "
        f"{result['machine']}; product defaults{' with mirroring TTA' if result.get('tta') else ''}.",
        "",
        "| figure | mean |",
        "|---|---|",
        f"| wrong voxels in the 10 top-ranked slices / in the 10 truly worst | {m['slices_top10']:.1%} |",
        f"| same for 5 / 20 slices | {m['slices_top5']:.1%} / {m['slices_top20']:.1%} |",
        f"| mean precision of the 5 top-ranked regions (share of their voxels that are wrong) "
        f"| {m['mean_precision']:.1%} |",
        f"| share of all wrong voxels in the 5 / 10 top regions "
        f"| {m['recall_top5']:.1%} / {m['recall_top10']:.1%} |",
        f"| regions per scan | {m['regions']:.1f} |",
        f"| mean Dice of the segmentation | {m['dice']:.3f} |",
        f"| ranking time per scan | {m['rank_seconds']:.2f} s |",
        "",
        "| case | Dice | top-10 slices | region precision (5) | regions |",
        "|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        prec = " ".join(f"{p:.0%}" for p in r["precision"])
        lines.append(f"| {r['name']} | {r['dice']:.3f} | {r['slices_top10']:.0%} | {prec} | {r['regions']} |")
    if result.get("calibration"):
        lines += ["", "Calibration (error probability of the product's map -> share of those voxels wrong; "
                  "a region's precision cannot pass the top bins' share):", "",
                  "| error probability | voxels | wrong |", "|---|---|---|"]
        lines += [f"| {b['low']:.2f}-{b['high']:.2f} | {b['voxels']} | {b['wrong_share']:.1%} |"
                  for b in result["calibration"]]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="left-atrium-cce")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "la2018")
    p.add_argument("--cache", type=Path, default=Path("/tmp/sscce_ranking_cache"))
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--tta", action="store_true", help="segment with mirroring test-time augmentation")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="results file stem (default ranking_<model>)")
    args = p.parse_args(argv)
    import torch

    t = time.perf_counter()
    cases = predict_cached(args.model, args.data, args.cache, args.max_cases, args.tta)
    command = "python benchmarks/ranking.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads"
    result = {"model": args.model, "tta": args.tta, "machine": machine, "command": command, **evaluate(cases)}
    result["seconds"] = time.perf_counter() - t
    stem = args.name or f"ranking_{args.model}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", result)
    atomic_write_bytes(args.out / f"{stem}.md", to_markdown(result).encode())
    print(json.dumps(result["mean"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
