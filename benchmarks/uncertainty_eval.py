"""Does the uncertainty find the errors? AUROC, calibration and ranking on held-out hippocampus cases.

Model: a CCE checkpoint (VNet + ResNet-VNet) trained on 4 labeled hippocampus cases (default
``/tmp/models/hippo4_cce/best.safetensors``). Cases: the 30 ``val`` cases of the dataset's ``splits.json``;
the temperature is fitted on the checkpoint's labeled cases (its ``splits.json``; default the first 4 of the
dataset's labeled list).

Every case is segmented twice with :func:`napari_sscce.inference.predict.predict_volume` (both networks'
probabilities kept): plain, and with mirroring TTA over the axes the checkpoint was trained to flip. Then:

1. **Error detection**: the AUROC of each uncertainty map for the wrong voxels (argmax of the mean
   probability != ground truth), pooled over all cases, *near the object* (predicted or true foreground
   dilated by 3 voxels: :func:`napari_sscce.metrics.calibration.error_band`) and over the whole volume;
   also the mean of the per-case AUROCs. Maps: entropy of the mean, symmetric KL between the networks,
   their maximum / mean / product, ``1 - max p``, the networks' mutual information (entropy of the mean
   minus mean entropy), a Gaussian-smoothed entropy and a 3x3x3 maximum-filtered one (errors lie next to
   uncertain voxels), each with and without TTA, and the entropy after temperature scaling.
2. **Calibration**: 15-bin ECE and NLL of the mean probability (near the object and whole volume), plain,
   TTA, temperature-scaled with ``T`` fitted on the labeled cases (mean-level: ``softmax(log p_mean / T)``;
   per-network: each network's softmax re-tempered, which equals scaling its logits, then averaged), and with
   ``T`` cross-fitted on the other half of the validation cases (a reference for what held-out calibration
   data would give).
3. **What to correct next**: the share of all wrong voxels inside the top-3 regions of
   :func:`napari_sscce.uncertainty.rank_regions` (and the share of the band they cover, so that "everything"
   does not count as a good answer), for a few thresholds and region sizes; the share inside the top-k slices
   (axis 0, k = 1, 2, 4, 8) of :func:`napari_sscce.uncertainty.rank_slices` against k random slices
   (expected share k / n) and against an oracle that knows the errors.

MC dropout: the base-8 hippocampus networks have no dropout layers (``has_dropout=False``), so there is
nothing to sample; the JSON says so.

Usage::

    python benchmarks/uncertainty_eval.py [--checkpoint PATH] [--max-cases N] [--name uncertainty]

Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume, tta_axes
from napari_sscce.io.datasets import open_dataset
from napari_sscce.metrics.calibration import (
    auroc,
    error_band,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    temperature_scale,
)
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.uncertainty import (
    entropy,
    kl_divergence,
    label_regions,
    rank_slices,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path("/tmp/models/hippo4_cce/best.safetensors")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
MARGIN = 3
SLICE_KS = (1, 2, 4, 8)


# ----------------------------------------------------------------------------------------------- predictions
def predict_cases(ckpt: Any, dataset: Any, names: list[str], tta: bool, precision: str,
                  cache: Path | None = None) -> list[dict]:
    """Both networks' probabilities and the ground truth of every case (kept in ``cache`` when given)."""
    config = InferenceConfig(tta=tta, return_per_network=True, precision=precision)
    out = []
    for name in names:
        path = cache / f"{name}_{'tta' if tta else 'plain'}.npz" if cache else None
        if path is not None and path.is_file():
            with np.load(path) as z:
                out.append({"name": name, "pa": z["pa"], "pb": z["pb"], "gt": z["gt"].astype(np.int64),
                            "seconds": float(z["seconds"]), "flips": json.loads(str(z["flips"]))})
            continue
        image, label, _ = dataset.load_case(name)
        pred = predict_volume(ckpt, image, config)
        pa, pb = pred.per_network  # type: ignore[misc]
        case = {"name": name, "pa": pa, "pb": pb, "gt": np.asarray(label.array).astype(np.int64),
                "seconds": pred.seconds, "flips": pred.info["flips"]}
        out.append(case)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, pa=pa, pb=pb, gt=case["gt"].astype(np.uint8), seconds=pred.seconds,
                     flips=json.dumps(pred.info["flips"]))
        print(f"{name} ({'TTA' if tta else 'plain'}): {pred.seconds:.1f} s", flush=True)
    return out


def mean_prob(case: dict, temperature: float = 1.0, per_network: bool = False) -> np.ndarray:
    """The mean probability, optionally temperature-scaled (of the mean, or of each network)."""
    if temperature == 1.0:
        return 0.5 * (case["pa"] + case["pb"])
    if per_network:
        return 0.5 * (temperature_scale(case["pa"], temperature) + temperature_scale(case["pb"], temperature))
    return temperature_scale(0.5 * (case["pa"] + case["pb"]), temperature)


def maps_of(case: dict) -> dict[str, np.ndarray]:
    """Candidate uncertainty maps of one prediction."""
    pa, pb = case["pa"], case["pb"]
    mean = 0.5 * (pa + pb)
    h = entropy(mean)
    k = kl_divergence(pa, pb)
    mi = entropy(mean, normalize=False) - 0.5 * (entropy(pa, normalize=False) + entropy(pb, normalize=False))
    return {
        "entropy": h,
        "kl": k,
        "max(entropy, kl)": np.maximum(h, k),
        "mean(entropy, kl)": 0.5 * (h + k),
        "entropy * kl": h * k,
        "1 - max p": 1.0 - mean.max(0),
        "mutual information": mi,
        "entropy smoothed (sigma 1)": ndimage.gaussian_filter(h, 1.0),
        "entropy smoothed (sigma 0.5)": ndimage.gaussian_filter(h, 0.5),
        "entropy, 3x3x3 maximum": ndimage.maximum_filter(h, size=3),
        "max(entropy, kl), 3x3x3 maximum": ndimage.maximum_filter(np.maximum(h, k), size=3),
    }


# ----------------------------------------------------------------------------------------------- metrics
def detection(cases: list[dict], maps: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Pooled and per-case-mean AUROC of every map, near the object and over the whole volume."""
    result: dict[str, dict[str, float]] = {}
    wrongs, bands = [], []
    for case in cases:
        pred = mean_prob(case).argmax(0)
        wrongs.append(pred != case["gt"])
        bands.append(error_band(pred, case["gt"], MARGIN))
    wrong_all = np.concatenate([w.ravel() for w in wrongs])
    band_all = np.concatenate([b.ravel() for b in bands])
    for name in maps[0]:
        values = np.concatenate([m[name].ravel() for m in maps])
        per_case_band = [auroc(m[name], w, b) for m, w, b in zip(maps, wrongs, bands, strict=True)]
        per_case_vol = [auroc(m[name], w) for m, w in zip(maps, wrongs, strict=True)]
        result[name] = {
            "band": auroc(values, wrong_all, band_all),
            "volume": auroc(values, wrong_all),
            "band_case_mean": float(np.nanmean(per_case_band)),
            "volume_case_mean": float(np.nanmean(per_case_vol)),
        }
    return result


def calibration(cases: list[dict], temperature: float = 1.0, per_network: bool = False,
                temperatures: list[float] | None = None) -> dict[str, float]:
    """Pooled ECE and NLL of the mean probability near the object and over the whole volume."""
    conf, ok, band, nll_b, nll_v, n_b, n_v = [], [], [], 0.0, 0.0, 0, 0
    for i, case in enumerate(cases):
        t = temperatures[i] if temperatures is not None else temperature
        p = mean_prob(case, t, per_network)
        pred = p.argmax(0)
        b = error_band(pred, case["gt"], MARGIN)
        conf.append(p.max(0).ravel())
        ok.append((pred == case["gt"]).ravel())
        band.append(b.ravel())
        nll_b += negative_log_likelihood(p, case["gt"], b) * int(b.sum())
        nll_v += negative_log_likelihood(p, case["gt"]) * case["gt"].size
        n_b += int(b.sum())
        n_v += case["gt"].size
    c, o, m = np.concatenate(conf), np.concatenate(ok), np.concatenate(band)
    return {
        "ece_band": expected_calibration_error(c, o, mask=m),
        "ece_volume": expected_calibration_error(c, o),
        "nll_band": nll_b / max(n_b, 1),
        "nll_volume": nll_v / max(n_v, 1),
    }


def dice_of(cases: list[dict]) -> float:
    """Mean foreground Dice of the mean prediction over cases and classes."""
    from napari_sscce.metrics.surface import mean_dice

    scores = [mean_dice(mean_prob(c).argmax(0), c["gt"], range(1, c["pa"].shape[0])) for c in cases]
    return float(np.nanmean(scores))


def fit_t(cases: list[dict], band_only: bool) -> float:
    """Temperature minimising the NLL of the mean probability (near the object or everywhere)."""
    probs = [mean_prob(c) for c in cases]
    labels = [c["gt"] for c in cases]
    masks = [error_band(p.argmax(0), c["gt"], MARGIN) for p, c in zip(probs, cases, strict=True)]
    return fit_temperature(probs, labels, masks if band_only else None)


def region_shares(cases: list[dict], maps: list[dict[str, np.ndarray]], use_kl: bool,
                  threshold: float | str, max_extent: int | None, top: int = 3) -> dict[str, float]:
    """Share of the wrong voxels inside the top regions, and the share of the band those regions cover."""
    inside, total, covered, band_total, n_regions = 0, 0, 0, 0, []
    per_case = []
    for case, m in zip(cases, maps, strict=True):
        pred = mean_prob(case).argmax(0)
        wrong = pred != case["gt"]
        image, regions = label_regions(m["entropy"], m["kl"] if use_kl else None, pred,
                                       threshold=threshold, max_extent=max_extent)
        chosen = (image > 0) & (image <= top)
        inside += int((wrong & chosen).sum())
        total += int(wrong.sum())
        covered += int(chosen.sum())
        band_total += int(error_band(pred, case["gt"], MARGIN).sum())
        n_regions.append(len(regions))
        if wrong.any():
            per_case.append(float((wrong & chosen).sum() / wrong.sum()))
    return {
        "share_of_wrong": inside / max(total, 1),
        "share_of_wrong_case_mean": float(np.mean(per_case)),
        "band_covered": covered / max(band_total, 1),
        "precision": inside / max(covered, 1),
        "regions_per_case": float(np.mean(n_regions)),
    }


def slice_shares(cases: list[dict], maps: list[dict[str, np.ndarray]], scorer: str,
                 seed: int = 0) -> dict[str, float]:
    """Mean over cases of the share of wrong voxels in the top-k slices (axis 0) for each k."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {f"k={k}": [] for k in SLICE_KS}
    for case, m in zip(cases, maps, strict=True):
        pred = mean_prob(case).argmax(0)
        wrong = pred != case["gt"]
        per_slice = wrong.sum(axis=(1, 2)).astype(float)
        if per_slice.sum() == 0:
            continue
        n = wrong.shape[0]
        if scorer == "rank_slices (sum of error probability of max(entropy, kl))":
            order = [s.index for s in rank_slices(m["entropy"], m["kl"], pred)]
        elif scorer == "rank_slices (entropy only)":
            order = [s.index for s in rank_slices(m["entropy"], None, pred)]
        elif scorer == "sum of entropy":
            order = list(np.argsort(-m["entropy"].sum(axis=(1, 2)), kind="stable"))
        elif scorer == "mean entropy over uncertain voxels":
            busy = m["entropy"] >= 0.1
            mean = np.where(busy, m["entropy"], 0).sum(axis=(1, 2)) / np.maximum(busy.sum(axis=(1, 2)), 1)
            order = list(np.argsort(-mean, kind="stable"))
        elif scorer == "oracle (true wrong voxels)":
            order = list(np.argsort(-per_slice, kind="stable"))
        elif scorer == "random":
            order = list(rng.permutation(n))
        else:
            raise ValueError(scorer)
        for k in SLICE_KS:
            out[f"k={k}"].append(float(per_slice[order[:k]].sum() / per_slice.sum()))
    return {key: float(np.mean(v)) for key, v in out.items()}


def expected_random(cases: list[dict]) -> dict[str, float]:
    """Expected share of k random slices: k / n (mean over cases)."""
    return {f"k={k}": float(np.mean([min(k / c["gt"].shape[0], 1.0) for c in cases])) for k in SLICE_KS}


# ----------------------------------------------------------------------------------------------- report
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Predict, measure, return the results dict."""
    ckpt = load_checkpoint(args.checkpoint)
    dataset = open_dataset(args.data)
    val = [c.name for c in dataset.split("val")][: args.max_cases or None]
    split_file = Path(args.checkpoint).parent / "splits.json"
    labeled = (json.loads(split_file.read_text())["labeled"] if split_file.is_file()
               else [c.name for c in dataset.split("labeled")][:4])
    t0 = time.perf_counter()
    plain = predict_cases(ckpt, dataset, val, False, args.precision, args.cache)
    train = predict_cases(ckpt, dataset, labeled, False, args.precision, args.cache)
    tta = predict_cases(ckpt, dataset, val, True, args.precision, args.cache)
    predict_s = time.perf_counter() - t0

    maps_plain = [maps_of(c) for c in plain]
    maps_tta = [maps_of(c) for c in tta]
    t_band = fit_t(train, band_only=True)
    t_all = fit_t(train, band_only=False)
    half = len(plain) // 2
    t_val = (fit_t(plain[half:], True), fit_t(plain[:half], True)) if half else (1.0, 1.0)
    cross = [t_val[0] if i < half else t_val[1] for i in range(len(plain))]
    for c, m in zip(plain, maps_plain, strict=True):
        m["entropy, T labeled (band)"] = entropy(mean_prob(c, t_band))
        m["entropy, T per network (band)"] = entropy(mean_prob(c, t_band, per_network=True))
    maps_all = [{**m, **{f"tta {k}": v for k, v in mt.items()}}
                for m, mt in zip(maps_plain, maps_tta, strict=True)]

    det = detection(plain, maps_all)
    cal = {
        "plain": calibration(plain),
        "tta": calibration(tta),
        "T labeled, band fit (mean)": calibration(plain, t_band),
        "T labeled, band fit (per network)": calibration(plain, t_band, per_network=True),
        "T labeled, whole-volume fit (mean)": calibration(plain, t_all),
        "T cross-fitted on the other half of val (mean)": calibration(plain, temperatures=cross),
    }
    regions = {}
    for use_kl in (False, True):
        for threshold in ("adaptive", 0.3, 0.5):
            for extent in (None, 16, 24, 32):
                name = "max(entropy, kl)" if use_kl else "entropy"
                key = f"{name}, threshold {threshold}, max_extent {extent}"
                regions[key] = region_shares(plain, maps_plain, use_kl, threshold, extent)
    scorers = ["rank_slices (sum of error probability of max(entropy, kl))", "rank_slices (entropy only)",
               "sum of entropy", "mean entropy over uncertain voxels", "oracle (true wrong voxels)", "random"]
    slices = {s: slice_shares(plain, maps_plain, s) for s in scorers}
    slices["k / n (expected for random)"] = expected_random(plain)
    slices_tta = {s: slice_shares(tta, maps_tta, s) for s in scorers[:1]}
    return {
        "checkpoint": str(args.checkpoint),
        "checkpoint_iteration": (ckpt.metadata.get("train_summary") or {}).get("iteration"),
        "val_cases": val,
        "labeled_cases": labeled,
        "tta_flips": plain and tta[0]["flips"],
        "tta_axes_allowed": list(tta_axes((0, 1, 2), ckpt.metadata)),
        "dice_plain": dice_of(plain),
        "dice_tta": dice_of(tta),
        "wrong_voxels": int(sum(int((mean_prob(c).argmax(0) != c["gt"]).sum()) for c in plain)),
        "wrong_in_band": int(sum(int(((mean_prob(c).argmax(0) != c["gt"])
                                      & error_band(mean_prob(c).argmax(0), c["gt"], MARGIN)).sum())
                                 for c in plain)),
        "temperature": {"labeled_band": t_band, "labeled_volume": t_all, "val_halves_band": list(t_val)},
        "auroc": det,
        "calibration": cal,
        "regions_top3": regions,
        "slices_topk": slices,
        "slices_topk_tta": slices_tta,
        "mc_dropout": "not measured: the hippocampus networks (base 8) have no dropout layers",
        "predict_seconds": predict_s,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "precision": args.precision,
        "margin": MARGIN,
    }


def to_markdown(r: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = [
        "# Uncertainty that finds the errors",
        "",
        f"Checkpoint `{r['checkpoint']}` (iteration {r['checkpoint_iteration']}), {len(r['val_cases'])} "
        f"validation cases; temperature fitted on {len(r['labeled_cases'])} labeled cases. Mean foreground "
        f"Dice {r['dice_plain']:.4f} (TTA {r['dice_tta']:.4f}; flips {r['tta_flips']}). "
        f"Wrong voxels: {r['wrong_voxels']}, of which {r['wrong_in_band']} near the object "
        f"(band = predicted or true foreground dilated by {r['margin']} voxels). Precision {r['precision']}.",
        "",
        "## AUROC of each map for wrong voxels (pooled over cases; per-case mean in brackets)",
        "",
        "| map | near the object | whole volume |",
        "|---|---|---|",
    ]
    ranked = sorted(r["auroc"].items(), key=lambda kv: -kv[1]["band"])
    for name, v in ranked:
        lines.append(f"| {name} | {v['band']:.4f} ({v['band_case_mean']:.4f}) | "
                     f"{v['volume']:.4f} ({v['volume_case_mean']:.4f}) |")
    t = r["temperature"]
    lines += [
        "",
        "## Calibration of the mean probability (15-bin ECE, NLL)",
        "",
        f"Temperatures: labeled cases, band fit {t['labeled_band']:.3f}; labeled, whole-volume fit "
        f"{t['labeled_volume']:.3f}; validation halves (band) {t['val_halves_band'][0]:.3f} / "
        f"{t['val_halves_band'][1]:.3f}.",
        "",
        "| variant | ECE near object | ECE whole volume | NLL near object | NLL whole volume |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["calibration"].items():
        lines.append(f"| {name} | {v['ece_band']:.4f} | {v['ece_volume']:.4f} | {v['nll_band']:.4f} | "
                     f"{v['nll_volume']:.4f} |")
    lines += [
        "",
        "## Top-3 regions: share of all wrong voxels inside them",
        "",
        "| map, threshold, region size | share of wrong (pooled) | per-case mean | band covered | "
        "wrong fraction inside | regions per case |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["regions_top3"].items():
        lines.append(f"| {name} | {v['share_of_wrong']:.3f} | {v['share_of_wrong_case_mean']:.3f} | "
                     f"{v['band_covered']:.3f} | {v['precision']:.3f} | {v['regions_per_case']:.1f} |")
    ks = [f"k={k}" for k in SLICE_KS]
    lines += [
        "",
        "## Top-k slices (axis 0): share of the case's wrong voxels inside them (mean over cases)",
        "",
        "| slice order | " + " | ".join(ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, v in {**r["slices_topk"], **{f"TTA: {k}": v for k, v in r["slices_topk_tta"].items()}}.items():
        lines.append(f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in ks) + " |")
    lines += ["", f"MC dropout: {r['mc_dropout']}.", "",
              f"Prediction time (all cases, plain + TTA + labeled): {r['predict_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-cases", type=int, default=0, help="first N validation cases (0 = all)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--name", default="uncertainty")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each case's probabilities here (a rerun reuses them)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}.json", result)
    atomic_write_bytes(args.out / f"{args.name}.md", to_markdown(result).encode())
    print(to_markdown(result))


if __name__ == "__main__":
    main()
