"""``sscce doctor``: torch, devices, CPU flags, precision verdicts and bf16-vs-fp32 speed."""

from __future__ import annotations

import argparse

from napari_sscce.progress import CancelToken

DESCRIPTION = ("Like `napari --info`: versions, devices, the CPU's bf16 flags, what precision 'auto' picks, "
               "the training self-check (bf16/fp16 vs fp32 loss and gradient error), the inference bf16 "
               "check (max probability difference) and the measured forward speed of bf16 and fp32.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce doctor``."""
    p = sub.add_parser("doctor", description=DESCRIPTION,
                       help="report torch, devices, CPU flags, precision verdicts and bf16-vs-fp32 speed")
    p.add_argument("--quick", action="store_true", help="skip the measurements (versions and devices only)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Print the report."""
    from napari_sscce.precision import doctor_report

    print(doctor_report(measure=not args.quick))
    return 0
