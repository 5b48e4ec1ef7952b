"""Does a fine-tune on uncertainty-ranked corrections make the model better? (issue 17's experiment)

Start from a model trained on a few labeled cases; segment ``--n-cases`` cases of the unlabeled pool; in each,
replace the ``--n-slices`` axial slices of highest summed entropy by the ground truth (as a person correcting
them would) and record them as the annotation mask; put those cases and ``--n-unlabeled`` further unlabeled
images into a workspace; fine-tune with :func:`napari_sscce.loop.run_finetune` (the widget's and
``sscce finetune``'s defaults); score the starting and every fine-tuned model on held-out cases never used in
training (Dice, mean of the foreground classes). Conditions:

``replay``   the starting model's labeled set is found and replayed (a model trained by this project)
``plain``    no labeled set available (a packaged model), no regularisation (what the loop did before)
``l2sp<W>``  no labeled set, L2-SP toward the starting weights with weight W
``distill<W>`` no labeled set, distillation from the starting model with voxel weight W (default 0.5)
a suffix ``_lr<X>`` sets the fine-tune's learning rate (default: the fine-tune default).

Usage (the issue-17 setting; OMP_NUM_THREADS=1, fp32, ~3 min per fine-tune on a 2-core CPU)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/finetune_gain.py \
        --model /tmp/models/hippo4_cce/best.safetensors --data ../shared/data/hippocampus \
        --split /tmp/models/hippo4_split.json --seeds 0 1

Writes ``benchmarks/results/finetune_gain.json`` and ``.md`` (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.datasets import load_splits, open_dataset
from napari_sscce.loop import run_finetune
from napari_sscce.metrics.surface import mean_dice as metrics_mean_dice
from napari_sscce.models.checkpoint import load_checkpoint, read_checkpoint_metadata
from napari_sscce.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"


def condition_kwargs(name: str) -> dict[str, Any]:
    """``run_finetune`` arguments of a condition name such as ``replay``, ``plain_lr0.001``, ``l2sp10``."""
    base, _, lr = name.partition("_lr")
    kwargs: dict[str, Any] = {"lr": float(lr)} if lr else {}
    if base == "replay":
        return {**kwargs, "replay": True}
    if base == "plain":
        return {**kwargs, "replay": False, "l2sp": 0.0, "distill": 0.0}
    if base.startswith("distill"):
        return {**kwargs, "replay": False, "l2sp": 0.0, "distill": float(base[7:] or 0.5)}
    if base.startswith("replaydistill"):
        return {**kwargs, "replay": True, "distill": float(base[13:] or 0.5)}
    if base.startswith("l2sp"):
        return {**kwargs, "replay": False, "l2sp": float(base[4:]), "distill": 0.0}
    raise SystemExit(f"unknown condition {name!r}")


ICFG = InferenceConfig(precision="fp32", device="cpu")


def mean_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int, where: np.ndarray | None = None) -> float:
    """Mean foreground Dice (optionally only on voxels ``where``)."""
    return metrics_mean_dice(pred, gt, range(1, num_classes), where=where, absent="zero")


def held_out_dice(model_path: Path, cases: list[tuple[Any, np.ndarray]], num_classes: int) -> float:
    """Mean Dice of a model file over ``(image, ground truth)`` cases."""
    ckpt = load_checkpoint(model_path)
    scores = [
        mean_dice(predict_volume(ckpt.model, img, ICFG, metadata=ckpt.metadata).labels, gt, num_classes)
        for img, gt in cases
    ]
    return float(np.mean(scores))


def correct_top_entropy_slices(model_path: Path, image, gt: np.ndarray, n_slices: int):
    """Segment, then paint the ground truth into the ``n_slices`` axial slices of highest summed entropy."""
    pred = predict_volume(str(model_path), image, ICFG)
    per_slice = pred.entropy.reshape(pred.entropy.shape[0], -1).sum(1)
    slices = sorted(int(z) for z in np.argsort(per_slice)[::-1][:n_slices])
    labels = pred.labels.copy()
    labels[slices] = gt[slices]
    mask = np.zeros(gt.shape, np.uint8)
    mask[slices] = 1
    changed = int(np.sum(labels != pred.labels))
    return labels, mask, slices, changed


def build_workspace(args, model: Path, dataset, pool: list[str], folder: Path) -> dict[str, Any]:
    """The corrected cases (with masks) and the unlabeled images, in a fresh workspace."""
    if folder.exists():
        shutil.rmtree(folder)
    ws = Workspace(folder)
    info: dict[str, Any] = {
        "corrected": {},
        "unlabeled": pool[args.n_cases : args.n_cases + args.n_unlabeled],
    }
    for name in pool[: args.n_cases]:
        image, label, _ = dataset.load_case(name)
        gt = np.asarray(label.array)
        labels, mask, slices, changed = correct_top_entropy_slices(model, image, gt, args.n_slices)
        ws.add_case(
            image, image.with_array(labels, is_label=True), image.with_array(mask, is_label=True), name
        )
        info["corrected"][name] = {"slices": slices, "voxels_changed": changed}
    for name in info["unlabeled"]:
        ws.add_unlabeled(dataset.load_case(name)[0], name=name)
    return info


def write_results(out: dict[str, Any]) -> None:
    """``finetune_gain.json`` and a Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune_gain.json").write_text(json.dumps(out, indent=1, default=float))
    base = out.get("start_dice")
    lines = [
        "# Fine-tune gain: uncertainty-ranked corrections, held-out Dice",
        "",
        f"Start: `{out['model']}` ({out['model_note']}); held-out Dice {base:.4f} on {out['n_val']} val "
        "cases.",
        f"Corrections: {out['n_slices']} highest-entropy axial slices in each of {out['n_cases']} "
        f"unlabeled-pool cases ({out['voxels_changed']} voxels changed), plus {out['n_unlabeled']} "
        "unlabeled images; "
        f"{out['iterations']} iterations, fp32, 1 thread.",
        "",
        "| condition | seed | held-out Dice | change (points) | held-aside before | after | adopted | min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        lines.append(
            f"| {r['condition']} | {r['seed']} | {r['dice']:.4f} | {100 * (r['dice'] - base):+.2f} | "
            f"{_fmt(r['before'])} | {_fmt(r['after'])} | {'yes' if r['adopted'] else 'no'} | "
            f"{r['minutes']:.1f} |"
        )
    for cond in sorted({r["condition"] for r in out["runs"]}):
        vals = [r["dice"] for r in out["runs"] if r["condition"] == cond]
        lines.append(
            f"| **{cond} mean** | {len(vals)} | {np.mean(vals):.4f} | {100 * (np.mean(vals) - base):+.2f} |"
            " | | | |"
        )
    lines += [
        "",
        "`replay`: the model's labeled set found and replayed (the defaults: share 0.6 of labeled draws, "
        "lr 0.01); `plain`: no labeled set available, lr 0.001, no regularisation (the default before "
        "distillation); `distill<W>`: no labeled set, lr 0.001, distillation from the starting model with "
        "voxel weight W (the default without a labeled set: W = 0.5). Held-aside: the quarter of the "
        "corrected slices not trained on, scored for the starting and the fine-tuned model.",
    ]
    (RESULTS / "finetune_gain.md").write_text("\n".join(lines) + "\n")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--split", required=True, help="the starting model's splits.json (its unlabeled pool and val)"
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/finetune_gain"))
    p.add_argument("--n-cases", type=int, default=4)
    p.add_argument("--n-slices", type=int, default=4)
    p.add_argument("--n-unlabeled", type=int, default=30)
    p.add_argument("--n-val", type=int, default=30)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--conditions", nargs="+", default=["replay", "plain"])
    p.add_argument(
        "--append", action="store_true", help="keep the runs already in results/finetune_gain.json"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "start.safetensors"
    shutil.copyfile(args.model, model)  # the training run may still overwrite its best model
    meta = read_checkpoint_metadata(model)
    dataset = open_dataset(args.data)
    split = load_splits(args.split)
    num_classes = int(meta["num_classes"])
    val = [dataset.load_case(n)[:2] for n in split["val"][: args.n_val]]
    val = [(img, np.asarray(lab.array)) for img, lab in val]
    out: dict[str, Any] = {
        "model": str(args.model),
        "model_note": f"iteration {meta.get('train_summary', {}).get('iterations')}, "
        f"val Dice {(meta.get('val_metrics') or {}).get('dice')}",
        **{k: getattr(args, k) for k in ("n_cases", "n_slices", "n_unlabeled", "n_val", "iterations")},
        "runs": [],
    }
    previous = RESULTS / "finetune_gain.json"
    if args.append and previous.is_file():
        out["runs"] = json.loads(previous.read_text()).get("runs", [])
    out["start_dice"] = held_out_dice(model, val, num_classes)
    print(f"start: held-out Dice {out['start_dice']:.4f}", flush=True)
    base_ws = args.work / "ws_base"
    out["workspace"] = build_workspace(args, model, dataset, split["unlabeled"], base_ws)
    out["voxels_changed"] = sum(c["voxels_changed"] for c in out["workspace"]["corrected"].values())
    write_results(out)
    for seed in args.seeds:
        for cond in args.conditions:
            ws = args.work / f"ws_{cond}_{seed}"
            if ws.exists():
                shutil.rmtree(ws)
            shutil.copytree(base_ws, ws)
            t0 = time.perf_counter()
            result = run_finetune(
                ws,
                model,
                "cce",
                args.iterations,
                seed=seed,
                precision="fp32",
                device="cpu",
                inference=ICFG,
                **condition_kwargs(cond),
            )
            minutes = (time.perf_counter() - t0) / 60
            score = held_out_dice(result.model_path, val, num_classes)
            out["runs"].append(
                {
                    "condition": cond,
                    "seed": seed,
                    "dice": score,
                    "before": result.before,
                    "after": result.after,
                    "adopted": result.adopted,
                    "replayed": len(result.replayed),
                    "minutes": minutes,
                    "message": result.message,
                }
            )
            print(
                f"{cond} seed {seed}: held-out {score:.4f} ({100 * (score - out['start_dice']):+.2f}); "
                f"{result.message}; {minutes:.1f} min",
                flush=True,
            )
            write_results(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
