import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.training.sampling import CaseStore, IndexStream, PatchSampler


def make_loader(n=6, shape=(10, 12, 12), small=()):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(n):
        sh = (6, 8, 8) if i in small else shape
        label = np.zeros(sh, np.uint8)
        label[2:4, 3:5, 3:5] = 1
        label[0, 0, 0] = 2
        cases[f"c{i}"] = (Volume(rng.normal(size=sh).astype(np.float32)), Volume(label, is_label=True), None)
    return cases, lambda name: cases[name]


def test_index_streams_reshuffle_and_cycle():
    rng = np.random.default_rng(0)
    lab = IndexStream(5, cycle=False)
    seen = [lab.take(2, rng) for _ in range(2)]
    assert len(set(sum(seen, []))) == 4  # one pass: no repeat
    third = lab.take(2, rng)  # only 1 left: drop-last starts a new pass
    assert lab.passes == 2 and len(third) == 2
    unl = IndexStream(3, cycle=True)
    got = sum((unl.take(2, rng) for _ in range(3)), [])
    assert sorted(got) == [0, 0, 1, 1, 2, 2]  # a cycle continues across passes


def test_batches_layout_oversampling_and_padding():
    cases, loader = make_loader(small=(5,))
    store = CaseStore(loader, num_classes=3, normalization="zscore")
    sampler = PatchSampler(store, ["c0", "c5"], ["c1", "c2"], (8, 8, 8), 2, 2,
                           foreground_fraction=1.0, augment_config=None, seed=0)
    for _ in range(6):
        b = sampler.next_batch()
        assert b.image.shape == (4, 1, 8, 8, 8) and b.labeled_bs == 2
        assert (b.mask[:2] == 1).all() and (b.mask[2:] == 0).all() and (b.label[2:] == 0).all()
        for row in range(2):  # every labeled patch is centred on a foreground voxel
            assert (b.label[row] > 0).any()


def test_unlabeled_rows_from_labeled_cases_when_no_unlabeled():
    _, loader = make_loader()
    sampler = PatchSampler(CaseStore(loader, 3), ["c0", "c1"], [], (8, 8, 8), 1, 1)
    b = sampler.next_batch()
    assert b.image.shape[0] == 2 and (b.mask[1] == 0).all()


def test_partial_mask_and_extras_follow_the_patch():
    cases, _ = make_loader(n=1)
    image, label, _ = cases["c0"]
    mask = np.zeros(label.shape, np.uint8)
    mask[:5] = 1
    loader = lambda name: (image, label, Volume(mask, is_label=True))  # noqa: E731
    extra = lambda lab, m, c: {"twice": (lab[None] * 2).astype(np.float32)}  # noqa: E731
    sampler = PatchSampler(CaseStore(loader, 3, extra_targets=extra), ["c0"], [], (8, 8, 8), 1, 0,
                           augment_config=None)
    b = sampler.next_batch()
    assert 0 < float(b.mask.mean()) < 1
    assert (b.extras["twice"][:, 0] == 2 * b.label.float()).all()


def test_sampler_state_restores_exactly():
    _, loader = make_loader()
    store = CaseStore(loader, 3)

    def make():
        return PatchSampler(store, ["c0", "c1", "c2"], ["c3", "c4"], (8, 8, 8), 2, 1, seed=5)

    a = make()
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = make()
    b.load_state_dict(state)
    for e in expected:
        got = b.next_batch()
        assert (got.image == e.image).all() and (got.label == e.label).all()


def test_cache_is_bounded_and_errors_name_the_case():
    cases, loader = make_loader()
    store = CaseStore(loader, 3, cache_mb=0.001)
    for name in ("c0", "c1", "c0"):
        store.get(name, True)
    assert store.loads == 3 and len(store._cache) == 1
    with pytest.raises(ValueError, match="c0"):
        CaseStore(loader, num_classes=2).get("c0", True)  # label 2 >= 2 classes
