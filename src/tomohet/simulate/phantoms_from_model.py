"""Phantoms from atomic models (mmCIF / PDB via gemmi): atoms become pseudo-atoms weighted by atomic number x
occupancy, centred at the centre of mass."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .complex_model import Complex, Component, HingedDomain, state_volume


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
