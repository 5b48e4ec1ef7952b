"""Does the correct-and-fine-tune loop pay? A simulated annotator on hippocampus (issue 14).

Start: a model trained on 4 labeled hippocampus cases (default ``/tmp/models/hippo4_cce/best.safetensors``;
its ``splits.json`` names the labeled cases; the pool is the dataset's other training cases, the 30 ``val``
cases are held out). Each round, per strategy and seed:

1. pick ``--cases-per-round`` cases from the unlabeled pool and segment them with the current model;
2. the simulated person corrects ``--slices-per-case`` slices (axis 0) of each from the ground truth: the
   chosen slices get the true labels and an annotation mask of 1 (partial labels: only corrected slices count
   as labeled); *edited voxels* = voxels of those slices whose predicted label was wrong;
3. the cases go into a :class:`napari_sscce.workspace.Workspace` (which also holds the 4 starting cases with
   full masks and, for the semi-supervised strategies, the rest of the pool as unlabeled scans);
4. fine-tune from the current model (:func:`finetune`, the one place that calls the training code);
5. re-segment the chosen cases with the new model (part of the round's wall time, as in the plugin) and
   evaluate the mean foreground Dice on the validation cases.

Rounds continue until ``--budget`` corrected slices (32). Strategies, same budget:

- ``a_ranked``: candidates (``--candidates`` random pool cases) ranked by
  :func:`napari_sscce.uncertainty.volume_score`, the best taken; slices by
  :func:`napari_sscce.uncertainty.rank_slices` (the plugin's "slices to check next");
- ``b_random``: random cases, random slices among those that cross the predicted structure (dilated by 3
  voxels; all slices if nothing is predicted) - a person choosing without guidance still looks at the organ;
- ``c_whole``: random cases, every slice corrected (the expensive reference; its slice count is the number
  of slices of the cases, so it reaches the budget in its first round);
- ``d_supervised``: as ``a_ranked`` but fine-tuned with the supervised method and no unlabeled scans.

Output: ``benchmarks/results/<name>.json`` / ``.md`` (validation Dice against corrected slices and edited
voxels per strategy and seed, wall time per round) and ``<name>.png`` (two panels, mean over seeds).

Usage::

    python benchmarks/loop.py                      # the full benchmark (hours on a 2-core CPU)
    python benchmarks/loop.py --smoke              # 1 round, 2 iterations, 2 val cases: checks the plumbing
    # one process per core, then one table:
    python benchmarks/loop.py --strategies a_ranked c_whole --name loop_part1 &
    python benchmarks/loop.py --strategies b_random d_supervised --name loop_part2
    python benchmarks/loop.py --combine benchmarks/results/loop_part1.json benchmarks/results/loop_part2.json

The fine-tune is the plugin's own (:func:`finetune` calls ``loop.run_finetune`` at its
defaults): a quarter of each corrected case's slices is held aside to judge the new model, and the starting
model's labeled set is replayed when its checkpoint records it (then the workspace does not hold those cases;
otherwise they are added with full masks). The next round starts from the new version even when the held-aside
check did not adopt it; ``adopted`` and ``replayed`` are reported per round. All players' round 1 runs before
any round 2, and the results are rewritten after every round (PARTIAL until the end; ``--time-limit`` stops
early with exit code 2; any failing stage raises, exit code non-zero, no final table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.uncertainty import (
    STRATIFIED_NOISE,
    dilated_foreground,
    rank_slices,
    rank_slices_by_class,
    volume_score,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path("/tmp/models/hippo4_cce/best.safetensors")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
SLICE_AXIS = 0


# ----------------------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Strategy:
    """How a simulated person spends the budget.

    Attributes
    ----------
    name : str
        Short key (``a_ranked`` ...).
    cases : {"score", "random"}
        Highest :func:`volume_score` among the candidates, or random pool cases.
    slices : {"ranked", "random", "uniform", "even", "stratified", "all"}
        :func:`rank_slices`; random slices across the predicted structure (foreground-aware random, the
        field's strong baseline); random slices anywhere; evenly spaced slices across the predicted
        structure; class-stratified expected errors with noise (ClaSP PE-like, :func:`stratified_slices`);
        or the whole volume.
    method : str
        Fine-tune method (``"cce"`` uses the unlabeled pool, ``"supervised"`` does not).
    """

    name: str
    cases: str
    slices: str
    method: str

    @property
    def uses_unlabeled(self) -> bool:
        """Whether the workspace gets the pool as unlabeled scans."""
        return self.method != "supervised"


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("a_ranked", "score", "ranked", "cce"),
        Strategy("b_random", "random", "random", "cce"),
        Strategy("c_whole", "random", "all", "cce"),
        Strategy("d_supervised", "score", "ranked", "supervised"),
        Strategy("e_uniform", "random", "uniform", "cce"),
        Strategy("f_even", "random", "even", "cce"),
        Strategy("g_stratified", "score", "stratified", "cce"),
    )
}


@dataclass
class Segmented:
    """What the plugin shows for one case: labels and the two uncertainty maps."""

    labels: np.ndarray
    entropy: np.ndarray
    kl: np.ndarray | None = None


def choose_cases(
    how: str, candidates: dict[str, Segmented], n: int, rng: np.random.Generator
) -> list[str]:
    """``n`` cases among ``candidates``: highest volume score first (``"score"``), or at random.

    Ties in score keep the candidates' order. ``rng`` is used only by ``"random"``.
    """
    names = list(candidates)
    n = min(int(n), len(names))
    if how == "score":
        scores = [volume_score(c.entropy, c.kl, c.labels) for c in candidates.values()]
        order = sorted(range(len(names)), key=lambda i: (-scores[i], i))
        return [names[i] for i in order[:n]]
    if how == "random":
        return [names[i] for i in rng.choice(len(names), size=n, replace=False)]
    raise ValueError(f"unknown case choice {how!r}")


def choose_slices(
    how: str, seg: Segmented, k: int, rng: np.random.Generator, axis: int = SLICE_AXIS
) -> list[int]:
    """Slice indices along ``axis`` for the person to correct.

    ``"ranked"``: the top ``k`` of :func:`rank_slices` (most expected errors); ``"random"``: ``k`` random
    slices among those crossing the predicted structure dilated by 3 voxels (all slices when nothing is
    predicted, and topped up from the rest when too few cross it); ``"all"``: every slice.
    """
    n = seg.labels.shape[axis]
    if how == "all":
        return list(range(n))
    k = min(int(k), n)
    if how == "ranked":
        return [s.index for s in rank_slices(seg.entropy, seg.kl, seg.labels, axis=axis, top=k)]
    if how == "uniform":
        return sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    if how == "stratified":
        return stratified_slices(seg, k, rng, axis)
    near = dilated_foreground(seg.labels)
    other = tuple(a for a in range(near.ndim) if a != axis)
    crossing = np.flatnonzero(near.any(axis=other))
    rest = np.setdiff1d(np.arange(n), crossing)
    if how == "random":
        picked = list(rng.permutation(crossing)[:k])
    elif how == "even":
        spots = [int(crossing[int((i + 0.5) * len(crossing) / k)]) for i in range(k)] if len(crossing) else []
        picked = list(dict.fromkeys(spots))
    else:
        raise ValueError(f"unknown slice choice {how!r}")
    if len(picked) < k:
        picked += list(rng.permutation(np.setdiff1d(rest, picked))[: k - len(picked)])
    return sorted(int(i) for i in picked)


def stratified_slices(seg: Segmented, k: int, rng: np.random.Generator, axis: int = SLICE_AXIS) -> list[int]:
    """Class-stratified expected errors with noise: the product's
    :func:`napari_sscce.uncertainty.rank_slices_by_class` with the player's random generator."""
    return sorted(s.index for s in rank_slices_by_class(seg.entropy, seg.kl, seg.labels, axis=axis, top=k,
                                                        noise=STRATIFIED_NOISE, rng=rng))


@dataclass
class Correction:
    """One case corrected by the simulated person."""

    labels: np.ndarray
    mask: np.ndarray
    slices: list[int]
    edited_voxels: int


def correct(pred: np.ndarray, gt: np.ndarray, slices: list[int], axis: int = SLICE_AXIS) -> Correction:
    """Replace the chosen slices of ``pred`` with the ground truth; mask = 1 on exactly those slices.

    ``edited_voxels`` counts the voxels of the chosen slices whose predicted label was wrong: what a person
    had to paint. Outside the slices the labels are the prediction with mask 0 (ignored by training).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    index = [slice(None)] * pred.ndim
    index[axis] = list(slices)
    labels = pred.astype(gt.dtype, copy=True)
    labels[tuple(index)] = gt[tuple(index)]
    mask = np.zeros(pred.shape, np.uint8)
    mask[tuple(index)] = 1
    edited = int((pred[tuple(index)] != gt[tuple(index)]).sum())
    return Correction(labels=labels, mask=mask, slices=list(slices), edited_voxels=edited)


def rounds_needed(budget: int, cases_per_round: int, slices_per_case: int) -> int:
    """Rounds until ``budget`` corrected slices with a fixed number of slices per round (at least 1)."""
    return max(1, math.ceil(budget / max(cases_per_round * slices_per_case, 1)))


# ----------------------------------------------------------------------------------------------- model work
def finetune(workspace: Any, model: Path, method: str, iterations: int | None, seed: int, out: Path) -> Any:
    """Fine-tune ``model`` on the workspace with the plugin's headless fine-tune and its default settings.

    The only call into the training code: :func:`napari_sscce.loop.run_finetune` (held-aside
    check, replay of the starting model's labeled set when its checkpoint records it, poly schedule,
    ``FINETUNE_OVERRIDES`` iterations when ``iterations`` is None). Raises ``RuntimeError`` when the run was
    cancelled or produced no model.

    Returns
    -------
    FinetuneResult
        ``model_path`` is the new version's file (used for the next round even when it was not adopted).
    """
    from napari_sscce.loop import run_finetune

    result = run_finetune(workspace, model=model, method=method, iterations=iterations, seed=int(seed),
                          out=out)
    if result.cancelled or result.model_path is None or not Path(result.model_path).is_file():
        raise RuntimeError(f"fine-tune produced no model: {result.message}")
    return result


def replay_available(workspace: Any, checkpoint: Path) -> bool:
    """Whether the plugin's fine-tune will find and replay the labeled set ``checkpoint`` records."""
    from napari_sscce.loop import find_replay_source
    from napari_sscce.models.checkpoint import read_checkpoint_metadata

    return find_replay_source(checkpoint, read_checkpoint_metadata(checkpoint), workspace) is not None


def segment(model: Any, image: Any) -> Segmented:
    """The plugin's prediction at its defaults (labels, entropy, KL)."""
    from napari_sscce.inference.predict import predict_volume

    pred = predict_volume(model, image)
    from napari_sscce.uncertainty import binary_reading

    # read as the product reads it (the Uncertainty widget and `sscce predict --regions`)
    entropy = binary_reading(pred.entropy, int(pred.probabilities.shape[0]))
    return Segmented(labels=pred.labels, entropy=entropy, kl=pred.kl)


def mean_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in either map (1.0 when none is)."""
    from napari_sscce.metrics.surface import mean_dice as _mean_dice

    return _mean_dice(pred, gt, range(1, num_classes), none=1.0)


def evaluate(model_path: Path, dataset: Any, val: list[str], num_classes: int) -> float:
    """Mean foreground Dice over the validation cases."""
    from napari_sscce.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model_path)
    scores = []
    for name in val:
        image, label, _ = dataset.load_case(name)
        scores.append(mean_dice(segment(ckpt, image).labels, np.asarray(label.array), num_classes))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class RoundRecord:
    """One point of a curve."""

    round: int
    cases: list[str]
    slices: int
    edited_voxels: int
    dice: float
    finetune_seconds: float = 0.0
    resegment_seconds: float = 0.0
    round_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Player:
    """One strategy played with one seed: its workspace, current model and running totals."""

    strategy: Strategy
    seed: int
    workspace: Any
    model: Path
    work: Path
    replay_found: bool
    rng: np.random.Generator
    remaining: list[str]
    records: list[RoundRecord]
    slices: int = 0
    edited: int = 0

    @property
    def key(self) -> str:
        """``<strategy>_seed<seed>``."""
        return f"{self.strategy.name}_seed{self.seed}"


def new_player(strategy: Strategy, seed: int, checkpoint: Path, dataset: Any, labeled: list[str],
               pool: list[str], work: Path, start: RoundRecord) -> Player:
    """A workspace as a person would have it: the pool as unlabeled scans (semi-supervised strategies).

    When the starting checkpoint records its labeled set the plugin's fine-tune replays it, so the workspace
    does not hold it; otherwise (nothing to replay) the starting labeled cases are added with full masks.
    """
    from napari_sscce.workspace import Workspace

    folder = work / f"{strategy.name}_seed{seed}"
    ws = Workspace(folder / "workspace")
    found = replay_available(ws, Path(checkpoint))
    if not found:
        for name in labeled:
            image, label, _ = dataset.load_case(name)
            ws.add_case(image, label, None, name=name)
    if strategy.uses_unlabeled:
        for name in pool:
            ws.add_unlabeled(dataset.load_case(name)[0], name=name)
    return Player(strategy, seed, ws, Path(checkpoint), folder, found, np.random.default_rng(seed),
                  list(pool), [start])


def play_round(player: Player, rnd: int, args: argparse.Namespace, dataset: Any, val: list[str],
               num_classes: int) -> RoundRecord:
    """Choose, correct, fine-tune, re-segment and evaluate: one round of one player."""
    from napari_sscce.models.checkpoint import load_checkpoint

    strategy, rng, ws = player.strategy, player.rng, player.workspace
    ckpt = load_checkpoint(player.model)
    n_cand = args.candidates if strategy.cases == "score" else args.cases_per_round
    remaining = player.remaining
    cand_names = [remaining[i] for i in rng.choice(len(remaining), min(n_cand, len(remaining)), False)]
    loaded = {n: dataset.load_case(n) for n in cand_names}
    segs = {n: segment(ckpt, loaded[n][0]) for n in cand_names}
    chosen = choose_cases(strategy.cases, segs, args.cases_per_round, rng)
    taken = {c.name for c in ws.cases}
    for name in chosen:
        image, label, _ = loaded[name]
        slices = choose_slices(strategy.slices, segs[name], args.slices_per_case, rng)
        fix = correct(segs[name].labels, np.asarray(label.array), slices)
        ws.add_case(image, label.with_array(fix.labels, is_label=True),
                    label.with_array(fix.mask, is_label=True), name=name, update=name in taken)
        remaining.remove(name)
        player.slices += len(slices)
        player.edited += fix.edited_voxels
    t0 = time.perf_counter()
    result = finetune(ws, player.model, strategy.method, args.iterations, player.seed,
                      player.work / f"round{rnd}")
    t1 = time.perf_counter()
    player.model = Path(result.model_path)
    new = load_checkpoint(player.model)
    for name in chosen:
        segment(new, loaded[name][0])
    t2 = time.perf_counter()
    extra = {"adopted": bool(result.adopted), "replayed": len(result.replayed), "version": result.version,
             "held_aside_before": result.before, "held_aside_after": result.after,
             "held_aside_voxels": int(result.held_aside_voxels), "iterations": int(result.iterations),
             "method": result.method}
    record = RoundRecord(rnd, chosen, player.slices, player.edited,
                         evaluate(player.model, dataset, val, num_classes), t1 - t0, t2 - t1, t2 - t0, extra)
    player.records.append(record)
    print(f"{player.key} round {rnd}: {player.slices} slices, {player.edited} edited voxels, "
          f"Dice {record.dice:.4f}, round {t2 - t0:.0f} s, replayed {extra['replayed']}, "
          f"adopted {extra['adopted']}", flush=True)
    return record


# ----------------------------------------------------------------------------------------------- output
def summarise(runs: dict[str, dict[int, list[RoundRecord]]]) -> dict[str, list[dict[str, Any]]]:
    """Mean over seeds per strategy and round (rounds every seed reached).

    ``adopted`` is the share of seeds whose fine-tuned model the held-aside check adopted and ``replayed``
    the mean number of replayed starting cases (``None`` for round 0, the starting model).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for name, by_seed in runs.items():
        rows = []
        for rnd in range(min(len(r) for r in by_seed.values())):
            recs = [r[rnd] for r in by_seed.values()]
            tuned = [r for r in recs if "adopted" in r.extra]
            rows.append({
                "round": rnd,
                "slices": float(np.mean([r.slices for r in recs])),
                "edited_voxels": float(np.mean([r.edited_voxels for r in recs])),
                "dice": float(np.mean([r.dice for r in recs])),
                "round_seconds": float(np.mean([r.round_seconds for r in recs])),
                "adopted": float(np.mean([r.extra["adopted"] for r in tuned])) if tuned else None,
                "replayed": float(np.mean([r.extra["replayed"] for r in tuned])) if tuned else None,
            })
        out[name] = rows
    return out


def area_under_curve(xs: list[float], ys: list[float], upto: float) -> float:
    """Mean of the piecewise-linear curve ``ys(xs)`` over ``[0, upto]`` (trapezoids; normalised AUC).

    ``xs`` must start at 0 (the starting model) and increase; a curve that ends before ``upto`` is not
    extended (ValueError), so that strategies are only compared over a range they all reached.
    """
    xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
    if xs_a.size == 0 or xs_a[0] != 0 or np.any(np.diff(xs_a) < 0):
        raise ValueError("the curve must start at 0 and not go back")
    if upto <= 0 or xs_a[-1] < upto:
        raise ValueError(f"the curve ends at {xs_a[-1]:g}, before {upto:g}")
    grid = np.unique(np.concatenate([xs_a[xs_a <= upto], [upto]]))
    values = np.interp(grid, xs_a, ys_a)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)) / upto)


def _paired(runs: dict[str, dict[int, list[RoundRecord]]], per_seed: dict[str, dict[int, dict[str, float]]],
            ours: str, baseline: str) -> dict[str, Any]:
    """``ours - baseline`` per round and per AUC over the seeds both played (mean, std, wins)."""
    def stats(diffs: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(diffs)), "std": float(np.std(diffs)),
                "wins": int(sum(d > 0 for d in diffs)), "seeds": len(diffs)}

    paired: dict[str, Any] = {"ours": ours, "baseline": baseline, "rounds": []}
    seeds = sorted(set(runs.get(ours, {})) & set(runs.get(baseline, {})))
    if not seeds:
        return paired
    rounds = min(min(len(runs[ours][s]), len(runs[baseline][s])) for s in seeds)
    for rnd in range(1, rounds):
        paired["rounds"].append({"round": rnd, **stats(
            [runs[ours][s][rnd].dice - runs[baseline][s][rnd].dice for s in seeds])})
    for key in ("slices", "voxels"):
        diffs = [per_seed[ours][s][key] - per_seed[baseline][s][key] for s in seeds
                 if key in per_seed[ours][s]]
        if diffs:
            paired[f"auc_{key}"] = stats(diffs)
    return paired


def compare(runs: dict[str, dict[int, list[RoundRecord]]], baseline: str = "b_random") -> dict[str, Any]:
    """Normalised AUC of every strategy and each strategy's seed-paired comparison with ``baseline``.

    Returns ``{"auc": {strategy: {"slices": mean, "slices_std": std, "voxels": mean, "voxels_std": std}},
    "slices_upto": S, "voxels_upto": V, "paired": [{"ours": strategy, "baseline": ..., "rounds": [...],
    "auc_slices": ..., "auc_voxels": ...}, ...]}``. The slice AUC runs over the budget every seed reached; the
    voxel AUC over the smallest final edited-voxel count of any strategy and seed (the range every curve
    covers), each seed's curve against its own edited voxels. Each ``paired`` entry gives, per round and for
    both AUCs, the mean and standard deviation over seeds of ``strategy - baseline`` and in how many seeds the
    strategy was higher (seeds both played).
    """
    def curve(recs: list[RoundRecord], key: str) -> tuple[list[float], list[float]]:
        return [float(getattr(r, key)) for r in recs], [r.dice for r in recs]

    slices_upto = min(r[-1].slices for by in runs.values() for r in by.values())
    voxels_upto = min(r[-1].edited_voxels for by in runs.values() for r in by.values())
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    for name, by_seed in runs.items():
        for seed, recs in by_seed.items():
            entry = {"slices": area_under_curve(*curve(recs, "slices"), slices_upto)}
            if voxels_upto > 0:
                entry["voxels"] = area_under_curve(*curve(recs, "edited_voxels"), voxels_upto)
            per_seed.setdefault(name, {})[seed] = entry
    auc = {}
    for name, by_seed in per_seed.items():
        auc[name] = {}
        for key in ("slices", "voxels"):
            values = [v[key] for v in by_seed.values() if key in v]
            if values:
                auc[name][key], auc[name][f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    paired = [_paired(runs, per_seed, name, baseline) for name in runs if name != baseline]
    return {"auc": auc, "slices_upto": float(slices_upto), "voxels_upto": float(voxels_upto),
            "paired": [p for p in paired if p["rounds"]]}


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def to_markdown(summary: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    """Table of the mean curves; a run that did not finish says so first."""
    status = [] if meta.get("complete", True) else [
        f"**PARTIAL: {meta.get('status', 'not finished')}** (the rounds below are all that ran)", ""]
    iters = meta["iterations"] if meta["iterations"] is not None else "the plugin's default"
    lines = ["# Simulated annotator: validation Dice against correction effort", "", *status,
             f"Start `{meta['checkpoint']}`; {meta['n_val']} validation cases; seeds {meta['seeds']}; "
             f"{meta['cases_per_round']} cases x {meta['slices_per_case']} slices per round; "
             f"{iters} fine-tune iterations per round (`run_finetune`, default settings).",
             *([f"Round times: {meta['cpu']}, {meta['threads']} torch thread(s) per process "
                f"(torch {meta['torch']})."] if meta.get("cpu") else []), "",
             "| strategy | round | corrected slices | edited voxels | val Dice | round s | adopted "
             "| replayed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in summary.items():
        for r in rows:
            lines.append(f"| {name} | {r['round']} | {r['slices']:.0f} | {r['edited_voxels']:.0f} | "
                         f"{r['dice']:.4f} | {r['round_seconds']:.0f} | {_opt(r.get('adopted'), '.2f')} | "
                         f"{_opt(r.get('replayed'), '.0f')} |")
    if meta.get("ceiling"):
        c = meta["ceiling"]
        lines += ["", f"Ceiling (`{c['checkpoint']}`, {c['description']}): val Dice **{c['dice']:.4f}**."]
    if meta.get("comparison"):
        lines += _comparison_lines(meta["comparison"])
    return "\n".join(lines) + "\n"


def _comparison_lines(comp: dict[str, Any]) -> list[str]:
    """The AUC table and the seed-paired comparison as markdown lines."""
    lines = ["", f"Area under the curve (mean val Dice over 0-{comp['slices_upto']:.0f} corrected slices and "
             f"over 0-{comp['voxels_upto']:.0f} edited voxels; mean ± std over seeds):", "",
             "| strategy | AUC per slice | AUC per edited voxel |", "|---|---|---|"]
    for name, a in comp["auc"].items():
        vox = f"{a['voxels']:.4f} ± {a['voxels_std']:.4f}" if "voxels" in a else "-"
        lines.append(f"| {name} | {a['slices']:.4f} ± {a['slices_std']:.4f} | {vox} |")
    for p in comp["paired"]:
        lines += ["", f"Seed-paired: {p['ours']} minus {p['baseline']} (Dice points, mean ± std; seeds where "
                  f"{p['ours']} is higher):", ""]
        for r in p["rounds"]:
            lines.append(f"- round {r['round']}: {100 * r['mean']:+.2f} ± {100 * r['std']:.2f} "
                         f"({r['wins']} of {r['seeds']})")
        for key, label in (("auc_slices", "AUC per slice"), ("auc_voxels", "AUC per edited voxel")):
            if key in p:
                r = p[key]
                lines.append(f"- {label}: {100 * r['mean']:+.2f} ± {100 * r['std']:.2f} "
                             f"({r['wins']} of {r['seeds']})")
    return lines


def plot(summary: dict[str, list[dict[str, Any]]], path: Path, ceiling: dict[str, Any] | None = None) -> None:
    """Two panels: Dice against corrected slices and against edited voxels (ceiling dashed when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in summary.items():
        for ax, key in zip(axes, ("slices", "edited_voxels"), strict=True):
            ax.plot([r[key] for r in rows], [r["dice"] for r in rows], marker="o", label=name)
    if ceiling:
        for ax in axes:
            ax.axhline(ceiling["dice"], color="k", linestyle="--", linewidth=1,
                       label=f"ceiling ({ceiling['description']})")
    axes[0].set_xlabel("corrected slices")
    axes[1].set_xlabel("edited voxels")
    for ax in axes:
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(players: list[Player], meta: dict[str, Any], out: Path, name: str) -> str:
    """Write ``<name>.json`` / ``.md`` / ``.png`` from the rounds played so far; returns the table."""
    runs: dict[str, dict[int, list[RoundRecord]]] = {}
    for p in players:
        runs.setdefault(p.strategy.name, {})[p.seed] = p.records
    return write_runs(runs, {p.key: p.replay_found for p in players}, meta, out, name)


def write_runs(runs: dict[str, dict[int, list[RoundRecord]]], replay_found: dict[str, bool],
               meta: dict[str, Any], out: Path, name: str) -> str:
    """Write the results files of ``runs`` (strategy -> seed -> rounds); returns the table."""
    from napari_sscce.atomic import atomic_write_bytes, atomic_write_json

    summary = summarise(runs)
    if all(len(recs) > 1 for by in runs.values() for recs in by.values()):
        meta = {**meta, "comparison": compare(runs)}
    table = to_markdown(summary, meta)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", {
        **meta, "summary": summary, "replay_found": replay_found,
        "runs": {n: {str(s): [asdict(r) for r in recs] for s, recs in by.items()} for n, by in runs.items()},
    })
    atomic_write_bytes(out / f"{name}.md", table.encode())
    plot(summary, out / f"{name}.png", meta.get("ceiling"))
    return table


def ceiling_record(checkpoint: Path, description: str, data: Path, val: list[str]) -> dict[str, Any]:
    """The ceiling line: ``checkpoint``'s mean val Dice on the same validation cases as the curves."""
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.models.checkpoint import load_checkpoint

    num_classes = int(load_checkpoint(checkpoint).num_classes)
    return {"checkpoint": str(checkpoint), "description": description,
            "dice": evaluate(Path(checkpoint), open_dataset(data), val, num_classes)}


def combine(parts: list[Path], out: Path, name: str, ceiling: tuple[Path, str, Path] | None = None) -> str:
    """Merge the results of runs played in separate processes (e.g. one per CPU core) into one.

    Every part must be complete and played with the same start model, validation cases, budget and
    per-round settings; a strategy and seed may appear in one part only. Raises ``ValueError`` otherwise.
    """
    same = ("checkpoint", "val_cases", "cases_per_round", "slices_per_case", "iterations", "budget")
    loaded = [json.loads(Path(p).read_text()) for p in parts]
    runs: dict[str, dict[int, list[RoundRecord]]] = {}
    replay_found: dict[str, bool] = {}
    for path, part in zip(parts, loaded, strict=True):
        if not part.get("complete"):
            raise ValueError(f"{path}: not complete ({part.get('status')})")
        for key in same:
            if part[key] != loaded[0][key]:
                raise ValueError(f"{path}: {key} {part[key]!r} differs from {parts[0]}: {loaded[0][key]!r}")
        for strategy, by_seed in part["runs"].items():
            for seed, recs in by_seed.items():
                if int(seed) in runs.get(strategy, {}):
                    raise ValueError(f"{path}: {strategy} seed {seed} is also in another part")
                runs.setdefault(strategy, {})[int(seed)] = [RoundRecord(**r) for r in recs]
        replay_found.update(part.get("replay_found", {}))
    order = [n for n in STRATEGIES if n in runs]
    runs = {n: dict(sorted(runs[n].items())) for n in order}
    seeds = sorted({s for by in runs.values() for s in by})
    meta = {**loaded[0], "seeds": seeds, "parts": [str(p) for p in parts], "complete": True,
            "status": "complete", "wall_seconds": [part.get("wall_seconds") for part in loaded]}
    for key in ("summary", "runs", "replay_found", "comparison"):
        meta.pop(key, None)
    if ceiling is not None:
        meta["ceiling"] = ceiling_record(ceiling[0], ceiling[1], ceiling[2], list(meta["val_cases"]))
    return write_runs(runs, replay_found, meta, out, name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``--smoke`` shrinks everything to check the plumbing)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--method", default=None,
                        help="fine-tune every strategy with this method (default: each strategy's own)")
    parser.add_argument("--budget", type=int, default=32, help="corrected slices")
    parser.add_argument("--cases-per-round", type=int, default=2)
    parser.add_argument("--slices-per-case", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=10, help="pool cases scored per round (a, d)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="fine-tune iterations per round (default: the plugin's FINETUNE_OVERRIDES)")
    parser.add_argument("--max-val", type=int, default=0, help="first N validation cases (0 = all)")
    parser.add_argument("--max-pool", type=int, default=0, help="first N pool cases (0 = all)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="seconds: start no round expected to end after this (0 = none); the results "
                             "then say PARTIAL")
    parser.add_argument("--work", type=Path, default=None, help="workspaces and models (default: a temp dir)")
    parser.add_argument("--name", default="loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--combine", nargs="+", type=Path, default=None, metavar="JSON",
                        help="merge complete results files of separate runs into --name (plays nothing)")
    parser.add_argument("--ceiling", type=Path, default=None, metavar="CKPT",
                        help="a model trained on every training case fully labeled: its val Dice is drawn "
                             "as the ceiling line")
    parser.add_argument("--ceiling-description", default="every training case fully labeled",
                        help="what the ceiling model is (shown with the line)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 round, 2 iterations, 2 val cases, 6 pool cases, 1 seed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.iterations, args.max_val, args.max_pool = [0], 2, 2, 6
        args.budget = args.cases_per_round * args.slices_per_case
        args.candidates = min(args.candidates, 3)
    return args


def main(argv: list[str] | None = None) -> int:
    """Play every strategy and seed round by round (all players' round 1 first, then round 2 ...).

    Results are rewritten after every round (marked PARTIAL until the end). An exception in any stage
    propagates (non-zero exit, no final table); a ``--time-limit`` stop returns 2 with PARTIAL results.
    """
    import torch

    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.precision import cpu_model

    args = parse_args(argv)
    if args.combine:
        ceiling = (args.ceiling, args.ceiling_description, args.data) if args.ceiling else None
        print(combine(args.combine, args.out, args.name, ceiling))
        return 0
    began = time.perf_counter()
    dataset = open_dataset(args.data)
    split_file = Path(args.checkpoint).parent / "splits.json"
    labeled = (json.loads(split_file.read_text())["labeled"] if split_file.is_file()
               else [c.name for c in dataset.split("labeled")][:4])
    val = [c.name for c in dataset.split("val")][: args.max_val or None]
    train_names = [c.name for c in dataset.split("labeled")] + [c.name for c in dataset.split("unlabeled")]
    pool = [n for n in train_names if n not in labeled][: args.max_pool or None]
    work = args.work or Path(tempfile.mkdtemp(prefix="sscce_loop_"))
    num_classes = int(load_checkpoint(args.checkpoint).num_classes)
    start = RoundRecord(0, [], 0, 0, evaluate(Path(args.checkpoint), dataset, val, num_classes))
    print(f"start model: val Dice {start.dice:.4f} on {len(val)} cases", flush=True)
    chosen = [STRATEGIES[n] for n in args.strategies]
    if args.method:
        from dataclasses import replace as _replace

        chosen = [_replace(s, method=args.method) for s in chosen]
    players = [new_player(s, seed, args.checkpoint, dataset, labeled, pool, work, start)
               for s in chosen for seed in args.seeds]
    meta = {"checkpoint": str(args.checkpoint), "method": args.method, "n_val": len(val), "val_cases": val,
            "seeds": args.seeds,
            "cases_per_round": args.cases_per_round, "slices_per_case": args.slices_per_case,
            "iterations": args.iterations, "budget": args.budget, "smoke": args.smoke,
            "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "complete": False, "status": "running"}
    if args.ceiling:
        meta["ceiling"] = ceiling_record(args.ceiling, args.ceiling_description, args.data, val)
    longest = 0.0
    for rnd in range(1, rounds_needed(args.budget, args.cases_per_round, args.slices_per_case) + 1):
        for player in players:
            if player.slices >= args.budget:
                continue  # whole volumes reach the budget in their first round
            elapsed = time.perf_counter() - began
            if args.time_limit and elapsed + longest > args.time_limit:
                meta["status"] = (f"stopped by --time-limit {args.time_limit:.0f} s before round {rnd} of "
                                  f"{player.key}")
                write_results(players, meta, args.out, args.name)
                print(meta["status"], flush=True)
                return 2
            t0 = time.perf_counter()
            play_round(player, rnd, args, dataset, val, num_classes)
            longest = max(longest, time.perf_counter() - t0)
            meta["status"] = f"running: {player.key} round {rnd} done"
            write_results(players, meta, args.out, args.name)
    meta["complete"], meta["status"] = True, "complete"
    meta["wall_seconds"] = round(time.perf_counter() - began, 1)
    print(write_results(players, meta, args.out, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
