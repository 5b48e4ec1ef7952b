"""Tests of napari_sscce.uncertainty: entropy / KL maps (numpy and torch), region ranking, volume score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sscce.uncertainty import (
    DEFAULT_MAX_EXTENT,
    adaptive_threshold,
    entropy,
    entropy_torch,
    error_probability,
    kl_divergence,
    kl_divergence_torch,
    label_regions,
    rank_regions,
    rank_slices,
    split_large_components,
    volume_score,
)


def _random_prob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    logits = rng.normal(size=shape).astype(np.float32) * 2
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_entropy_zero_for_one_hot_and_one_for_uniform(num_classes: int) -> None:
    labels = np.arange(24).reshape(2, 3, 4) % num_classes
    one_hot = np.eye(num_classes, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    assert np.allclose(entropy(one_hot), 0.0, atol=1e-6)
    uniform = np.full((num_classes, 2, 3, 4), 1.0 / num_classes, dtype=np.float32)
    assert np.allclose(entropy(uniform), 1.0, atol=1e-5)
    assert np.allclose(entropy(uniform, normalize=False), math.log(num_classes), atol=1e-5)


def test_entropy_matches_definition_and_axis(rng: np.random.Generator) -> None:
    prob = _random_prob(rng, (3, 4, 5, 6))
    expected = -(prob * np.log(prob)).sum(axis=0) / math.log(3)
    h = entropy(prob)
    assert h.shape == (4, 5, 6) and h.dtype == np.float32
    assert np.allclose(h, expected, atol=1e-5)
    assert np.allclose(entropy(np.moveaxis(prob, 0, -1), axis=-1), h, atol=1e-6)
    assert h.min() >= 0 and h.max() <= 1


def test_kl_zero_when_equal_positive_otherwise(rng: np.random.Generator) -> None:
    p = _random_prob(rng, (3, 4, 5, 6))
    q = _random_prob(rng, (3, 4, 5, 6))
    assert np.allclose(kl_divergence(p, p), 0.0, atol=1e-6)
    assert np.allclose(kl_divergence(p, p, symmetric=False, normalize=False), 0.0, atol=1e-6)
    raw = kl_divergence(p, q, normalize=False)
    assert (raw > 0).all()
    forward = (p * np.log(p / q)).sum(axis=0)
    backward = (q * np.log(q / p)).sum(axis=0)
    assert np.allclose(raw, 0.5 * (forward + backward), rtol=1e-4, atol=1e-6)
    assert np.allclose(kl_divergence(p, q, symmetric=False, normalize=False), forward, rtol=1e-4, atol=1e-6)
    norm = kl_divergence(p, q)
    assert np.allclose(norm, 1 - np.exp(-raw), atol=1e-6)
    assert norm.min() > 0 and norm.max() < 1


def test_kl_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        kl_divergence(np.ones((2, 3)), np.ones((2, 4)))


def test_torch_maps_match_the_definitions(rng: np.random.Generator) -> None:
    p = _random_prob(rng, (4, 3, 5, 6))
    q = _random_prob(rng, (4, 3, 5, 6))
    tp, tq = torch.from_numpy(p), torch.from_numpy(q)
    h_nats = -(p * np.log(p)).sum(axis=0)
    forward = (p * np.log(p / q)).sum(axis=0)
    sym = 0.5 * (forward + (q * np.log(q / p)).sum(axis=0))
    expected_h = {True: h_nats / math.log(4), False: h_nats}
    expected_kl = {(True, True): 1 - np.exp(-sym), (True, False): sym,
                   (False, True): 1 - np.exp(-forward), (False, False): forward}
    for normalize in (True, False):
        assert np.allclose(entropy_torch(tp, normalize=normalize).numpy(), expected_h[normalize], atol=1e-5)
        for symmetric in (True, False):
            got = kl_divergence_torch(tp, tq, symmetric=symmetric, normalize=normalize).numpy()
            assert np.allclose(got, expected_kl[symmetric, normalize], rtol=1e-4, atol=1e-5)
            # the NumPy entry points give the same maps
            assert np.array_equal(kl_divergence(p, q, symmetric=symmetric, normalize=normalize), got)
        assert np.array_equal(entropy(p, normalize=normalize), entropy_torch(tp, normalize=normalize).numpy())
    # batched layout, class dim 1; inputs are not modified
    tp_b = tp.unsqueeze(0).clone()
    before = tp_b.clone()
    assert torch.allclose(entropy_torch(tp_b, dim=1)[0], entropy_torch(tp))
    assert torch.allclose(kl_divergence_torch(tp_b, tq.unsqueeze(0), dim=1)[0], kl_divergence_torch(tp, tq))
    assert torch.equal(tp_b, before)
    assert entropy_torch(tp.half()).dtype == torch.float32


def _ball(shape: tuple[int, int, int], center: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius**2


def _planted(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low background noise, a big moderately uncertain blob in entropy, a small very uncertain one in KL."""
    shape = (24, 32, 32)
    h = rng.uniform(0.0, 0.2, shape).astype(np.float32)
    k = rng.uniform(0.0, 0.2, shape).astype(np.float32)
    big = _ball(shape, (12, 10, 10), 4.0)
    small = _ball(shape, (8, 24, 22), 2.0)
    h[big] = 0.8
    k[small] = 0.95
    labels = np.zeros(shape, np.uint8)
    labels[6:18, 6:28, 6:28] = 1
    labels[4:12, 20:30, 18:28] = 2
    return h, k, labels, big, small


def test_rank_regions_finds_planted_blobs_in_order(rng: np.random.Generator) -> None:
    h, k, labels, big, small = _planted(rng)
    spacing = (2.0, 0.5, 0.5)
    regions = rank_regions(h, k, labels, spacing=spacing, min_size=5)
    assert len(regions) == 2
    first, second = regions
    assert [r.id for r in regions] == [1, 2]
    # big blob: expected error 257 e(0.8) > small blob: 33 e(0.95)
    assert first.size_voxels == int(big.sum()) and second.size_voxels == int(small.sum())
    assert np.allclose(first.centroid, (12, 10, 10), atol=1e-6)
    assert np.allclose(second.centroid, (8, 24, 22), atol=1e-6)
    assert first.volume_mm3 == pytest.approx(big.sum() * 0.5)
    assert first.mean_entropy == pytest.approx(0.8) and first.mean_kl < 0.2
    assert second.mean_kl == pytest.approx(0.95) and second.mean_uncertainty == pytest.approx(0.95)
    assert first.score == pytest.approx(float(error_probability(np.float32(0.8))) * big.sum(), rel=1e-5)
    assert second.score == pytest.approx(float(error_probability(np.float32(0.95))) * small.sum(), rel=1e-5)
    assert first.score > second.score
    assert first.bbox == (8, 6, 6, 17, 15, 15)
    # the big blob reaches the edge of class 1 (y = 6), so its neighbourhood touches background too
    assert first.classes == (0, 1) and second.classes == (2,)
    assert first.to_dict()["size_voxels"] == first.size_voxels


def test_label_regions_image_and_filters(rng: np.random.Generator) -> None:
    h, k, labels, big, small = _planted(rng)
    image, regions = label_regions(h, k, labels, min_size=5)
    assert image.dtype == np.int32
    assert np.array_equal(image == 1, big) and np.array_equal(image == 2, small)
    # min_size drops the small blob; max_regions keeps the best one; a high threshold keeps nothing
    kept = rank_regions(h, k, labels, min_size=int(small.sum()) + 1)
    assert [r.size_voxels for r in kept] == [int(big.sum())]
    assert len(rank_regions(h, k, labels, min_size=5, max_regions=1)) == 1
    assert rank_regions(h, k, labels, threshold=0.99) == []
    # entropy only: just the big blob
    by_keyword = rank_regions(entropy=h, kl=k, labels=labels, spacing=(1, 1, 1), min_size=5)
    assert [r.size_voxels for r in by_keyword] == [int(big.sum()), int(small.sum())]
    only_h = rank_regions(h, None, labels, min_size=5)
    assert len(only_h) == 1 and only_h[0].mean_kl == 0.0


def test_adaptive_threshold_floor_and_percentile(rng: np.random.Generator) -> None:
    u = rng.uniform(0, 0.3, (10, 10, 10)).astype(np.float32)
    assert adaptive_threshold(u) == 0.5  # a confident volume: the floor applies
    u2 = rng.uniform(0.4, 1.0, (10, 10, 10)).astype(np.float32)
    assert adaptive_threshold(u2) == pytest.approx(float(np.percentile(u2, 95)))


def test_volume_score_ranks_more_uncertain_volume_higher(rng: np.random.Generator) -> None:
    h, k, labels, _, _ = _planted(rng)
    calm_h, calm_k = h * 0.5, k * 0.5
    assert volume_score(h, k, labels) > volume_score(calm_h, calm_k, labels)
    # background far from the structure does not dilute the score
    big_h = np.zeros((60, 60, 60), np.float32)
    big_l = np.zeros_like(big_h, dtype=np.uint8)
    big_l[5:10, 5:10, 5:10] = 1
    big_h[2:13, 2:13, 2:13] = 0.6  # the structure and its 3-voxel band
    assert volume_score(big_h, None, big_l) == pytest.approx(0.6)
    assert volume_score(big_h) < 0.01
    # without foreground: the whole-volume mean
    whole_mean = float(np.maximum(h, k).mean())
    assert volume_score(h, k, np.zeros_like(labels)) == pytest.approx(whole_mean, rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        volume_score(h, k, labels[:-1])


def _planted_errors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ball segmented with two planted errors: a big missed cap and a small false blob.

    Probabilities are confident (0.97) everywhere, softer (0.7) on a one-voxel shell around the predicted
    boundary (every boundary is a little uncertain), and near 0.5 on the errors, with a little noise.
    Returns (prob [2, Z, Y, X], predicted labels, big error mask, small error mask).
    """
    shape = (32, 40, 40)
    zz, yy, xx = np.indices(shape)
    gt = (zz - 16) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 11**2
    big = gt & (zz >= 22)  # the top cap is missed
    small = ((zz - 8) ** 2 + (yy - 33) ** 2 + (xx - 33) ** 2 <= 2**2) & ~gt  # a small false positive
    pred = (gt & ~big) | small
    shell = ndimage.binary_dilation(pred, iterations=1) & ~ndimage.binary_erosion(pred, iterations=1)
    p_fg = np.where(pred, 0.97, 0.03)
    p_fg = np.where(shell, np.where(pred, 0.7, 0.3), p_fg)
    p_fg = np.where(big | small, 0.5 + 0.05 * np.where(pred, 1, -1), p_fg)
    p_fg = np.clip(p_fg + rng.normal(0, 0.01, shape), 0.001, 0.999)
    prob = np.stack([1 - p_fg, p_fg]).astype(np.float32)
    return prob, prob.argmax(0).astype(np.uint8), big, small


def test_regions_and_slices_put_the_bigger_planted_error_first(rng: np.random.Generator) -> None:
    prob, pred, big, small = _planted_errors(rng)
    h = entropy(prob)
    image, regions = label_regions(h, None, pred)
    assert len(regions) >= 2
    # the first region holds most of the big error, and more wrong voxels than any other region; the
    # small error is in a region ranked after it
    first = image == 1
    assert (first & big).sum() > 0.8 * big.sum()
    wrong = big | small
    held = [int((wrong & (image == r.id)).sum()) for r in regions]
    assert held[0] == max(held)
    small_ids = {int(v) for v in np.unique(image[small]) if v}
    assert small_ids and min(small_ids) > 1
    # regions are viewable: none longer than the default cube side, even where the error is wider
    for r in regions:
        assert max(r.bbox[3 + a] - r.bbox[a] for a in range(3)) <= DEFAULT_MAX_EXTENT
    # ranked by expected error (sum of e(u)), not by mean: scores in descending order
    for r in regions:
        assert r.score == pytest.approx(float(error_probability(h[image == r.id]).sum()), rel=1e-4)
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    # the top slice holds the most wrong voxels of the planted ones
    slices = rank_slices(h, None, pred)
    assert len(slices) == pred.shape[0]
    wrong_per_slice = (big | small).sum(axis=(1, 2))
    top = slices[0].index
    assert wrong_per_slice[top] >= 0.8 * wrong_per_slice.max()
    assert slices[0].score == pytest.approx(float(error_probability(h[top]).sum()), rel=1e-4)
    assert [s.index for s in rank_slices(h, None, pred, top=3)] == [s.index for s in slices[:3]]
    assert rank_slices(h, axis=2)[0].axis == 2


def test_split_large_components_cuts_only_long_ones() -> None:
    comp = np.zeros((4, 4, 40), np.int32)
    comp[1:3, 1:3, 0:40] = 1  # a 40-voxel rod
    comp[0, 0, 0] = 2  # a single voxel
    out, n = split_large_components(comp, 2, 16)
    rod_ids = np.unique(out[1:3, 1:3, :])
    assert n == 4 and len(rod_ids) == 3  # 16 + 16 + 8
    assert out[0, 0, 0] not in rod_ids and out[0, 0, 0] > 0
    assert np.array_equal(out > 0, comp > 0)
    same, m = split_large_components(comp, 2, 64)
    assert m == 2 and np.array_equal(same, comp)


def test_error_probability_inverts_binary_entropy() -> None:
    p = np.array([0.0, 0.05, 0.3, 0.45, 0.5])
    h = np.zeros_like(p)
    inner = p > 0
    h[inner] = -(p[inner] * np.log(p[inner]) + (1 - p[inner]) * np.log(1 - p[inner])) / math.log(2)
    assert np.allclose(error_probability(h), p, atol=2e-3)
    assert error_probability(np.array([1.5, -1.0])).tolist() == [0.5, 0.0]
    # monotone: never reorders voxels
    u = np.linspace(0, 1, 101)
    assert (np.diff(error_probability(u)) >= 0).all()


def test_torch_twin_defaults_are_the_documented_ones() -> None:
    """Defaults by hand: entropy normalised by ln C; KL symmetric, in nats, mapped by 1 - exp(-kl)."""
    uniform = torch.full((4, 1), 0.25)
    assert entropy_torch(uniform).item() == pytest.approx(1.0, abs=1e-6)  # ln 4 / ln 4
    p = torch.tensor([[0.9], [0.1]])
    q = torch.tensor([[0.5], [0.5]])
    kl_pq = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    kl_qp = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_pq != pytest.approx(kl_qp, rel=1e-2)  # asymmetric inputs: the direction matters
    expected = 1.0 - math.exp(-0.5 * (kl_pq + kl_qp))
    assert kl_divergence_torch(p, q).item() == pytest.approx(expected, abs=1e-5)
    assert kl_divergence(p.numpy(), q.numpy()).item() == pytest.approx(expected, abs=1e-5)
    assert entropy(uniform.numpy()).item() == pytest.approx(1.0, abs=1e-6)


def test_slices_by_class_give_a_small_class_its_turn():
    from napari_sscce.uncertainty import rank_slices, rank_slices_by_class

    labels = np.zeros((20, 16, 16), np.uint8)
    labels[2:8, 2:14, 2:14] = 1  # a large class, very uncertain
    labels[14:17, 6:9, 6:9] = 2  # a small class, a little uncertain
    ent = np.zeros(labels.shape, np.float32)
    ent[2:8, 2:14, 2:14] = 0.9
    ent[15, 6:9, 6:9] = 0.5
    plain = [s.index for s in rank_slices(ent, None, labels, top=2)]
    assert set(plain) <= set(range(2, 8))  # expected errors alone: both slices from the large class
    turns = rank_slices_by_class(ent, None, labels, top=2, noise=0.0)
    assert [s.index for s in turns][1] == 15  # the small class's most uncertain slice comes second
    assert turns[1].score == pytest.approx(next(s.score for s in rank_slices(ent) if s.index == 15))
    # the same maps give the same list; another generator may reorder near-ties, never the class turns
    again = rank_slices_by_class(ent, None, labels, top=4)
    assert [s.index for s in again] == [s.index for s in rank_slices_by_class(ent, None, labels, top=4)]
    other = rank_slices_by_class(ent, None, labels, top=4, rng=np.random.default_rng(5))
    assert other[1].index == 15  # class 2's first turn: its only uncertain slice, whatever the noise
    assert len(rank_slices_by_class(ent, None, labels)) == 20


def test_binary_reading_counts_two_class_boundaries_of_a_three_class_model_right():
    import math

    import torch

    from napari_sscce.divergence import entropy as entropy_t
    from napari_sscce.uncertainty import binary_reading, error_probability

    # a voxel at 0.7 / 0.3 between two of three classes: wrong 30 % of the time (calibrated)
    p = torch.tensor([[0.7], [0.3], [0.0]]).unsqueeze(0)
    h3 = entropy_t(p, dim=1, normalize=True).numpy().ravel()  # divided by ln 3
    assert float(error_probability(h3)[0]) < 0.2  # read as binary without the rescaling: too low
    e = float(error_probability(binary_reading(h3, 3))[0])
    assert math.isclose(e, 0.3, abs_tol=0.01)
    same = np.array([0.2, 0.9], np.float32)
    assert np.array_equal(binary_reading(same, 2), same) and np.array_equal(binary_reading(same, None), same)
    assert binary_reading(np.array([0.9], np.float32), 3)[0] == 1.0  # clipped


def test_ranking_report_reads_a_multiclass_entropy_as_binary():
    from napari_sscce.uncertainty.export import ranking_report

    rng = np.random.default_rng(0)
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    entropy = (rng.random(labels.shape) * 0.6).astype(np.float32)
    _, two = ranking_report(labels, entropy, None)
    _, three = ranking_report(labels, entropy, None, num_classes=3)
    assert three["expected_errors"] > 1.3 * two["expected_errors"]
