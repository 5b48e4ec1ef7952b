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
    p = sub.add_parser("predict", help="segment volumes and write label, entropy and KL maps")
    p.set_defaults(func=lambda args: _not_ready("predict"))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (CCE, UG-MCL or supervised)")
    p.set_defaults(func=lambda args: _not_ready("train"))


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD of predictions against ground truth")
    p.set_defaults(func=lambda args: _not_ready("evaluate"))


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
