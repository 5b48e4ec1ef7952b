"""Training methods: CCE (dual network), UG-MCL (mean teacher, dual task) and a supervised baseline.

``METHODS`` maps a name to its :class:`~napari_sscce.methods.base.TrainingMethod` subclass; methods are
imported lazily so that a method under construction does not break the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from napari_sscce.methods.base import TrainingMethod

#: method name -> "module:ClassName"
METHOD_PATHS: dict[str, str] = {
    "cce": "napari_sscce.methods.cce:CCEMethod",
    "supervised": "napari_sscce.methods.supervised:SupervisedMethod",
    "ugmcl": "napari_sscce.methods.ugmcl:UGMCLMethod",
}


def get_method(name: str) -> type[TrainingMethod]:
    """Return the method class registered as ``name`` (``ValueError`` listing the names otherwise)."""
    if name not in METHOD_PATHS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHOD_PATHS)}")
    module, cls = METHOD_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)


class _LazyMethods(dict):
    """``METHODS[name]`` imports the class on first access."""

    def __getitem__(self, name: str) -> type[TrainingMethod]:
        return get_method(name)

    def values(self):  # type: ignore[override]
        return [get_method(n) for n in self]

    def items(self):  # type: ignore[override]
        return [(n, get_method(n)) for n in self]


METHODS: dict[str, type[TrainingMethod]] = _LazyMethods.fromkeys(METHOD_PATHS)  # type: ignore[assignment]

__all__ = ["METHODS", "METHOD_PATHS", "get_method"]
