"""The one list of training methods: each method class describes itself, everything else is derived.

A method class (a :class:`~napari_sscce.methods.base.TrainingMethod` subclass) declares its ``name``, a
human ``label``, the two networks it trains (``default_networks``), how they relate (``model_kind``) and its
``default_options``. Registering it (:func:`register_method`) is all that is needed for it to appear in
``sscce train --method``, in the fine-tune widget and in the rule that says which methods may continue a
model (:func:`compatible_methods`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from napari_sscce.methods.base import TrainingMethod

#: name -> method class, in registration order
METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator); returns ``cls``.

    Raises
    ------
    ValueError
        When another class is registered under the same name.
    """
    other = METHODS.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"training method {cls.name!r} is already registered ({other.__qualname__})")
    METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and plugins that add one temporarily)."""
    METHODS.pop(name, None)


def method_names() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(METHODS)


def get_method(name: str) -> type[TrainingMethod]:
    """The method class registered as ``name`` (``ValueError`` listing the known names otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown training method {name!r}; known methods: {', '.join(METHODS) or 'none'}"
        ) from None


def method_label(name: str) -> str:
    """The human label of method ``name`` (the name itself when unknown)."""
    cls = METHODS.get(name)
    return cls.label if cls is not None else str(name)


def compatible_methods(arch: dict[str, Any] | None) -> list[str]:
    """Methods that can continue training a model of architecture ``arch`` (``DualModel.arch``).

    ``None`` (no model: training from scratch) allows every method.
    """
    if arch is None:
        return method_names()
    return [name for name, cls in METHODS.items() if cls.can_continue(arch)]


def describe_arch(arch: dict[str, Any]) -> str:
    """``"dual: vnet + resnet_vnet"`` for a ``DualModel.arch``."""
    names = [str((arch.get(k) or {}).get("name", "?")) for k in ("a", "b")]
    return f"{arch.get('kind', 'dual')}: {' + '.join(names)}"


def incompatibility(method: str, arch: dict[str, Any], model_method: str | None, where: str) -> str | None:
    """The message explaining why ``method`` cannot continue a model, or ``None`` when it can.

    Parameters
    ----------
    method : str
        The method asked for.
    arch : dict
        The model's architecture (checkpoint metadata ``arch``).
    model_method : str or None
        The method that trained the model (checkpoint metadata ``method``).
    where : str
        The model, as the message should name it (usually its path).
    """
    cls = get_method(method)
    if cls.can_continue(arch):
        return None
    ok = compatible_methods(arch)
    return (
        f"{where} was trained with {model_method or 'an unknown method'} ({describe_arch(arch)}); "
        f"{method} trains {cls.model_kind} models of {' + '.join(cls.default_networks)} and cannot continue "
        "it. "
        + (
            f"Methods that can: {', '.join(ok)}."
            if ok
            else "No registered method can; train a new model instead."
        )
    )


# --------------------------------------------------------------------------------------------- compatibility
class IncompatibleModelError(ValueError):
    """A method cannot continue a model; the message names both methods and the ones that can."""


def check_compatible(method: str, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Raise :class:`IncompatibleModelError` unless ``method`` can continue the model in ``checkpoint``.

    Returns
    -------
    dict
        The checkpoint's metadata (read once, for the caller's use).
    """
    from napari_sscce.models.checkpoint import read_checkpoint_metadata

    meta = read_checkpoint_metadata(checkpoint)
    message = incompatibility(method, meta["arch"], meta.get("method"), f"the model {checkpoint}")
    if message:
        raise IncompatibleModelError(message)
    return meta


def default_method(metadata: dict[str, Any]) -> str:
    """The method to continue a model with: the one that trained it, else the first compatible one."""
    ok = compatible_methods(metadata.get("arch"))
    if metadata.get("method") in ok:
        return str(metadata["method"])
    if not ok:
        raise IncompatibleModelError(
            f"no registered training method can continue this model ({metadata.get('arch')})"
        )
    return ok[0]
