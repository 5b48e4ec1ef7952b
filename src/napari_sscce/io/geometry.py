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
