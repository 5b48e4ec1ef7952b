"""Semi-supervised benchmark on the hippocampus set: does the unlabeled data help?

Rows (``--methods``, any of):

- ``supervised``: the dual networks (VNet + ResNet-VNet) trained supervised-only on the 16 labeled cases;
- ``cce``: CCE on the 16 labeled + 114 unlabeled cases;
- ``supervised_all``: supervised on all 130 training cases with their labels (the upper bound);
- any other registered method (``napari_sscce.methods.METHODS``, e.g. ``ugmcl``): semi-supervised on
  16 + 114 with that method's own networks.

Every row uses the same iteration budget, patch, batch (2 labeled + 2 unlabeled; supervised rows draw
labeled rows only), optimiser and schedule (``TrainConfig`` defaults scaled to the budget). The model of
the last iteration is evaluated (no model selection on the val cases, which are also the test cases here)
on the 30 val cases of ``splits.json``: sliding-window inference with the training patch, mean of both
networks' softmax, argmax; per case the mean over the two foreground classes of Dice, Jaccard, hd95 and
asd (medpy definitions, in voxels as the papers and in mm; the hippocampus is 1 mm isotropic, so the two
agree). A row reports the mean over cases, then mean and standard deviation over seeds.

Usage (the README's CPU table: 8 base filters without dropout, about 15 min per CCE run with two runs at a
time; on a GPU use ``--device cuda`` and the papers' 16 filters with dropout)::

    OMP_NUM_THREADS=1 python benchmarks/semi_supervised.py --iterations 1000 --seeds 0 1 --base-filters 8 \\
        --no-dropout --device cpu
    python benchmarks/semi_supervised.py --methods cce --tag "no contrast" --option contrast=false  # ablation
    python benchmarks/semi_supervised.py --labeled 4 ...   # the first 4 labeled cases, 126 unlabeled
    python benchmarks/semi_supervised.py --iterations 6 --val-max 3 --methods supervised cce   # smoke check

Other datasets in the images/ + labels/ + splits.json layout work the same way (``--data``): the LA row uses a
down-sampled copy written by ``benchmarks/prepare_la.py``.

Results: ``benchmarks/results/ssl.json`` and ``ssl.md`` (``--out``); runs in ``--runs`` (checkpoints,
metrics.jsonl per run).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.sample_data import find_shared_data
from napari_sscce.methods import METHODS
from napari_sscce.metrics.evaluate import evaluate_case
from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.training.config import TrainConfig, parse_method_options
from napari_sscce.training.loop import train

#: row name -> (training method, which cases are labeled)
SPECIAL_ROWS = {"supervised": ("supervised", "labeled"), "supervised_all": ("supervised", "all")}
REPORTED = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")


def row_setup(row: str) -> tuple[str, str]:
    """``(method, labels)`` of a row: labels ``"labeled"`` (16), ``"semi"`` (16 + 114) or ``"all"`` (130).

    A tagged row (``--tag``: ``"cce [contrast off]"``) is set up as its untagged name.
    """
    row = row.split(" [")[0]
    if row in SPECIAL_ROWS:
        return SPECIAL_ROWS[row]
    if row in METHODS:
        return row, "semi"
    raise SystemExit(f"unknown row {row!r}; choose from {sorted({*SPECIAL_ROWS, *METHODS})}")


def split_for(splits: dict[str, list[str]], labels: str) -> dict[str, list[str]]:
    """The training split of a row (val left out: it is evaluated separately, after training)."""
    if labels == "all":
        return {"labeled": splits["labeled"] + splits["unlabeled"], "unlabeled": [], "val": []}
    if labels == "labeled":
        return {"labeled": splits["labeled"], "unlabeled": [], "val": []}
    return {"labeled": splits["labeled"], "unlabeled": splits["unlabeled"], "val": []}


def fewer_labels(splits: dict[str, list[str]], labeled: int | None) -> dict[str, list[str]]:
    """Keep the first ``labeled`` labeled cases; the others join the unlabeled ones (val unchanged).

    The semi-supervised rows then still see every training case, and the ceiling row is unchanged.
    """
    if labeled is None:
        return splits
    if not 1 <= labeled <= len(splits["labeled"]):
        raise SystemExit(f"--labeled {labeled}: the split has {len(splits['labeled'])} labeled cases")
    return {
        **splits,
        "labeled": splits["labeled"][:labeled],
        "unlabeled": splits["labeled"][labeled:] + splits["unlabeled"],
    }


def evaluate_model(checkpoint: Path, dataset, cases: list[str], device: str, precision: str) -> dict:
    """Per-case metrics (mean over foreground classes) and their mean over cases."""
    cfg = InferenceConfig(device=device, precision=precision)
    per_case = {}
    for name in cases:
        image, label, _ = dataset.load_case(name)
        pred = predict_volume(str(checkpoint), image, cfg)
        gt = np.asarray(label.array).astype(np.int64)
        num_classes = pred.probabilities.shape[0]
        result = evaluate_case(pred.labels, gt, num_classes, image.spacing)
        per_case[name] = {k: float(result["mean"][k]) for k in REPORTED}
        # per-class Dice too: a mean over classes hides one class absorbing another
        per_case[name]["dice_per_class"] = {
            str(c): float(v["dice"]) for c, v in result["classes"].items()
        }
    mean = {k: float(np.nanmean([c[k] for c in per_case.values()])) for k in REPORTED}
    classes = next(iter(per_case.values()))["dice_per_class"] if per_case else {}
    mean["dice_per_class"] = {
        c: float(np.nanmean([case["dice_per_class"][c] for case in per_case.values()])) for c in classes
    }
    return {"mean": mean, "cases": per_case}


def run_row(row: str, seed: int, args, dataset, splits, runs: Path) -> dict:
    method, labels = row_setup(row)
    tag = "_" + "_".join(args.tag.split()) if args.tag else ""
    run_dir = runs / f"{row}{tag}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    split_file = run_dir / "train_split.json"
    train_split = split_for(splits, labels)
    if args.val_every:  # monitoring curves only: the last model is evaluated, never selected on val
        train_split["val"] = list(splits["val"])
    atomic_write_json(split_file, train_split)
    config = TrainConfig(
        data=str(args.data),
        split=str(split_file),
        method=method,
        patch_size=tuple(reversed(args.patch)),
        labeled_bs=args.batch[0],
        unlabeled_bs=args.batch[1],
        iterations=args.iterations,
        lr=args.lr,
        schedule=args.schedule,
        method_options=parse_method_options(args.option) if method != "supervised" else {},
        seed=seed,
        device=args.device,
        precision=args.precision,
        out=str(run_dir),
        val_every=args.val_every,
        val_max_cases=args.val_every_cases,
        base_filters=args.base_filters,
        num_workers=args.workers,
        flip_axes=args.flip_axes,
        has_dropout=not args.no_dropout,
    )
    start = time.perf_counter()
    last_print = [0.0]

    def progress(event) -> None:
        if event.stage == "train" and time.perf_counter() - last_print[0] > 30:
            last_print[0] = time.perf_counter()
            print(f"  [{row} seed {seed}] {event.step}/{event.total} {event.message}", flush=True)

    result = train(config, progress=progress)
    seconds = time.perf_counter() - start
    val = splits["val"][: args.val_max] if args.val_max else splits["val"]
    start_eval = time.perf_counter()
    metrics = evaluate_model(result.last_path, dataset, val, args.device, args.precision)
    eval_seconds = time.perf_counter() - start_eval
    losses = [h["loss"] for h in result.history if "loss" in h]
    print(f"  [{row} seed {seed}] Dice {metrics['mean']['dice']:.4f} ({seconds:.0f} s training)", flush=True)
    return {
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "final_loss": losses[-1] if losses else None,
        "device": result.model and str(next(result.model.parameters()).device),
        "checkpoint": str(result.last_path),
        "augmentation": read_checkpoint_metadata(result.last_path).get("augmentation"),
        **metrics,
    }


def summarise(row: str, runs: list[dict], splits: dict) -> dict:
    method, labels = row_setup(row)
    split = split_for(splits, labels)
    means = {k: [r["mean"][k] for r in runs] for k in REPORTED}
    return {
        "row": row,
        "method": method,
        "labeled_cases": len(split["labeled"]),
        "unlabeled_cases": len(split["unlabeled"]),
        "mean": {k: float(np.mean(v)) for k, v in means.items()},
        "std_over_seeds": {k: float(np.std(v)) for k, v in means.items()},
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
        "runs": runs,
    }


def augmentation_note(report: dict) -> str:
    """`` (resolved: flips zx, rotations off)`` from the first run that recorded its augmentation."""
    for row in report["rows"]:
        for run in row["runs"]:
            aug = run.get("augmentation")
            if aug:
                rotations = "on" if aug.get("rot90") else "off"
                return f" (resolved: flips {aug['flip_axes']}, rotations {rotations})"
    return ""


def markdown(report: dict) -> str:
    cfg = report["config"]
    data_name = Path(cfg.get("data", "hippocampus")).name
    title = "hippocampus (MSD Task04)" if data_name == "hippocampus" else data_name
    lines = [
        f"# Semi-supervised benchmark: {title}, {cfg['val_cases']} validation cases",
        "",
        f"Iterations {cfg['iterations']}, patch (x, y, z) {' x '.join(map(str, cfg['patch_xyz']))}, batch "
        f"{cfg['batch'][0]} labeled + {cfg['batch'][1]} unlabeled, seeds {cfg['seeds']}, device "
        f"{report['machine']['device']}, precision {cfg['precision']}, base filters {cfg['base_filters']}, "
        f"lr schedule {cfg.get('schedule', 'step')}, dropout {'on' if cfg.get('dropout', True) else 'off'}, "
        f"flip axes {cfg.get('flip_axes', 'zyx')}"
        f"{augmentation_note(report)}. "
        f"Evaluated cases: {cfg['val_cases']}. Metrics: mean over the foreground classes, then over "
        "cases; mean +- std over seeds. hd95 / asd in voxels (as the papers) and in mm.",
        "",
        "| row | method | labeled | unlabeled | Dice % | Jaccard % | hd95 vox | asd vox | hd95 mm | asd mm "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        m, s = r["mean"], r["std_over_seeds"]
        lines.append(
            f"| {r['row']} | {r['method']} | {r['labeled_cases']} | {r['unlabeled_cases']} | "
            f"{100 * m['dice']:.2f} +- {100 * s['dice']:.2f} | "
            f"{100 * m['jaccard']:.2f} +- {100 * s['jaccard']:.2f} | "
            f"{m['hd95_vox']:.2f} | {m['asd_vox']:.2f} | {m['hd95_mm']:.2f} | {m['asd_mm']:.2f} | "
            f"{r['train_seconds_mean']:.0f} |"
        )
    lines += ["", "Per run (seed: mean Dice %, and per foreground class where recorded):", ""]
    for r in report["rows"]:
        parts = []
        for run in r["runs"]:
            per_class = run["mean"].get("dice_per_class", {})
            detail = " / ".join(f"{100 * v:.1f}" for v in per_class.values())
            suffix = f" ({detail})" if detail else ""
            parts.append(f"seed {run['seed']}: {100 * run['mean']['dice']:.2f}{suffix}")
        lines.append(f"- {r['row']}: " + "; ".join(parts))
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    default_data = (find_shared_data() or Path("../shared/data")) / "hippocampus"
    others = [m for m in METHODS if m not in ("cce", "supervised")]
    rows = ["supervised", "cce", "supervised_all", *others]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data, help="hippocampus folder (default %(default)s)")
    p.add_argument("--methods", nargs="+", default=rows, help="rows to run (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--patch", type=int, nargs=3, default=[32, 48, 32], metavar=("X", "Y", "Z"))
    p.add_argument("--batch", type=int, nargs=2, default=[2, 2], metavar=("L", "U"))
    p.add_argument(
        "--labeled",
        type=int,
        default=None,
        help="label only the first N of the split's labeled cases (the rest become unlabeled)",
    )
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="option of the semi-supervised method (ablation), e.g. --option kl=false",
    )
    p.add_argument(
        "--schedule",
        default="step",
        choices=("step", "poly", "constant"),
        help="learning-rate schedule: the papers' step (x0.1 at 5/12 and 5/6 of the budget) or poly",
    )
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--tag", default=None, help="label appended to the rows' names (e.g. 'contrast off')")
    p.add_argument(
        "--no-dropout",
        action="store_true",
        help="train without the Dropout3d(0.5) layers (advised below 16 base filters: see the README)",
    )
    p.add_argument(
        "--flip-axes",
        default=TrainConfig.flip_axes,
        help="TrainConfig.flip_axes: auto (default), letters of zyx, or none",
    )
    p.add_argument("--workers", type=int, default=1, help="background batch preparation (0 = none)")
    p.add_argument("--val-max", type=int, default=None, help="evaluate only the first N val cases")
    p.add_argument(
        "--val-every",
        type=int,
        default=0,
        help="also validate during training every N iterations (per-class Dice curves in metrics.jsonl)",
    )
    p.add_argument("--val-every-cases", type=int, default=5, help="val cases used during training")
    p.add_argument("--runs", type=Path, default=Path("/tmp/sscce_ssl_runs"), help="run folders")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="merge the ssl.json reports of runs made in parallel (one row or seed each) into one table",
    )
    return p.parse_args(argv)


def merge_reports(paths: list[Path], splits: dict) -> dict:
    """One report from several partial ``ssl.json`` reports (rows or seeds run as parallel processes)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs_by_row: dict[str, list[dict]] = {}
    for part in parts:
        for row in part["rows"]:
            runs_by_row.setdefault(row["row"], []).extend(row["runs"])
    order = ["supervised", "cce", "supervised_all"]
    names = sorted(runs_by_row, key=lambda r: (order.index(r) if r in order else len(order), r))
    rows = [summarise(r, sorted(runs_by_row[r], key=lambda x: x["seed"]), splits) for r in names]
    report = dict(parts[0])
    seeds = sorted({r["seed"] for runs in runs_by_row.values() for r in runs})
    report["config"] = {**parts[0]["config"], "seeds": seeds}
    report["command"] = parts[0]["command"] + f"  (merged from {len(parts)} parallel runs)"
    report["rows"] = rows
    return report


def write_report(report: dict, out: Path) -> None:
    """Write ``ssl.json`` and ``ssl.md`` to ``out`` and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    atomic_write_json(out / "ssl.json", report)
    atomic_write_bytes(out / "ssl.md", text.encode())
    print(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    splits = fewer_labels(json.loads((Path(args.data) / "splits.json").read_text()), args.labeled)
    if args.merge:
        write_report(merge_reports(args.merge, splits), args.out)
        return 0
    dataset = open_dataset(args.data)
    per_row = []
    for row in args.methods:
        row_setup(row)
    for row in args.methods:
        print(f"{row}:", flush=True)
        runs = [run_row(row, seed, args, dataset, splits, args.runs) for seed in args.seeds]
        per_row.append(summarise(f"{row} [{args.tag}]" if args.tag else row, runs, splits))
    device = per_row[0]["runs"][0]["device"] if per_row else args.device
    report = {
        "command": "python benchmarks/semi_supervised.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            "iterations": args.iterations,
            "patch_xyz": list(args.patch),
            "batch": list(args.batch),
            "labeled": len(splits["labeled"]),
            "seeds": list(args.seeds),
            "precision": args.precision,
            "base_filters": args.base_filters,
            "lr": args.lr,
            "schedule": args.schedule,
            "flip_axes": args.flip_axes,
            "dropout": not args.no_dropout,
            "method_options": parse_method_options(args.option),
            "val_cases": len(splits["val"][: args.val_max] if args.val_max else splits["val"]),
            "data": str(args.data),
        },
        "machine": {
            "device": device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
        },
        "rows": per_row,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
