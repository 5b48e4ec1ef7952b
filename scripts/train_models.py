"""Reproduce the packaged models (``make models``): train, evaluate on held-out cases, store in fp16.

For each model of :data:`RECIPES` this script

1. prepares the data (the left atrium is down-sampled by 3 with ``benchmarks/prepare_la.py``) and writes the
   split (every case of the dataset's ``splits.json`` except its validation cases is labeled);
2. runs this project's own ``sscce train`` with the recorded recipe (a subprocess: the command in the model
   card is exactly the command that ran) and times it;
3. converts the run's model to float16 with its model card (data, licence, split, recipe, training time,
   machine, date, statistics of the training scans) into ``src/napari_sscce/data/models/<name>.safetensors``;
4. evaluates that packaged file on the validation cases (Dice per class and mean, HD95 in mm) with the default
   inference settings, writes the figures into the card and prints them.

Any stage that fails stops the script with a non-zero exit status. ``--from-run NAME=DIR`` skips training and
packages an existing run folder instead (its ``config.json`` gives the recipe; the training time is read from
the run folder's file times). Hours on a 2-core CPU; ``OMP_NUM_THREADS=1`` is set for the training runs.

Usage::

    python scripts/train_models.py                                  # all models, from scratch
    python scripts/train_models.py --models hippocampus-cce
    python scripts/train_models.py --from-run hippocampus-cce=/tmp/models/hippo_cce
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "napari_sscce" / "data" / "models"

HIPPOCAMPUS_CREDIT = (
    "Medical Segmentation Decathlon, Task04 Hippocampus (Vanderbilt University Medical Center); "
    "CC-BY-SA 4.0; "
    "Simpson et al., arXiv:1902.09063; Antonelli et al., Nature Communications 2022"
)
LA_CREDIT = (
    "2018 Atrial Segmentation Challenge (University of Utah, CIBC); Xiong et al., Medical Image Analysis "
    "2021; research use with citation, no open licence: the scans are not redistributed, only weights "
    "trained on them"
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one packaged model is made."""

    title: str
    data: str
    license: str
    dataset: str  # folder under the shared data
    train_args: tuple[str, ...]
    class_names: tuple[str, ...]
    downsample: float | None = None  # prepare_la.py --factor


RECIPES: dict[str, Recipe] = {
    "hippocampus-cce": Recipe(
        title="Hippocampus MRI — CCE",
        data="MSD Task04 Hippocampus: T1 MRI crops around the hippocampus, 1 mm isotropic; classes anterior "
        "(head) and posterior (body)",
        license=HIPPOCAMPUS_CREDIT,
        dataset="hippocampus",
        class_names=("background", "anterior", "posterior"),
        train_args=("--method", "cce", "--iterations", "4000", "--patch", "32", "48", "32", "--base-filters",
                    "8", "--no-dropout", "--precision", "fp32", "--val-every", "500", "--schedule", "poly",
                    "--augment", "spatial", "intensity"),
    ),
    "left-atrium-cce": Recipe(
        title="Left atrium MRI — CCE",
        data="LA 2018 (late gadolinium-enhanced cardiac MRI), down-sampled by 3 to 1.875 mm isotropic; class "
        "left atrium",
        license=LA_CREDIT,
        dataset="la2018",
        class_names=("background", "left atrium"),
        downsample=3.0,
        train_args=("--method", "cce", "--iterations", "4000", "--patch", "48", "48", "24", "--base-filters",
                    "8", "--no-dropout", "--precision", "fp32", "--val-every", "500", "--schedule", "poly",
                    "--augment", "spatial", "intensity"),
    ),
}


class StageError(RuntimeError):
    """A stage failed; the message says which and why."""


def machine() -> str:
    """CPU model (and GPU when one is used) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def prepare_data(recipe: Recipe, shared: Path, work: Path) -> Path:
    """The dataset folder for ``recipe`` (down-sampled copy for the left atrium)."""
    source = shared / recipe.dataset
    if not source.is_dir():
        raise StageError(f"data: {source} does not exist")
    if recipe.downsample is None:
        return source
    out = work / f"{recipe.dataset}_ds{recipe.downsample:g}"
    if not (out / "splits.json").is_file():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "prepare_la.py"), "--data", str(source),
               "--out", str(out), "--factor", f"{recipe.downsample:g}"]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise StageError(f"data: {' '.join(cmd)} failed")
    return out


def write_split(data: Path, destination: Path) -> dict[str, list[str]]:
    """Every non-validation case labeled, no unlabeled case, the dataset's validation cases held out."""
    splits = json.loads((data / "splits.json").read_text())
    out = {"labeled": [*splits["labeled"], *splits.get("unlabeled", [])], "unlabeled": [],
           "val": list(splits["val"])}
    if not out["val"]:
        raise StageError(f"split: {data / 'splits.json'} has no validation cases")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(out, indent=1))
    return out


def train(recipe: Recipe, data: Path, split: Path, run: Path) -> tuple[list[str], float]:
    """Run ``sscce train``; returns the command's arguments and its wall time in seconds."""
    args = ["--data", str(data), "--split", str(split), *recipe.train_args, "--out", str(run)]
    cmd = [sys.executable, "-m", "napari_sscce.cli", "train", *args, "--quiet"]
    print("$ sscce train " + " ".join(args), flush=True)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(cmd, check=False, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise StageError(f"train: sscce train exited with status {result.returncode}")
    return args, seconds


def recipe_from_run(run: Path) -> tuple[list[str], float]:
    """The ``sscce train`` arguments recorded in a run's config.json and the run's wall time (file times)."""
    from napari_sscce.training.config import TrainConfig

    config = TrainConfig.load(run / "config.json")
    d = TrainConfig()
    args = ["--data", str(config.data)]
    args += ["--split", str(config.split)] if config.split else []
    args += ["--method", config.method, "--iterations", str(config.iterations), "--patch",
             *(str(v) for v in reversed(config.patch_size))]
    optional = {"--base-filters": "base_filters", "--precision": "precision", "--val-every": "val_every",
                "--seed": "seed", "--lr": "lr", "--schedule": "schedule", "--flip-axes": "flip_axes"}
    for flag, name in optional.items():
        if getattr(config, name) != getattr(d, name):
            args += [flag, str(getattr(config, name))]
    if not config.has_dropout:
        args.append("--no-dropout")
    from napari_sscce.cli.train import AUGMENTATIONS

    kinds = [k for k, f in AUGMENTATIONS.items() if f and getattr(config, f)]
    if kinds:
        args += ["--augment", *kinds]
    if (config.labeled_bs, config.unlabeled_bs) != (d.labeled_bs, d.unlabeled_bs):
        args += ["--batch", str(config.labeled_bs), str(config.unlabeled_bs)]
    args += [f"--option={k}={json.dumps(v)}" for k, v in sorted(config.method_options.items())]
    args += ["--out", str(run)]
    seconds = (run / "last.safetensors").stat().st_mtime - (run / "config.json").stat().st_mtime
    return args, seconds


def package(name: str, recipe: Recipe, run: Path, data: Path, args: list[str], seconds: float,
            out_dir: Path, checkpoint: str, full_resolution: Path | None = None) -> dict[str, Any]:
    """Convert the run's model to the packaged fp16 file with its card; evaluate it; return the card.

    For a recipe trained on down-sampled scans, ``full_resolution`` (the original dataset folder) also
    scores the model on the originals of the validation cases against their full-resolution labels
    (``card["validation_full_resolution"]``): the figure a user gets.
    """
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.models.pretrained import (
        evaluate_on_cases,
        recipe_command,
        training_statistics,
        write_packaged_model,
    )

    source = run / f"{checkpoint}.safetensors"
    if not source.is_file():
        raise StageError(f"package: {source} does not exist")
    splits = json.loads((run / "splits.json").read_text())
    dataset = open_dataset(data)
    from napari_sscce.models.checkpoint import read_checkpoint_metadata

    source_meta = read_checkpoint_metadata(source)
    iteration = (source_meta.get("train_summary") or {}).get("iterations")
    planned = (source_meta.get("config") or {}).get("iterations")
    train_cases = [*splits["labeled"], *splits["unlabeled"]]
    stats = training_statistics(dataset.load_case(c)[0] for c in train_cases)
    card = {
        "name": name,
        "title": recipe.title,
        "data": recipe.data,
        "license": recipe.license,
        "split": f"{len(splits['labeled'])} labeled, {len(splits['unlabeled'])} unlabeled, "
        f"{len(splits['val'])} validation cases (never trained on)",
        "val_cases": list(splits["val"]),
        "recipe": recipe_command(args),
        "checkpoint": f"{checkpoint}.safetensors of the run"
        + (f", saved at iteration {iteration} of {planned}" if iteration and planned else "")
        + (" (no selection on the validation cases)" if checkpoint == "last" else " (best validation Dice)"),
        "training_time": f"{seconds / 60:.0f} min",
        "training_seconds": round(seconds, 1),
        "machine": machine(),
        "date": dt.datetime.fromtimestamp(source.stat().st_mtime, dt.timezone.utc).date().isoformat(),
        "storage": "float16 weights (loaded as float32)",
        "training_data": stats,
    }
    destination = out_dir / f"{name}.safetensors"
    write_packaged_model(source, destination, card, class_names=recipe.class_names)
    print(f"{name}: evaluating {destination.name} on {len(splits['val'])} validation cases …", flush=True)
    val_cases = ((c, *dataset.load_case(c)[:2]) for c in splits["val"])
    card["validation"] = evaluate_on_cases(destination, val_cases)
    if recipe.downsample is not None and full_resolution is not None:
        # the scans as users have them: the model resamples them to its spacing and its labels back
        print(f"{name}: evaluating on the full-resolution originals of the validation cases …", flush=True)
        original = open_dataset(full_resolution)
        card["validation_full_resolution"] = evaluate_on_cases(
            destination, ((c, *original.load_case(c)[:2]) for c in splits["val"]))
    write_packaged_model(destination, destination, card)
    return card


def report(name: str, card: dict[str, Any]) -> str:
    """One line of validation figures."""
    val = card["validation"]
    per_class = ", ".join(f"{k} {v:.4f}" for k, v in val["dice_per_class"].items())
    full = card.get("validation_full_resolution")
    full_text = (f"; at full resolution {full['dice_mean']:.4f}, HD95 {full['hd95_mm']:.2f} mm" if full
                 else "")
    return (f"{name}: mean Dice {val['dice_mean']:.4f} ({per_class}), HD95 {val['hd95_mm']:.2f} mm on "
            f"{val['cases']} validation cases{full_text}; trained in {card['training_time']} on "
            f"{card['machine']}")


def markdown_table() -> str:
    """The README table of the packaged models present (from their cards)."""
    from napari_sscce.models.pretrained import list_models

    rows = ["| model | data | split | validation Dice (mean; per class) | HD95 | recipe | training | file |",
            "|---|---|---|---|---|---|---|---|"]
    for model in list_models():
        card, size = model.card, model.path.stat().st_size / 2**20
        val = card.get("validation") or {}
        per_class = "; ".join(f"{k} {100 * v:.2f}" for k, v in (val.get("dice_per_class") or {}).items())
        dice = f"**{100 * val['dice_mean']:.2f} %** ({per_class})" if val else "not evaluated"
        full = card.get("validation_full_resolution")
        if full:
            dice += f"; full-resolution labels **{100 * full['dice_mean']:.2f} %**"
        hd95 = f"{val['hd95_mm']:.2f} mm" if val else ""
        rows.append(
            f"| `{model.name}` ({model.title}) | {card.get('data', '')} | {card.get('split', '')} | {dice} | "
            f"{hd95} | `{card.get('recipe', '')}` | {card.get('training_time', '')} on "
            f"{card.get('machine', '')}, {card.get('date', '')} | {size:.1f} MB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the stages; 0 when every model was made and evaluated."""
    from napari_sscce.io.sample_data import find_shared_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    p.add_argument("--shared", type=Path, default=find_shared_data(), help="the shared data folder")
    p.add_argument("--work", type=Path, default=Path("/tmp/sscce_models"), help="runs and prepared data")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the packaged models")
    p.add_argument("--from-run", action="append", default=[], metavar="NAME=DIR",
                   help="package an existing run folder instead of training")
    p.add_argument("--training-seconds", action="append", default=[], metavar="NAME=S",
                   help="with --from-run: the run's training wall time (default: from its file times, which "
                   "count only the last part of a resumed run)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which model of the run to ship (default: last, not selected on validation cases)")
    p.add_argument("--table", action="store_true", help="print the README table of the packaged models, exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    runs = dict(item.split("=", 1) for item in args.from_run)
    if args.shared is None:
        print("train_models: no shared data folder (set $SSCCE_SHARED_DATA or --shared)", file=sys.stderr)
        return 1
    lines = []
    try:
        for name in args.models:
            recipe = RECIPES[name]
            data = prepare_data(recipe, args.shared, args.work)
            if name in runs:
                run = Path(runs[name])
                train_args, seconds = recipe_from_run(run)
                given = dict(item.split("=", 1) for item in args.training_seconds)
                seconds = float(given.get(name, seconds))
                data = Path(json.loads((run / "config.json").read_text())["data"])
                if not data.is_absolute():
                    data = (Path.cwd() / data).resolve()
            else:
                run = args.work / name
                write_split(data, args.work / f"{name}_split.json")
                train_args, seconds = train(recipe, data, args.work / f"{name}_split.json", run)
            card = package(name, recipe, run, data, train_args, seconds, args.out, args.checkpoint,
                           args.shared / recipe.dataset)
            lines.append(report(name, card))
            print(lines[-1], flush=True)
    except (StageError, OSError, ValueError, KeyError) as exc:
        print(f"train_models: failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
