"""``sscce finetune``: fine-tune a model on a workspace (or train a first one) and add it as a new version."""

from __future__ import annotations

import argparse
import sys

from napari_sscce.cli._common import (
    EXIT_CANCELLED,
    ProgressPrinter,
    UserError,
    add_device_options,
    resolve_model_arg,
)
from napari_sscce.progress import CancelToken, ProgressCallback

DESCRIPTION = ("The fine-tune of the napari widget, headless: the model's patch, normalisation, classes and "
               "flips are kept; its labeled set is replayed when it can be found (else L2-SP); part of the "
               "confirmed slices is held aside to score the starting and the new model; a new model that "
               "scores worse is kept as a version but not made current. Ctrl-C stops cleanly: no version is "
               "added and the model in use stays.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce finetune`` and its options."""
    from napari_sscce import loop as ft
    from napari_sscce.methods import method_names

    p = sub.add_parser(
        "finetune", description=DESCRIPTION,
        help="fine-tune a model on a workspace (or train a first one) and add it as a new version",
    )
    add = p.add_argument
    add("--workspace", required=True, metavar="DIR", help="workspace folder (from the widget)")
    add("--model", metavar="CKPT", help="starting model: a model file or a packaged model's name (default: "
        "the workspace's current model)")
    add("--new", action="store_true", help="train a first model from scratch (cold start)")
    add("--method", choices=method_names(),
        help="default: supervised where it can continue the model (it beat CCE in the loop benchmark), "
        "else the model's own method; a new model (--new): cce")
    add("--iterations", type=int, metavar="N",
        help=f"default: {ft.FINETUNE_OVERRIDES['iterations']} ({ft.COLD_START['iterations']} with --new)")
    add("--holdout", type=float, default=ft.HOLDOUT_FRACTION, metavar="F",
        help="share of confirmed slices held aside to score the models (default %(default)s)")
    add("--no-replay", action="store_true", help="do not replay the model's own labeled set")
    add("--l2sp", type=float, default=None, metavar="W",
        help=f"L2-SP weight toward the starting weights (default {ft.DEFAULT_L2SP} without replay, 0 with "
        "it)")
    add("--distill", type=float, default=None, metavar="W",
        help="weight of the starting model's own labels outside the confirmed voxels (default "
        f"{ft.DISTILL_WEIGHT} without replay, 0 with it)")
    add("--seed", type=int, default=0)
    add_device_options(p, "auto", None, "the training default")
    add("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None) -> int:
    """Fine-tune; print the verdict and the model in use. A cancelled run adds no version and exits 130."""
    from napari_sscce import loop as ft
    from napari_sscce.methods import IncompatibleModelError

    changes = {"seed": args.seed, "device": args.device}
    if args.precision:
        changes["precision"] = args.precision
    from napari_sscce.workspace import Workspace

    model = resolve_model_arg(args.model) if args.model and not args.new else args.model
    ws = Workspace(args.workspace)
    for note in ws.notes:  # what opening found and left alone (never deleted)
        print(f"sscce finetune: note: {note}", file=sys.stderr)
    printer = ProgressPrinter("it", quiet=args.quiet)
    try:
        result = ft.run_finetune(
            ws, model, args.method, args.iterations, progress=progress or printer, cancel=cancel,
            cold_start=args.new, holdout=args.holdout, replay=not args.no_replay, l2sp=args.l2sp,
            distill=args.distill, **changes,
        )
    except IncompatibleModelError as exc:
        raise UserError(str(exc)) from None
    finally:
        printer.close()
    if result.cancelled:
        print(f"sscce finetune: {result.message}", file=sys.stderr)
        return EXIT_CANCELLED
    print(result.message)
    if result.current_path is not None:
        print(f"model in use: {result.current_path}")
    return 0
