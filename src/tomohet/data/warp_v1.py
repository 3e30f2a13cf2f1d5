"""Warp v1 / tomoDRGN / cryoDRGN-ET "image-series" STAR files: one row per tilt image, grouped by particle.

Format: a loop block (``data_`` or ``data_particles``, optionally with ``data_optics``) with one row per tilt
image; ``rlnGroupName`` names the particle, ``rlnImageName`` is ``N@stack.mrcs`` (1-based frame).
Per-image quantities:

- ``rlnAngleRot/Tilt/Psi`` (degrees): RELION ZYZ Euler angles of the image itself; the per-image rotation is
  ``euler_to_matrix(rot, tilt, psi)`` with no reference mirror (unlike RELION 5 projects).
- ``rlnOriginXAngst/YAngst`` (Angstrom) or ``rlnOriginX/Y`` (pixels): RELION origin, particle centre at
  ``-origin`` relative to the box centre, so ``shift = -origin`` (pixels).
- ``rlnDefocusU/V`` (Angstrom), ``rlnDefocusAngle``, ``rlnPhaseShift`` (degrees): the image's own CTF.
- ``rlnCtfScalefactor`` = cos(tilt); ``rlnCtfBfactor`` = -4 x cumulative dose (e/A^2), so dose = -B / 4.
- Pixel size (Angstrom): ``rlnImagePixelSize`` (optics or rows), else ``rlnDetectorPixelSize * 1e4 /
  rlnMagnification``, else ``rlnDetectorPixelSize`` alone, read as Angstrom as tomoDRGN and cryoDRGN do (their
  own test data are written so; a warning says so); a ``pixel_size`` argument overrides all of them.

Writing a dataset read from RELION 5: its image rotations carry RELION 5's improper reference mirror
``diag(1, 1, -1)`` (``tomohet.data.relion5``). Euler angles describe proper rotations only, so the writer
stores ``rotation @ mirror_z()``; reading the written file back gives the RELION 5 rotations times
``mirror_z()``, i.e. a reconstruction from the Warp v1 file is the z-mirror of the RELION 5 one (use
``--flip-hand``). Everything else (images, doses, defoci, visibility, tilt angles) round-trips unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..physics.rotations import euler_to_matrix, matrix_to_euler, mirror_z
from .images import ImageSource, stack_shape
from .model import TiltSeriesParticles
from .star import int_column, numeric_column, read_star, require_columns, resolve_path, write_star
from .validate import check_box, check_flag, check_half_sets, check_pixel_size, check_positive, not_single_particle

log = logging.getLogger("tomohet")

REQUIRED_COLUMNS = [
    "rlnGroupName", "rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
]  # fmt: skip
# columns that may carry a signed tilt angle (degrees) per image; the first present is used
SIGNED_TILT_COLUMNS = ("rlnTomoNominalStageTiltAngle", "rlnTomoTiltAngle", "rlnTiltAngle")


def image_series_block(blocks: dict[str, Any]) -> str | None:
    """Name of the loop block that makes ``blocks`` a Warp v1 image-series star, or ``None``.

    It must have ``rlnGroupName``, ``rlnAngleRot`` and an ``rlnImageName`` of the form ``N@stack``; besides it
    only a ``data_optics`` block is allowed."""
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"}
    if len(loops) != 1 or any(isinstance(v, dict) for v in blocks.values()):
        return None
    name, df = next(iter(loops.items()))
    if not {"rlnGroupName", "rlnImageName", "rlnAngleRot"} <= set(df.columns) or len(df) == 0:
        return None
    return name if "@" in str(df["rlnImageName"].iloc[0]) else None


def is_image_series(blocks: dict[str, Any]) -> bool:
    return image_series_block(blocks) is not None


def looks_like_image_series(blocks: dict[str, Any]) -> bool:
    """Meant as an image-series star even if incomplete (so the reader can name what is missing): one loop
    block (besides ``data_optics``) with per-row ``rlnAngleRot``, no ``rlnTomoName``, and either ``N@stack``
    image names or ``rlnGroupName`` without any ``rlnImageName``."""
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"}
    if len(loops) != 1 or any(isinstance(v, dict) for v in blocks.values()):
        return False
    df = next(iter(loops.values()))
    if "rlnAngleRot" not in df.columns or "rlnTomoName" in df.columns:
        return False
    if len(df) == 0:  # an empty loop of image-series columns: the reader says "no particles"
        return "rlnGroupName" in df.columns or "rlnImageName" in df.columns
    if "rlnImageName" in df.columns:
        return "@" in str(df["rlnImageName"].iloc[0])
    return "rlnGroupName" in df.columns


def _loop_block(blocks: dict[str, Any], path: Path) -> str:
    """The particle-image loop block (with a clear error naming the missing field if there is none)."""
    name = image_series_block(blocks)
    if name is not None:
        return name
    loops = [k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"]
    if len(loops) != 1:
        raise InputError(path, f"expected one image loop block (and optionally data_optics), found {len(loops)}")
    df = blocks[loops[0]]
    if len(df) == 0:
        raise InputError(path, f"no particles: data_{loops[0]} has no rows", "rlnImageName")
    for c in ("rlnGroupName", "rlnImageName", "rlnAngleRot"):
        if c not in df.columns:
            raise InputError(path, f"required column missing from data_{loops[0]} (Warp v1 image-series star)", c)
    raise InputError(path, f"row 1: expected 'N@stack.mrcs', got {df['rlnImageName'].iloc[0]!r}", "rlnImageName")


def _per_row_or_optics(
    df: pd.DataFrame, optics: pd.DataFrame | None, col: str, path: Path, block: str, default: float | None
) -> np.ndarray:
    """A per-row value from the image loop, else from ``data_optics`` via ``rlnOpticsGroup``, else ``default``."""
    if col in df.columns:
        return numeric_column(df, col, path, block)
    if optics is not None and col in optics.columns:
        values = numeric_column(optics, col, path, "optics")
        if len(optics) == 1:
            return np.full(len(df), values[0])
        if "rlnOpticsGroup" not in df.columns or "rlnOpticsGroup" not in optics.columns:
            raise InputError(path, "several optics groups but the images lack the column", "rlnOpticsGroup")
        table = dict(zip(int_column(optics, "rlnOpticsGroup", path, "optics"), values, strict=True))
        try:
            return np.array([table[g] for g in int_column(df, "rlnOpticsGroup", path, block)], dtype=np.float64)
        except KeyError as exc:
            msg = f"optics group {exc.args[0]} used by an image is not defined"
            raise InputError(path, msg, "rlnOpticsGroup") from exc
    if default is None:
        raise InputError(path, f"required column missing from data_{block} (and from data_optics)", col)
    return np.full(len(df), float(default))


def _pixel_size(
    df: pd.DataFrame, optics: pd.DataFrame | None, path: Path, block: str, override: float | None = None
) -> float:
    """Image pixel size in Angstrom (one value for the whole file; ``override`` replaces the file's)."""
    if override is not None:
        apix = check_pixel_size(float(override), path, "pixel_size")
        log.info("%s: pixel size %.4g A from the override (the file's pixel size is not used)", path, apix)
        return apix
    field = "rlnImagePixelSize"
    if "rlnImagePixelSize" in df.columns or (optics is not None and "rlnImagePixelSize" in optics.columns):
        apix = _per_row_or_optics(df, optics, "rlnImagePixelSize", path, block, None)
    elif "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        field = "rlnDetectorPixelSize"
        mag = numeric_column(df, "rlnMagnification", path, block)
        if (mag <= 0).any():
            raise InputError(path, "magnification must be positive", "rlnMagnification")
        apix = numeric_column(df, "rlnDetectorPixelSize", path, block) * 1e4 / mag
    elif "rlnDetectorPixelSize" in df.columns:
        field = "rlnDetectorPixelSize"
        apix = numeric_column(df, field, path, block)
        log.warning(
            "%s: no rlnMagnification; reading rlnDetectorPixelSize %.4g as the pixel size in Angstrom, as tomoDRGN "
            "and cryoDRGN do (give the pixel size explicitly if this is wrong)",
            path,
            apix[0],
        )
    else:
        raise InputError(
            path,
            "no pixel size: expected rlnImagePixelSize (rows or data_optics), rlnDetectorPixelSize (+ "
            "rlnMagnification), or a pixel size given explicitly",
            "rlnImagePixelSize",
        )
    if not np.allclose(apix, apix[0], rtol=1e-5):
        raise InputError(path, "images must share one pixel size", field)
    return check_pixel_size(float(apix[0]), path, field)


def _tomogram_names(df: pd.DataFrame, codes: np.ndarray, first: np.ndarray, groups: list[str]) -> list[str]:
    """Tomogram per particle: its micrograph name (per-tilt names ``TS_12.mrc`` lose ``.mrc`` and ``_12``), else
    the group name without its trailing particle number."""
    if "rlnMicrographName" not in df.columns:
        return [re.sub(r"[_.-]?\d+$", "", g) or g for g in groups]
    mics = df["rlnMicrographName"].astype(str).to_numpy()
    per_group = pd.Series(mics).groupby(codes).nunique().to_numpy()
    out = []
    for i, row in enumerate(first):
        name = mics[row]
        if per_group[i] > 1:  # one micrograph per tilt: strip the extension and the tilt number
            name = re.sub(r"[_.-]\d+$", "", Path(name).stem if Path(name).suffix in {".mrc", ".tif", ".tiff"} else name)
        out.append(name)
    return out


def read_warp_v1(
    path: str | Path, *, pixel_size: float | None = None, blocks: dict[str, Any] | None = None
) -> TiltSeriesParticles:
    """Read a Warp v1 / tomoDRGN / cryoDRGN-ET image-series star (see the module docstring for units).

    ``pixel_size`` (Angstrom) overrides the file's pixel size; ``rlnOrigin*Angst`` are converted with it.
    ``blocks``: ``path`` already parsed."""
    path = Path(path)
    blocks = read_star(path) if blocks is None else blocks
    not_single_particle(blocks, path)
    block = _loop_block(blocks, path)
    df = blocks[block].reset_index(drop=True)
    optics = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    require_columns(df, REQUIRED_COLUMNS, path, block)
    m = len(df)

    # particles in order of first appearance of their group, tilts in file order within the group
    group_names = df["rlnGroupName"].astype(str)
    codes, uniques = pd.factorize(group_names, sort=False)
    codes = np.array(codes, dtype=np.int64)
    names = [str(u) for u in uniques]
    n = len(names)
    pos = np.array(df.groupby(codes, sort=False).cumcount(), dtype=np.int64)
    counts = np.bincount(codes, minlength=n)
    tmax = int(counts.max())
    first = np.unique(codes, return_index=True)[1].astype(np.int64)  # first row of each group (codes 0..n-1)
    _check_groups_contiguous(codes, names, path)

    # images: N@stack (1-based frame)
    parts = df["rlnImageName"].astype(str).str.strip().str.partition("@")
    bad = (parts[1] != "@").to_numpy() | ~parts[0].str.fullmatch(r"\d{1,9}").to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        got = df["rlnImageName"].iloc[r]
        raise InputError(path, f"row {r + 1}: expected 'N@stack.mrcs', got {got!r}", "rlnImageName")
    frames = parts[0].astype(np.int64).to_numpy() - 1
    if (frames < 0).any():
        r = int(np.flatnonzero(frames < 0)[0])
        raise InputError(path, f"row {r + 1}: image numbers start at 1", "rlnImageName")
    stack_codes, stack_names = pd.factorize(parts[2], sort=False)
    stack_codes = np.array(stack_codes, dtype=np.int64)
    stacks = [resolve_path(str(s), path.parent, Path.cwd()) for s in stack_names]
    _check_images_unique(stack_codes, frames, codes, names, df["rlnImageName"], path)
    for k, s in enumerate(stacks):
        if not s.exists():
            r = int(np.flatnonzero(stack_codes == k)[0])
            raise InputError(s, f"image stack not found (named in row {r + 1} of {path})", "rlnImageName")

    apix = _pixel_size(df, optics, path, block, pixel_size)
    if "rlnImageSize" in df.columns or (optics is not None and "rlnImageSize" in optics.columns):
        box = check_box(float(_per_row_or_optics(df, optics, "rlnImageSize", path, block, None)[0]), path)
    else:
        box = int(stack_shape(stacks[0])[-1])

    def grid(values: np.ndarray, fill: float = 0.0, dtype=torch.float32) -> torch.Tensor:
        out = np.full((n, tmax), fill, dtype=np.float64)
        out[codes, pos] = values
        return torch.from_numpy(out).to(dtype)

    col = lambda c: numeric_column(df, c, path, block)  # noqa: E731
    a = euler_to_matrix(col("rlnAngleRot"), col("rlnAngleTilt"), col("rlnAnglePsi"))
    rotations = torch.eye(3, dtype=torch.float64).repeat(n, tmax, 1, 1)
    rotations[codes, pos] = a
    shifts = torch.zeros(n, tmax, 2)
    for k, axis in enumerate("XY"):
        if f"rlnOrigin{axis}Angst" in df.columns:
            shifts[..., k] = -grid(col(f"rlnOrigin{axis}Angst") / apix)
        elif f"rlnOrigin{axis}" in df.columns:
            shifts[..., k] = -grid(col(f"rlnOrigin{axis}"))
    scale_rows = col("rlnCtfScalefactor") if "rlnCtfScalefactor" in df.columns else np.ones(m)
    dose_rows = -col("rlnCtfBfactor") / 4 if "rlnCtfBfactor" in df.columns else np.zeros(m)
    tilt_col = next((c for c in SIGNED_TILT_COLUMNS if c in df.columns), None)
    tilt_rows = col(tilt_col) if tilt_col else np.rad2deg(np.arccos(np.clip(scale_rows, -1.0, 1.0)))
    phase = _per_row_or_optics(df, optics, "rlnPhaseShift", path, block, 0.0)
    voltage = _per_row_or_optics(df, optics, "rlnVoltage", path, block, None)[first]
    check_positive(voltage, path, "rlnVoltage", "the voltage (kV)")
    cs = _per_row_or_optics(df, optics, "rlnSphericalAberration", path, block, None)[first]
    ac = _per_row_or_optics(df, optics, "rlnAmplitudeContrast", path, block, 0.1)[first]
    premult = _per_row_or_optics(df, optics, "rlnCtfDataAreCtfPremultiplied", path, block, 0.0)
    check_flag(premult, path, "rlnCtfDataAreCtfPremultiplied", "expected 0 or 1")
    if len(set(premult)) != 1:
        raise InputError(path, "mixed CTF-premultiplied images are not supported", "rlnCtfDataAreCtfPremultiplied")

    visible = torch.zeros(n, tmax, dtype=torch.bool)
    visible[codes, pos] = True
    file_index = np.full((n, tmax), -1, dtype=np.int64)
    frame = np.full((n, tmax), -1, dtype=np.int64)
    row_index = np.full((n, tmax), -1, dtype=np.int64)
    file_index[codes, pos] = stack_codes
    frame[codes, pos] = frames
    row_index[codes, pos] = np.arange(m)
    if "rlnRandomSubset" in df.columns:
        half = check_half_sets(int_column(df, "rlnRandomSubset", path, block)[first], path, first)
    else:
        half = (np.arange(n) % 2) + 1
    return TiltSeriesParticles(
        names=names, box=box, pixel_size=apix, rotations=rotations, shifts=shifts,
        defocus_u=grid(col("rlnDefocusU")), defocus_v=grid(col("rlnDefocusV")),
        defocus_angle=grid(col("rlnDefocusAngle")), phase_shift=grid(phase), dose=grid(dose_rows),
        ctf_scale=grid(scale_rows), tilt_angle=grid(tilt_rows), visible=visible,
        voltage=torch.from_numpy(voltage).float(), spherical_aberration=torch.from_numpy(cs).float(),
        amplitude_contrast=torch.from_numpy(ac).float(), ctf_premultiplied=bool(premult[0]),
        images=ImageSource(stacks, file_index, frame, box, path),
        tomogram=_tomogram_names(df, codes, first, names), half_set=half, source_format="warp_v1",
        source_path=path,
        tables={"images_table": df, "star": path, "block": block, "optics": optics, "row_index": row_index},
    )  # fmt: skip


def _check_groups_contiguous(codes: np.ndarray, names: list[str], path: Path) -> None:
    """A particle's images are consecutive rows: a group name that comes back after other particles is two
    particles with one name."""
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    seen = np.zeros(len(names), dtype=bool)
    for r in starts:
        if seen[codes[r]]:
            first = int(np.flatnonzero(codes == codes[r])[0])
            raise InputError(
                path,
                f"particle name {names[codes[r]]!r} is used twice (rows {first + 1} and {r + 1}, with other "
                "particles between them); particle names must be unique",
                "rlnGroupName",
            )
        seen[codes[r]] = True


def _check_images_unique(
    stack_codes: np.ndarray, frames: np.ndarray, codes: np.ndarray, names: list[str], image: pd.Series, path: Path
) -> None:
    """No image is listed twice (a duplicated row, or two particles pointing at one image)."""
    key = pd.Series(stack_codes * (int(frames.max(initial=0)) + 1) + frames)
    dup = np.flatnonzero(key.duplicated().to_numpy())
    if not len(dup):
        return
    r = int(dup[0])
    r0 = int(np.flatnonzero((key == key.iloc[r]).to_numpy())[0])
    if codes[r] == codes[r0]:
        why, field = f"particle {names[codes[r]]!r} lists image {image.iloc[r]!r} twice", "rlnGroupName"
    else:
        why = f"image {image.iloc[r]!r} is used by particles {names[codes[r0]]!r} and {names[codes[r]]!r}"
        field = "rlnImageName"
    raise InputError(path, f"rows {r0 + 1} and {r + 1}: {why}", field)


def _input_files(dataset: TiltSeriesParticles) -> list[Path]:
    files = [dataset.source_path] if dataset.source_path is not None else []
    for key in ("star", "particles_star", "tomograms_star"):
        if dataset.tables.get(key) is not None:
            files.append(Path(dataset.tables[key]))
    return files + list(dataset.images.paths)


def write_warp_v1(dataset: TiltSeriesParticles, path: str | Path) -> Path:
    """Write ``dataset`` as a Warp v1 image-series star (one row per visible image) and return its path.

    ``rlnImageName`` points into the existing stacks (``frame+1@relative/path``), so no image is copied. A
    dataset read from a Warp v1 star keeps its rows, their order and every other column; improper rotations
    (RELION 5's reference mirror) are written as ``rotation @ mirror_z()`` (see the module docstring)."""
    path = Path(path)
    for f in _input_files(dataset):
        if path.resolve() == Path(f).resolve():
            raise InputError(path, "refusing to overwrite an input file; choose another output path")
    vis = dataset.visible.numpy()
    ii, jj = np.nonzero(vis)  # particle-major, tilts in order
    src = dataset.tables.get("images_table") if dataset.source_format == "warp_v1" else None
    rows = dataset.tables.get("row_index")
    optics = dataset.tables.get("optics") if src is not None else None
    optics = optics.copy() if optics is not None else None
    if src is not None and rows is not None and rows.shape == vis.shape and (rows[ii, jj] >= 0).all():
        order = np.argsort(rows[ii, jj], kind="stable")  # the source file's row order
        ii, jj = ii[order], jj[order]
        out = src.iloc[rows[ii, jj]].reset_index(drop=True).copy()
    else:
        src, optics = None, None
        out = pd.DataFrame(index=np.arange(len(ii)))

    apix = dataset.pixel_size
    fi, fr = dataset.images.file_index[ii, jj], dataset.images.frame[ii, jj]
    if (fi < 0).any():
        raise ValueError("a visible image has no image file")
    rel = [os.path.relpath(Path(p).resolve(), path.parent.resolve()) for p in dataset.images.paths]
    out["rlnImageName"] = [f"{f + 1:06d}@{rel[k]}" for f, k in zip(fr, fi, strict=True)]
    out["rlnGroupName"] = [dataset.names[i] for i in ii]
    rot = dataset.rotations[ii, jj].double()
    improper = torch.det(rot) < 0
    rot = torch.where(improper[:, None, None], rot @ mirror_z(), rot)
    angles = matrix_to_euler(rot)
    for c, v in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles, strict=True):
        out[c] = v.numpy()
    shifts = dataset.shifts[ii, jj].double().numpy()
    if src is not None and "rlnOriginX" in src.columns and "rlnOriginXAngst" not in src.columns:
        out["rlnOriginX"], out["rlnOriginY"] = -shifts[:, 0], -shifts[:, 1]  # pixels, as the source had
    elif (src is not None and "rlnOriginXAngst" in src.columns) or np.abs(shifts).max(initial=0) > 0:
        out["rlnOriginXAngst"], out["rlnOriginYAngst"] = -shifts[:, 0] * apix, -shifts[:, 1] * apix
    per_image = {
        "rlnDefocusU": dataset.defocus_u, "rlnDefocusV": dataset.defocus_v, "rlnDefocusAngle": dataset.defocus_angle,
        "rlnPhaseShift": dataset.phase_shift, "rlnCtfScalefactor": dataset.ctf_scale,
        "rlnCtfBfactor": -4 * dataset.dose,
    }  # fmt: skip
    for c, v in per_image.items():
        out[c] = v[ii, jj].double().numpy()
    tilt_col = next((c for c in SIGNED_TILT_COLUMNS if src is not None and c in src.columns), None)
    if src is None:
        tilt_col = SIGNED_TILT_COLUMNS[0]
    if tilt_col:
        out[tilt_col] = dataset.tilt_angle[ii, jj].double().numpy()
    if src is None or "rlnRandomSubset" in src.columns:
        out["rlnRandomSubset"] = np.asarray(dataset.half_set)[ii].astype(int)
    per_particle = {
        "rlnVoltage": dataset.voltage, "rlnSphericalAberration": dataset.spherical_aberration,
        "rlnAmplitudeContrast": dataset.amplitude_contrast,
    }  # fmt: skip
    for c, v in per_particle.items():
        if not (optics is not None and c in optics.columns and c not in out.columns):
            out[c] = v[ii].double().numpy()
    if src is None:
        out["rlnMicrographName"] = [dataset.tomogram[i] for i in ii]
    _set_pixel_size(out, optics, apix)

    if src is not None:
        blocks: dict[str, Any] = {dataset.tables.get("block", ""): out}
        if optics is not None:
            blocks = {"optics": optics, **blocks}
    elif dataset.ctf_premultiplied:  # the flag needs an optics block (RELION 3.1 layout)
        blocks = {
            "optics": pd.DataFrame(
                {
                    "rlnOpticsGroup": [1],
                    "rlnOpticsGroupName": ["opticsGroup1"],
                    "rlnImagePixelSize": [apix],
                    "rlnImageSize": [dataset.box],
                    "rlnImageDimensionality": [2],
                    "rlnVoltage": [float(dataset.voltage[0])],
                    "rlnSphericalAberration": [float(dataset.spherical_aberration[0])],
                    "rlnAmplitudeContrast": [float(dataset.amplitude_contrast[0])],
                    "rlnCtfDataAreCtfPremultiplied": [1],
                }
            ),  # fmt: skip
            "particles": out.assign(rlnOpticsGroup=1),
        }
    else:
        blocks = {"": out}
    write_star(blocks, path)
    return path


def _set_pixel_size(out: pd.DataFrame, optics: pd.DataFrame | None, apix: float) -> None:
    """Keep the source's pixel-size columns when they give ``apix``; otherwise write Warp's own form
    (``rlnDetectorPixelSize`` = pixel size, ``rlnMagnification`` = 10000)."""
    if optics is not None and "rlnImagePixelSize" in optics.columns:
        if np.allclose(pd.to_numeric(optics["rlnImagePixelSize"]), apix, rtol=1e-6):
            return
        optics["rlnImagePixelSize"] = apix
        return
    if "rlnImagePixelSize" in out.columns:
        out["rlnImagePixelSize"] = apix
        return
    if "rlnDetectorPixelSize" in out.columns and "rlnMagnification" in out.columns:
        current = pd.to_numeric(out["rlnDetectorPixelSize"]) * 1e4 / pd.to_numeric(out["rlnMagnification"])
        if np.allclose(current, apix, rtol=1e-6):
            return
    out["rlnMagnification"] = 10000.0
    out["rlnDetectorPixelSize"] = apix
