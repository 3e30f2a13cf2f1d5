"""Particle poses as corrections of the poses a dataset was read with.

A refined pose is kept as a correction of the particle's written pose, in the reference frame, so that it applies
to every input format alike: a rotation ``D_i`` (``[3, 3]``) right-multiplied onto each of the particle's image
rotations (``A_ij -> A_ij D_i``) and an offset ``u_i`` (pixels, reference frame of the corrected pose): the
particle's centre is the reference point ``u_i``, seen in image j at ``(A_ij D_i u_i)[:2]`` from where the
written pose put it (see :mod:`tomohet.data.model` for the image conventions). RELION 5 stars store the
corrected pose as new Euler angles and origins (:func:`relion5_posed_table`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch

from ..errors import InputError
from ..physics.rotations import matrix_to_euler, rotation_angle
from .relion5 import REFERENCE_MIRROR, origins_A, particle_matrices
from .star import format_vector, parse_vector

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
# RELION's labels for the pose a refinement started from (it keeps them as priors of local searches)
PRIOR_COLUMNS = {
    "rlnAngleRot": "rlnAngleRotPrior", "rlnAngleTilt": "rlnAngleTiltPrior", "rlnAnglePsi": "rlnAnglePsiPrior",
    "rlnOriginXAngst": "rlnOriginXPriorAngst", "rlnOriginYAngst": "rlnOriginYPriorAngst",
    "rlnOriginZAngst": "rlnOriginZPriorAngst",
}  # fmt: skip


def apply_pose_corrections(dataset, rotation: torch.Tensor, offset_px: torch.Tensor):
    """A copy of a 2D-stack ``dataset`` seen with corrected poses: image rotations ``A_ij D_i`` and image shifts
    ``s_ij + (A_ij D_i u_i)[:2]``. ``rotation`` ``[N, 3, 3]`` (``D``), ``offset_px`` ``[N, 3]`` (``u``, pixels).
    The images and tables are shared with ``dataset``, nothing is modified."""
    rots = dataset.rotations @ rotation.to(dataset.rotations.dtype)[:, None]
    moved = torch.einsum("ntij,nj->nti", rots, offset_px.to(rots.dtype))[..., :2]
    return dataclasses.replace(dataset, rotations=rots, shifts=dataset.shifts + moved.to(dataset.shifts.dtype))


def relion5_corrections(
    written: torch.Tensor, true: torch.Tensor, centre_offset_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrections ``(D, u)`` that turn RELION 5 particle matrices ``written`` ``[N, 3, 3]`` into ``true`` ones
    and move the centre by ``centre_offset_px`` ``[N, 3]`` (tomogram frame, pixels: true centre = written
    centre + offset). With the reader's reference mirror ``M`` (``A_ij = P_j A_i M``):
    ``D = M W^T T M`` and ``u = M T^T v``, so that ``A_ij D = P_j T M`` and ``A_ij D u = P_j v``."""
    m = REFERENCE_MIRROR.to(written.dtype)
    d = m @ written.transpose(-1, -2) @ true.to(written.dtype) @ m
    u = torch.einsum("ij,njk,nk->ni", m, true.to(written.dtype).transpose(-1, -2), centre_offset_px.to(written.dtype))
    return d, u


def relion5_posed_table(dataset, rotation: torch.Tensor, offset_px: torch.Tensor) -> pd.DataFrame:
    """The RELION 5 particles table of ``dataset`` with its poses corrected by ``(D, u)``
    (:func:`apply_pose_corrections`): new ``rlnAngleRot/Tilt/Psi`` (``A M D M``) and ``rlnOriginX/Y/ZAngst``
    (``o - apix A_new M u``; true position = coordinate - origin), the poses read kept in RELION's prior
    columns (``rlnAngleRotPrior`` ...) unless the table already has them. Rows, names and every other column
    are unchanged."""
    parts = dataset.tables["particles_blocks"]["particles"].copy()
    ppath = dataset.tables["particles_star"]
    if "rlnTomoSubtomogramRot" in parts.columns:
        raise InputError(ppath, "writing refined poses of particles with a subtomogram frame is not supported",
                         "rlnTomoSubtomogramRot")  # fmt: skip
    m = REFERENCE_MIRROR
    old = particle_matrices(parts, ppath)
    new = old @ m @ rotation.to(old.dtype) @ m
    centre = torch.einsum("nij,jk,nk->ni", new, m, offset_px.to(old.dtype)).numpy()  # tomogram frame, pixels
    origin = origins_A(parts, ppath) - centre * dataset.pixel_size
    for col in (*ANGLE_COLUMNS, *ORIGIN_COLUMNS):
        prior = PRIOR_COLUMNS[col]
        if prior not in parts.columns:
            parts[prior] = parts[col] if col in parts.columns else 0.0
    for col, values in zip(ANGLE_COLUMNS, matrix_to_euler(new), strict=True):
        parts[col] = values.numpy()
    for k, col in enumerate(ORIGIN_COLUMNS):
        parts[col] = origin[:, k]
    return parts


def subtomograms_with_corrections(dataset, rotation: torch.Tensor, offset_px: torch.Tensor):
    """A copy of a :class:`~tomohet.data.subtomo.Subtomograms` dataset seen with corrected poses: rotations
    ``R_i D_i`` and shifts ``s_i - R_i D_i u_i`` (the particle sits at ``-s``, so its centre moves by ``R_i D_i u_i``
    in the subtomogram), with the particles table's ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y/ZAngst`` (and
    RELION 3.0's pixel origins, where the table has them) set to match and the poses read kept in RELION's prior
    columns unless the table already has them. Nothing is modified."""
    rots = dataset.rotations @ rotation.to(dataset.rotations.dtype)
    shifts = dataset.shifts - torch.einsum("nij,nj->ni", rots, offset_px.to(rots.dtype)).to(dataset.shifts.dtype)
    blocks = dict(dataset.tables.get("blocks", {}))
    name = next((k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns), None)
    if name is not None:
        parts = blocks[name].copy()
        for col in (*ANGLE_COLUMNS, *ORIGIN_COLUMNS):
            if PRIOR_COLUMNS[col] not in parts.columns:
                parts[PRIOR_COLUMNS[col]] = parts[col] if col in parts.columns else 0.0
        for col, values in zip(ANGLE_COLUMNS, matrix_to_euler(rots), strict=True):
            parts[col] = values.numpy()
        for k, axis in enumerate("XYZ"):
            parts[f"rlnOrigin{axis}Angst"] = shifts[:, k].numpy() * dataset.pixel_size
            if f"rlnOrigin{axis}" in parts.columns:
                parts[f"rlnOrigin{axis}"] = shifts[:, k].numpy()
        blocks[name] = parts
    return dataclasses.replace(dataset, rotations=rots, shifts=shifts, tables={**dataset.tables, "blocks": blocks})


def with_refined_poses(dataset, rotation: torch.Tensor, offset_px: torch.Tensor):
    """:func:`apply_pose_corrections`, and for RELION 5 input the particles table with the corrected poses too
    (:func:`relion5_posed_table`), so that the particles written from it carry them; subtomograms:
    :func:`subtomograms_with_corrections`. Nothing is modified."""
    if dataset.kind == "3d":
        return subtomograms_with_corrections(dataset, rotation, offset_px)
    posed = apply_pose_corrections(dataset, rotation, offset_px)
    if dataset.source_format == "relion5":
        table = relion5_posed_table(dataset, rotation, offset_px)
        blocks = {**dataset.tables["particles_blocks"], "particles": table}
        posed.tables = {**dataset.tables, "particles_blocks": blocks}
    return posed


def write_pose_corrections(path: str | Path, names: list[str], rotation: torch.Tensor, offset_px: torch.Tensor,
                           pixel_size: float) -> Path:  # fmt: skip
    """``poses.csv``: per particle the correction's angle (degrees), its rotation matrix (``d00 .. d22``, reference
    frame) and the centre offset (reference frame, Angstrom), for any input format."""
    d = rotation.reshape(-1, 9).numpy()
    offsets = {f"offset_{a}_A": offset_px[:, k].numpy() * pixel_size for k, a in enumerate("xyz")}
    table = pd.DataFrame({"particle": names, "correction_deg": torch.rad2deg(rotation_angle(rotation)).numpy(),
                          **{f"d{i // 3}{i % 3}": d[:, i] for i in range(9)}, **offsets})  # fmt: skip
    table.to_csv(path, index=False, float_format="%.6g")
    return Path(path)


def apply_tilt_shifts(dataset, tomograms: list[str], shifts_px: torch.Tensor):
    """A copy of a 2D-stack ``dataset`` whose particle images in tilt j of tomogram ``tomograms[k]`` sit
    ``shifts_px[k, j]`` (x, y pixels) from where its geometry put them (per-tilt alignment corrections)."""
    lookup = {n: i for i, n in enumerate(tomograms)}
    idx = torch.tensor([lookup[t] for t in dataset.tomogram])
    moved = shifts_px[idx, : dataset.n_tilts].to(dataset.shifts.dtype)
    return dataclasses.replace(dataset, shifts=dataset.shifts + moved)


def relion5_shifted_tomograms(dataset, tomograms: list[str], shifts_px: torch.Tensor) -> dict:
    """The RELION 5 tomograms-star blocks of ``dataset`` with per-tilt alignment corrections folded into the
    projection matrices: the translation of ``rlnTomoProjX/Y`` (tilt-series pixels) moves by ``shifts_px`` x
    (image pixel size / tilt-series pixel size), so a re-extraction (RELION 5, WarpTools) centres the particles.
    The stacks tomohet reads are the ones already extracted: it does not read these translations."""
    blocks = {k: v.copy() if isinstance(v, pd.DataFrame) else v for k, v in dataset.tables["tomograms_blocks"].items()}
    glob = blocks["global"]
    optics = dataset.tables["particles_blocks"].get("optics")
    for k, name in enumerate(tomograms):
        row = glob[glob["rlnTomoName"].astype(str) == name]
        if name not in blocks or row.empty:
            continue
        if "rlnTomoTiltSeriesPixelSize" in row.columns:
            ts_apix = float(row["rlnTomoTiltSeriesPixelSize"].iloc[0])
        elif isinstance(optics, pd.DataFrame) and "rlnTomoTiltSeriesPixelSize" in optics.columns:
            ts_apix = float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0])
        else:
            raise InputError(dataset.tables["tomograms_star"], "no tilt-series pixel size to write alignment "
                             "corrections in", "rlnTomoTiltSeriesPixelSize")  # fmt: skip
        scale = dataset.pixel_size / ts_apix
        df = blocks[name]
        for axis, col in enumerate(("rlnTomoProjX", "rlnTomoProjY")):
            rows = [parse_vector(v, dataset.tables["tomograms_star"], col, f"tilt series {name!r}: ") for v in df[col]]
            for j, r in enumerate(rows):
                r[3] += float(shifts_px[k, j, axis]) * scale
            df[col] = [format_vector(r) for r in rows]
    return blocks
