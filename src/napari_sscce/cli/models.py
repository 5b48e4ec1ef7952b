"""``sscce models``: list the models shipped with the package."""

from __future__ import annotations

import argparse

from napari_sscce.progress import CancelToken

DESCRIPTION = ("Name, file, training data and validation figures of each packaged model; the name is "
               "accepted by `sscce predict --model`, `sscce finetune --model` and `sscce train --init`.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``sscce models``."""
    p = sub.add_parser("models", help="list the models shipped with the package", description=DESCRIPTION)
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, cancel: CancelToken | None = None) -> int:
    """Print the packaged models' cards (or JSON)."""
    import json

    from napari_sscce.models.pretrained import format_card, list_models, models_dir

    models = list_models()
    if args.json:
        print(json.dumps({m.name: {"path": str(m.path), **m.card} for m in models}, indent=1))
    elif not models:
        print(f"no packaged models in {models_dir()}")
    else:
        print("\n\n".join(format_card(m) for m in models))
    return 0
