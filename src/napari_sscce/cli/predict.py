"""``sscce predict``: segment volumes and write label, entropy and KL maps."""

from __future__ import annotations

import argparse

from napari_sscce.cli._common import ProgressPrinter, add_device_options, resolve_model_arg
from napari_sscce.progress import CancelToken, ProgressCallback

DESCRIPTION = ("Writes <name>_seg.nii.gz, <name>_entropy.nii.gz and <name>_kl.nii.gz per input, on the "
               "input's grid (its affine); with --regions also the ranked regions and slices. Ctrl-C stops "
               "before the next batch of windows; the unfinished input writes nothing.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce predict`` and its options."""
    from napari_sscce.inference.config import MODES, NAN_POLICIES, InferenceConfig

    d = InferenceConfig()
    p = sub.add_parser("predict", help="segment volumes and write label, entropy and KL maps",
                       description=DESCRIPTION)
    add = p.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="scans (.nii/.nii.gz/.nrrd/.h5/...)")
    add("--model", required=True, metavar="CKPT",
        help="model file written by `sscce train`, or a packaged model's name (`sscce models` lists them)")
    add("--out", required=True, metavar="DIR", help="output folder")
    add_device_options(p, d.device, d.precision)
    add("--overlap", type=float, default=d.overlap, help="window overlap (default %(default)s)")
    add("--mode", default=d.mode, choices=(*MODES, "literature"),
        help="window blending; 'literature' = uniform with step (4, 18, 18) z,y,x (default %(default)s)")
    add("--batch-size", type=int, default=d.batch_size, help="windows per forward pass")
    add("--patch", "--patch-size", dest="patch", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
        help="window size in X Y Z, like `sscce train --patch` (default: the model's training patch)")
    add("--tta", action=argparse.BooleanOptionalAction, default=None,
        help="mirroring test-time augmentation (default: on with --regions: +0.2 Dice points with the "
        "packaged models, and the 10 top-ranked LA slices hold 89-90 %% of the truly worst ten's errors "
        "either way; benchmarks/results/ranking_*.md)")
    add("--regions", action="store_true",
        help="also write the ranking: <name>_regions.nii.gz (voxel value k = the region ranked k) and "
        "<name>_regions.json (ranked regions and slices, z y x order); with several inputs also "
        "scans_ranked.json, the scans by expected errors (which scan to correct next)")
    add("--mc-dropout", type=int, default=d.mc_dropout, metavar="N",
        help="N Monte-Carlo dropout passes per network for the disagreement map (models with dropout "
        "layers only; default: %(default)s, off)")
    add("--largest-component", action="store_true", default=d.largest_component,
        help="keep the largest connected component of each class")
    add("--per-network", action="store_true", default=d.return_per_network,
        help="also write each network's foreground probability (<name>_prob_a/_prob_b)")
    add("--nan-policy", default=d.nan_policy, choices=NAN_POLICIES,
        help="NaN/Inf voxels in an input: error (name the file and count them), or replace them by zero "
        "or by the mean of the other voxels (default: %(default)s)")
    add("--channel", type=int, default=None, metavar="N",
        help="for 4D inputs (several channels or time points): segment channel N (0-based) with a "
        "one-channel model; without it a 4D NIfTI or case_0000, case_0001, ... files are one "
        "multi-channel scan")
    p.set_defaults(func=run)
    return p


def inference_config(args: argparse.Namespace):
    """The :class:`~napari_sscce.inference.config.InferenceConfig` of ``sscce predict``'s options."""
    from napari_sscce.inference.config import LITERATURE_STRIDE, InferenceConfig

    literature = args.mode == "literature"
    mode = {"mode": "uniform", "stride": LITERATURE_STRIDE} if literature else {"mode": args.mode}
    return InferenceConfig(
        patch_size=tuple(reversed(args.patch)) if args.patch else None,  # X Y Z -> (z, y, x)
        overlap=args.overlap, batch_size=args.batch_size,
        tta=bool(getattr(args, "regions", False)) if args.tta is None else bool(args.tta),
        mc_dropout=args.mc_dropout,
        largest_component=args.largest_component, device=args.device, precision=args.precision,
        return_per_network=args.per_network, nan_policy=args.nan_policy, **mode,
    )


def run(args: argparse.Namespace, cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None) -> int:
    """Segment ``args.inputs`` into ``args.out``; print each written path.

    ``cancel`` stops before the next batch of windows (raises :class:`~napari_sscce.progress.Cancelled`;
    the outputs of finished inputs stay, the unfinished input writes nothing).
    """
    from napari_sscce.inference.files import predict_files

    model = resolve_model_arg(args.model)
    printer = ProgressPrinter("window")
    extra = {"channel": args.channel} if args.channel is not None else {}
    if getattr(args, "regions", False):
        extra["regions"] = True
    try:
        written = predict_files(model, args.inputs, args.out, inference_config(args), progress or printer,
                                cancel=cancel, **extra)
    finally:
        printer.close()
    for path in written:
        print(path)
    return 0
