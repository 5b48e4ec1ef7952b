"""The figures behind the suite's CCE learning test, over more seeds and with planted bugs (issue 16).

Plays the task of ``tests/methods/test_cce_learns_from_unlabeled.py`` (two noisy ball volumes labeled by
one click per class, two unlabeled volumes, four validation volumes; the test's own code is loaded, so the
two cannot drift apart) for each seed: supervised and CCE validation Dice. ``--variant`` plants a bug
in CCE first:

* ``inverted``: pseudo-labels of the other class;
* ``no-cps-gradient``: the pseudo-label cross-entropy sees detached logits;
* ``no-rampup``: the unsupervised weights at full strength from the first step;
* ``self-labels``: each net learns its own pseudo-labels instead of the other's.

Prints one JSON row per seed and writes every row, with the CPU, torch version and thread count, to
``benchmarks/results/ssl_clicks.json`` (rows of the same variant and seeds are replaced).

Usage::

    python benchmarks/ssl_clicks.py --seeds 0 1 2 3 4 5
    python benchmarks/ssl_clicks.py --seeds 0 1 2 --variant inverted
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "tests" / "methods" / "test_cce_learns_from_unlabeled.py"
VARIANTS = ("none", "inverted", "no-cps-gradient", "no-rampup", "self-labels")


def load_test_module():
    """The learning test's module (its task and training helper)."""
    spec = importlib.util.spec_from_file_location("cce_learning_test", TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def planted(variant: str) -> Iterator[None]:
    """Plant ``variant``'s bug in ``methods.cce`` for the duration of the block."""
    from napari_sscce.methods import cce

    saved = {name: getattr(cce, name) for name in ("pseudo_labels", "masked_cross_entropy")}
    saved_class = {name: getattr(cce.CCEMethod, name) for name in ("rampup_weight", "_targets")}
    pseudo, cross_entropy = saved["pseudo_labels"], saved["masked_cross_entropy"]
    if variant == "inverted":
        cce.pseudo_labels = lambda prob, foreground_first=True: 1 - pseudo(prob, foreground_first)
    elif variant == "no-cps-gradient":
        cce.masked_cross_entropy = lambda logits, *a, **k: cross_entropy(logits.detach(), *a, **k)
    elif variant == "no-rampup":
        cce.CCEMethod.rampup_weight = lambda self, iteration, base=1.0: float(base)
    elif variant == "self-labels":
        def own_labels(self, p_a, p_b, unl):
            targets = saved_class["_targets"](self, p_a, p_b, unl)
            return targets._replace(pseudo_a=targets.pseudo_b, pseudo_b=targets.pseudo_a)

        cce.CCEMethod._targets = own_labels
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(cce, name, value)
        for name, value in saved_class.items():
            setattr(cce.CCEMethod, name, value)


def main(argv: list[str] | None = None) -> int:
    """Play every seed; print and save the rows."""
    import numpy as np
    import torch

    from napari_sscce.atomic import atomic_write_json
    from napari_sscce.precision import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--variant", choices=VARIANTS, default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssl_clicks.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = load_test_module()
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        supervised = test._val_dice(seed, "supervised")
        with planted(args.variant):
            cce = test._val_dice(seed, "cce", {"cps_weight": 1.0})
        row = {
            "variant": args.variant, "seed": seed, "supervised": round(supervised, 4), "cce": round(cce, 4),
            "gain": round(cce - supervised, 4), "threads": args.threads, "cpu": cpu_model(),
            "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    gains = [r["gain"] for r in rows]
    print(f"{args.variant}: gain min {min(gains):+.3f} mean {float(np.mean(gains)):+.3f}", flush=True)
    key = {(r["variant"], r["seed"], r["threads"]) for r in rows}
    previous = json.loads(args.out.read_text()) if args.out.is_file() else []
    kept = [r for r in previous if (r["variant"], r["seed"], r.get("threads", 1)) not in key]
    atomic_write_json(args.out, [*kept, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
