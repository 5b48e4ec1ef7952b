"""Random patch augmentation applied consistently to image, label, mask and per-method extras.

Geometric transforms (flips, 90-degree in-plane rotations) move every array of a sample the same way,
so a signed distance map stays aligned with its label (a distance field is resampled by a flip or a
rotation, its values do not change). Intensity transforms touch the image only. Every draw comes from
the caller's ``numpy.random.Generator`` so that a run can be resumed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    rot90: bool = True
    intensity: bool = False
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise: bool = False
    noise_std: float = 0.05

    @classmethod
    def from_train_config(cls, config) -> AugmentConfig:
        """Read the ``augment_*`` fields of a ``TrainConfig``."""
        return cls(
            flip=config.augment_flip,
            rot90=config.augment_rot90,
            intensity=config.augment_intensity,
            intensity_scale=config.intensity_scale,
            intensity_shift=config.intensity_shift,
            noise=config.augment_noise,
            noise_std=config.noise_std,
        )


def _geometric(sample: Sample, fn) -> Sample:
    """Apply ``fn(array, spatial_axes_offset)`` to every array of the sample."""
    return Sample(
        image=fn(sample.image, 1),
        label=fn(sample.label, 0),
        mask=fn(sample.mask, 0),
        extras={k: fn(v, 1) for k, v in sample.extras.items()},
    )


def random_flip(sample: Sample, rng: np.random.Generator) -> Sample:
    """Flip each of the z, y, x axes with probability 0.5."""
    axes = [ax for ax in range(3) if rng.random() < 0.5]
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


def augment(sample: Sample, rng: np.random.Generator, config: AugmentConfig) -> Sample:
    """Apply the switched-on augmentations in a fixed order (flip, rot90, intensity, noise).

    Returns contiguous arrays (``np.flip`` / ``np.rot90`` give views).
    """
    if config.flip:
        sample = random_flip(sample, rng)
    if config.rot90:
        sample = random_rot90(sample, rng)
    if config.intensity:
        sample = random_intensity(sample, rng, config.intensity_scale, config.intensity_shift)
    if config.noise and config.noise_std > 0:
        sample = random_noise(sample, rng, config.noise_std)
    return _geometric(sample, lambda a, off: np.ascontiguousarray(a))
