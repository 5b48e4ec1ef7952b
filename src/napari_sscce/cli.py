"""The ``sscce`` command line: ``train``, ``finetune``, ``predict``, ``models``, ``evaluate``, ``demo``,
``doctor``.

Each subcommand is a thin shell over a headless core function; progress events become a tqdm bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_sscce import __version__


class UserError(Exception):
    """An error whose message is for the user (bad file, bad option): printed without a traceback."""


def _add_channel_option(p: argparse.ArgumentParser) -> None:
    """``sscce predict --channel N``: segment channel N of 4D inputs (the models take one channel)."""
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        metavar="N",
        help="for 4D inputs (several channels or time points): segment channel N (0-based)",
    )


def _add_device_options(p: argparse.ArgumentParser, device: str | None, precision: str | None,
                        precision_default_text: str | None = None) -> None:
    """``--device`` and ``--precision``, spelled the same way in every subcommand.

    ``None`` defaults leave the choice to the core's config (its default is then named in the help).
    """
    from napari_sscce.precision import PRECISIONS

    p.add_argument("--device", default=device, metavar="DEVICE",
                   help=f"auto, cpu, cuda, cuda:N or mps (default: {device or 'auto'})")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"default: {precision_default_text or precision}")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from napari_sscce.inference.config import (
        LITERATURE_STRIDE,
        MODES,
        NAN_POLICIES,
        InferenceConfig,
    )

    defaults = InferenceConfig()
    p = sub.add_parser(
        "predict",
        help="segment volumes and write label, entropy and KL maps",
        description="Writes <name>_seg.nii.gz, <name>_entropy.nii.gz and <name>_kl.nii.gz per input, "
        "on the input's grid (its affine).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scans (.nii/.nii.gz/.nrrd/.h5/...)")
    p.add_argument(
        "--model",
        required=True,
        metavar="CKPT",
        help="model file written by `sscce train`, or a packaged model's name (`sscce models` lists them)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_device_options(p, defaults.device, defaults.precision)
    p.add_argument(
        "--overlap", type=float, default=defaults.overlap, help="window overlap (default %(default)s)"
    )
    p.add_argument(
        "--mode",
        default=defaults.mode,
        choices=(*MODES, "literature"),
        help="window blending; 'literature' = uniform with step (4, 18, 18) z,y,x (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per forward pass")
    p.add_argument(
        "--patch",
        "--patch-size",
        dest="patch",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="window size in X Y Z, like `sscce train --patch` (default: the model's training patch)",
    )
    p.add_argument(
        "--tta", action="store_true", default=defaults.tta, help="mirroring test-time augmentation"
    )
    p.add_argument(
        "--mc-dropout",
        type=int,
        default=defaults.mc_dropout,
        metavar="N",
        help="N Monte-Carlo dropout passes per network for the disagreement map (models with dropout "
        "layers only; default: %(default)s, off)",
    )
    p.add_argument(
        "--largest-component",
        action="store_true",
        default=defaults.largest_component,
        help="keep the largest connected component of each class",
    )
    p.add_argument(
        "--per-network",
        action="store_true",
        default=defaults.return_per_network,
        help="also write each network's foreground probability (<name>_prob_a/_prob_b)",
    )
    p.add_argument(
        "--nan-policy",
        default=defaults.nan_policy,
        choices=NAN_POLICIES,
        help="NaN/Inf voxels in an input: error (name the file and count them), or replace them by zero "
        "or by the mean of the other voxels (default: %(default)s)",
    )

    _add_channel_option(p)

    def run(args: argparse.Namespace) -> int:

        from tqdm import tqdm

        from napari_sscce.inference.files import predict_files

        model = _resolve_model_arg(args.model)
        overrides = (
            {"mode": "uniform", "stride": LITERATURE_STRIDE}
            if args.mode == "literature"
            else {"mode": args.mode}
        )
        config = InferenceConfig(
            patch_size=tuple(reversed(args.patch)) if args.patch else None,  # X Y Z -> (z, y, x)
            overlap=args.overlap,
            batch_size=args.batch_size,
            tta=args.tta,
            mc_dropout=args.mc_dropout,
            largest_component=args.largest_component,
            device=args.device,
            precision=args.precision,
            return_per_network=args.per_network,
            nan_policy=args.nan_policy,
            **overrides,
        )
        with tqdm(total=0, unit="window", dynamic_ncols=True) as bar:

            def progress(event) -> None:
                if event.stage == "files":
                    tqdm.write(event.message)
                    return
                if event.total and bar.total != event.total:
                    bar.reset(total=event.total)
                bar.set_description(event.message.split(":")[0])
                bar.n = event.step
                bar.refresh()

            channel = {"channel": args.channel} if args.channel is not None else {}
            written = predict_files(model, args.inputs, args.out, config, progress, **channel)
        for path in written:
            print(path)
        return 0

    p.set_defaults(func=run)


def _resolve_model_arg(name_or_path: str) -> str:
    """A model file path from ``--model``: an existing file, or a packaged model's name."""
    from napari_sscce.models.pretrained import resolve_model

    try:
        return str(resolve_model(name_or_path))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the models shipped with the package",
        description="Name, file, training data and validation figures of each packaged model; the name is "
        "accepted by `sscce predict --model`.",
    )
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")

    def run(args: argparse.Namespace) -> int:
        import json

        from napari_sscce.models.pretrained import format_card, list_models, models_dir

        models = list_models()
        if args.json:
            print(json.dumps({m.name: {"path": str(m.path), **m.card} for m in models}, indent=1))
            return 0
        if not models:
            print(f"no packaged models in {models_dir()}")
            return 0
        print("\n\n".join(format_card(m) for m in models))
        return 0

    p.set_defaults(func=run)


def _add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    """``sscce train --overwrite``: the only way to replace a finished or stopped run in ``--out``."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in --out and start afresh (without it, or --resume, a folder that "
        "holds a run is refused)",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    from napari_sscce.methods import method_names
    from napari_sscce.training.config import TrainConfig, parse_method_options

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model (CCE, UG-MCL or supervised)",
        description="Writes config.json, metrics.jsonl, last.safetensors, best.safetensors and "
        "train_state.pt (for --resume) to --out. Ctrl-C stops cleanly after the current step "
        "(saving a resumable state); a second Ctrl-C aborts.",
    )
    p.add_argument("--data", metavar="DIR", help="dataset folder (images/ + labels/, MSD, LA h5, workspace)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", metavar="JSON", help="splits.json with labeled / unlabeled / val lists")
    which.add_argument("--labeled", type=int, metavar="N", help="use the first N labeled cases as labeled")
    p.add_argument("--method", choices=method_names(), help=f"default: {d.method}")
    p.add_argument("--iterations", type=int, metavar="N", help=f"default: {d.iterations}")
    p.add_argument(
        "--patch",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="training patch in X Y Z like the papers (e.g. 112 112 80); stored as (z, y, x). "
        f"Default: {' '.join(map(str, reversed(d.patch_size)))}",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    _add_device_options(p, None, None, d.precision)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    _add_overwrite_flag(p)
    p.add_argument(
        "--batch",
        type=int,
        nargs=2,
        metavar=("L", "U"),
        help=f"labeled and unlabeled rows per batch (default: {d.labeled_bs} {d.unlabeled_bs})",
    )
    p.add_argument("--seed", type=int, help=f"default: {d.seed}")
    p.add_argument(
        "--val-every", type=int, metavar="N", help=f"validate every N iterations (default: {d.val_every})"
    )
    p.add_argument("--lr", type=float, help=f"default: {d.lr}")
    p.add_argument("--schedule", choices=("step", "poly", "constant"), help=f"default: {d.schedule}")
    p.add_argument("--workers", type=int, metavar="N", help="prepare batches in a background thread if > 0")
    p.add_argument("--init", metavar="CKPT", help="start from this model (fine-tuning)")
    p.add_argument(
        "--no-dropout",
        action="store_true",
        help="networks without their Dropout3d(0.5) layers (advised for narrow networks, < 16 base filters)",
    )
    p.add_argument("--base-filters", type=int, metavar="N", help=f"network width (default: {d.base_filters})")
    p.add_argument(
        "--flip-axes",
        metavar="AXES",
        help="axes random flips may mirror: auto (all but those that order the classes, e.g. hippocampus "
        f"head/body), letters of zyx, or none (default: {d.flip_axes})",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option (JSON value), e.g. --option cps=false --option entropy_percentile=30",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def config_from_args(args: argparse.Namespace) -> TrainConfig:
        from pathlib import Path

        if args.resume:
            saved = Path(args.out) / "config.json"
            if not saved.is_file():
                raise UserError(f"{saved}: no run to resume (config.json is missing)")
            cfg = TrainConfig.load(saved)
        else:
            if not args.data:
                raise UserError("--data is required (unless --resume)")
            cfg = TrainConfig()
        changes: dict = {"out": args.out, "resume": bool(args.resume), "overwrite": bool(args.overwrite)}
        plain = {  # argument -> TrainConfig field
            **{name: name for name in ("data", "split", "labeled", "method", "iterations", "device")},
            **{name: name for name in ("precision", "seed", "val_every", "lr", "schedule")},
            "workers": "num_workers",
            "init": "init_checkpoint",
            "flip_axes": "flip_axes",
            "base_filters": "base_filters",
        }
        for arg, fieldname in plain.items():
            value = getattr(args, arg)
            if value is not None:
                changes[fieldname] = value
        if args.no_dropout:
            changes["has_dropout"] = False
        if args.patch:
            changes["patch_size"] = tuple(reversed(args.patch))  # X Y Z on the command line -> (z, y, x)
        if args.batch:
            changes["labeled_bs"], changes["unlabeled_bs"] = args.batch
        if args.option:
            try:
                changes["method_options"] = {**cfg.method_options, **parse_method_options(args.option)}
            except ValueError as exc:
                raise UserError(str(exc)) from exc
        try:
            return cfg.replace(**changes)
        except (TypeError, ValueError) as exc:
            raise UserError(str(exc)) from None

    def run(args: argparse.Namespace) -> int:
        import signal

        from tqdm import tqdm

        from napari_sscce.progress import CancelToken
        from napari_sscce.training.loop import TrainingError, train

        cfg = config_from_args(args)
        _check_init_compatible(cfg.method, cfg.init_checkpoint)
        token = CancelToken()
        bar = tqdm(total=cfg.iterations, desc=f"train {cfg.method}", unit="it", disable=args.quiet)
        bar.update(0)
        postfix: dict = {}

        def progress(event) -> None:
            if event.stage == "train" and "loss" in event.values:
                bar.n = event.step
                postfix["loss"] = f"{event.values['loss']:.4f}"
                if event.values.get("skipped_steps"):
                    postfix["skipped"] = event.values["skipped_steps"]
                bar.set_postfix(postfix, refresh=False)
                bar.refresh()
            elif event.stage == "validate" and "val_dice" in event.values:
                postfix["val_dice"] = f"{event.values['val_dice']:.4f}"
                bar.set_postfix(postfix)
            elif event.stage == "train" and event.message.startswith("precision"):
                bar.write(event.message)  # what precision runs, and why

        def on_sigint(signum, frame) -> None:
            if token.cancelled:
                raise KeyboardInterrupt
            token.cancel()
            bar.write("stopping after this step (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            result = train(cfg, progress=progress, cancel=token)
        except TrainingError as exc:
            bar.close()
            print(f"sscce train: failed: {exc}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        if result.best_path is None:  # a non-zero rank under torchrun: rank 0 writes and reports
            return 0
        state = "stopped (resume with --resume)" if result.cancelled else "done"
        best = f", best val Dice {result.best_metric:.4f}" if result.best_metric is not None else ""
        print(f"{state} at iteration {result.iterations}{best}; model: {result.best_path}")
        if result.warning:
            print(f"sscce train: warning: {result.warning}", file=sys.stderr)
        return 0

    p.set_defaults(func=run)


def _check_init_compatible(method: str, init: str | None) -> None:
    """``--init`` follows the fine-tune's compatibility rule (one message for CLI and widget)."""
    if not init:
        return
    from napari_sscce.methods import IncompatibleModelError, check_compatible

    try:
        check_compatible(method, init)
    except IncompatibleModelError as exc:
        raise UserError(str(exc)) from None


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from napari_sscce import loop as ft
    from napari_sscce.methods import IncompatibleModelError, method_names

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on a workspace (or train a first one) and add it as a new version",
        description="The fine-tune of the napari widget, headless: the model's patch, normalisation, classes "
        "and flips are kept; its labeled set is replayed when it can be found (else L2-SP); part of the "
        "confirmed slices is held aside to score the starting and the new model; a new model that scores "
        "worse is kept as a version but not made current.",
    )
    p.add_argument("--workspace", required=True, metavar="DIR", help="workspace folder (from the widget)")
    p.add_argument("--model", metavar="CKPT", help="starting model (default: the workspace's current model)")
    p.add_argument("--new", action="store_true", help="train a first model from scratch (cold start)")
    p.add_argument("--method", choices=method_names(), help="default: the model's own method")
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help=f"default: {ft.FINETUNE_OVERRIDES['iterations']} ({ft.COLD_START['iterations']} with --new)",
    )
    p.add_argument("--holdout", type=float, default=ft.HOLDOUT_FRACTION, metavar="F",
                   help="share of confirmed slices held aside to score the models (default %(default)s)")
    p.add_argument("--no-replay", action="store_true", help="do not replay the model's own labeled set")
    p.add_argument("--l2sp", type=float, default=None, metavar="W",
                   help=f"L2-SP weight toward the starting weights (default {ft.DEFAULT_L2SP} without "
                   "replay, 0 with it)")
    p.add_argument("--distill", type=float, default=None, metavar="W",
                   help="weight of the starting model's own labels outside the confirmed voxels (default "
                   f"{ft.DISTILL_WEIGHT} without replay, 0 with it)")
    p.add_argument("--seed", type=int, default=0)
    _add_device_options(p, "auto", None, "the training default")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from tqdm import tqdm

        changes = {"seed": args.seed, "device": args.device}
        if args.precision:
            changes["precision"] = args.precision
        bar = tqdm(total=0, unit="it", disable=args.quiet, dynamic_ncols=True)

        def progress(event) -> None:
            if event.stage == "train" and "loss" in event.values:
                if bar.total != event.total:
                    bar.reset(total=event.total)
                bar.n = event.step
                bar.set_postfix(loss=f"{event.values['loss']:.4f}", refresh=False)
                bar.refresh()
            elif event.message and not event.values:
                bar.write(event.message)

        try:
            result = ft.run_finetune(
                args.workspace, args.model, args.method, args.iterations, progress=progress,
                cold_start=args.new, holdout=args.holdout, replay=not args.no_replay, l2sp=args.l2sp,
                distill=args.distill, **changes,
            )
        except IncompatibleModelError as exc:
            raise UserError(str(exc)) from None
        finally:
            bar.close()
        print(result.message)
        if result.current_path is not None:
            print(f"model in use: {result.current_path}")
        return 0

    p.set_defaults(func=run)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Dice, Jaccard, HD95, ASD of predictions against ground truth",
        description="Pair <case>_seg.nii.gz (or <case>.nii.gz) predictions with ground-truth files of the "
        "same case and print Dice / Jaccard (%) and HD95 / ASD in voxels (as the papers report) and mm.",
    )
    p.add_argument("--pred", required=True, help="folder of predicted label maps")
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps (NIfTI, NRRD, LA .h5 ...)")
    p.add_argument("--out", default=None, help="write metrics.csv and metrics.json to this folder")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes including background (default: 1 + largest ground-truth label)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel size in mm for the mm metrics (default: each ground truth's own)")
    p.add_argument("--empty", choices=("zero", "nan"), default="zero",
                   help="score of an empty prediction or ground truth: 0 as the papers (default) or nan")
    p.add_argument("--summary", action="store_true", help="print only each case's mean and the summary rows")
    p.add_argument("--unexpected", choices=("error", "ignore"), default="error",
                   help="ground-truth values outside --num-classes: refuse (default) or leave them out")

    def run(args: argparse.Namespace) -> int:
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

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="open napari with the plugin and the sample data")
    p.add_argument("--screenshot", default=None, help="save a screenshot to this PNG and exit")

    def run(args: argparse.Namespace) -> int:
        from napari_sscce import demo

        return demo.main(["--screenshot", args.screenshot] if args.screenshot else [])

    p.set_defaults(func=run)


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report torch, devices, CPU flags, precision verdicts and bf16-vs-fp32 speed",
        description="Like `napari --info`: versions, devices, the CPU's bf16 flags, what precision 'auto' "
        "picks, the training self-check (bf16/fp16 vs fp32 loss and gradient error), the inference bf16 "
        "check (max probability difference) and the measured forward speed of bf16 and fp32.",
    )
    p.add_argument("--quick", action="store_true", help="skip the measurements (versions and devices only)")

    def run(args: argparse.Namespace) -> int:
        from napari_sscce.precision import doctor_report

        print(doctor_report(measure=not args.quick))
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``sscce`` argument parser."""
    parser = argparse.ArgumentParser(prog="sscce", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-sscce {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_models(sub)
    _add_train(sub)
    _add_finetune(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_doctor(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sscce`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sscce {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        # readers and checkpoint loaders raise these with messages that name the file
        print(f"sscce {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sscce {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
