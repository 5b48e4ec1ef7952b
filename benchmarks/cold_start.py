"""Start from nothing: a first model from a few painted slices, scored on scans it never saw.

The scenario of issue 27: ``--scans`` scans of a dataset, the true label painted into ``--slices`` evenly
spaced axial slices of each (the annotation mask marks only those slices), "Train new model" with its
defaults and a time budget (:func:`napari_sscce.loop.run_finetune` with ``cold_start=True`` and
``budget_seconds``), then the model segments ``--eval`` other scans of the same dataset (full resolution,
the product's own inference) and is scored with mean foreground Dice against their labels.

Results are appended to ``benchmarks/results/cold_start.json`` (and ``.md`` rewritten) with the CPU model,
the plan, the wall time and the per-case Dice. A failing stage raises (non-zero exit, nothing written).

Usage::

    python benchmarks/cold_start.py --data ../shared/data/la2018 --budget 720
    python benchmarks/cold_start.py --data ../shared/data/hippocampus --slices 4 --budget 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def painted_slices(depth: int, count: int) -> list[int]:
    """``count`` evenly spaced axial slice indices inside ``depth`` (not the first or last)."""
    return [int(round((k + 1) * depth / (count + 1))) for k in range(count)]


def run(args) -> dict:
    """Build the workspace, train, evaluate; returns the result record."""
    import torch

    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.loop import run_finetune
    from napari_sscce.metrics.surface import dice
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.precision import cpu_model
    from napari_sscce.workspace import Workspace

    torch.set_num_threads(args.threads)
    ds = open_dataset(str(args.data))
    split = json.loads((Path(args.data) / "splits.json").read_text())
    pool = list(split.get("labeled", [])) + list(split.get("unlabeled", [])) + list(split.get("val", []))
    train_names = pool[args.offset: args.offset + args.scans]
    eval_names = [n for n in (split.get("val") or pool[::-1]) if n not in train_names][: args.eval]
    work = Path(tempfile.mkdtemp(prefix="sscce_cold_"))
    ws = Workspace(work / "workspace")
    for name in train_names:
        image, label, _ = ds.load_case(name)
        mask = np.zeros(label.shape, np.uint8)
        mask[painted_slices(label.shape[0], args.slices)] = 1
        painted = np.where(mask > 0, np.asarray(label.array), 0).astype(np.uint8)
        ws.add_case(image, label.with_array(painted, is_label=True), label.with_array(mask, is_label=True),
                    name=name)
    start = time.perf_counter()
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    result = run_finetune(ws, cold_start=True, budget_seconds=args.budget, seed=args.seed, device="cpu",
                          **({"method": args.method} if args.method else {}), **changes)
    train_seconds = time.perf_counter() - start
    if result.cancelled or result.model_path is None or not result.adopted:
        raise RuntimeError(f"cold start produced no model in use: {result.message}")
    model = load_checkpoint(result.model_path)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(result.model_path, args.keep / Path(result.model_path).name)
    variants = {"plain": InferenceConfig(device="cpu"),
                "tta_lcc": InferenceConfig(device="cpu", tta=True, largest_component=True)}
    scores: dict[str, dict[str, float]] = {k: {} for k in variants}
    seconds = []
    for name in eval_names:
        image, label, _ = ds.load_case(name)
        gt = np.asarray(label.array)
        classes = range(1, int(model.metadata.get("num_classes") or max(2, int(gt.max()) + 1)))
        for key, icfg in variants.items():
            t0 = time.perf_counter()
            pred = predict_volume(model, image, icfg)
            if key == "plain":
                seconds.append(time.perf_counter() - t0)
            scores[key][name] = float(np.mean([dice(pred.labels == c, gt == c) for c in classes]))
    config = json.loads((Path(result.train.best_path).parent / "config.json").read_text())
    return {
        "data": Path(args.data).name, "scans": train_names, "slices_per_scan": args.slices,
        "budget_seconds": args.budget, "train_seconds": round(train_seconds, 1),
        "plan": config.get("plan"), "method": config.get("method"), "message": result.message,
        "eval_cases": len(scores["plain"]), "mean_dice": float(np.mean(list(scores["plain"].values()))),
        "mean_dice_tta_lcc": float(np.mean(list(scores["tta_lcc"].values()))),
        "dice": scores["plain"], "dice_tta_lcc": scores["tta_lcc"],
        "inference_seconds_median": float(np.median(seconds)),
        "changes": changes, "cpu": cpu_model(), "threads": args.threads, "seed": args.seed,
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(records: list[dict]) -> str:
    lines = ["# Cold start: a first model from painted slices", "",
             "| data | scans x slices | method | plan | budget | trained in | eval cases | mean Dice "
             "| with TTA + largest component | CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        plan = r.get("plan") or {}
        patch = "x".join(map(str, plan.get("patch_size", [])))
        spacing = plan.get("target_spacing", ["?"])[0]
        what = f"{patch} at {spacing} mm, {plan.get('iterations')} it" if plan else "-"
        tta = f"{r['mean_dice_tta_lcc']:.3f}" if "mean_dice_tta_lcc" in r else "-"
        extra = ", ".join(f"{k}={v}" for k, v in (r.get("changes") or {}).items())
        note = f"; {extra}" if extra else ""
        lines.append(f"| {r['data']} | {len(r['scans'])} x {r['slices_per_scan']} | {r['method']} | {what} | "
                     f"{r['budget_seconds'] / 60:.0f} min | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['eval_cases']} | **{r['mean_dice']:.3f}** | {tta} | {r['cpu']}, "
                     f"{r['threads']} threads{note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run one scenario; append its record."""
    from napari_sscce.atomic import atomic_write_bytes, atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--offset", type=int, default=0, help="first case of the pool used for training")
    parser.add_argument("--eval", type=int, default=10)
    parser.add_argument("--budget", type=float, default=720.0, help="seconds")
    parser.add_argument("--method", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="a TrainConfig field for this run, e.g. --set augment_intensity=true")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_start.json")
    parser.add_argument("--keep", type=Path, default=None, help="copy the trained model into this folder")
    args = parser.parse_args(argv)
    record = run(args)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    records.append(record)
    atomic_write_json(args.out, records)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(records).encode())
    print(json.dumps({k: v for k, v in record.items() if k != "dice"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
