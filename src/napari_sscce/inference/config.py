"""Settings of one inference run: the single source of truth for the defaults of the CLI and the widgets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from napari_sscce.precision import PRECISIONS

MODES = ("gaussian", "uniform")
DEVICES = ("auto", "cuda", "mps", "cpu")
NAN_POLICIES = ("error", "zero", "mean")  # = napari_sscce.io.validate.NAN_POLICIES

#: The LA literature's window step (z, y, x) in voxels (UA-MT ``test_util.py``: stride_z 4, stride_xy 18).
LITERATURE_STRIDE = (4, 18, 18)


def _triple(value: Any, name: str, kind: type = int) -> tuple | None:
    """``None`` or a 3-tuple of ``kind`` (a scalar is repeated)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,) * 3
    values = tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (z, y, x), got {values!r}")
    return tuple(kind(v) for v in values)


@dataclass
class InferenceConfig:
    """How to run a sliding-window prediction.

    Attributes
    ----------
    patch_size : tuple of int or None
        Window size (z, y, x). ``None``: the checkpoint's training patch (metadata ``patch_size``).
    overlap : float
        Fraction in [0, 1) by which neighbouring windows overlap; the step is ``int(patch * (1 - overlap))``
        (MONAI's rule). Ignored when ``stride`` is given.
    mode : {"gaussian", "uniform"}
        How overlapping windows are blended: Gaussian importance weights (sigma = patch / 8, as nnU-Net and
        MONAI) or plain averaging (the LA literature).
    stride : tuple of int or None
        Explicit step (z, y, x) in voxels. The literature's setting is :data:`LITERATURE_STRIDE` with
        mode ``"uniform"`` (see :meth:`literature`).
    batch_size : int
        Windows per forward pass (4: the deep layers of a 3D U-Net see few voxels per window, so batching
        windows keeps the CPU's matrix units busy; measured 20 % faster per window than 2 on the bf16 CPU
        path). Halved automatically on out-of-memory errors.
    tta : bool
        Mirroring test-time augmentation: average the predictions of the flips over ``tta_axes`` (only
        the axes the model was trained to flip, when its checkpoint records them; see
        :func:`napari_sscce.inference.predict.tta_axes`).
    tta_axes : tuple of int
        Spatial axes (0 = z, 1 = y, 2 = x) that TTA flips; every subset is used (2 ** len combinations,
        8 for all three axes).
    largest_component : bool
        Keep only the largest connected component of each foreground class.
    device : {"auto", "cuda", "mps", "cpu"}
        Where to compute; ``"auto"`` takes CUDA, then Apple MPS, then the CPU. ``"cuda:1"`` style names work.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"``: bf16 autocast on CUDA GPUs and CPUs that support it, fp16 on older CUDA GPUs, else fp32.
    return_per_network : bool
        Also return each network's probabilities.
    mc_dropout : int
        Number of Monte-Carlo dropout passes. 0 (default): each network runs once, dropout off. With ``n > 0``
        each network runs ``n`` times per window with dropout on and its probabilities are the mean of the
        passes; for a single-network model this is the way to get a disagreement (KL) map: the ``kl`` output
        then compares the mean of the even passes with the mean of the odd passes.
    nan_policy : {"error", "zero", "mean"}
        What to do with NaN / Inf voxels of the input (:func:`napari_sscce.io.validate.apply_nan_policy`):
        ``"error"`` (default) raises a ``VolumeError`` naming the file and the count; ``"zero"`` / ``"mean"``
        replace them by 0 / the mean of the finite voxels (raw intensities) and record the count in
        ``Prediction.info["nonfinite_voxels"]``.
    temperature : float or None
        Calibration of the mean probability: ``softmax(log p_mean / T)`` before the entropy map is computed
        (``T > 1`` softens over-confident probabilities). The argmax, hence the segmentation, never changes,
        nor does the KL map. ``None`` (default): the checkpoint's ``calibration.temperature`` metadata when
        present (fitted on labeled cases by :func:`napari_sscce.metrics.calibration.fit_temperature`),
        else 1 (no change).
    """

    patch_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    mode: str = "gaussian"
    stride: tuple[int, int, int] | None = None
    batch_size: int = 4
    tta: bool = False
    tta_axes: tuple[int, ...] = (0, 1, 2)
    largest_component: bool = False
    device: str = "auto"
    precision: str = "auto"
    return_per_network: bool = False
    mc_dropout: int = 0
    nan_policy: str = "error"
    temperature: float | None = None

    def __post_init__(self) -> None:
        self.patch_size = _triple(self.patch_size, "patch_size")  # type: ignore[assignment]
        self.stride = _triple(self.stride, "stride")  # type: ignore[assignment]
        self.tta_axes = tuple(sorted({int(a) for a in self.tta_axes}))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if self.patch_size is not None and min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if self.stride is not None and min(self.stride) < 1:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if any(a not in (0, 1, 2) for a in self.tta_axes):
            raise ValueError(f"tta_axes must be spatial axes 0, 1 or 2, got {self.tta_axes}")
        if str(self.device).split(":")[0] not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(
                f"unknown nan_policy {self.nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}"
            )
        if int(self.mc_dropout) < 0:
            raise ValueError(f"mc_dropout must be >= 0, got {self.mc_dropout}")
        if self.temperature is not None and not float(self.temperature) > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @classmethod
    def literature(cls, **overrides: Any) -> InferenceConfig:
        """The LA papers' setting: uniform averaging with step (4, 18, 18) (z, y, x)."""
        return cls(**{"mode": "uniform", "stride": LITERATURE_STRIDE, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceConfig:
        """Build from :meth:`to_dict` output; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown inference setting(s): {', '.join(unknown)}")
        return cls(**data)
