"""The learning-rate schedules by their formulas (science.md: x0.1 at 2500 and 5000 of 6000; poly)."""

from __future__ import annotations

import pytest

from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import lr_factor


@pytest.mark.parametrize(
    ("iteration", "expected"), [(0, 1.0), (2499, 1.0), (2500, 0.1), (4999, 0.1), (5000, 0.01), (5999, 0.01)]
)
def test_step_schedule_of_the_papers(iteration, expected):
    assert lr_factor(TrainConfig(iterations=6000, schedule="step"), iteration) == pytest.approx(expected)


@pytest.mark.parametrize("iteration", [0, 10, 50, 99])
def test_poly_schedule(iteration):
    config = TrainConfig(iterations=100, schedule="poly", poly_power=0.9)
    assert lr_factor(config, iteration) == pytest.approx((1 - iteration / 100) ** 0.9, rel=1e-12)


def test_constant_schedule():
    assert lr_factor(TrainConfig(iterations=100, schedule="constant"), 77) == 1.0
