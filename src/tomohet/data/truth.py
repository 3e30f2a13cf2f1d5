"""``ground_truth.csv``, the per-particle truth of a simulated dataset (tomohet simulate's layout): where it is
and how it is read, for every command and report that scores against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError


def find_ground_truth(input_path: Path) -> Path | None:
    """``ground_truth.csv`` of a simulated dataset beside the input (tomohet simulate's layout)."""
    for folder in (input_path.parent, input_path.parent.parent):
        if (folder / "ground_truth.csv").exists():
            return folder / "ground_truth.csv"
    return None


TRUTH_COLUMNS = ("rlnTomoParticleName", "state")  # what tomohet simulate writes into ground_truth.csv


def load_truth(path: Path, names: list[str]) -> pd.DataFrame:
    """``ground_truth.csv`` as tomohet simulate writes it, one row per particle of ``names`` (in that order), or
    :class:`InputError` naming the file and the column that does not fit."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(path, f"not a readable ground-truth CSV ({' '.join(str(exc).split())})") from exc
    for col in TRUTH_COLUMNS:
        if col not in table.columns:
            have = ", ".join(map(str, table.columns[:6])) + (", ..." if len(table.columns) > 6 else "")
            raise InputError(path, f"not a tomohet ground truth: no column {col!r} (it has: {have})", col)
    table = table.assign(rlnTomoParticleName=table["rlnTomoParticleName"].astype(str))
    table = table.drop_duplicates("rlnTomoParticleName", keep="last").set_index("rlnTomoParticleName")
    missing = [n for n in names if n not in table.index]
    if missing:
        raise InputError(path, f"no ground truth for particle {missing[0]!r} ({len(missing)} of {len(names)} "
                         "particles missing)", "rlnTomoParticleName")  # fmt: skip
    table = table.loc[list(names)]
    if table["state"].isna().any():
        raise InputError(path, f"no state for particle {table.index[table['state'].isna()][0]!r}", "state")
    return table.reset_index()


TRUE_POSE_COLUMNS = tuple(f"true_{c}" for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                                "rlnOriginYAngst", "rlnOriginZAngst"))  # fmt: skip


def has_pose_errors(truth: pd.DataFrame, dataset) -> bool:
    """Whether ``truth`` (:func:`load_truth`, rows in the dataset's order) holds true poses that differ from the
    ones the RELION 5 ``dataset`` was read with (a simulation with ``--pose-error-deg`` / ``--shift-error-px``)."""
    if dataset.kind != "2d" or dataset.source_format != "relion5" or not set(TRUE_POSE_COLUMNS) <= set(truth):
        return False
    from .poses import ANGLE_COLUMNS
    from .relion5 import origins_A

    parts = dataset.tables["particles_blocks"]["particles"]
    written = np.concatenate([parts[list(ANGLE_COLUMNS)].to_numpy(float),
                              origins_A(parts, dataset.tables["particles_star"])], axis=1)  # fmt: skip
    true = truth[list(TRUE_POSE_COLUMNS)].to_numpy(float)
    return not np.allclose(written, true, atol=1e-3)


def true_pose_corrections(dataset, truth: pd.DataFrame):
    """Corrections ``(D [N, 3, 3], u [N, 3] pixels)`` (:mod:`.poses`) from the poses the RELION 5 ``dataset`` was
    read with to the true ones in ``truth`` (:func:`load_truth`, rows in the dataset's order)."""
    import torch

    from ..physics.rotations import euler_to_matrix
    from .poses import relion5_corrections
    from .relion5 import origins_A, particle_matrices

    parts = dataset.tables["particles_blocks"]["particles"]
    ppath = dataset.tables["particles_star"]
    true = euler_to_matrix(*(truth[c].to_numpy(float) for c in TRUE_POSE_COLUMNS[:3]))
    offset = (origins_A(parts, ppath) - truth[list(TRUE_POSE_COLUMNS[3:])].to_numpy(float)) / dataset.pixel_size
    return relion5_corrections(particle_matrices(parts, ppath), true, torch.from_numpy(offset))


def with_true_poses(dataset, truth: pd.DataFrame):
    """The RELION 5 ``dataset`` seen with the true poses of ``truth`` (:func:`load_truth`, rows in the dataset's
    order): what the oracle scores (the physical limit knows the poses). Nothing is modified."""
    from .poses import apply_pose_corrections

    return apply_pose_corrections(dataset, *true_pose_corrections(dataset, truth))


TILT_SHIFT_TRUTH = "tilt_shifts_truth.csv"  # per tomogram and tilt: the simulated alignment error (tomohet simulate)


def true_geometry(dataset, truth: pd.DataFrame, truth_path: Path):
    """The 2D-stack ``dataset`` seen with the geometry its images were made with: the true poses of ``truth``
    (:func:`load_truth`) and, where ``tilt_shifts_truth.csv`` lies beside ``truth_path``, the true per-tilt
    alignment; None when the geometry read is already the true one (what the oracle scores)."""
    posed = has_pose_errors(truth, dataset)
    shifts_file = Path(truth_path).parent / TILT_SHIFT_TRUTH
    if not posed and not shifts_file.exists():
        return None
    out = with_true_poses(dataset, truth) if posed else dataset
    if shifts_file.exists():
        import torch

        from .poses import apply_tilt_shifts

        table = pd.read_csv(shifts_file)
        names = sorted(set(table["rlnTomoName"].astype(str)))
        shifts = torch.zeros(len(names), dataset.n_tilts, 2)
        k = torch.tensor([names.index(str(n)) for n in table["rlnTomoName"]])
        tilt = torch.tensor(table["tilt"].to_numpy(dtype=np.int64, copy=True))
        xy = table[["shift_x_A", "shift_y_A"]].to_numpy(dtype=np.float64, copy=True) / dataset.pixel_size
        shifts[k, tilt] = torch.tensor(xy, dtype=torch.float32)
        missing = sorted(set(dataset.tomogram) - set(names))
        if missing:
            raise InputError(shifts_file, f"no alignment truth for tomogram {missing[0]!r}", "rlnTomoName")
        out = apply_tilt_shifts(out, names, shifts)
    return out
