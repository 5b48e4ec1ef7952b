"""How right is the fill between painted slices? (napari_sscce.loop.slice_fill, used by the cold start)

For each case: paint ``--slices`` evenly spaced axial slices with the true label (as the cold-start
benchmark does), fill between them, and compare with the true label:

- ``filled_share``: share of the voxels between the first and last painted slice that the fill labels;
- ``filled_accuracy``: share of the filled voxels whose class is the true class;
- ``filled_fg_recall``: share of the true foreground between the painted slices that the fill labels
  foreground (the supervision the organ gets beyond the painted slices);
- ``dice_unmasked``: foreground Dice between the truth and the interpolated shape taken everywhere between the
  painted slices (margin 0), for reference.

Writes ``benchmarks/results/slice_fill.json`` / ``.md``. CPU only, seconds.

Usage::

    python benchmarks/slice_fill.py --data ../shared/data/la2018 --slices 6
    python benchmarks/slice_fill.py --data ../shared/data/hippocampus --slices 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def painted(depth: int, count: int) -> list[int]:
    """The cold-start benchmark's evenly spaced slices."""
    return [int(round((k + 1) * depth / (count + 1))) for k in range(count)]


def measure(label: np.ndarray, spacing, slices: int, margin: float) -> dict[str, float]:
    """The figures of one case."""
    from napari_sscce.loop.slice_fill import fill_between_slices

    chosen = painted(label.shape[0], slices)
    mask = np.zeros(label.shape, np.uint8)
    mask[chosen] = 1
    sparse = np.where(mask > 0, label, 0)
    filled_labels, filled = fill_between_slices(sparse, mask, spacing, margin_mm=margin)
    span = np.zeros(label.shape, bool)
    span[chosen[0]: chosen[-1] + 1] = True
    between = span & (mask == 0)
    fg = (label > 0) & between
    shape_labels, _ = fill_between_slices(sparse, mask, spacing, margin_mm=0.0)
    shape = (shape_labels > 0) & between
    return {
        "filled_share": float(filled.sum() / max(between.sum(), 1)),
        "filled_accuracy": float((filled_labels[filled] == label[filled]).mean()) if filled.any() else 0.0,
        "filled_fg_recall": float(((filled_labels > 0) & filled & fg).sum() / max(fg.sum(), 1)),
        "dice_unmasked": float(2 * (shape & fg).sum() / max(shape.sum() + fg.sum(), 1)),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure on the first ``--cases`` cases of the dataset's split; write the results."""
    from napari_sscce.atomic import atomic_write_json
    from napari_sscce.io.datasets import open_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--margin", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--out", type=Path, default=RESULTS / "slice_fill.json")
    args = p.parse_args(argv)
    ds = open_dataset(str(args.data))
    split = json.loads((args.data / "splits.json").read_text())
    names = (list(split.get("labeled", [])) + list(split.get("unlabeled", [])))[: args.cases]
    rows = []
    for margin in args.margin:
        per_case = []
        for name in names:
            _, label, _ = ds.load_case(name)
            per_case.append(measure(np.asarray(label.array), label.spacing, args.slices, margin))
        row = {"data": args.data.name, "slices": args.slices, "margin_mm": margin, "cases": len(names),
               **{k: float(np.mean([c[k] for c in per_case])) for k in per_case[0]}}
        rows.append(row)
        print(row, flush=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else []
    keep = [r for r in previous if (r["data"], r["slices"]) != (args.data.name, args.slices)]
    results = keep + rows
    atomic_write_json(args.out, results)
    lines = ["# Fill between painted slices (`loop.slice_fill`)", "",
             "| data | painted slices | margin mm | cases | filled share | filled accuracy | fg recall | "
             "shape Dice (margin 0) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['data']} | {r['slices']} | {r['margin_mm']:g} | {r['cases']} | "
                     f"{r['filled_share']:.3f} | {r['filled_accuracy']:.4f} | {r['filled_fg_recall']:.3f} | "
                     f"{r['dice_unmasked']:.4f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
