"""Checks shared by the readers: each raises one :class:`~tomohet.errors.InputError` naming the file, the field and
(where there is one) the row, tilt series or particle that is wrong.

Also the content test that tells a single-particle (SPA) RELION particles star from a tilt-series image-series star
(:func:`single_particle_reason`), so that the user is told what the file is instead of what it lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

# tolerance on ``R R^T = I`` for the 3x3 part of a projection matrix (real data are written with ~7 digits)
ROTATION_TOLERANCE = 1e-3
# per-image columns that only a tilt series has (a signed tilt or the dose before the image)
TILT_COLUMNS = ("rlnTomoNominalStageTiltAngle", "rlnTomoTiltAngle", "rlnTiltAngle", "rlnMicrographPreExposure")


def check_pixel_size(value: float, path: Path | None, field: str) -> float:
    """``value`` if it is a finite, positive pixel size (Angstrom), else an error naming ``field``."""
    if not np.isfinite(value) or value <= 0:
        raise InputError(path, f"pixel size must be a positive number of Angstrom, got {value:g}", field)
    return float(value)


def check_box(value: float, path: Path, field: str = "rlnImageSize") -> int:
    """``value`` as an int if it is a positive whole number of pixels."""
    if not np.isfinite(value) or value <= 0 or value != round(value):
        raise InputError(path, f"box size must be a positive whole number of pixels, got {value:g}", field)
    return int(value)


def check_positive(values: np.ndarray, path: Path, field: str, what: str) -> np.ndarray:
    """``values`` if all are > 0, else an error naming the first bad one."""
    bad = np.flatnonzero(~(np.asarray(values) > 0))
    if len(bad):
        raise InputError(path, f"{what} must be positive, got {float(values[bad[0]]):g}", field)
    return values


def check_flag(
    values: np.ndarray, path: Path, field: str, expected: str, allowed: tuple[float, ...] = (0, 1)
) -> np.ndarray:
    """``values`` if every one is in ``allowed`` (e.g. a 0/1 flag), else an error saying ``expected``."""
    bad = np.flatnonzero(~np.isin(values, allowed))
    if len(bad):
        raise InputError(path, f"{expected}, got {float(values[bad[0]]):g}", field)
    return values


def check_half_sets(half: np.ndarray, path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """Gold-standard half sets must be 1 or 2 (``rows``: the 0-based file row of each entry, for the message)."""
    bad = np.flatnonzero(~np.isin(half, [1, 2]))
    if len(bad):
        r = int(bad[0] if rows is None else rows[bad[0]])
        raise InputError(path, f"row {r + 1}: half set {int(half[bad[0]])}; expected 1 or 2", "rlnRandomSubset")
    return np.asarray(half, dtype=np.int64)


def check_unique(values: list[str] | np.ndarray, path: Path, field: str, what: str = "particle name") -> None:
    """Every value once: an error naming one duplicate and the rows it is on."""
    s = pd.Series(np.asarray(values, dtype=object).astype(str))
    dup = s.duplicated(keep=False).to_numpy()
    if dup.any():
        name = s[dup].iloc[0]
        rows = np.flatnonzero((s == name).to_numpy())[:2] + 1
        raise InputError(path, f"{what} {name!r} appears more than once (rows {rows[0]} and {rows[1]})", field)


def check_rotations(p3: np.ndarray, path: Path, block: str) -> None:
    """The 3x3 parts ``[T, 3, 3]`` of a tilt series' projection matrices must be proper rotations (orthonormal
    rows within :data:`ROTATION_TOLERANCE`, determinant +1); the error names the tilt (row) and the field."""
    norms = np.linalg.norm(p3, axis=2)  # [T, 3] row norms
    off = np.abs(p3 @ np.swapaxes(p3, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(p3)
    bad = np.flatnonzero((off > ROTATION_TOLERANCE) | (det < 0))
    if not len(bad):
        return
    t = int(bad[0])
    axis = int(np.argmax(np.abs(norms[t] - 1)))
    field = f"rlnTomoProj{'XYZ'[axis]}" if abs(norms[t, axis] - 1) > ROTATION_TOLERANCE else "rlnTomoProjX/Y/Z"
    why = f"determinant {det[t]:.3f}" if off[t] <= ROTATION_TOLERANCE else f"|R R^T - I| = {off[t]:.3g}"
    raise InputError(
        path,
        f"tilt series {block!r}, tilt {t + 1}: the 3x3 part of the projection matrix is not a rotation ({why}); "
        "expected orthonormal rows with determinant +1",
        field,
    )


def check_visible(visible: np.ndarray, names: list[str], path: Path, field: str) -> None:
    """Every particle must be seen in at least one tilt image (``visible [N, T]``)."""
    none = np.flatnonzero(~np.asarray(visible).any(axis=1))
    if len(none):
        i = int(none[0])
        raise InputError(path, f"row {i + 1}: particle {names[i]!r} has no visible tilt image", field)


def _particle_loop(blocks: dict[str, Any]) -> pd.DataFrame | None:
    loops = [v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"]
    if len(loops) != 1 or any(isinstance(v, dict) for v in blocks.values()):
        return None
    return loops[0]


def _has_tilt_information(df: pd.DataFrame) -> bool:
    """A column that only a tilt series has, or a per-image tilt (cos < 1) or dose (B != 0) that varies."""
    if any(c in df.columns for c in TILT_COLUMNS):
        return True
    if "rlnCtfScalefactor" in df.columns:
        scale = pd.to_numeric(df["rlnCtfScalefactor"], errors="coerce")
        if (scale < 0.9999).any() or scale.isna().any():
            return True
    if "rlnCtfBfactor" in df.columns:
        bfac = pd.to_numeric(df["rlnCtfBfactor"], errors="coerce")
        if (bfac != 0).any():
            return True
    return False


def single_particle_reason(blocks: dict[str, Any]) -> str | None:
    """Why ``blocks`` look like a single-particle (SPA) RELION particles star rather than a tilt-series one, or
    ``None``. A SPA star has one particle loop of ``N@stack`` images with no ``rlnTomo*`` label and no per-image
    tilt or dose (``rlnCtfScalefactor`` = cos(tilt) < 1, ``rlnCtfBfactor`` = -4 x dose, a tilt-angle column);
    its ``rlnGroupName``, if any, groups micrographs, not the tilt images of one particle."""
    df = _particle_loop(blocks)
    if df is None or len(df) == 0 or "rlnImageName" not in df.columns:
        return None
    if any(str(c).startswith("rlnTomo") for c in df.columns) or "@" not in str(df["rlnImageName"].iloc[0]):
        return None
    if _has_tilt_information(df):
        return None
    if "rlnGroupName" in df.columns:
        return "its rlnGroupName groups images but no image has a tilt or a dose (rlnCtfScalefactor, rlnCtfBfactor)"
    return "no rlnGroupName groups its images into particles and no image has a tilt or a dose"


def not_single_particle(blocks: dict[str, Any], path: Path) -> None:
    """Raise the "this looks like a single-particle RELION star" error if :func:`single_particle_reason` says so."""
    why = single_particle_reason(blocks)
    if why is not None:
        df = _particle_loop(blocks)
        raise InputError(
            path,
            f"this looks like a single-particle RELION star, not a tilt-series particle star ({why}); expected a "
            "RELION 5 / WarpTools project, a Warp v1 image-series star or RELION 3.1/4 subtomograms",
            "rlnGroupName" if df is not None and "rlnGroupName" in df.columns else None,
        )
