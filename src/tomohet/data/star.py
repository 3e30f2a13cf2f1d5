"""STAR file access (via ``starfile``) with errors that name the file, the block and the column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError


def read_star(path: str | Path) -> dict[str, Any]:
    """All data blocks of a STAR file as ``{name: DataFrame | dict}``; clear error if missing/unreadable, or if
    a loop names one column twice."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder; expected a STAR file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(path, f"not a readable STAR file ({exc})") from exc
    if not blocks:
        raise InputError(path, "no data blocks found; expected a STAR file")
    for name, b in blocks.items():
        if isinstance(b, pd.DataFrame) and b.columns.duplicated().any():
            dup = str(b.columns[b.columns.duplicated()][0])
            raise InputError(path, f"data_{name} names this column twice", dup)
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
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        text = raw.iloc[r]
        if isinstance(text, str) and not _is_float(text):
            raise InputError(path, f"row {r + 1} of data_{block}: {text!r} is not a number", column)
        raise InputError(path, f"row {r + 1} of data_{block} is not finite", column)
    return values


def int_column(df: pd.DataFrame, column: str, path: Path, block: str) -> np.ndarray:
    """A column of whole numbers as int64 (error naming the row otherwise)."""
    values = numeric_column(df, column, path, block)
    frac = np.flatnonzero((values != np.round(values)) | (np.abs(values) > 2**53))
    if len(frac):
        r = int(frac[0])
        raise InputError(path, f"row {r + 1} of data_{block}: {values[r]:g} is not a whole number", column)
    return values.astype(np.int64)


def key_value_number(block: dict[str, Any], key: str, path: Path, name: str, default: float) -> float:
    """A finite number from a key/value block (``default`` when the key is absent)."""
    if key not in block:
        return default
    try:
        value = float(block[key])
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise InputError(path, f"data_{name}: expected a number, got {block[key]!r}", key)
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_vector(text: str, path: Path, column: str, where: str = "") -> list[float]:
    """Parse a RELION bracketed vector such as ``[0.1,0.2,0.3,0]`` (``where``: prefix of an error, e.g. the row)."""
    s = str(text).strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise InputError(path, f"{where}expected a bracketed vector like [a,b,c], got {s!r}", column)
    try:
        values = [float(v) for v in s[1:-1].split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(path, f"{where}bad number in vector {s!r}", column) from exc
    if not np.isfinite(values).all():
        raise InputError(path, f"{where}non-finite number in vector {s!r}", column)
    return values


def format_vector(values) -> str:
    """A RELION bracketed vector ``[a,b,c]`` (the inverse of :func:`parse_vector`)."""
    return "[" + ",".join(f"{float(x):.9g}" for x in values) + "]"


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
