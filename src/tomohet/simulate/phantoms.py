"""Programmable phantoms: pseudo-atomic Gaussian density with compositional states and hinged domains.

This module is the public entry point; the pieces live in modules of one idea each:

* :mod:`.density`: :func:`render`, isotropic Gaussians integrated exactly over voxels.
* :mod:`.complex_model`: :class:`Complex` (a core, optional subunits, hinged domains), :class:`Component`,
  :class:`HingedDomain`, :func:`state_atoms`, :func:`state_volume`, :func:`mass_fraction`.
* :mod:`.lobes` and :mod:`.builtin_complex`: the built-in asymmetric complex (:func:`build_complex`).
* :mod:`.phantom_set`: :class:`PhantomSet`, the ground-truth maps handed to the simulator.
* :mod:`.phantoms_discrete` / :mod:`.phantoms_continuous`: the presets.
* :mod:`.phantoms_from_maps` / :mod:`.phantoms_from_model`: states from user maps or atomic models.

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

from collections.abc import Callable

from ..errors import InputError
from .builtin_complex import DEFAULT_SIGMA_A, DEFAULT_SPACING_A, build_complex, centre_complex
from .complex_model import (
    Complex,
    Component,
    HingedDomain,
    axis_angle_matrix,
    mass_fraction,
    mass_fractions,
    state_atoms,
    state_volume,
)
from .density import render
from .phantom_set import BOX_EXTENT_A, PhantomSet, default_pixel_size
from .phantoms_continuous import hinge, mixture
from .phantoms_discrete import assembly, ladder, rare, rare_spread, two_state_easy
from .phantoms_from_maps import load_map, resample_volume, states_from_maps
from .phantoms_from_model import ModelAtoms, complex_from_model, read_model_atoms, volume_from_model

__all__ = [
    "BOX_EXTENT_A",
    "DEFAULT_SIGMA_A",
    "DEFAULT_SPACING_A",
    "PRESETS",
    "Complex",
    "Component",
    "HingedDomain",
    "ModelAtoms",
    "PhantomSet",
    "assembly",
    "axis_angle_matrix",
    "build_complex",
    "centre_complex",
    "complex_from_model",
    "default_pixel_size",
    "hinge",
    "ladder",
    "load_map",
    "mass_fraction",
    "mass_fractions",
    "mixture",
    "preset",
    "rare",
    "rare_spread",
    "read_model_atoms",
    "render",
    "resample_volume",
    "state_atoms",
    "state_volume",
    "states_from_maps",
    "two_state_easy",
    "volume_from_model",
]

PRESETS: dict[str, Callable[..., PhantomSet]] = {
    "assembly": assembly,
    "two_state_easy": two_state_easy,
    "hinge": hinge,
    "mixture": mixture,
    "rare": rare,
    "ladder": ladder,
    "rare_spread": rare_spread,
}


def preset(name: str, **kwargs) -> PhantomSet:
    """A built-in phantom by name (see :data:`PRESETS`), with the preset function's keyword arguments."""
    if name not in PRESETS:
        raise InputError(None, f"unknown phantom {name!r}; expected one of {sorted(PRESETS)}", field="phantom")
    return PRESETS[name](**kwargs)
