"""Device choice and mixed precision for inference."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


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


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), so bf16 autocast pays off.

    Looks at PyTorch's own CPU capability report first, then at the ``/proc/cpuinfo`` flags
    ``avx512_bf16`` / ``amx_bf16`` (Linux).
    """
    mkldnn = getattr(torch.backends, "mkldnn", None)
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if mkldnn is not None and mkldnn.is_available() and probe is not None:
        try:
            if not bool(probe()):
                return False
        except (RuntimeError, AttributeError):
            pass
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision actually used: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` is bf16 on CUDA GPUs that support it (fp16 on older ones), bf16 on CPUs with native bf16
    (:func:`cpu_supports_bf16`), fp32 elsewhere (MPS included). An explicit request is honoured except that
    fp16 on the CPU falls back to bf16 (CPU autocast has no fast fp16 convolutions).
    """
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if device.type == "cpu":
        if precision == "auto":
            return "bf16" if cpu_supports_bf16() else "fp32"
        return "bf16"
    if device.type == "mps":
        return "fp32" if precision == "auto" else precision
    return "fp32"


def autocast_context(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """A context in which forward passes run at ``precision`` on ``device``.

    CUDA: fp16 or bf16 autocast; CPU: bf16 autocast when the CPU supports bf16; ``"fp32"`` (or a CPU without
    bf16 when ``"auto"``) gives full precision (a no-op context).
    """
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def uses_channels_last(device: torch.device, precision: str) -> bool:
    """Whether to put model and windows in ``channels_last_3d`` (CPU bf16: oneDNN's fast layout)."""
    return device.type == "cpu" and resolve_precision(device, precision) == "bf16"


def prepare_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move ``model`` to ``device``, set eval mode and the memory layout that suits ``precision``.

    Runs with inference mode switched off so that the moved parameters stay ordinary tensors (a model
    handed in by training code must stay trainable).
    """
    with torch.inference_mode(False):
        model = model.to(device).eval()
        memory_format = (
            torch.channels_last_3d if uses_channels_last(device, precision) else torch.contiguous_format
        )
        model = model.to(memory_format=memory_format)
    return model


@contextlib.contextmanager
def no_grad_inference() -> Iterator[None]:
    """``torch.inference_mode`` (no autograd bookkeeping, no version counters)."""
    with torch.inference_mode():
        yield
