"""Seconds per training step on this machine: fp32 against bf16 (timed only where bf16 trains correctly),
channels_last_3d on and off, one and two threads, for CCE and supervised at the hippocampus and LA patch
sizes.

Each configuration runs the product's own training step (the method's losses under autocast, backward, the
guarded optimiser step of :func:`napari_sscce.training.loop.optimizer_step`) on a synthetic batch shaped as
training draws it. bf16 is first put through :func:`napari_sscce.precision.training_self_check` (fp32 warm-up
steps, then several compared batches); where it fails, bf16 is not timed and the check's figures are written
instead, together with how many of a few real bf16 steps came out non-finite. GFLOP/s use a forward FLOP
count from hooks on every Conv3d / ConvTranspose3d (backward counted as twice the forward), against the
conv3d peak of the machine given with ``--peak``.

Results go to ``benchmarks/results/train_step.json`` and ``.md`` with the CPU model, torch version and the
load of the machine while it ran (1-minute load average before and after): a figure is a claim about that
machine. A failing stage raises (non-zero exit, nothing written).

Usage::

    python benchmarks/train_step.py                 # full matrix (about 15-25 min on 2 cores)
    python benchmarks/train_step.py --quick         # hippocampus size only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: (name, patch z y x, base filters, labeled rows, unlabeled rows): the hippocampus recipe of the packaged
#: model and the LA benchmark patch (112 x 112 x 80 in the papers' x y z) at the packaged width
SIZES = [
    ("hippocampus", (32, 48, 32), 8, 2, 2),
    ("la", (80, 112, 112), 8, 2, 2),
]


def _conv_flops(model, batch) -> float:
    """Forward FLOPs of every Conv3d / ConvTranspose3d of ``model`` on ``batch`` (2 per multiply-add)."""
    import torch

    total = [0.0]

    def hook(module, inputs, output):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        if isinstance(module, torch.nn.ConvTranspose3d):
            positions = inputs[0][0].numel() / module.in_channels * inputs[0].shape[0]
            total[0] += 2.0 * positions * module.in_channels * module.out_channels * kernel / module.groups
        else:
            total[0] += 2.0 * output.numel() * module.in_channels * kernel / module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        model(batch.image)
    for h in handles:
        h.remove()
    return total[0]


def _batch(patch, labeled: int, unlabeled: int, num_classes: int, seed: int):
    import torch

    from napari_sscce.methods.base import Batch

    gen = torch.Generator().manual_seed(seed)
    rows = labeled + unlabeled
    image = torch.randn(rows, 1, *patch, generator=gen)
    label = ((image[:, 0] > 0.3).long() + (image[:, 0] > 1.2).long()).clamp_max(num_classes - 1)
    label[labeled:] = 0
    mask = torch.zeros(rows, *patch)
    mask[:labeled] = 1
    return Batch(image, label, mask, labeled)


def _setup(method_name: str, patch, filters: int, labeled: int, unlabeled: int, channels_last: bool):
    import torch

    from napari_sscce.methods import get_method
    from napari_sscce.training.config import TrainConfig

    cfg = TrainConfig(method=method_name, patch_size=patch, base_filters=filters, has_dropout=False,
                      labeled_bs=labeled, unlabeled_bs=unlabeled if method_name == "cce" else 0)
    method = get_method(method_name)(cfg)
    torch.manual_seed(0)
    model = method.build_model(1, 3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return method, model, method.optimizers(model), cfg


def time_steps(method_name, patch, filters, labeled, unlabeled, precision, channels_last, steps) -> dict:
    """Median seconds per step (after one warm-up step) and the non-finite steps among them."""
    import torch

    from napari_sscce.precision import autocast_dtype
    from napari_sscce.training.loop import optimizer_step

    method, model, optimizers, cfg = _setup(method_name, patch, filters, labeled, unlabeled, channels_last)
    rows_u = cfg.unlabeled_bs
    dtype = autocast_dtype(precision)
    model.train()
    times, bad = [], 0
    for i in range(steps + 1):
        batch = _batch(patch, labeled, rows_u, 3, seed=i)
        if channels_last:
            batch.image = batch.image.contiguous(memory_format=torch.channels_last_3d)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = method.losses(model, batch, i)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        stepped = optimizer_step(loss, optimizers, None)
        if stepped:
            method.after_step(model, i)
        if i:
            times.append(time.perf_counter() - start)
            bad += int(not stepped)
    flops = _conv_flops(model, _batch(patch, labeled, rows_u, 3, seed=0))
    median = statistics.median(times)
    return {"seconds": median, "min": min(times), "max": max(times), "steps": steps,
            "nonfinite_steps": bad, "conv_gflop_per_step": 3 * flops / 1e9,
            "gflops": 3 * flops / 1e9 / median}


def bf16_check(method_name, patch, filters, labeled, unlabeled) -> dict:
    """The product's training self-check of bf16 for this model (on its own batches)."""
    import torch

    from napari_sscce.precision import CHECK_BATCHES, training_self_check

    _, model, _, cfg = _setup(method_name, patch, filters, labeled, unlabeled, True)
    batches = []
    for k in range(CHECK_BATCHES):
        b = _batch(patch, labeled, cfg.unlabeled_bs, 3, seed=100 + k)
        b.image = b.image.contiguous(memory_format=torch.channels_last_3d)
        batches.append(b)
    check = training_self_check(model, batches, torch.device("cpu"), "bf16")
    return {"passed": check.passed, "grad_rel_err": check.grad_rel_err, "grad_rel_errs": check.grad_rel_errs,
            "nonfinite_grads": check.nonfinite_grads, "reason": check.reason}


def run(args) -> dict:
    import torch

    from napari_sscce.precision import cpu_bf16_flags, cpu_model, resolve_precision, training_policy

    load_before = os.getloadavg()[0]
    rows = []
    sizes = SIZES[:1] if args.quick else SIZES
    for size, patch, filters, labeled, unlabeled in sizes:
        steps = args.steps if size == "hippocampus" else max(2, args.steps // 3)
        for method in ("supervised", "cce"):
            check = bf16_check(method, patch, filters, labeled, unlabeled)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for precision, channels_last in (("fp32", True), ("fp32", False), ("bf16", True)):
                    if size == "la" and (threads == 1 or not channels_last and precision == "fp32"):
                        continue  # the LA size: the layout and thread comparisons at the small size suffice
                    row = {"size": size, "patch_zyx": list(patch), "base_filters": filters,
                           "batch": [labeled, unlabeled if method == "cce" else 0], "method": method,
                           "threads": threads, "precision": precision, "channels_last": channels_last}
                    if precision == "bf16" and not check["passed"]:
                        probe = time_steps(method, patch, filters, labeled, unlabeled, "bf16", True, 3)
                        row.update(skipped=f"bf16 does not train correctly here: {check['reason']}",
                                   bf16_nonfinite_of_3_steps=probe["nonfinite_steps"], check=check)
                    else:
                        row.update(time_steps(method, patch, filters, labeled, unlabeled, precision,
                                              channels_last, steps))
                        if precision == "bf16":
                            row["check"] = check
                            fp32 = [x for x in rows if x["size"] == size and x["method"] == method
                                    and x["threads"] == threads and x["precision"] == "fp32"
                                    and x["channels_last"] and "seconds" in x]
                            if fp32:
                                row["seconds_fp32"] = fp32[-1]["seconds"]
                    rows.append(row)
                    print(json.dumps(row, default=float), flush=True)
    return {
        "cpu": cpu_model(), "cpu_flags": cpu_bf16_flags(), "torch": torch.__version__,
        "cores": os.cpu_count(), "training_policy": training_policy(torch.device("cpu")),
        "auto_training_precision": resolve_precision(torch.device("cpu"), "auto", "training"),
        "conv3d_peak_gflops": args.peak, "load_before": load_before, "load_after": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"), "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Training step time",
        "",
        f"Measured on **{result['cpu']}** ({result['cores']} cores), torch {result['torch']}, "
        f"{result['date']}; 1-minute load {result['load_before']:.1f} before, "
        f"{result['load_after']:.1f} after (a load above the core count means other work shared the cores: "
        "figures are then upper bounds).",
        f"CPU bf16 flags: {', '.join(k for k, v in result['cpu_flags'].items() if v) or 'none'}.",
        f"`auto` trains at **{result['auto_training_precision']}** here: {result['training_policy']}.",
        "",
        "| size | method | threads | precision | channels_last | s / step | conv GFLOP/s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            note = (f"not timed: self-check gradient error {r['check']['grad_rel_err']:.3g}, "
                    f"{r['check']['nonfinite_grads']} non-finite gradient entries; "
                    f"{r['bf16_nonfinite_of_3_steps']} of 3 real bf16 steps non-finite")
            lines.append(f"| {r['size']} | {r['method']} | {r['threads']} | {r['precision']} | "
                         f"{r['channels_last']} | - | - | {note} |")
        else:
            note = f"{r['nonfinite_steps']} of {r['steps']} steps non-finite" if r["nonfinite_steps"] else ""
            if "check" in r:
                note = (f"self-check passed (gradient error {r['check']['grad_rel_err']:.3g}); "
                        f"{r['seconds_fp32'] / r['seconds']:.2f}x fp32" if "seconds_fp32" in r else
                        f"self-check passed (gradient error {r['check']['grad_rel_err']:.3g})") + note
            lines.append(f"| {r['size']} | {r['method']} | {r['threads']} | {r['precision']} | "
                         f"{r['channels_last']} | {r['seconds']:.3f} | {r['gflops']:.0f} | {note} |")
    lines += ["", f"Conv3d peak of this class of machine (2 cores): {result['conv3d_peak_gflops']} GFLOP/s "
              "fp32 (from the project notes); GFLOP/s count Conv3d and ConvTranspose3d only (forward x 3)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the matrix (or, with ``--markdown-only``, re-render the results file); write JSON and Markdown."""
    from napari_sscce.atomic import atomic_write_bytes, atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hippocampus size only")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (LA: a third)")
    parser.add_argument("--peak", default="213-267", help="conv3d fp32 peak of the machine, GFLOP/s")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_step.json")
    parser.add_argument("--markdown-only", action="store_true", help="re-render the Markdown of --out")
    args = parser.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.markdown_only else run(args)
    atomic_write_json(args.out, result)
    atomic_write_bytes(args.out.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
