"""Device choice for inference; precision comes from :mod:`napari_sscce.precision` (re-exported here)."""

from __future__ import annotations

import torch
from torch import nn

from napari_sscce.precision import (  # noqa: F401 - re-exported: the one precision module
    autocast_context,
    cpu_supports_bf16,
    resolve_precision,
    uses_channels_last,
)


class DeviceError(ValueError):
    """The requested device is not available on this machine."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name into a usable ``torch.device``.

    Parameters
    ----------
    name : {"auto", "cuda", "mps", "cpu"}
        ``"auto"`` takes the first of CUDA, Apple MPS and the CPU that is available. ``"cuda:1"`` style
        names are accepted.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        When the named device is not available (the message says what is).
    """
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was requested but CUDA is not available "
                f"(this PyTorch {torch.__version__} build has CUDA {torch.version.cuda or 'none'}); "
                "use --device cpu or auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' was requested but Apple MPS is not available; use cpu or auto")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; choose one of auto, cuda, mps, cpu")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device``, set eval mode and the memory layout that suits the device
    (:func:`~napari_sscce.precision.uses_channels_last`).

    Runs with inference mode switched off so that the moved parameters stay ordinary tensors (a model
    handed in by training code must stay trainable).
    """
    with torch.inference_mode(False):
        model = model.to(device).eval()
        memory_format = (
            torch.channels_last_3d if uses_channels_last(device) else torch.contiguous_format
        )
        model = model.to(memory_format=memory_format)
    return model
