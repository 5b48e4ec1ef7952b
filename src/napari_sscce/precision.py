"""The one place that decides numeric precision, for training and inference alike (Qt-free).

Requests are ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``; :func:`resolve_precision` turns one into the
precision a device actually runs, with the same answer for training and inference:

============  ==========================================  =============================================
device        ``"auto"``                                   explicit request
============  ==========================================  =============================================
CUDA          bf16 where supported, else fp16              honoured
CPU           bf16 with native bf16 (AVX512-BF16 / AMX),   ``bf16`` honoured (emulated without native
              else fp32                                    support: slow but correct); ``fp16`` runs as
                                                           bf16 (CPU autocast has no fast fp16
                                                           convolutions; :func:`precision_note` says so)
MPS           fp32                                         honoured
other         fp32                                         fp32
============  ==========================================  =============================================

``"auto"`` for **training** is a measurement, not an assumption: :func:`choose_training_precision` runs
:func:`training_self_check` (one forward and backward of the actual model on a real batch, in the reduced
precision and in fp32, from the same weights) and keeps the reduced precision only when everything is
finite, the loss differs by at most :data:`LOSS_RTOL` and the gradients by at most :data:`GRAD_RTOL`
(relative, global norm). Otherwise training runs in fp32 and the choice's ``reason`` says why. Verdicts are
cached (:func:`cache_dir`, file ``precision.json``) per machine (CPU model or GPU name), device, torch
version and model architecture, so the check costs a few seconds once.

Inference keeps its own check (:func:`napari_sscce.inference.predict.check_low_precision` and the rewrite
check of :func:`napari_sscce.inference.fast.optimize_for_inference`); :func:`doctor_report` gathers all the
verdicts and the measured speed of bf16 against fp32 (``sscce doctor``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Environment variable that moves the cache folder (tests point it at a temporary folder).
CACHE_ENV = "NAPARI_SSCCE_CACHE_DIR"
CACHE_FILE = "precision.json"
#: Largest relative loss difference (reduced precision vs fp32) the training self-check accepts.
#: bf16 rounding alone changes the loss by ~1e-3..1e-2.
LOSS_RTOL = 0.05
#: Largest relative gradient error ``||g_low - g_fp32|| / ||g_fp32||`` (global norms over every parameter)
#: the training self-check accepts. bf16 rounding alone gives ~1e-2; the faulty AMD EPYC kernels of
#: issue 11 gave 0.83.
GRAD_RTOL = 0.2
#: Largest probability difference between the bf16 inference copy of a model
#: (:func:`napari_sscce.inference.fast.optimize_for_inference`) and fp32 on its check input.
INFERENCE_PROB_ATOL = 0.05

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------ machine facts
def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16_flags() -> dict[str, bool]:
    """The CPU flags that matter for bf16: ``avx512f``, ``avx512_bf16``, ``amx_bf16``, ``amx_tile``."""
    flags = _cpu_flags()
    return {name: name in flags for name in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


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
    flags = cpu_bf16_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def device_name(device: torch.device) -> str:
    """A name for the hardware behind ``device``: the GPU's name or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_model()


# ------------------------------------------------------------------------------------ resolution
def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision ``device`` runs for the request ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    The same rule for training and inference (table in the module docstring). For training, an ``"auto"``
    answer other than fp32 is only a candidate: :func:`choose_training_precision` measures it first.

    Raises
    ------
    ValueError
        For an unknown request.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
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


def precision_note(device: torch.device, precision: str) -> str:
    """One line on what :func:`resolve_precision` makes of ``precision`` on ``device``, and why."""
    resolved = resolve_precision(device, precision)
    if precision == "fp16" and resolved == "bf16":
        return "fp16 was requested on the CPU: using bf16 (CPU autocast has no fast fp16 convolutions)"
    if precision == "auto" and device.type == "cpu" and resolved == "fp32":
        return f"fp32: this CPU ({cpu_model()}) has no native bf16 (AVX512-BF16 / AMX)"
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        return "bf16 was requested: this CPU has no native bf16, so it is emulated (slower than fp32)"
    if precision == "auto" and device.type == "mps":
        return "fp32 on Apple MPS (reduced precision only on request)"
    return f"{resolved} on {device.type}" + (" (requested)" if precision != "auto" else " (auto)")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    return _DTYPES[precision]


def autocast_context(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """A context in which forward passes run at ``precision`` (resolved with :func:`resolve_precision`).

    fp32 gives a no-op context; bf16 / fp16 give ``torch.autocast`` on the device.
    """
    dtype = autocast_dtype(resolve_precision(device, precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def uses_channels_last(device: torch.device) -> bool:
    """Whether model and inputs go in ``channels_last_3d``: on the CPU, at every precision.

    oneDNN's convolutions work in that layout; the default one costs a reorder around every convolution.
    Measured for one training step (forward + backward of a CCE DualModel, one thread, Intel Xeon @ 2.00GHz,
    fp32): 8 filters, batch 4 x 32x48x32: 1.90 -> 1.45 s (1.31x); 16 filters, batch 2 x 112x112x80 (LA):
    49.6 -> 36.9 s (1.35x); 4 filters, batch 4 x 16^3: 0.198 s either way. The values are the same up to
    summation order.
    """
    return device.type == "cpu"


def precision_label(precision: str) -> str:
    """The name recorded in a checkpoint's ``train_summary``: ``"fp32"``, ``"bfloat16"`` or ``"float16"``."""
    dtype = autocast_dtype(precision)
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """The user cache folder: ``$NAPARI_SSCCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/napari-sscce``,
    else ``~/.cache/napari-sscce``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-sscce"


def verdict_key(device: torch.device, precision: str, arch: Any) -> dict[str, str]:
    """What a cached verdict depends on: hardware, device, torch version, precision and architecture."""
    arch_text = json.dumps(arch, sort_keys=True, default=str)
    return {
        "machine": device_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "precision": precision,
        "arch": hashlib.sha256(arch_text.encode()).hexdigest()[:16],
    }


def _key_text(key: dict[str, str]) -> str:
    return json.dumps(key, sort_keys=True)


def _read_cache() -> dict[str, Any]:
    path = cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_verdict(key: dict[str, str]) -> dict[str, Any] | None:
    """The cached self-check result for ``key``, or None."""
    entry = _read_cache().get(_key_text(key))
    return entry if isinstance(entry, dict) else None


def store_verdict(key: dict[str, str], result: dict[str, Any]) -> bool:
    """Add a self-check result to the cache (atomically); False when the folder is not writable."""
    from napari_sscce.atomic import atomic_write_json

    data = _read_cache()
    data[_key_text(key)] = result
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_dir() / CACHE_FILE, data)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------ self-check
@dataclass
class SelfCheck:
    """One reduced-precision-against-fp32 comparison of a forward and backward pass.

    Attributes
    ----------
    precision : str
        The reduced precision checked (``"bf16"`` or ``"fp16"``).
    passed : bool
        Everything finite and both errors within tolerance.
    loss_fp32, loss_low : float
    loss_rel_err : float
        ``|loss_low - loss_fp32| / |loss_fp32|``.
    grad_rel_err : float
        ``||g_low - g_fp32|| / ||g_fp32||`` over all parameters together.
    nonfinite_grads : int
        Non-finite gradient entries in the reduced-precision pass.
    seconds : float
    reason : str
        One line: why it passed or failed.
    """

    precision: str
    passed: bool
    loss_fp32: float
    loss_low: float
    loss_rel_err: float
    grad_rel_err: float
    nonfinite_grads: int
    seconds: float
    reason: str
    tolerances: dict[str, float] = field(default_factory=lambda: {"loss": LOSS_RTOL, "grad": GRAD_RTOL})


def default_check_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The self-check's loss: cross-entropy of each network's logits against the batch labels.

    Method-independent (and free of method state), it runs every convolution of both networks forward and
    backward. ``model(image)`` must return ``(logits_a, logits_b)`` (a ``DualModel``) or logits.
    """
    out = model(batch.image)
    logits = out if isinstance(out, (tuple, list)) else (out,)
    losses = [nn.functional.cross_entropy(lg.float(), batch.label) for lg in logits if lg.requires_grad]
    if not losses:
        losses = [nn.functional.cross_entropy(logits[0].float(), batch.label)]
    return torch.stack(losses).sum()


def _pass(model: nn.Module, batch: Any, device: torch.device, dtype: torch.dtype | None, loss_fn) -> tuple:
    """Loss and flat gradient of one forward/backward of a copy of ``model`` (dropout off, same seed)."""
    net = copy.deepcopy(model).train()
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net, batch)
        loss.backward()
    grads = [p.grad.detach().float().flatten() for p in net.parameters() if p.grad is not None]
    flat = torch.cat(grads) if grads else torch.zeros(1, device=device)
    return float(loss.detach()), flat


def training_self_check(
    model: nn.Module,
    batch: Any,
    device: torch.device,
    precision: str,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = default_check_loss,
) -> SelfCheck:
    """Compare one forward and backward in ``precision`` with fp32 on the same weights and batch.

    Both passes run on deep copies of ``model`` in train mode (BatchNorm uses the batch's statistics, so
    both see the same normalisation; the model's own running statistics are not touched) with dropout off.
    Passes when both losses and all gradients are finite, the loss relative error is at most
    :data:`LOSS_RTOL` and the gradient relative error at most :data:`GRAD_RTOL`.
    """
    start = time.perf_counter()
    loss32, g32 = _pass(model, batch, device, None, loss_fn)
    low, glow = _pass(model, batch, device, autocast_dtype(precision), loss_fn)
    bad = int((~torch.isfinite(glow)).sum())
    finite = bad == 0 and all(map(_finite, (loss32, low))) and bool(torch.isfinite(g32).all())
    loss_err = abs(low - loss32) / max(abs(loss32), 1e-12) if finite else float("inf")
    grad_err = _relative_error(glow, g32) if finite else float("inf")
    if not finite:
        reason = f"{precision} gave a non-finite loss or {bad} non-finite gradient entries"
    elif loss_err > LOSS_RTOL:
        reason = f"{precision} changed the loss by {loss_err:.3g} (tolerance {LOSS_RTOL})"
    elif grad_err > GRAD_RTOL:
        reason = f"{precision} gradients differ from fp32 by {grad_err:.3g} (tolerance {GRAD_RTOL})"
    else:
        reason = f"{precision} agrees with fp32 (loss error {loss_err:.2g}, gradient error {grad_err:.2g})"
    passed = finite and loss_err <= LOSS_RTOL and grad_err <= GRAD_RTOL
    return SelfCheck(precision, passed, loss32, low, loss_err, grad_err, bad, time.perf_counter() - start,
                     reason)


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` in float64 (no overflow for huge entries)."""
    return float((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


@dataclass
class PrecisionChoice:
    """What training runs at, and why.

    Attributes
    ----------
    precision : str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    reason : str
        One line for the user (progress message, ``train_summary["precision_reason"]``).
    check : dict or None
        The :class:`SelfCheck` fields when a self-check decided (``cached`` says whether it was re-used).
    """

    precision: str
    reason: str
    check: dict[str, Any] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.precision)


def choose_training_precision(
    model: nn.Module,
    batch: Any | Callable[[], Any],
    device: torch.device,
    requested: str = "auto",
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = default_check_loss,
    use_cache: bool = True,
) -> PrecisionChoice:
    """The precision to train ``model`` at on ``device`` for the request ``requested``.

    An explicit request is honoured as :func:`resolve_precision` says (no check). ``"auto"`` with a reduced
    precision candidate runs :func:`training_self_check` on ``model`` and ``batch`` (or re-uses the cached
    verdict for this machine, device, torch version and architecture ``model.arch``) and falls back to fp32
    when the check fails. ``batch`` may be a zero-argument callable, called only when a check runs.
    """
    candidate = resolve_precision(device, requested)
    if requested != "auto" or candidate == "fp32":
        return PrecisionChoice(candidate, precision_note(device, requested))
    key = verdict_key(device, candidate, getattr(model, "arch", type(model).__name__))
    result = cached_verdict(key) if use_cache else None
    if result is None:
        batch = batch() if callable(batch) else batch
        result = asdict(training_self_check(model, batch, device, candidate, loss_fn))
        if use_cache:
            store_verdict(key, result)
        result["cached"] = False
    else:
        result = {**result, "cached": True}
    if result["passed"]:
        return PrecisionChoice(candidate, f"{candidate} (auto; self-check: {result['reason']})", result)
    return PrecisionChoice("fp32", f"fp32: the {candidate} self-check failed: {result['reason']}", result)


# ------------------------------------------------------------------------------------ doctor
def _time_forward(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, repeats: int
) -> float:
    """Milliseconds per forward pass (best of ``repeats`` after one warm-up)."""
    best = float("inf")
    with torch.inference_mode(), autocast_context(device, precision):
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best = min(best, time.perf_counter() - start)
    return 1000.0 * best


def basic_report() -> list[str]:
    """The cheap lines of :func:`doctor_report`: versions, devices, CPU and what ``auto`` would pick."""
    from napari_sscce import __version__

    lines = [
        f"napari-sscce: {__version__}",
        f"Python: {platform.python_version()} ({platform.platform()})",
        f"torch: {torch.__version__} (CUDA build {torch.version.cuda or 'none'}, "
        f"oneDNN {'yes' if torch.backends.mkldnn.is_available() else 'no'}, "
        f"threads {torch.get_num_threads()})",
        f"CPU: {cpu_model()}",
        "CPU bf16 flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_bf16_flags().items())
        + f"; native bf16: {'yes' if cpu_supports_bf16() else 'no'}",
    ]
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        lines.append(f"ONEDNN_MAX_CPU_ISA: {os.environ['ONEDNN_MAX_CPU_ISA']}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "bf16 no"
            lines.append(f"CUDA device {i}: {torch.cuda.get_device_name(i)} ({bf16})")
    else:
        lines.append("CUDA: not available")
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"MPS: {'available' if mps is not None and mps.is_available() else 'not available'}")
    for dev in _devices():
        lines.append(f"precision auto on {dev}: {precision_note(dev, 'auto')}")
    return lines


def _devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def measured_report(
    base_filters: int = 8, shape: tuple[int, int, int] = (32, 48, 32), repeats: int = 3
) -> list[str]:
    """The measured lines of :func:`doctor_report`, per device: the training self-check of the
    supervised model (VNet + ResNet-VNet, ``base_filters``) on a synthetic batch of 2 x ``shape`` (z, y, x),
    the inference bf16 check (max probability difference to fp32) and the speed of a VNet forward in bf16
    and fp32."""
    from napari_sscce.methods.base import Batch
    from napari_sscce.models.dual import build_dual_model
    from napari_sscce.models.registry import build_network

    lines = []
    gen = torch.Generator().manual_seed(0)
    for dev in _devices():
        low = "bf16" if dev.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
        torch.manual_seed(0)
        model = build_dual_model("supervised", 1, 3, base_filters=base_filters, has_dropout=False).to(dev)
        image = torch.randn(2, 1, *shape, generator=gen).to(dev)
        label = (image[:, 0] > 0.5).long() + (image[:, 0] > 1.5).long()
        batch = Batch(image, label, torch.ones_like(image[:, 0]), 2)
        check = training_self_check(model, batch, dev, low)
        lines.append(
            f"training self-check on {dev} ({low} vs fp32, batch 2x{shape}): "
            f"{'PASS' if check.passed else 'FAIL'}; loss rel. error {check.loss_rel_err:.3g} "
            f"(tol {LOSS_RTOL}), gradient rel. error {check.grad_rel_err:.3g} (tol {GRAD_RTOL}), "
            f"non-finite gradients {check.nonfinite_grads} [{check.seconds:.1f} s]"
        )
        model.eval()
        with torch.inference_mode():
            p32 = torch.softmax(model(image)[0].float(), 1)
            with autocast_context(dev, low):
                plow = torch.softmax(model(image)[0].float(), 1)
        diff = float((p32 - plow).abs().max())
        lines.append(f"inference {low} check on {dev}: max probability difference to fp32 {diff:.2g}")
        vnet = build_network("vnet", in_channels=1, num_classes=3, base_filters=base_filters,
                             has_dropout=False).to(dev).eval()
        x = torch.randn(2, 1, *shape, generator=gen).to(dev)
        if uses_channels_last(dev):  # the layout training and inference use here, for both
            vnet, x = vnet.to(memory_format=torch.channels_last_3d), x.contiguous(
                memory_format=torch.channels_last_3d)
        ms32 = _time_forward(vnet, x, dev, "fp32", repeats)
        mslow = _time_forward(vnet, x, dev, low, repeats)
        lines.append(
            f"speed on {dev}: VNet ({base_filters} filters) forward of 2x{shape}: fp32 {ms32:.1f} ms, "
            f"{low} {mslow:.1f} ms ({ms32 / mslow:.2f}x)"
        )
    return lines


def cached_verdict_lines() -> list[str]:
    """One line per training self-check verdict cached for this machine (no computation)."""
    machines = {device_name(d) for d in _devices()}
    lines = []
    for key_text, result in sorted(_read_cache().items()):
        try:
            key = json.loads(key_text)
        except ValueError:
            continue
        if not isinstance(result, dict) or key.get("machine") not in machines:
            continue
        lines.append(
            f"cached training self-check ({key.get('precision')} on {key.get('device')}, torch "
            f"{key.get('torch')}, model {key.get('arch')}): {'PASS' if result.get('passed') else 'FAIL'}: "
            f"{result.get('reason')}"
        )
    return lines


def doctor_report(measure: bool = True) -> str:
    """A ``napari --info``-style report: versions, devices, CPU flags, precision verdicts (cached training
    self-checks) and, with ``measure``, the measured self-checks and bf16-vs-fp32 speed (seconds to tens
    of seconds on a CPU). ``measure=False`` is cheap enough for a tooltip."""
    lines = basic_report() + cached_verdict_lines()
    if measure:
        lines += measured_report()
    return "\n".join(lines)
