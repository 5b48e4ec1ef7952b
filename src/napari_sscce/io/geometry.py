"""Conversions between the files' voxel-to-world conventions and :class:`Volume`'s.

``Volume.affine`` maps array indices ``(z, y, x, 1)`` to world millimetres listed in the same
(reversed) order as the array axes: ``(S, A, R)`` of the NIfTI RAS+ frame. With this choice an
axis-aligned scan has a diagonal affine, and the world axes are napari's world axes (napari orders
world coordinates like the data axes), so ``scale``/``translate`` show a scan where it belongs.

NIfTI stores RAS+ on ``(i, j, k) = (x, y, z)`` indices; ITK / DICOM / MetaImage store LPS+ on
``(x, y, z)``; NRRD names its space. All conversions are exact permutations and sign flips, so a
round trip reproduces the file's own matrix bit for bit.
"""

from __future__ import annotations

import numpy as np

#: swaps (x, y, z) <-> (z, y, x) on both the index side and the world side of a 4x4 affine
REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
#: LPS <-> RAS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_FLIPPED_WORDS = {"left": "right", "posterior": "anterior", "inferior": "superior"}
_SPACE_ALIASES = {
    "ras": "right-anterior-superior",
    "las": "left-anterior-superior",
    "lps": "left-posterior-superior",
    "3d-right-handed": "right-anterior-superior",
    "3d-left-handed": "left-anterior-superior",
}


def ras_xyz_to_volume(affine_ras_xyz: np.ndarray) -> np.ndarray:
    """Convert a NIfTI-style affine ((x, y, z) indices -> RAS) to a :class:`Volume` affine."""
    return REVERSE @ np.asarray(affine_ras_xyz, dtype=float) @ REVERSE


def volume_to_ras_xyz(affine: np.ndarray) -> np.ndarray:
    """Convert a :class:`Volume` affine back to a NIfTI-style ((x, y, z) indices -> RAS) affine."""
    return REVERSE @ np.asarray(affine, dtype=float) @ REVERSE


def lps_xyz_to_volume(affine_lps_xyz: np.ndarray) -> np.ndarray:
    """Convert an ITK-style affine ((x, y, z) indices -> LPS) to a :class:`Volume` affine."""
    return ras_xyz_to_volume(LPS_TO_RAS @ np.asarray(affine_lps_xyz, dtype=float))


def itk_affine(spacing_xyz, origin_xyz, direction) -> np.ndarray:
    """Build the ITK (x, y, z) -> LPS affine from spacing, origin and a 3x3 (or flat) direction."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) @ np.diag(np.asarray(spacing_xyz, float))
    out[:3, 3] = np.asarray(origin_xyz, dtype=float)
    return out


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each index axis: the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def canonical_space(space: str | None) -> str | None:
    """Normalise an NRRD ``space`` name (``"LPS"``, ``"left-posterior-superior"``...) or return None."""
    if space is None:
        return None
    key = str(space).strip().lower()
    key = _SPACE_ALIASES.get(key, key)
    words = key.split("-")
    if len(words) == 3 and all(w in _FLIPPED_WORDS or w in _FLIPPED_WORDS.values() for w in words):
        return key
    return None


def space_to_ras(space: str | None) -> np.ndarray:
    """4x4 matrix taking coordinates of an anatomical NRRD space to RAS (identity if unknown)."""
    name = canonical_space(space)
    if name is None:
        return np.eye(4)
    signs = [-1.0 if w in _FLIPPED_WORDS else 1.0 for w in name.split("-")]
    return np.diag([*signs, 1.0])


#: Names of a volume array's axes, in order.
AXIS_NAMES = "zyx"


def parse_axes(text: str) -> tuple[int, ...]:
    """``"zx"`` -> ``(0, 2)``; ``""`` or ``"none"`` -> ``()``. Raises ``ValueError`` on other letters."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    bad = sorted(set(text) - set(AXIS_NAMES))
    if bad:
        raise ValueError(f"flip axes must be letters of 'zyx' (or 'auto' / 'none'), got {text!r}")
    return tuple(sorted({AXIS_NAMES.index(c) for c in text}))


def axes_text(axes) -> str:
    """``(0, 2)`` -> ``"zx"``; no axes -> ``"none"`` (the inverse of :func:`parse_axes`)."""
    return "".join(AXIS_NAMES[a] for a in sorted(set(axes))) or "none"


#: tolerance, as a fraction of the voxel size, within which two affines are the same grid
GRID_TOLERANCE = 1e-3


def same_grid(affine_a: np.ndarray, affine_b: np.ndarray, spacing: tuple[float, ...] | None = None,
              tolerance: float = GRID_TOLERANCE) -> bool:
    """True when two :class:`Volume` affines map every voxel to the same world point within
    ``tolerance`` x the voxel size (direction columns and origin compared)."""
    a, b = np.asarray(affine_a, float), np.asarray(affine_b, float)
    sizes = np.asarray(spacing if spacing is not None else spacing_of(a), float)
    tol = tolerance * max(float(np.min(sizes)), 1e-9)
    return bool(np.all(np.abs(a[:3, :4] - b[:3, :4]) <= tol))


def grid_mapping(source_affine: np.ndarray, source_shape: tuple[int, ...], target_affine: np.ndarray,
                 target_shape: tuple[int, ...], tolerance: float = GRID_TOLERANCE
                 ) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]] | None:
    """How to put an array on another grid that differs only by axis flips and permutations.

    Returns ``(axes, flips)`` such that ``reorient(array, axes, flips)`` puts the source array on the
    target grid voxel for voxel, or None when the grids differ otherwise (a shift, a rotation, another
    spacing or extent), when a resampling would be needed.
    """
    try:
        m = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)
    except np.linalg.LinAlgError:
        return None
    rot, shift = m[:3, :3], m[:3, 3]
    axes: list[int] = []
    flips: list[bool] = []
    for j in range(3):
        p = int(np.argmax(np.abs(rot[:, j])))
        value = rot[p, j]
        if abs(abs(value) - 1) > tolerance or np.sum(np.abs(rot[:, j]) > tolerance) != 1 or p in axes:
            return None
        axes.append(p)
        flip = value < 0
        if int(source_shape[p]) != int(target_shape[j]):
            return None
        expected = (int(source_shape[p]) - 1) if flip else 0
        if abs(shift[p] - expected) > tolerance:
            return None
        flips.append(bool(flip))
    return (axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2])


def reorient(array: np.ndarray, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> np.ndarray:
    """Apply a :func:`grid_mapping` result: transpose the spatial axes, then flip those marked."""
    out = np.transpose(array, axes)
    for j, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=j)
    return np.ascontiguousarray(out)


def affine_problem(affine: np.ndarray) -> str | None:
    """Why an affine cannot place a volume in the world (non-finite, singular, zero voxel size), or None."""
    a = np.asarray(affine, float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return f"its voxel-to-world matrix is not finite ({np.round(a, 4).tolist()})"
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(sizes <= 0):
        return f"a voxel size is zero (spacing {tuple(float(s) for s in sizes)})"
    unit = a[:3, :3] / sizes
    if abs(np.linalg.det(unit)) < 1e-6:
        return (f"its voxel-to-world matrix is singular (axes {np.round(a[:3, :3], 4).tolist()} are not "
                "independent): the file's orientation (sform/qform, space directions) is broken")
    return None
