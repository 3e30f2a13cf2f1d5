"""STAR file access (via ``starfile``) with errors that name the file, the block and the column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError


def read_star(path: str | Path) -> dict[str, Any]:
    """All data blocks of a STAR file as ``{name: DataFrame | dict}``; clear error if missing/unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(path, f"not a readable STAR file ({exc})") from exc
    if not blocks:
        raise InputError(path, "no data blocks found; expected a STAR file")
    return blocks


def write_star(blocks: dict[str, Any], path: str | Path, overwrite: bool = True) -> None:
    """Write STAR blocks (DataFrames as loops, dicts as key/value blocks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write(blocks, path, overwrite=overwrite, float_format="%.6f")
    # starfile stamps the wall-clock time in its first line; a fixed line keeps same-seed outputs identical
    text = path.read_text()
    if text.startswith("# Created by the starfile"):
        path.write_text("# written by tomohet" + text[text.index("\n") :])


def block_as_frame(blocks: dict[str, Any], name: str, path: Path) -> pd.DataFrame:
    """The loop block ``name`` as a DataFrame (a one-row key/value block is turned into a frame)."""
    if name not in blocks:
        raise InputError(path, f"data block 'data_{name}' not found (blocks: {', '.join(map(repr, blocks))})")
    b = blocks[name]
    if isinstance(b, dict):
        return pd.DataFrame([b])
    return b


def require_columns(df: pd.DataFrame, columns: list[str], path: Path, block: str) -> None:
    """Raise an :class:`InputError` naming the first missing column."""
    for c in columns:
        if c not in df.columns:
            raise InputError(path, f"required column missing from data_{block}", c)


def numeric_column(df: pd.DataFrame, column: str, path: Path, block: str) -> np.ndarray:
    """A column as float64, with an error naming the row if a value is not a finite number."""
    try:
        values = pd.to_numeric(df[column], errors="raise").to_numpy(dtype=np.float64, copy=True)
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"non-numeric value in data_{block} ({exc})", column) from exc
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(path, f"row {int(np.flatnonzero(bad)[0]) + 1} of data_{block} is not finite", column)
    return values


def parse_vector(text: str, path: Path, column: str) -> list[float]:
    """Parse a RELION bracketed vector such as ``[0.1,0.2,0.3,0]``."""
    s = str(text).strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise InputError(path, f"expected a bracketed vector like [a,b,c], got {s!r}", column)
    try:
        return [float(v) for v in s[1:-1].split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(path, f"bad number in vector {s!r}", column) from exc


def resolve_path(name: str, *bases: Path) -> Path:
    """Resolve a path written in a STAR file: absolute, else relative to each base in turn (first that
    exists), else relative to the first base."""
    p = Path(name)
    if p.is_absolute():
        return p
    for b in bases:
        if (b / p).exists():
            return b / p
    return bases[0] / p
