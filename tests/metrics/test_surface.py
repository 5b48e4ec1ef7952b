"""napari_sscce.metrics.surface against medpy.metric.binary, empty-mask conventions and a known sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_sscce.metrics import surface

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> np.ndarray:
    """A few random ellipsoid-ish blobs (smoothed noise above a threshold, plus spheres)."""
    mask = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.12
    zz, yy, xx = np.indices(shape)
    for _ in range(n):
        c = rng.integers(2, np.asarray(shape) - 2)
        r = rng.uniform(2, 5)
        mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_voxels_and_mm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(14, 28, size=3))
    pred, gt = _blobs(rng, shape, 3), _blobs(rng, shape, 2)
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))  # anisotropic
    assert surface.dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt))
    assert surface.jaccard(pred, gt) == pytest.approx(medpy_binary.jc(pred, gt))
    for sp in (None, spacing):
        assert surface.hd95(pred, gt, sp) == pytest.approx(medpy_binary.hd95(pred, gt, sp), rel=1e-9)
        assert surface.asd(pred, gt, sp) == pytest.approx(medpy_binary.asd(pred, gt, sp), rel=1e-9)
        assert surface.asd(gt, pred, sp) == pytest.approx(medpy_binary.asd(gt, pred, sp), rel=1e-9)
        assert surface.assd(pred, gt, sp) == pytest.approx(medpy_binary.assd(pred, gt, sp), rel=1e-9)
    m = surface.binary_metrics(pred, gt, spacing)
    assert m["hd95_vox"] == pytest.approx(medpy_binary.hd95(pred, gt))
    assert m["asd_mm"] == pytest.approx(medpy_binary.asd(pred, gt, spacing))
    assert m["pred_voxels"] == int(pred.sum()) and m["gt_voxels"] == int(gt.sum())
    iso = surface.binary_metrics(pred, gt, (0.7, 0.7, 0.7))  # isotropic spacing takes a shortcut
    assert iso["hd95_mm"] == pytest.approx(medpy_binary.hd95(pred, gt, (0.7, 0.7, 0.7)))
    assert iso["assd_mm"] == pytest.approx(medpy_binary.assd(pred, gt, (0.7, 0.7, 0.7)))


def test_masks_touching_the_border_and_integer_labels() -> None:
    rng = np.random.default_rng(7)
    pred = np.zeros((12, 14, 16), np.uint8)
    gt = np.zeros_like(pred)
    pred[0:6, 0:9, 3:16] = 3  # touches three faces of the array; any non-zero value is foreground
    gt[1:8, 2:14, 0:12] = 1
    gt[rng.random(gt.shape) < 0.05] = 1
    for sp in (None, (2.5, 0.7, 0.7)):
        assert surface.hd95(pred, gt, sp) == pytest.approx(medpy_binary.hd95(pred, gt, sp))
        assert surface.asd(pred, gt, sp) == pytest.approx(medpy_binary.asd(pred, gt, sp))


def test_empty_masks_follow_the_paper_convention_or_nan() -> None:
    gt = np.zeros((10, 10, 10), bool)
    gt[3:6, 3:6, 3:6] = True
    empty = np.zeros_like(gt)
    for pred, ref in ((empty, gt), (gt, empty), (empty, empty)):
        for fn in (surface.dice, surface.jaccard):
            assert fn(pred, ref) == 0.0
        for fn in (surface.hd95, surface.asd, surface.assd):
            assert fn(pred, ref) == 0.0
            assert math.isnan(fn(pred, ref, empty="nan"))
    # with one empty mask the overlap is truly 0, both empty is undefined
    assert surface.dice(empty, gt, empty="nan") == 0.0
    assert math.isnan(surface.dice(empty, empty, empty="nan"))
    assert math.isnan(surface.jaccard(empty, empty, empty="nan"))
    m = surface.binary_metrics(empty, gt, (1.0, 1.0, 1.0))
    assert all(m[k] == 0.0 for k in ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm"))
    with pytest.raises(ValueError, match="empty"):
        surface.hd95(empty, gt, empty="none")  # type: ignore[arg-type]


def test_known_sphere_distances() -> None:
    """Two concentric spheres, radii 8 and 5 voxels: every surface distance is about 3 voxels."""
    zz, yy, xx = np.indices((28, 28, 28)) - 13.5
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    outer, inner = r <= 8, r <= 5
    assert surface.asd(outer, inner) == pytest.approx(3.0, abs=0.6)
    assert surface.asd(inner, outer) == pytest.approx(3.0, abs=0.6)
    assert surface.hd95(outer, inner) == pytest.approx(3.0, abs=0.8)
    assert surface.dice(outer, inner) == pytest.approx(2 * inner.sum() / (outer.sum() + inner.sum()))
    # doubling the spacing doubles the millimetre distances; identical masks are at distance 0
    assert surface.hd95(outer, inner, (2.0, 2.0, 2.0)) == pytest.approx(2 * surface.hd95(outer, inner))
    assert surface.hd95(outer, outer) == 0.0 and surface.dice(outer, outer) == 1.0


def test_shape_and_spacing_errors() -> None:
    a = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        surface.dice(a, np.ones((4, 4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        surface.hd95(a, a, spacing=(1.0, 1.0))


def test_mean_dice_one_rule_for_absent_classes():
    from napari_sscce.metrics.surface import mean_dice

    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    pred = gt.copy()
    pred[0, 0] = 0  # class 1: 2*3/(3+4) = 6/7
    assert mean_dice(pred, gt) == pytest.approx(6 / 7)  # classes present in either map: just 1
    assert mean_dice(pred, gt, range(1, 3)) == pytest.approx(6 / 7)  # class 2 absent from both: skipped
    assert mean_dice(pred, gt, range(1, 3), absent="zero") == pytest.approx(3 / 7)
    assert mean_dice(pred, gt, range(1, 3), absent="one") == pytest.approx((6 / 7 + 1) / 2)
    empty = np.zeros_like(gt)
    assert np.isnan(mean_dice(empty, empty, range(1, 3)))
    assert mean_dice(empty, empty, range(1, 3), none=1.0) == 1.0
    assert mean_dice(pred, gt, where=np.arange(16).reshape(4, 4) % 4 == 1) == 1.0  # column 1 agrees
    pred2 = pred.copy()
    pred2[3, 3] = 2  # class 2 only in the prediction: Dice 0 for it
    assert mean_dice(pred2, gt, range(1, 3)) == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="absent"):
        mean_dice(pred, gt, range(1, 3), absent="bogus")
    with pytest.raises(ValueError, match="shapes"):
        mean_dice(pred, gt[:2])


def test_held_aside_dice_is_pooled_over_cases():
    from napari_sscce.io.volume import Volume
    from napari_sscce.loop.held_aside import HeldAside, held_aside_dice

    gt = np.zeros((2, 4, 4), np.uint8)
    gt[:, :2, :2] = 1
    mask = np.zeros(gt.shape, bool)
    mask[0] = True
    small, big = gt.copy(), gt.copy()
    small[0, 0, 0] = 0  # case A: 3 of 4 found in the held-aside plane
    image = Volume(gt.astype(np.float32))
    held = [HeldAside("a", image, gt, mask), HeldAside("b", image, gt, mask)]
    # pooled: 2*(3+4)/(7+8) = 14/15 (not the mean of per-case Dice (6/7 + 1)/2)
    assert held_aside_dice([small, big], held, 2) == pytest.approx(14 / 15)
    assert held_aside_dice([], [], 2) is None
