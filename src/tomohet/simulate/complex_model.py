"""The pseudo-atomic complex: components, hinged domains, compositional states and their rendered maps.

A :class:`Complex` is a set of pseudo-atoms (positions in Angstrom, weights in mass units, Gaussian widths
``sigma`` in Angstrom): a *core* that is always present, named *subunits* that are present or absent
(compositional states) and named *hinged domains* that rotate by an angle about an axis through a pivot (a
continuous coordinate). Mass fractions are fractions of the *full* complex: core + every subunit + every hinged
domain (the largest state). :func:`state_volume` renders one state with :func:`tomohet.simulate.density.render`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import InputError
from .density import render


@dataclass
class Component:
    """A set of pseudo-atoms: ``xyz`` ``[n, 3]`` (x, y, z) Angstrom about the box centre, ``weights`` ``[n]``
    (mass units), ``sigma`` ``[n]`` Gaussian widths (Angstrom)."""

    xyz: np.ndarray
    weights: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        n = self.xyz.shape[0]
        self.weights = np.broadcast_to(np.asarray(self.weights, dtype=np.float64), (n,)).copy()
        self.sigma = np.broadcast_to(np.asarray(self.sigma, dtype=np.float64), (n,)).copy()

    @property
    def mass(self) -> float:
        """Total weight (mass units)."""
        return float(self.weights.sum())

    @property
    def centroid(self) -> np.ndarray:
        """Mass-weighted centre ``(x, y, z)`` in Angstrom."""
        return (self.xyz * self.weights[:, None]).sum(0) / max(self.mass, 1e-300)

    def transformed(self, rotation: np.ndarray, pivot: np.ndarray | Sequence[float]) -> Component:
        """The component rotated by the 3x3 matrix ``rotation`` about the point ``pivot`` (Angstrom)."""
        p = np.asarray(pivot, dtype=np.float64)
        return replace(self, xyz=(self.xyz - p) @ np.asarray(rotation).T + p)

    def shifted(self, offset: np.ndarray | Sequence[float]) -> Component:
        """The component translated by ``offset`` (x, y, z) Angstrom."""
        return replace(self, xyz=self.xyz + np.asarray(offset, dtype=np.float64))

    @staticmethod
    def concat(parts: Iterable[Component]) -> Component:
        """All atoms of several components in one."""
        parts = list(parts)
        if not parts:
            return Component(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        return Component(
            np.concatenate([p.xyz for p in parts]),
            np.concatenate([p.weights for p in parts]),
            np.concatenate([p.sigma for p in parts]),
        )


def axis_angle_matrix(axis: np.ndarray | Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` degrees about the unit vector ``axis`` (Rodrigues), 3x3."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    a = math.radians(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) * math.cos(a) + math.sin(a) * kx + (1 - math.cos(a)) * np.outer(k, k)


@dataclass
class HingedDomain:
    """A domain that rotates by an angle (degrees; right-handed) about ``axis`` through ``pivot`` (Angstrom)."""

    atoms: Component
    pivot: np.ndarray
    axis: np.ndarray

    def __post_init__(self) -> None:
        self.pivot = np.asarray(self.pivot, dtype=np.float64)
        self.axis = np.asarray(self.axis, dtype=np.float64) / np.linalg.norm(self.axis)

    def at(self, angle_deg: float) -> Component:
        """The domain's atoms at hinge angle ``angle_deg``."""
        return self.atoms.transformed(axis_angle_matrix(self.axis, angle_deg), self.pivot)


@dataclass
class Complex:
    """A core, named optional subunits (compositional states) and named hinged domains (continuous motions).

    Hinged domains are always present; their angle is set per state (see :func:`state_atoms`).
    """

    core: Component
    subunits: dict[str, Component] = field(default_factory=dict)
    hinges: dict[str, HingedDomain] = field(default_factory=dict)

    @property
    def part_names(self) -> list[str]:
        """``"core"``, then the subunits, then the hinged domains."""
        return ["core", *self.subunits, *self.hinges]

    def part(self, name: str) -> Component:
        """The atoms of one part (hinged domains at angle 0)."""
        if name == "core":
            return self.core
        if name in self.subunits:
            return self.subunits[name]
        if name in self.hinges:
            return self.hinges[name].atoms
        raise InputError(None, f"no part named {name!r}; expected one of {self.part_names}", field="part")

    @property
    def total_mass(self) -> float:
        """Mass of the full complex: core + every subunit + every hinged domain."""
        return sum(self.part(n).mass for n in self.part_names)


def mass_fraction(cx: Complex, name: str) -> float:
    """Fraction of the full complex's mass (equivalently of its total rendered density, rendering being linear
    and mass-conserving) contributed by the part ``name`` (``"core"``, a subunit or a hinged domain)."""
    return cx.part(name).mass / cx.total_mass


def mass_fractions(cx: Complex) -> dict[str, float]:
    """:func:`mass_fraction` of every part."""
    return {n: mass_fraction(cx, n) for n in cx.part_names}


def state_atoms(
    cx: Complex, present: Iterable[str] = (), hinge_angle_deg: float | Mapping[str, float] = 0.0
) -> Component:
    """The pseudo-atoms of one state: the core, the subunits named in ``present`` and every hinged domain at its
    angle (one angle for all hinges, or ``{hinge name: angle}`` with missing names at 0), in degrees."""
    present = set(present)
    unknown = present - set(cx.subunits)
    if unknown:
        raise InputError(None, f"unknown subunits {sorted(unknown)}; expected some of {sorted(cx.subunits)}", "present")
    parts = [cx.core] + [cx.subunits[n] for n in cx.subunits if n in present]
    for name, h in cx.hinges.items():
        a = hinge_angle_deg.get(name, 0.0) if isinstance(hinge_angle_deg, Mapping) else hinge_angle_deg
        parts.append(h.at(float(a)))
    return Component.concat(parts)


def state_volume(
    cx: Complex,
    present: Iterable[str] = (),
    hinge_angle_deg: float | Mapping[str, float] = 0.0,
    *,
    box: int,
    pixel_size: float,
    device: torch.device | str | None = None,
    cache: dict | None = None,
) -> torch.Tensor:
    """The ``[box, box, box]`` float32 map of one state (the atoms of :func:`state_atoms`, see :func:`render`).

    Parts are rendered one by one and summed in a fixed order (core, subunits, hinged domains), so a map is
    byte-identical however it is asked for; ``cache`` (a dict the caller keeps for one complex, box and pixel
    size) reuses part maps across states.
    """
    present = set(present)
    unknown = present - set(cx.subunits)
    if unknown:
        raise InputError(None, f"unknown subunits {sorted(unknown)}; expected some of {sorted(cx.subunits)}", "present")
    cache = {} if cache is None else cache

    def part(key: tuple, atoms: Callable[[], Component]) -> torch.Tensor:
        if key not in cache:
            a = atoms()
            cache[key] = render(a.xyz, a.weights, a.sigma, box, pixel_size, device=device)
        return cache[key]

    vol = part(("core",), lambda: cx.core).clone()
    for name, sub in cx.subunits.items():
        if name in present:
            vol += part(("subunit", name), lambda sub=sub: sub)
    for name, h in cx.hinges.items():
        a = hinge_angle_deg.get(name, 0.0) if isinstance(hinge_angle_deg, Mapping) else hinge_angle_deg
        vol += part(("hinge", name, float(a)), lambda h=h, a=a: h.at(float(a)))
    return vol
