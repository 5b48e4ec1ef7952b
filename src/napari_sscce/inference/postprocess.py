"""Post-processing of label maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Keep, for each foreground class, only its largest connected component (the rest becomes background).

    Connectivity is 26 (full), as ``skimage.measure.label``'s default that MC-Net's ``test_patch.py``
    uses for the LA heart. Classes are processed independently; the input is not modified.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label map (z, y, x); 0 is background.
    num_classes : int, optional
        Number of classes (background included); default ``labels.max() + 1``.

    Returns
    -------
    numpy.ndarray
        A new label map of the same dtype.
    """
    out = labels.copy()
    top = int(labels.max()) if num_classes is None else int(num_classes) - 1
    structure = np.ones((3, 3, 3), dtype=bool)
    for cls in range(1, top + 1):
        mask = labels == cls
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
    return out
