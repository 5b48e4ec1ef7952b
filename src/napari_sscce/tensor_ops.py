"""Small tensor operations with a measured reason to exist."""

from __future__ import annotations

import torch


def class_argmax(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the largest value along ``dim``, the first one on ties: ``torch.argmax(values, dim)``.

    Computed as ``values.max(dim).indices``, which returns the same indices (first maximal value on
    ties) but is far faster on CPU when ``dim`` is not the last dimension, as for the class dimension of
    probabilities. Measured on one core, torch 2.13 (Intel Xeon @ 2.00GHz): ``[2, 3, 32, 48, 32]`` along
    dim 1, 111 ms with ``argmax`` against 3.5 ms; ``[2, 112, 112, 80]`` along dim 0, 827 ms against 20 ms.
    In a CCE fine-tune step the pseudo-labels' ``argmax`` alone took 0.29 s of 2.3 s.

    Parameters
    ----------
    values : torch.Tensor
        Scores or probabilities.
    dim : int
        The dimension to reduce (the class dimension).

    Returns
    -------
    torch.Tensor
        int64 indices, ``values`` without ``dim``.
    """
    return values.max(dim).indices
