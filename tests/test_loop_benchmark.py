"""The simulated annotator and the strategies of benchmarks/loop.py, on small generated volumes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

LOOP_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "loop.py"


@pytest.fixture(scope="module")
def loop():
    spec = importlib.util.spec_from_file_location("sscce_loop_benchmark", LOOP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _case(error_slices: tuple[int, ...], shape=(12, 16, 16), uncertain=0.9):
    """A cube segmentation whose errors (a missed row of voxels per slice) lie in ``error_slices``;
    the entropy is high exactly there. Returns (Segmented, ground truth)."""
    gt = np.zeros(shape, np.uint8)
    gt[3:9, 4:12, 4:12] = 1
    pred = gt.copy()
    entropy = np.zeros(shape, np.float32)
    for z in error_slices:
        pred[z, 4, 4:12] = 0
        entropy[z, 4, 4:12] = uncertain
    return pred, entropy, gt


def test_correct_replaces_only_the_chosen_slices(loop) -> None:
    pred, _, gt = _case((4, 6))
    fix = loop.correct(pred, gt, [4, 5])
    assert np.array_equal(fix.labels[[4, 5]], gt[[4, 5]])
    assert np.array_equal(fix.labels[6], pred[6])  # an uncorrected slice keeps its error
    assert fix.mask.dtype == np.uint8 and fix.mask.sum() == 2 * 16 * 16
    assert fix.mask[[4, 5]].all() and not fix.mask[6].any()
    assert fix.edited_voxels == 8  # slice 4's missed row; slice 5 was right
    whole = loop.correct(pred, gt, list(range(12)))
    assert np.array_equal(whole.labels, gt) and whole.edited_voxels == int((pred != gt).sum()) == 16
    along_x = loop.correct(pred, gt, [4], axis=2)
    assert along_x.mask[:, :, 4].all() and along_x.mask.sum() == 12 * 16
    with pytest.raises(ValueError, match="shape"):
        loop.correct(pred, gt[:-1], [0])


def test_ranked_slices_find_the_errors_random_ones_stay_on_the_organ(loop) -> None:
    pred, entropy, _ = _case((4, 7))
    seg = loop.Segmented(labels=pred, entropy=entropy)
    rng = np.random.default_rng(0)
    assert loop.choose_slices("ranked", seg, 2, rng) == [4, 7]
    assert loop.choose_slices("all", seg, 2, rng) == list(range(12))
    crossing = set(range(0, 12))  # the cube z 3..8 dilated by 3 voxels: every slice here
    for seed in range(5):
        picked = loop.choose_slices("random", seg, 4, np.random.default_rng(seed))
        assert len(set(picked)) == 4 and set(picked) <= crossing
    # slices away from the organ are drawn only to top up
    padded = np.pad(pred[3:9], ((0, 20), (0, 0), (0, 0)))
    small = loop.Segmented(labels=padded, entropy=np.zeros(padded.shape, np.float32))
    picked = loop.choose_slices("random", small, 4, np.random.default_rng(1))
    assert max(picked) <= 8  # z 0..5 labelled, dilated to 8
    assert loop.choose_slices("random", seg, 4, np.random.default_rng(3)) == loop.choose_slices(
        "random", seg, 4, np.random.default_rng(3)
    )
    with pytest.raises(ValueError, match="slice choice"):
        loop.choose_slices("best", seg, 1, rng)


def test_uniform_even_and_stratified_slices(loop) -> None:
    pred, entropy, _ = _case((4, 7))
    seg = loop.Segmented(labels=pred, entropy=entropy)
    picks = [tuple(loop.choose_slices("uniform", seg, 3, np.random.default_rng(s))) for s in range(20)]
    assert all(len(set(p)) == 3 for p in picks) and len(set(picks)) > 5  # random, anywhere
    # evenly spaced over the slices crossing the dilated structure (0..11 here): bins of 4 -> 2, 6, 10
    assert loop.choose_slices("even", seg, 3, np.random.default_rng(0)) == [2, 6, 10]
    padded = np.pad(pred[3:9], ((0, 20), (0, 0), (0, 0)))  # structure z 0..5, dilated to 0..8
    small = loop.Segmented(labels=padded, entropy=np.zeros(padded.shape, np.float32))
    assert loop.choose_slices("even", small, 3, np.random.default_rng(0)) == [1, 4, 7]
    # two classes: the stratified choice takes the most doubtful slice of each class, not two of one
    labels = np.zeros((12, 16, 16), np.uint8)
    labels[2:5, 2:6, 2:6], labels[7:10, 10:14, 10:14] = 1, 2
    h = np.zeros(labels.shape, np.float32)
    h[3, 2:6, 2:6], h[4, 2:6, 2:6], h[8, 10:14, 10:14] = 0.95, 0.9, 0.5  # class 1 is the louder
    two = loop.Segmented(labels=labels, entropy=h)
    assert loop.choose_slices("ranked", two, 2, np.random.default_rng(0)) == [3, 4]
    assert loop.choose_slices("stratified", two, 2, np.random.default_rng(0)) == [3, 8]
    assert len(set(loop.choose_slices("stratified", two, 5, np.random.default_rng(1)))) == 5


def test_cases_by_volume_score_take_the_most_uncertain(loop) -> None:
    calm_pred, calm_h, _ = _case((5,), uncertain=0.3)
    busy_pred, busy_h, _ = _case((3, 4, 5, 6), uncertain=0.9)
    mid_pred, mid_h, _ = _case((4, 5), uncertain=0.9)
    cands = {
        "calm": loop.Segmented(calm_pred, calm_h),
        "busy": loop.Segmented(busy_pred, busy_h),
        "mid": loop.Segmented(mid_pred, mid_h),
    }
    rng = np.random.default_rng(0)
    assert loop.choose_cases("score", cands, 2, rng) == ["busy", "mid"]
    random_pick = loop.choose_cases("random", cands, 2, np.random.default_rng(0))
    assert len(set(random_pick)) == 2 and set(random_pick) <= set(cands)
    assert loop.choose_cases("score", cands, 5, rng) == ["busy", "mid", "calm"]
    with pytest.raises(ValueError, match="case choice"):
        loop.choose_cases("best", cands, 1, rng)


def test_budget_and_strategies(loop) -> None:
    assert loop.rounds_needed(32, 2, 4) == 4
    assert loop.rounds_needed(32, 3, 4) == 3
    assert loop.rounds_needed(5, 2, 4) == 1
    assert set(loop.STRATEGIES) == {"a_ranked", "b_random", "c_whole", "d_supervised", "e_uniform", "f_even",
                                    "g_stratified"}
    assert loop.STRATEGIES["a_ranked"].uses_unlabeled and not loop.STRATEGIES["d_supervised"].uses_unlabeled
    assert loop.mean_dice(np.array([0, 1, 2]), np.array([0, 1, 1]), 3) == pytest.approx((2 / 3 + 0) / 2)


def test_summary_table_and_plot(loop, tmp_path) -> None:
    rec = loop.RoundRecord
    tuned = {"adopted": True, "replayed": 4}
    runs = {
        "a_ranked": {0: [rec(0, [], 0, 0, 0.5), rec(1, ["x"], 8, 100, 0.6, round_seconds=10.0, extra=tuned)],
                     1: [rec(0, [], 0, 0, 0.5),
                         rec(1, ["y"], 8, 300, 0.7, round_seconds=30.0, extra={**tuned, "adopted": False})]},
    }
    summary = loop.summarise(runs)
    expected = {"round": 1, "slices": 8.0, "edited_voxels": 200.0, "dice": pytest.approx(0.65),
                "round_seconds": 20.0, "adopted": 0.5, "replayed": 4.0}
    assert summary["a_ranked"][1] == expected
    assert summary["a_ranked"][0]["adopted"] is None  # the starting model was not fine-tuned
    meta = {"checkpoint": "m", "n_val": 2, "seeds": [0, 1], "cases_per_round": 2, "slices_per_case": 4,
            "iterations": 5}
    table = loop.to_markdown(summary, meta)
    assert "| a_ranked | 1 | 8 | 200 | 0.6500 | 20 | 0.50 | 4 |" in table
    assert "| a_ranked | 0 | 0 | 0 | 0.5000 | 0 | - | - |" in table and "PARTIAL" not in table
    partial = loop.to_markdown(summary, {**meta, "complete": False, "status": "stopped by --time-limit"})
    assert partial.splitlines()[2].startswith("**PARTIAL: stopped by --time-limit")
    loop.plot(summary, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").stat().st_size > 1000


def test_parts_played_in_separate_processes_combine_into_one_table(loop, tmp_path) -> None:
    rec = loop.RoundRecord
    meta = {"checkpoint": "m", "n_val": 2, "val_cases": ["v1", "v2"], "seeds": [0], "cases_per_round": 2,
            "slices_per_case": 4, "iterations": 5, "budget": 8, "complete": True, "status": "complete"}
    tuned = {"adopted": True, "replayed": 4}
    part1 = {"a_ranked": {0: [rec(0, [], 0, 0, 0.5), rec(1, ["x"], 8, 100, 0.6, extra=tuned)]}}
    part2 = {"b_random": {0: [rec(0, [], 0, 0, 0.5), rec(1, ["y"], 8, 50, 0.55, extra=tuned)]},
             "a_ranked": {1: [rec(0, [], 0, 0, 0.5), rec(1, ["z"], 8, 300, 0.7, extra=tuned)]}}
    loop.write_runs(part1, {"a_ranked_seed0": True}, meta, tmp_path, "p1")
    loop.write_runs(part2, {}, meta, tmp_path, "p2")
    table = loop.combine([tmp_path / "p1.json", tmp_path / "p2.json"], tmp_path, "all")
    assert "| a_ranked | 1 | 8 | 200 | 0.6500 |" in table  # both seeds of a_ranked, from two parts
    assert "| b_random | 1 | 8 | 50 | 0.5500 |" in table
    assert table.index("a_ranked") < table.index("b_random")
    assert (tmp_path / "all.png").is_file()

    loop.write_runs(part1, {}, {**meta, "complete": False, "status": "running"}, tmp_path, "running")
    with pytest.raises(ValueError, match="not complete"):
        loop.combine([tmp_path / "running.json", tmp_path / "p2.json"], tmp_path, "x")
    loop.write_runs(part2, {}, {**meta, "budget": 16}, tmp_path, "other")
    with pytest.raises(ValueError, match="budget"):
        loop.combine([tmp_path / "p1.json", tmp_path / "other.json"], tmp_path, "x")
    with pytest.raises(ValueError, match="also in another part"):
        loop.combine([tmp_path / "p1.json", tmp_path / "p1.json"], tmp_path, "x")


def test_area_under_curve_and_the_seed_paired_comparison(loop, tmp_path) -> None:
    # a straight line 0.5 -> 0.7 over 0..8 slices has mean 0.6; half the range (0..4) has mean 0.55
    assert loop.area_under_curve([0, 8], [0.5, 0.7], 8) == pytest.approx(0.6)
    assert loop.area_under_curve([0, 8], [0.5, 0.7], 4) == pytest.approx(0.55)
    assert loop.area_under_curve([0, 4, 8], [0.5, 0.7, 0.7], 8) == pytest.approx((0.6 * 4 + 0.7 * 4) / 8)
    with pytest.raises(ValueError, match="before"):
        loop.area_under_curve([0, 4], [0.5, 0.6], 8)  # never extended past its end
    with pytest.raises(ValueError, match="start at 0"):
        loop.area_under_curve([2, 4], [0.5, 0.6], 4)
    rec = loop.RoundRecord
    # ours higher than the baseline in seed 0, lower in seed 1, per slice; per voxel ours is costlier
    runs = {
        "a_ranked": {0: [rec(0, [], 0, 0, 0.5), rec(1, [], 8, 400, 0.7)],
                     1: [rec(0, [], 0, 0, 0.5), rec(1, [], 8, 400, 0.6)]},
        "b_random": {0: [rec(0, [], 0, 0, 0.5), rec(1, [], 8, 200, 0.6)],
                     1: [rec(0, [], 0, 0, 0.5), rec(1, [], 8, 200, 0.64)]},
    }
    comp = loop.compare(runs)
    assert comp["slices_upto"] == 8 and comp["voxels_upto"] == 200
    assert comp["auc"]["a_ranked"]["slices"] == pytest.approx(0.575)  # (0.6 + 0.55) / 2
    assert comp["auc"]["a_ranked"]["slices_std"] == pytest.approx(0.025)
    assert [p["ours"] for p in comp["paired"]] == ["a_ranked"]  # every strategy against the baseline
    rounds = comp["paired"][0]["rounds"]
    assert len(rounds) == 1 and rounds[0]["wins"] == 1 and rounds[0]["seeds"] == 2
    assert rounds[0]["mean"] == pytest.approx(((0.7 - 0.6) + (0.6 - 0.64)) / 2)
    # per voxel over 0..200: ours reaches half of its gain, the baseline all of it
    assert comp["auc"]["a_ranked"]["voxels"] == pytest.approx(np.mean([0.55, 0.525]))
    assert comp["auc"]["b_random"]["voxels"] == pytest.approx(np.mean([0.55, 0.57]))
    assert comp["paired"][0]["auc_voxels"]["wins"] == 0
    meta = {"checkpoint": "m", "n_val": 2, "val_cases": ["v1"], "seeds": [0, 1], "cases_per_round": 2,
            "slices_per_case": 4, "iterations": 5, "budget": 8, "complete": True, "status": "complete",
            "ceiling": {"checkpoint": "full.safetensors", "description": "all cases", "dice": 0.88}}
    table = loop.write_runs(runs, {}, meta, tmp_path, "cmp")
    assert "| a_ranked | 0.5750 ± 0.0250 |" in table and "Ceiling (`full.safetensors`, all cases)" in table
    assert "- round 1: +3.00 ± 7.00 (1 of 2)" in table
    import json

    assert json.loads((tmp_path / "cmp.json").read_text())["comparison"]["voxels_upto"] == 200


class _Result:
    """What run_finetune returns, as far as the benchmark reads it."""

    def __init__(self, path, adopted=False, cancelled=False):
        self.model_path, self.adopted, self.cancelled = path, adopted, cancelled
        self.replayed, self.version, self.before, self.after = ["s1", "s2"], "v0002", 0.9, 0.8
        self.held_aside_voxels, self.iterations, self.method, self.message = 12, 3, "cce", "msg"


def test_finetune_goes_through_run_finetune_and_fails_loudly(loop, tmp_path, monkeypatch) -> None:
    import napari_sscce.loop as ft

    made = tmp_path / "v0002.safetensors"
    made.write_bytes(b"x")
    calls = []

    def fake(workspace, model=None, method=None, iterations=None, **kw):
        calls.append((workspace, model, method, iterations, kw))
        return outcome

    monkeypatch.setattr(ft, "run_finetune", fake)
    outcome = _Result(made)
    assert loop.finetune("ws", Path("m"), "cce", None, 3, tmp_path / "r").model_path == made
    assert calls == [("ws", Path("m"), "cce", None, {"seed": 3, "out": tmp_path / "r"})]
    outcome = _Result(made, cancelled=True)
    with pytest.raises(RuntimeError, match="no model"):
        loop.finetune("ws", Path("m"), "cce", None, 3, tmp_path / "r")
    outcome = _Result(tmp_path / "missing.safetensors")
    with pytest.raises(RuntimeError, match="no model"):
        loop.finetune("ws", Path("m"), "cce", None, 3, tmp_path / "r")


def test_a_round_replaces_the_pool_scan_and_continues_from_the_new_version(loop, tmp_path, monkeypatch):
    """One round with the model work faked: the corrected cases replace their unlabeled entries (no
    ``-2`` copies), only the chosen slices are confirmed, and the next round starts from the new version
    even though the held-aside check did not adopt it."""
    import argparse

    import napari_sscce.models.checkpoint as ckpt_mod
    from napari_sscce.io.volume import Volume

    pred, entropy, gt = _case((4, 7))
    cases = {f"c{i}": (Volume(np.random.default_rng(i).random(gt.shape, dtype=np.float32)),
                       Volume(gt, is_label=True), None) for i in range(3)}

    class Data:
        def load_case(self, name):
            return cases[name]

    new_model = tmp_path / "new.safetensors"
    new_model.write_bytes(b"x")
    monkeypatch.setattr(ckpt_mod, "load_checkpoint", lambda path: path)
    monkeypatch.setattr(loop, "segment", lambda model, image: loop.Segmented(pred, entropy))
    monkeypatch.setattr(loop, "finetune", lambda *a: _Result(new_model, adopted=False))
    monkeypatch.setattr(loop, "evaluate", lambda model, data, val, n: 0.75 if model == new_model else 0.5)
    monkeypatch.setattr(loop, "replay_available", lambda ws, ckpt: True)
    start = loop.RoundRecord(0, [], 0, 0, 0.5)
    player = loop.new_player(loop.STRATEGIES["a_ranked"], 0, tmp_path / "start.safetensors", Data(),
                             ["lab"], list(cases), tmp_path / "work", start)
    assert player.replay_found and {c.name for c in player.workspace.cases} == set(cases)  # no "lab"
    args = argparse.Namespace(candidates=3, cases_per_round=2, slices_per_case=2, iterations=None)
    record = loop.play_round(player, 1, args, Data(), ["v"], 2)
    ws = player.workspace
    assert sorted(c.name for c in ws.cases) == sorted(cases)  # replaced in place
    assert sorted(c.name for c in ws.labeled_cases) == sorted(record.cases) and len(record.cases) == 2
    _, _, mask = ws.load_case(record.cases[0])
    assert np.flatnonzero(np.asarray(mask.array).any(axis=(1, 2))).tolist() == [4, 7]  # ranked slices
    assert record.slices == 4 and record.edited_voxels == 2 * 16 and record.dice == 0.75
    assert record.extra["adopted"] is False and record.extra["replayed"] == 2
    assert player.model == new_model and player.records[-1] is record
    assert set(player.remaining) == set(cases) - set(record.cases)
