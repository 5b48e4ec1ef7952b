"""Collapsible sections holding grid forms: labels in their own column, never drawn over their controls."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QFrame, QLayout, QToolButton, QVBoxLayout, QWidget


def grid_form() -> QFormLayout:
    """A form whose labels sit in their own column; on a narrow dock a long row puts its label above the
    control instead of squeezing the two together."""
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    return form


class Section(QWidget):
    """A titled part of a dock widget that folds away (click its title); its content is a grid form.

    Parameters
    ----------
    title : str
    expanded : bool
        Whether the section starts open.
    """

    def __init__(self, title: str, expanded: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.toggle = QToolButton(self)
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(expanded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = QFrame(self)
        self.form = grid_form()
        self.form.setContentsMargins(12, 0, 0, 0)
        self.body.setLayout(self.form)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        """Whether the content is shown."""
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        """Open or fold the section."""
        self.toggle.setChecked(expanded)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)

    def add_row(self, label: str, field: QWidget | QLayout) -> None:
        """A labelled row (label in the left column)."""
        self.form.addRow(label, field)

    def add_full(self, field: QWidget | QLayout) -> None:
        """A row spanning both columns (buttons, read-outs, plots)."""
        self.form.addRow(field)


def align_labels(sections: list[Section]) -> None:
    """Give every section's label column the width of the widest, so the controls line up down the dock."""
    labels = []
    for section in sections:
        for row in range(section.form.rowCount()):
            item = section.form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            if item is not None and item.widget() is not None:
                labels.append(item.widget())
    width = max((label.sizeHint().width() for label in labels), default=0)
    for label in labels:
        label.setMinimumWidth(width)
