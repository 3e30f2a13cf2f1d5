"""``ground_truth.csv``, the per-particle truth of a simulated dataset (tomohet simulate's layout): where it is
and how it is read, for every command and report that scores against it."""

from __future__ import annotations

from pathlib import Path

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
