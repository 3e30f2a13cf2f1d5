"""Recognise particle inputs by content and read them with the right reader.

Each STAR file is parsed once: :func:`read_any` / :func:`read_particles` parse the input, recognise its format from
the parsed blocks and hand those blocks to the reader (which parses only the other files it names: the particles
and tomograms stars of an optimisation set). ``pixel_size`` (Angstrom) overrides the file's pixel size in every
reader; origins given in Angstrom are converted to pixels with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .model import TiltSeriesParticles
from .relion5 import is_optimisation_set, is_relion5_particles, read_relion5
from .star import key_value_number, read_star
from .subtomo import Subtomograms, is_subtomogram_star, read_subtomograms
from .validate import not_single_particle
from .warp_v1 import looks_like_image_series, read_warp_v1


def detect_format(path: str | Path, blocks: dict[str, Any] | None = None) -> str:
    """``"relion5"`` (optimisation set or RELION 5 particles star), ``"warp_v1"`` (image-series star) or
    ``"relion_subtomo"`` (RELION 3.1/4 3D subtomograms). ``blocks``: the file already parsed by
    :func:`~tomohet.data.star.read_star` (parsed here otherwise)."""
    path = Path(path)
    blocks = read_star(path) if blocks is None else blocks
    general = blocks.get("general")
    flag = 1.0
    if isinstance(general, dict):
        flag = key_value_number(general, "rlnTomoSubTomosAre2DStacks", path, "general", 1.0)
        if flag not in (0.0, 1.0):
            raise InputError(path, f"data_general: expected 0 or 1, got {flag:g}", "rlnTomoSubTomosAre2DStacks")
    if not is_optimisation_set(blocks) and is_subtomogram_star(blocks):
        return "relion_subtomo"
    if is_optimisation_set(blocks) or is_relion5_particles(blocks):
        return "relion_subtomo" if flag == 0.0 else "relion5"
    not_single_particle(blocks, path)
    if looks_like_image_series(blocks):
        return "warp_v1"
    raise InputError(
        path,
        "unrecognised STAR file: expected a RELION 5 / WarpTools optimisation set or particles star, "
        "a Warp v1 image-series star, or a RELION 3.1/4 subtomogram star",
    )


def read_particles(
    path: str | Path,
    tomograms: str | Path | None = None,
    *,
    pixel_size: float | None = None,
    blocks: dict[str, Any] | None = None,
) -> TiltSeriesParticles:
    """Read 2D tilt-series particle stacks from any supported format (``pixel_size``: override, Angstrom)."""
    blocks = read_star(path) if blocks is None else blocks
    fmt = detect_format(path, blocks)
    if fmt == "relion5":
        return read_relion5(path, tomograms, pixel_size=pixel_size, blocks=blocks)
    if fmt == "warp_v1":
        return read_warp_v1(path, pixel_size=pixel_size, blocks=blocks)
    raise InputError(path, f"format {fmt!r} holds 3D subtomograms; this command needs 2D tilt-series stacks")


def read_any(
    path: str | Path, tomograms: str | Path | None = None, *, pixel_size: float | None = None
) -> TiltSeriesParticles | Subtomograms:
    """Read 2D tilt-series stacks (:func:`read_particles`) or RELION 3.1/4 3D subtomograms, whichever ``path``
    holds (``pixel_size``: override of the file's pixel size, Angstrom)."""
    blocks = read_star(path)
    if detect_format(path, blocks) == "relion_subtomo":
        return read_subtomograms(path, pixel_size=pixel_size, blocks=blocks)
    return read_particles(path, tomograms, pixel_size=pixel_size, blocks=blocks)
