"""The ``sscce`` command line: ``train``, ``finetune``, ``predict``, ``models``, ``evaluate``, ``demo``,
``doctor``.

Each subcommand is a module with ``add_parser(sub)`` (its options) and ``run(args, cancel)`` (a thin shell
over a headless core function, callable from tests); :mod:`napari_sscce.cli._common` holds the progress
adapter, the Ctrl-C handling and the error surface that every subcommand shares.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from napari_sscce import __version__
from napari_sscce.cli import demo, doctor, evaluate, finetune, models, predict, train
from napari_sscce.cli._common import UserError, add_debug_flag, run_command, sigint_cancels

__all__ = ["SUBCOMMANDS", "UserError", "build_parser", "main"]

#: the subcommands, in the order ``sscce --help`` lists them
SUBCOMMANDS = (predict, models, train, finetune, evaluate, demo, doctor)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``sscce`` argument parser."""
    parser = argparse.ArgumentParser(prog="sscce", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-sscce {__version__}")
    add_debug_flag(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        add_debug_flag(module.add_parser(sub), top_level=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sscce`` command: parse, run with Ctrl-C as a clean cancel, one-line errors."""
    args = build_parser().parse_args(argv)
    with sigint_cancels(args.command) as cancel:
        return run_command(args.command, args.func, args, cancel, debug=args.debug)
