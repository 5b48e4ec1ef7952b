"""Random patch augmentation applied consistently to image, label, mask and per-method extras.

Geometric transforms (flips, 90-degree in-plane rotations) move every array of a sample the same way,
so a signed distance map stays aligned with its label (a distance field is resampled by a flip or a
rotation, its values do not change). Intensity transforms touch the image only. Every draw comes from
the caller's ``numpy.random.Generator`` so that a run can be resumed exactly.

Orientation-defined classes. A flip is label-preserving only if no class is defined by its side: the two
hippocampus labels (anterior head, posterior body) sit in the same order along z and y in every case of
the MSD set, so a y flip shows the network a head where the body belongs, still labelled head. The
network must then tell the parts apart by shape alone, which a small budget does not learn (measured:
supervised on all 130 cases, 1000 iterations, 37 % Dice with z/y/x flips + rotations, 85 % without; the
semi-supervised terms reinforce the unseparated state and CCE fell to 0 %). :func:`orientation_axes`
finds such axes from the labeled cases, and ``TrainConfig.flip_axes = "auto"`` (the default) flips only
the other axes and rotates in-plane only when neither in-plane axis is such an axis. A single
foreground class (LA) never restricts anything. nnU-Net instead always mirrors and relies on its long
schedule; the UA-MT / CCE reference code flips every axis of the (single-class) LA patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sscce.io.geometry import AXIS_NAMES, axes_text, parse_axes


@dataclass
class Sample:
    """One training patch.

    Attributes
    ----------
    image : numpy.ndarray
        ``[Cin, Z, Y, X]`` float32.
    label : numpy.ndarray
        ``[Z, Y, X]`` integer (zeros for unlabeled samples).
    mask : numpy.ndarray
        ``[Z, Y, X]`` float32, 1 where the label is confirmed.
    extras : dict
        Name -> ``[K, Z, Y, X]`` float32 (e.g. ``"sdf"``).
    """

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray
    extras: dict[str, np.ndarray]


@dataclass
class AugmentConfig:
    """Switches and strengths (``TrainConfig.augment_*`` fields)."""

    flip: bool = True
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90: bool = True
    intensity: bool = False
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise: bool = False
    noise_std: float = 0.05
    spatial: bool = False
    rotation_degrees: float = 15.0
    scale_range: float = 0.15
    spatial_p: float = 0.5
    rotate_3d: bool = False
    gamma: bool = False
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gamma_p: float = 0.3
    blur: bool = False
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_p: float = 0.2
    lowres: bool = False
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    lowres_p: float = 0.25

    @classmethod
    def from_train_config(cls, config, flip_axes: tuple[int, ...] | None = None) -> AugmentConfig:
        """Read the ``augment_*`` fields of a ``TrainConfig``.

        ``flip_axes`` is the resolved set of axes (:func:`resolve_flip_axes`); None takes the config's
        explicit axes, or all three for ``"auto"``.
        """
        if flip_axes is None:
            flip_axes = parse_axes(AXIS_NAMES if config.flip_axes == "auto" else config.flip_axes)
        rot90 = bool(config.augment_rot90) and {1, 2} <= set(flip_axes)
        return cls(
            flip=config.augment_flip and bool(flip_axes),
            flip_axes=tuple(flip_axes),
            rot90=rot90,
            intensity=config.augment_intensity,
            intensity_scale=config.intensity_scale,
            intensity_shift=config.intensity_shift,
            noise=config.augment_noise,
            noise_std=config.noise_std,
            spatial=bool(getattr(config, "augment_spatial", False)),
            rotation_degrees=float(getattr(config, "rotation_degrees", 15.0)),
            scale_range=float(getattr(config, "scale_range", 0.15)),
            rotate_3d=bool(getattr(config, "rotation_3d", False)),
            gamma=bool(getattr(config, "augment_gamma", False)),
            blur=bool(getattr(config, "augment_blur", False)),
            lowres=bool(getattr(config, "augment_lowres", False)),
        )


def _geometric(sample: Sample, fn) -> Sample:
    """Apply ``fn(array, spatial_axes_offset)`` to every array of the sample."""
    return Sample(
        image=fn(sample.image, 1),
        label=fn(sample.label, 0),
        mask=fn(sample.mask, 0),
        extras={k: fn(v, 1) for k, v in sample.extras.items()},
    )


def random_flip(sample: Sample, rng: np.random.Generator, flip_axes: tuple[int, ...] = (0, 1, 2)) -> Sample:
    """Flip each of ``flip_axes`` (0 = z, 1 = y, 2 = x) with probability 0.5.

    One draw per axis of the three, whether it may flip or not, so the random stream does not depend
    on the choice of axes.
    """
    draws = [rng.random() < 0.5 for _ in range(3)]
    axes = [ax for ax in range(3) if draws[ax] and ax in flip_axes]
    if not axes:
        return sample
    return _geometric(sample, lambda a, off: np.flip(a, axis=tuple(off + ax for ax in axes)))


def random_rot90(sample: Sample, rng: np.random.Generator) -> Sample:
    """Rotate by k x 90 degrees in the (y, x) plane, k uniform in 0..3 (UA-MT ``RandomRotFlip``).

    When the patch is not square in-plane only k = 0 or 2 keep its shape, so k is drawn from those.
    """
    square = sample.label.shape[1] == sample.label.shape[2]
    k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
    if k == 0:
        return sample
    return _geometric(sample, lambda a, off: np.rot90(a, k=k, axes=(off + 1, off + 2)))


def random_spatial(
    sample: Sample, rng: np.random.Generator, degrees: float = 15.0, scale: float = 0.15, p: float = 0.5,
    rotate_3d: bool = False,
) -> Sample:
    """Rotate in the (y, x) plane by U(-degrees, degrees) and zoom by U(1 - scale, 1 + scale) about the patch
    centre (each with probability ``p``; nnU-Net's spatial transform, in-plane as for its anisotropic data).

    Image and extras are interpolated linearly with the border repeated; label and annotation mask take the
    nearest voxel, and the mask is 0 where the patch was filled from outside (not supervised there). Draws
    are made whatever happens, so the random stream does not depend on the outcome.

    ``rotate_3d`` also rotates about the y and x axes by U(-degrees, degrees) each (nnU-Net's rotation of
    isotropic data: about all three axes); the in-plane draws come first, so the stream of the in-plane
    transform is unchanged.
    """
    from scipy import ndimage

    rotate, zoom = rng.random() < p, rng.random() < p
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    factor = 1.0 + rng.uniform(-scale, scale)
    if not (rotate or zoom):
        return sample
    extra = rng.uniform(-degrees, degrees, 2) if rotate_3d else np.zeros(2)
    c, s = (np.cos(angle), np.sin(angle)) if rotate else (1.0, 0.0)
    f = factor if zoom else 1.0
    # output -> input mapping: in = M (out - centre) + centre
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if rotate and rotate_3d:
        b, g = np.deg2rad(extra)
        about_y = np.array([[np.cos(b), 0.0, -np.sin(b)], [0.0, 1.0, 0.0], [np.sin(b), 0.0, np.cos(b)]])
        about_x = np.array([[np.cos(g), -np.sin(g), 0.0], [np.sin(g), np.cos(g), 0.0], [0.0, 0.0, 1.0]])
        matrix = matrix @ about_y @ about_x
    matrix = matrix / f
    centre = (np.asarray(sample.label.shape, dtype=float) - 1.0) / 2.0
    offset = centre - matrix @ centre

    def warp(a: np.ndarray, order: int, mode: str = "nearest") -> np.ndarray:
        return ndimage.affine_transform(a, matrix, offset=offset, order=order, mode=mode, cval=0.0,
                                        prefilter=False)

    def channels(a: np.ndarray) -> np.ndarray:
        return np.stack([warp(ch, 1) for ch in a]).astype(a.dtype, copy=False)

    return Sample(
        image=channels(sample.image),
        label=warp(sample.label, 0),
        mask=warp(sample.mask, 0, mode="constant"),
        extras={k: channels(v) for k, v in sample.extras.items()},
    )


def random_intensity(sample: Sample, rng: np.random.Generator, scale: float, shift: float) -> Sample:
    """``image * (1 + U(-scale, scale)) + U(-shift, shift)`` (one draw per patch)."""
    factor = 1.0 + rng.uniform(-scale, scale)
    offset = rng.uniform(-shift, shift)
    image = (sample.image * factor + offset).astype(np.float32)
    return Sample(image, sample.label, sample.mask, sample.extras)


def random_noise(sample: Sample, rng: np.random.Generator, std: float) -> Sample:
    """Add Gaussian noise ``N(0, std^2)`` to the image."""
    noise = rng.standard_normal(sample.image.shape, dtype=np.float32) * np.float32(std)
    return Sample(sample.image + noise, sample.label, sample.mask, sample.extras)


def random_gamma(sample: Sample, rng: np.random.Generator, gamma_range: tuple[float, float] = (0.7, 1.5),
                 p: float = 0.3) -> Sample:
    """nnU-Net's gamma transform: each channel min-max scaled to [0, 1], raised to a power drawn from
    ``gamma_range`` (below 1 and above 1 equally often, as nnU-Net draws it), scaled back and given its mean
    and standard deviation again (``retain_stats``); with probability ``p`` per patch.

    Draws are made whatever happens, so the random stream does not depend on the outcome.
    """
    apply = rng.random() < p
    low, high = gamma_range
    g = rng.uniform(low, 1.0) if rng.random() < 0.5 and low < 1.0 else rng.uniform(max(low, 1.0), high)
    if not apply:
        return sample
    out = np.empty_like(sample.image)
    for i, ch in enumerate(sample.image):
        mean, std = float(ch.mean()), float(ch.std())
        lo, hi = float(ch.min()), float(ch.max())
        span = hi - lo
        if span <= 0:
            out[i] = ch
            continue
        x = ((ch - lo) / span) ** g * span + lo
        new_std = float(x.std())
        out[i] = (x - x.mean()) / new_std * std + mean if new_std > 0 else x
    return Sample(out.astype(np.float32, copy=False), sample.label, sample.mask, sample.extras)


def random_blur(sample: Sample, rng: np.random.Generator, sigma: tuple[float, float] = (0.5, 1.0),
                p: float = 0.2) -> Sample:
    """Gaussian blur of the image with sigma ``U(*sigma)`` voxels (nnU-Net's GaussianBlurTransform), with
    probability ``p`` per patch; labels unchanged."""
    from scipy import ndimage

    apply = rng.random() < p
    s = rng.uniform(*sigma)
    if not apply:
        return sample
    image = np.stack([ndimage.gaussian_filter(ch, s, mode="nearest") for ch in sample.image])
    return Sample(image.astype(np.float32, copy=False), sample.label, sample.mask, sample.extras)


def random_lowres(sample: Sample, rng: np.random.Generator, zoom: tuple[float, float] = (0.5, 1.0),
                  p: float = 0.25) -> Sample:
    """Simulated low resolution (nnU-Net's SimulateLowResolutionTransform): the image is down-sampled by a
    factor ``U(*zoom)`` with nearest-neighbour sampling and brought back with linear interpolation, with
    probability ``p`` per patch; labels unchanged."""
    from scipy import ndimage

    apply = rng.random() < p
    f = rng.uniform(*zoom)
    if not apply:
        return sample
    shape = sample.image.shape[1:]
    small = tuple(max(1, int(round(n * f))) for n in shape)
    out = []
    for ch in sample.image:
        down = ndimage.zoom(ch, [a / b for a, b in zip(small, shape, strict=True)], order=0, mode="nearest")
        up = ndimage.zoom(down, [a / b for a, b in zip(shape, down.shape, strict=True)], order=1,
                          mode="nearest")
        out.append(up[tuple(slice(0, n) for n in shape)] if up.shape == shape else _fit(up, shape))
    return Sample(np.stack(out).astype(np.float32, copy=False), sample.label, sample.mask, sample.extras)


def _fit(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or edge-pad ``a`` to ``shape`` (``ndimage.zoom`` can be one voxel off)."""
    a = a[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - m) for n, m in zip(shape, a.shape, strict=True)]
    return np.pad(a, pad, mode="edge") if any(b for _, b in pad) else a


def augment(sample: Sample, rng: np.random.Generator, config: AugmentConfig) -> Sample:
    """Apply the switched-on augmentations in a fixed order (flip, rot90, spatial, intensity, gamma, blur,
    low resolution, noise).

    Returns contiguous arrays (``np.flip`` / ``np.rot90`` give views).
    """
    if config.flip:
        sample = random_flip(sample, rng, config.flip_axes)
    if config.rot90:
        sample = random_rot90(sample, rng)
    if config.spatial:
        sample = random_spatial(sample, rng, config.rotation_degrees, config.scale_range, config.spatial_p,
                                config.rotate_3d)
    if config.intensity:
        sample = random_intensity(sample, rng, config.intensity_scale, config.intensity_shift)
    if config.gamma:
        sample = random_gamma(sample, rng, config.gamma_range, config.gamma_p)
    if config.blur:
        sample = random_blur(sample, rng, config.blur_sigma, config.blur_p)
    if config.lowres:
        sample = random_lowres(sample, rng, config.lowres_zoom, config.lowres_p)
    if config.noise and config.noise_std > 0:
        sample = random_noise(sample, rng, config.noise_std)
    return _geometric(sample, lambda a, off: np.ascontiguousarray(a))


def orientation_axes(
    labels: list[np.ndarray], num_classes: int, agreement: float = 0.95, min_cases: int = 3
) -> dict[int, list[tuple[int, int]]]:
    """Axes along which two foreground classes keep the same order in (nearly) every labeled case.

    For every pair of foreground classes ``(c, d)`` present together in at least ``min_cases`` cases, the
    sign of ``centroid(d) - centroid(c)`` along each axis is counted; an axis where one sign holds in at
    least ``agreement`` of those cases defines the classes by their side, and flipping along it would
    swap their anatomical meaning.

    Parameters
    ----------
    labels : list of numpy.ndarray
        Label maps ``(z, y, x)`` of the labeled cases (0 = background or unannotated).
    num_classes : int
        Including background.
    agreement : float
        Share of cases with the same sign.
    min_cases : int
        Pairs seen in fewer cases decide nothing.

    Returns
    -------
    dict
        Axis (0 = z, 1 = y, 2 = x) -> the class pairs ordered along it; empty for one foreground class.
    """
    if num_classes <= 2:
        return {}
    signs: dict[tuple[int, int], list[np.ndarray]] = {}
    for label in labels:
        if label.ndim != 3:
            continue
        centroids = {}
        for c in range(1, num_classes):
            where = np.nonzero(label == c)
            if where[0].size:
                centroids[c] = np.array([w.mean() for w in where])
        for c in centroids:
            for d in centroids:
                if c < d:
                    signs.setdefault((c, d), []).append(np.sign(centroids[d] - centroids[c]))
    found: dict[int, list[tuple[int, int]]] = {}
    for pair, rows in signs.items():
        if len(rows) < min_cases:
            continue
        rows_arr = np.array(rows)
        for axis in range(3):
            share = max((rows_arr[:, axis] > 0).mean(), (rows_arr[:, axis] < 0).mean())
            if share >= agreement:
                found.setdefault(axis, []).append(pair)
    return found


def resolve_flip_axes(
    setting: str, labels: list[np.ndarray], num_classes: int
) -> tuple[tuple[int, ...], dict]:
    """The flip axes of a run and why.

    Parameters
    ----------
    setting : str
        ``TrainConfig.flip_axes``: ``"auto"`` (all axes but the :func:`orientation_axes` of ``labels``),
        or explicit letters (``"zyx"``, ``"x"``, ``"none"``).
    labels, num_classes
        The labeled cases' label maps, for ``"auto"``.

    Returns
    -------
    tuple
        ``(axes, info)`` with ``info = {"setting", "flip_axes": "zx", "orientation_axes": {"y": [[1, 2]]}}``.
    """
    if setting.strip().lower() == "auto":
        oriented = orientation_axes(labels, num_classes)
        axes = tuple(a for a in range(3) if a not in oriented)
    else:
        oriented = {}
        axes = parse_axes(setting)
    info = {
        "setting": setting,
        "flip_axes": axes_text(axes),
        "orientation_axes": {
            AXIS_NAMES[a]: [list(p) for p in pairs] for a, pairs in sorted(oriented.items())
        },
    }
    return axes, info
