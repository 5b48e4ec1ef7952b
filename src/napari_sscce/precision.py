"""The one place that decides numeric precision, for training and inference alike (Qt-free).

Requests are ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``. :func:`resolve_precision` turns one into the
precision a device runs; ``purpose`` says whether it is for inference or for training, because on CPUs the two
differ:

============  ===========================================  ===========================================
device        ``"auto"`` for inference                      ``"auto"`` for training
============  ===========================================  ===========================================
CUDA          bf16 where supported, else fp16               the same, after the training self-check
CPU with AMX  bf16                                          bf16, after the training self-check
CPU with      bf16 (its own check in                        **fp32**: bf16 training on such CPUs (AMD
AVX512-BF16,  :mod:`napari_sscce.inference.fast` and        EPYC, measured) threw away 70-100 % of its
no AMX        ``check_low_precision``)                      steps to non-finite gradients although a
                                                            one-batch check at initialisation passed
CPU without   fp32                                          fp32
native bf16
MPS           fp32                                          fp32
============  ===========================================  ===========================================

An explicit request is honoured everywhere (``fp16`` on a CPU runs as bf16: CPU autocast has no fast fp16
convolutions; bf16 on a CPU without native bf16 is emulated, slow but correct). :func:`training_policy` states
the training rule for a device with its evidence (``sscce doctor`` prints it).

**The training self-check looks like training** (:func:`training_self_check`): on a copy of the model it
first takes :data:`CHECK_WARMUP_STEPS` fp32 optimiser steps (failures come later in training, not at
initialisation), then compares :data:`CHECK_BATCHES` forward/backward passes in the reduced precision with
fp32 from the same weights, counting non-finite gradient entries. It passes only when nothing is non-finite,
the loss differs by at most :data:`LOSS_RTOL` and the gradients by at most :data:`GRAD_RTOL` on every batch:
bf16 rounding gives ~1e-2, the broken AMD kernels 0.19-0.83, so the tolerance sits between the two.
Verdicts are cached (:func:`cache_dir`, file ``precision.json``) per machine, device, torch version,
architecture and check version (:data:`CHECK_VERSION`: verdicts of an older, weaker check are not re-used).

**Reduced precision is watched while it runs**: the training loop redoes a reduced-precision step that turned
non-finite in fp32 and switches the rest of the run to fp32 when such steps exceed :data:`FALLBACK_SHARE` of
the last :data:`FALLBACK_WINDOW` (:class:`napari_sscce.training.loop.PrecisionWatch`).

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
#: the training self-check accepts, per batch. bf16 rounding alone gives ~1e-2; the faulty AMD EPYC kernels
#: gave 0.83 (issue 11) and 0.19 (issue 22: passed the old tolerance of 0.2, then lost most training steps).
GRAD_RTOL = 0.05
#: fp32 optimiser steps the training self-check takes on its copy of the model before comparing
CHECK_WARMUP_STEPS = 4
#: batches the training self-check compares (reduced precision against fp32, each from the same weights)
CHECK_BATCHES = 3
#: learning rate of the self-check's warm-up steps (Adam, the CCE recipe's optimiser family)
CHECK_WARMUP_LR = 1e-3
#: version of the training self-check; part of the cache key so verdicts of older checks are not re-used
CHECK_VERSION = 2
#: the run-time fallback: more than this share of the last :data:`FALLBACK_WINDOW` reduced-precision steps
#: non-finite switches the rest of the run to fp32 (:class:`napari_sscce.training.loop.PrecisionWatch`)
FALLBACK_SHARE = 0.02
FALLBACK_WINDOW = 50
#: Largest probability difference between the bf16 inference copy of a model
#: (:func:`napari_sscce.inference.fast.optimize_for_inference`) and fp32 on its check input.
INFERENCE_PROB_ATOL = 0.05

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------ machine facts
def _cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none); tests replace this."""
    return set(_proc_cpu_flags())


@functools.lru_cache(maxsize=1)
def _proc_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


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
def _mkldnn_bf16_probe() -> bool | None:
    """PyTorch's own answer to "does oneDNN have fast bf16 here" (None where it cannot say)."""
    mkldnn = getattr(torch.backends, "mkldnn", None)
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if mkldnn is None or not mkldnn.is_available() or probe is None:
        return None
    try:
        return bool(probe())
    except (RuntimeError, AttributeError):
        return None


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), so bf16 autocast pays off.

    PyTorch's CPU capability report (:func:`_mkldnn_bf16_probe`) can veto; otherwise the ``/proc/cpuinfo``
    flags ``avx512_bf16`` / ``amx_bf16`` (Linux) decide.
    """
    if _mkldnn_bf16_probe() is False:
        return False
    flags = cpu_bf16_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (``amx_bf16`` and ``amx_tile``; Intel Sapphire Rapids and later).

    The only CPUs on which bf16 *training* is allowed without an explicit request: there it was measured to
    train as fp32 does, while CPUs with AVX512-BF16 alone (AMD EPYC) lost most of their steps.
    """
    flags = cpu_bf16_flags()
    return flags["amx_bf16"] and flags["amx_tile"]


def cpu_trains_bf16() -> bool:
    """Whether ``"auto"`` may consider bf16 for training on this CPU: native bf16 with AMX (see
    :func:`cpu_has_amx`); the training self-check still decides."""
    return cpu_supports_bf16() and cpu_has_amx()


def device_name(device: torch.device) -> str:
    """A name for the hardware behind ``device``: the GPU's name or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_model()


# ------------------------------------------------------------------------------------ resolution
def resolve_precision(device: torch.device, precision: str = "auto", purpose: str = "inference") -> str:
    """The precision ``device`` runs for the request ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``purpose`` is ``"inference"`` or ``"training"``; they differ only for ``"auto"`` on a CPU with
    AVX512-BF16 but no AMX (bf16 for inference, fp32 for training; table in the module docstring). For
    training, an ``"auto"`` answer other than fp32 is only a candidate: :func:`choose_training_precision`
    measures it first.

    Raises
    ------
    ValueError
        For an unknown request or purpose.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if purpose not in ("inference", "training"):
        raise ValueError(f"unknown purpose {purpose!r}; 'inference' or 'training'")
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if device.type == "cpu":
        if precision == "auto":
            native = cpu_trains_bf16() if purpose == "training" else cpu_supports_bf16()
            return "bf16" if native else "fp32"
        return "bf16"
    if device.type == "mps":
        return "fp32" if precision == "auto" else precision
    return "fp32"


def training_policy(device: torch.device) -> str:
    """One line: what ``"auto"`` trains at on ``device`` and the evidence behind the rule."""
    if device.type == "cuda":
        low = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return (f"{low} after the training self-check (falls back to fp32 at run time if steps turn "
                "non-finite)")
    if device.type != "cpu":
        return "fp32"
    flags = cpu_bf16_flags()
    if cpu_trains_bf16():
        return ("bf16 after the training self-check: this CPU has AMX, where bf16 training was measured to "
                "train as fp32 does (falls back to fp32 at run time if steps turn non-finite)")
    if cpu_supports_bf16() or flags["avx512_bf16"]:
        return ("fp32: this CPU has AVX512-BF16 but no AMX; on such CPUs (AMD EPYC, measured) bf16 training "
                "threw away 70-100 % of its steps to non-finite gradients, so training runs fp32 while "
                "inference keeps bf16 where its own check passes")
    return "fp32: this CPU has no native bf16 (AVX512-BF16 / AMX)"


def precision_note(device: torch.device, precision: str, purpose: str = "inference") -> str:
    """One line on what :func:`resolve_precision` makes of ``precision`` on ``device``, and why."""
    resolved = resolve_precision(device, precision, purpose)
    if precision == "fp16" and resolved == "bf16":
        return "fp16 was requested on the CPU: using bf16 (CPU autocast has no fast fp16 convolutions)"
    if precision == "auto" and device.type == "cpu" and resolved == "fp32":
        if purpose == "training":
            return f"{training_policy(device)} ({cpu_model()})"
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
    """What a cached verdict depends on: hardware, device, torch version, precision, architecture and the
    version of the check (:data:`CHECK_VERSION`)."""
    arch_text = json.dumps(arch, sort_keys=True, default=str)
    return {
        "machine": device_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "precision": precision,
        "arch": hashlib.sha256(arch_text.encode()).hexdigest()[:16],
        "check": str(CHECK_VERSION),
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
    """Reduced-precision-against-fp32 comparisons of forward and backward passes, after fp32 warm-up steps.

    Attributes
    ----------
    precision : str
        The reduced precision checked (``"bf16"`` or ``"fp16"``).
    passed : bool
        Everything finite and both errors within tolerance on every compared batch.
    loss_fp32, loss_low : float
        The losses of the worst batch (largest gradient error).
    loss_rel_err : float
        Largest ``|loss_low - loss_fp32| / |loss_fp32|`` over the compared batches.
    grad_rel_err : float
        Largest ``||g_low - g_fp32|| / ||g_fp32||`` (all parameters together) over the compared batches.
    nonfinite_grads : int
        Non-finite gradient entries in all reduced-precision passes together.
    seconds : float
    reason : str
        One line: why it passed or failed.
    batches : int
        Batches compared.
    warmup_steps : int
        fp32 optimiser steps taken on the copy before the first comparison.
    grad_rel_errs : list of float
        The gradient error of each compared batch.
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
    batches: int = 1
    warmup_steps: int = 0
    grad_rel_errs: list[float] = field(default_factory=list)


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


def _train_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in train mode with dropout off (both passes see the same network)."""
    net = copy.deepcopy(model).train()
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for p in net.parameters():
        p.grad = None
    return net


def _pass(model: nn.Module, batch: Any, device: torch.device, dtype: torch.dtype | None, loss_fn) -> tuple:
    """Loss and flat gradient of one forward/backward of a copy of ``model`` (dropout off, same seed)."""
    net = _train_copy(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net, batch)
        loss.backward()
    grads = [p.grad.detach().float().flatten() for p in net.parameters() if p.grad is not None]
    flat = torch.cat(grads) if grads else torch.zeros(1, device=device)
    return float(loss.detach()), flat


def _fp32_step(net: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, loss_fn) -> None:
    """One fp32 optimiser step of the check's own copy (skipped when its gradients are not finite)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net, batch)
    if not bool(torch.isfinite(loss.detach())):
        return
    loss.backward()
    if all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None):
        optimizer.step()


def training_self_check(
    model: nn.Module,
    batch: Any,
    device: torch.device,
    precision: str,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = default_check_loss,
    warmup_steps: int = CHECK_WARMUP_STEPS,
    batches: int = CHECK_BATCHES,
) -> SelfCheck:
    """Check that ``precision`` trains like fp32: warm-up steps in fp32, then several compared batches.

    On a copy of ``model`` (train mode, dropout off; ``model`` itself and its running statistics are not
    touched) it takes ``warmup_steps`` fp32 Adam steps (lr :data:`CHECK_WARMUP_LR`) and then, for each of
    ``batches`` batches, runs one forward and backward in ``precision`` and one in fp32 from the same weights,
    followed by an fp32 step, so the comparisons happen on weights that have moved as in training (the
    broken CPU kernels of issue 22 passed at initialisation and failed later). Passes when every loss and
    gradient entry is finite, and on every batch the loss relative error is at most :data:`LOSS_RTOL` and
    the gradient relative error at most :data:`GRAD_RTOL`.

    Parameters
    ----------
    batch : Batch or sequence of Batch
        Training batches, used in turn (one batch is re-used).
    """
    start = time.perf_counter()
    pool = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    net = _train_copy(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=CHECK_WARMUP_LR)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for i in range(warmup_steps):
            _fp32_step(net, optimizer, pool[i % len(pool)], loss_fn)
    low_dtype = autocast_dtype(precision)
    worst = (float("nan"), float("nan"), 0.0, 0.0)  # loss32, low, loss_err, grad_err of the worst batch
    errs: list[float] = []
    bad_total, finite = 0, True
    for k in range(max(1, batches)):
        b = pool[(warmup_steps + k) % len(pool)]
        loss32, g32 = _pass(net, b, device, None, loss_fn)
        low, glow = _pass(net, b, device, low_dtype, loss_fn)
        bad = int((~torch.isfinite(glow)).sum())
        bad_total += bad
        ok = bad == 0 and all(map(_finite, (loss32, low))) and bool(torch.isfinite(g32).all())
        finite = finite and ok
        if ok:
            loss_err = abs(low - loss32) / max(abs(loss32), 1e-12)
            grad_err = _relative_error(glow, g32)
            errs.append(grad_err)
            if grad_err >= worst[3] or loss_err > worst[2]:
                worst = (loss32, low, max(loss_err, worst[2]), max(grad_err, worst[3]))
        else:
            errs.append(float("inf"))
            worst = (loss32, low, float("inf"), float("inf"))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(k + 1)
            _fp32_step(net, optimizer, b, loss_fn)
    loss32, low, loss_err, grad_err = worst
    n = max(1, batches)
    where = f"{n} batch(es) after {warmup_steps} fp32 step(s)"
    if not finite:
        reason = f"{precision} gave a non-finite loss or {bad_total} non-finite gradient entries ({where})"
    elif loss_err > LOSS_RTOL:
        reason = f"{precision} changed the loss by {loss_err:.3g} (tolerance {LOSS_RTOL}; {where})"
    elif grad_err > GRAD_RTOL:
        reason = f"{precision} gradients differ from fp32 by {grad_err:.3g} (tolerance {GRAD_RTOL}; {where})"
    else:
        reason = (f"{precision} agrees with fp32 on {where} (loss error {loss_err:.2g}, gradient error "
                  f"{grad_err:.2g})")
    passed = finite and loss_err <= LOSS_RTOL and grad_err <= GRAD_RTOL
    return SelfCheck(precision, passed, loss32, low, loss_err, grad_err, bad_total,
                     time.perf_counter() - start, reason, batches=n, warmup_steps=warmup_steps,
                     grad_rel_errs=errs)


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
    key : dict or None
        The cache key of the verdict (``"auto"`` with a reduced-precision candidate), so that a run-time
        fallback can be remembered (:func:`remember_runtime_fallback`).
    """

    precision: str
    reason: str
    check: dict[str, Any] | None = None
    key: dict[str, str] | None = None

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

    An explicit request is honoured as :func:`resolve_precision` says (no check; the training loop still
    watches it and falls back to fp32 at run time). ``"auto"`` takes the training candidate of
    :func:`resolve_precision` (fp32 on CPUs without AMX); a reduced-precision candidate runs
    :func:`training_self_check` on ``model`` and ``batch`` (or re-uses the cached verdict for this machine,
    device, torch version, architecture ``model.arch`` and check version) and falls back to fp32 when the
    check fails. ``batch`` (a batch or a list of batches) may be a zero-argument callable, called only when
    a check runs.
    """
    candidate = resolve_precision(device, requested, "training")
    if requested != "auto" or candidate == "fp32":
        return PrecisionChoice(candidate, precision_note(device, requested, "training"))
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
        return PrecisionChoice(candidate, f"{candidate} (auto; self-check: {result['reason']})", result, key)
    reason = f"fp32: the {candidate} self-check failed: {result['reason']}"
    return PrecisionChoice("fp32", reason, result, key)


def remember_runtime_fallback(choice: PrecisionChoice, reason: str) -> bool:
    """Cache a failed verdict for ``choice``'s key after its run had to fall back to fp32 at run time.

    The next ``"auto"`` run of the same model on this machine starts in fp32 instead of failing again.
    Returns whether a verdict was stored (only ``"auto"`` choices that passed a check have a key).
    """
    if choice.key is None:
        return False
    previous = cached_verdict(choice.key) or {}
    verdict = {**previous, "passed": False, "reason": f"fell back to fp32 during training: {reason}",
               "runtime_fallback": True}
    verdict.pop("cached", None)
    return store_verdict(choice.key, verdict)


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
        lines.append(f"precision auto on {dev}: {precision_note(dev, 'auto')} (inference)")
        lines.append(f"training precision auto on {dev}: {training_policy(dev)}")
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
        batches = []
        for _ in range(CHECK_BATCHES):
            img = torch.randn(2, 1, *shape, generator=gen).to(dev)
            lab = (img[:, 0] > 0.5).long() + (img[:, 0] > 1.5).long()
            batches.append(Batch(img, lab, torch.ones_like(img[:, 0]), 2))
        image = batches[0].image
        check = training_self_check(model, batches, dev, low)
        lines.append(
            f"training self-check on {dev} ({low} vs fp32, {check.batches} batches of 2x{shape} after "
            f"{check.warmup_steps} fp32 steps): {'PASS' if check.passed else 'FAIL'}; loss rel. error "
            f"{check.loss_rel_err:.3g} (tol {LOSS_RTOL}), gradient rel. error {check.grad_rel_err:.3g} "
            f"(tol {GRAD_RTOL}; per batch {', '.join(f'{e:.3g}' for e in check.grad_rel_errs)}), "
            f"non-finite gradients {check.nonfinite_grads} [{check.seconds:.1f} s]"
        )
        candidate = resolve_precision(dev, "auto", "training")
        if candidate == "fp32":
            verdict = "fp32 by policy (line 'training precision auto' above); the check is evidence only"
        elif check.passed:
            verdict = f"{candidate} (policy allows it and the self-check passed)"
        else:
            verdict = f"fp32 (policy allows {candidate} but the self-check failed)"
        lines.append(f"training verdict on {dev}: {verdict}")
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
