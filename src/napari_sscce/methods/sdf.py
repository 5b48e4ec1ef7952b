"""Signed distance maps of label volumes: the regression target of UG-MCL's distance head.

The map follows DTC's ``compute_sdf`` (HiLab-git/DTC ``code/utils/util.py``), per foreground class ``c``:

* inside the object (``label == c``): ``-d_in / max(d_in)``, ``d_in`` the Euclidean distance to the nearest
  voxel outside the object, so the deepest voxel is ``-1``;
* outside: ``+d_out / max(d_out)``, ``d_out`` the distance to the nearest object voxel, the farthest voxel
  is ``+1``;
* on the boundary (object voxels with a face neighbour outside the object; skimage's
  ``find_boundaries(mode="inner")``): ``0``.

Each side is normalised by its own maximum, as the reference. Choices where the reference is silent:

* a class absent from the volume gives zeros (the reference leaves the map at its initial zeros);
* a class covering every voxel has no outside and no boundary: ``-d / max(d)`` with ``d`` the distance to the
  volume's faces (so still ``-1`` at the deepest voxel);
* volume borders are not boundaries (a voxel on the edge of the array is only a boundary voxel when it touches
  the background);
* ``spacing`` (optional) gives distances in millimetres instead of voxels (the reference uses voxels);
* partial labels: the map is computed from the label as given and set to ``0`` outside the annotation
  ``mask``. Those values carry no information: the UG-MCL loss multiplies the distance MSE by the annotation
  mask, so voxels outside it are not supervised (``masked_mse`` in ``methods.ugmcl``).

The reference computes the map on each cropped training patch; here it is computed once per case (cached by
the sampler) and cropped with the patch, so the normalisation is per case rather than per patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _face_structure(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, 1)


def binary_sdf(
    foreground: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Normalised signed distance map of one binary mask.

    Parameters
    ----------
    foreground : np.ndarray
        Boolean array (any number of dimensions), ``True`` inside the object.
    spacing : sequence of float, optional
        Voxel size per axis; distances are in voxels when omitted (as DTC).

    Returns
    -------
    np.ndarray
        float32 array of the same shape: negative inside (``-1`` at the deepest voxel), ``0`` on the inner
        boundary, positive outside (``+1`` at the farthest voxel); all zeros for an empty mask.
    """
    foreground = np.asarray(foreground, dtype=bool)
    out = np.zeros(foreground.shape, dtype=np.float32)
    if not foreground.any():
        return out
    if foreground.all():
        padded = np.pad(foreground, 1, constant_values=False)
        inner = ndimage.distance_transform_edt(padded, sampling=spacing)
        inner = inner[tuple(slice(1, -1) for _ in range(foreground.ndim))]
        return (-inner / inner.max()).astype(np.float32)
    inside = ndimage.distance_transform_edt(foreground, sampling=spacing)
    outside = ndimage.distance_transform_edt(~foreground, sampling=spacing)
    out[:] = outside / outside.max()
    out -= inside / inside.max()
    eroded = ndimage.binary_erosion(foreground, structure=_face_structure(foreground.ndim), border_value=1)
    out[foreground & ~eroded] = 0.0
    return out


def compute_sdf(
    label: np.ndarray,
    num_classes: int,
    mask: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Signed distance maps of every foreground class of a label volume.

    Parameters
    ----------
    label : np.ndarray
        Integer label volume ``[Z, Y, X]`` with values in ``[0, num_classes)``.
    num_classes : int
        Number of classes including background (at least 2).
    mask : np.ndarray, optional
        Annotation mask ``[Z, Y, X]`` (non-zero where the label is confirmed). The maps are set to ``0``
        outside it; the training loss must also mask the distance MSE there (see module docstring).
    spacing : sequence of float, optional
        Voxel size ``(z, y, x)``; distances in voxels when omitted (as the reference).

    Returns
    -------
    np.ndarray
        float32 ``[num_classes - 1, Z, Y, X]``, channel ``c - 1`` the map of class ``c`` (see
        :func:`binary_sdf`); zeros for a class absent from ``label``.

    Raises
    ------
    ValueError
        If ``num_classes < 2``, ``label`` is not 3D, holds values outside ``[0, num_classes)`` or ``mask`` has
        another shape.
    """
    if num_classes < 2:
        raise ValueError(f"compute_sdf needs num_classes >= 2, got {num_classes}")
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"compute_sdf expects a 3D label volume (z, y, x), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}), found [{label.min()}, {label.max()}]"
        )
    if mask is not None and np.shape(mask) != label.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from label shape {label.shape}")
    sdf = np.stack([binary_sdf(label == c, spacing) for c in range(1, num_classes)])
    if mask is not None:
        sdf *= np.asarray(mask) != 0
    return sdf
