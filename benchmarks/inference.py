"""Inference benchmark: our engine vs MONAI's sliding_window_inference vs the LA literature's loop.

Model: the CCE dual network (VNet + ResNet-VNet, 16 base filters, 2 classes), random initialisation (seed 0),
patch (80, 112, 112) (z, y, x) = the LA training patch 112x112x80. Volumes (z, y, x): (96, 160, 160)
("160x160x96") and (88, 142, 190) (an LA-sized "190x142x88"), random normal intensities (seed 0), z-scored
once up front so that all paths see the very same input.

Paths (each measured in a fresh subprocess):

- ``ours``: :func:`napari_sscce.inference.predict.predict_volume` at its defaults (Gaussian blending, overlap
  0.5, 4 windows per batch, device and precision "auto": bf16 on a CPU with AVX512-BF16/AMX) - normalisation,
  both networks, entropy and KL included.
- ``ours_fp32``: the same with ``precision="fp32"``.
- ``monai``: ``monai.inferers.sliding_window_inference`` (mode "gaussian", sigma_scale 0.125, same patch,
  overlap and windows per batch, fp32, ``torch.inference_mode``) with a predictor returning both networks'
  softmax maps, then the mean, argmax, entropy and KL (same functions as ours).
- ``literature``: UA-MT ``test_util.py``'s loop (uniform averaging, stride 18 in x/y, 4 in z, one window per
  forward, fp32, numpy accumulation), run for both networks. With ``--quick`` only the first
  ``--quick-windows`` windows are timed and the time is extrapolated: ``setup + per_window * n_windows``
  (``extrapolated: true`` in the JSON).

Numbers: seconds per volume (wall clock of the whole path after the model is built), voxels/s, peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess, which includes the Python + torch baseline
reported as ``baseline_rss_mb``: the same figure just before the path starts), achieved GFLOP/s = conv FLOPs
of
one window of both networks (``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add) x the
number of windows (x TTA flips) / seconds, against the machine's Conv3d peak measured in the same run (a
64 -> 64 channel 3x3x3 Conv3d on a 40x56x56 map, batch 2, best of its layouts, fp32 and bf16 autocast).
Because the load drifts, every path's subprocess also measures that Conv3d (its precision only) just before
it runs: ``fraction_of_local_peak`` is against that figure (``local_peak_gflops``).
``max_abs_diff_vs_monai``: largest probability difference of ``ours_fp32`` (and of ``ours``) to ``monai``.
The machine is shared: the 1-minute load average is recorded before and after each path.

Usage::

    python benchmarks/inference.py [--quick] [--skip-rss] [--out benchmarks/results]
    python benchmarks/inference.py --cuda      # GPU timings of our engine only (no MONAI needed)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATCH = (80, 112, 112)
VOLUMES = {"160x160x96": (96, 160, 160), "LA 190x142x88": (88, 142, 190)}
RSS_VOLUME = ("256x256x128", (128, 256, 256))
OVERLAP = 0.5
BATCH = 4  # = InferenceConfig's default; MONAI gets the same windows per batch
STRIDE_LIT = (4, 18, 18)


# ---------------------------------------------------------------------------------------------- helpers
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model():
    import torch

    from napari_sscce.models.dual import build_dual_model

    torch.manual_seed(0)
    return build_dual_model("cce", in_channels=1, num_classes=2).eval()


def _volume(shape) -> np.ndarray:
    from napari_sscce.preprocessing import normalize_intensity

    raw = np.random.default_rng(0).normal(100.0, 20.0, shape).astype(np.float32)
    return normalize_intensity(raw, "zscore")


def _uncertainty(prob_a, prob_b):
    import torch

    from napari_sscce.uncertainty import entropy_torch, kl_divergence_torch

    kl = kl_divergence_torch(prob_a, prob_b, dim=0)
    mean = (prob_a + prob_b) * 0.5
    return mean, mean.argmax(0).to(torch.uint8), entropy_torch(mean, dim=0), kl


def window_flops(model) -> float:
    """Conv FLOPs (2 per multiply-add) of both networks on one window."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, *PATCH)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def conv_peak(precisions=("fp32", "bf16"), min_seconds: float = 2.0) -> dict:
    """GFLOP/s of a large Conv3d (64->64, 3x3x3, 2x64x40x56x56) in fp32 and bf16 autocast, best layout."""
    import torch

    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 64, 40, 56, 56)
    flops = 2.0 * 64 * 64 * 27 * x[0, 0].numel() * x.shape[0]
    out = {}
    for precision in precisions:
        best = 0.0
        for channels_last in (False, True):
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            c, xi = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            with torch.inference_mode(), ctx:
                c(xi)
                reps, start = 0, time.perf_counter()
                while reps < 3 or time.perf_counter() - start < min_seconds:
                    c(xi)
                    reps += 1
                seconds = (time.perf_counter() - start) / reps
            best = max(best, flops / seconds / 1e9)
        out[precision] = best
    return out


# ---------------------------------------------------------------------------------------------- paths
def run_ours(shape, precision: str, save: str | None) -> dict:
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume

    model, volume = _model(), _volume(shape)
    baseline = _rss_mb()
    start = time.perf_counter()
    config = InferenceConfig(patch_size=PATCH, precision=precision)
    pred = predict_volume(model, volume, config, metadata={"normalization": {"mode": "zscore"}})
    seconds = time.perf_counter() - start
    if save:
        np.save(save, pred.probabilities)
    return {
        "seconds": seconds,
        "windows": pred.info["windows"],
        "baseline_rss_mb": baseline,
        "device": pred.device,
        "precision": pred.precision,
        "extrapolated": False,
    }


def run_monai(shape, save: str | None) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    model, volume = _model(), _volume(shape)
    baseline = _rss_mb()
    start = time.perf_counter()
    windows = [0]

    def predictor(x):
        windows[0] += x.shape[0]
        la, lb = model(x)
        return torch.softmax(la, 1), torch.softmax(lb, 1)

    with torch.inference_mode():
        x = torch.from_numpy(volume)[None, None]
        prob_a, prob_b = sliding_window_inference(
            x, PATCH, BATCH, predictor, overlap=OVERLAP, mode="gaussian", sigma_scale=0.125
        )
        mean, _labels, _entropy, _kl = _uncertainty(prob_a[0], prob_b[0])
    seconds = time.perf_counter() - start
    if save:
        np.save(save, mean.numpy())
    return {
        "seconds": seconds,
        "windows": windows[0],
        "baseline_rss_mb": baseline,
        "device": "cpu",
        "precision": "fp32",
        "extrapolated": False,
    }


def run_literature(shape, quick_windows: int | None) -> dict:
    """UA-MT test_util.py's loop (in z, y, x order), both networks, optionally timed on a subset."""
    import torch

    model, volume = _model(), _volume(shape)
    baseline = _rss_mb()
    start = time.perf_counter()
    pads = [max(p - n, 0) for n, p in zip(shape, PATCH, strict=True)]
    image = np.pad(volume, [(p // 2, p - p // 2) for p in pads]) if any(pads) else volume
    counts = [math.ceil((n - p) / s) + 1 for n, p, s in zip(image.shape, PATCH, STRIDE_LIT, strict=True)]
    total = counts[0] * counts[1] * counts[2]
    score_a = np.zeros((2, *image.shape), np.float32)
    score_b = np.zeros((2, *image.shape), np.float32)
    cnt = np.zeros(image.shape, np.float32)
    limit = total if quick_windows is None else min(quick_windows, total)
    done, setup = 0, time.perf_counter() - start
    loop_start = time.perf_counter()
    with torch.inference_mode():
        for iz in range(counts[0]):
            for iy in range(counts[1]):
                for ix in range(counts[2]):
                    if done >= limit:
                        break
                    zs, ys, xs = (
                        min(s * i, n - p)
                        for s, i, n, p in zip(STRIDE_LIT, (iz, iy, ix), image.shape, PATCH, strict=True)
                    )
                    sl = (slice(zs, zs + PATCH[0]), slice(ys, ys + PATCH[1]), slice(xs, xs + PATCH[2]))
                    patch = torch.from_numpy(np.ascontiguousarray(image[sl]))[None, None]
                    la, lb = model(patch)
                    score_a[(slice(None), *sl)] += torch.softmax(la, 1)[0].numpy()
                    score_b[(slice(None), *sl)] += torch.softmax(lb, 1)[0].numpy()
                    cnt[sl] += 1
                    done += 1
    per_window = (time.perf_counter() - loop_start) / max(done, 1)
    post_start = time.perf_counter()
    np.maximum(cnt, 1, out=cnt)
    prob_a = torch.from_numpy(score_a / cnt[None])
    prob_b = torch.from_numpy(score_b / cnt[None])
    _uncertainty(prob_a, prob_b)
    post = time.perf_counter() - post_start
    seconds = setup + per_window * total + post
    return {
        "seconds": seconds,
        "windows": total,
        "timed_windows": done,
        "baseline_rss_mb": baseline,
        "device": "cpu",
        "precision": "fp32",
        "extrapolated": done < total,
    }


def child(args) -> None:
    shape = tuple(int(v) for v in args.shape.split(","))
    local_peak = None
    if args.path != "setup":  # the same Conv3d peak, measured right before the path (the load drifts)
        precision = "fp32" if args.path in ("ours_fp32", "monai", "literature") else "bf16"
        local_peak = conv_peak((precision,), min_seconds=1.0)[precision]
    if args.path == "ours":
        result = run_ours(shape, "auto", args.save)
    elif args.path == "ours_fp32":
        result = run_ours(shape, "fp32", args.save)
    elif args.path == "monai":
        result = run_monai(shape, args.save)
    elif args.path == "literature":
        result = run_literature(shape, args.quick_windows)
    elif args.path == "setup":
        import torch

        result = {
            "window_flops": window_flops(_model()),
            "conv_peak_gflops": conv_peak(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    else:
        raise SystemExit(f"unknown path {args.path}")
    result["peak_rss_mb"] = _rss_mb()
    result["local_peak_gflops"] = local_peak
    print("RESULT " + json.dumps(result))


def _spawn(path: str, shape=(1, 1, 1), save: str | None = None, quick_windows: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--shape", ",".join(map(str, shape))]
    if save:
        cmd += ["--save", save]
    if quick_windows:
        cmd += ["--quick-windows", str(quick_windows)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


# ---------------------------------------------------------------------------------------------- report
def _markdown(report: dict) -> str:
    peak = report["conv_peak_gflops"]
    lines = [
        "# Inference benchmark",
        "",
        f"Machine: {report['machine']}, {report['threads']} torch threads, torch {report['torch']}. "
        f"Conv3d peak measured in this run: fp32 {peak['fp32']:.0f} GFLOP/s, "
        f"bf16 {peak['bf16']:.0f} GFLOP/s. "
        f"Both networks: {report['window_gflop']:.1f} GFLOP per 80x112x112 window. The CPU is shared with "
        "other work: see the load columns.",
        "",
        "| volume | path | windows | s / volume | Mvoxel/s | GFLOP/s | % of peak (run / same process) | "
        "peak RSS MB | "
        "max abs diff "
        "vs MONAI | speed-up vs MONAI | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for name, r in case["paths"].items():
            prec = r.get("precision", "fp32")
            lines.append(
                f"| {case['volume']} | {name}{' (extrapolated)' if r.get('extrapolated') else ''} ({prec}) | "
                f"{r['windows']} | {r['seconds']:.1f} | {r['voxels_per_s'] / 1e6:.2f} | {r['gflops']:.0f} | "
                f"{100 * r['fraction_of_peak']:.0f} % / {100 * r['fraction_of_local_peak']:.0f} % "
                f"({r['local_peak_gflops']:.0f}) | {r['peak_rss_mb']:.0f} | "
                f"{r.get('max_abs_diff_vs_monai', float('nan')):.2e} | "
                f"{r.get('speedup_vs_monai', float('nan')):.2f} | "
                f"{r['load_before']:.1f}/{r['load_after']:.1f} |"
            )
    if report.get("rss_check"):
        r = report["rss_check"]
        lines += [
            "",
            f"Peak RSS, our engine at its defaults on {r['volume']}: {r['peak_rss_mb']:.0f} MB "
            f"({r['seconds']:.1f} s, {r['windows']} windows; process baseline before the run "
            f"{r['baseline_rss_mb']:.0f} MB).",
        ]
    if report.get("low_precision"):
        lp = report["low_precision"]
        lines += [
            "",
            f"bf16 vs fp32 (ours, {lp['volume']}): {100 * lp['changed_fraction']:.3f} % of voxels change "
            f"label, Dice {lp['dice']:.4f}, max abs probability difference {lp['max_abs_prob_diff']:.3g}.",
        ]
    return "\n".join(lines) + "\n"


def cuda_main(out_dir: Path) -> int:
    """GPU timings of our engine (auto precision and fp32) in this process; writes inference_cuda.json."""
    import torch

    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume

    model = _model()
    flops = window_flops(model)
    results = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "window_gflop": flops / 1e9,
        "cases": [],
    }
    for label, shape in [*VOLUMES.items(), RSS_VOLUME]:
        volume = _volume(shape)
        for precision in ("auto", "fp32"):
            config = InferenceConfig(patch_size=PATCH, precision=precision, device="cuda")
            predict_volume(model, volume, config)  # warm-up (cuDNN autotuning, allocator)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            pred = predict_volume(model, volume, config)
            torch.cuda.synchronize()
            row = {
                "volume": label,
                "precision": pred.precision,
                "seconds": pred.seconds,
                "windows": pred.info["windows"],
                "gflops": flops * pred.info["windows"] / pred.seconds / 1e9,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_rss_mb": _rss_mb(),
            }
            results["cases"].append(row)
            print(row, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inference_cuda.json").write_text(json.dumps(results, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time a subset of the literature loop's windows")
    parser.add_argument("--quick-windows", type=int, default=6)
    parser.add_argument("--skip-rss", action="store_true", help="skip the 256x256x128 memory check")
    parser.add_argument("--skip-literature", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--cuda", action="store_true", help="only time our engine on the GPU")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="1,1,1", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.path = args.child
        child(args)
        return 0
    if args.cuda:
        return cuda_main(Path(args.out))

    from napari_sscce.inference.predict import compare_predictions

    setup = _spawn("setup")
    flops_per_window = setup["window_flops"]
    peak = setup["conv_peak_gflops"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": setup["torch"],
        "threads": setup["threads"],
        "patch": list(PATCH),
        "overlap": OVERLAP,
        "batch_size": BATCH,
        "window_gflop": flops_per_window / 1e9,
        "conv_peak_gflops": peak,
        "cases": [],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"conv peak {peak}, {flops_per_window / 1e9:.1f} GFLOP per window", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in VOLUMES.items():
            paths = {}
            files = {k: str(Path(tmp) / f"{k}.npy") for k in ("ours", "ours_fp32", "monai")}
            for name in ("ours", "ours_fp32", "monai"):
                paths[name] = _spawn(name, shape, save=files[name])
                print(label, name, paths[name], flush=True)
            if not args.skip_literature:
                paths["literature"] = _spawn(
                    "literature", shape, quick_windows=args.quick_windows if args.quick else None
                )
                print(label, "literature", paths["literature"], flush=True)
            monai_prob = np.load(files["monai"])
            ours32 = np.load(files["ours_fp32"])
            ours = np.load(files["ours"])
            for r in paths.values():
                r["voxels_per_s"] = float(np.prod(shape)) / r["seconds"]
                r["gflops"] = flops_per_window * r["windows"] / r["seconds"] / 1e9
                r["fraction_of_peak"] = r["gflops"] / peak["bf16" if r["precision"] == "bf16" else "fp32"]
                r["fraction_of_local_peak"] = r["gflops"] / r["local_peak_gflops"]
                r["speedup_vs_monai"] = paths["monai"]["seconds"] / r["seconds"]
            paths["ours_fp32"]["max_abs_diff_vs_monai"] = float(np.abs(ours32 - monai_prob).max())
            paths["ours"]["max_abs_diff_vs_monai"] = float(np.abs(ours - monai_prob).max())
            report["low_precision"] = {"volume": label, **compare_predictions(ours32, ours)}
            report["cases"].append({"volume": label, "shape_zyx": list(shape), "paths": paths})
    if not args.skip_rss:
        label, shape = RSS_VOLUME
        r = _spawn("ours", shape)
        report["rss_check"] = {"volume": label, **r}
        print("rss", r, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(report, indent=2))
    md = _markdown(report)
    (out / "inference.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
