"""Shape building for the built-in complex: ellipsoidal lobes and even, jittered packings of pseudo-atoms in them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .complex_model import axis_angle_matrix


@dataclass(frozen=True)
class Lobe:
    """An ellipsoid: centre (x, y, z) and semi-axes in Angstrom, rotation matrix (columns = its axes)."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def inside(self, xyz: np.ndarray) -> np.ndarray:
        """Which points ``xyz`` ``[n, 3]`` (Angstrom) lie inside the ellipsoid."""
        local = (xyz - np.asarray(self.centre)) @ self.rotation
        return ((local / np.asarray(self.semi_axes)) ** 2).sum(1) <= 1.0

    @property
    def volume(self) -> float:
        """Volume in cubic Angstrom."""
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi_axes))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """A box (lower, upper corner, Angstrom) holding the ellipsoid whatever its rotation."""
        r = float(max(self.semi_axes))
        c = np.asarray(self.centre)
        return c - r, c + r


def inside_any(lobes: Sequence[Lobe], xyz: np.ndarray) -> np.ndarray:
    """Which points ``xyz`` ``[n, 3]`` (Angstrom) lie inside at least one of ``lobes`` (``[n]`` bool)."""
    hit = np.zeros(len(xyz), dtype=bool)
    for lobe in lobes:
        hit |= lobe.inside(xyz)
    return hit


def jittered_grid(lobes: Sequence[Lobe], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Points of a randomly offset cubic grid (``spacing`` Angstrom), each jittered by up to +-0.3 spacing,
    that fall inside the union of ``lobes``: an even, textured packing."""
    lo = np.min([lb.bounds()[0] for lb in lobes], axis=0) - spacing
    hi = np.max([lb.bounds()[1] for lb in lobes], axis=0) + spacing
    axes = [np.arange(lo[i], hi[i], spacing) + rng.uniform(0, spacing) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = pts + rng.uniform(-0.3 * spacing, 0.3 * spacing, size=pts.shape)
    return pts[inside_any(lobes, pts)]


def fill_lobes(
    lobes: Sequence[Lobe],
    n: int,
    rng: np.random.Generator,
    exclude: Sequence[Lobe] = (),
    spacing: float | None = None,
) -> np.ndarray:
    """Exactly ``n`` evenly packed points inside ``lobes`` and outside ``exclude`` (random subset of a slightly
    denser jittered grid; the grid is refined until it holds at least ``n`` points)."""
    if spacing is None:
        spacing = (sum(lb.volume for lb in lobes) / max(n, 1)) ** (1 / 3)
    s = 0.95 * spacing
    for _ in range(60):
        pts = jittered_grid(lobes, s, rng)
        if exclude:
            pts = pts[~inside_any(exclude, pts)]
        if len(pts) >= n:
            return pts[np.sort(rng.choice(len(pts), size=n, replace=False))]
        s *= 0.97
    raise RuntimeError(f"could not place {n} pseudo-atoms in the given shape")  # pragma: no cover


def rotation_about(axis: str, deg: float) -> np.ndarray:
    """Right-handed rotation by ``deg`` degrees about the coordinate axis ``"x"``, ``"y"`` or ``"z"``, 3x3."""
    return axis_angle_matrix({"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[axis], deg)


def frame_along(direction: np.ndarray) -> np.ndarray:
    """Rotation matrix whose third column is ``direction`` (unit)."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(helper, d)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return np.stack([u, v, d], axis=1)


def surface_distance(lobes: Sequence[Lobe], direction: np.ndarray) -> float:
    """Distance from the origin to the outer surface of the union of ``lobes`` along ``direction``."""
    d = direction / np.linalg.norm(direction)
    r = np.arange(0.0, 300.0, 0.5)
    inside = inside_any(lobes, r[:, None] * d[None, :])
    return float(r[np.nonzero(inside)[0].max()]) if inside.any() else 0.0
