"""A map-like variant of the built-in complex, for presets at the physical limit of classification.

Real assembly intermediates (e.g. the EMPIAR-10076 ribosome states) differ from each other by density spread
over several sub-regions (helices and small proteins docking at different places), on a core whose density is
not uniform (RNA-rich and protein-rich regions, solvent channels). Classifying them is harder than telling apart
one compact blob, because no single region carries the whole difference. This complex models both:

* the core is the built-in four-lobed core with a smooth density texture: its pseudo-atoms' weights vary by
  about +-30% over 40-60 Angstrom (a sum of random Gaussian bumps, mean weight 1);
* each subunit ("step") is split into ``pieces`` small flattened lobes at distinct sites of the core surface
  (half-sunk into it, sizes 45/33/22% of the step's mass for three pieces), so the difference between two
  states is several small, scattered pieces of density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from .builtin_complex import _CORE_LOBES, DEFAULT_SIGMA_A, DEFAULT_SPACING_A, centre_complex
from .complex_model import Complex, Component
from .lobes import Lobe, fill_lobes, frame_along, jittered_grid, surface_distance

# Piece sites (x, y, z directions from the core centre): three scattered sites per step, every site distinct.
_STEP_SITES = {
    "A": ((0.15, 1.0, 0.25), (-0.8, 0.2, -0.6), (0.7, 0.1, 0.9)),
    "B": ((1.0, -0.35, 0.1), (-0.3, 0.9, -0.7), (-0.6, -0.9, 0.5)),
    "C": ((-0.35, -0.45, -1.0), (0.9, 0.8, -0.3), (-1.0, 0.3, 0.45)),
}
_PIECE_SHARES = (0.45, 0.33, 0.22)
TEXTURE_AMPLITUDE = 0.3  # relative sd of the core's density texture


def core_texture(xyz: np.ndarray, rng: np.random.Generator, n_bumps: int = 24, width_A: float = 25.0) -> np.ndarray:
    """Smooth relative density ``[n]`` at the points ``xyz`` (Angstrom): 1 + a sum of ``n_bumps`` Gaussian bumps
    of width ``width_A`` with random signs and centres, scaled to sd :data:`TEXTURE_AMPLITUDE`, mean 1, >= 0.3."""
    lo, hi = xyz.min(0), xyz.max(0)
    centres = rng.uniform(lo, hi, size=(n_bumps, 3))
    signs = rng.choice([-1.0, 1.0], size=n_bumps)
    d2 = ((xyz[:, None, :] - centres[None]) ** 2).sum(-1)
    field = (signs[None] * np.exp(-d2 / (2 * width_A**2))).sum(1)
    field = (field - field.mean()) / max(field.std(), 1e-12)
    w = np.clip(1.0 + TEXTURE_AMPLITUDE * field, 0.3, None)
    return w / w.mean()


def _piece_lobe(direction, volume: float) -> Lobe:
    """A flattened ellipsoid (1 : 0.8 : 0.5, short axis along ``direction``) of ``volume`` cubic Angstrom, half
    sunk into the core surface."""
    d = np.asarray(direction, dtype=np.float64)
    d /= np.linalg.norm(d)
    scale = (volume / (4.0 / 3.0 * math.pi * 0.8 * 0.5)) ** (1 / 3)
    semi = (scale, 0.8 * scale, 0.5 * scale)
    r = surface_distance(_CORE_LOBES, d)
    return Lobe(tuple(r * d), semi, frame_along(d))


def build_maplike_complex(
    steps: Mapping[str, float],
    seed: int = 0,
    pieces: int = 3,
    sigma_A: float = DEFAULT_SIGMA_A,
    spacing_A: float = DEFAULT_SPACING_A,
) -> Complex:
    """The map-like complex: a textured core plus subunits ``steps`` (names among ``"A"``, ``"B"``, ``"C"`` ->
    mass fraction of the full complex), each split into ``pieces`` (1 to 3) scattered lobes. ``seed`` fixes the
    pseudo-atoms and the core texture; the sites are the same for every seed. Centred on the centre of mass."""
    bad = set(steps) - set(_STEP_SITES)
    if bad:
        raise InputError(None, f"unknown steps {sorted(bad)}; expected some of {sorted(_STEP_SITES)}", "steps")
    if not 1 <= pieces <= 3:
        raise InputError(None, f"a step has 1 to 3 pieces, got {pieces}", field="pieces")
    core_frac = 1.0 - sum(steps.values())
    if core_frac <= 0.2 or any(f <= 0 for f in steps.values()):
        raise InputError(None, "mass fractions must be positive and leave the core at least 20%", "steps")
    rng = np.random.default_rng(seed)
    core_xyz = jittered_grid(_CORE_LOBES, spacing_A, rng)
    core_w = core_texture(core_xyz, rng)
    n_core = len(core_xyz)
    atom_volume = spacing_A**3
    shares = np.asarray(_PIECE_SHARES[:pieces]) / sum(_PIECE_SHARES[:pieces])
    placed: list[Lobe] = list(_CORE_LOBES)
    parts: dict[str, Component] = {}
    for name, frac in steps.items():
        n_step = int(round(frac / core_frac * n_core))
        counts = np.floor(shares * n_step).astype(int)
        counts[0] += n_step - counts.sum()
        xyz = []
        for site, n in zip(_STEP_SITES[name][:pieces], counts, strict=False):
            lobe = _piece_lobe(site, 2 * n * atom_volume)  # about half of it lies inside the core
            xyz.append(fill_lobes([lobe], int(n), rng, exclude=placed, spacing=spacing_A))
            placed.append(lobe)
        pts = np.concatenate(xyz)
        parts[name] = Component(pts, np.ones(len(pts)), np.full(len(pts), sigma_A))
    core = Component(core_xyz, core_w, np.full(n_core, sigma_A))
    return centre_complex(Complex(core, parts, {}))
