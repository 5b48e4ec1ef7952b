"""``sscce demo``: open napari with the plugin and the sample data."""

from __future__ import annotations

import argparse

from napari_sscce.progress import CancelToken


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce demo``."""
    p = sub.add_parser("demo", help="open napari with the plugin and the sample data")
    p.add_argument("--screenshot", default=None, help="save a screenshot to this PNG and exit")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Open napari (or save a screenshot and exit)."""
    from napari_sscce import demo

    return demo.main(["--screenshot", args.screenshot] if args.screenshot else [])
