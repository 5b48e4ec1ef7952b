"""The plan: fingerprint of a labeled set, target spacing and patch from the object, iterations from the
measured step and the budget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.training import plan as planning


def _case(shape, spacing, box, annotated_planes=None):
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(lo, hi) for lo, hi in box)] = 1
    image = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32) + 3 * label
    mask = None
    if annotated_planes is not None:
        m = np.zeros(shape, np.uint8)
        m[annotated_planes] = 1
        mask = Volume(m, spacing=spacing)
    return Volume(image, spacing=spacing), Volume(label, spacing=spacing), mask


def _la_like():
    # 0.625 mm, 88 x 142 x 190 voxels, an object of about 36 x 56 x 100 mm, 6 annotated axial slices
    box = [(20, 78), (30, 120), (20, 180)]
    return [_case((88, 142, 190), (0.625,) * 3, box, [10, 25, 40, 55, 70, 80]) for _ in range(2)]


def linear_step(patch, filters, labeled, unlabeled):
    """A step time proportional to the voxels of the batch (0.3 s for 2 x 32x48x32 at 8 filters)."""
    return 0.3 * np.prod(patch) / (32 * 48 * 32) * (labeled + unlabeled) / 2 * filters / 8


def test_fingerprint_reads_spacing_object_intensity_and_annotation():
    fp = planning.fingerprint(_la_like())
    assert fp.cases == 2 and fp.median_spacing == [0.625] * 3 and fp.median_shape == [88, 142, 190]
    assert fp.classes == [0, 1]
    assert fp.object_extent_mm == pytest.approx([58 * 0.625, 90 * 0.625, 160 * 0.625])
    assert 0.05 < fp.annotated_fraction < 0.08  # 6 of 88 slices
    assert fp.intensity[0]["mean"] == pytest.approx(3.0, abs=0.1)  # annotated foreground only


def test_plan_coarsens_until_the_object_fits_and_the_budget_gives_enough_steps():
    fp = planning.fingerprint(_la_like())
    plan = planning.make_plan(fp, budget_seconds=600, step_seconds=linear_step)
    assert plan.target_spacing[0] > 0.625 and len(set(plan.target_spacing)) == 1  # isotropic, coarser
    assert all(p % 16 == 0 for p in plan.patch_size)
    # the patch holds the object with context at the chosen spacing
    sizes = zip(plan.patch_size, plan.target_spacing, fp.object_extent_mm, strict=True)
    assert all(p * s >= e for p, s, e in sizes)
    assert plan.iterations >= planning.MIN_ITERATIONS
    assert plan.estimated_seconds <= 600 * 1.001 and "min on this CPU" in plan.describe()
    # a larger budget never gives a coarser spacing
    rich = planning.make_plan(fp, budget_seconds=6000, step_seconds=linear_step)
    assert rich.target_spacing[0] <= plan.target_spacing[0] and rich.iterations >= plan.iterations


def test_thick_slices_are_kept_and_small_objects_are_not_coarsened_away():
    thick = [_case((20, 160, 160), (5.0, 0.7, 0.7), [(5, 15), (40, 120), (40, 120)]) for _ in range(2)]
    plan = planning.make_plan(planning.fingerprint(thick), 300, linear_step)
    assert plan.target_spacing[0] == 5.0  # never finer than the slices
    tiny = [_case((40, 40, 40), (1.0,) * 3, [(15, 25), (15, 25), (15, 25)]) for _ in range(2)]
    plan = planning.make_plan(planning.fingerprint(tiny), 5, linear_step)  # a budget far too short
    assert plan.target_spacing == [1.0] * 3  # 10 voxels across already: no coarser, however short the budget


def test_no_labeled_case_is_a_message():
    with pytest.raises(ValueError, match="no labeled case"):
        planning.fingerprint([])


def test_the_timing_probe_runs_the_real_step():
    seconds = planning.probe_step_seconds([16, 16, 16], 2, 2, 0, steps=1)
    assert 0 < seconds < 30


def test_a_cold_start_with_a_budget_uses_the_plan(tmp_path, monkeypatch):
    from napari_sscce import loop as ft
    from napari_sscce.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    for i, (image, label, mask) in enumerate(_la_like()[:1]):
        ws.add_case(image, label, mask, name=f"c{i}")
    monkeypatch.setattr(planning, "probe_step_seconds", lambda p, f, lb, ub, **kw: linear_step(p, f, lb, ub))
    cfg = ft.cold_start_config(ws, tmp_path / "run", budget_seconds=600, device="cpu")
    assert cfg.plan is not None and list(cfg.patch_size) == cfg.plan["patch_size"]
    assert cfg.target_spacing == cfg.plan["target_spacing"] and cfg.iterations == cfg.plan["iterations"]
    assert "min on this" in ft.describe_cold_start(cfg)
    assert ft.cold_start_config(ws, tmp_path / "r2", budget_seconds=600, iterations=7).iterations == 7


def test_a_run_slower_than_planned_shortens_its_schedule_to_the_budget(tmp_path):
    from napari_sscce.io.sample_data import make_synthetic_dataset
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.training import loop
    from napari_sscce.training.config import TrainConfig

    data = make_synthetic_dataset(tmp_path / "ds", 3, shape=(16, 20, 20), n_labeled=2, n_val=0, seed=5)
    events = []
    cfg = TrainConfig(
        data=str(data), patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0, iterations=200,
        method="supervised", out=str(tmp_path / "run"), val_every=0, precision="fp32", base_filters=2,
        has_dropout=False, schedule="poly", time_budget_seconds=1e-3,  # far slower than "planned"
    )
    result = loop.train(cfg, progress=events.append)
    assert result.iterations == 50  # shortened at step 25 to a quarter of the planned steps
    steps = [r for r in result.history if "loss" in r]
    # the poly schedule follows the new total: it ends at 50 steps, not 200
    assert len(steps) == 50 and steps[-1]["lr"] == pytest.approx(cfg.lr * (1 - 49 / 50) ** cfg.poly_power)
    summary = load_checkpoint(result.last_path).metadata["train_summary"]
    assert summary["budget"]["planned_iterations"] == 200 and summary["budget"]["iterations"] == 50
    assert sum("slower than planned" in (e.message or "") for e in events) == 1


def test_the_budget_keeper_leaves_a_run_on_pace_alone(monkeypatch):
    from napari_sscce.training import loop

    now = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    keeper = loop.BudgetKeeper(budget=100.0, planned=200, start_iteration=0)
    now[0] = 12.5  # 0.5 s per step: 100 s for 200 steps, on budget
    assert keeper.new_total(25, 200) is None
    now[0] = 50.0  # 1 s per step on average: 200 s projected, 100 s fit
    assert keeper.new_total(50, 200) == 100 and keeper.record["seconds_per_step"] == 1.0
