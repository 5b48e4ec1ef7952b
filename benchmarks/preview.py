"""What does "Update" (a seconds-long adaptation to one corrected scan) gain outside the corrected slices?

For validation cases of a packaged model (never trained on): segment with the model, correct the ``--slices``
top-ranked axial slices (the ground truth painted into them, as the Uncertainty widget ranks them), run
:func:`napari_sscce.loop.preview.preview_update` with its defaults, and compare the mean Dice *outside* the
corrected slices before and after, and the wall time of the update (adaptation + re-segmentation).

Usage::

    python benchmarks/preview.py --model hippocampus-cce --data ../shared/data/hippocampus --cases 10
    python benchmarks/preview.py --model left-atrium-cce --data ../shared/data/la2018 --cases 8

Writes ``benchmarks/results/preview_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
from napari_sscce.io.datasets import open_dataset
from napari_sscce.precision import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def one_case(ckpt: Any, image: Any, gt: np.ndarray, n_slices: int, seconds: float) -> dict[str, Any]:
    """Before/after figures of one case."""
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.loop.preview import preview_update
    from napari_sscce.metrics.surface import mean_dice
    from napari_sscce.uncertainty import rank_slices

    icfg = InferenceConfig()  # the product's defaults, as the widget uses them
    pred = predict_volume(ckpt.model, image, icfg, metadata=ckpt.metadata)
    from napari_sscce.uncertainty import binary_reading

    entropy = binary_reading(pred.entropy, int(pred.probabilities.shape[0]))  # as the product reads it
    chosen = [s.index for s in rank_slices(entropy, pred.kl, pred.labels, axis=0, top=n_slices)]
    mask = np.zeros(gt.shape, bool)
    mask[chosen] = True
    corrected = np.where(mask, gt, pred.labels)
    classes = range(1, int(ckpt.model.num_classes))
    outside = ~mask
    before = mean_dice(pred.labels, gt, classes, where=outside)
    result = preview_update(ckpt, image, corrected, mask, seconds=seconds, inference=icfg, current=pred)
    after = mean_dice(result.prediction.labels, gt, classes, where=outside)
    return {"slices": chosen, "dice_before": before, "dice_after": after, "gain": after - before,
            "steps": result.steps, "seconds": result.seconds, "loss_first": result.loss_first,
            "loss_last": result.loss_last}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hippocampus-cce")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--offset", type=int, default=1,
                   help="skip the first validation cases (1: hippocampus_007 chose the learning rate)")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--seconds", type=float, default=None, help="adaptation budget (default the product's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    import torch

    from napari_sscce.loop.preview import DEFAULT_SECONDS
    from napari_sscce.models.checkpoint import load_checkpoint, read_checkpoint_metadata
    from napari_sscce.models.pretrained import get_model

    path = get_model(args.model).path
    names = list(read_checkpoint_metadata(path)["model_card"]["val_cases"])[args.offset:][: args.cases]
    ckpt = load_checkpoint(path)
    dataset = open_dataset(args.data)
    seconds = args.seconds or DEFAULT_SECONDS
    rows = []
    for name in names:
        image, label, _ = dataset.load_case(name)
        row = {"name": name, **one_case(ckpt, image, np.asarray(label.array), args.slices, seconds)}
        print(f"  {name}: Dice outside the corrected slices {row['dice_before']:.4f} -> "
              f"{row['dice_after']:.4f} ({row['steps']} steps, {row['seconds']:.1f} s)", flush=True)
        rows.append(row)
    gains = np.array([r["gain"] for r in rows])
    result = {
        "model": args.model, "cases": len(rows), "slices": args.slices, "budget_seconds": seconds,
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads",
        "mean_dice_before": float(np.mean([r["dice_before"] for r in rows])),
        "mean_dice_after": float(np.mean([r["dice_after"] for r in rows])),
        "mean_gain": float(gains.mean()), "cases_improved": int((gains > 0).sum()),
        "mean_seconds": float(np.mean([r["seconds"] for r in rows])),
        "max_seconds": float(np.max([r["seconds"] for r in rows])),
        "command": "python benchmarks/preview.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"preview_{args.model}"
    atomic_write_json(args.out / f"{stem}.json", result)
    atomic_write_bytes(args.out / f"{stem}.md", to_markdown(result).encode())
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    return 0




def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Update in seconds: {r['model']}",
        "",
        f"{r['cases']} validation cases (never trained on); the {r['slices']} top-ranked axial slices "
        f"corrected (ground truth painted); adaptation budget {r['budget_seconds']:g} s; {r['machine']}.",
        "",
        f"- mean Dice outside the corrected slices: {r['mean_dice_before']:.4f} -> "
        f"{r['mean_dice_after']:.4f} ({r['mean_gain'] * 100:+.2f} points; {r['cases_improved']} of "
        f"{r['cases']} cases improved)",
        f"- time per update (adaptation + re-segmentation): mean {r['mean_seconds']:.1f} s, "
        f"max {r['max_seconds']:.1f} s",
        "",
        "| case | before | after | steps | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {x['name']} | {x['dice_before']:.4f} | {x['dice_after']:.4f} | {x['steps']} "
              f"| {x['seconds']:.1f} |" for x in r["rows"]]
    return "\n".join(lines + ["", f"Command: `{r['command']}`", ""])


if __name__ == "__main__":
    raise SystemExit(main())
