"""Segmentation metrics with medpy's definitions: Dice, Jaccard, HD95, ASD; per case and for folders."""

from napari_sscce.metrics.evaluate import evaluate_case, evaluate_folders, format_table
from napari_sscce.metrics.surface import asd, assd, binary_metrics, dice, hd95, jaccard, mean_dice

__all__ = [
    "asd",
    "assd",
    "binary_metrics",
    "dice",
    "evaluate_case",
    "evaluate_folders",
    "format_table",
    "hd95",
    "jaccard",
    "mean_dice",
]
