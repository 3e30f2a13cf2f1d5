"""Recognise particle inputs by content and read them with the right reader."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .model import TiltSeriesParticles
from .relion5 import is_optimisation_set, is_relion5_particles, read_relion5
from .star import read_star
from .subtomo import Subtomograms, is_subtomogram_star, read_subtomograms
from .warp_v1 import looks_like_image_series, read_warp_v1


def detect_format(path: str | Path) -> str:
    """``"relion5"`` (optimisation set or RELION 5 particles star), ``"warp_v1"`` (image-series star) or
    ``"relion_subtomo"`` (RELION 3.1/4 3D subtomograms)."""
    path = Path(path)
    blocks = read_star(path)
    if not is_optimisation_set(blocks) and is_subtomogram_star(blocks):
        return "relion_subtomo"
    if is_optimisation_set(blocks) or is_relion5_particles(blocks):
        general = blocks.get("general")
        if isinstance(general, dict) and int(general.get("rlnTomoSubTomosAre2DStacks", 1)) == 0:
            return "relion_subtomo"
        return "relion5"
    if looks_like_image_series(blocks):
        return "warp_v1"
    raise InputError(
        path,
        "unrecognised STAR file: expected a RELION 5 / WarpTools optimisation set or particles star, "
        "a Warp v1 image-series star, or a RELION 3.1/4 subtomogram star",
    )


def read_particles(path: str | Path, tomograms: str | Path | None = None) -> TiltSeriesParticles:
    """Read 2D tilt-series particle stacks from any supported format."""
    fmt = detect_format(path)
    if fmt == "relion5":
        return read_relion5(path, tomograms)
    if fmt == "warp_v1":
        return read_warp_v1(path)
    raise InputError(path, f"format {fmt!r} holds 3D subtomograms; this command needs 2D tilt-series stacks")


def read_any(path: str | Path, tomograms: str | Path | None = None) -> TiltSeriesParticles | Subtomograms:
    """Read 2D tilt-series stacks (:func:`read_particles`) or RELION 3.1/4 3D subtomograms, whichever ``path``
    holds."""
    if detect_format(path) == "relion_subtomo":
        return read_subtomograms(path)
    return read_particles(path, tomograms)
