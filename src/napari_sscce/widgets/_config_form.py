"""Form controls over a settings dataclass, built with magicgui: the dataclass is the one source of truth.

Each control's starting value is the dataclass default and its tooltip the field's description in the
class docstring's numpydoc ``Attributes`` section; :func:`config_values` reads the controls back into the
dataclass's keyword arguments. The controls are magicgui value widgets; their ``.native`` Qt widgets go
into the dock's grid form.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping
from typing import Any

from magicgui.widgets import create_widget

#: a numpydoc parameter line: ``name : type`` or ``name, other : type``
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w, ]*?)\s*:\s*.*$")


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its description (one line) from ``cls``'s numpydoc ``Attributes`` section."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes") + 2
    except StopIteration:
        return {}
    docs: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            match = _ENTRY.match(line)
            if match is None:  # the next section
                break
            current = []
            for name in match["names"].split(","):
                docs[name.strip()] = current
        elif line.strip():
            current.append(line.strip())
    return {name: " ".join(text) for name, text in docs.items()}


def config_widgets(cls: type, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """magicgui controls for the fields ``specs`` names, valued by ``cls()``'s defaults.

    Parameters
    ----------
    cls : dataclass type
        The settings (e.g. :class:`napari_sscce.inference.config.InferenceConfig`).
    specs : mapping
        Field name -> magicgui options (``min``, ``max``, ``step``, ``choices``, ``text`` ...); the tooltip
        defaults to the field's docstring description.

    Returns
    -------
    dict
        Field name -> magicgui value widget, in ``specs`` order.
    """
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    docs = attribute_docs(cls)
    out = {}
    for name, options in specs.items():
        if name not in known:
            raise ValueError(f"{cls.__name__} has no field {name!r}")
        value = getattr(defaults, name)
        opts = {"tooltip": docs.get(name, ""), **options}
        out[name] = create_widget(value=value, annotation=type(value), name=name, options=opts)
    return out


def config_values(widgets: Mapping[str, Any]) -> dict[str, Any]:
    """The controls' current values, as keyword arguments of the dataclass."""
    return {name: widget.value for name, widget in widgets.items()}
