"""Two-stream patch batches: lazy case loading with a bounded cache, patch sampling, resumable state.

Semantics (UA-MT ``TwoStreamBatchSampler``): every batch holds ``labeled_bs`` labeled and
``unlabeled_bs`` unlabeled rows. The labeled cases are reshuffled at each pass (a pass ends when fewer
than a batch's worth of cases remain: drop-last), the unlabeled cases cycle through successive
permutations. When the data set has no unlabeled case, unlabeled rows are drawn from the labeled cases
with their labels ignored.

Partial labels: a labeled case may carry an annotation mask (1 = the label there is confirmed). Its rows
get ``mask`` = the annotation mask, so supervised terms see only confirmed voxels, and the methods use
``1 - mask`` as the unlabeled weight of their unsupervised terms: the unannotated voxels of a labeled row
feed the pseudo-label and consistency terms exactly as the voxels of unlabeled rows do.
A *weighted* mask (values above 1, :data:`WEIGHTED_MASK_SCALE` = weight 1; :func:`mask_weights`) gives
voxel weights in [0, 1]: the supervised terms take a weighted mean (a voxel of weight ``w`` counts ``w``
times a confirmed one) and every voxel below weight 1 also feeds the unsupervised terms (the fine-tune's
distillation from the starting model, :mod:`napari_sscce.loop`).

Patches: a ``foreground_fraction`` (default 1/3) of labeled patches is centred on a random voxel (with a
confirmed label) of a random present foreground class (nnU-Net's oversampling), the others are
uniform random crops. Volumes smaller than the patch are padded symmetrically: image 0 (the mean after
z-scoring), label 0, mask 1 for fully labeled cases (the padding is supervised as background, as the
reference's ``RandomCrop`` does) and 0 for partially labeled ones, extras by edge values.

Distributed training: the case order comes from a generator seeded identically on every rank; each rank
takes its own slice of a global batch of ``world_size`` x the per-rank batch; patch positions and
augmentations come from a per-rank generator. Both generator states and the stream positions are in
:meth:`PatchSampler.state_dict` (JSON-ready) for exact resume.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_sscce.methods.base import Batch
from napari_sscce.preprocessing import (
    normalize_intensity,
    resample_annotation,
    resample_to_shape,
    resampled_shape,
)
from napari_sscce.training.augment import AugmentConfig, Sample, augment

#: at most this many voxel positions are kept per class for foreground oversampling
MAX_CLASS_LOCATIONS = 10000

CaseLoader = Callable[[str], tuple[Any, Any, Any]]
ExtraTargets = Callable[[np.ndarray, "np.ndarray | None", int], dict[str, np.ndarray]]


@dataclass
class CaseData:
    """One loaded, normalised case.

    Attributes
    ----------
    name : str
    image : numpy.ndarray
        ``[Cin, Z, Y, X]`` float32, normalised.
    label : numpy.ndarray or None
        ``[Z, Y, X]`` uint8 (None when loaded as unlabeled).
    mask : numpy.ndarray or None
        ``[Z, Y, X]`` float32 annotation mask, None when the whole label is confirmed.
    extras : dict
        Per-method targets ``[K, Z, Y, X]`` (labeled cases only).
    class_locations : dict
        Class -> ``[N, 3]`` int32 voxel positions with a confirmed label of that class (foreground only).
    spacing : tuple of float
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray | None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    class_locations: dict[int, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        arrays = [self.image, self.label, self.mask, *self.extras.values(), *self.class_locations.values()]
        return int(sum(a.nbytes for a in arrays if a is not None))


#: value of a confirmed voxel in a weighted annotation mask (a mask whose maximum exceeds 1)
WEIGHTED_MASK_SCALE = 255


def mask_weights(mask: np.ndarray) -> np.ndarray:
    """Float32 voxel weights of an integer annotation mask.

    A binary mask (maximum at most 1) gives 1 on nonzero voxels; a weighted mask (maximum above 1) gives
    ``value / WEIGHTED_MASK_SCALE`` clipped to [0, 1].
    """
    mask = np.asarray(mask)
    if mask.size and mask.max() > 1:
        return np.clip(mask.astype(np.float32) / WEIGHTED_MASK_SCALE, 0.0, 1.0)
    return (mask > 0).astype(np.float32)


def class_locations(label: np.ndarray, mask: np.ndarray | None, num_classes: int) -> dict[int, np.ndarray]:
    """Voxel positions of each present foreground class (confirmed voxels only), subsampled to 10000."""
    rng = np.random.default_rng(0)
    out: dict[int, np.ndarray] = {}
    valid = None if mask is None else mask > 0
    for c in range(1, num_classes):
        sel = label == c
        if valid is not None:
            sel &= valid
        pos = np.argwhere(sel)
        if len(pos) == 0:
            continue
        if len(pos) > MAX_CLASS_LOCATIONS:
            pos = pos[rng.choice(len(pos), MAX_CLASS_LOCATIONS, replace=False)]
        out[c] = pos.astype(np.int32)
    return out


class CaseStore:
    """Loads cases on demand (normalised, extras computed once) and keeps them in an LRU cache.

    Parameters
    ----------
    loader : callable
        ``loader(name) -> (image Volume, label Volume | None, mask Volume | None)``
        (``VolumeDataset.load_case``).
    num_classes : int
        Classes including background.
    normalization : str
        ``normalize_intensity`` mode.
    extra_targets : callable, optional
        ``method.extra_targets(label, mask, num_classes)``, called once per labeled case while cached.
    cache_mb : float
        Bound of the cache; the least recently used cases are dropped beyond it (at least one case
        is always kept).
    target_spacing : sequence of float, optional
        Resample every case to this spacing (z, y, x, mm) when it is loaded: the image trilinearly, the label
        and annotation mask area-weighted (:func:`napari_sscce.preprocessing.resample_annotation`, so sparse
        slice annotations survive down-sampling). None: the cases' own grids.
    """

    def __init__(
        self,
        loader: CaseLoader,
        num_classes: int,
        normalization: str = "percentile_zscore",
        extra_targets: ExtraTargets | None = None,
        cache_mb: float = 2048.0,
        target_spacing: Sequence[float] | None = None,
    ):
        self.target_spacing = None if target_spacing is None else tuple(float(v) for v in target_spacing)
        self.loader = loader
        self.num_classes = int(num_classes)
        self.normalization = normalization
        self.extra_targets = extra_targets
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[tuple[str, bool], CaseData] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, name: str, labeled: bool) -> CaseData:
        """The case ``name``, with its label (``labeled=True``) or without it."""
        key = (name, bool(labeled))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._load(name, labeled)
        with self._lock:
            self._cache[key] = data
            total = sum(d.nbytes for d in self._cache.values())
            while total > self.cache_bytes and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                total -= dropped.nbytes
        return data

    def _target_shape(self, shape, spacing) -> tuple[int, ...] | None:
        """The grid a case of ``shape`` at ``spacing`` is resampled to (None: kept as it is)."""
        if self.target_spacing is None or np.allclose(spacing, self.target_spacing, rtol=1e-3):
            return None
        return resampled_shape(shape, spacing, self.target_spacing)

    def _spacing(self, spacing) -> tuple[float, ...]:
        return tuple(spacing) if self.target_spacing is None else self.target_spacing

    def _load(self, name: str, labeled: bool) -> CaseData:
        image_vol, label_vol, mask_vol = self.loader(name)
        self.loads += 1
        image = normalize_intensity(np.asarray(image_vol.array), self.normalization)
        image = image[None] if image.ndim == 3 else image
        spacing = tuple(getattr(image_vol, "spacing", (1.0, 1.0, 1.0)))
        native_shape = image.shape[1:]
        target = self._target_shape(native_shape, spacing)
        if target is not None:
            image = resample_to_shape(image, target, order=1).astype(np.float32, copy=False)
        if not labeled:
            return CaseData(name, np.ascontiguousarray(image), None, None, spacing=self._spacing(spacing))
        if label_vol is None:
            raise ValueError(f"case {name!r} is in the labeled split but has no label file")
        label_arr = np.asarray(label_vol.array)
        if label_arr.shape != native_shape:
            raise ValueError(
                f"case {name!r}: label shape {label_arr.shape} differs from image shape {native_shape}"
            )
        if label_arr.size and (label_arr.min() < 0 or label_arr.max() >= self.num_classes):
            raise ValueError(
                f"case {name!r}: label values {int(label_arr.min())}..{int(label_arr.max())} "
                f"outside 0..{self.num_classes - 1}"
            )
        label = np.rint(label_arr).astype(np.uint8)
        mask = None
        if mask_vol is not None:
            mask = mask_weights(mask_vol.array)
            if mask.shape != label.shape:
                raise ValueError(f"case {name!r}: mask shape {mask.shape} differs from label {label.shape}")
        if target is not None:
            label, mask = resample_annotation(label, mask, self.num_classes, target)
        if mask is not None and (mask >= 1).all():
            mask = None
        extras = {}
        if self.extra_targets is not None:
            extras = {
                k: np.ascontiguousarray(v, dtype=np.float32)
                for k, v in self.extra_targets(label, mask, self.num_classes).items()
            }
        return CaseData(
            name,
            np.ascontiguousarray(image),
            label,
            mask,
            extras,
            class_locations(label, mask, self.num_classes),
            self._spacing(spacing),
        )


class IndexStream:
    """Indices ``0..n-1`` in successive random permutations.

    ``cycle=False`` (labeled stream): a pass ends when fewer than the requested count remain, and a
    new permutation starts (drop-last). ``cycle=True`` (unlabeled stream): the remaining indices are
    used and the next permutation continues the request.
    """

    def __init__(self, n: int, cycle: bool):
        if n < 1:
            raise ValueError("an index stream needs at least one case")
        self.n = int(n)
        self.cycle = cycle
        self.perm: list[int] = []
        self.pos = 0
        self.passes = 0

    def _new_perm(self, rng: np.random.Generator, count: int) -> list[int]:
        perm: list[int] = []
        while len(perm) < max(count, 1):  # fewer cases than a batch: concatenate permutations
            perm.extend(int(i) for i in rng.permutation(self.n))
        self.passes += 1
        return perm

    def take(self, count: int, rng: np.random.Generator) -> list[int]:
        """The next ``count`` indices."""
        if self.cycle:
            out = self.perm[self.pos : self.pos + count]
            self.pos += len(out)
            while len(out) < count:
                self.perm, self.pos = self._new_perm(rng, 1), 0
                more = self.perm[: count - len(out)]
                self.pos = len(more)
                out += more
            return out
        if len(self.perm) - self.pos < count:
            self.perm, self.pos = self._new_perm(rng, count), 0
        out = self.perm[self.pos : self.pos + count]
        self.pos += count
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "pos": self.pos, "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm = [int(i) for i in state["perm"]]
        self.pos = int(state["pos"])
        self.passes = int(state["passes"])


def pad_to(array: np.ndarray, shape: Sequence[int], value: float | str, spatial_offset: int) -> np.ndarray:
    """Pad the spatial axes (from ``spatial_offset`` on) symmetrically to at least ``shape``.

    ``value`` is a constant, or ``"edge"``.
    """
    spatial = array.shape[spatial_offset:]
    need = [max(0, int(p) - int(s)) for p, s in zip(shape, spatial, strict=True)]
    if not any(need):
        return array
    pad = [(0, 0)] * spatial_offset + [(n // 2, n - n // 2) for n in need]
    if value == "edge":
        return np.pad(array, pad, mode="edge")
    return np.pad(array, pad, mode="constant", constant_values=value)


class PatchSampler:
    """Produces two-stream :class:`~napari_sscce.methods.base.Batch` es of random patches.

    Parameters
    ----------
    store : CaseStore
    labeled, unlabeled : sequence of str
        Case names. With no unlabeled case and ``unlabeled_bs > 0``, unlabeled rows come from the
        labeled cases (labels ignored).
    patch_size : (z, y, x)
    labeled_bs, unlabeled_bs : int
        Rows per batch on this rank.
    foreground_fraction : float
        Probability that a labeled patch is centred on a foreground voxel.
    augment_config : AugmentConfig, optional
        None = no augmentation.
    seed : int
    rank, world_size : int
        Distributed sharding (see module docstring).
    """

    def __init__(
        self,
        store: CaseStore,
        labeled: Sequence[str],
        unlabeled: Sequence[str],
        patch_size: Sequence[int],
        labeled_bs: int,
        unlabeled_bs: int,
        foreground_fraction: float = 1.0 / 3.0,
        augment_config: AugmentConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not labeled:
            raise ValueError("training needs at least one labeled case")
        self.store = store
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.unlabeled_from_labeled = not self.unlabeled
        self.unlabeled_pool = self.unlabeled or self.labeled
        self.patch_size = tuple(int(p) for p in patch_size)
        self.labeled_bs = int(labeled_bs)
        self.unlabeled_bs = int(unlabeled_bs)
        self.foreground_fraction = float(foreground_fraction)
        self.augment_config = augment_config
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.index_rng = np.random.default_rng([int(seed), 0])  # same on every rank
        self.patch_rng = np.random.default_rng([int(seed), 1, self.rank])  # per rank
        self.labeled_stream = IndexStream(len(self.labeled), cycle=False)
        self.unlabeled_stream = IndexStream(len(self.unlabeled_pool), cycle=True)
        self.batches = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: stream positions, both generator states, batch count."""
        return {
            "labeled": self.labeled_stream.state_dict(),
            "unlabeled": self.unlabeled_stream.state_dict(),
            "index_rng": self.index_rng.bit_generator.state,
            "patch_rng": self.patch_rng.bit_generator.state,
            "batches": self.batches,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (same data, rank and world size)."""
        if int(state.get("world_size", 1)) != self.world_size:
            raise ValueError(
                f"cannot resume sampling of a {state.get('world_size')}-process run "
                f"with {self.world_size} processes"
            )
        self.labeled_stream.load_state_dict(state["labeled"])
        self.unlabeled_stream.load_state_dict(state["unlabeled"])
        self.index_rng.bit_generator.state = state["index_rng"]
        self.patch_rng.bit_generator.state = state["patch_rng"]
        self.batches = int(state["batches"])

    # ------------------------------------------------------------------ sampling
    def _shard(self, stream: IndexStream, per_rank: int) -> list[int]:
        if per_rank == 0:
            return []
        ids = stream.take(per_rank * self.world_size, self.index_rng)
        return ids[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _crop_start(self, shape: Sequence[int], center: Sequence[int] | None) -> list[int]:
        starts = []
        for ax, (n, p) in enumerate(zip(shape, self.patch_size, strict=True)):
            hi = n - p
            if center is None:
                starts.append(int(self.patch_rng.integers(0, hi + 1)))
            else:
                starts.append(int(np.clip(int(center[ax]) - p // 2, 0, hi)))
        return starts

    def sample_patch(self, case: CaseData, labeled: bool) -> Sample:
        """One (not yet augmented) patch of ``case``; unlabeled samples get zero label and mask."""
        ps = self.patch_size
        offset = [max(0, p - s) // 2 for p, s in zip(ps, case.image.shape[1:], strict=True)]
        image = pad_to(case.image, ps, 0.0, 1)
        shape = image.shape[1:]
        center = None
        if labeled and case.class_locations and self.patch_rng.random() < self.foreground_fraction:
            classes = sorted(case.class_locations)
            locs = case.class_locations[classes[int(self.patch_rng.integers(0, len(classes)))]]
            center = locs[int(self.patch_rng.integers(0, len(locs)))] + np.asarray(offset)
        start = self._crop_start(shape, center)
        sl = tuple(slice(s, s + p) for s, p in zip(start, ps, strict=True))
        img = image[(slice(None), *sl)]
        if not labeled:
            zeros = np.zeros(ps, dtype=np.float32)
            return Sample(img, zeros.astype(np.uint8), zeros, {})
        label = pad_to(case.label, ps, 0, 0)[sl]
        if case.mask is None:
            mask = np.ones(ps, dtype=np.float32)
        else:
            mask = pad_to(case.mask, ps, 0.0, 0)[sl]
        extras = {k: pad_to(v, ps, "edge", 1)[(slice(None), *sl)] for k, v in case.extras.items()}
        return Sample(img, label, mask, extras)

    def next_batch(self) -> Batch:
        """The next batch: ``labeled_bs`` labeled rows, then ``unlabeled_bs`` unlabeled rows."""
        lab_ids = self._shard(self.labeled_stream, self.labeled_bs)
        unl_ids = self._shard(self.unlabeled_stream, self.unlabeled_bs)
        samples = [self.sample_patch(self.store.get(self.labeled[i], True), True) for i in lab_ids]
        samples += [self.sample_patch(self.store.get(self.unlabeled_pool[i], False), False) for i in unl_ids]
        if self.augment_config is not None:
            samples = [augment(s, self.patch_rng, self.augment_config) for s in samples]
        self.batches += 1
        return collate(samples, len(lab_ids))


def collate(samples: Sequence[Sample], labeled_bs: int) -> Batch:
    """Stack samples into a :class:`Batch` (extras of unlabeled rows are zeros)."""
    extras: dict[str, torch.Tensor] = {}
    for key in samples[0].extras if labeled_bs else ():
        ref = samples[0].extras[key]
        rows = [s.extras.get(key, np.zeros_like(ref)) for s in samples]
        extras[key] = torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))
    return Batch(
        image=torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32, copy=False)),
        label=torch.from_numpy(np.stack([s.label for s in samples]).astype(np.int64)),
        mask=torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.float32, copy=False)),
        labeled_bs=labeled_bs,
        extras=extras,
    )


class BatchStream:
    """Iterates ``(batch, sampler_state_after_it)`` pairs, optionally prepared in a background thread.

    The state travels with its batch, so the state saved for resume is the one after the last batch
    the loop actually used, even when the thread has prepared more.
    """

    def __init__(self, sampler: PatchSampler, num_workers: int = 0):
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                item = (self.sampler.next_batch(), self.sampler.state_dict())
            except Exception as exc:  # hand the error to the consumer
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, Any]]]:
        if self.num_workers <= 0:
            while True:
                yield self.sampler.next_batch(), self.sampler.state_dict()
        self._queue = queue.Queue(maxsize=max(2, 2 * self.num_workers))
        self._thread = threading.Thread(target=self._produce, name="sscce-batches", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
