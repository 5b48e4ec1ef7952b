import numpy as np
import pytest

from napari_sscce.training.augment import AugmentConfig, Sample, augment, random_flip, random_rot90
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
