"""One score per scan: which scan to correct next (active learning)."""

from __future__ import annotations

import numpy as np

from napari_sscce.uncertainty.maps import FOREGROUND_MARGIN, combined_uncertainty, dilated_foreground


def volume_score(
    entropy: np.ndarray,
    kl: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    margin: int = FOREGROUND_MARGIN,
) -> float:
    """Active-learning score of a whole volume: higher = more informative to correct next.

    The score is the mean of ``u = max(entropy, kl)`` over the predicted foreground dilated by ``margin``
    voxels, i.e. the structure and its boundary band, where the errors are. Averaging there, not over the
    whole volume, keeps large confident background from diluting the score (a small organ in a big scan
    would otherwise always look certain). Without labels, or when nothing is predicted, the mean over the
    whole volume is used.

    Parameters
    ----------
    entropy : ndarray
        Normalised entropy in [0, 1].
    kl : ndarray, optional
        Normalised KL in [0, 1].
    labels : ndarray, optional
        Predicted label map.
    margin : int
        Dilation of the foreground, in voxels.

    Returns
    -------
    float
        In [0, 1].
    """
    u = combined_uncertainty(entropy, kl)
    if u.size == 0:
        return 0.0
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != u.shape:
            raise ValueError(f"label map shape {lab.shape} differs from uncertainty map shape {u.shape}")
        region = dilated_foreground(lab, margin)
        if region.any():
            return float(u[region].mean(dtype=np.float64))
    return float(u.mean(dtype=np.float64))
