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

Status: the fine-tune call is :func:`finetune` (``training.loop.train`` with ``init_checkpoint`` on the
workspace's dataset folder, the fine-tune widget's short-run settings); it is meant to be swapped for the
plugin's headless fine-tune.
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

# benchmarks/ holds scripts whose names can shadow standard modules: keep it off sys.path
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402

from napari_sscce.uncertainty import dilated_foreground, rank_slices, volume_score  # noqa: E402

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
    slices : {"ranked", "random", "all"}
        :func:`rank_slices`, random slices across the predicted structure, or the whole volume.
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
    if how == "random":
        near = dilated_foreground(seg.labels)
        other = tuple(a for a in range(near.ndim) if a != axis)
        crossing = np.flatnonzero(near.any(axis=other))
        rest = np.setdiff1d(np.arange(n), crossing)
        picked = list(rng.permutation(crossing)[:k])
        if len(picked) < k:
            picked += list(rng.permutation(rest)[: k - len(picked)])
        return sorted(int(i) for i in picked)
    raise ValueError(f"unknown slice choice {how!r}")


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
def finetune(
    workspace: Any, init_checkpoint: Path, method: str, iterations: int, seed: int, out: Path
) -> Path:
    """Fine-tune ``init_checkpoint`` on the workspace and return the new model file.

    The only call into the training code: swap this body for the plugin's headless fine-tune
    (``napari_sscce.training.finetune``) with its default settings. For now: ``training.loop.train`` with
    ``init_checkpoint`` on ``Workspace.dataset_folder()``, the fine-tune widget's short-run settings (poly
    schedule, no periodic validation: the last model is kept), the model's patch size, normalisation and
    classes, fp32.
    """
    from napari_sscce.models.checkpoint import read_checkpoint_metadata
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import train

    meta = read_checkpoint_metadata(init_checkpoint)
    values: dict[str, Any] = {
        "data": str(workspace.dataset_folder()),
        "method": method,
        "iterations": int(iterations),
        "val_every": 0,
        "schedule": "poly",
        "seed": int(seed),
        "precision": "fp32",
        "out": str(out),
    }
    if meta.get("patch_size"):
        values["patch_size"] = tuple(int(v) for v in meta["patch_size"])
    norm = meta.get("normalization")
    if isinstance(norm, dict) and norm.get("mode"):
        values["normalization"] = norm["mode"]
    if meta.get("num_classes"):
        values["num_classes"] = int(meta["num_classes"])
    if not any(not c.labeled for c in workspace.cases):
        values["unlabeled_bs"] = 0
    result = train(TrainConfig(**values), init_checkpoint=str(init_checkpoint))
    return Path(result.last_path)


def segment(model: Any, image: Any) -> Segmented:
    """The plugin's prediction at its defaults (labels, entropy, KL)."""
    from napari_sscce.inference.predict import predict_volume

    pred = predict_volume(model, image)
    return Segmented(labels=pred.labels, entropy=pred.entropy, kl=pred.kl)


def mean_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in either map (1.0 when none is)."""
    scores = []
    for c in range(1, num_classes):
        a, g = pred == c, gt == c
        total = int(a.sum()) + int(g.sum())
        if total:
            scores.append(2.0 * int((a & g).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


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


def run_strategy(strategy: Strategy, seed: int, args: argparse.Namespace, dataset: Any,
                 labeled: list[str], pool: list[str], val: list[str], work: Path) -> list[RoundRecord]:
    """Play one strategy with one seed; round 0 is the starting model."""
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.workspace import Workspace

    rng = np.random.default_rng(seed)
    ws = Workspace(work / f"{strategy.name}_seed{seed}" / "workspace")
    for name in labeled:
        image, label, _ = dataset.load_case(name)
        ws.add_case(image, label, None, name=name)
    if strategy.uses_unlabeled:
        for name in pool:
            ws.add_unlabeled(dataset.load_case(name)[0], name=name)
    model = Path(args.checkpoint)
    num_classes = int(load_checkpoint(model).num_classes)
    records = [RoundRecord(0, [], 0, 0, evaluate(model, dataset, val, num_classes))]
    remaining = list(pool)
    total_slices = total_edited = 0
    for rnd in range(1, rounds_needed(args.budget, args.cases_per_round, args.slices_per_case) + 1):
        ckpt = load_checkpoint(model)
        n_cand = args.candidates if strategy.cases == "score" else args.cases_per_round
        cand_names = [remaining[i] for i in rng.choice(len(remaining), min(n_cand, len(remaining)), False)]
        loaded = {n: dataset.load_case(n) for n in cand_names}
        segs = {n: segment(ckpt, loaded[n][0]) for n in cand_names}
        chosen = choose_cases(strategy.cases, segs, args.cases_per_round, rng)
        for name in chosen:
            image, label, _ = loaded[name]
            slices = choose_slices(strategy.slices, segs[name], args.slices_per_case, rng)
            fix = correct(segs[name].labels, np.asarray(label.array), slices)
            ws.add_case(image, label.with_array(fix.labels, is_label=True),
                        label.with_array(fix.mask, is_label=True), name=name)
            remaining.remove(name)
            total_slices += len(slices)
            total_edited += fix.edited_voxels
        t0 = time.perf_counter()
        model = finetune(ws, model, strategy.method, args.iterations, seed,
                         work / f"{strategy.name}_seed{seed}" / f"round{rnd}")
        t1 = time.perf_counter()
        new = load_checkpoint(model)
        for name in chosen:
            segment(new, loaded[name][0])
        t2 = time.perf_counter()
        records.append(RoundRecord(rnd, chosen, total_slices, total_edited,
                                   evaluate(model, dataset, val, num_classes), t1 - t0, t2 - t1, t2 - t0))
        print(f"{strategy.name} seed {seed} round {rnd}: {total_slices} slices, "
              f"{total_edited} edited voxels, Dice {records[-1].dice:.4f}, round {t2 - t0:.0f} s", flush=True)
    return records


# ----------------------------------------------------------------------------------------------- output
def summarise(runs: dict[str, dict[int, list[RoundRecord]]]) -> dict[str, list[dict[str, float]]]:
    """Mean over seeds per strategy and round."""
    out: dict[str, list[dict[str, float]]] = {}
    for name, by_seed in runs.items():
        rows = []
        for rnd in range(min(len(r) for r in by_seed.values())):
            recs = [r[rnd] for r in by_seed.values()]
            rows.append({
                "round": rnd,
                "slices": float(np.mean([r.slices for r in recs])),
                "edited_voxels": float(np.mean([r.edited_voxels for r in recs])),
                "dice": float(np.mean([r.dice for r in recs])),
                "round_seconds": float(np.mean([r.round_seconds for r in recs])),
            })
        out[name] = rows
    return out


def to_markdown(summary: dict[str, list[dict[str, float]]], meta: dict[str, Any]) -> str:
    """Table of the mean curves."""
    lines = ["# Simulated annotator: validation Dice against correction effort", "",
             f"Start `{meta['checkpoint']}`; {meta['n_val']} validation cases; seeds {meta['seeds']}; "
             f"{meta['cases_per_round']} cases x {meta['slices_per_case']} slices per round; "
             f"{meta['iterations']} fine-tune iterations per round.", "",
             "| strategy | round | corrected slices | edited voxels | val Dice | round s |",
             "|---|---|---|---|---|---|"]
    for name, rows in summary.items():
        for r in rows:
            lines.append(f"| {name} | {r['round']} | {r['slices']:.0f} | {r['edited_voxels']:.0f} | "
                         f"{r['dice']:.4f} | {r['round_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Two panels: Dice against corrected slices and against edited voxels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in summary.items():
        for ax, key in zip(axes, ("slices", "edited_voxels"), strict=True):
            ax.plot([r[key] for r in rows], [r["dice"] for r in rows], marker="o", label=name)
    axes[0].set_xlabel("corrected slices")
    axes[1].set_xlabel("edited voxels")
    for ax in axes:
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget", type=int, default=32, help="corrected slices")
    parser.add_argument("--cases-per-round", type=int, default=2)
    parser.add_argument("--slices-per-case", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=10, help="pool cases scored per round (a, d)")
    parser.add_argument("--iterations", type=int, default=100, help="fine-tune iterations per round")
    parser.add_argument("--max-val", type=int, default=0, help="first N validation cases (0 = all)")
    parser.add_argument("--max-pool", type=int, default=0, help="first N pool cases (0 = all)")
    parser.add_argument("--work", type=Path, default=None, help="workspaces and models (default: a temp dir)")
    parser.add_argument("--name", default="loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true",
                        help="1 round, 2 iterations, 2 val cases, 6 pool cases, 1 seed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.iterations, args.max_val, args.max_pool = [0], 2, 2, 6
        args.budget = args.cases_per_round * args.slices_per_case
        args.candidates = min(args.candidates, 3)

    from napari_sscce.atomic import atomic_write_bytes, atomic_write_json
    from napari_sscce.io.datasets import open_dataset

    dataset = open_dataset(args.data)
    split_file = Path(args.checkpoint).parent / "splits.json"
    labeled = (json.loads(split_file.read_text())["labeled"] if split_file.is_file()
               else [c.name for c in dataset.split("labeled")][:4])
    val = [c.name for c in dataset.split("val")][: args.max_val or None]
    train_names = [c.name for c in dataset.split("labeled")] + [c.name for c in dataset.split("unlabeled")]
    pool = [n for n in train_names if n not in labeled][: args.max_pool or None]
    work = args.work or Path(tempfile.mkdtemp(prefix="sscce_loop_"))
    runs: dict[str, dict[int, list[RoundRecord]]] = {}
    for name in args.strategies:
        runs[name] = {s: run_strategy(STRATEGIES[name], s, args, dataset, labeled, pool, val, work)
                      for s in args.seeds}
    summary = summarise(runs)
    meta = {"checkpoint": str(args.checkpoint), "n_val": len(val), "seeds": args.seeds,
            "cases_per_round": args.cases_per_round, "slices_per_case": args.slices_per_case,
            "iterations": args.iterations, "budget": args.budget, "smoke": args.smoke}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}.json", {
        **meta, "summary": summary,
        "runs": {n: {str(s): [asdict(r) for r in recs] for s, recs in by.items()} for n, by in runs.items()},
    })
    atomic_write_bytes(args.out / f"{args.name}.md", to_markdown(summary, meta).encode())
    plot(summary, args.out / f"{args.name}.png")
    print(to_markdown(summary, meta))


if __name__ == "__main__":
    main()
