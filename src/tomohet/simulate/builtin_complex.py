"""The built-in asymmetric complex of the presets: a four-lobed core, subunit sites A, B, C and a hinged lid.

The core has four lobes of different sizes (a body, a head, an arm and a foot, so that orientation matters),
about 225-245 Angstrom across with every part present; every part has uniform density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .complex_model import Complex, Component, HingedDomain
from .lobes import Lobe, fill_lobes, frame_along, jittered_grid, rotation_about, surface_distance

DEFAULT_SIGMA_A = 7.0  # pseudo-atom Gaussian width of the presets (Angstrom)
DEFAULT_SPACING_A = 10.0  # pseudo-atom spacing of the presets (Angstrom): ~2800 core atoms, 3000-4100 in all


# The core: four lobes of different sizes (body, head, arm, foot); about 225 Angstrom across (x1.38 the base
# numbers below), about 245 Angstrom with every part present.
_SCALE = 1.38


def _lobe(centre: Sequence[float], semi_axes: Sequence[float], rotation: np.ndarray | None = None) -> Lobe:
    c = tuple(_SCALE * float(v) for v in centre)
    a = tuple(_SCALE * float(v) for v in semi_axes)
    return Lobe(c, a, np.eye(3) if rotation is None else rotation)  # type: ignore[arg-type]


_CORE_LOBES = (
    _lobe((0.0, 0.0, -12.0), (72.0, 56.0, 48.0), rotation_about("z", 20.0)),  # body
    _lobe((22.0, 12.0, 52.0), (42.0, 35.0, 30.0), rotation_about("x", 25.0)),  # head
    _lobe((-62.0, -30.0, 26.0), (42.0, 17.0, 17.0), rotation_about("y", -35.0) @ rotation_about("z", 20.0)),  # arm
    _lobe((34.0, -38.0, -50.0), (24.0, 21.0, 19.0)),  # foot
)
# Subunit sites: outward directions from the core centre (x, y, z); A, B, C are distinct faces.
_SITES = {"A": (0.15, 1.0, 0.25), "B": (1.0, -0.35, 0.1), "C": (-0.35, -0.45, -1.0)}
# The hinge: a lid lying on the -x/+y/+z face, opening away from the surface.
_HINGE_SITE = (-0.55, 0.55, 0.8)


def _subunit_lobe(direction: Sequence[float], volume: float, embed: float = 0.35) -> Lobe:
    """A flattened ellipsoid (axes ratio 1 : 0.85 : 0.6, the short axis along ``direction``) of ``volume``
    cubic Angstrom sitting on the core surface, sunk ``embed`` of its thickness into the core."""
    d = np.asarray(direction, dtype=np.float64)
    d /= np.linalg.norm(d)
    scale = (volume / (4.0 / 3.0 * math.pi * 1.0 * 0.85 * 0.6)) ** (1 / 3)
    semi = (scale, 0.85 * scale, 0.6 * scale)
    r = surface_distance(_CORE_LOBES, d) + semi[2] * (1 - 2 * embed)
    return Lobe(tuple(r * d), semi, frame_along(d))


def _hinge_domain(volume: float) -> tuple[Lobe, np.ndarray, np.ndarray]:
    """An elongated lid (axes ratio 1 : 0.62 : 0.55, long axis tangent to the surface) of ``volume`` cubic
    Angstrom; returns it, its pivot (at one end, on the surface) and the hinge axis (positive angles open it)."""
    n = np.asarray(_HINGE_SITE, dtype=np.float64)
    n /= np.linalg.norm(n)
    t = np.cross(n, (0.0, 0.0, 1.0))
    t /= np.linalg.norm(t)
    scale = (volume / (4.0 / 3.0 * math.pi * 1.0 * 0.62 * 0.55)) ** (1 / 3)
    semi = (scale, 0.62 * scale, 0.55 * scale)
    surface = surface_distance(_CORE_LOBES, n)
    centre = (surface + 0.3 * semi[2]) * n
    rot = np.stack([t, np.cross(n, t), n], axis=1)  # long axis along t, short along n
    pivot = centre - 0.95 * semi[0] * t - 0.5 * semi[2] * n
    axis = np.cross(t, n)  # rotating t about t x n moves it towards +n: the lid opens
    return Lobe(tuple(centre), semi, rot), pivot, axis


def build_complex(
    subunits: Mapping[str, float] | None = None,
    hinge_fraction: float = 0.0,
    seed: int = 0,
    sigma_A: float = DEFAULT_SIGMA_A,
    spacing_A: float = DEFAULT_SPACING_A,
) -> Complex:
    """The built-in asymmetric complex with subunits and an optional hinged lid, all of uniform density.

    ``subunits`` maps names among ``"A"``, ``"B"``, ``"C"`` (three distinct sites on the core surface) to their
    mass fraction of the full complex; ``hinge_fraction`` > 0 adds a hinged domain ``"lid"`` of that fraction
    (rotating 0..30+ degrees away from the core). The core's pseudo-atoms lie ``spacing_A`` apart on a jittered
    grid; the other parts get exactly the atom counts that give their fractions (to one atom). The whole
    complex (all parts, lid at 0) is centred on its centre of mass. ``seed`` fixes the pseudo-atoms' placement;
    the shape is the same for every seed.
    """
    subunits = dict(subunits or {})
    bad = set(subunits) - set(_SITES)
    if bad:
        raise InputError(None, f"unknown subunit sites {sorted(bad)}; expected some of {sorted(_SITES)}", "subunits")
    core_frac = 1.0 - sum(subunits.values()) - hinge_fraction
    if core_frac <= 0.2 or any(f <= 0 for f in subunits.values()) or hinge_fraction < 0:
        raise InputError(None, "mass fractions must be positive and leave the core at least 20%", "subunits")
    rng = np.random.default_rng(seed)
    core_xyz = jittered_grid(_CORE_LOBES, spacing_A, rng)
    n_core = len(core_xyz)
    atom_volume = spacing_A**3  # cubic Angstrom per pseudo-atom: uniform density everywhere

    def make(xyz: np.ndarray) -> Component:
        return Component(xyz, np.ones(len(xyz)), np.full(len(xyz), sigma_A))

    parts: dict[str, Component] = {}
    placed: list[Lobe] = list(_CORE_LOBES)
    for name, frac in subunits.items():
        n = int(round(frac / core_frac * n_core))
        lobe = _subunit_lobe(_SITES[name], n * atom_volume)
        parts[name] = make(fill_lobes([lobe], n, rng, exclude=placed, spacing=spacing_A))
        placed.append(lobe)
    hinges: dict[str, HingedDomain] = {}
    if hinge_fraction > 0:
        n = int(round(hinge_fraction / core_frac * n_core))
        lobe, pivot, axis = _hinge_domain(n * atom_volume)
        hinges["lid"] = HingedDomain(make(fill_lobes([lobe], n, rng, exclude=placed, spacing=spacing_A)), pivot, axis)
    cx = Complex(make(core_xyz), parts, hinges)
    return centre_complex(cx)


def centre_complex(cx: Complex) -> Complex:
    """The complex translated so that the full complex's centre of mass (hinges at 0) is at the origin."""
    com = Component.concat(cx.part(n) for n in cx.part_names).centroid
    return Complex(
        cx.core.shifted(-com),
        {k: v.shifted(-com) for k, v in cx.subunits.items()},
        {k: HingedDomain(h.atoms.shifted(-com), h.pivot - com, h.axis) for k, h in cx.hinges.items()},
    )
