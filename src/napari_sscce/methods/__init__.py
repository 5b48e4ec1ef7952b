"""Training methods: CCE (dual network), UG-MCL (mean teacher, dual task) and a supervised baseline.

Every method is a :class:`~napari_sscce.methods.base.TrainingMethod` subclass that describes itself and is
registered with :func:`~napari_sscce.methods.registry.register_method`; ``METHODS`` (name -> class), the CLI
choices, the fine-tune widget's list and the compatibility rule all come from that registry.
"""

from __future__ import annotations

from napari_sscce.methods import cce, supervised, ugmcl  # noqa: F401 - importing registers them
from napari_sscce.methods.registry import (
    METHODS,
    IncompatibleModelError,
    check_compatible,
    compatible_methods,
    default_method,
    get_method,
    incompatibility,
    method_label,
    method_names,
    register_method,
    unregister_method,
)

__all__ = [
    "METHODS",
    "IncompatibleModelError",
    "check_compatible",
    "compatible_methods",
    "default_method",
    "get_method",
    "incompatibility",
    "method_label",
    "method_names",
    "register_method",
    "unregister_method",
]
