import numpy as np
import pytest

from napari_sscce.inference.predict import tta_axes
from napari_sscce.io.geometry import parse_axes
from napari_sscce.training.augment import (
    AugmentConfig,
    Sample,
    augment,
    orientation_axes,
    random_flip,
    random_rot90,
    resolve_flip_axes,
)
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import lr_factor


def test_config_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(data="d", patch_size=[8, 16, 16], method_options={"cps": False}, milestones=[3, 6])
    path = cfg.save(tmp_path / "config.json")
    back = TrainConfig.load(path)
    assert back == cfg and back.patch_size == (8, 16, 16)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"data": "d", "bogus": 1})
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        TrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_schedule_scaled_to_budget():
    cfg = TrainConfig(iterations=600)
    assert cfg.resolved_milestones() == [250, 500]
    assert cfg.resolved_rampup_step() == 15
    assert lr_factor(cfg, 249) == 1.0
    assert lr_factor(cfg, 250) == pytest.approx(0.1)
    assert lr_factor(cfg, 599) == pytest.approx(0.01)
    poly = TrainConfig(iterations=100, schedule="poly")
    assert lr_factor(poly, 0) == 1.0 and 0 < lr_factor(poly, 50) < 1


def _sample(rng):
    label = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    image = label[None].astype(np.float32) * 10 + 1
    sdf = label[None].astype(np.float32) * -1.0
    return Sample(image, label, (label > 0).astype(np.float32), {"sdf": sdf})


def test_geometric_augmentations_move_all_arrays_together():
    rng = np.random.default_rng(3)
    for _ in range(10):
        s = _sample(rng)
        for fn in (random_flip, random_rot90):
            out = fn(s, rng)
            np.testing.assert_array_equal(out.image[0], out.label.astype(np.float32) * 10 + 1)
            np.testing.assert_array_equal(out.extras["sdf"][0], -out.label.astype(np.float32))
            np.testing.assert_array_equal(out.mask, (out.label > 0).astype(np.float32))
    # something actually changed across draws
    s = _sample(rng)
    outs = [random_rot90(s, rng).label for _ in range(8)]
    assert any(not np.array_equal(o, s.label) for o in outs)


def test_intensity_and_noise_touch_image_only():
    rng = np.random.default_rng(0)
    s = _sample(rng)
    cfg = AugmentConfig(flip=False, rot90=False, intensity=True, noise=True, noise_std=0.1)
    out = augment(s, rng, cfg)
    assert not np.allclose(out.image, s.image)
    np.testing.assert_array_equal(out.label, s.label)
    np.testing.assert_array_equal(out.extras["sdf"], s.extras["sdf"])


def _two_part_labels(rng, n=6, ordered_axis=1):
    """Label maps with class 2 always after class 1 along ``ordered_axis``, random order elsewhere."""
    labels = []
    for _ in range(n):
        lab = np.zeros((20, 20, 20), np.uint8)
        c1 = rng.integers(4, 8, 3)
        c2 = c1 + rng.choice([-3, 3], 3)
        c2[ordered_axis] = c1[ordered_axis] + 6
        for cls, c in ((1, c1), (2, c2)):
            lab[tuple(slice(int(v) - 1, int(v) + 2) for v in c)] = cls
        labels.append(lab)
    return labels


def test_orientation_axes_finds_the_axis_that_orders_the_classes():
    rng = np.random.default_rng(5)
    labels = _two_part_labels(rng, n=12, ordered_axis=1)
    found = orientation_axes(labels, 3)
    assert set(found) == {1} and found[1] == [(1, 2)]
    # one foreground class, or too few cases, restricts nothing
    assert orientation_axes([(lab > 0).astype(np.uint8) for lab in labels], 2) == {}
    assert orientation_axes(labels[:2], 3) == {}


def test_resolve_flip_axes_auto_explicit_and_errors():
    labels = _two_part_labels(np.random.default_rng(1), n=8, ordered_axis=1)
    axes, info = resolve_flip_axes("auto", labels, 3)
    assert 1 not in axes and "y" in info["orientation_axes"] and "y" not in info["flip_axes"]
    assert resolve_flip_axes("zyx", labels, 3)[0] == (0, 1, 2)
    assert resolve_flip_axes("none", labels, 3) == ((), {"setting": "none", "flip_axes": "none",
                                                         "orientation_axes": {}})
    assert parse_axes("xz") == (0, 2)
    with pytest.raises(ValueError, match="zyx"):
        parse_axes("xw")
    with pytest.raises(ValueError, match="zyx"):
        TrainConfig(flip_axes="q")
    assert TrainConfig(flip_axes=" Auto ").flip_axes == "auto"  # normalised once, compared plainly after


def test_flip_only_along_allowed_axes_and_rotations_need_both_in_plane_axes():
    rng = np.random.default_rng(2)
    s = _sample(rng)
    seen = set()
    for _ in range(30):
        out = random_flip(s, rng, (2,))
        if np.array_equal(out.label, s.label):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out.label, s.label[:, :, ::-1])
            seen.add("x")
    assert seen == {"same", "x"}
    cfg = TrainConfig(flip_axes="zx")
    aug = AugmentConfig.from_train_config(cfg, (0, 2))
    assert aug.flip and aug.flip_axes == (0, 2) and not aug.rot90
    assert AugmentConfig.from_train_config(TrainConfig()).rot90
    assert not AugmentConfig.from_train_config(TrainConfig(flip_axes="none")).flip


def test_tta_mirrors_only_the_axes_the_model_was_trained_to_flip():
    assert tta_axes((0, 1, 2), {"augmentation": {"flip_axes": "x"}}) == (2,)
    assert tta_axes((0, 1, 2), {"augmentation": {"flip_axes": "none"}}) == ()
    assert tta_axes((0, 2), {}) == (0, 2)  # no record (imported model): as requested
