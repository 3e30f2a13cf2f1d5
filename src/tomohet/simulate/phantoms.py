"""Programmable phantoms: pseudo-atomic Gaussian density with compositional states and hinged domains.

A :class:`Complex` is a set of pseudo-atoms (positions in Angstrom, weights in mass units, Gaussian widths
``sigma`` in Angstrom): a *core* that is always present, named *subunits* that are present or absent
(compositional states) and named *hinged domains* that rotate by an angle about an axis through a pivot (a
continuous coordinate). :func:`render` puts the density on a ``[D, D, D]`` float32 grid.

Conventions (DESIGN.md): atom coordinates are ``(x, y, z)`` in Angstrom relative to the box centre; volumes are
``[z, y, x]`` with the origin at index ``D // 2``; voxel ``i`` spans ``[(i - D//2 - 1/2) p, (i - D//2 + 1/2) p]``
along its axis for pixel size ``p``. A voxel's value is the mass of the Gaussians inside it (the Gaussian is
integrated over the voxel with error functions, exactly, with no truncation), so the sum of a map equals the sum
of the weights of the atoms inside the box, whatever the pixel size. Mass fractions are fractions of the
*full* complex: core + every subunit + every hinged domain (the largest state).

Built-in presets (no download; each a seeded function returning a :class:`PhantomSet`): ``assembly``,
``two_state_easy``, ``hinge``, ``mixture``, ``rare``. All share one asymmetric core with four distinct lobes
(a body, a head, an arm and a foot, so that orientation matters), about 225-245 Angstrom across with every part
present, sized for box 32 at 10-12 A/px up to box 64 / 128 at 6 / 3 A/px (default pixel size ``384 / box``).
States can also come from user maps (:func:`load_map`, :func:`states_from_maps`, Fourier resampling to the
requested box and pixel size) or atomic models (:func:`read_model_atoms`, :func:`complex_from_model`, via gemmi:
atoms become pseudo-atoms weighted by atomic number x occupancy, centred at the centre of mass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import erf as scipy_erf

from ..errors import InputError
from ..physics.fourier import crop_to, fft3_centered, fourier_crop_volume, ifft3_centered, pad_to

BOX_EXTENT_A = 384.0  # default box edge in Angstrom: 12 A/px at box 32, 6 at 64, 3 at 128
DEFAULT_SIGMA_A = 7.0  # pseudo-atom Gaussian width of the presets (Angstrom)
DEFAULT_SPACING_A = 10.0  # pseudo-atom spacing of the presets (Angstrom): ~2800 core atoms, 3000-4100 in all


def default_pixel_size(box: int) -> float:
    """Pixel size (Angstrom) that makes a ``box``-voxel box 384 Angstrom wide (12 A/px at box 32)."""
    return BOX_EXTENT_A / box


# --------------------------------------------------------------------------------------------- rendering


def render(
    atoms_xyz_A: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | float,
    sigma_A: np.ndarray | torch.Tensor | float,
    box: int,
    pixel_size: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render isotropic Gaussians onto a ``[box, box, box]`` float32 grid ``[z, y, x]``.

    ``atoms_xyz_A`` ``[N, 3]`` are (x, y, z) centres in Angstrom relative to the box centre (index ``box // 2``);
    ``weights`` ``[N]`` (or a scalar) the mass of each Gaussian; ``sigma_A`` ``[N]`` (or a scalar) its standard
    deviation in Angstrom. Each voxel receives the Gaussian's integral over the voxel (separable products of
    error-function differences), evaluated exactly over the whole grid and accumulated as one matrix product per
    chunk of atoms, so ``render(...).sum() == sum(weights)`` for atoms well inside the box, and a single atom's
    profile along an axis has variance ``sigma^2 + pixel^2 / 12`` (the Gaussian convolved with the voxel).
    About 0.3 s for 5000 atoms at box 64 on 2 CPU cores.
    """
    xyz = torch.as_tensor(atoms_xyz_A, dtype=torch.float64, device=device).reshape(-1, 3)
    n = xyz.shape[0]
    w = torch.as_tensor(weights, dtype=torch.float64, device=xyz.device).expand(n)
    s = torch.as_tensor(sigma_A, dtype=torch.float64, device=xyz.device).expand(n)
    if (s <= 0).any():
        raise InputError(None, "Gaussian widths must be positive (Angstrom)", field="sigma_A")
    out = torch.zeros(box, box * box, dtype=torch.float32, device=xyz.device)
    if n == 0:
        return out.reshape(box, box, box)
    edges = (torch.arange(box + 1, dtype=torch.float32, device=xyz.device) - box // 2 - 0.5) * pixel_size
    scale = (1.0 / (s * math.sqrt(2.0))).float()[:, None]

    def axis_factors(c: torch.Tensor) -> torch.Tensor:  # [N] centres -> [N, box] voxel integrals
        arg = (edges[None, :] - c.float()[:, None]) * scale
        # on the CPU scipy's erf is much faster than torch's for these small arrays (no thread start-up)
        e = torch.from_numpy(scipy_erf(arg.numpy())) if arg.device.type == "cpu" else torch.erf(arg)
        return 0.5 * (e[:, 1:] - e[:, :-1])

    gx, gy, gz = axis_factors(xyz[:, 0]), axis_factors(xyz[:, 1]), axis_factors(xyz[:, 2])
    gz = gz * w.float()[:, None]
    chunk = max(1, (1 << 24) // (box * box))  # <= 64 MB of [chunk, box*box] float32 per step
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        yx = (gy[sl, :, None] * gx[sl, None, :]).reshape(-1, box * box)
        out.addmm_(gz[sl].T, yx)
    return out.reshape(box, box, box)


# ------------------------------------------------------------------------------------------ the complex


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


# ---------------------------------------------------------------------------------------- shape building


@dataclass(frozen=True)
class _Lobe:
    """An ellipsoid: centre (x, y, z) and semi-axes in Angstrom, rotation matrix (columns = its axes)."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def inside(self, xyz: np.ndarray) -> np.ndarray:
        local = (xyz - np.asarray(self.centre)) @ self.rotation
        return ((local / np.asarray(self.semi_axes)) ** 2).sum(1) <= 1.0

    @property
    def volume(self) -> float:
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi_axes))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(max(self.semi_axes))
        c = np.asarray(self.centre)
        return c - r, c + r


def _inside_any(lobes: Sequence[_Lobe], xyz: np.ndarray) -> np.ndarray:
    hit = np.zeros(len(xyz), dtype=bool)
    for lobe in lobes:
        hit |= lobe.inside(xyz)
    return hit


def _jittered_grid(lobes: Sequence[_Lobe], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Points of a randomly offset cubic grid (``spacing`` Angstrom), each jittered by up to +-0.3 spacing,
    that fall inside the union of ``lobes``: an even, textured packing."""
    lo = np.min([lb.bounds()[0] for lb in lobes], axis=0) - spacing
    hi = np.max([lb.bounds()[1] for lb in lobes], axis=0) + spacing
    axes = [np.arange(lo[i], hi[i], spacing) + rng.uniform(0, spacing) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = pts + rng.uniform(-0.3 * spacing, 0.3 * spacing, size=pts.shape)
    return pts[_inside_any(lobes, pts)]


def _fill(
    lobes: Sequence[_Lobe],
    n: int,
    rng: np.random.Generator,
    exclude: Sequence[_Lobe] = (),
    spacing: float | None = None,
) -> np.ndarray:
    """Exactly ``n`` evenly packed points inside ``lobes`` and outside ``exclude`` (random subset of a slightly
    denser jittered grid; the grid is refined until it holds at least ``n`` points)."""
    if spacing is None:
        spacing = (sum(lb.volume for lb in lobes) / max(n, 1)) ** (1 / 3)
    s = 0.95 * spacing
    for _ in range(60):
        pts = _jittered_grid(lobes, s, rng)
        if exclude:
            pts = pts[~_inside_any(exclude, pts)]
        if len(pts) >= n:
            return pts[np.sort(rng.choice(len(pts), size=n, replace=False))]
        s *= 0.97
    raise RuntimeError(f"could not place {n} pseudo-atoms in the given shape")  # pragma: no cover


def _rot(axis: str, deg: float) -> np.ndarray:
    return axis_angle_matrix({"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[axis], deg)


def _frame(direction: np.ndarray) -> np.ndarray:
    """Rotation matrix whose third column is ``direction`` (unit)."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(helper, d)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return np.stack([u, v, d], axis=1)


# The core: four lobes of different sizes (body, head, arm, foot); about 225 Angstrom across (x1.38 the base
# numbers below), about 245 Angstrom with every part present.
_SCALE = 1.38


def _lobe(centre: Sequence[float], semi_axes: Sequence[float], rotation: np.ndarray | None = None) -> _Lobe:
    c = tuple(_SCALE * float(v) for v in centre)
    a = tuple(_SCALE * float(v) for v in semi_axes)
    return _Lobe(c, a, np.eye(3) if rotation is None else rotation)  # type: ignore[arg-type]


_CORE_LOBES = (
    _lobe((0.0, 0.0, -12.0), (72.0, 56.0, 48.0), _rot("z", 20.0)),  # body
    _lobe((22.0, 12.0, 52.0), (42.0, 35.0, 30.0), _rot("x", 25.0)),  # head
    _lobe((-62.0, -30.0, 26.0), (42.0, 17.0, 17.0), _rot("y", -35.0) @ _rot("z", 20.0)),  # arm
    _lobe((34.0, -38.0, -50.0), (24.0, 21.0, 19.0)),  # foot
)
# Subunit sites: outward directions from the core centre (x, y, z); A, B, C are distinct faces.
_SITES = {"A": (0.15, 1.0, 0.25), "B": (1.0, -0.35, 0.1), "C": (-0.35, -0.45, -1.0)}
# The hinge: a lid lying on the -x/+y/+z face, opening away from the surface.
_HINGE_SITE = (-0.55, 0.55, 0.8)


def _surface_distance(lobes: Sequence[_Lobe], direction: np.ndarray) -> float:
    """Distance from the origin to the outer surface of the union of ``lobes`` along ``direction``."""
    d = direction / np.linalg.norm(direction)
    r = np.arange(0.0, 300.0, 0.5)
    inside = _inside_any(lobes, r[:, None] * d[None, :])
    return float(r[np.nonzero(inside)[0].max()]) if inside.any() else 0.0


def _subunit_lobe(direction: Sequence[float], volume: float, embed: float = 0.35) -> _Lobe:
    """A flattened ellipsoid (axes ratio 1 : 0.85 : 0.6, the short axis along ``direction``) of ``volume``
    cubic Angstrom sitting on the core surface, sunk ``embed`` of its thickness into the core."""
    d = np.asarray(direction, dtype=np.float64)
    d /= np.linalg.norm(d)
    scale = (volume / (4.0 / 3.0 * math.pi * 1.0 * 0.85 * 0.6)) ** (1 / 3)
    semi = (scale, 0.85 * scale, 0.6 * scale)
    r = _surface_distance(_CORE_LOBES, d) + semi[2] * (1 - 2 * embed)
    return _Lobe(tuple(r * d), semi, _frame(d))


def _hinge_domain(volume: float) -> tuple[_Lobe, np.ndarray, np.ndarray]:
    """An elongated lid (axes ratio 1 : 0.62 : 0.55, long axis tangent to the surface) of ``volume`` cubic
    Angstrom; returns it, its pivot (at one end, on the surface) and the hinge axis (positive angles open it)."""
    n = np.asarray(_HINGE_SITE, dtype=np.float64)
    n /= np.linalg.norm(n)
    t = np.cross(n, (0.0, 0.0, 1.0))
    t /= np.linalg.norm(t)
    scale = (volume / (4.0 / 3.0 * math.pi * 1.0 * 0.62 * 0.55)) ** (1 / 3)
    semi = (scale, 0.62 * scale, 0.55 * scale)
    surface = _surface_distance(_CORE_LOBES, n)
    centre = (surface + 0.3 * semi[2]) * n
    rot = np.stack([t, np.cross(n, t), n], axis=1)  # long axis along t, short along n
    pivot = centre - 0.95 * semi[0] * t - 0.5 * semi[2] * n
    axis = np.cross(t, n)  # rotating t about t x n moves it towards +n: the lid opens
    return _Lobe(tuple(centre), semi, rot), pivot, axis


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
    core_xyz = _jittered_grid(_CORE_LOBES, spacing_A, rng)
    n_core = len(core_xyz)
    atom_volume = spacing_A**3  # cubic Angstrom per pseudo-atom: uniform density everywhere

    def make(xyz: np.ndarray) -> Component:
        return Component(xyz, np.ones(len(xyz)), np.full(len(xyz), sigma_A))

    parts: dict[str, Component] = {}
    placed: list[_Lobe] = list(_CORE_LOBES)
    for name, frac in subunits.items():
        n = int(round(frac / core_frac * n_core))
        lobe = _subunit_lobe(_SITES[name], n * atom_volume)
        parts[name] = make(_fill([lobe], n, rng, exclude=placed, spacing=spacing_A))
        placed.append(lobe)
    hinges: dict[str, HingedDomain] = {}
    if hinge_fraction > 0:
        n = int(round(hinge_fraction / core_frac * n_core))
        lobe, pivot, axis = _hinge_domain(n * atom_volume)
        hinges["lid"] = HingedDomain(make(_fill([lobe], n, rng, exclude=placed, spacing=spacing_A)), pivot, axis)
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


# ----------------------------------------------------------------------------------------- phantom sets


@dataclass
class PhantomSet:
    """Ground-truth maps of a phantom and what the simulator needs to draw particles from it.

    ``volumes`` ``[M, D, D, D]`` float32 (``[z, y, x]``, ``pixel_size`` Angstrom): one map per discrete state, or
    for continuous phantoms a grid of maps along the coordinate; ``state`` ``[M]`` the discrete state index of each
    map, ``coordinate`` ``[M]`` its hinge angle in degrees (``None`` without a continuous coordinate).
    ``state_names`` / ``state_weights`` (``[S]``, the states' abundances, summing to 1) describe the discrete
    states; ``compositions`` lists each state's present subunits; ``coordinate_range`` the hinge angles to draw
    from (degrees). ``stated_mass_fractions`` are the preset's nominal fractions of the full complex (e.g. 0.07),
    ``complex`` the pseudo-atoms (``None`` for states loaded from maps).
    """

    name: str
    description: str
    box: int
    pixel_size: float
    volumes: torch.Tensor
    state: np.ndarray
    coordinate: np.ndarray | None
    state_names: list[str]
    state_weights: np.ndarray
    stated_mass_fractions: dict[str, float] = field(default_factory=dict)
    complex: Complex | None = None
    compositions: list[frozenset[str]] | None = None
    coordinate_range: tuple[float, float] | None = None

    @property
    def n_states(self) -> int:
        """Number of discrete states."""
        return len(self.state_names)

    def volume(self, state: int, coordinate: float | None = None) -> torch.Tensor:
        """The map of discrete ``state`` at hinge angle ``coordinate`` (degrees): rendered exactly from the
        complex when there is one, else the stored map of that state nearest in coordinate."""
        if self.complex is not None and self.compositions is not None:
            angle = 0.0 if coordinate is None else float(coordinate)
            return state_volume(self.complex, self.compositions[state], angle, box=self.box, pixel_size=self.pixel_size)
        return self.volumes[self.nearest_map(state, coordinate)]

    def nearest_map(self, state: int, coordinate: float | None = None) -> int:
        """Index into ``volumes`` of the map of ``state`` whose coordinate is nearest ``coordinate``."""
        idx = np.nonzero(self.state == state)[0]
        if idx.size == 0:
            raise InputError(None, f"no map for state {state}; there are {self.n_states} states", field="state")
        if self.coordinate is None or coordinate is None:
            return int(idx[0])
        return int(idx[np.argmin(np.abs(self.coordinate[idx] - coordinate))])


def _check_fits(cx: Complex, box: int, pixel_size: float, angles: Iterable[float]) -> None:
    half = box // 2 * pixel_size
    for a in angles:
        atoms = state_atoms(cx, cx.subunits, a)
        reach = float(np.abs(atoms.xyz).max() + 2.5 * atoms.sigma.max())
        if reach > half:
            raise InputError(
                None,
                f"the phantom reaches {reach:.0f} A from the centre but a box of {box} x {pixel_size:.2f} A/px "
                f"holds only {half:.0f} A; use a larger box or pixel size",
                field="box",
            )


def _build_set(
    name: str,
    description: str,
    cx: Complex,
    compositions: Sequence[Iterable[str]],
    state_names: Sequence[str],
    weights: Sequence[float] | None,
    angles: Sequence[float] | None,
    box: int,
    pixel_size: float | None,
    stated: Mapping[str, float],
    device: torch.device | str | None,
) -> PhantomSet:
    p = default_pixel_size(box) if pixel_size is None else float(pixel_size)
    comps = [frozenset(c) for c in compositions]
    grid = [0.0] if angles is None else [float(a) for a in angles]
    _check_fits(cx, box, p, grid)
    vols, state, coord = [], [], []
    cache: dict = {}
    for s, comp in enumerate(comps):
        for a in grid:
            vols.append(state_volume(cx, comp, a, box=box, pixel_size=p, device=device, cache=cache))
            state.append(s)
            coord.append(a)
    w = np.full(len(comps), 1.0 / len(comps)) if weights is None else np.asarray(weights, dtype=np.float64)
    return PhantomSet(
        name=name,
        description=description,
        box=box,
        pixel_size=p,
        volumes=torch.stack(vols),
        state=np.asarray(state, dtype=np.int64),
        coordinate=None if angles is None else np.asarray(coord, dtype=np.float64),
        state_names=list(state_names),
        state_weights=w / w.sum(),
        stated_mass_fractions=dict(stated),
        complex=cx,
        compositions=comps,
        coordinate_range=None if angles is None else (min(grid), max(grid)),
    )


def _state_name(comp: Iterable[str]) -> str:
    return "+".join(["core", *sorted(comp)])


# --------------------------------------------------------------------------------------------- presets


def assembly(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    n_states: int = 4,
    step_fraction: float = 0.07,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Compositional assembly: core, core+A, core+A+B, core+A+B+C (``n_states`` 2..4), each subunit ~7% of
    the full complex's mass (the core ~79%), equal abundances. The hard discrete benchmark of DESIGN.md."""
    names = ["A", "B", "C"][: n_states - 1]
    if not 2 <= n_states <= 4:
        raise InputError(None, f"assembly has 2 to 4 states, got {n_states}", field="n_states")
    cx = build_complex(dict.fromkeys(names, step_fraction), seed=seed)
    comps = [names[:i] for i in range(n_states)]
    desc = (
        f"{n_states} compositional states, each adding a subunit of ~{step_fraction:.0%} of the full complex's "
        f"mass to the previous one (core ~{1 - step_fraction * len(names):.0%})"
    )
    return _build_set(
        "assembly", desc, cx, comps, [_state_name(c) for c in comps], None, None, box, pixel_size,
        dict.fromkeys(names, step_fraction), device,
    )  # fmt: skip


def two_state_easy(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    fraction: float = 0.11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Two states, core and core+A, differing by a subunit of ~11% of the larger state's mass; equal
    abundances. The easy discrete benchmark of DESIGN.md."""
    cx = build_complex({"A": fraction}, seed=seed)
    comps: list[list[str]] = [[], ["A"]]
    desc = f"2 compositional states differing by a subunit of ~{fraction:.0%} of mass"
    return _build_set(
        "two_state_easy", desc, cx, comps, ["core", "core+A"], None, None, box, pixel_size, {"A": fraction}, device
    )


def hinge(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    fraction: float = 0.20,
    max_angle_deg: float = 30.0,
    n_maps: int = 11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Continuous: a lid of ~20% of the mass hinging 0..30 degrees away from the core; ``n_maps`` ground-truth
    maps evenly spaced in angle (the coordinate, degrees). The continuous benchmark of DESIGN.md."""
    cx = build_complex(hinge_fraction=fraction, seed=seed)
    angles = np.linspace(0.0, max_angle_deg, n_maps).tolist()
    desc = f"a domain of ~{fraction:.0%} of mass hinging 0-{max_angle_deg:g} degrees ({n_maps} maps)"
    return _build_set("hinge", desc, cx, [[]], ["core+lid"], None, angles, box, pixel_size, {"lid": fraction}, device)


def mixture(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    subunit_fraction: float = 0.11,
    hinge_fraction: float = 0.20,
    max_angle_deg: float = 30.0,
    n_maps: int = 11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Compositional x continuous: subunit A (~11% of the full complex) absent or present (equal abundances),
    times a lid of ~20% of the mass hinging 0..30 degrees; ``n_maps`` maps per compositional state."""
    cx = build_complex({"A": subunit_fraction}, hinge_fraction=hinge_fraction, seed=seed)
    angles = np.linspace(0.0, max_angle_deg, n_maps).tolist()
    desc = (
        f"2 compositional states (subunit A, ~{subunit_fraction:.0%} of mass) x a domain of "
        f"~{hinge_fraction:.0%} of mass hinging 0-{max_angle_deg:g} degrees"
    )
    stated = {"A": subunit_fraction, "lid": hinge_fraction}
    return _build_set(
        "mixture", desc, cx, [[], ["A"]], ["core+lid", "core+A+lid"], None, angles, box, pixel_size, stated, device
    )


def rare(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    abundance: float = 0.05,
    fraction: float = 0.07,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """A rare state: core (95% of particles) and core+A (5%), A ~7% of the larger state's mass. The abundances
    are ``state_weights``; the rare state is state 1."""
    if not 0 < abundance < 1:
        raise InputError(None, f"abundance must be between 0 and 1, got {abundance}", field="abundance")
    cx = build_complex({"A": fraction}, seed=seed)
    desc = f"a rare state (core+A, {abundance:.0%} of particles) differing by a subunit of ~{fraction:.0%} of mass"
    return _build_set(
        "rare", desc, cx, [[], ["A"]], ["core", "core+A"], [1 - abundance, abundance], None, box, pixel_size,
        {"A": fraction}, device,
    )  # fmt: skip


PRESETS: dict[str, Callable[..., PhantomSet]] = {
    "assembly": assembly,
    "two_state_easy": two_state_easy,
    "hinge": hinge,
    "mixture": mixture,
    "rare": rare,
}


def preset(name: str, **kwargs) -> PhantomSet:
    """A built-in phantom by name (see :data:`PRESETS`), with the preset function's keyword arguments."""
    if name not in PRESETS:
        raise InputError(None, f"unknown phantom {name!r}; expected one of {sorted(PRESETS)}", field="phantom")
    return PRESETS[name](**kwargs)


# ------------------------------------------------------------------------------------- maps from files


def _fourier_pad_volume(vol: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample ``[D, D, D]`` to ``[size]*3`` by zero-padding its centred spectrum (values per voxel kept)."""
    d = vol.shape[-1]
    ft = pad_to(fft3_centered(vol), size, 3)
    return ifft3_centered(ft) * (size / d) ** 3


def resample_volume(vol: torch.Tensor, pixel_size_in: float, box: int, pixel_size: float) -> torch.Tensor:
    """Resample a cubic map (``[D, D, D]``, ``pixel_size_in`` Angstrom) onto ``[box]*3`` at ``pixel_size`` Angstrom.

    The map is zero-padded in real space to a size ``D'`` for which ``D' * pixel_size_in / pixel_size`` is an
    integer ``G`` (to 0.1%, else the nearest), its centred spectrum is cropped (coarser pixels) or zero-padded
    (finer pixels) to ``G``, and the result is cropped or zero-padded in real space to ``box`` about the centre
    (index ``D // 2``). Values are density per voxel (a constant map stays constant); float32.
    """
    v = vol.float()
    d = v.shape[-1]
    ratio = pixel_size_in / pixel_size
    best = (math.inf, d)
    for dp in range(d, 2 * d + 1):
        err = abs(dp * ratio - round(dp * ratio)) / (dp * ratio)
        if err < best[0] - 1e-12:
            best = (err, dp)
        if err < 1e-3:
            break
    dp = best[1]
    g = max(1, int(round(dp * ratio)))
    v = pad_to(v, dp, 3)
    if g < dp:
        v = fourier_crop_volume(v, g)
    elif g > dp:
        v = _fourier_pad_volume(v, g)
    return (crop_to(v, box, 3) if g > box else pad_to(v, box, 3)).contiguous().float()


def load_map(path: str | Path, box: int, pixel_size: float) -> torch.Tensor:
    """A user's MRC map resampled to ``[box]*3`` at ``pixel_size`` Angstrom (see :func:`resample_volume`)."""
    from ..data.mrc import read_volume

    vol, apix = read_volume(path)
    if apix <= 0:
        raise InputError(path, f"voxel size must be positive, got {apix}", field="voxel_size")
    return resample_volume(vol, apix, box, pixel_size)


def states_from_maps(
    paths: Sequence[str | Path],
    box: int,
    pixel_size: float,
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> PhantomSet:
    """Discrete ground-truth states from user MRC maps (one state per map), resampled to the box and pixel size;
    ``weights`` are the abundances (default equal), ``names`` default to the file stems."""
    if not paths:
        raise InputError(None, "expected at least one map", field="maps")
    vols = torch.stack([load_map(p, box, pixel_size) for p in paths])
    w = np.full(len(paths), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(paths),) or (w < 0).any() or w.sum() <= 0:
        raise InputError(None, f"expected {len(paths)} non-negative abundances, got {list(w)}", field="weights")
    return PhantomSet(
        name="maps",
        description=f"{len(paths)} states from user maps",
        box=box,
        pixel_size=float(pixel_size),
        volumes=vols,
        state=np.arange(len(paths)),
        coordinate=None,
        state_names=list(names) if names is not None else [Path(p).stem for p in paths],
        state_weights=w / w.sum(),
    )


# ----------------------------------------------------------------------------------- atomic models (gemmi)


@dataclass
class ModelAtoms:
    """Atoms of an atomic model: ``xyz`` ``[n, 3]`` Angstrom (x, y, z; centred at the centre of mass when read
    with ``centre=True``), ``weights`` ``[n]`` atomic number x occupancy, ``masses`` ``[n]`` Dalton x occupancy,
    ``b_factors`` ``[n]`` (A^2), ``chains`` ``[n]`` chain names, ``centre`` the centre of mass subtracted."""

    xyz: np.ndarray
    weights: np.ndarray
    masses: np.ndarray
    b_factors: np.ndarray
    chains: np.ndarray
    centre: np.ndarray


def read_model_atoms(path: str | Path, centre: bool = True, waters: bool = False) -> ModelAtoms:
    """Read the first model of an mmCIF or PDB file with gemmi; waters are skipped unless ``waters``."""
    import gemmi

    path = Path(path)
    if not path.exists():
        raise InputError(path, "model file not found")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable PDB/mmCIF model ({exc})") from exc
    if len(st) == 0:
        raise InputError(path, "the model file holds no model")
    xyz, z, m, b, ch = [], [], [], [], []
    for chain in st[0]:
        for res in chain:
            if res.is_water() and not waters:
                continue
            for atom in res:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                z.append(atom.element.atomic_number * atom.occ)
                m.append(atom.element.weight * atom.occ)
                b.append(atom.b_iso)
                ch.append(chain.name)
    if not xyz:
        raise InputError(path, "the model holds no atoms")
    xyz_a, masses = np.asarray(xyz, dtype=np.float64), np.asarray(m, dtype=np.float64)
    com = (xyz_a * masses[:, None]).sum(0) / masses.sum() if centre else np.zeros(3)
    return ModelAtoms(xyz_a - com, np.asarray(z, dtype=np.float64), masses, np.asarray(b), np.asarray(ch), com)


def _model_sigma(atoms: ModelAtoms, sigma_A: float | None) -> np.ndarray:
    if sigma_A is not None:
        return np.full(len(atoms.weights), float(sigma_A))
    return np.maximum(np.sqrt(np.maximum(atoms.b_factors, 0.0) / (8 * math.pi**2)), 1.0)


def complex_from_model(
    path: str | Path,
    subunits: Mapping[str, Sequence[str]] | None = None,
    sigma_A: float | None = None,
    hinges: Mapping[str, tuple[Sequence[str], Sequence[float], Sequence[float]]] | None = None,
) -> Complex:
    """A :class:`Complex` from an atomic model: ``subunits`` maps a subunit name to its chain names and ``hinges``
    a hinged domain's name to ``(chains, pivot, axis)`` (pivot in Angstrom in the file's frame, axis a direction);
    every other chain forms the core. Pseudo-atoms are the atoms, weighted by atomic number x occupancy, centred
    at the model's centre of mass; ``sigma_A`` their Gaussian width (Angstrom; default from each atom's B-factor,
    sigma = sqrt(B / 8 pi^2), at least 1 Angstrom)."""
    atoms = read_model_atoms(path)
    sigma = _model_sigma(atoms, sigma_A)
    taken = np.zeros(len(atoms.weights), dtype=bool)

    def select(name: str, chains: Sequence[str]) -> Component:
        nonlocal taken
        sel = np.isin(atoms.chains, list(chains)) & ~taken
        if not sel.any():
            raise InputError(path, f"{name!r}: no (unassigned) atoms in chains {list(chains)}", field="chains")
        taken = taken | sel
        return Component(atoms.xyz[sel], atoms.weights[sel], sigma[sel])

    parts = {name: select(name, chains) for name, chains in (subunits or {}).items()}
    domains = {
        name: HingedDomain(select(name, chains), np.asarray(pivot, dtype=np.float64) - atoms.centre, axis)
        for name, (chains, pivot, axis) in (hinges or {}).items()
    }
    if taken.all():
        raise InputError(path, "every chain is in a subunit or hinge; the core would be empty", field="chains")
    core = Component(atoms.xyz[~taken], atoms.weights[~taken], sigma[~taken])
    return Complex(core, parts, domains)


def volume_from_model(
    path: str | Path,
    box: int,
    pixel_size: float,
    sigma_A: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The map of a whole atomic model (see :func:`complex_from_model`) on ``[box]*3`` at ``pixel_size``."""
    cx = complex_from_model(path, sigma_A=sigma_A)
    return state_volume(cx, box=box, pixel_size=pixel_size, device=device)
