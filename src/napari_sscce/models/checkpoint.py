"""Self-describing model files: both networks' weights and a JSON metadata block in one safetensors file.

File layout (safetensors; loading never unpickles, so it never runs code from the file):

- tensors ``a.<key>`` / ``b.<key>``: the state_dicts of ``net_a`` / ``net_b`` (only ``a.`` for
  ``kind="single"``);
- header metadata (string values): ``format`` = ``"napari-sscce-checkpoint"``, ``format_version`` and
  ``metadata``, a JSON object with ``method``, ``arch``, ``num_classes``, ``in_channels``, ``class_names``,
  ``patch_size``, ``spacing``, ``normalization``, ``train_summary``, ``val_metrics``, ``config``,
  ``versions`` (package, torch, safetensors), ``created`` (ISO 8601 UTC) and whatever else the caller adds.

:func:`read_checkpoint_metadata` reads only the header (a few kB) and is cheap enough for a GUI listing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from napari_sscce.atomic import atomic_path
from napari_sscce.models.dual import DualModel
from napari_sscce.models.vnet import VNet

FORMAT_MARKER = "napari-sscce-checkpoint"
FORMAT_VERSION = 1
#: Largest JSON header accepted (guards against reading random bytes as a header length).
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded model file: the model (in eval mode) and its metadata."""

    model: DualModel
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names") or default_class_names(self.num_classes))


def default_class_names(num_classes: int) -> list[str]:
    """``["background", "class 1", ...]`` for ``num_classes`` classes."""
    return ["background"] + [f"class {i}" for i in range(1, num_classes)]


def _versions() -> dict[str, str]:
    import safetensors

    try:
        from napari_sscce import __version__ as package_version
    except ImportError:  # pragma: no cover - the package always defines it
        package_version = "unknown"
    return {
        "napari_sscce": str(package_version),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def _stored(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``value`` on the CPU, contiguous, floating-point values cast to ``dtype`` when given."""
    value = value.detach().to("cpu")
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.contiguous()


def _state_dicts(model: DualModel) -> dict[str, dict[str, torch.Tensor]]:
    nets = {"a": model.net_a} if model.kind == "single" else {"a": model.net_a, "b": model.net_b}
    return {prefix: net.state_dict() for prefix, net in nets.items()}


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or Inf values."""
    return [
        name
        for name, value in tensors.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _refuse_nonfinite(path: Path, tensors: Mapping[str, torch.Tensor], action: str) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{action} {path}: {len(bad)} tensor(s) hold NaN or Inf values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the model diverged"
        )


def save_checkpoint(
    path: str | os.PathLike,
    model: DualModel,
    metadata: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` and ``metadata`` to one safetensors file, atomically.

    Parameters
    ----------
    path : path-like
        Destination (``.safetensors`` by convention). An existing file is replaced only once the new one
        is completely written.
    model : DualModel
        The model; its ``arch``, ``num_classes`` and ``in_channels`` are stored (they override the same
        keys of ``metadata``).
    metadata : mapping, optional
        JSON-serialisable information (numpy values, paths and dataclasses are converted). ``class_names``
        defaults to ``["background", "class 1", ...]``; ``versions`` and ``created`` are filled in.
    dtype : torch.dtype, optional
        Store floating-point tensors in this type (e.g. ``torch.float16`` halves the file of a packaged
        model); integer buffers are kept. :func:`load_checkpoint` always gives float32 networks.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        When ``class_names`` does not have one name per class.
    CheckpointError
        When a weight or buffer holds NaN or Inf values (the message names the file and the tensors);
        nothing is written.
    """
    path = Path(path)
    meta = dict(metadata or {})
    meta["arch"] = model.arch
    meta["num_classes"] = model.num_classes
    meta["in_channels"] = model.in_channels
    meta.setdefault("method", None)
    names = meta.get("class_names") or default_class_names(model.num_classes)
    if len(names) != model.num_classes:
        raise ValueError(
            f"cannot save {path}: {len(names)} class names {list(names)} "
            f"for a model of {model.num_classes} classes"
        )
    meta["class_names"] = [str(n) for n in names]
    meta["versions"] = {**_versions(), **dict(meta.get("versions") or {})}
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tensors = {
        f"{prefix}.{key}": _stored(value, dtype)
        for prefix, state in _state_dicts(model).items()
        for key, value in state.items()
    }
    _refuse_nonfinite(path, tensors, "cannot save")
    if dtype is not None:
        meta["storage_dtype"] = str(dtype).removeprefix("torch.")
    header = {
        "format": FORMAT_MARKER,
        "format_version": str(FORMAT_VERSION),
        "metadata": json.dumps(meta, default=_json_default),
    }
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, with clear errors for anything else."""
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"model file {path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        looks_like_header = len(head) == 8 and 0 < n <= min(MAX_HEADER_BYTES, size - 8) and fh.read(1) == b"{"
        if not looks_like_header and (
            head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
        ):
            raise CheckpointError(
                f"{path} looks like a PyTorch pickle (.pt/.pth), not a napari-sscce model file; pickles "
                "can run code and are never loaded as models (a UA-MT VNet state_dict can be converted with "
                "napari_sscce.models.checkpoint.import_reference_vnet)"
            )
        if len(head) < 8:
            raise CheckpointError(
                f"{path} is not a napari-sscce model file: only {size} bytes (empty or truncated)"
            )
        if n > MAX_HEADER_BYTES or n == 0:
            raise CheckpointError(f"{path} is not a napari-sscce model file (not a safetensors file)")
        if n > size - 8:
            raise CheckpointError(
                f"{path} is truncated or not a napari-sscce model file: its header claims {n} bytes, "
                f"the file has {size}"
            )
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a napari-sscce model file (unreadable header: {exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a napari-sscce model file (its header nests JSON too deeply)") \
            from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a napari-sscce model file (header is not a JSON object)")
    return header


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read a model file's metadata without loading its weights.

    Raises
    ------
    CheckpointError
        For a missing, truncated, corrupt or foreign file (message names the file).
    """
    path = Path(path)
    header = _read_header(path)
    marker = header.get("__metadata__") or {}
    if not isinstance(marker, dict) or marker.get("format") != FORMAT_MARKER:
        raise CheckpointError(
            f"{path} is a safetensors file but not a napari-sscce model file (no {FORMAT_MARKER!r} marker)"
        )
    try:
        version = int(marker.get("format_version", "0"))
        meta = json.loads(marker["metadata"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt napari-sscce metadata ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt napari-sscce metadata (JSON nested too deeply)") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-sscce (format {version}; this version reads up to "
            f"{FORMAT_VERSION}); update napari-sscce"
        )
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict):
        raise CheckpointError(f"{path}: corrupt napari-sscce metadata (no model architecture)")
    return meta


def _check_state(path: Path, label: str, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weight(s) ({', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s) ({', '.join(unexpected[:5])})")
    if wrong:
        problems.append(f"{len(wrong)} weight(s) of the wrong shape ({'; '.join(wrong[:5])})")
    if problems:
        raise CheckpointError(
            f"{path}: the weights of {label} do not match its architecture: {'; '.join(problems)}"
        )


def _check_expectations(
    path: Path,
    num_classes: int,
    in_channels: int,
    expect_num_classes: int | None,
    expect_in_channels: int | None,
) -> None:
    if expect_num_classes is not None and num_classes != expect_num_classes:
        raise CheckpointError(
            f"{path}: the model predicts {num_classes} classes, {expect_num_classes} were expected"
        )
    if expect_in_channels is not None and in_channels != expect_in_channels:
        raise CheckpointError(
            f"{path}: the model takes {in_channels} input channel(s), {expect_in_channels} were expected"
        )


#: bounds of the architecture arguments a model file may declare (checked before anything is built)
ARCH_BOUNDS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 64),
    "num_classes": (1, 256),
    "base_filters": (1, 128),
    "projection_dim": (0, 4096),
}
MAX_RESNET_BLOCKS = 16
#: weights (64 MB in float32) a model may need beyond twice what its file holds before it is refused unbuilt
SLACK_WEIGHTS = 16_000_000


def _check_arch_bounds(path: Path, meta: dict[str, Any]) -> None:
    """Refuse architecture arguments out of :data:`ARCH_BOUNDS`, and metadata describing more weights than
    the file holds, before the model is built (a 2 KB file must not make us allocate gigabytes).

    Raises
    ------
    CheckpointError
        Naming the file, the argument and its bounds, or both weight counts.
    """
    arch = meta["arch"]
    specs = [arch.get(k) for k in ("a", "b") if isinstance(arch.get(k), dict)]
    if not specs:
        raise CheckpointError(f"{path}: corrupt napari-sscce metadata (no network in the architecture)")
    for spec in specs:
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{path}: corrupt napari-sscce metadata (network arguments: not a mapping)")
        for key, (lo, hi) in ARCH_BOUNDS.items():
            value = kwargs.get(key, lo)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise CheckpointError(
                    f"{path}: the model metadata declares {key}={value!r}, outside {lo}..{hi}; "
                    "the file is corrupt or not a napari-sscce model"
                )
        layers = kwargs.get("layers", [1])
        if not isinstance(layers, list | tuple) or not all(
            isinstance(n, int) and 1 <= n <= MAX_RESNET_BLOCKS for n in layers
        ):
            raise CheckpointError(f"{path}: the model metadata declares layers={layers!r}, blocks outside "
                                  f"1..{MAX_RESNET_BLOCKS}")
    header = _read_header(path)
    held = sum(int(np.prod(v.get("shape", []), dtype=np.int64)) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict))
    try:
        with torch.device("meta"):
            shell = DualModel.from_arch(arch)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from None
    nets = [shell.net_a] if shell.kind == "single" else [shell.net_a, shell.net_b]
    needed = sum(t.numel() for net in nets for t in net.state_dict().values())
    if needed > 2 * held + SLACK_WEIGHTS:  # small mismatches get _check_state's detailed message
        raise CheckpointError(
            f"{path}: the model metadata describes networks with {needed:,} weights but the file holds "
            f"{held:,}; the file is truncated or its metadata is wrong"
        )


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    expect_num_classes: int | None = None,
    expect_in_channels: int | None = None,
) -> Checkpoint:
    """Load a model file written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : path-like
        The model file.
    map_location : str or torch.device
        Device to put the model on.
    expect_num_classes, expect_in_channels : int, optional
        Raise :class:`CheckpointError` when the model does not have these.

    Returns
    -------
    Checkpoint
        ``model`` (a :class:`DualModel` in eval mode) and ``metadata``.

    Raises
    ------
    CheckpointError
        For a missing, truncated, corrupt or foreign file, weights that do not fit the stored
        architecture, weights holding NaN or Inf, or an unmet expectation. The message names the file.
    """
    path = Path(path)
    meta = read_checkpoint_metadata(path)
    _check_arch_bounds(path, meta)
    try:
        model = DualModel.from_arch(meta["arch"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from None
    _check_expectations(path, model.num_classes, model.in_channels, expect_num_classes, expect_in_channels)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt: {exc}") from None
    _refuse_nonfinite(path, tensors, "cannot load")
    nets = {"a": model.net_a} if model.kind == "single" else {"a": model.net_a, "b": model.net_b}
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in nets)
    if stray:
        raise CheckpointError(f"{path}: {len(stray)} weight(s) belong to no network ({', '.join(stray[:5])})")
    for prefix, net in nets.items():
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        _check_state(path, f"network {prefix} ({net.spec['name']})", net, state)
        net.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    return Checkpoint(model=model, metadata=meta, path=path)


def _infer_normalization(state: Mapping[str, torch.Tensor]) -> str:
    """Which normalisation a UA-MT VNet state_dict was trained with, from its key layout."""
    if "block_one.conv.1.running_mean" in state:
        return "batchnorm"
    if "block_one.conv.1.weight" in state:
        return "groupnorm"
    # instance norm (no parameters) keeps the norm slot: the second conv of block_two sits at index 3
    if "block_two.conv.3.weight" in state:
        return "instancenorm"
    return "none"


def import_reference_vnet(
    state_dict_path: str | os.PathLike, *, normalization: str | None = None, has_dropout: bool = True
) -> DualModel:
    """Wrap a VNet trained with the UA-MT reference code (a ``.pth`` state_dict) as a single-network model.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary code). Wrappers such as
    ``{"state_dict": ...}`` and DataParallel's ``module.`` prefixes are accepted. Input channels, classes
    and base filters come from the weight shapes; the normalisation from the key layout unless given.

    Returns
    -------
    DualModel
        ``kind="single"`` (both entries are the one VNet), in eval mode; save it with :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        When the file is missing, not a weights-only state_dict, or not a UA-MT VNet.
    """
    path = Path(state_dict_path)
    if not path.is_file():
        raise CheckpointError(f"reference weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or unsafe files
        raise CheckpointError(f"{path} is not a weights-only PyTorch state_dict: {exc}") from None
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        first, out = state["block_one.conv.0.weight"], state["out_conv.weight"]
    except KeyError as exc:
        raise CheckpointError(f"{path} is not a UA-MT VNet state_dict (no {exc.args[0]})") from None
    net = VNet(
        in_channels=int(first.shape[1]),
        num_classes=int(out.shape[0]),
        base_filters=int(first.shape[0]),
        normalization=normalization or _infer_normalization(state),
        has_dropout=has_dropout,
    )
    _check_state(path, "the reference VNet", net, state)
    net.load_state_dict(state, strict=True)
    return DualModel(net, kind="single").eval()
