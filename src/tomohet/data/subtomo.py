"""3D subtomograms: RELION 3.1 (subtomogram + 3D CTF volume) and RELION 4 pseudo-subtomograms (CTF-premultiplied
data + CTF^2 weights), read lazily, and written from a 2D-stack dataset.

Geometry: ``rotations [N, 3, 3]`` is the RELION matrix of the particle's Euler angles (``rlnAngleRot/Tilt/Psi``);
a subtomogram shows the reference rotated by it, ``subtomo_i(x) = V(R_i^T x)`` (its z projection is the projection
of V with ``R_i``). ``shifts [N, 3]`` (x, y, z) pixels from ``rlnOriginX/Y/ZAngst``: the particle sits at
``-shift`` from the box centre (RELION: true position = coordinate - origin).

Weights on disk: RELION 3.1 ``rlnCtfImage`` is a 3D CTF (not squared), RELION 4 ``rlnCtfImage`` holds CTF^2 (with
``rlnCtfDataAreCtfPremultiplied 1``). Either as a cubic centred volume ``D x D x D`` or in FFTW half layout
``D x D x (D//2+1)`` (x fastest = D//2+1), as RELION accepts both. The multiplicity of RELION 4-style output
is written beside the weights as ``<stem>_multiplicity.mrc`` (no RELION label exists) and read when present.

Writing from 2D stacks (:func:`write_relion31_subtomograms`): the subtomograms are made in the tomogram frame
in tomohet's handedness. The 2D reader's image rotations are ``A_ij = P_j S_i^T A_i M`` (``M = diag(1,1,-1)``,
see :mod:`tomohet.data.relion5`) = ``(P_j M)(M S_i^T A_i M)``: each image is inserted with its tilt rotation
``P_j M`` and the particle keeps the proper rotation ``M S_i^T A_i M`` as its Euler angles, so RELION 3.1
averaging the written subtomograms reproduces the map tomohet (and WarpTools) reconstruct from the 2D stacks,
with the same hand. Particles are centred on their refined position (coordinate - origin), so the written
origins are zero and the coordinates are copied from the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import mrcfile
import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..physics.rotations import euler_to_matrix, matrix_to_euler, mirror_z
from ..physics.subtomogram import batch_subtomograms, from_fftw_half, relion31_form, to_fftw_half
from .model import DatasetKind, TiltSeriesParticles, particle_chunks
from .mrc import write_volume
from .star import block_as_frame, int_column, numeric_column, read_star, require_columns, resolve_path, write_star
from .validate import check_box, check_flag, check_half_sets, check_pixel_size, check_positive, check_unique

MULTIPLICITY_SUFFIX = "_multiplicity.mrc"


@dataclass
class SubtomogramBatch:
    """B subtomograms with their weights, all float32."""

    particles: np.ndarray  # [B]
    data: torch.Tensor  # [B, D, D, D] real space
    ctf: torch.Tensor  # [B, D, D, D] full centred: the CTF (RELION 3.1) or CTF^2 (RELION 4) as stored
    weight: torch.Tensor  # [B, D, D, D] full centred CTF^2 per voxel (ctf**2 for RELION 3.1, ctf for RELION 4)
    multiplicity: torch.Tensor | None  # [B, D, D, D] full centred, when available
    rotations: torch.Tensor  # [B, 3, 3]
    shifts: torch.Tensor  # [B, 3] pixels


@dataclass
class Subtomograms:
    """N 3D subtomograms of box D at ``pixel_size`` Angstrom, read lazily from their MRC files."""

    kind: ClassVar[DatasetKind] = "3d"

    names: list[str]
    box: int
    pixel_size: float
    rotations: torch.Tensor  # [N, 3, 3] float64, RELION matrix of (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)
    shifts: torch.Tensor  # [N, 3] pixels (x, y, z)
    volume_paths: list[Path]
    ctf_paths: list[Path]
    multiplicity_paths: list[Path | None]
    ctf_premultiplied: bool  # True: RELION 4 pseudo-subtomograms (ctf files hold CTF^2)
    half_set: np.ndarray  # [N] 1 or 2
    tomogram: list[str]
    voltage: float
    spherical_aberration: float
    amplitude_contrast: float
    source_format: str  # "relion31" or "relion4"
    source_path: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def n_particles(self) -> int:
        return len(self.names)

    def _read(self, path: Path, column: str, shapes: list[tuple[int, ...]]) -> np.ndarray:
        if not path.exists():
            raise InputError(
                path, "file not found" + (f" (named in {self.source_path})" if self.source_path else ""), column
            )
        try:
            with mrcfile.mmap(path, mode="r", permissive=False) as m:
                arr = np.array(m.data, dtype=np.float32)
        except Exception as exc:
            raise InputError(path, f"not a readable MRC file ({exc})", column) from exc
        if arr.shape not in shapes:
            want = " or ".join("x".join(map(str, s[::-1])) for s in shapes)
            raise InputError(
                path, f"volume is {'x'.join(map(str, arr.shape[::-1]))}, expected {want} (box {self.box})", column
            )
        if not np.isfinite(arr).all():
            raise InputError(path, "volume contains NaN or Inf values", column)
        return arr

    def _weight_volume(self, path: Path, column: str) -> torch.Tensor:
        d = self.box
        arr = torch.from_numpy(self._read(path, column, [(d, d, d), (d, d, d // 2 + 1)]))
        return from_fftw_half(arr) if arr.shape[-1] != d else arr

    def batch(self, particles: np.ndarray | list[int] | slice) -> SubtomogramBatch:
        """Volumes ``[B, D, D, D]`` and weights of the selected particles, read from disk now."""
        idx = np.arange(self.n_particles)[particles] if isinstance(particles, slice) else np.asarray(particles)
        d = self.box
        data = torch.stack(
            [torch.from_numpy(self._read(self.volume_paths[i], "rlnImageName", [(d, d, d)])) for i in idx]
        )
        ctf = torch.stack([self._weight_volume(self.ctf_paths[i], "rlnCtfImage") for i in idx])
        mult = None
        if all(self.multiplicity_paths[i] is not None for i in idx) and len(idx):
            mult = torch.stack([self._weight_volume(self.multiplicity_paths[i], "multiplicity") for i in idx])  # type: ignore[arg-type]
        t = torch.from_numpy(idx)
        return SubtomogramBatch(
            particles=idx, data=data, ctf=ctf, weight=ctf if self.ctf_premultiplied else ctf**2,
            multiplicity=mult, rotations=self.rotations[t], shifts=self.shifts[t],
        )  # fmt: skip

    def chunks(self, size: int, particles: np.ndarray | None = None):
        """Yield particle index arrays of at most ``size`` particles (all particles by default)."""
        return particle_chunks(self.n_particles, size, particles)

    def summary(self) -> str:
        return (
            f"{self.n_particles} subtomograms, box {self.box}, {self.pixel_size:.3f} A/px, "
            f"{len(set(self.tomogram))} tomograms ({self.source_format})"
        )


def _particles_block(blocks: dict[str, Any]) -> pd.DataFrame | None:
    for name in ("particles", "images", ""):
        b = blocks.get(name)
        if isinstance(b, pd.DataFrame) and "rlnImageName" in b.columns:
            return b
    return None


def is_subtomogram_star(blocks: dict[str, Any]) -> bool:
    """A RELION 3.1/4/5 star of 3D subtomograms: optics with ``rlnImageDimensionality 3``, or
    ``rlnTomoSubTomosAre2DStacks 0``, or particles with ``rlnCtfImage`` (a 3D CTF per particle)."""
    parts = _particles_block(blocks)
    if parts is None:
        return False
    general = blocks.get("general")
    if isinstance(general, dict) and "rlnTomoSubTomosAre2DStacks" in general:
        return str(general["rlnTomoSubTomosAre2DStacks"]).strip() in ("0", "0.0")
    optics = blocks.get("optics")
    if isinstance(optics, pd.DataFrame) and "rlnImageDimensionality" in optics.columns:
        return bool((pd.to_numeric(optics["rlnImageDimensionality"], errors="coerce") == 3).all())
    return "rlnCtfImage" in parts.columns


def read_subtomograms(
    path: str | Path, *, pixel_size: float | None = None, blocks: dict[str, Any] | None = None
) -> Subtomograms:
    """Read a RELION 3.1 subtomogram star or a RELION 4 (or 5, ``rlnTomoSubTomosAre2DStacks 0``) pseudo-subtomogram
    star. Volumes are not loaded until :meth:`Subtomograms.batch`. ``pixel_size`` (Angstrom) overrides
    ``rlnImagePixelSize`` (``rlnOrigin*Angst`` are converted with it); ``blocks``: ``path`` already parsed."""
    path = Path(path)
    blocks = read_star(path) if blocks is None else blocks
    parts = _particles_block(blocks)
    if parts is None:
        raise InputError(path, "no data_particles block with rlnImageName", "rlnImageName")
    n = len(parts)
    if n == 0:
        raise InputError(path, "no particles: data_particles has no rows", "rlnImageName")
    optics = block_as_frame(blocks, "optics", path)
    needed = ["rlnOpticsGroup", "rlnImageSize"] + (["rlnImagePixelSize"] if pixel_size is None else [])
    require_columns(optics, needed, path, "optics")
    require_columns(parts, ["rlnImageName", "rlnCtfImage"], path, "particles")
    if "rlnImageDimensionality" in optics.columns:
        dims = numeric_column(optics, "rlnImageDimensionality", path, "optics")
        if (dims != 3).any():
            raise InputError(path, "expected 3 (3D subtomograms)", "rlnImageDimensionality")
    groups = int_column(parts, "rlnOpticsGroup", path, "particles") if "rlnOpticsGroup" in parts else np.ones(n, int)
    ids = int_column(optics, "rlnOpticsGroup", path, "optics")
    check_unique(ids, path, "rlnOpticsGroup", "optics group")
    missing = sorted(set(groups) - set(ids))
    if missing:
        raise InputError(path, f"optics group {missing[0]} used by a particle is not defined", "rlnOpticsGroup")

    def opt(col: str, default: float | None) -> float:
        if col not in optics.columns:
            if default is None:
                raise InputError(path, "required column missing from data_optics", col)
            return default
        vals = numeric_column(optics, col, path, "optics")
        used = vals[np.isin(ids, groups)]
        if len(set(used)) != 1:
            raise InputError(path, "particles with different values cannot be combined", col)
        return float(used[0])

    box = check_box(opt("rlnImageSize", None), path)
    if pixel_size is None:
        apix = check_pixel_size(opt("rlnImagePixelSize", None), path, "rlnImagePixelSize")
    else:
        apix = check_pixel_size(float(pixel_size), path, "pixel_size")
    premult = bool(check_flag(np.array([opt("rlnCtfDataAreCtfPremultiplied", 0.0)]), path,
                              "rlnCtfDataAreCtfPremultiplied", "expected 0 or 1")[0])  # fmt: skip
    angles = []
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        angles.append(numeric_column(parts, c, path, "particles") if c in parts.columns else np.zeros(n))
    rotations = euler_to_matrix(*angles)
    shifts = np.zeros((n, 3))
    for k, a in enumerate("XYZ"):
        if f"rlnOrigin{a}Angst" in parts.columns:
            shifts[:, k] = numeric_column(parts, f"rlnOrigin{a}Angst", path, "particles") / apix
        elif f"rlnOrigin{a}" in parts.columns:  # RELION 3.0: pixels
            shifts[:, k] = numeric_column(parts, f"rlnOrigin{a}", path, "particles")
    base = path.parent
    vols, ctfs, mults = [], [], []
    for i, (v, c) in enumerate(zip(parts["rlnImageName"].astype(str), parts["rlnCtfImage"].astype(str), strict=True)):
        for name, col in ((v, "rlnImageName"), (c, "rlnCtfImage")):
            if "@" in name or name.lower().endswith(".mrcs"):
                raise InputError(path, f"row {i + 1}: expected one 3D .mrc volume, got {name!r}", col)
        vols.append(resolve_path(v, base, Path.cwd()))
        cp = resolve_path(c, base, Path.cwd())
        ctfs.append(cp)
        mp = cp.with_name(cp.stem + MULTIPLICITY_SUFFIX)
        mults.append(mp if mp.exists() else None)
    if "rlnTomoParticleName" in parts.columns:
        names = parts["rlnTomoParticleName"].astype(str).tolist()
    else:
        names = [Path(v).stem for v in parts["rlnImageName"].astype(str)]
    tomo_col = "rlnTomoName" if "rlnTomoName" in parts.columns else "rlnMicrographName"
    tomos = parts[tomo_col].astype(str).tolist() if tomo_col in parts.columns else ["tomogram"] * n
    check_unique(names, path, "rlnTomoParticleName" if "rlnTomoParticleName" in parts.columns else "rlnImageName")
    if "rlnRandomSubset" in parts:
        half = check_half_sets(int_column(parts, "rlnRandomSubset", path, "particles"), path)
    else:
        half = (np.arange(n) % 2) + 1
    general = blocks.get("general")
    relion4 = premult or (isinstance(general, dict) and "rlnTomoSubTomosAre2DStacks" in general)
    voltage = float(check_positive(np.array([opt("rlnVoltage", 300.0)]), path, "rlnVoltage", "the voltage (kV)")[0])
    return Subtomograms(
        names=names, box=box, pixel_size=apix, rotations=rotations, shifts=torch.from_numpy(shifts),
        volume_paths=vols, ctf_paths=ctfs, multiplicity_paths=mults, ctf_premultiplied=premult, half_set=half,
        tomogram=tomos, voltage=voltage, spherical_aberration=opt("rlnSphericalAberration", 2.7),
        amplitude_contrast=opt("rlnAmplitudeContrast", 0.1), source_format="relion4" if relion4 else "relion31",
        source_path=path, tables={"blocks": blocks},
    )  # fmt: skip


def particle_poses(dataset: TiltSeriesParticles) -> torch.Tensor:
    """Proper rotations ``[N, 3, 3]`` of the particles in tomohet's tomogram frame, ``M S^T A M`` (module
    docstring), from the RELION 5 particle table the dataset was read from."""
    parts = dataset.tables.get("particles_blocks", {}).get("particles") if dataset.tables else None
    if parts is None or "rlnAngleRot" not in parts.columns:
        raise ValueError("the dataset carries no particle Euler angles; pass poses= explicitly")
    src = dataset.tables.get("particles_star", dataset.source_path)
    a = euler_to_matrix(*(numeric_column(parts, c, Path(str(src)), "particles") for c in
                          ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))  # fmt: skip
    if "rlnTomoSubtomogramRot" in parts.columns:
        cols = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
        s = euler_to_matrix(*(numeric_column(parts, c, Path(str(src)), "particles") for c in cols))
        a = s.transpose(-1, -2) @ a
    m = mirror_z()
    return m @ a @ m


def write_relion31_subtomograms(
    dataset: TiltSeriesParticles,
    out_dir: str | Path,
    prefix: str = "subtomo",
    poses: torch.Tensor | None = None,
    relion4: bool = False,
    oversampling: int = 2,
    batch_size: int = 16,
    particles: np.ndarray | None = None,
    invert_contrast: bool = False,
) -> Path:
    """Make subtomograms of a 2D-stack dataset and write them with a STAR file; returns the star's path.

    RELION 3.1 form (default): ``Subtomograms/<tomo>/<name>_subtomo.mrc`` (``data ~= CTF3D * V``, white noise),
    ``..._ctf.mrc`` (3D CTF in FFTW half layout ``D x D x (D//2+1)``) and ``<prefix>_particles.star`` with
    ``rlnImageDimensionality 3``. ``relion4=True``: CTF-premultiplied ``..._data.mrc``, CTF^2 ``..._weights.mrc``,
    ``..._weights_multiplicity.mrc`` and ``<prefix>_relion4_particles.star`` with ``rlnCtfDataAreCtfPremultiplied 1``
    and ``rlnTomoSubTomosAre2DStacks 0``. ``poses [N, 3, 3]``: the particles' rotations in the subtomogram frame
    (default :func:`particle_poses`); images are inserted with ``A_ij @ pose_i^T``."""
    out_dir = Path(out_dir)
    idx = np.arange(dataset.n_particles) if particles is None else np.asarray(particles)
    poses = particle_poses(dataset) if poses is None else poses.double()
    d, apix = dataset.box, dataset.pixel_size
    star = out_dir / (f"{prefix}_relion4_particles.star" if relion4 else f"{prefix}_particles.star")
    if dataset.source_path is not None and star.resolve() == Path(dataset.source_path).resolve():
        raise InputError(star, "refusing to overwrite an input file; choose another output folder")
    src_parts = (dataset.tables or {}).get("particles_blocks", {}).get("particles")
    rows = []
    for chunk in dataset.chunks(batch_size, idx):
        batch = dataset.batch(chunk)
        stack = batch_subtomograms(batch, apix, dataset.ctf_premultiplied, poses[torch.from_numpy(chunk)],
                                   oversampling, invert_contrast)  # fmt: skip
        if relion4:
            vols, w1, w2 = stack.data, to_fftw_half(stack.ctf2), to_fftw_half(stack.multiplicity)
        else:
            data31, ctf31 = relion31_form(stack, batch.visible.sum(1))
            vols, w1, w2 = data31, to_fftw_half(ctf31), None
        for k, i in enumerate(chunk):
            tomo = str(dataset.tomogram[i])
            stem = Path(tomo).stem
            safe = dataset.names[i].replace("/", "_")
            folder = out_dir / "Subtomograms" / stem
            vname = folder / (f"{safe}_data.mrc" if relion4 else f"{safe}_subtomo.mrc")
            cname = folder / (f"{safe}_weights.mrc" if relion4 else f"{safe}_ctf.mrc")
            write_volume(vname, vols[k], apix)
            write_volume(cname, w1[k], apix)
            if w2 is not None:
                write_volume(cname.with_name(cname.stem + MULTIPLICITY_SUFFIX), w2[k], apix)
            rot, tilt, psi = (float(a) for a in matrix_to_euler(poses[i]))
            row = {
                "rlnMicrographName": tomo,
                "rlnImageName": os.path.relpath(vname, out_dir),
                "rlnCtfImage": os.path.relpath(cname, out_dir),
            }
            for a in "XYZ":
                col = f"rlnCoordinate{a}"
                ok = src_parts is not None and col in src_parts.columns
                row[col] = float(src_parts[col].iloc[i]) if ok else 0.0
            row.update({"rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                        "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
                        "rlnOpticsGroup": 1, "rlnRandomSubset": int(dataset.half_set[i])})  # fmt: skip
            row = {"rlnTomoParticleName": dataset.names[i], **row}  # RELION 3.1 keeps labels it does not know
            if relion4:
                row = {"rlnTomoName": tomo, **row}
            rows.append(row)
    for col, vals in (("rlnVoltage", dataset.voltage), ("rlnSphericalAberration", dataset.spherical_aberration),
                      ("rlnAmplitudeContrast", dataset.amplitude_contrast)):  # fmt: skip
        if len(set(vals[torch.from_numpy(idx)].tolist())) > 1:
            raise ValueError(f"particles with different {col} cannot share one optics group")
    optics = pd.DataFrame([{
        "rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1,
        "rlnVoltage": float(dataset.voltage[idx[0]]),
        "rlnSphericalAberration": float(dataset.spherical_aberration[idx[0]]),
        "rlnAmplitudeContrast": float(dataset.amplitude_contrast[idx[0]]), "rlnImagePixelSize": apix,
        "rlnImageSize": d, "rlnImageDimensionality": 3, "rlnCtfDataAreCtfPremultiplied": int(relion4),
    }])  # fmt: skip
    blocks: dict[str, Any] = {"optics": optics, "particles": pd.DataFrame(rows)}
    if relion4:
        blocks = {"general": {"rlnTomoSubTomosAre2DStacks": 0}, **blocks}
    write_star(blocks, star)
    return star
