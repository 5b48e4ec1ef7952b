"""Fine-tune defaults on a generated task: corrections biased to one end of the object, Dice elsewhere.

A small CCE model (4 filters) is trained from scratch on three generated cases (cold start, 40 iterations);
two new generated cases are segmented by it and corrected from the ground truth in the first three slices of
the object only (the annotation mask); the model is fine-tuned on them (20 iterations) under
each variant, and every model is scored on the far half of three further generated cases (mean Dice, class 1).
Variants: replay of the starting model's labeled set at a replayed share of the labeled draws, no replay at
two learning rates, no replay with L2-SP. Writes ``benchmarks/results/finetune_gain_synthetic.json`` and
``.md``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/finetune_gain_synthetic.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sscce import loop as ft
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.sample_data import make_synthetic
from napari_sscce.metrics.surface import dice
from napari_sscce.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE, SPACING = (16, 32, 32), (2.0, 1.0, 1.0)
ICFG = InferenceConfig(device="cpu", precision="fp32")
VARIANTS: dict[str, dict[str, Any]] = {
    "replay, share 0.43, lr 0.01": {"replay_share": 0.43, "lr": 0.01},
    "replay, share 0.6, lr 0.01": {"replay_share": 0.6, "lr": 0.01},
    "replay, share 0.43, lr 0.001": {"replay_share": 0.43, "lr": 0.001},
    "no replay, lr 0.01": {"replay": False, "lr": 0.01},
    "no replay, lr 0.001": {"replay": False, "lr": 0.001},
    "no replay, L2-SP 1, lr 0.01": {"replay": False, "l2sp": 1.0, "lr": 0.01},
    "no replay, L2-SP 10, lr 0.01": {"replay": False, "l2sp": 10.0, "lr": 0.01},
}


def case(seed: int):
    return make_synthetic(SHAPE, SPACING, seed=seed, num_classes=2)


def elsewhere(model: Path) -> float:
    """Mean Dice on the far half (z >= 8) of three generated cases."""
    scores = []
    for seed in (21, 22, 23):
        image, gt = case(seed)
        pred = predict_volume(str(model), image, ICFG).labels
        far = slice(SHAPE[0] // 2, None)
        scores.append(dice(pred[far] == 1, np.asarray(gt.array)[far] == 1))
    return float(np.mean(scores))


def biased_workspace(folder: Path, model: Path) -> Workspace:
    """Two cases segmented by ``model`` and corrected in the first three slices of the object only."""
    ws = Workspace(folder)
    for seed in (11, 12):
        image, gt = case(seed)
        gt = np.asarray(gt.array)
        first = int(np.flatnonzero(gt.reshape(SHAPE[0], -1).any(1))[0])
        end = [first, first + 1, first + 2]
        labels = predict_volume(str(model), image, ICFG).labels
        labels[end] = gt[end]
        mask = np.zeros(SHAPE, np.uint8)
        mask[end] = 1
        ws.add_case(
            image, image.with_array(labels, is_label=True), image.with_array(mask, is_label=True), f"b{seed}"
        )
    return ws


def run(seed: int, work: Path) -> list[dict[str, Any]]:
    fast = {"device": "cpu", "precision": "fp32", "seed": seed}
    origin = Workspace(work / f"origin{seed}")
    for s in (1, 2, 3):
        image, gt = case(s)
        origin.add_case(image, gt, None, name=f"o{s}")
    start = ft.run_finetune(origin, cold_start=True, iterations=40, base_filters=4, **fast).model_path
    before = elsewhere(start)
    rows = []
    for name, kwargs in VARIANTS.items():
        ws = biased_workspace(work / f"ws{seed}_{len(rows)}", start)
        r = ft.run_finetune(ws, start, iterations=20, **fast, **kwargs)
        after = elsewhere(r.model_path)
        rows.append(
            {
                "variant": name,
                "seed": seed,
                "before": before,
                "after": after,
                "adopted": r.adopted,
                "held_before": r.before,
                "held_after": r.after,
                "replayed": len(r.replayed),
            }
        )
        print(f"seed {seed} {name}: {before:.4f} -> {after:.4f} (adopted {r.adopted})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/finetune_gain_synthetic"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    shutil.rmtree(args.work, ignore_errors=True)
    rows = [row for seed in args.seeds for row in run(seed, args.work)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune_gain_synthetic.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| variant | seed | Dice elsewhere before | after | change (points) | adopted |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['seed']} | {r['before']:.4f} | {r['after']:.4f} | "
        f"{100 * (r['after'] - r['before']):+.2f} | {'yes' if r['adopted'] else 'no'} |"
        for r in rows
    ]
    (RESULTS / "finetune_gain_synthetic.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
