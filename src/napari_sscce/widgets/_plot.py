"""A small live plot of the training loss and validation Dice, drawn with QPainter (no extra dependency)."""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(230, 120, 40)
DICE_COLOUR = QColor(80, 170, 255)


class CurvePlot(QWidget):
    """Loss (left scale, orange) and validation Dice (right scale 0..1, blue) against the iteration."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.loss: list[tuple[float, float]] = []
        self.dice: list[tuple[float, float]] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        """Forget both curves."""
        self.loss, self.dice = [], []
        self.update()

    def add_loss(self, iteration: float, value: float) -> None:
        """Append a loss point."""
        self.loss.append((float(iteration), float(value)))
        self.update()

    def add_dice(self, iteration: float, value: float) -> None:
        """Append a validation Dice point (0..1)."""
        self.dice.append((float(iteration), float(value)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(34, 8, -34, -18)
        painter.setPen(QPen(QColor(120, 120, 120)))
        painter.drawRect(rect)
        points = self.loss + self.dice
        if not points:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss and validation Dice appear here")
            return
        x_max = max(p[0] for p in points) or 1.0
        loss_values = [v for _, v in self.loss] or [0.0, 1.0]
        lo, hi = min(loss_values), max(loss_values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5

        def curve(data: list[tuple[float, float]], y_lo: float, y_hi: float) -> QPolygonF:
            poly = QPolygonF()
            for x, y in data:
                px = rect.left() + rect.width() * x / x_max
                py = rect.bottom() - rect.height() * (y - y_lo) / (y_hi - y_lo)
                poly.append(QPointF(px, py))
            return poly

        if self.loss:
            painter.setPen(QPen(LOSS_COLOUR, 1.5))
            painter.drawPolyline(curve(self.loss, lo, hi))
        if self.dice:
            painter.setPen(QPen(DICE_COLOUR, 2.0))
            poly = curve(self.dice, 0.0, 1.0)
            painter.drawPolyline(poly)
            for i in range(poly.size()):
                painter.drawEllipse(poly.at(i), 2.5, 2.5)
        painter.setPen(QPen(LOSS_COLOUR))
        painter.drawText(QPointF(2, rect.top() + 10), f"{hi:.2g}")
        painter.drawText(QPointF(2, rect.bottom()), f"{lo:.2g}")
        painter.setPen(QPen(DICE_COLOUR))
        painter.drawText(QPointF(rect.right() + 4, rect.top() + 10), "1")
        painter.drawText(QPointF(rect.right() + 4, rect.bottom()), "0")
        painter.setPen(QPen(QColor(160, 160, 160)))
        painter.drawText(QPointF(rect.left(), rect.bottom() + 14), "loss (orange), val Dice (blue)")
        painter.drawText(QPointF(rect.right() - 40, rect.bottom() + 14), f"it {int(x_max)}")
