"""States back in their tomograms: per-tomogram views coloured by state and ChimeraX scenes.

Geometry (one convention, :func:`tomohet.data.relion5.read_placements`): a particle's centre ``p`` is in
Angstrom from its tomogram's corner (voxel 0), i.e. its centred position plus half the tomogram extent; its
pose is RELION's Euler matrix ``A`` (``rlnAngleRot/Tilt/Psi``, ZYZ, composed with ``rlnTomoSubtomogram*``), and a
point ``r`` of the state's map, in Angstrom from the map centre, sits at ``p + A r``. This is how the field's
viewers place RELION maps (ArtiaX; subtomo2Chimera by H. Bui; tomoDRGN's ``subtomo2chimerax``).

ChimeraX (``view matrix models #N,...``; https://www.cgl.ucsf.edu/chimerax/docs/user/commands/view.html#matrix)
takes the 3 x 4 matrix ``[R | t]`` (row by row) that maps a model's coordinates to scene coordinates. A map opened
from an MRC file has its coordinates in Angstrom from voxel 0 (origin 0 as tomohet writes them), so its centre
is ``c = (D / 2) * apix`` (the box centre of RELION and tomohet, voxel index D/2) and the placement is
``R = A``, ``t = p - A c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STATE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f"]  # fmt: skip


def state_colour(k: int) -> str:
    return STATE_COLOURS[k % len(STATE_COLOURS)]


def absolute_positions_A(position_A: np.ndarray, tomogram_size_A: np.ndarray) -> np.ndarray:
    """Positions ``[N, 3]`` from the tomogram's corner (Angstrom), from centred positions and extents (an
    unknown extent, 0, leaves the centred position)."""
    return np.asarray(position_A) + np.asarray(tomogram_size_A) / 2


def plot_tomogram(path: Path, positions_A: np.ndarray, labels: np.ndarray, extent_A: np.ndarray, title: str,
                  state_names: dict[int, str]) -> Path:  # fmt: skip
    """Top (XY) and side (XZ) views of one tomogram's particles (positions from its corner, Angstrom),
    coloured by state, with the tomogram's outline when its extent is known."""
    fig, (ax_xy, ax_xz) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1]})
    pos_nm = positions_A / 10.0
    for k in sorted(np.unique(labels)):
        sel = labels == k
        name = state_names.get(int(k), str(k))
        for ax, (i, j) in ((ax_xy, (0, 1)), (ax_xz, (0, 2))):
            ax.scatter(pos_nm[sel, i], pos_nm[sel, j], s=10, color=state_colour(int(k)), label=f"{name} ({sel.sum()})",
                       alpha=0.8, edgecolors="none")  # fmt: skip
    ext = np.asarray(extent_A) / 10.0
    for ax, (i, j), lab in ((ax_xy, (0, 1), ("X (nm)", "Y (nm)")), (ax_xz, (0, 2), ("X (nm)", "Z (nm)"))):
        if ext[i] > 0 and ext[j] > 0:
            ax.add_patch(plt.Rectangle((0, 0), ext[i], ext[j], fill=False, color="0.6", lw=0.8))
            ax.set_xlim(-0.02 * ext[i], 1.02 * ext[i])
            ax.set_ylim(-0.02 * ext[j], 1.02 * ext[j])
        ax.set_xlabel(lab[0])
        ax.set_ylabel(lab[1])
        ax.set_aspect("equal")
    ax_xy.set_title(f"{title}: top view (XY)")
    ax_xz.set_title("side view (XZ)")
    ax_xz.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="state")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclass
class StateMap:
    """A state's map for a ChimeraX scene: file, box (voxels), voxel size (Angstrom), display level."""

    path: Path
    box: int
    pixel_size: float
    level: float


def chimerax_matrix(rotation: np.ndarray, position_A: np.ndarray, box: int, pixel_size: float) -> np.ndarray:
    """The ``[3, 4]`` ``view matrix`` placing a map (box ``D``, voxel ``apix``) at ``position_A`` (from the
    tomogram corner) with RELION matrix ``rotation``: ``[A | p - A c]``, ``c = D/2 * apix`` (module docstring)."""
    c = np.full(3, box / 2 * pixel_size)
    return np.concatenate([rotation, (position_A - rotation @ c)[:, None]], 1)


def write_chimerax_scene(path: Path, positions_A: np.ndarray, rotations: np.ndarray, labels: np.ndarray,
                         maps: dict[int, StateMap], state_names: dict[int, str],
                         marker_radius_A: float = 60.0) -> Path:  # fmt: skip
    """A ChimeraX command script (``.cxc``) for one tomogram: each particle's state map opened and placed at its
    position and orientation (model ``#i`` = particle ``i`` of the script, in order), coloured by state; states
    without a map get a marker. Open it with ``chimerax scene.cxc`` (or ``open scene.cxc``); add the tomogram
    with ``open TOMO.mrc`` then ``volume #M voxelSize APIX`` (its voxel size in Angstrom)."""
    lines = ["# tomohet: states placed in their tomogram (positions in Angstrom from the tomogram corner)",
             "# model #i = particle i below; view matrix = [A | p - A c], A RELION's Euler matrix, c the map centre",
             "close session"]  # fmt: skip
    placed, markers = [], []
    for pos, rot, k in zip(positions_A, rotations, labels, strict=True):
        m = maps.get(int(k))
        if m is None:
            markers.append((pos, int(k)))
            continue
        placed.append((len(placed) + 1, chimerax_matrix(rot, pos, m.box, m.pixel_size), m, int(k)))
    for _, _, m, _ in placed:
        lines.append(f"open {m.path.resolve()}")
    for model, mat, m, k in placed:
        vals = ",".join(f"{v:.6f}" for v in mat.reshape(-1))
        lines.append(f"view matrix models #{model},{vals}")
        lines.append(f"volume #{model} level {m.level:.6g} color {state_colour(k)} style surface")
    if markers:
        mid = len(placed) + 1
        for pos, k in markers:
            x, y, z = pos
            lines.append(f"marker #{mid} position {x:.2f},{y:.2f},{z:.2f} color {state_colour(k)} "
                         f"radius {marker_radius_A:.1f}")  # fmt: skip
    names = ", ".join(f"{state_names.get(k, str(k))} {state_colour(k)}" for k in sorted(set(map(int, labels))))
    lines += [f"# states: {names}", "view"]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_chimerax_matrices(path: Path) -> dict[int, np.ndarray]:
    """The ``[3, 4]`` matrices of a scene's ``view matrix models`` lines, by model number (for checks)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("view matrix models #"):
            head, *vals = line.split("#", 1)[1].split(",")
            out[int(head)] = np.array([float(v) for v in vals]).reshape(3, 4)
    return out
