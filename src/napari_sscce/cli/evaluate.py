"""``sscce evaluate``: Dice, Jaccard, HD95 and ASD of predictions against ground truth."""

from __future__ import annotations

import argparse
import sys

from napari_sscce.cli._common import UserError
from napari_sscce.progress import CancelToken

DESCRIPTION = ("Pair <case>_seg.nii.gz (or <case>.nii.gz) predictions with ground-truth files of the same "
               "case and print Dice / Jaccard (%) and HD95 / ASD in voxels (as the papers report) and mm.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce evaluate`` and its options."""
    p = sub.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD of predictions against ground truth",
                       description=DESCRIPTION)
    add = p.add_argument
    add("--pred", required=True, help="folder of predicted label maps")
    add("--gt", required=True, help="folder of ground-truth label maps (NIfTI, NRRD, LA .h5 ...)")
    add("--out", default=None, help="write metrics.csv and metrics.json to this folder")
    add("--num-classes", type=int, default=None,
        help="classes including background (default: 1 + largest ground-truth label)")
    add("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
        help="voxel size in mm for the mm metrics (default: each ground truth's own)")
    add("--empty", choices=("zero", "nan"), default="zero",
        help="score of an empty prediction or ground truth: 0 as the papers (default) or nan")
    add("--summary", action="store_true", help="print only each case's mean and the summary rows")
    add("--unexpected", choices=("error", "ignore"), default="error",
        help="ground-truth values outside --num-classes: refuse (default) or leave them out")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Score ``args.pred`` against ``args.gt``; print the table (warnings as ``sscce evaluate: warning:``)."""
    import warnings

    from napari_sscce.metrics.evaluate import evaluate_folders, format_table

    if args.num_classes is not None and args.num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {args.num_classes}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = evaluate_folders(args.pred, args.gt, args.out, num_classes=args.num_classes,
                                spacing=args.spacing, empty=args.empty, unexpected=args.unexpected)
    for w in caught:
        print(f"sscce evaluate: warning: {w.message}", file=sys.stderr)
    print(format_table(rows, per_class=not args.summary))
    if args.out:
        print(f"wrote {args.out}/metrics.csv and metrics.json")
    return 0
