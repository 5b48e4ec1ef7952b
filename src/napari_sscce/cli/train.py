"""``sscce train``: train a model (CCE, UG-MCL or supervised) into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_sscce.cli._common import (
    EXIT_CANCELLED,
    ProgressPrinter,
    UserError,
    add_device_options,
    check_init_compatible,
    resolve_model_arg,
)
from napari_sscce.progress import CancelToken, ProgressCallback

DESCRIPTION = ("Writes config.json, metrics.jsonl, last.safetensors, best.safetensors and train_state.pt "
               "(for --resume) to --out. Ctrl-C stops cleanly after the current step (saving a resumable "
               "state); a second Ctrl-C aborts.")

#: option -> TrainConfig field, for the options copied as they are
PLAIN_OPTIONS = {
    **{name: name for name in ("data", "split", "labeled", "method", "iterations", "device")},
    **{name: name for name in ("precision", "seed", "val_every", "lr", "schedule")},
    "workers": "num_workers",
    "flip_axes": "flip_axes",
    "base_filters": "base_filters",
}

#: ``--augment`` kinds -> TrainConfig switch
AUGMENTATIONS = {"spatial": "augment_spatial", "intensity": "augment_intensity", "noise": "augment_noise",
                 "gamma": "augment_gamma", "blur": "augment_blur", "lowres": "augment_lowres", "none": ""}


def _augment_default(config) -> list[str]:
    """The ``--augment`` kinds a config has switched on."""
    return [kind for kind, field in AUGMENTATIONS.items() if field and getattr(config, field)]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce train`` and its options."""
    from napari_sscce.methods import method_names
    from napari_sscce.training.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a model (CCE, UG-MCL or supervised)", description=DESCRIPTION)
    add = p.add_argument
    add("--data", metavar="DIR", help="dataset folder (images/ + labels/, MSD, LA h5, workspace)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", metavar="JSON", help="splits.json with labeled / unlabeled / val lists")
    which.add_argument("--labeled", type=int, metavar="N", help="use the first N labeled cases as labeled")
    add("--method", choices=method_names(), help=f"default: {d.method}")
    add("--iterations", type=int, metavar="N", help=f"default: {d.iterations}")
    add("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"),
        help="training patch in X Y Z like the papers (e.g. 112 112 80); stored as (z, y, x). "
        f"Default: {' '.join(map(str, reversed(d.patch_size)))}")
    add("--out", required=True, metavar="RUN_DIR", help="run folder")
    add_device_options(p, None, None, d.precision)
    add("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add("--overwrite", action="store_true",
        help="delete the run already in --out and start afresh (without it, or --resume, a folder that "
        "holds a run is refused)")
    add("--batch", type=int, nargs=2, metavar=("L", "U"),
        help=f"labeled and unlabeled rows per batch (default: {d.labeled_bs} {d.unlabeled_bs})")
    add("--seed", type=int, help=f"default: {d.seed}")
    add("--val-every", type=int, metavar="N", help=f"validate every N iterations (default: {d.val_every})")
    add("--lr", type=float, help=f"default: {d.lr}")
    add("--schedule", choices=("step", "poly", "constant"), help=f"default: {d.schedule}")
    add("--workers", type=int, metavar="N", help="prepare batches in a background thread if > 0")
    add("--init", metavar="CKPT",
        help="start from this model (fine-tuning): a model file or a packaged model's name")
    add("--no-dropout", action="store_true",
        help="networks without their Dropout3d(0.5) layers (advised for narrow networks, < 16 base filters)")
    add("--base-filters", type=int, metavar="N", help=f"network width (default: {d.base_filters})")
    add("--flip-axes", metavar="AXES",
        help="axes random flips may mirror: auto (all but those that order the classes, e.g. hippocampus "
        f"head/body), letters of zyx, or none (default: {d.flip_axes})")
    add("--augment", nargs="+", choices=AUGMENTATIONS, metavar="KIND",
        help="extra augmentations on top of the flips and 90-degree rotations: spatial (in-plane rotation "
        "and zoom), intensity (brightness/contrast), noise, gamma, blur, lowres (simulated low resolution; "
        "nnU-Net's transforms); none switches them all off "
        f"(default: {' '.join(_augment_default(d)) or 'none'})")
    add("--option", action="append", default=[], metavar="KEY=VALUE",
        help="method option (JSON value), e.g. --option cps=false --option entropy_percentile=30")
    add("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)
    return p


def _changes_from_args(args: argparse.Namespace, method_options: dict) -> dict:
    """The :class:`TrainConfig` fields that the options set (unset options leave the config's value)."""
    from napari_sscce.training.config import parse_method_options

    changes: dict = {"out": args.out, "resume": bool(args.resume), "overwrite": bool(args.overwrite)}
    for arg, fieldname in PLAIN_OPTIONS.items():
        value = getattr(args, arg)
        if value is not None:
            changes[fieldname] = value
    if args.init:
        changes["init_checkpoint"] = resolve_model_arg(args.init)
    if args.no_dropout:
        changes["has_dropout"] = False
    if args.patch:
        changes["patch_size"] = tuple(reversed(args.patch))  # X Y Z on the command line -> (z, y, x)
    if args.batch:
        changes["labeled_bs"], changes["unlabeled_bs"] = args.batch
    if args.augment:
        if "none" in args.augment and len(args.augment) > 1:
            raise UserError("--augment none cannot be combined with other kinds")
        for kind, fieldname in AUGMENTATIONS.items():
            if fieldname:
                changes[fieldname] = kind in args.augment
    if args.option:
        try:
            changes["method_options"] = {**method_options, **parse_method_options(args.option)}
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    return changes


def config_from_args(args: argparse.Namespace):
    """The :class:`~napari_sscce.training.config.TrainConfig` of ``sscce train``'s options.

    With ``--resume`` the run's saved config.json, changed by the options given.

    Raises
    ------
    UserError
        No run to resume, no ``--data``, a bad option value or an unknown ``--init`` model.
    """
    from napari_sscce.training.config import TrainConfig

    if args.resume:
        saved = Path(args.out) / "config.json"
        if not saved.is_file():
            raise UserError(f"{saved}: no run to resume (config.json is missing)")
        cfg = TrainConfig.load(saved)
    else:
        if not args.data:
            raise UserError("--data is required (unless --resume)")
        cfg = TrainConfig()
    changes = _changes_from_args(args, cfg.method_options)
    try:
        return cfg.replace(**changes)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace, cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None) -> int:
    """Train; print where the model is. A cancelled run saves a resumable state and exits 130."""
    from napari_sscce.training.loop import TrainingError, train

    cfg = config_from_args(args)
    check_init_compatible(cfg.method, cfg.init_checkpoint)
    printer = ProgressPrinter("it", quiet=args.quiet)
    try:
        result = train(cfg, progress=progress or printer, cancel=cancel)
    except TrainingError as exc:
        printer.close()
        print(f"sscce train: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        printer.close()
    if result.best_path is None:  # a non-zero rank under torchrun: rank 0 writes and reports
        return 0
    state = "stopped (resume with --resume)" if result.cancelled else "done"
    best = f", best val Dice {result.best_metric:.4f}" if result.best_metric is not None else ""
    print(f"{state} at iteration {result.iterations}{best}; model: {result.best_path}")
    if result.warning:
        print(f"sscce train: warning: {result.warning}", file=sys.stderr)
    return EXIT_CANCELLED if result.cancelled else 0
