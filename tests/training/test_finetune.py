"""The headless fine-tune: corrections kept, held-aside scoring, never adopting a worse model, replay, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sscce import loop as ft
from napari_sscce.cli import main
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.io.sample_data import make_synthetic
from napari_sscce.metrics.surface import dice
from napari_sscce.workspace import RUN_MARKER, Workspace
from sscce_factory import tiny_model_file

SHAPE = (16, 32, 32)
SPACING = (2.0, 1.0, 1.0)
PLANES = [3, 6, 9, 12]  # the confirmed slices of a "corrected" case
FAST = {"device": "cpu", "precision": "fp32", "seed": 0}
ICFG = InferenceConfig(device="cpu", precision="fp32")


def case(seed: int):
    return make_synthetic(SHAPE, SPACING, seed=seed, num_classes=2)


def add_corrected(ws: Workspace, seed: int, planes=PLANES, name: str | None = None) -> None:
    image, gt = case(seed)
    mask = np.zeros(SHAPE, np.uint8)
    mask[planes] = 1
    ws.add_case(image, gt, image.with_array(mask, is_label=True), name=name or f"c{seed}")


@pytest.fixture
def tiny_model(tmp_path):
    return tiny_model_file(tmp_path / "tiny.safetensors", base_filters=4, patch_size=list(SHAPE),
                           normalization={"mode": "zscore"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A small model trained from scratch (cold start) on three fully labeled generated cases."""
    ws = Workspace(tmp_path_factory.mktemp("origin") / "ws")
    for seed in (1, 2, 3):
        image, gt = case(seed)
        ws.add_case(image, gt, None, name=f"o{seed}")
    result = ft.run_finetune(ws, cold_start=True, iterations=40, base_filters=4, **FAST)
    assert result.version == "v0001" and result.adopted
    return result.model_path


# ------------------------------------------------------------------------------------------ pure rules
def test_merge_corrections_keeps_confirmed_voxels_only():
    new = np.zeros((2, 3, 3), np.uint8)
    old = np.full((2, 3, 3), 2, np.uint8)
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 1] = True
    out = ft.merge_corrections(new, old, mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask], 2)
    np.testing.assert_array_equal(out[~mask], 0)
    with pytest.raises(ValueError, match="shapes differ"):
        ft.merge_corrections(new, old[:1], mask)


def test_held_aside_planes_come_from_the_annotated_slices():
    mask = np.zeros(SHAPE, bool)
    mask[PLANES] = True
    train, held = ft.split_held_aside(mask, 0.25)
    assert ft.annotation_planes(mask)[0] == 0
    held_planes = sorted({int(z) for z in np.argwhere(held)[:, 0]})
    assert held_planes == [9]  # one plane of four, whole
    assert not (train & held).any() and ((train | held) == mask).all()
    one = np.zeros(SHAPE, bool)
    one[5] = True
    assert not ft.split_held_aside(one, 0.25)[1].any()  # a single slice is all training data


def test_held_aside_dice_pools_cases():
    gt = np.zeros((2, 4, 4), np.uint8)
    gt[:, :2] = 1
    held = [ft.HeldAside("a", None, gt, np.ones(gt.shape, bool))]
    assert ft.held_aside_dice([gt], held, 2) == 1.0
    assert ft.held_aside_dice([np.zeros_like(gt)], held, 2) == 0.0


def test_cold_start_patch_is_from_the_data():
    assert ft.cold_start_patch([(36, 50, 35), (34, 52, 37)]) == (32, 48, 32)
    assert ft.cold_start_patch([(8, 200, 100)]) == (16, 64, 64)


# ------------------------------------------------------------------------------------------ the step
def test_finetune_versions_scores_and_states_both(tmp_path, tiny_model):
    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 1)
    ws.add_unlabeled(case(5)[0], name="u")
    result = ft.run_finetune(ws, tiny_model, iterations=2, **FAST)
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001", "v0002"]
    assert result.start_version == "v0001" and result.version == "v0002"
    assert result.held_aside_voxels == SHAPE[1] * SHAPE[2]  # one held-aside plane
    assert result.before is not None and result.after is not None
    assert f"{result.after:.3f}" in result.message and f"{result.before:.3f}" in result.message
    info = ws.versions[-1].info
    assert info["method"] == ft.FINETUNE_METHOD == "supervised"  # a fine-tune without --method: measured best
    assert info["held_aside_dice_before"] == result.before
    run = info["run"]
    masks = sorted((tmp_path / "ws" / "runs").glob("*/view/masks/c1.nii.gz"))  # kept: later runs replay it
    assert masks and run in str(masks[0])
    # the run folder is the workspace's own, freed of its checkpoints once the run ended
    assert Path(run).parent == tmp_path / "ws" / "runs" and (Path(run) / RUN_MARKER).is_file()
    assert not list(Path(run).rglob("*.safetensors")) and not list(Path(run).rglob("train_state.pt"))
    assert result.adopted == (result.after >= result.before)
    assert (ws.current_version == "v0002") == result.adopted


def test_a_worse_model_is_kept_but_not_made_current(tmp_path, trained):
    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 7)
    add_corrected(ws, 8)
    # a learning rate that wrecks the weights: the new model is certainly worse on the held-aside slices
    result = ft.run_finetune(ws, trained, iterations=3, replay=False, lr=500.0, **FAST)
    ws.reload()
    assert result.before > result.after, result.message
    assert not result.adopted
    assert ws.current_version == result.start_version == "v0001"
    assert [v.version for v in ws.versions] == ["v0001", "v0002"]  # kept as a version
    assert f"{result.after:.3f}" in result.message and f"{result.before:.3f}" in result.message
    assert "stays in use" in result.message
    assert ws.revert("v0002") == ws.version_path("v0002")  # the person can still choose it


def test_biased_corrections_do_not_hurt_elsewhere(tmp_path, trained):
    """Corrections only at the low-z end of the object; Dice elsewhere must not drop by more than 0.05."""
    margin = 0.05
    ws = Workspace(tmp_path / "ws")
    for seed in (11, 12):
        image, gt = case(seed)
        fg = np.flatnonzero(np.asarray(gt.array).reshape(SHAPE[0], -1).any(1))
        end = [int(fg[0]), int(fg[0]) + 1, int(fg[0]) + 2]  # the first slices of the object
        pred = predict_volume(str(trained), image, ICFG).labels
        labels = pred.copy()
        labels[end] = np.asarray(gt.array)[end]
        mask = np.zeros(SHAPE, np.uint8)
        mask[end] = 1
        ws.add_case(
            image, image.with_array(labels, is_label=True), image.with_array(mask, is_label=True), f"b{seed}"
        )
    result = ft.run_finetune(ws, trained, iterations=20, **FAST)
    assert result.replayed, "the starting model's labeled set (its cold-start workspace) is replayed"

    def elsewhere(model) -> float:
        scores = []
        for seed in (21, 22):
            image, gt = case(seed)
            gt = np.asarray(gt.array)
            far = np.zeros(SHAPE, bool)
            far[SHAPE[0] // 2 :] = True  # the other half of the volume
            pred = predict_volume(str(model), image, ICFG).labels
            scores.append(dice(pred[far] == 1, gt[far] == 1))
        return float(np.mean(scores))

    before, after = elsewhere(trained), elsewhere(result.model_path)
    assert before > 0.3, "the starting model must know the task for the test to mean anything"
    assert after >= before - margin, (before, after)


def test_cold_start_needs_labeled_cases_and_states_its_defaults(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_unlabeled(case(1)[0], name="u")
    with pytest.raises(ValueError, match="no labeled case"):
        ft.run_finetune(ws, cold_start=True, iterations=1)
    add_corrected(ws, 2)
    with pytest.raises(ValueError, match="no model yet"):
        ft.run_finetune(ws, iterations=1)
    events = []
    result = ft.run_finetune(ws, cold_start=True, iterations=1, progress=events.append, **FAST)
    assert "8 filters wide, patch z, y, x = 16, 32, 32 (from the data), 1 iterations" in events[0].message
    assert result.version == "v0001" and Workspace(ws.folder).current_version == "v0001"


# ------------------------------------------------------------------------------------------ CLI
def test_sscce_finetune_end_to_end(tmp_path, tiny_model, capsys):
    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 1)
    add_corrected(ws, 2)
    ws.add_unlabeled(case(5)[0], name="u")
    argv = [
        "finetune",
        "--workspace",
        str(ws.folder),
        "--model",
        str(tiny_model),
        "--iterations",
        "2",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-aside" in out and "model in use:" in out
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001", "v0002"]
    assert ws.versions[-1].info["started_from"] == "v0001"
    # a second fine-tune continues from the current model without --model
    assert main(argv[:3] + argv[5:]) == 0
    ws.reload()
    assert len(ws.versions) == 3


def test_incompatible_method_gives_the_shared_message(tmp_path, tiny_model, capsys):
    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 1)
    expected = "was trained with cce (dual: vnet + resnet_vnet); ugmcl trains mean_teacher models"
    assert (
        main(
            [
                "finetune",
                "--workspace",
                str(ws.folder),
                "--model",
                str(tiny_model),
                "--method",
                "ugmcl",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert expected in err and "Methods that can: cce, supervised." in err
    assert (
        main(
            [
                "train",
                "--data",
                str(ws.dataset_folder()),
                "--init",
                str(tiny_model),
                "--method",
                "ugmcl",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 2
    )
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ distillation
def test_distillation_view_keeps_the_person_and_weights_the_starting_model(tmp_path, tiny_model):
    """Confirmed voxels: the person's labels, weight 1; elsewhere the starting model's, DISTILL_WEIGHT."""
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.training.sampling import CaseStore

    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 1)
    ws.add_unlabeled(case(5)[0], name="u")
    person = np.asarray(case(1)[1].array)
    # a "starting model" that disagrees with the person everywhere, so every voxel tells which label it got
    teacher = {"c1": (1 - person).astype(np.uint8), "u": np.asarray(case(5)[1].array)}
    view = ft.build_view(ws, tmp_path / "view", None, distill=ft.Distillation(teacher, ft.DISTILL_WEIGHT))
    assert "u" in view.unlabeled and "distill_u" in view.distilled and "distill_u" in view.labeled
    confirmed = np.zeros(SHAPE, bool)
    confirmed[PLANES] = True
    held = np.zeros(SHAPE, bool)
    for h in view.held:
        held |= h.mask
    assert held.any() and (held <= confirmed).all()

    store = CaseStore(open_dataset(view.folder).load_case, 2, "zscore")
    c1 = store.get("c1", True)
    assert np.array_equal(c1.label[confirmed], person[confirmed])
    assert np.array_equal(c1.label[~confirmed], teacher["c1"][~confirmed])
    assert np.all(c1.mask[confirmed & ~held] == 1.0)
    assert np.all(c1.mask[held] == 0.0), "held-aside voxels are not trained on"
    assert np.allclose(c1.mask[~confirmed], ft.DISTILL_WEIGHT, atol=1 / 255)
    u = store.get("distill_u", True)
    assert np.array_equal(u.label, teacher["u"])
    assert np.allclose(u.mask, ft.DISTILL_WEIGHT, atol=1 / 255)


def test_weighted_mask_weights_the_supervised_loss():
    """A distilled voxel of weight w counts w times a confirmed one in the supervised loss."""
    from napari_sscce.methods.losses import masked_cross_entropy
    from napari_sscce.training.sampling import mask_weights

    assert np.array_equal(mask_weights(np.array([0, 1, 1], np.uint8)), [0.0, 1.0, 1.0])  # binary masks
    w = mask_weights(np.array([0, 255, 51], np.uint8))
    assert np.allclose(w, [0.0, 1.0, 0.2])
    logits = torch.tensor([[[0.0], [0.0], [2.0]], [[1.0], [3.0], [0.0]]]).reshape(1, 2, 3, 1, 1)
    target = torch.zeros(1, 3, 1, 1, dtype=torch.long)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none").reshape(-1)
    got = masked_cross_entropy(logits, target, torch.from_numpy(w).reshape(1, 3, 1, 1))
    assert float(got) == pytest.approx(float((ce[1] + 0.2 * ce[2]) / 1.2), rel=1e-5)


def test_finetune_without_replay_distills_by_default(tmp_path, tiny_model):
    ws = Workspace(tmp_path / "ws")
    add_corrected(ws, 1)
    ws.add_unlabeled(case(5)[0], name="u")
    ft.run_finetune(ws, tiny_model, iterations=1, replay=False, **FAST)
    masks = sorted((tmp_path / "ws" / "runs").glob("*/view/masks/distill_u.nii.gz"))
    assert masks, "the unlabeled image is distilled from the starting model"
    off = ft.run_finetune(
        ws, tiny_model, iterations=1, replay=False, distill=0.0, out=tmp_path / "off", **FAST
    )
    assert off.version and not (tmp_path / "off" / "view" / "masks" / "distill_u.nii.gz").exists()
