"""The :class:`PhantomSet` type (ground-truth maps plus what the simulator draws from) and its construction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .complex_model import Complex, state_atoms, state_volume

BOX_EXTENT_A = 384.0  # default box edge in Angstrom: 12 A/px at box 32, 6 at 64, 3 at 128


def default_pixel_size(box: int) -> float:
    """Pixel size (Angstrom) that makes a ``box``-voxel box 384 Angstrom wide (12 A/px at box 32)."""
    return BOX_EXTENT_A / box


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


def check_fits(cx: Complex, box: int, pixel_size: float, angles: Iterable[float]) -> None:
    """Raise :class:`InputError` unless the full complex, at every hinge angle in ``angles``, fits in the box."""
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


def build_phantom_set(
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
    """A :class:`PhantomSet` of the complex ``cx``: one map per composition (the present subunits) and hinge
    angle in ``angles`` (``None``: a discrete phantom at angle 0); ``weights`` the states' abundances (default
    equal), ``stated`` the nominal mass fractions; ``pixel_size`` defaults to :func:`default_pixel_size`."""
    p = default_pixel_size(box) if pixel_size is None else float(pixel_size)
    comps = [frozenset(c) for c in compositions]
    grid = [0.0] if angles is None else [float(a) for a in angles]
    check_fits(cx, box, p, grid)
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


def state_label(comp: Iterable[str]) -> str:
    """A state's name from its present subunits: ``"core"``, then the subunits sorted, joined by ``+``."""
    return "+".join(["core", *sorted(comp)])
