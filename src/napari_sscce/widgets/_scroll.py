"""Dock contents that scroll: on a 1366x768 screen three docked widgets do not fit one above the other."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFrame, QLayout, QScrollArea, QVBoxLayout, QWidget

#: the height below which a dock's contents scroll rather than shrink
MIN_HEIGHT = 180
#: characters a combo box keeps visible when the dock is narrow (longer entries are elided, not cut off)
COMBO_MIN_CHARS = 12


def set_scrolling_layout(widget: QWidget, layout: QLayout) -> QScrollArea:
    """Give ``widget`` the contents of ``layout`` inside a vertical scroll area (no horizontal scrolling).

    The dock then shrinks to what the screen allows instead of forcing the window taller than the screen;
    the contents keep their natural size and scroll.

    Returns
    -------
    QScrollArea
        The scroll area (``widget.scroll_area`` too).
    """
    inner = QWidget()
    inner.setLayout(layout)
    for combo in inner.findChildren(QComboBox):  # a long model or layer name must not widen the dock
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_MIN_CHARS)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(inner)
    # as wide as the contents need (nothing cut at the right), as short as the screen forces (then it scrolls)
    area.setMinimumWidth(inner.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width() + 4)
    area.setMinimumHeight(min(MIN_HEIGHT, inner.minimumSizeHint().height()))
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.scroll_area = area  # type: ignore[attr-defined]
    return area
