"""RELION 5 / WarpTools 2D-stack projects: optimisation set -> particles star + tomograms star.

Geometry (RELION 5): each tilt j of a tomogram has a 4x4 projection matrix ``P_j`` (rows
``rlnTomoProjX/Y/Z/W``) mapping tomogram coordinates to tilt-image coordinates. A particle with Euler
angles (rot, tilt, psi) -> ``A_i`` (RELION matrix; optional ``rlnTomoSubtomogramRot/Tilt/Psi`` -> ``S_i``) is
seen in tilt j with ``A_ij = P_j[:3, :3] @ S_i.T @ A_i @ diag(1, 1, -1)``. The reference-frame mirror
``diag(1, 1, -1)`` is not an assumption: reconstructing the real WarpTools data in ``../shared/data`` and
comparing with the reference map written by WarpTools selects it unambiguously (correlation 0.94 at 60 A;
without the mirror 0.70, every other reading of P, A, transposes and axis flips <= 0.85; see
``tests/test_real_data.py``). The 3D offset ``o`` (``rlnOriginX/Y/ZAngst``, true position = coordinate - origin)
appears in tilt j at the 2D shift ``-(P_j[:2, :3] @ o)``.

Coordinates: RELION 5 writes ``rlnCoordinateX/Y/Z`` in tilt-series pixels (or ``rlnCenteredCoordinate*Angst``);
WarpTools (tomogram names ending in ``.tomostar``) writes them in pixels of the exported particles
(``rlnImagePixelSize``). They only enter the defocus gradient: the particle's depth along the beam relative
to the tomogram centre, ``P_j[2, :3] @ (x - centre)`` in Angstrom, times ``rlnTomoHand``, is added to the tilt's
defocus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..physics.rotations import euler_to_matrix, mirror_z, tilt_angle_of
from .images import ImageSource
from .model import TiltSeriesParticles
from .star import (
    block_as_frame,
    int_column,
    key_value_number,
    numeric_column,
    parse_vector,
    read_star,
    require_columns,
    resolve_path,
    write_star,
)
from .validate import (
    check_box,
    check_flag,
    check_half_sets,
    check_pixel_size,
    check_positive,
    check_rotations,
    check_unique,
    check_visible,
)

log = logging.getLogger("tomohet")

PARTICLE_COLUMNS = [
    "rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnImageName",
]  # fmt: skip
# The reference-frame mirror proven on WarpTools data (module docstring).
REFERENCE_MIRROR = mirror_z()
TILT_COLUMNS = [
    "rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW",
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnMicrographPreExposure",
]  # fmt: skip


def is_optimisation_set(blocks: dict[str, Any]) -> bool:
    return any(isinstance(b, dict) and "rlnTomoParticlesFile" in b for b in blocks.values())


def is_relion5_particles(blocks: dict[str, Any]) -> bool:
    p = blocks.get("particles")
    return isinstance(p, pd.DataFrame) and "rlnTomoName" in p.columns


def read_optimisation_set(path: Path, blocks: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Paths of the particles and tomograms stars named by an optimisation set (``blocks``: already parsed)."""
    blocks = read_star(path) if blocks is None else blocks
    kv: dict[str, Any] = {}
    for b in blocks.values():
        if isinstance(b, dict):
            kv.update(b)
    for key in ("rlnTomoParticlesFile", "rlnTomoTomogramsFile"):
        if key not in kv:
            raise InputError(path, "optimisation set lacks this entry", key)
    base = path.parent
    return (
        resolve_path(str(kv["rlnTomoParticlesFile"]), base, Path.cwd()),
        resolve_path(str(kv["rlnTomoTomogramsFile"]), base, Path.cwd()),
    )


def find_tomograms_star(particles_star: Path) -> Path:
    """The tomograms star beside a particles star (``*_tomograms.star`` or an optimisation set naming it)."""
    for cand in sorted(particles_star.parent.glob("*optimisation_set.star")):
        p, t = read_optimisation_set(cand)
        if p.resolve() == particles_star.resolve():
            return t
    cands = sorted(particles_star.parent.glob("*tomograms.star"))
    if len(cands) == 1:
        return cands[0]
    raise InputError(particles_star, "cannot find the tomograms star; pass the optimisation set instead")


def _tilt_tables(tpath: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
    blocks = read_star(tpath)
    glob = block_as_frame(blocks, "global", tpath)
    require_columns(glob, ["rlnTomoName"], tpath, "global")
    if len(glob) == 0:
        raise InputError(tpath, "no tomograms: data_global has no rows", "rlnTomoName")
    check_unique(glob["rlnTomoName"].astype(str).tolist(), tpath, "rlnTomoName", "tomogram")
    per_tomo = {}
    for name in glob["rlnTomoName"].astype(str):
        df = block_as_frame(blocks, name, tpath)
        require_columns(df, TILT_COLUMNS, tpath, name)
        if len(df) == 0:
            raise InputError(tpath, f"tilt series {name!r}: data_{name} has no tilt images", "rlnTomoProjX")
        per_tomo[name] = df
    return glob, per_tomo, blocks


def _projections(df: pd.DataFrame, tpath: Path, block: str) -> np.ndarray:
    """``[T, 4, 4]`` projection matrices of one tomogram."""
    rows = []
    for c in ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW"):
        vecs = [parse_vector(v, tpath, c, f"tilt series {block!r}, row {r + 1}: ") for r, v in enumerate(df[c])]
        if any(len(v) != 4 for v in vecs):
            raise InputError(tpath, f"data_{block}: projection rows must have 4 entries", c)
        rows.append(np.array(vecs))
    proj = np.stack(rows, axis=1)
    check_rotations(proj[:, :3, :3], tpath, block)
    return proj


def _optics_value(optics: pd.DataFrame, groups: np.ndarray, col: str, path: Path, default=None) -> np.ndarray:
    if col not in optics.columns:
        if default is None:
            raise InputError(path, "required column missing from data_optics", col)
        return np.full(len(groups), default, dtype=np.float64)
    ids = int_column(optics, "rlnOpticsGroup", path, "optics")
    table = dict(zip(ids, numeric_column(optics, col, path, "optics"), strict=True))
    try:
        return np.array([table[g] for g in groups], dtype=np.float64)
    except KeyError as exc:
        raise InputError(
            path, f"optics group {exc.args[0]} used by a particle is not defined", "rlnOpticsGroup"
        ) from exc


def read_relion5(
    path: str | Path,
    tomograms: str | Path | None = None,
    *,
    pixel_size: float | None = None,
    blocks: dict[str, Any] | None = None,
) -> TiltSeriesParticles:
    """Read a RELION 5 / WarpTools 2D-stack project from its optimisation set or its particles star.

    ``pixel_size`` (Angstrom) overrides the particles' ``rlnImagePixelSize``: origins (``rlnOrigin*Angst``) and
    WarpTools coordinates (in particle pixels) are converted with it. ``blocks``: ``path`` already parsed."""
    path = Path(path)
    blocks = read_star(path) if blocks is None else blocks
    if is_optimisation_set(blocks):
        ppath, tpath = read_optimisation_set(path, blocks)
        pblocks = read_star(ppath)
    else:
        ppath, pblocks = path, blocks
        tpath = Path(tomograms) if tomograms else find_tomograms_star(path)
    if not is_relion5_particles(pblocks):
        raise InputError(ppath, "not a RELION 5 particles star (no data_particles with rlnTomoName)")
    parts = pblocks["particles"]
    n = len(parts)
    if n == 0:
        raise InputError(ppath, "no particles: data_particles has no rows", "rlnTomoName")
    require_columns(parts, PARTICLE_COLUMNS, ppath, "particles")
    general = pblocks.get("general", {})
    if isinstance(general, dict) and key_value_number(general, "rlnTomoSubTomosAre2DStacks", ppath, "general", 1) != 1:
        raise InputError(
            ppath,
            "these are 3D subtomograms, not 2D stacks; use the subtomogram reader",
            "rlnTomoSubTomosAre2DStacks",
        )
    optics = block_as_frame(pblocks, "optics", ppath)
    needed = ["rlnOpticsGroup", "rlnImageSize"] + (["rlnImagePixelSize"] if pixel_size is None else [])
    require_columns(optics, needed, ppath, "optics")
    check_unique(int_column(optics, "rlnOpticsGroup", ppath, "optics"), ppath, "rlnOpticsGroup", "optics group")
    glob, per_tomo, tblocks = _tilt_tables(tpath)

    groups = int_column(parts, "rlnOpticsGroup", ppath, "particles") if "rlnOpticsGroup" in parts else np.ones(n, int)
    if "rlnOpticsGroup" not in parts and len(optics) > 1:
        raise InputError(ppath, "several optics groups but particles lack the column", "rlnOpticsGroup")
    boxes = _optics_value(optics, groups, "rlnImageSize", ppath)
    if len(set(boxes)) != 1:
        raise InputError(ppath, "particles with different box sizes cannot be combined", "rlnImageSize")
    box = check_box(float(boxes[0]), ppath)
    if pixel_size is None:
        apixs = _optics_value(optics, groups, "rlnImagePixelSize", ppath)
        if len(set(apixs)) != 1:
            raise InputError(ppath, "particles with different pixel sizes cannot be combined", "rlnImagePixelSize")
        apix = check_pixel_size(float(apixs[0]), ppath, "rlnImagePixelSize")
    else:
        apix = check_pixel_size(float(pixel_size), ppath, "pixel_size")
        log.info("%s: pixel size %.4g A from the override (rlnImagePixelSize not used)", ppath, apix)

    # per-tomogram acquisition from data_global (falls back to optics)
    tomo_names = parts["rlnTomoName"].astype(str).to_numpy()
    for t in np.unique(tomo_names):
        if t not in per_tomo:
            raise InputError(tpath, f"tomogram {t!r} used by particles is not in data_global", "rlnTomoName")
    row_of = {t: i for i, t in enumerate(glob["rlnTomoName"].astype(str))}
    trow = np.array([row_of[t] for t in tomo_names], dtype=np.int64)

    def acq(col: str, default: float | None) -> np.ndarray:
        if col in glob.columns:
            return numeric_column(glob, col, tpath, "global")[trow]
        return _optics_value(optics, groups, col, ppath, default)

    voltage = check_positive(acq("rlnVoltage", None), ppath, "rlnVoltage", "the voltage (kV)")
    cs = acq("rlnSphericalAberration", None)
    ac = acq("rlnAmplitudeContrast", 0.1)
    hand = numeric_column(glob, "rlnTomoHand", tpath, "global")[trow] if "rlnTomoHand" in glob else np.full(n, -1.0)
    check_flag(np.abs(hand), tpath, "rlnTomoHand", "expected -1 or 1", (1,))
    ts_apix = acq("rlnTomoTiltSeriesPixelSize", 1.0)
    check_positive(ts_apix, tpath, "rlnTomoTiltSeriesPixelSize", "the tilt-series pixel size")
    premult = _optics_value(optics, groups, "rlnCtfDataAreCtfPremultiplied", ppath, 0.0)
    check_flag(premult, ppath, "rlnCtfDataAreCtfPremultiplied", "expected 0 or 1")
    if len(set(premult)) != 1:
        raise InputError(
            ppath, "mixed CTF-premultiplied optics groups are not supported", "rlnCtfDataAreCtfPremultiplied"
        )

    ntilt = {t: len(df) for t, df in per_tomo.items()}
    tmax = max(ntilt[t] for t in np.unique(tomo_names))
    proj = {t: _projections(per_tomo[t], tpath, t) for t in np.unique(tomo_names)}

    # particle pose
    a_part = particle_matrices(parts, ppath) @ REFERENCE_MIRROR
    origin = origins_A(parts, ppath) / apix  # image pixels
    pos = _centred_coordinates(parts, ppath, tomo_names, apix, ts_apix, _tomogram_sizes(glob, tpath, trow))

    rotations = torch.zeros(n, tmax, 3, 3, dtype=torch.float64)
    rotations[:] = torch.eye(3, dtype=torch.float64)
    shifts = torch.zeros(n, tmax, 2)
    du, dv, dang = (torch.zeros(n, tmax) for _ in range(3))
    dose, scale, tilt_deg = torch.zeros(n, tmax), torch.zeros(n, tmax), torch.zeros(n, tmax)
    visible = torch.zeros(n, tmax, dtype=torch.bool)
    for t in np.unique(tomo_names):
        sel = np.flatnonzero(tomo_names == t)
        df = per_tomo[t]
        nt = ntilt[t]
        p3 = torch.from_numpy(proj[t][:, :3, :3])  # [T, 3, 3]
        rotations[sel, :nt] = p3[None] @ a_part[sel][:, None]
        shifts[sel, :nt] = -torch.einsum("tij,nj->nti", p3[:, :2, :], torch.from_numpy(origin[sel])).float()
        depth = torch.einsum("tj,nj->nt", p3[:, 2, :], torch.from_numpy(pos[sel]))  # Angstrom along the beam
        offset = _particle_defocus_offset(depth, torch.from_numpy(hand[sel])[:, None])
        du[sel, :nt] = (torch.from_numpy(numeric_column(df, "rlnDefocusU", tpath, t))[None] + offset).float()
        dv[sel, :nt] = (torch.from_numpy(numeric_column(df, "rlnDefocusV", tpath, t))[None] + offset).float()
        dang[sel, :nt] = torch.from_numpy(numeric_column(df, "rlnDefocusAngle", tpath, t)).float()[None]
        dose[sel, :nt] = torch.from_numpy(numeric_column(df, "rlnMicrographPreExposure", tpath, t)).float()[None]
        if "rlnCtfScalefactor" in df.columns:
            scale[sel, :nt] = torch.from_numpy(numeric_column(df, "rlnCtfScalefactor", tpath, t)).float()[None]
        else:
            scale[sel, :nt] = 1.0
        tilt_deg[sel, :nt] = tilt_angle_of(p3).float()[None]
        visible[sel, :nt] = True
    if "rlnTomoVisibleFrames" in parts.columns:
        for i, v in enumerate(parts["rlnTomoVisibleFrames"]):
            flags = parse_vector(v, ppath, "rlnTomoVisibleFrames", f"row {i + 1} of data_particles: ")
            nt = ntilt[tomo_names[i]]
            if len(flags) != nt:
                raise InputError(
                    ppath,
                    f"row {i + 1}: {len(flags)} flags for a tomogram with {nt} tilts",
                    "rlnTomoVisibleFrames",
                )
            visible[i, :nt] &= torch.tensor(flags) > 0
    names = (
        parts["rlnTomoParticleName"].astype(str).tolist()
        if "rlnTomoParticleName" in parts
        else [f"{t}/{i + 1}" for i, t in enumerate(tomo_names)]
    )
    check_unique(names, ppath, "rlnTomoParticleName" if "rlnTomoParticleName" in parts else "rlnTomoName")
    check_unique(parts["rlnImageName"].astype(str).tolist(), ppath, "rlnImageName", "image stack")
    check_visible(visible.numpy(), names, ppath, "rlnTomoVisibleFrames")

    # images: one stack per particle, frame j = tilt j
    base = ppath.parent
    paths: list[Path] = []
    file_index = np.full((n, tmax), -1, dtype=np.int64)
    frame = np.full((n, tmax), -1, dtype=np.int64)
    for i, name in enumerate(parts["rlnImageName"].astype(str)):
        if "@" in name:
            raise InputError(ppath, f"row {i + 1}: expected one 2D stack per particle, got {name!r}", "rlnImageName")
        paths.append(resolve_path(name, base, Path.cwd()))
        nt = ntilt[tomo_names[i]]
        file_index[i, :nt] = i
        frame[i, :nt] = np.arange(nt)
    file_index[~visible.numpy()] = -1
    if "rlnRandomSubset" in parts:
        half = check_half_sets(int_column(parts, "rlnRandomSubset", ppath, "particles"), ppath)
    else:
        half = (np.arange(n) % 2) + 1
    return TiltSeriesParticles(
        names=names, box=box, pixel_size=apix, rotations=rotations, shifts=shifts,
        defocus_u=du, defocus_v=dv, defocus_angle=dang, phase_shift=torch.zeros(n, tmax),
        dose=dose, ctf_scale=scale, tilt_angle=tilt_deg, visible=visible,
        voltage=torch.from_numpy(voltage).float(), spherical_aberration=torch.from_numpy(cs).float(),
        amplitude_contrast=torch.from_numpy(ac).float(), ctf_premultiplied=bool(premult[0]),
        images=ImageSource(paths, file_index, frame, box, ppath),
        tomogram=tomo_names.tolist(), half_set=half, source_format="relion5", source_path=path,
        tables={"particles_blocks": pblocks, "tomograms_blocks": tblocks, "particles_star": ppath,
                "tomograms_star": tpath},
    )  # fmt: skip


def particle_matrices(parts: pd.DataFrame, ppath: Path) -> torch.Tensor:
    """RELION rotation matrices ``[N, 3, 3]`` of the particles' poses in the tomogram frame: the Euler matrix of
    ``rlnAngleRot/Tilt/Psi`` composed with the subtomogram frame (``S^T A``) when ``rlnTomoSubtomogram*`` is
    present. Viewers place a RELION map in its tomogram with this matrix: the reference point ``r`` (Angstrom
    from the box centre) sits at ``A r`` from the particle's position (``analysis.insitu``)."""

    def matrices(cols: tuple[str, str, str]) -> torch.Tensor:
        return euler_to_matrix(*(numeric_column(parts, c, ppath, "particles") for c in cols))

    a_part = matrices(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    if "rlnTomoSubtomogramRot" in parts.columns:
        s = matrices(("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"))
        a_part = s.transpose(-1, -2) @ a_part
    return a_part


def origins_A(parts: pd.DataFrame, ppath: Path) -> np.ndarray:
    """3D offsets ``[N, 3]`` (``rlnOriginX/Y/ZAngst``, zero where absent); true position = coordinate - origin."""
    origin = np.zeros((len(parts), 3))
    for k, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        if c in parts.columns:
            origin[:, k] = numeric_column(parts, c, ppath, "particles")
    return origin


def _tomogram_sizes(glob: pd.DataFrame, tpath: Path, trow: np.ndarray) -> np.ndarray:
    """``[N, 3]`` tomogram size (tilt-series pixels, ``rlnTomoSizeX/Y/Z``; 0 where absent) per particle."""
    return np.stack([numeric_column(glob, f"rlnTomoSize{a}", tpath, "global")[trow] if f"rlnTomoSize{a}" in glob
                     else np.zeros(len(trow)) for a in "XYZ"], 1)  # fmt: skip


def _centred_coordinates(parts: pd.DataFrame, ppath: Path, tomo_names: np.ndarray, apix: float,
                         ts_apix: np.ndarray, size: np.ndarray) -> np.ndarray:  # fmt: skip
    """Particle coordinates ``[N, 3]`` relative to the tomogram centre, in Angstrom (module docstring: RELION
    5 pixels or ``rlnCenteredCoordinate*Angst``, WarpTools particle pixels), before the origin offsets."""
    if "rlnCenteredCoordinateXAngst" in parts.columns:
        return np.stack([numeric_column(parts, f"rlnCenteredCoordinate{a}Angst", ppath, "particles") for a in "XYZ"], 1)
    xyz = np.stack([numeric_column(parts, f"rlnCoordinate{a}", ppath, "particles") for a in "XYZ"], 1)
    warp = all(str(t).endswith(".tomostar") for t in tomo_names)
    coord_apix = np.full(len(parts), apix) if warp else ts_apix
    return xyz * coord_apix[:, None] - size / 2 * ts_apix[:, None]


def _particle_defocus_offset(depth: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """Defocus change (Angstrom) of a particle at ``depth`` (Angstrom along the beam, relative to the
    tomogram centre); ``rlnTomoHand`` is the slope of defocus over image-space z (RELION 5's definition)."""
    return hand * depth


def write_relion5(
    dataset: TiltSeriesParticles,
    out_dir: str | Path,
    prefix: str,
    particles: pd.DataFrame | None = None,
    image_root: Path | None = None,
) -> Path:
    """Write a RELION 5 project (particles star, tomograms star, optimisation set) and return the path of
    the optimisation set (``{prefix}_particles.star`` ..., or ``particles.star`` ... for an empty prefix).
    ``particles`` replaces the particle table (e.g. with ``rlnClassNumber`` added or
    a subset of rows); image paths are rewritten relative to the new particles star."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dataset.source_format != "relion5":
        raise ValueError("write_relion5 needs a dataset read from (or built as) a RELION 5 project")
    pblocks = dict(dataset.tables["particles_blocks"])
    parts = (pblocks["particles"] if particles is None else particles).copy()
    src_base = Path(dataset.tables["particles_star"]).parent if image_root is None else image_root
    stem = f"{prefix}_" if prefix else ""
    pstar = out_dir / f"{stem}particles.star"
    tstar = out_dir / f"{stem}tomograms.star"
    oset = out_dir / f"{stem}optimisation_set.star"
    parts["rlnImageName"] = [
        _relative(resolve_path(n, src_base, Path.cwd()), out_dir) for n in parts["rlnImageName"].astype(str)
    ]
    pblocks["particles"] = parts
    if not isinstance(pblocks.get("general"), dict):
        pblocks = {"general": {"rlnTomoSubTomosAre2DStacks": 1}, **pblocks}
    for p in (pstar, tstar, oset):
        if dataset.source_path is not None and p.resolve() == Path(dataset.source_path).resolve():
            raise InputError(p, "refusing to overwrite an input file; choose another output folder")
    write_star(pblocks, pstar)
    write_star(dataset.tables["tomograms_blocks"], tstar)
    write_star({"": {"rlnTomoParticlesFile": pstar.name, "rlnTomoTomogramsFile": tstar.name}}, oset)
    return oset


def _relative(path: Path, base: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), base.resolve())


@dataclass
class Placements:
    """Where each particle of a RELION 5 particles star sits in its tomogram (no images read)."""

    names: list[str]
    tomogram: np.ndarray  # [N] tomogram name per particle
    position_A: np.ndarray  # [N, 3] particle centre (coordinate - origin) from the tomogram centre, Angstrom
    tomogram_size_A: np.ndarray  # [N, 3] tomogram extent (rlnTomoSize x tilt-series pixel size; 0 unknown)
    rotation: np.ndarray  # [N, 3, 3] RELION matrices (particle_matrices)
    table: pd.DataFrame  # data_particles as read, every column
    particles_star: Path
    tomograms_star: Path


def read_placements(path: str | Path, tomograms: str | Path | None = None) -> Placements:
    """Positions, orientations and tomograms of the particles of an optimisation set or particles star (with
    its tomograms star): the geometry of :func:`read_relion5`, for placing states back in their tomograms."""
    path = Path(path)
    blocks = read_star(path)
    if is_optimisation_set(blocks):
        ppath, tpath = read_optimisation_set(path, blocks)
        blocks = read_star(ppath)
    else:
        ppath, tpath = path, Path(tomograms) if tomograms else find_tomograms_star(path)
    if not is_relion5_particles(blocks):
        raise InputError(ppath, "not a RELION 5 particles star (no data_particles with rlnTomoName)")
    parts = blocks["particles"]
    require_columns(parts, PARTICLE_COLUMNS[:-1], ppath, "particles")
    optics = block_as_frame(blocks, "optics", ppath)
    n = len(parts)
    groups = int_column(parts, "rlnOpticsGroup", ppath, "particles") if "rlnOpticsGroup" in parts else np.ones(n, int)
    apix = float(_optics_value(optics, groups, "rlnImagePixelSize", ppath, 1.0)[0])
    glob = block_as_frame(read_star(tpath), "global", tpath)
    require_columns(glob, ["rlnTomoName"], tpath, "global")
    tomo_names = parts["rlnTomoName"].astype(str).to_numpy()
    row_of = {t: i for i, t in enumerate(glob["rlnTomoName"].astype(str))}
    missing = sorted(set(tomo_names) - set(row_of))
    if missing:
        raise InputError(tpath, f"tomogram {missing[0]!r} used by particles is not in data_global", "rlnTomoName")
    trow = np.array([row_of[t] for t in tomo_names], dtype=np.int64)
    if "rlnTomoTiltSeriesPixelSize" in glob.columns:
        ts_apix = numeric_column(glob, "rlnTomoTiltSeriesPixelSize", tpath, "global")[trow]
    else:
        ts_apix = _optics_value(optics, groups, "rlnTomoTiltSeriesPixelSize", ppath, 1.0)
    size = _tomogram_sizes(glob, tpath, trow)
    pos = _centred_coordinates(parts, ppath, tomo_names, apix, ts_apix, size) - origins_A(parts, ppath)
    names = (parts["rlnTomoParticleName"].astype(str).tolist() if "rlnTomoParticleName" in parts
             else [f"{t}/{i + 1}" for i, t in enumerate(tomo_names)])  # fmt: skip
    return Placements(names, tomo_names, pos, size * ts_apix[:, None], particle_matrices(parts, ppath).numpy(),
                      parts, ppath, tpath)  # fmt: skip
