"""The ``sscce`` command line: ``train``, ``predict``, ``evaluate``, ``demo``.

Each subcommand is a thin shell over a headless core function; progress events become a tqdm bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_sscce import __version__


class UserError(Exception):
    """An error whose message is for the user (bad file, bad option): printed without a traceback."""


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from napari_sscce.inference.config import DEVICES, LITERATURE_STRIDE, MODES, PRECISIONS, InferenceConfig

    defaults = InferenceConfig()
    p = sub.add_parser(
        "predict",
        help="segment volumes and write label, entropy and KL maps",
        description="Writes <name>_seg.nii.gz, <name>_entropy.nii.gz and <name>_kl.nii.gz per input, "
        "on the input's grid (its affine).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scans (.nii/.nii.gz/.nrrd/.h5/...)")
    p.add_argument("--model", required=True, metavar="CKPT", help="model file written by `sscce train`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default=defaults.device, choices=DEVICES, help="default: %(default)s")
    p.add_argument("--precision", default=defaults.precision, choices=PRECISIONS, help="default: %(default)s")
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
        "--patch-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="window size (default: the model's training patch)",
    )
    p.add_argument(
        "--tta", action="store_true", default=defaults.tta, help="mirroring test-time augmentation"
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

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from tqdm import tqdm

        from napari_sscce.inference.files import predict_files

        if not Path(args.model).is_file():
            raise UserError(f"{args.model}: model file not found")
        overrides = (
            {"mode": "uniform", "stride": LITERATURE_STRIDE}
            if args.mode == "literature"
            else {"mode": args.mode}
        )
        config = InferenceConfig(
            patch_size=args.patch_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            tta=args.tta,
            largest_component=args.largest_component,
            device=args.device,
            precision=args.precision,
            return_per_network=args.per_network,
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

            written = predict_files(args.model, args.inputs, args.out, config, progress)
        for path in written:
            print(path)
        return 0

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (CCE, UG-MCL or supervised)")
    p.set_defaults(func=lambda args: _not_ready("train"))


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

    def run(args: argparse.Namespace) -> int:
        import warnings

        from napari_sscce.metrics.evaluate import evaluate_folders, format_table

        if args.num_classes is not None and args.num_classes < 2:
            raise UserError(f"--num-classes must be at least 2, got {args.num_classes}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = evaluate_folders(args.pred, args.gt, args.out, num_classes=args.num_classes,
                                    spacing=args.spacing, empty=args.empty)
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


def _not_ready(name: str) -> int:
    raise UserError(f"`sscce {name}` is not available in this build")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``sscce`` argument parser."""
    parser = argparse.ArgumentParser(prog="sscce", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-sscce {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_demo(sub)
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
